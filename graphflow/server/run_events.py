"""A run's executor events as the JSON clients read: ``type`` names the event, ``node_type`` the
node's type. Made in the worker process, where the executor runs, and sent to the server as plain
dicts. The executor's RunFinished is left out: the server sends its own ``run_finished`` once the
result is stored (``finish``)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from graphflow.engine import events as ev

_NAMES = {ev.RunStarted: "run_started", ev.NodeStarted: "node_started", ev.NodeFinished: "node_finished",
          ev.LoopStep: "loop_step", ev.NodeFailedEvent: "node_failed"}


def event_dict(e: ev.Event) -> dict[str, Any] | None:
    if isinstance(e, ev.Preview):
        return preview_dict(e)
    name = _NAMES.get(type(e))
    if name is None:
        return None
    d = {"type": name}
    for f in dataclasses.fields(e):
        if f.name != "run_id":
            d["node_type" if f.name == "type" else f.name] = getattr(e, f.name)
    return d


def preview_dict(e: ev.Preview) -> dict[str, Any]:
    """A ``Preview`` as JSON: the PNG as a data URL an ``<img>`` shows as it is (a WebSocket that
    sends binary frames decodes the base64 after the comma back to the PNG's bytes)."""
    return {"type": "preview", "node": e.node, "step": e.step, "steps": e.steps, "width": e.width, "height": e.height,
            "image": "data:image/png;base64," + base64.b64encode(e.png).decode("ascii")}
