"""Run events, from the worker thread to every listening client.

Each run has a log of numbered events (``seq`` 0, 1, …): a client that connects late reads the log
from the start (or from ``Last-Event-ID``), then waits for more; nothing is lost between the two,
because a waiter is taken before the log is read. The worker appends from its thread and wakes the
server's event loop with ``call_soon_threadsafe``; the waiting and the WebSocket queues live on
that loop only. Finished logs are also written to the store, so only the latest few stay here.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

#: finished runs whose logs stay in memory (older ones are read back from the store)
KEEP_FINISHED = 256
#: events one WebSocket client may fall behind before it is disconnected
SOCKET_BACKLOG = 10_000
#: events one run's log holds; past it, node events are dropped (loop steps and the end are kept)
MAX_LOG = 200_000


class Broker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, list[dict[str, Any]]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._progress: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, asyncio.Event] = {}  # loop thread only
        self._sockets: set[asyncio.Queue] = set()  # loop thread only

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    # --- any thread ----------------------------------------------------------------------------

    def publish(self, run_id: str, event: dict[str, Any], final: bool = False) -> dict[str, Any]:
        with self._lock:
            log = self._logs.setdefault(run_id, [])
            if len(log) >= MAX_LOG and not final and event["type"] not in ("loop_step", "requeued"):
                return event
            event["run_id"], event["seq"] = run_id, len(log)
            log.append(event)
            self._count(run_id, event)
            if final:
                self._progress.pop(run_id, None)
                self._finished[run_id] = None
                while len(self._finished) > KEEP_FINISHED:
                    old, _ = self._finished.popitem(last=False)
                    self._logs.pop(old, None)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake, run_id, event)
            except RuntimeError:  # the loop has closed: the server is stopping
                pass
        return event

    def _count(self, run_id: str, e: dict[str, Any]) -> None:
        kind = e["type"]
        if kind == "run_started":
            self._progress[run_id] = {"nodes": e["nodes"], "finished": 0, "node": None, "loop": None}
        elif (p := self._progress.get(run_id)) is not None:
            if kind == "node_started" and e["iteration"] is None:
                p["node"] = e["node"]
            elif kind == "node_finished" and e["iteration"] is None:
                p["finished"] += 1
                p["loop"] = None
            elif kind == "loop_step":
                p["loop"] = {"node": e["node"], "index": e["index"], "count": e["count"]}

    def progress(self, run_id: str) -> dict[str, Any] | None:
        """A running run's top-level nodes finished of all, the node running, its loop step."""
        with self._lock:
            p = self._progress.get(run_id)
            return None if p is None else {**p}

    def forget(self, run_id: str) -> None:
        """A deleted run: its events go too."""
        with self._lock:
            self._logs.pop(run_id, None)
            self._finished.pop(run_id, None)
            self._progress.pop(run_id, None)

    def log(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._logs.get(run_id, ()))

    def read(self, run_id: str, start: int) -> tuple[list[dict[str, Any]], bool, bool]:
        """(events from ``start``, whether the run has finished, whether the log is here at all)."""
        with self._lock:
            log = self._logs.get(run_id)
            if log is None:
                return [], False, False
            return log[start:], run_id in self._finished, True

    # --- the event loop's thread ---------------------------------------------------------------

    def waiter(self, run_id: str) -> asyncio.Event:
        """Set on the next event of ``run_id``; take it before reading the log."""
        w = self._waiters.get(run_id)
        if w is None:
            w = self._waiters[run_id] = asyncio.Event()
        return w

    def forget_waiter(self, run_id: str) -> None:
        """A finished run has no next event to wait for."""
        self._waiters.pop(run_id, None)

    def _wake(self, run_id: str, event: dict[str, Any]) -> None:
        w = self._waiters.pop(run_id, None)
        if w is not None:
            w.set()
        for q in list(self._sockets):
            if q.qsize() >= SOCKET_BACKLOG:  # a client this far behind is dropped, not waited for
                self._sockets.discard(q)
                q.put_nowait(None)
            else:
                q.put_nowait(event)

    def socket_queue(self) -> asyncio.Queue:
        """Every run's events from now on; ``None`` means the client fell too far behind."""
        q: asyncio.Queue = asyncio.Queue()
        self._sockets.add(q)
        return q

    def drop_socket(self, q: asyncio.Queue) -> None:
        self._sockets.discard(q)
