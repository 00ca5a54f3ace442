"""ComfyUI's HTTP and WebSocket API, answered at the root paths ComfyUI uses (``/prompt``,
``/history``, ``/view``, ``/queue``, ``/interrupt``, ``/object_info``, ``/upload/image``,
``/system_stats``, ``/ws``), so ComfyUI's scripts and client libraries drive graphflow unchanged.

Nothing here runs ComfyUI: a prompt (ComfyUI's API format) is translated into an ordinary graphflow
workflow by the ``comfy`` translator a node pack offers (``graphflow.node.importers``), checked as
``/api/runs`` checks a workflow, and queued as a run like any other; the run keeps the client's
``prompt_id`` (a store alias) and what the client sent, so the answers can speak of ComfyUI's node
ids. Its events are retold in ComfyUI's messages (``comfy_events``); its files are ComfyUI's
``{filename, subfolder, type}``, the subfolder naming the run's folder.

Who may call: ``auth.comfy_allowed`` (the token also as a Basic password or ``?token=``, a JSON
body whatever its content type, another site's page refused by its Origin), under the server's
Host and body-size rules like every route."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations

import functools
import inspect
import platform
import sys
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from graphflow.atomic import write_new
from graphflow.document.depth import depth_problem
from graphflow.document.jsontext import parse_json
from graphflow.problems import ValidationFailed
from graphflow.server.auth import comfy_allowed
from graphflow.server.comfy_events import Retelling, files_by_node, prompt_outputs, queue_status
from graphflow.server.finish import finished_event, record_end
from graphflow.server.outputs import RUN_ID, run_dir
from graphflow.server.routes import Services
from graphflow.server.routes.events import relay
from graphflow.server.routes.files import confined_file
from graphflow.server.routes.uploads import UPLOAD_NAME
from graphflow.server.store import AliasTaken
from graphflow.version import __version__

#: the fields of POST /prompt's body ComfyUI documents; any other is refused, naming it
PROMPT_KEYS = ("prompt", "client_id", "prompt_id", "extra_data", "number", "front", "partial_execution_targets")
#: the longest prompt_id a client may choose (ComfyUI's are UUIDs, 36 characters)
MAX_PROMPT_ID = 200


def comfy_error(kind: str, message: str, details: str = "", node_errors: dict | None = None, status: int = 400) -> JSONResponse:
    """A refusal in ComfyUI's shape: ``{error: {type, message, details, extra_info}, node_errors}``."""
    return JSONResponse({"error": {"type": kind, "message": message, "details": details, "extra_info": {}},
                         "node_errors": node_errors or {}}, status_code=status)


def node_errors_from(exc: Exception, prompt: dict[str, Any], to_comfy: dict[str, str]) -> dict[str, Any]:
    """ComfyUI's ``node_errors`` (ComfyUI node id → its errors and class type) from a translator's
    refusal (which carries them as ``node_errors``) or from graphflow's problems with the
    translated workflow (whose nodes are mapped back to the ComfyUI nodes they came from).
    Problems that name no node are the prompt's own: under the key ``"prompt"``."""
    given = getattr(exc, "node_errors", None)
    if isinstance(given, dict):
        return given
    out: dict[str, Any] = {}
    problems = exc.problems if isinstance(exc, ValidationFailed) else []
    if not problems:
        return {"prompt": {"errors": [{"type": type(exc).__name__, "message": str(exc), "details": "", "extra_info": {}}],
                           "dependent_outputs": [], "class_type": ""}}
    for p in problems:
        comfy = to_comfy.get(p.node or "", p.node if p.node in prompt else None) or "prompt"
        node = prompt.get(comfy) if isinstance(prompt.get(comfy), dict) else {}
        entry = out.setdefault(comfy, {"errors": [], "dependent_outputs": [], "class_type": node.get("class_type", "")})
        extra = {"input_name": p.field.split(".")[-1]} if p.field else {}
        entry["errors"].append({"type": p.code, "message": p.message, "details": str(p), "extra_info": extra})
    return out


