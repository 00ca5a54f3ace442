"""The files runs wrote, served from their folders (``OUT/runs/<id>/``) and nowhere else: a path
that leads out of the folder, through ``..`` or a link (the run's folder itself replaced by one
included), is not followed."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from graphflow.server.outputs import RUN_ID, run_dir
from graphflow.server.routes import Services

#: the longest file path a run can have written that this serves (Linux's PATH_MAX)
MAX_NAME = 4096


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()

    @api.get("/files/{run_id}/{name:path}", summary="A file the run wrote (only inside that run's folder)")
    def get_file(run_id: str, name: str) -> FileResponse:
        # one 404 for every refusal: an answer must not tell which files exist outside the folder
        if not RUN_ID.fullmatch(run_id):
            raise HTTPException(404, "no such file")
        return FileResponse(confined_file(run_dir(s.out, run_id), name))  # not resolved: a run folder that is a link is refused

    return api


def confined_file(root: Path, name: str) -> Path:
    """The plain file ``name`` inside ``root`` (a run's folder, the uploads folder), or one 404
    for every refusal: an answer must not tell which files exist outside the folder. Not followed:
    ``..``, a link out, a hidden file (one still being written), ``root`` itself a link."""
    if len(name) > MAX_NAME or any(len(part.encode()) > 255 for part in name.split("/")):
        raise HTTPException(404, "no such file")
    try:
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root or not path.is_file():
            raise HTTPException(404, "no such file")
    except (OSError, ValueError):
        raise HTTPException(404, "no such file") from None
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        raise HTTPException(404, "no such file")
    return path
