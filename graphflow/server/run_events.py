"""A run's executor events as the JSON clients read: ``type`` names the event, ``node_type`` the
node's type. Made in the worker process, where the executor runs, and sent to the server as plain
dicts. The executor's RunFinished is left out: the server sends its own ``run_finished`` once the
result is stored (``finish``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from graphflow.engine import events as ev

_NAMES = {ev.RunStarted: "run_started", ev.NodeStarted: "node_started", ev.NodeFinished: "node_finished",
          ev.LoopStep: "loop_step", ev.NodeFailedEvent: "node_failed"}


def event_dict(e: ev.Event) -> dict[str, Any] | None:
    name = _NAMES.get(type(e))
    if name is None:
        return None
    d = {"type": name}
    for f in dataclasses.fields(e):
        if f.name != "run_id":
            d["node_type" if f.name == "type" else f.name] = getattr(e, f.name)
    return d
