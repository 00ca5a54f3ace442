"""The executor: runs as objects on one queue, sharing caches and models.

``submit`` checks and binds in the caller's thread (so a bad workflow fails there, before
anything queues) and returns a ``RunHandle``; one worker thread runs the queue in order, as one
GPU would. Listeners are called off that thread, through a bounded queue, so a slow listener
never slows a run; a hook that must act at an exact point subscribes ``on_run_thread=True``.
"""

from __future__ import annotations

import queue
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graphflow import events as ev
from graphflow.bind import BoundGraph
from graphflow.disk_cache import DiskCache
from graphflow.gc_tuning import fewer_gc_passes
from graphflow.limits import Limits
from graphflow.memory_cache import MemoryCache
from graphflow.models import ModelManager
from graphflow.plan import Keys, RunOptions, plan
from graphflow.results import NodeError, NodeStat, RunResult
from graphflow.run import Runner
from graphflow.stores import Stores

__all__ = ["Executor", "NodeError", "NodeStat", "RunHandle", "RunResult"]

_FLUSH = object()  # a marker in the listeners' queue: everything before it was delivered


class RunHandle:
    """One submitted run: its id, status, result, cancellation and its own event stream."""

    def __init__(self, bound: BoundGraph, on_cancel: Callable[[RunHandle], None] | None = None,
                 out_dir: Path | None = None) -> None:
        self.id = uuid.uuid4().hex[:16]
        self._on_cancel = on_cancel
        self.bound = bound
        self.out_dir = out_dir  # None: the executor's
        self.status = "queued"  # running, done, failed, cancelled
        self.cancel_event = threading.Event()
        self._result: RunResult | None = None
        self._finished = threading.Event()
        self._log: list[ev.Event] = []
        self._grew = threading.Condition()
        self._watchers = 0

    def cancel(self) -> None:
        """Stop at the next node or loop step; a queued run never starts (it is cancelled now)."""
        self.cancel_event.set()
        if self._on_cancel is not None:
            self._on_cancel(self)

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> RunResult:
        """Waits for the run (not for listeners: a listener may itself wait for this result)."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"run {self.id} is still {self.status}")
        assert self._result is not None
        return self._result

    def events(self) -> Iterator[ev.Event]:
        """Every event of this run from its start, live, ending with RunFinished."""
        k = 0
        while True:
            with self._grew:
                self._watchers += 1
                while k >= len(self._log) and not self._finished.is_set():
                    self._grew.wait(0.5)
                self._watchers -= 1
            while k < len(self._log):
                e = self._log[k]
                k += 1
                yield e
                if isinstance(e, ev.RunFinished):
                    return
            if self._finished.is_set() and k >= len(self._log):
                return

    def _record(self, e: ev.Event) -> None:
        self._log.append(e)
        if self._watchers:
            with self._grew:
                self._grew.notify_all()


class Executor:
    """Runs workflows and remembers their results (in memory, and on disk with ``cache_dir``)."""

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", out_dir: str | Path = "out",
                 cache_dir: str | Path | None = None, cache_max_size: int | str | None = 4 << 30,
                 memory_budget: int = 4 << 30, model_budget: int = 8 << 30,
                 models: ModelManager | None = None, limits: Limits | None = None, check_finite: bool = False,
                 listener_queue: int = 10_000) -> None:
        """``cache_max_size``: how much the disk cache (``cache_dir``) may hold, in bytes or as
        ``"500M"``/``"4G"``, before its least recently used entries are deleted (None: no limit).
        ``models``: a model manager to share with other executors (same device and dtype), so
        loaded weights outlive this executor's caches; by default the executor owns one.
        ``limits``: the resource ceilings every submitted run is bound within. ``check_finite``:
        fail a node whose output holds NaN or Inf, naming it (the CLI turns this on)."""
        self.device, self.dtype, self.out_dir = device, dtype, Path(out_dir)
        self.limits, self.check_finite = limits or Limits(), check_finite
        self.memory = MemoryCache(memory_budget)
        self.disk = DiskCache(cache_dir, max_bytes=cache_max_size) if cache_dir else None
        if models is not None and (models.device, models.dtype) != (device, dtype):
            raise ValueError(f"the shared model manager runs on {models.device}/{models.dtype}, this executor on {device}/{dtype}")
        self.models = models if models is not None else ModelManager(device, dtype, model_budget)
        self._sync: list[Callable[[ev.Event], None]] = []
        self._async: list[Callable[[ev.Event], None]] = []
        self._events: queue.Queue = queue.Queue(maxsize=listener_queue)
        self._runs: queue.Queue[RunHandle] = queue.Queue()
        self._pending: list[RunHandle] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None
        self._current: RunHandle | None = None

    # --- listeners -----------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[ev.Event], None], *, on_run_thread: bool = False) -> Callable[[], None]:
        """Call ``listener(event)`` for every event of every run; returns a function that
        unsubscribes. ``on_run_thread=True`` calls it synchronously, for hooks that must act at an
        exact point (it then slows the run by its own time)."""
        group = self._sync if on_run_thread else self._async
        with self._lock:
            group.append(listener)
            if not on_run_thread and self._dispatcher is None:
                self._dispatcher = _start(_dispatch, self, self._events)
        return lambda: group.remove(listener) if listener in group else None


    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far has reached the listeners; False on timeout."""
        if self._dispatcher is None:
            return True
        done = threading.Event()
        self._events.put((_FLUSH, done))
        return done.wait(timeout)

    def _emitter(self, h: RunHandle) -> Callable[[ev.Event], None]:
        sync, record, put = self._sync, h._record, self._events.put

        def emit(e: ev.Event) -> None:
            record(e)
            for f in sync:
                f(e)
            if self._async:
                put((e, None))
        return emit

    # --- runs ----------------------------------------------------------------------------------

    def submit(self, wf: Any, params: dict[str, Any] | None = None, *, out_dir: str | Path | None = None) -> RunHandle:
        """Queue a run of a ``graphflow.Workflow`` (or a bound graph). Raises ValidationFailed
        before queueing anything if the workflow or a parameter is invalid. ``out_dir``: where
        this run's files go instead of the executor's folder (a server gives each run its own)."""
        with fewer_gc_passes():
            bound = wf if isinstance(wf, BoundGraph) else wf.bind(params, self.limits)
        h = RunHandle(bound, self._cancel_queued, None if out_dir is None else Path(out_dir))
        with self._lock:
            self._pending.append(h)
            if self._worker is None:
                self._worker = _start(_work, self, self._runs)
        self._runs.put(h)
        return h

    def run(self, wf: Any, params: dict[str, Any] | None = None, *, out_dir: str | Path | None = None) -> RunResult:
        """``submit(wf).result()``; called from a node or a run-thread hook, it runs inline.
        Interrupted while waiting (Ctrl-C, Jupyter's interrupt), it cancels the run, waits for it
        to stop at its next node or loop step, then lets the KeyboardInterrupt go on: an
        interrupted call leaves no run going on behind the caller's back."""
        if threading.current_thread() is self._worker:
            with fewer_gc_passes():
                bound = wf if isinstance(wf, BoundGraph) else wf.bind(params, self.limits)
            h = RunHandle(bound, out_dir=None if out_dir is None else Path(out_dir))
            self._execute(h)
            return h.result()
        h = self.submit(wf, params, out_dir=out_dir)
        try:
            while not h._finished.wait(0.25):  # short waits: the caller's thread sees a signal promptly
                pass
            return h.result()
        except KeyboardInterrupt:
            h.cancel()
            h.result()  # a second interrupt stops only this wait; the run still stops at its next step
            raise

    def _cancel_queued(self, h: RunHandle) -> None:
        with self._lock:
            if h not in self._pending:
                return  # running or finished: the run itself sees its cancel event
            self._pending.remove(h)
        self._finish_cancelled(h)

    def _finish_cancelled(self, h: RunHandle) -> None:
        h.status = "cancelled"
        h._result = RunResult({}, [], {}, True, 0.0, {n: "the run was cancelled" for n in h.bound.checked.doc.outputs}, h.id)
        self._emitter(h)(ev.RunFinished(0.0, False, True, h.id))
        self._finished(h)

    def _finished(self, h: RunHandle) -> None:
        h._finished.set()
        with h._grew:
            h._grew.notify_all()

    def cancel(self) -> None:
        """Cancel the running run and every queued one."""
        with self._lock:
            handles = [*self._pending, *([self._current] if self._current else [])]
        for h in handles:  # outside the lock: cancelling a queued handle takes it
            h.cancel()

    def _execute(self, h: RunHandle) -> None:
        with self._lock:
            if h.status == "cancelled":
                return  # cancelled while queued: already finished
            if h in self._pending:
                self._pending.remove(h)
            if h.cancel_event.is_set():
                h.status = "cancelled"
            else:
                h.status = "running"
                self._current = h
        if h.status == "cancelled":
            self._finish_cancelled(h)
            return
        try:
            with fewer_gc_passes():
                keys = Keys(h.bound, RunOptions(self.device, self.dtype, str(h.out_dir or self.out_dir)), h.id)
                stores = Stores(self.memory, self.disk)
                runner = Runner(keys, stores, h.id, h.cancel_event, self.models.session(h.id), self._emitter(h), self.check_finite)
                h._result = r = runner.execute(plan(keys, stores))
            h.status = "cancelled" if r.cancelled else ("done" if r.ok else "failed")
        except BaseException as e:  # an engine bug must not kill the worker or hang result()
            h.status = "failed"
            h._result = RunResult({}, [NodeError.wrap("(executor)", "Executor", e, None)], {}, False, 0.0, {}, h.id)
        finally:
            self.models.release(h.id)
            with self._lock:
                self._current = None
            self._finished(h)

    def close(self) -> None:
        """Cancel what is queued and running; the threads end once the executor is collected."""
        self.cancel()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _start(loop: Callable, ex: Executor, q: queue.Queue) -> threading.Thread:
    """A daemon thread that holds the executor only weakly, so a dropped executor (and its caches)
    is collected; collection sends the thread a stop sentinel."""
    t = threading.Thread(target=loop, args=(weakref.ref(ex), q), name=f"graphflow-{loop.__name__.strip('_')}", daemon=True)
    weakref.finalize(ex, q.put, None)
    t.start()
    return t


def _work(ref: weakref.ref, runs: queue.Queue) -> None:
    while (h := runs.get()) is not None:
        ex = ref()
        if ex is None:
            return
        ex._execute(h)
        del ex, h  # hold neither the executor nor a run's results while waiting


def _dispatch(ref: weakref.ref, events: queue.Queue) -> None:
    while (item := events.get()) is not None:
        e, done = item
        if e is _FLUSH:
            done.set()
        else:
            ex = ref()
            for f in list(ex._async) if ex is not None else ():
                try:
                    f(e)
                except Exception:  # a broken listener must not stop the others
                    pass
            ex = None
        del item, e, done
