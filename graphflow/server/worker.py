"""The one thread that takes runs from the store's queue and has the worker process run them, one
at a time (as one GPU would), so the process's caches and loaded models serve every request.

The queue lives in SQLite, not in the process: this thread claims the oldest queued row, checks
it, sends it with its own output folder (``OUT/runs/<id>/``) to the worker process, relays its
events to the broker, and writes the result back. It also watches the run: a cancel the run does
not honour within ``cancel_grace`` seconds, a run past ``run_timeout``, or a process grown past
``worker_memory`` bytes gets the process killed (a fresh one starts for the next run), and the
run ends with the reason. A run whose process died by itself goes back to the queue once; one
that took its process down twice is failed. Stopping the server cancels the running run, which
goes back to the queue.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from graphflow.problems import ValidationFailed
from graphflow.server.broker import Broker
from graphflow.server.finish import finished_event, record_end
from graphflow.server.outputs import list_files, run_dir
from graphflow.server.retention import Retention, sweep_orphans
from graphflow.server.store import MAX_ATTEMPTS, Store
from graphflow.server.worker_process import WorkerDied, WorkerProcess, WorkerRecipe
from graphflow.server.workflow_catalog import Catalog

#: how often the queue thread looks at the running run (cancel, timeout, memory) while it is quiet
POLL = 0.05
#: how long a run may wait on a database that fails before the queue thread tries again
DB_RETRY = 1.0


def server_error(message: str, node: tuple[str, str] | None = None, exc_type: str = "Server") -> dict[str, Any]:
    """An error entry as the executor's (``NodeError.to_dict``): the node that was running when
    the server stopped the run (``(id, type)``), else the server itself."""
    nid, ntype = node or ("(server)", "Server")
    return {"node": nid, "type": ntype, "exc_type": exc_type, "message": message, "iteration": None}


class Worker:
    def __init__(self, store: Store, recipe: WorkerRecipe, broker: Broker, catalog: Catalog, out_root: Path,
                 retention: Retention | None = None, *, run_timeout: float | None = None, cancel_grace: float = 10.0,
                 worker_memory: int | None = None) -> None:
        self.store, self.broker, self.catalog = store, broker, catalog
        self.process = WorkerProcess(recipe)
        self.retention = retention or Retention()
        self.out_root = Path(out_root).resolve()
        self.run_timeout, self.cancel_grace, self.worker_memory = run_timeout, cancel_grace, worker_memory
        self._wake = threading.Condition()
        self._stopping = False
        self._current: str | None = None
        self._cancel: set[str] = set()
        self._thread: threading.Thread | None = None
        #: what is wrong, for /api/health: the database's last error, the worker's failure to start
        self.problems: dict[str, str] = {}

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
        """Cancel the running run (it goes back to the queue), wait for the thread, end the process.
        A run that does not stop within the grace period has its process killed."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self.process.close()

    def notify(self) -> None:
        """A run was queued."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, run_id: str) -> None:
        """Stop ``run_id`` if it is the running one (the store already records the request)."""
        if self._current == run_id:
            self._cancel.add(run_id)

    @property
    def running(self) -> str | None:
        """The id of the run the process is running now, if any."""
        return self._current

    def health(self) -> dict[str, Any]:
        return {"worker_pid": self.process.pid, "worker_restarts": self.process.restarts, "problems": dict(self.problems)}

    # --- the queue -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            try:
                row = self.store.claim()
                self.problems.pop("database", None)
            except sqlite3.Error as e:  # read-only, locked, full: keep the thread, say so, try again
                self.problems["database"] = f"{self.store.path}: {e}"
                self._sleep(DB_RETRY)
                continue
            if row is None:
                self._sleep(1.0)
                continue
            try:
                self._execute(row)
            except sqlite3.Error as e:
                self.problems["database"] = f"{self.store.path}: {e}"
                self._end_quietly(row["id"], "failed", {"errors": [server_error(f"the database failed: {e}", exc_type="DatabaseError")]})
            except Exception as e:  # a bug here must not stop the queue
                self._end_quietly(row["id"], "failed", {"errors": [server_error(f"{type(e).__name__}: {e}", exc_type=type(e).__name__)]})

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            if not self._stopping:
                self._wake.wait(seconds)

    def _end_quietly(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        try:
            self._end(run_id, status, summary)
        except sqlite3.Error as e:  # the run stays "running" in the store: the next start re-queues it
            self.problems["database"] = f"{self.store.path}: {e}"
            self.broker.publish(run_id, finished_event(status, {**summary, "files": []}), final=True)

    def _execute(self, row: dict[str, Any]) -> None:
        run_id = row["id"]
        folder = run_dir(self.out_root, run_id)
        self._current = run_id  # from its claim on: a cancel that comes while the process starts is not lost
        try:
            try:
                self.catalog.bind(row["workflow"], row["params"])  # valid when queued; a file it reads may have gone since
            except ValidationFailed as e:
                self._end(run_id, "failed", {"problems": [p.to_dict() for p in e.problems]})
                return
            try:
                self.process.ensure()
                self.problems.pop("worker", None)
            except WorkerDied as e:
                self.problems["worker"] = str(e)
                self.store.requeue(run_id)
                self._sleep(DB_RETRY)
                return
            self._watch(row, folder)
        finally:
            self._current = None
            self._cancel.discard(run_id)

    def _watch(self, row: dict[str, Any], folder: Path) -> None:
        """Send the run, relay its events, and stop it by force if it must stop and will not."""
        run_id = row["id"]
        self.process.send(("run", run_id, row["workflow"], row["params"], str(folder)))
        started = time.monotonic()
        why: str | None = None  # why this server stopped the run: cancel, shutdown, timeout
        kill_at: float | None = None
        running_node: tuple[str, str] | None = None
        if self.store.cancel_requested(run_id):
            self._cancel.add(run_id)
        while True:
            try:
                msg = self.process.receive(POLL)
            except WorkerDied as e:
                return self._died(row, folder, str(e), running_node)
            if msg is not None:
                kind = msg[0]
                if kind == "event":
                    d = msg[2]
                    if d["type"] == "run_started":
                        d["attempt"] = row["attempts"]
                    elif d["type"] == "node_started":
                        running_node = (d["node"], d["node_type"])
                    elif d["type"] in ("node_finished", "node_failed"):
                        running_node = None
                    self.broker.publish(run_id, d)  # then the checks below: a run that talks a lot is watched too
                elif kind == "invalid":
                    return self._end(run_id, "failed", {"problems": msg[2]})
                elif kind == "error":
                    return self._end(run_id, "failed", {"errors": [server_error(msg[2])]})
                else:
                    status, summary = msg[2], msg[3]
                    return self._ended(run_id, status, summary, why)
            now = time.monotonic()
            if why is None:
                if self._stopping:
                    why = "shutdown"
                elif run_id in self._cancel:
                    why = "cancel"
                elif self.run_timeout is not None and now - started > self.run_timeout:
                    why = "timeout"
                if why is not None:
                    self.process.send(("cancel", run_id))
                    kill_at = now + (min(self.cancel_grace, 5.0) if why == "shutdown" else self.cancel_grace)
            if self.worker_memory is not None:
                memory = self.process.rss()
                if memory > self.worker_memory:
                    self.process.kill()
                    return self._forced(row, folder, "memory", running_node, memory)
            if kill_at is not None and now > kill_at:
                self.process.kill()
                return self._forced(row, folder, why, running_node)

    def _ended(self, run_id: str, status: str, summary: dict[str, Any], why: str | None) -> None:
        """The run ended in the process, maybe because this server asked it to."""
        if why == "shutdown" and status == "cancelled":
            self.store.requeue(run_id)
            self.broker.publish(run_id, {"type": "requeued", "reason": "shutdown"})
            return
        if why == "timeout" and status == "cancelled":
            status = "failed"
            summary["errors"].append(server_error(f"the run exceeded --run-timeout ({self.run_timeout:g} s) and was stopped",
                                                  exc_type="RunTimeout"))
        self._end(run_id, status, summary)

    def _forced(self, row: dict[str, Any], folder: Path, why: str, node: tuple[str, str] | None, memory: int = 0) -> None:
        """The process was killed: the run ends (or goes back to the queue, at shutdown) with the reason."""
        from graphflow.sizes import format_size, short_size

        run_id = row["id"]
        where = f"node '{node[0]}' ({node[1]})" if node else "the run"
        if why == "shutdown":
            self.store.requeue(run_id)
            self.broker.publish(run_id, {"type": "requeued", "reason": "shutdown"})
            return
        if why == "cancel":
            status, text = "cancelled", (f"{where} did not stop within {self.cancel_grace:g} s of the cancel; "
                                         "its worker process was killed and restarted")
        elif why == "timeout":
            status, text = "failed", (f"the run exceeded --run-timeout ({self.run_timeout:g} s) and {where} did not stop "
                                      f"within {self.cancel_grace:g} s; its worker process was killed and restarted")
        else:
            status, text = "failed", (f"the worker process grew to {format_size(memory)} while {where} ran, over "
                                      f"--worker-memory ({short_size(self.worker_memory)}); it was killed and restarted")
        exc = {"cancel": "Cancelled", "timeout": "RunTimeout", "memory": "WorkerMemory"}[why]
        self.broker.publish(run_id, {"type": "worker_restarted", "reason": why})
        self._end(run_id, status, {"errors": [server_error(text, node, exc)]})

    def _died(self, row: dict[str, Any], folder: Path, how: str, node: tuple[str, str] | None) -> None:
        """The process died by itself during the run: once is given the benefit of the doubt (the
        run goes back to the queue), twice is the run's doing."""
        run_id = row["id"]
        self.process.kill()
        self.broker.publish(run_id, {"type": "worker_restarted", "reason": "died"})
        if self.store.cancel_requested(run_id) or self._stopping:
            if self._stopping and not self.store.cancel_requested(run_id):
                self.store.requeue(run_id)
                return
            return self._end(run_id, "cancelled", {"errors": [server_error(how)]})
        if row["attempts"] < MAX_ATTEMPTS:
            self.store.retry(run_id)
            self.broker.publish(run_id, {"type": "requeued", "reason": "worker died"})
            return
        where = f" during node '{node[0]}' ({node[1]})" if node else ""
        self._end(run_id, "failed", {"errors": [server_error(f"{how}{where}, for the second time: the run is not retried",
                                                             node, "WorkerDied")]})

    def _end(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        """Store the result, then tell the clients (who may then read it back at once)."""
        summary.setdefault("files", list_files(run_dir(self.out_root, run_id), run_id))
        record_end(self.store, self.broker, run_id, status, summary, finished_event(status, summary))
        self.retention.prune(self.store, self.broker, self.out_root)
