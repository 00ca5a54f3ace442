"""The HTTP API (FastAPI), assembled: the services the routes share, made once; the middleware;
the routes, one module per resource in ``routes/``; the errors answered as JSON problems. The
queue and history are the store's, the running is the worker's (and its process's), the live
events the broker's; who may call is ``auth``'s.
"""

import asyncio
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graphflow.node.limits import Limits
from graphflow.node.registry import Registry
from graphflow.problems import Problem, ValidationFailed
from graphflow.server.auth import check_hosts, guard_state_changes, token_dependency
from graphflow.server.broker import Broker
from graphflow.server.owner import Ownership
from graphflow.server.retention import Retention
from graphflow.server.routes import Services, comfy, events, files, page, runs, uploads, workflows
from graphflow.server.settings import Settings
from graphflow.server.store import Store
from graphflow.server.worker import Worker
from graphflow.server.worker_process import WorkerRecipe
from graphflow.server.workflow_catalog import Catalog
from graphflow.version import __version__

def problems_response(e: ValidationFailed) -> JSONResponse:
    """Every problem at once, each with its code and field, as ``graphflow validate --json``
    reports them: a client fixes them all in one go."""
    return JSONResponse({"detail": str(e).splitlines()[0].rstrip(":"), "problems": [p.to_dict() for p in e.problems]}, status_code=422)


def _services(settings: Settings, recipe: WorkerRecipe, registry: Registry, limits: Limits) -> Services:
    out = Path(settings.out).resolve()
    (out / "uploads").mkdir(parents=True, exist_ok=True)
    store = Store(settings.db)
    broker = Broker()
    catalog = Catalog(settings.workflows, registry, limits, read_roots=settings.read_roots)
    worker = Worker(store, recipe, broker, catalog, out, Retention(settings.keep_runs, settings.keep_days),
                    run_timeout=settings.run_timeout, cancel_grace=settings.cancel_grace, worker_memory=settings.worker_memory)
    return Services(settings=settings, out=out, registry=registry, store=store, broker=broker, catalog=catalog, worker=worker)


def _answer_problems_as_json(app: FastAPI) -> None:
    """FastAPI's own validation errors (a bad query parameter) in the same shape as graphflow's."""
    @app.exception_handler(ValidationFailed)
    async def _invalid(request: Request, e: ValidationFailed) -> JSONResponse:
        return problems_response(e)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [Problem("bad_request", err.get("msg", "invalid"), field=".".join(str(x) for x in err.get("loc", ())))
                    for err in e.errors()]
        return problems_response(ValidationFailed(problems))

    @app.exception_handler(sqlite3.Error)
    async def _database(request: Request, e: sqlite3.Error) -> JSONResponse:
        """A database that fails (read-only, locked, full) is the server's state, not a bug: 503,
        saying which file and what, and /api/health says it too."""
        return JSONResponse({"detail": f"the server's database ({request.app.state.store.path}) failed: {e}"}, status_code=503,
                            headers={"Retry-After": "5"})


def create_app(settings: Settings, recipe: WorkerRecipe, registry: Registry, limits: Limits | None = None) -> FastAPI:
    """``recipe`` builds the worker process's executor and registry (see ``worker_process``);
    ``registry`` and ``limits`` are what this process checks submissions with, the same ones."""
    owner = Ownership(Path(settings.out), {"db": str(Path(settings.db).resolve())})  # before anything is read or removed there
    try:
        s = _services(settings, recipe, registry, limits or Limits())
    except BaseException:
        owner.release()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the broker wakes listeners on this loop; the worker starts only once there is one to wake
        s.broker.attach(asyncio.get_running_loop())
        s.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(s.worker.stop)
            s.broker.attach(None)
            s.store.close()
            owner.release()

    app = FastAPI(title="graphflow", version=__version__, lifespan=lifespan, max_body_size=settings.max_body,
                  description="Queue graphflow workflows, follow their progress, fetch their files.")
    app.state.store, app.state.broker, app.state.worker, app.state.catalog = s.store, s.broker, s.worker, s.catalog
    check_hosts(app, settings.allowed_hosts)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])
    _answer_problems_as_json(app)

    # every route under /api carries the token check, declared once here so no route can miss it;
    # the modules' order is the OpenAPI document's
    api = APIRouter(prefix="/api", dependencies=[Depends(token_dependency(settings.token)),
                                                 Depends(guard_state_changes(settings.cors_origins))])
    for module in (runs, events, files, uploads, workflows, page):
        api.include_router(module.api_routes(s))
    app.include_router(api)
    app.include_router(events.open_routes(s))  # the WebSocket, which checks the token itself
    app.include_router(page.open_routes(s))
    app.include_router(comfy.open_routes(s))  # ComfyUI's API at its root paths, each route checking its caller
    app.include_router(comfy.socket_routes(s))
    return app
