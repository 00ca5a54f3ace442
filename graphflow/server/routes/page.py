"""What a person or a monitor looks at first: the web page (open, like any page: its API calls
carry the token) and the queue's status (behind the token)."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from graphflow.server.routes import Services

PAGE = Path(__file__).parent.parent / "page.html"


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()

    @api.get("/status", summary="The queue: how many runs wait, which one runs")
    def status() -> dict[str, Any]:
        return {"counts": s.store.counts(), "time": time.time()}

    @api.get("/health", summary="Whether the server can take and run work: its database and its worker process (503 if not)")
    def health() -> JSONResponse:
        worker = s.worker.health()
        problems = dict(worker.pop("problems"))
        try:
            s.store.check()
        except sqlite3.Error as e:
            problems["database"] = f"{s.store.path}: {e}"
        return JSONResponse({"ok": not problems, "problems": problems, **worker}, status_code=503 if problems else 200)

    return api


def open_routes(s: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return router
