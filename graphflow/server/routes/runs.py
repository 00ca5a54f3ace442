"""Runs: queue one, check one without queueing it, the history, one run, cancel, delete.

Request bodies are parsed by graphflow's own JSON reader, as workflow files are: a key given twice
or an integer beyond 64 bits is refused (422), never silently changed. (That POST bodies are JSON,
which keeps other web pages from queueing or cancelling runs, is ``auth.guard_state_changes``'.)
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local dependencies

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graphflow.document.jsontext import parse_json
from graphflow.problems import Problem, ValidationFailed
from graphflow.server.finish import finished_event, record_end
from graphflow.server.retention import remove_run
from graphflow.server.routes import Services
from graphflow.server.store import FINAL


class RunRequest:
    """The body of POST /api/runs and /api/validate. Every problem is reported at once, and a field
    it does not know is refused rather than ignored: a misspelt ``params`` would otherwise run the
    workflow with its defaults."""

    KEYS = ("workflow", "workflow_name", "params")

    def __init__(self, body: bytes) -> None:
        data = parse_json(body, "<request>")
        problems = []
        if not isinstance(data, dict):
            raise ValidationFailed([Problem("bad_request", "the body must be a JSON object")])
        for k in data:
            if k not in self.KEYS:
                problems.append(Problem("bad_request", f"unknown field {k!r} (fields: {', '.join(self.KEYS)})", field=str(k)))
        self.workflow, self.workflow_name, self.params = data.get("workflow"), data.get("workflow_name"), data.get("params", {})
        if self.workflow is not None and not isinstance(self.workflow, dict):
            problems.append(Problem("bad_request", "'workflow' must be a workflow document (a JSON object)", field="workflow"))
        if self.workflow_name is not None and not isinstance(self.workflow_name, str):
            problems.append(Problem("bad_request", "'workflow_name' must be a string", field="workflow_name"))
        if not isinstance(self.params, dict):
            problems.append(Problem("bad_request", "'params' must be an object of parameter values", field="params"))
        if problems:
            raise ValidationFailed(problems)


async def json_body(request: Request) -> RunRequest:
    """The body read by hand, not declared to FastAPI: its JSON reader would accept what
    graphflow's refuses."""
    return RunRequest(await request.body())


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()
    known_run = s.known_run

    @api.post("/runs", status_code=201, summary="Queue a run (422 with every problem if it is invalid; 429 if the queue is full)")
    async def submit(request: Request) -> JSONResponse:
        body = await json_body(request)

        def queue() -> dict[str, Any]:
            data, name = s.catalog.resolve(body.workflow, body.workflow_name)
            s.catalog.bind(data, body.params)
            run_id = uuid.uuid4().hex
            if not s.store.add(run_id, data, body.params, name, s.settings.max_queue):
                raise HTTPException(429, f"the queue is full ({s.settings.max_queue} runs waiting); try again later",
                                    headers={"Retry-After": "1"})
            s.broker.publish(run_id, {"type": "queued"})
            s.worker.notify()
            return {"id": run_id, "status": "queued", "url": f"/api/runs/{run_id}", "events": f"/api/runs/{run_id}/events"}

        return JSONResponse(await run_in_threadpool(queue), status_code=201)

    @api.post("/validate", summary="Check a workflow and parameters without queueing anything")
    async def validate(request: Request) -> dict[str, Any]:
        body = await json_body(request)

        def check() -> dict[str, Any]:
            try:
                data, _ = s.catalog.resolve(body.workflow, body.workflow_name)
                s.catalog.bind(data, body.params)
            except ValidationFailed as e:
                return {"ok": False, "problems": [p.to_dict() for p in e.problems]}
            return {"ok": True, "problems": []}

        return await run_in_threadpool(check)

    @api.get("/runs", summary="History, newest first")
    def history(limit: Annotated[int, Query(ge=1, le=1000)] = 50, before: str | None = None) -> dict[str, Any]:
        runs = s.store.history(limit, before)
        return {"runs": runs, "next": runs[-1]["id"] if len(runs) == limit else None}

    @api.get("/runs/{run_id}", summary="A run: status, parameters, timings, errors, outputs (files as URLs)")
    def get_run(run: Annotated[dict[str, Any], Depends(known_run)]) -> dict[str, Any]:
        if run["status"] == "running":
            run["progress"] = s.broker.progress(run["id"])
        return run

    @api.post("/runs/{run_id}/cancel", summary="A queued run never starts; a running one stops at its next node or loop step")
    def cancel(run: Annotated[dict[str, Any], Depends(known_run)]) -> JSONResponse:
        run_id = run["id"]
        status = s.store.cancel(run_id)
        if status == "cancelled" and run["status"] == "queued":  # no worker will end it: end it here
            final = finished_event("cancelled", {"seconds": 0.0, "outputs": {}, "files": []})
            record_end(s.store, s.broker, run_id, "cancelled", {}, final)
        elif status == "running":
            s.worker.cancel(run_id)
            status = "cancelling"
        elif status in FINAL and status != "cancelled":
            raise HTTPException(409, f"run {run_id} has already ended ({status})")
        return JSONResponse({"id": run_id, "status": status}, status_code=202 if status == "cancelling" else 200)

    @api.delete("/runs/{run_id}", summary="Delete an ended run from the history, with its files")
    def delete_run(run: Annotated[dict[str, Any], Depends(known_run)]) -> dict[str, Any]:
        status = s.store.delete(run["id"])
        if status != "deleted":
            raise HTTPException(409, f"run {run['id']} is {status}: cancel it first, then delete it once it has ended")
        remove_run(s.store, s.out, s.broker, run["id"])
        return {"id": run["id"], "deleted": True}

    return api
