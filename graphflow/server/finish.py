"""A run's end as clients hear it: the ``run_finished`` event. The worker sends it when a run
ends, the cancel route when a queued run is cancelled before it started, the worker again for a run
a crash left behind, and the event stream rebuilds it for a run whose log was never kept; built
here, so all four say the same thing in the same shape.

The stored log is the broker's log plus this last event, numbered after it, written before the
event is published: a client that hears ``run_finished`` and reads the run back finds it ended."""

from __future__ import annotations

from typing import Any

from graphflow.server.broker import Broker
from graphflow.server.store import Store


def finished_event(status: str, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary`` (the stored result) adds what the run produced; without it the event only says
    how the run ended, for runs whose result is unknown (interrupted by a crash)."""
    event: dict[str, Any] = {"type": "run_finished", "status": status, "ok": status == "done", "cancelled": status == "cancelled"}
    if summary is not None:
        event.update(seconds=summary.get("seconds"), outputs=summary.get("outputs", {}), files=summary["files"])
    return event


def record_end(store: Store, broker: Broker, run_id: str, status: str, summary: dict[str, Any], event: dict[str, Any]) -> None:
    """Store the result and the whole log, then tell the clients (who may then read it back at once)."""
    log = broker.log(run_id)
    store.finish(run_id, status, summary, [*log, {**event, "run_id": run_id, "seq": len(log)}])
    broker.publish(run_id, event, final=True)
