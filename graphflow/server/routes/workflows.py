"""What a client needs to write a workflow: the shipped workflows, every node type, the format's
JSON Schema. The node types and the schema depend only on the registry, fixed for the server's
life, so each is serialized once, on first request."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from graphflow.node.describe import describe_node
from graphflow.server.routes import Services


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()
    cached: dict[str, bytes] = {}

    @api.get("/nodes", summary="Every node type: ports, kinds, defaults, ranges (what `graphflow describe` shows)")
    def nodes() -> Response:
        if "nodes" not in cached:
            cached["nodes"] = orjson.dumps([describe_node(n) for n in s.registry], default=str)
        return Response(cached["nodes"], media_type="application/json")

    @api.get("/schema", summary="The JSON Schema of the workflow format")
    def schema() -> Response:
        if "schema" not in cached:
            from graphflow.node.schema import workflow_schema

            cached["schema"] = orjson.dumps(workflow_schema(s.registry))
        return Response(cached["schema"], media_type="application/json")

    @api.get("/workflows", summary="The shipped workflows, with their parameters")
    def workflows() -> dict[str, Any]:
        return {"workflows": s.catalog.listing()}

    @api.get("/workflows/{name}", summary="A shipped workflow's document")
    def workflow(name: str) -> dict[str, Any]:
        data = s.catalog.shipped().get(name)
        if data is None:
            raise HTTPException(404, f"no shipped workflow named {name!r}")
        return data

    return api
