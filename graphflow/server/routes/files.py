"""The files runs wrote, served from their folders (``OUT/runs/<id>/``) and nowhere else."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from graphflow.server.outputs import RUN_ID, run_dir
from graphflow.server.routes import Services


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()

    @api.get("/files/{run_id}/{name:path}", summary="A file the run wrote (only inside that run's folder)")
    def get_file(run_id: str, name: str) -> FileResponse:
        # one 404 for every refusal: an answer must not tell which files exist outside the folder
        if not RUN_ID.fullmatch(run_id):
            raise HTTPException(404, "no such file")
        root = run_dir(s.out, run_id).resolve()
        try:
            path = (root / name).resolve()
        except (OSError, ValueError):
            raise HTTPException(404, "no such file") from None
        if not path.is_relative_to(root) or path == root or not path.is_file():
            raise HTTPException(404, "no such file")
        if any(part.startswith(".") for part in path.relative_to(root).parts):  # a file still being written
            raise HTTPException(404, "no such file")
        return FileResponse(path)

    return api
