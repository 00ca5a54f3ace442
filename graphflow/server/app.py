"""The HTTP API (FastAPI), assembled: the services the routes share, made once; the middleware;
the routes, one module per resource in ``routes/``; the errors answered as JSON problems. The
queue and history are the store's, the running is the worker's, the live events the broker's;
who may call is ``auth``'s.
"""

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graphflow.engine.executor import Executor
from graphflow.node.registry import Registry
from graphflow.problems import Problem, ValidationFailed
from graphflow.server.auth import check_hosts, token_dependency
from graphflow.server.broker import Broker
from graphflow.server.retention import Retention
from graphflow.server.routes import Services, events, files, page, runs, workflows
from graphflow.server.settings import Settings
from graphflow.server.store import Store
from graphflow.server.worker import Worker
from graphflow.server.workflow_catalog import Catalog
from graphflow.version import __version__

def problems_response(e: ValidationFailed) -> JSONResponse:
    """Every problem at once, each with its code and field, as ``graphflow validate --json``
    reports them: a client fixes them all in one go."""
    return JSONResponse({"detail": str(e).splitlines()[0].rstrip(":"), "problems": [p.to_dict() for p in e.problems]}, status_code=422)


def _services(settings: Settings, executor: Executor, registry: Registry) -> Services:
    out = Path(settings.out).resolve()
    store = Store(settings.db)
    broker = Broker()
    catalog = Catalog(settings.workflows, registry, executor.limits)
    worker = Worker(store, executor, broker, catalog, out, Retention(settings.keep_runs, settings.keep_days))
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


def create_app(settings: Settings, executor: Executor, registry: Registry) -> FastAPI:
    s = _services(settings, executor, registry)

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
    api = APIRouter(prefix="/api", dependencies=[Depends(token_dependency(settings.token))])
    for module in (runs, events, files, workflows, page):
        api.include_router(module.api_routes(s))
    app.include_router(api)
    app.include_router(events.open_routes(s))  # the WebSocket, which checks the token itself
    app.include_router(page.open_routes(s))
    return app
