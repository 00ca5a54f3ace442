"""A run's events retold as ComfyUI's WebSocket messages, and its files as ComfyUI's images, for
the runs queued through ComfyUI's routes (``routes/comfy.py``).

ComfyUI speaks of its own node ids; a run speaks of the graphflow nodes its prompt was translated
into. The store keeps, with each such run, what its client sent and which ComfyUI node each
graphflow node came from (``meta["nodes"]``), so the retelling names the ComfyUI node: ``executing``
when the run moves on to a node of another ComfyUI node, ``progress`` for each step of a loop
(the denoising loop), ``executed`` with the pictures each output node wrote, then the end
(``execution_success``, ``execution_error`` or ``execution_interrupted``) and ``executing`` with
``node: null``, which is what ComfyUI's clients wait for. A run's previews (``graphflow serve
--preview-every N``) go out as ComfyUI's binary preview frames (``preview_frame``); with previews
off no binary frame is ever sent, since ComfyUI's clients take any binary frame for a picture."""

from __future__ import annotations

import base64
import struct
import time
from collections import OrderedDict
from typing import Any

from graphflow.server.store import Store

#: runs whose ComfyUI details one socket keeps at hand
KEEP_RUNS = 64

#: ComfyUI's ``protocol.BinaryEventTypes.PREVIEW_IMAGE``, and the image types of its ``send_image``
PREVIEW_IMAGE, JPEG, PNG = 1, 1, 2


def preview_frame(e: dict[str, Any]) -> bytes:
    """A ``preview`` event as ComfyUI's ``server.send_image`` frames it: the event type and the image
    type as 4-byte big-endian integers, then the image's bytes (here the preview's PNG, carried in
    the event as a data URL). Clients such as ComfyUI's websockets_api_example_ws_images.py read the
    picture from byte 8 on."""
    png = base64.b64decode(e["image"].partition(",")[2])
    return struct.pack(">II", PREVIEW_IMAGE, PNG) + png


def queue_status(store: Store) -> dict[str, Any]:
    """ComfyUI's ``status``: the prompts waiting, the running one included (clients wait for 0)."""
    counts = store.counts()
    return {"status": {"exec_info": {"queue_remaining": counts.get("queued", 0) + counts.get("running", 0)}}}


def prompt_outputs(prompt: dict[str, Any]) -> list[str]:
    """The prompt's output nodes (ComfyUI's ``outputs_to_execute``): those no other node reads."""
    read = {str(v[0]) for node in prompt.values() if isinstance(node, dict)
            for v in (node.get("inputs") or {}).values() if isinstance(v, list) and len(v) == 2}
    return [k for k in prompt if k not in read]


def _files_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        if isinstance(value.get("file"), str):
            return [value["file"]]
        return [f for v in value.values() for f in _files_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in _files_in(v)]
    return []


def _image(run_id: str, name: str) -> dict[str, str]:
    folder, _, filename = name.rpartition("/")
    return {"filename": filename, "subfolder": f"{run_id}/{folder}" if folder else run_id, "type": "output"}


def files_by_node(run: dict[str, Any], meta: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """ComfyUI node id → the pictures it wrote, as ``{filename, subfolder, type}``: each workflow
    output's files go to the ComfyUI node its graphflow node came from; files no output names go
    to the prompt's first output node."""
    prompt, nodes = meta["prompt"], meta["nodes"]
    out: dict[str, list[dict[str, str]]] = {}
    placed: set[str] = set()
    declared = meta.get("workflow_outputs") or {}
    links = declared.items() if isinstance(declared, dict) else ((o, o) for o in declared)
    for name, link in links:
        source = link.get("from") if isinstance(link, dict) else link
        graph_node = str(source).split(".")[0]
        comfy = nodes.get(graph_node) or (graph_node if graph_node in prompt else None)
        value = (run.get("outputs") or {}).get(name)
        for f in _files_in(value):
            if comfy is not None and f not in placed and f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".gif")):
                out.setdefault(comfy, []).append(_image(run["id"], f))
                placed.add(f)
    rest = [f["name"] for f in run.get("files") or [] if f["name"] not in placed and f["name"].lower().endswith((".png", ".jpg", ".jpeg", ".webp"))]
    sinks = meta.get("outputs") or []
    if rest and sinks:
        out.setdefault(sinks[0], []).extend(_image(run["id"], f) for f in rest)
    return out


