"""Files a client gives the server for its workflows to read (a picture for img2img, a mask):
stored in ``OUT/uploads/``, one of the folders runs may read (``Settings.read_roots``), never
replacing a file already there. The answer's ``path`` is what a workflow names."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from graphflow.atomic import write_new
from graphflow.server.routes import Services

#: a file name, never a path: no separators, no leading dot
UPLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()

    @api.put("/uploads/{name}", status_code=201,
             summary="Store the body as OUT/uploads/NAME (NAME_00001… if taken) for workflows to read; answers its path")
    async def upload(name: str, request: Request) -> dict[str, Any]:
        if not UPLOAD_NAME.fullmatch(name):
            raise HTTPException(422, "an upload's name is up to 100 letters, digits, '_', '.' and '-', starting with a letter or digit")
        body = await request.body()
        path = await run_in_threadpool(write_new, s.out / "uploads", name, body)
        return {"name": path.name, "path": str(path), "bytes": len(body)}

    return api
