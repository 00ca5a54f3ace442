"""What a client needs to write a workflow: the shipped workflows, every node type, the format's
JSON Schema. The node types and the schema depend only on the registry, fixed for the server's
life, so each is serialized once, on first request."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from graphflow.server.routes import Services


def node_description(n) -> dict[str, Any]:
    """A node type as `graphflow describe` shows it, as data, so a client can build a form for any
    node (a third party's too) without knowing it in advance."""
    def port(p, inputs: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"name": p.name, "kind": str(p.kind), "description": p.description}
        if inputs:
            d["required"] = p.required
            if not p.required:
                d["default"] = p.default
            if p.choices:
                d["choices"] = list(p.choices)
            for m in p.metadata:
                for attr in ("ge", "gt", "le", "lt", "multiple_of"):
                    if getattr(m, attr, None) is not None:
                        d[attr] = getattr(m, attr)
            if p.limit:
                d["limit"] = p.limit
            d["link_only"] = not p.kind.literal
        return d

    return {"type": n.type_name, "category": n.category, "version": n.version, "pure": n.pure, "summary": n.summary(), "doc": n.doc(),
            "inputs": [port(p, True) for p in n.inputs.values()], "outputs": [port(p, False) for p in n.outputs.values()]}


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()
    cached: dict[str, bytes] = {}

    @api.get("/nodes", summary="Every node type: ports, kinds, defaults, ranges (what `graphflow describe` shows)")
    def nodes() -> Response:
        if "nodes" not in cached:
            cached["nodes"] = orjson.dumps([node_description(n) for n in s.registry], default=str)
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