class Retelling:
    """One socket's retelling: ``self(event)`` → the ComfyUI messages it makes for client ``sid``
    (JSON messages as dicts, binary frames as bytes). Called off the event loop (it may read the
    store)."""

    def __init__(self, store: Store, sid: str) -> None:
        self.store, self.sid = store, sid
        self._runs: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._at: dict[str, str | None] = {}  # run → the ComfyUI node last said to be executing
        self._said: dict[str, set[str]] = {}  # run → the ComfyUI nodes said to be executing (each once, as ComfyUI does)

    def _meta(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._runs:
            rows = self.store.aliased(run_ids=[run_id])
            self._runs[run_id] = {**rows[0]["meta"], "prompt_id": rows[0]["alias"]} if rows else None
            while len(self._runs) > KEEP_RUNS:
                self._runs.popitem(last=False)
        return self._runs[run_id]

    def __call__(self, e: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        kind, run_id = e["type"], e.get("run_id", "")
        status = {"type": "status", "data": queue_status(self.store)} if kind in ("queued", "run_started", "run_finished") else None
        meta = self._meta(run_id) if kind in ("run_started", "node_started", "loop_step", "preview", "run_finished") else None
        if meta is None or meta.get("client_id") not in (None, self.sid):
            return [status] if status else []
        if kind == "preview":
            return [preview_frame(e)]
        pid = meta["prompt_id"]
        now = int(time.time() * 1000)
        if kind == "run_started":
            self._at[run_id] = None
            self._said[run_id] = set()
            return [status, {"type": "execution_start", "data": {"prompt_id": pid, "timestamp": now}},
                    {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid, "timestamp": now}}]
        if kind == "node_started":
            comfy = meta["nodes"].get(e["node"])
            said = self._said.setdefault(run_id, set())
            if e.get("iteration") is not None or comfy is None or comfy in said:
                return []
            self._at[run_id] = comfy
            said.add(comfy)
            return [{"type": "executing", "data": {"node": comfy, "display_node": comfy, "prompt_id": pid}}]
        if kind == "loop_step":
            comfy = meta["nodes"].get(e["node"]) or self._at.get(run_id)
            return [{"type": "progress", "data": {"value": e["index"] + 1, "max": e["count"], "prompt_id": pid, "node": comfy}}]
        # run_finished
        self._at.pop(run_id, None)
        self._said.pop(run_id, None)
        self._runs.pop(run_id, None)
        out = [{"type": "executed", "data": {"node": node, "display_node": node, "output": {"images": images}, "prompt_id": pid}}
               for node, images in files_by_node({"id": run_id, **e}, meta).items()]
        if e["status"] == "done":
            out.append({"type": "execution_success", "data": {"prompt_id": pid, "timestamp": now}})
        elif e["status"] == "cancelled":
            out.append({"type": "execution_interrupted", "data": {"prompt_id": pid, "node_id": None, "node_type": None, "executed": []}})
        else:
            out.append({"type": "execution_error", "data": self._error(run_id, pid, meta, now)})
        out += [{"type": "executing", "data": {"node": None, "display_node": None, "prompt_id": pid}}, status]
        return out

    def _error(self, run_id: str, pid: str, meta: dict[str, Any], now: int) -> dict[str, Any]:
        """ComfyUI's ``execution_error`` from the stored result's first error (or problem)."""
        run = self.store.get(run_id) or {}
        first = (run.get("errors") or run.get("problems") or [{}])[0]
        graph_node = first.get("node")
        comfy = meta["nodes"].get(graph_node or "", graph_node if graph_node in meta["prompt"] else None)
        prompt_node = meta["prompt"].get(comfy) if comfy else None
        return {"prompt_id": pid, "node_id": comfy, "node_type": (prompt_node or {}).get("class_type", first.get("type")),
                "executed": [], "exception_message": first.get("message", f"the run ended {run.get('status')}"),
                "exception_type": first.get("exc_type", first.get("code", "")), "traceback": [],
                "current_inputs": {}, "current_outputs": {}, "timestamp": now}
