"""The HTTP API (FastAPI): routes only. The queue and history are the store's, the running is the
worker's, the live events the broker's; this module turns requests into calls on them.

Request bodies are parsed by graphflow's own JSON reader, as workflow files are: a key given twice
or an integer beyond 64 bits is refused (422), never silently changed. POST bodies must say
``Content-Type: application/json``, which a cross-site form cannot send without a CORS preflight
(and CORS is off unless asked), so a web page the user visits cannot queue runs on their server.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local dependencies

import asyncio
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from graphflow.engine.executor import Executor
from graphflow.document.jsontext import parse_json
from graphflow.problems import Problem, ValidationFailed
from graphflow.node.registry import Registry
from graphflow.server.broker import Broker
from graphflow.server.catalog import Catalog
from graphflow.server.outputs import RUN_ID, run_dir
from graphflow.server.retention import Retention, remove_run
from graphflow.server.store import FINAL, Store
from graphflow.server.worker import Worker

PAGE = Path(__file__).with_name("page.html")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


@dataclass
class Settings:
    out: Path
    db: Path
    token: str | None = None
    max_queue: int = 1000
    max_body: int = 16 << 20
    cors_origins: list[str] = field(default_factory=list)
    #: Host headers accepted (None: any); a loopback server accepts only loopback names, which
    #: stops DNS-rebinding pages from reaching it under a name of their own
    allowed_hosts: list[str] | None = None
    workflows: Path | None = None
    #: ended runs kept in the history with their files: the newest ``keep_runs``, none older than ``keep_days`` (None: no limit)
    keep_runs: int | None = 10_000
    keep_days: float | None = None


class RunRequest:
    """The body of POST /api/runs and /api/validate."""

    KEYS = ("workflow", "workflow_name", "params")

    def __init__(self, body: bytes) -> None:
        data = parse_json(body, "<request>")
        problems = []
        if not isinstance(data, dict):
            raise ValidationFailed([Problem("bad_request", "the body must be a JSON object")])
        for k in data:
            if k not in self.KEYS:
                problems.append(Problem("bad_request", f"unknown field {k!r} (fields: {', '.join(self.KEYS)})", field=str(k)))
        self.workflow, self.workflow_name, self.params = data.get("workflow"), data.get("workflow_name"), data.get("params") or {}
        if self.workflow is not None and not isinstance(self.workflow, dict):
            problems.append(Problem("bad_request", "'workflow' must be a workflow document (a JSON object)", field="workflow"))
        if self.workflow_name is not None and not isinstance(self.workflow_name, str):
            problems.append(Problem("bad_request", "'workflow_name' must be a string", field="workflow_name"))
        if not isinstance(self.params, dict):
            problems.append(Problem("bad_request", "'params' must be an object of parameter values", field="params"))
        if problems:
            raise ValidationFailed(problems)


def problems_response(e: ValidationFailed) -> JSONResponse:
    return JSONResponse({"detail": str(e).splitlines()[0].rstrip(":"), "problems": [p.to_dict() for p in e.problems]}, status_code=422)


def node_description(n) -> dict[str, Any]:
    """A node type as `graphflow describe` shows it, as data: every port, kind, default, range."""
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


def create_app(settings: Settings, executor: Executor, registry: Registry) -> FastAPI:
    out = Path(settings.out).resolve()
    store = Store(settings.db)
    broker = Broker()
    catalog = Catalog(settings.workflows, registry, executor.limits)
    worker = Worker(store, executor, broker, catalog, out, Retention(settings.keep_runs, settings.keep_days))
    cached: dict[str, bytes] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        broker.attach(asyncio.get_running_loop())
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)
            broker.attach(None)
            store.close()

    app = FastAPI(title="graphflow", version="0.1.0", lifespan=lifespan, max_body_size=settings.max_body,
                  description="Queue graphflow workflows, follow their progress, fetch their files.")
    app.state.store, app.state.broker, app.state.worker, app.state.catalog = store, broker, worker, catalog
    if settings.allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])

    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: HTTPAuthorizationCredentials | None) -> bool:
        if settings.token is None:
            return True
        return credentials is not None and secrets.compare_digest(credentials.credentials.encode(), settings.token.encode())

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not authorized(credentials):
            raise HTTPException(401, "this server needs 'Authorization: Bearer <token>' (graphflow serve --token)",
                                headers={"WWW-Authenticate": "Bearer"})

    def known_run(run_id: str) -> dict[str, Any]:
        row = store.get(run_id) if RUN_ID.fullmatch(run_id) else None
        if row is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return row

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    @app.exception_handler(ValidationFailed)
    async def _invalid(request: Request, e: ValidationFailed) -> JSONResponse:
        return problems_response(e)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [Problem("bad_request", err.get("msg", "invalid"), field=".".join(str(x) for x in err.get("loc", ())))
                    for err in e.errors()]
        return problems_response(ValidationFailed(problems))

    async def json_body(request: Request) -> RunRequest:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "send the body as JSON with 'Content-Type: application/json'")
        return RunRequest(await request.body())

    @api.post("/runs", status_code=201, summary="Queue a run (422 with every problem if it is invalid; 429 if the queue is full)")
    async def submit(request: Request) -> JSONResponse:
        body = await json_body(request)

        def queue() -> dict[str, Any]:
            data, name = catalog.resolve(body.workflow, body.workflow_name)
            catalog.bind(data, body.params)
            run_id = uuid.uuid4().hex
            if not store.add(run_id, data, body.params, name, settings.max_queue):
                raise HTTPException(429, f"the queue is full ({settings.max_queue} runs waiting); try again later",
                                    headers={"Retry-After": "1"})
            broker.publish(run_id, {"type": "queued"})
            worker.notify()
            return {"id": run_id, "status": "queued", "url": f"/api/runs/{run_id}", "events": f"/api/runs/{run_id}/events"}

        return JSONResponse(await run_in_threadpool(queue), status_code=201)

    @api.post("/validate", summary="Check a workflow and parameters without queueing anything")
    async def validate(request: Request) -> dict[str, Any]:
        body = await json_body(request)

        def check() -> dict[str, Any]:
            try:
                data, _ = catalog.resolve(body.workflow, body.workflow_name)
                catalog.bind(data, body.params)
            except ValidationFailed as e:
                return {"ok": False, "problems": [p.to_dict() for p in e.problems]}
            return {"ok": True, "problems": []}

        return await run_in_threadpool(check)

    @api.get("/runs", summary="History, newest first")
    def history(limit: Annotated[int, Query(ge=1, le=1000)] = 50, before: str | None = None) -> dict[str, Any]:
        runs = store.history(limit, before)
        return {"runs": runs, "next": runs[-1]["id"] if len(runs) == limit else None}

    @api.get("/runs/{run_id}", summary="A run: status, parameters, timings, errors, outputs (files as URLs)")
    def get_run(run: Annotated[dict[str, Any], Depends(known_run)]) -> dict[str, Any]:
        if run["status"] == "running":
            run["progress"] = broker.progress(run["id"])
        return run

    @api.post("/runs/{run_id}/cancel", summary="A queued run never starts; a running one stops at its next node or loop step")
    def cancel(run: Annotated[dict[str, Any], Depends(known_run)]) -> JSONResponse:
        run_id = run["id"]
        status = store.cancel(run_id)
        if status == "cancelled" and run["status"] == "queued":
            final = {"type": "run_finished", "status": "cancelled", "ok": False, "cancelled": True, "seconds": 0.0, "outputs": {}, "files": []}
            log = broker.log(run_id)
            store.finish(run_id, "cancelled", {}, [*log, {**final, "run_id": run_id, "seq": len(log)}])
            broker.publish(run_id, final, final=True)
        elif status == "running":
            worker.cancel(run_id)
            status = "cancelling"
        elif status in FINAL and status != "cancelled":
            raise HTTPException(409, f"run {run_id} has already ended ({status})")
        return JSONResponse({"id": run_id, "status": status}, status_code=202 if status == "cancelling" else 200)

    @api.delete("/runs/{run_id}", summary="Delete an ended run from the history, with its files")
    def delete_run(run: Annotated[dict[str, Any], Depends(known_run)]) -> dict[str, Any]:
        status = store.delete(run["id"])
        if status != "deleted":
            raise HTTPException(409, f"run {run['id']} is {status}: cancel it first, then delete it once it has ended")
        remove_run(out, broker, run["id"])
        return {"id": run["id"], "deleted": True}

    @api.get("/runs/{run_id}/events", response_class=EventSourceResponse,
             summary="Server-Sent Events: what the run did so far, then live, ending with run_finished")
    async def run_events(run: Annotated[dict[str, Any], Depends(known_run)],
                         last_event_id: Annotated[str | None, Header()] = None):
        run_id = run["id"]
        k = int(last_event_id) + 1 if last_event_id and last_event_id.isdigit() else 0
        while True:
            waiter = broker.waiter(run_id)
            batch, done, here = broker.read(run_id, k)
            if not here:
                stored = await run_in_threadpool(store.events, run_id)
                if stored is None:  # ended with no log kept (left running by a crash, then given up): its end only
                    row = await run_in_threadpool(store.get, run_id)
                    if row is not None and row["status"] in FINAL:
                        stored = [{"type": "run_finished", "status": row["status"], "ok": row["status"] == "done",
                                   "cancelled": row["status"] == "cancelled", "run_id": run_id, "seq": 0}]
                if stored is not None:  # ended before this server started, or long ago
                    broker.forget_waiter(run_id)
                    for e in stored[k:]:
                        yield ServerSentEvent(raw_data=orjson.dumps(e).decode(), event=e["type"], id=str(e["seq"]))
                    return
            for e in batch:
                yield ServerSentEvent(raw_data=orjson.dumps(e).decode(), event=e["type"], id=str(e["seq"]))
                k = e["seq"] + 1
            if done:
                broker.forget_waiter(run_id)
                return
            try:
                await asyncio.wait_for(waiter.wait(), 5.0)  # the timeout re-checks a run queued before a restart
            except TimeoutError:
                pass

    @api.get("/files/{run_id}/{name:path}", summary="A file the run wrote (only inside that run's folder)")
    def get_file(run_id: str, name: str) -> FileResponse:
        if not RUN_ID.fullmatch(run_id):
            raise HTTPException(404, "no such file")
        root = run_dir(out, run_id).resolve()
        try:
            path = (root / name).resolve()
        except (OSError, ValueError):
            raise HTTPException(404, "no such file") from None
        if not path.is_relative_to(root) or path == root or not path.is_file():
            raise HTTPException(404, "no such file")
        if any(part.startswith(".") for part in path.relative_to(root).parts):  # a file still being written
            raise HTTPException(404, "no such file")
        return FileResponse(path)

    @api.get("/nodes", summary="Every node type: ports, kinds, defaults, ranges (what `graphflow describe` shows)")
    def nodes() -> Response:
        if "nodes" not in cached:
            cached["nodes"] = orjson.dumps([node_description(n) for n in registry], default=str)
        return Response(cached["nodes"], media_type="application/json")

    @api.get("/schema", summary="The JSON Schema of the workflow format")
    def schema() -> Response:
        if "schema" not in cached:
            from graphflow.node.schema import workflow_schema

            cached["schema"] = orjson.dumps(workflow_schema(registry))
        return Response(cached["schema"], media_type="application/json")

    @api.get("/workflows", summary="The shipped workflows, with their parameters")
    def workflows() -> dict[str, Any]:
        return {"workflows": catalog.listing()}

    @api.get("/workflows/{name}", summary="A shipped workflow's document")
    def workflow(name: str) -> dict[str, Any]:
        data = catalog.shipped().get(name)
        if data is None:
            raise HTTPException(404, f"no shipped workflow named {name!r}")
        return data

    @api.get("/status", summary="The queue: how many runs wait, which one runs")
    def status() -> dict[str, Any]:
        return {"counts": store.counts(), "time": time.time()}

    app.include_router(api)

    @app.websocket("/api/ws")
    async def socket(ws: WebSocket) -> None:
        """Every run's events as ``{"type": …, "data": {…}}`` messages (ComfyUI's shape). Browsers
        cannot set headers on a WebSocket, so the token may also come as ``?token=``."""
        header = ws.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ws.query_params.get("token")
        if settings.token is not None and not (given and secrets.compare_digest(given.encode(), settings.token.encode())):
            await ws.close(code=1008)
            return
        await ws.accept()
        q = broker.socket_queue()
        closed = asyncio.ensure_future(_until_closed(ws))
        try:
            await ws.send_text(orjson.dumps({"type": "status", "data": {"counts": store.counts()}}).decode())
            while True:
                get = asyncio.ensure_future(q.get())
                await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                e = get.result()
                if e is None:  # fell too far behind
                    await ws.close(code=1013)
                    break
                await ws.send_text(orjson.dumps({"type": e["type"], "data": e}).decode())
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            broker.drop_socket(q)
            closed.cancel()

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


async def _until_closed(ws: WebSocket) -> None:
    """Reads (and ignores) what the client sends, until it goes."""
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