def graph_nodes(id_map: Any, prompt: dict[str, Any]) -> dict[str, str]:
    """graphflow node id → the ComfyUI node id it came from, whichever way the translator's map
    points (ComfyUI id → graphflow id or ids, or the reverse)."""
    out: dict[str, str] = {}
    for k, v in (id_map or {}).items():
        if str(k) in prompt:
            for g in (v if isinstance(v, (list, tuple)) else [v]):
                out[str(g)] = str(k)
        else:
            out[str(k)] = str(v)
    return out


def described(class_types: dict[str, Any], defaults: dict[str, dict[str, Any]], output_nodes: tuple[str, ...]) -> dict[str, Any]:
    """ComfyUI's ``/object_info`` from a translator's ``CLASS_TYPES`` (class type → (inputs: name →
    a type name or a tuple of the values allowed, output types)), for a translator that does not
    describe itself (``object_info()``)."""
    out = {}
    for name, (inputs, outputs) in class_types.items():
        required: dict[str, list[Any]] = {}
        optional: dict[str, list[Any]] = {}
        for k, kind in inputs.items():
            opts = {"default": defaults[name][k]} if k in defaults.get(name, {}) else {}
            if opts.get("default", 0) is None:  # an input a prompt may leave out altogether (ComfyUI's "optional")
                optional[k] = [kind, {}]
                continue
            required[k] = [list(kind), opts] if isinstance(kind, (tuple, list)) else [kind, opts]
        out[name] = {"input": {"required": required, **({"optional": optional} if optional else {})},
                     "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {})},
                     "output": list(outputs), "output_is_list": [False] * len(outputs), "output_name": list(outputs),
                     "name": name, "display_name": name, "description": "translated into graphflow nodes", "category": "graphflow",
                     "output_node": name in output_nodes, "python_module": "graphflow"}
    return out


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as field name → (file name, bytes), read by the standard
    library's MIME parser (a form is a MIME message)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise HTTPException(400, "send the picture as multipart/form-data, in the field 'image'")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def open_routes(s: Services) -> APIRouter:
    """Mounted at the root, as ComfyUI's are; each route checks the caller itself (``guard``)."""

    def guard(request: Request) -> None:
        comfy_allowed(request, s.settings.token, s.settings.cors_origins)

    router = APIRouter(dependencies=[Depends(guard)], tags=["ComfyUI"])

    def translator():
        from graphflow.node.importers import importer

        return importer("comfy")

    # --- queueing --------------------------------------------------------------------------

    @router.get("/prompt", summary="ComfyUI: how many prompts are queued or running")
    def prompt_status() -> dict[str, Any]:
        return queue_status(s.store)["status"]

    @router.post("/prompt", summary="ComfyUI: queue a prompt (its API format); 400 with node_errors and nothing queued if it is bad")
    async def submit(request: Request) -> JSONResponse:
        try:
            body = parse_json(await request.body(), "<request>")
        except ValidationFailed as e:
            return comfy_error("invalid_prompt", "the body is not JSON", str(e))
        if not isinstance(body, dict):
            return comfy_error("invalid_prompt", "the body must be a JSON object")
        deep = depth_problem(body, s.catalog.limits.depth, field="body", what="the request")  # before anything walks or stores it
        if deep is not None:
            return comfy_error("invalid_prompt", deep.message)
        unknown = [k for k in body if k not in PROMPT_KEYS]
        if unknown:
            return comfy_error("invalid_prompt", f"unknown field {unknown[0]!r} (fields: {', '.join(PROMPT_KEYS)})")
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return comfy_error("no_prompt", "No prompt provided", "'prompt' must be an object of nodes (ComfyUI's API format)")
        prompt_id, client_id = body.get("prompt_id"), body.get("client_id")
        if prompt_id is not None and not (isinstance(prompt_id, str) and 0 < len(prompt_id) <= MAX_PROMPT_ID):
            return comfy_error("invalid_prompt", f"'prompt_id' must be a string of 1 to {MAX_PROMPT_ID} characters")
        if client_id is not None and not (isinstance(client_id, str) and len(client_id) <= MAX_PROMPT_ID):
            return comfy_error("invalid_prompt", f"'client_id' must be a string of up to {MAX_PROMPT_ID} characters")
        extra = body.get("extra_data", {})
        if not isinstance(extra, dict):
            return comfy_error("invalid_prompt", "'extra_data' must be an object")
        mod = translator()
        if mod is None:
            return comfy_error("no_translator", "this server has no ComfyUI translator (no installed node pack offers one)", status=501)
        prompt_id = prompt_id or str(uuid.uuid4())
        translate = mod.translate
        if "input_dir" in inspect.signature(translate).parameters:  # LoadImage's names are in the uploads, as in ComfyUI's input folder
            translate = functools.partial(translate, input_dir=str(s.out / "uploads"))

        def queue() -> JSONResponse:
            to_comfy: dict[str, str] = {}
            try:
                workflow, params, id_map = translate(prompt)
                to_comfy = graph_nodes(id_map, prompt)
                s.catalog.bind(workflow, params)
            except Exception as e:  # noqa: BLE001 - the translator's refusal or graphflow's problems, answered
                if not isinstance(e, ValidationFailed) and getattr(e, "node_errors", None) is None:
                    # a prompt the translator did not foresee: still the prompt's fault as far as the client can act on it
                    return comfy_error("invalid_prompt", "the prompt could not be translated", f"{type(e).__name__}: {e}")
                top = getattr(e, "error", None)
                if isinstance(top, dict) and "type" in top:
                    return JSONResponse({"error": {"details": "", "extra_info": {}, **top}, "node_errors": node_errors_from(e, prompt, to_comfy)},
                                        status_code=400)
                return comfy_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                   node_errors=node_errors_from(e, prompt, to_comfy))
            run_id = uuid.uuid4().hex
            meta = {"client_id": client_id, "prompt": prompt, "extra_data": extra, "nodes": to_comfy,
                    "outputs": prompt_outputs(prompt), "workflow_outputs": workflow.get("outputs", {})}
            try:
                added = s.store.add(run_id, workflow, params, None, s.settings.max_queue, alias=prompt_id, meta=meta)
            except AliasTaken:
                return comfy_error("prompt_id_taken", f"a prompt with prompt_id {prompt_id!r} is already in the history; choose another")
            if not added:
                return comfy_error("queue_full", f"the queue is full ({s.settings.max_queue} runs waiting); try again later", status=429)
            number = s.store.aliased(run_ids=[run_id])[0]["seq"]
            s.broker.publish(run_id, {"type": "queued"})
            s.worker.notify()
            return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

        return await run_in_threadpool(queue)

    @router.get("/queue", summary="ComfyUI: the running prompt and the waiting ones")
    def get_queue() -> dict[str, Any]:
        def item(r: dict[str, Any]) -> list[Any]:
            m = r["meta"]
            return [r["seq"], r["alias"], m["prompt"], {**m["extra_data"], "client_id": m["client_id"]}, m["outputs"]]

        return {"queue_running": [item(r) for r in s.store.aliased(statuses=("running",))],
                "queue_pending": [item(r) for r in s.store.aliased(statuses=("queued",))]}

    def cancel_queued(run_id: str) -> None:
        if s.store.cancel(run_id) == "cancelled":
            record_end(s.store, s.broker, run_id, "cancelled", {}, finished_event("cancelled", {"seconds": 0.0, "outputs": {}, "files": []}))

    @router.post("/queue", summary="ComfyUI: {clear: true} or {delete: [prompt_id, …]} takes waiting prompts off the queue")
    async def edit_queue(request: Request) -> dict[str, Any]:
        body = await _optional_json(request)

        def edit() -> dict[str, Any]:
            if body.get("clear"):
                for r in s.store.aliased(statuses=("queued",)):
                    cancel_queued(r["id"])
            for alias in body.get("delete", []) if isinstance(body.get("delete"), list) else []:
                run_id = s.store.by_alias(str(alias))
                if run_id is not None and (s.store.get(run_id) or {}).get("status") == "queued":
                    cancel_queued(run_id)
            return {}

        return await run_in_threadpool(edit)

    @router.post("/interrupt", summary="ComfyUI: stop the running prompt (only it, if {prompt_id} is given)")
    async def interrupt(request: Request) -> dict[str, Any]:
        body = await _optional_json(request)
        run_id = s.worker.running
        wanted = body.get("prompt_id")
        if run_id is not None and (wanted is None or s.store.by_alias(str(wanted)) == run_id):
            if s.store.cancel(run_id) == "running":
                s.worker.cancel(run_id)
        return {}

    # --- results ---------------------------------------------------------------------------

    def history_entry(r: dict[str, Any]) -> dict[str, Any]:
        m = r["meta"]
        ok = r["status"] == "done"
        messages = [["execution_start", {"prompt_id": r["alias"], "timestamp": int((r["started"] or r["created"]) * 1000)}]]
        end = {"prompt_id": r["alias"], "timestamp": int((r["finished"] or time.time()) * 1000)}
        if ok:
            messages.append(["execution_success", end])
        elif r["status"] == "cancelled":
            messages.append(["execution_interrupted", end])
        else:
            messages.append(["execution_error", end])
        outputs = {node: {"images": images} for node, images in files_by_node(r, m).items()}
        return {"prompt": [r["seq"], r["alias"], m["prompt"], {**m["extra_data"], "client_id": m["client_id"]}, m["outputs"]],
                "outputs": outputs,
                "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": messages},
                "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}}

    @router.get("/history", summary="ComfyUI: the ended prompts, oldest first (the newest max_items)")
    def history(max_items: int | None = None) -> dict[str, Any]:
        if max_items is not None and max_items < 1:
            raise HTTPException(400, "max_items must be at least 1")
        limit = None if max_items is None else min(max_items, 1 << 62)  # more than any history holds, within SQLite's integers
        return {r["alias"]: history_entry(r) for r in s.store.aliased(limit=limit, statuses=("done", "failed", "cancelled", "interrupted"))}

    @router.get("/history/{prompt_id}", summary="ComfyUI: one ended prompt ({} while it is queued or running, or unknown)")
    def history_one(prompt_id: str) -> dict[str, Any]:
        run_id = s.store.by_alias(prompt_id)
        rows = s.store.aliased(run_ids=[run_id], statuses=("done", "failed", "cancelled", "interrupted")) if run_id else []
        return {prompt_id: history_entry(rows[0])} if rows else {}

    @router.post("/history", summary="ComfyUI: {clear: true} or {delete: [prompt_id, …]} removes ended prompts with their files")
    async def edit_history(request: Request) -> dict[str, Any]:
        from graphflow.server.retention import remove_run

        body = await _optional_json(request)

        def edit() -> dict[str, Any]:
            if body.get("clear"):
                ids = [r["id"] for r in s.store.aliased()]
            else:
                ids = [i for a in (body.get("delete") if isinstance(body.get("delete"), list) else []) if (i := s.store.by_alias(str(a)))]
            for run_id in ids:
                if s.store.delete(run_id) == "deleted":
                    remove_run(s.store, s.out, s.broker, run_id)
            return {}

        return await run_in_threadpool(edit)

    @router.get("/view", summary="ComfyUI: a picture a prompt wrote (type=output, subfolder = its run) or one uploaded (type=input)")
    def view(filename: str, subfolder: str = "", type: str = "output") -> FileResponse:
        name = f"{subfolder.strip('/')}/{filename}" if subfolder.strip("/") else filename
        if type == "input":
            return FileResponse(confined_file(s.out / "uploads", name))
        if type not in ("output", "temp"):
            raise HTTPException(400, f"type must be 'output', 'temp' or 'input', not {type!r}")
        run_id, _, rest = name.partition("/")
        if not RUN_ID.fullmatch(run_id) or not rest:
            raise HTTPException(404, "no such file")
        return FileResponse(confined_file(run_dir(s.out, run_id), rest))

    # --- what this server is -------------------------------------------------------------------

    @router.get("/object_info", summary="ComfyUI: the class types this server translates, with their inputs")
    def object_info() -> dict[str, Any]:
        mod = translator()
        if mod is None:
            return {}
        info = getattr(mod, "object_info", None)
        return info() if info is not None else described(getattr(mod, "CLASS_TYPES", {}), getattr(mod, "DEFAULTS", {}),
                                                          getattr(mod, "OUTPUT_NODES", ()))

    @router.get("/object_info/{class_type}", summary="ComfyUI: one class type this server translates")
    def object_info_one(class_type: str) -> dict[str, Any]:
        every = object_info()
        return {class_type: every[class_type]} if class_type in every else {}

    @router.get("/embeddings", summary="ComfyUI: textual-inversion embeddings (graphflow has none)")
    def embeddings() -> list[str]:
        return []

    @router.get("/system_stats", summary="ComfyUI: the server's system (graphflow's version where ComfyUI's would be)")
    def system_stats() -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = ""
        try:
            import os

            pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            free = os.sysconf("SC_AVPHYS_PAGES") * size
            total = pages * size
        except (ValueError, OSError, AttributeError):
            total = free = 0
        return {"system": {"os": sys.platform, "python_version": sys.version, "embedded_python": False,
                           "comfyui_version": f"graphflow {__version__}", "pytorch_version": torch_version,
                           "ram_total": total, "ram_free": free, "argv": ["graphflow", "serve"], "machine": platform.machine()},
                "devices": []}

    # --- uploads -------------------------------------------------------------------------------

    @router.post("/upload/image", summary="ComfyUI: a picture (multipart field 'image') into OUT/uploads/[subfolder/], never replacing a file")
    async def upload_image(request: Request) -> dict[str, Any]:
        fields = _parse_multipart(request.headers.get("content-type", ""), await request.body())
        if "image" not in fields:
            raise HTTPException(400, "no picture: send it in the multipart field 'image'")
        filename, data = fields["image"]
        subfolder = fields.get("subfolder", (None, b""))[1].decode(errors="replace").strip("/")
        if not filename or not UPLOAD_NAME.fullmatch(filename):
            raise HTTPException(400, "an upload's name is up to 100 letters, digits, '_', '.' and '-', starting with a letter or digit")
        if subfolder and not all(UPLOAD_NAME.fullmatch(p) for p in subfolder.split("/")):
            raise HTTPException(400, "a subfolder is names of up to 100 letters, digits, '_', '.' and '-' separated by '/'")
        folder = s.out / "uploads" / subfolder if subfolder else s.out / "uploads"

        def store() -> str:
            folder.mkdir(parents=True, exist_ok=True)
            return write_new(folder, filename, data).name

        name = await run_in_threadpool(store)
        return {"name": name, "subfolder": subfolder, "type": "input"}

    return router


async def _optional_json(request: Request) -> dict[str, Any]:
    """A body that may be empty (ComfyUI's clients post /interrupt with none); else a JSON object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = parse_json(raw, "<request>")
    except ValidationFailed as e:
        raise HTTPException(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def socket_routes(s: Services) -> APIRouter:
    """``/ws?clientId=``: ComfyUI's messages for the prompts that client queued (all prompts'
    when they named no client), and the queue's ``status`` for everyone."""
    router = APIRouter()

    @router.websocket("/ws")
    async def socket(ws: WebSocket) -> None:
        try:
            comfy_allowed(ws, s.settings.token, s.settings.cors_origins)
        except HTTPException:
            await ws.close(code=1008)
            return
        await ws.accept()
        sid = ws.query_params.get("clientId") or uuid.uuid4().hex
        retell = Retelling(s.store, sid)

        async def first() -> list[dict[str, Any]]:
            status = await run_in_threadpool(queue_status, s.store)
            return [{"type": "status", "data": {**status, "sid": sid}}]

        async def messages(e: dict[str, Any]) -> list[dict[str, Any] | bytes]:
            return await run_in_threadpool(retell, e)

        await relay(ws, s, first, messages)

    return router
