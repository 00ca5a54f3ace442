"""The one thread that takes runs from the store's queue and runs them on the executor, one at a
time (as one GPU would), so the executor's caches and loaded models serve every request.

The queue lives in SQLite, not in the executor: the worker claims the oldest queued row, submits
it with its own output folder (``OUT/runs/<id>/``), relays its events to the broker, and writes the
result back. Stopping the server cancels the running run and puts it back in the queue.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from graphflow.engine import events as ev
from graphflow.engine.executor import Executor, RunHandle
from graphflow.problems import ValidationFailed
from graphflow.server.broker import Broker
from graphflow.server.finish import finished_event, record_end
from graphflow.server.outputs import list_files, run_dir, summarize
from graphflow.server.retention import Retention, sweep_orphans
from graphflow.server.store import Store
from graphflow.server.workflow_catalog import Catalog

_NAMES = {ev.RunStarted: "run_started", ev.NodeStarted: "node_started", ev.NodeFinished: "node_finished",
          ev.LoopStep: "loop_step", ev.NodeFailedEvent: "node_failed"}


def event_dict(e: ev.Event) -> dict[str, Any] | None:
    """An executor event as the JSON clients read (``type`` names the event, ``node_type`` the
    node's type). The executor's RunFinished is replaced by the server's own ``run_finished``,
    sent once the result is stored."""
    name = _NAMES.get(type(e))
    if name is None:
        return None
    d = {"type": name}
    for f in dataclasses.fields(e):
        if f.name != "run_id":
            d["node_type" if f.name == "type" else f.name] = getattr(e, f.name)
    return d


class Worker:
    def __init__(self, store: Store, executor: Executor, broker: Broker, catalog: Catalog, out_root: Path,
                 retention: Retention | None = None) -> None:
        self.store, self.executor, self.broker, self.catalog = store, executor, broker, catalog
        self.retention = retention or Retention()
        self.out_root = Path(out_root).resolve()
        self._wake = threading.Condition()
        self._stopping = False
        self._current: tuple[str, RunHandle] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sweep_orphans(self.store, self.out_root)
        self.retention.prune(self.store, self.broker, self.out_root)
        for run_id, status in self.store.recover():
            if status == "queued":
                self.broker.publish(run_id, {"type": "requeued", "reason": "interrupted"})
            else:
                self.broker.publish(run_id, finished_event(status), final=True)  # interrupted or cancelled: never "done"
        self._thread = threading.Thread(target=self._loop, name="graphflow-server-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel the running run (it goes back to the queue) and wait for the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        current = self._current
        if current is not None:
            current[1].cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        """A run was queued."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, run_id: str) -> None:
        """Stop ``run_id`` if it is the running one (the store already records the request)."""
        current = self._current
        if current is not None and current[0] == run_id:
            current[1].cancel()

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            row = self.store.claim()
            if row is None:
                with self._wake:
                    if not self._stopping:
                        self._wake.wait(1.0)
                continue
            try:
                self._execute(row)
            except Exception as e:  # a bug here must not stop the queue
                self._end(row["id"], "failed", {"errors": [{"node": "(server)", "type": "Server", "exc_type": type(e).__name__,
                                                            "message": f"{type(e).__name__}: {e}", "iteration": None}]})

    def _execute(self, row: dict[str, Any]) -> None:
        run_id = row["id"]
        folder = run_dir(self.out_root, run_id)
        try:
            bound = self.catalog.bind(row["workflow"], row["params"])
            handle = self.executor.submit(bound, out_dir=folder)
        except ValidationFailed as e:  # valid when queued; a file it reads may have gone since
            self._end(run_id, "failed", {"problems": [p.to_dict() for p in e.problems]})
            return
        self._current = (run_id, handle)
        if self._stopping or self.store.cancel_requested(run_id):
            handle.cancel()
        try:
            for e in handle.events():
                d = event_dict(e)
                if d is not None:
                    if d["type"] == "run_started":
                        d["attempt"] = row["attempts"]
                    self.broker.publish(run_id, d)
            result = handle.result()
        finally:
            self._current = None
        if result.cancelled and self._stopping and not self.store.cancel_requested(run_id):
            self.store.requeue(run_id)
            self.broker.publish(run_id, {"type": "requeued", "reason": "shutdown"})
            return
        status = result.status
        self._end(run_id, status, summarize(result, folder, run_id, status))

    def _end(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        """Store the result, then tell the clients (who may then read it back at once)."""
        summary.setdefault("files", list_files(run_dir(self.out_root, run_id), run_id))
        record_end(self.store, self.broker, run_id, status, summary, finished_event(status, summary))
        self.retention.prune(self.store, self.broker, self.out_root)
