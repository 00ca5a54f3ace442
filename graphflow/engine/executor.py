"""The executor: runs as objects on one queue, sharing caches and models.

``submit`` checks and binds in the caller's thread (so a bad workflow fails there, before
anything queues) and returns a ``RunHandle``; one worker thread runs the queue in order, as one
GPU would. ``run`` takes its place in the same queue but executes on the caller's own thread when
its turn comes (at once when nothing is queued), the worker waiting meanwhile: one lock, held by
whichever thread executes a run, keeps runs one at a time. Why the caller's thread: torch's
OpenMP runtime keeps a thread team per thread that calls it, and once two threads of a process
have teams (a notebook cell or a script did torch work, then the worker ran) libgomp counts more
threads than cores and stops spin-waiting between parallel regions, which made every run on a
2-core machine about 2x slower (bench/bench_threads.py). A caller that does torch work and runs
its workflows on its own thread keeps one team.

Who hears a run's events, and when a run counts as finished: ``listeners.py``. What Ctrl-C does
to ``run``: ``interrupt.py``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graphflow.cache.disk import DiskCache
from graphflow.cache.memory import MemoryCache
from graphflow.cache.run_caches import RunCaches
from graphflow.engine import events as ev
from graphflow.engine.devices import check_device
from graphflow.engine.fingerprint import remember_content_ids
from graphflow.engine.interrupt import interrupt_cancels
from graphflow.engine.listeners import Listeners, awaited, start_thread
from graphflow.engine.model_manager import ModelManager
from graphflow.engine.plan import Fingerprints, RunOptions, plan
from graphflow.engine.results import NodeError, NodeStat, RunResult
from graphflow.engine.run import Runner
from graphflow.gc_tuning import fewer_gc_passes
from graphflow.graph.bind import BoundGraph
from graphflow.graph.file_check import file_problems
from graphflow.node.file_access import FileAccess
from graphflow.node.limits import Limits
from graphflow.problems import ValidationFailed
from graphflow.sizes import DEFAULT_CACHE_BYTES

__all__ = ["Executor", "NodeError", "NodeStat", "RunHandle", "RunResult"]


class RunHandle:
    """One submitted run: its id, status, result, cancellation and its own event stream."""

    def __init__(self, bound: BoundGraph, on_cancel: Callable[[RunHandle], None] | None = None,
                 out_dir: Path | None = None, *, logged: bool = True) -> None:
        """``logged=False``: a handle no caller ever holds (``Executor.run``'s), whose events no
        one could read back from it, so none are kept on it (nor built, if nothing listens)."""
        self.id = os.urandom(8).hex()  # 16 hex digits, as uuid4().hex[:16] gave, at a fifth of its cost
        self._on_cancel = on_cancel
        self.bound = bound
        self.out_dir = out_dir  # None: the executor's
        self.status = "queued"  # running, done, failed, cancelled
        self.cancel_event = threading.Event()
        self._result: RunResult | None = None
        self._ran = threading.Event()  # executed: the result is set
        self._finished = threading.Event()  # and its events have reached every listener
        self._log: list[ev.Event] = []
        self._grew = threading.Condition()
        self._watchers = 0
        self._turn: threading.Event | None = None  # Executor.run's: set when its caller's thread may execute it
        self._logged = logged

    def cancel(self) -> None:
        """Stop at the next node or loop step; a queued run never starts (it is cancelled now)."""
        self.cancel_event.set()
        if self._on_cancel is not None:
            self._on_cancel(self)

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> RunResult:
        """Waits for the run and for its events to reach every listener. Called by a listener (on
        the thread that delivers events), it waits for the run alone: the listener's own call is
        what delivery is waiting for."""
        if not awaited(self._ran, self._finished).wait(timeout):
            raise TimeoutError(f"run {self.id} is still {self.status}")
        assert self._result is not None
        return self._result

    def events(self) -> Iterator[ev.Event]:
        """Every event of this run from its start, live, ending with RunFinished."""
        k = 0
        while True:
            with self._grew:
                self._watchers += 1
                while k >= len(self._log) and not self._ran.is_set():
                    self._grew.wait(0.5)
                self._watchers -= 1
            while k < len(self._log):
                e = self._log[k]
                k += 1
                yield e
                if isinstance(e, ev.RunFinished):
                    return
            if self._ran.is_set() and k >= len(self._log):
                return

    @property
    def recorder(self) -> Callable[[ev.Event], None] | None:
        """What keeps this run's events for ``events()``; None for a handle no caller holds."""
        return self._record if self._logged else None

    def _record(self, e: ev.Event) -> None:
        self._log.append(e)
        if self._watchers:
            with self._grew:
                self._grew.notify_all()


class Executor:
    """Runs workflows and remembers their results (in memory, and on disk with ``cache_dir``)."""

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", out_dir: str | Path = "out",
                 cache_dir: str | Path | None = None, cache_max_size: int | str | None = DEFAULT_CACHE_BYTES,
                 memory_budget: int = 4 << 30, model_budget: int = 8 << 30,
                 models: ModelManager | None = None, limits: Limits | None = None, check_finite: bool = False,
                 listener_queue: int = 10_000, read_roots=None, batch: int = 1, preview_every: int = 0,
                 preview_decoder: Any = None) -> None:
        """``cache_max_size``: how much the disk cache (``cache_dir``) may hold, in bytes or as
        ``"500M"``/``"4G"``, before its least recently used entries are deleted (None: no limit).
        ``models``: a model manager to share with other executors (same device and dtype), so
        loaded weights outlive this executor's caches; by default the executor owns one.
        ``limits``: the resource ceilings every submitted run is bound within. ``check_finite``:
        fail a node whose output holds NaN or Inf, naming it (the CLI turns this on). A ``device``
        or ``dtype`` the installed torch cannot compute in raises ValueError saying what works
        (``engine/devices.py``), before anything loads.
        ``read_roots``: the folders a run may read files from, links followed (a server's uploads,
        models and ``--allow-read`` folders: ``options.read_roots``); None: anywhere. Every file a
        workflow names is checked against them, and against ``limits.input_bytes``, before it
        runs; a file arriving through a link, when the node's turn comes.
        ``batch``: how many runs ``run_many`` (a sweep) advances together, their batchable node
        calls (a model's forward pass) made once for all of them (``graphflow/node/batching.py``).
        ``preview_every``: a ``Preview`` event every N steps of a node that offers previews (a
        sampler's current x0); 0, the default: none, and nothing spent on them.
        ``preview_decoder``: a model reference (anything the model manager loads; the node
        library's ``graphflow_nodes.stages.preview.TinyDecoder(folder)``, a TAESD-class tiny
        autoencoder) that previews decode with instead of a linear projection; loaded on the
        first preview, once per executor. It changes what previews show, never a run's results."""
        check_device(device, dtype)
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch must be a whole number of runs, at least 1, not {batch!r}")
        if not (isinstance(preview_every, int) and preview_every >= 0):
            raise ValueError(f"preview_every must be a whole number of steps (0: no previews), not {preview_every!r}")
        if isinstance(preview_decoder, (str, Path)):
            raise TypeError("preview_decoder takes a model reference, not a path: "
                            f"graphflow_nodes.stages.preview.TinyDecoder({str(preview_decoder)!r})")
        self.batch, self.preview_every, self.preview_decoder = batch, preview_every, preview_decoder
        self.batch_sizes: list[int] = []  # runs each batched node call served (run_many), for profiles and tests
        self.device, self.dtype, self.out_dir = device, dtype, Path(out_dir)
        self.limits, self.check_finite = limits or Limits(), check_finite
        self.read_roots = None if read_roots is None else FileAccess.of(read_roots).roots
        self.memory = MemoryCache(memory_budget)
        self.disk = DiskCache(cache_dir, max_bytes=cache_max_size) if cache_dir else None
        if cache_dir:
            remember_content_ids(cache_dir)  # model files are hashed once, not once per process
        if models is not None and (models.device, models.dtype) != (device, dtype):
            raise ValueError(f"the shared model manager runs on {models.device}/{models.dtype}, this executor on {device}/{dtype}")
        self.models = models if models is not None else ModelManager(device, dtype, model_budget)
        self._listeners = Listeners(listener_queue)
        self._runs: queue.Queue[RunHandle] = queue.Queue()
        self._pending: list[RunHandle] = []
        # reentrant: Executor.cancel() may be called by a signal handler (the CLI's) on the thread
        # of an inline run, which may hold it at that moment
        self._lock = threading.RLock()
        self._busy = threading.Lock()  # held by whichever thread executes a run (the worker or a run() caller)
        self._run_thread: int | None = None  # that thread, while it does: its own run() calls nest inline
        self._worker: threading.Thread | None = None
        self._current: RunHandle | None = None

    # --- listeners -----------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[ev.Event], None], *, on_run_thread: bool = False) -> Callable[[], None]:
        """Call ``listener(event)`` for every event of every run; returns a function that
        unsubscribes. ``on_run_thread=True`` calls it synchronously, for hooks that must act at an
        exact point (it then slows the run by its own time)."""
        return self._listeners.subscribe(listener, on_run_thread)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far has reached the listeners; False on timeout."""
        return self._listeners.flush(timeout)

    # --- runs ----------------------------------------------------------------------------------

    @property
    def files(self) -> FileAccess:
        """The rules every file a run reads is held to: ``read_roots`` and ``limits.input_bytes``."""
        return FileAccess(self.read_roots, self.limits.input_bytes)

    def _bind(self, wf: Any, params: dict[str, Any] | None) -> BoundGraph:
        """A workflow bound within this executor's ceilings and file rules. A graph bound
        elsewhere (a sweep's, a server's catalog) under other rules has its files checked again
        under these: however it was validated, a run reads nothing its executor may not."""
        if isinstance(wf, _Together):
            return wf  # type: ignore[return-value]  # its runs were bound by run_many
        with fewer_gc_passes():
            if not isinstance(wf, BoundGraph):
                return wf.bind(params, self.limits, self.read_roots)
            files = self.files
            if wf.files == files:
                return wf
            problems = file_problems(wf, files)
            if problems:
                raise ValidationFailed(problems)
            return dataclasses.replace(wf, files=files)

    def submit(self, wf: Any, params: dict[str, Any] | None = None, *, out_dir: str | Path | None = None) -> RunHandle:
        """Queue a run of a ``graphflow.Workflow`` (or a bound graph). Raises ValidationFailed
        before queueing anything if the workflow or a parameter is invalid. ``out_dir``: where
        this run's files go instead of the executor's folder (a server gives each run its own)."""
        bound = self._bind(wf, params)
        h = RunHandle(bound, self._cancel_queued, None if out_dir is None else Path(out_dir))
        self._enqueue(h)
        return h

    def _enqueue(self, h: RunHandle) -> None:
        with self._lock:
            self._pending.append(h)
            if self._worker is None:
                self._worker = start_thread(_work, self, self._runs)
        self._runs.put(h)

    def run(self, wf: Any, params: dict[str, Any] | None = None, *, out_dir: str | Path | None = None,
            on_event: Callable[[ev.Event], None] | None = None) -> RunResult:
        """Run a workflow on the calling thread and return its result. It takes its turn in the
        queue: runs submitted before it finish first, runs submitted after wait for it (nothing
        queued or running: it starts at once). Called from a node or a run-thread hook, it runs
        inline, nested in the current run (and cancelled with it). ``on_event``: called on this
        thread with each of this run's events (progress bars), after the ``on_run_thread`` hooks.

        Interrupted (Ctrl-C, Jupyter's interrupt: SIGINT with Python's default handler, on the main
        thread), the run is cancelled at its next node or loop step, so nothing is left half-done,
        and the KeyboardInterrupt is raised once it has stopped; a second interrupt raises at once,
        wherever the run is (it ends cancelled, the executor stays usable). A KeyboardInterrupt
        raised in the run otherwise (another SIGINT handler) does the same."""
        bound = self._bind(wf, params)
        out = None if out_dir is None else Path(out_dir)
        if threading.get_ident() == self._run_thread:  # nested: this thread already has the turn
            h = RunHandle(bound, out_dir=out, logged=False)
            outer = self._current
            if outer is not None:
                h.cancel_event = outer.cancel_event
            self._execute(h, on_event)
            return h.result()
        h = RunHandle(bound, self._cancel_queued, out, logged=False)
        with self._lock:
            now = not self._pending and self._busy.acquire(blocking=False)
        if not now:  # queued: the worker sets the turn, holding the busy lock for this thread
            h._turn = threading.Event()
            self._enqueue(h)
        with interrupt_cancels(h.cancel_event):
            turn = h._turn
            try:
                while turn is not None and not turn.wait(0.25):  # short waits: a signal is handled promptly
                    if h.cancel_event.is_set():
                        h.cancel()  # cancelled while queued (a Ctrl-C): out of the queue now
                    if h._ran.is_set():
                        break
            except KeyboardInterrupt:
                h.cancel()
                if now or turn.is_set():
                    self._busy.release()
                raise
            if now or turn.is_set():
                try:
                    self._execute(h, on_event)
                finally:
                    self._busy.release()
        return h.result()

    def run_many(self, wfs: list[Any], out_dirs: list[str | Path | None] | None = None, *,
                 on_event: Callable[[ev.Event], None] | None = None) -> list[RunResult]:
        """Run several workflows (bound graphs, a sweep's items) as one turn of the queue, up to
        ``batch`` at a time advancing together so that their batchable node calls are made once
        per step for all of them; each is still a run of its own (its id, events, caches, files in
        its ``out_dirs`` entry, failure). Results in the order given. With ``batch`` 1 this is
        ``run`` called for each."""
        bounds = [self._bind(wf, None) for wf in wfs]
        outs = [None if d is None else Path(d) for d in (out_dirs or [None] * len(bounds))]
        if self.batch == 1 or len(bounds) == 1:
            return [self.run(b, out_dir=o, on_event=on_event) for b, o in zip(bounds, outs)]
        results: list[RunResult] = []
        for k in range(0, len(bounds), self.batch):
            results += self.run(_Together(bounds[k:k + self.batch], outs[k:k + self.batch]), on_event=on_event)
        return results

    def _run_together(self, group: _Together, h: RunHandle, on_event) -> None:
        """``group``'s runs as members of one ``CoRun`` (on this thread's turn, under ``h``, whose
        cancellation cancels them all); ``h``'s result is the list of their results."""
        from graphflow.node.batching import CoRun

        handles = []
        for b, o in zip(group.bounds, group.outs):
            m = RunHandle(b, out_dir=o, logged=False)
            m.cancel_event = h.cancel_event
            m.status = "running"
            handles.append(m)

        def body(m: RunHandle):
            return lambda: self._run_member(m, on_event)

        co = CoRun()
        co.run([body(m) for m in handles])
        self.batch_sizes += co.sizes
        h._result = [m._result for m in handles]  # type: ignore[assignment]
        h.status = "done"

    def _runner(self, h: RunHandle, emit) -> tuple[Runner, Any]:
        """A run's Runner and its plan: what a run of its own and a batched run's member both execute."""
        keys = Fingerprints(h.bound, RunOptions(self.device, self.dtype, str(h.out_dir or self.out_dir)), h.id, self.files)
        stores = RunCaches(self.memory, self.disk)
        runner = Runner(keys, stores, h.id, h.cancel_event, self.models.session(h.id), emit, self.check_finite, self.preview_every,
                        self.preview_decoder)
        return runner, plan(keys, stores)

    def _run_member(self, h: RunHandle, on_event) -> None:
        emit = self._listeners.emitter(h.recorder, on_event)
        t0 = time.perf_counter()
        try:
            if isinstance(h.bound, _Together):
                self._run_together(h.bound, h, on_event)
                return
            with fewer_gc_passes():
                runner, steps = self._runner(h, emit)
                h._result = r = runner.execute(steps)
            h.status = r.status
        except BaseException as e:  # an engine bug fails this member alone
            h.status = "failed"
            h._result = RunResult({}, [NodeError.wrap("(executor)", "Executor", e, None)], {}, False,
                                  time.perf_counter() - t0, {}, h.id)
        finally:
            self.models.release(h.id)
            self._finished(h)

    def _cancel_queued(self, h: RunHandle) -> None:
        with self._lock:
            if h not in self._pending:
                return  # running or finished: the run itself sees its cancel event
            self._pending.remove(h)
            h.status = "cancelled"  # under the lock: _execute must see it
        self._finish_cancelled(h)

    def _finish_cancelled(self, h: RunHandle) -> None:
        h.status = "cancelled"
        h._result = _cancelled(h.bound, h.id, {}, 0.0)
        self._listeners.emitter(h.recorder)(ev.RunFinished(0.0, False, True, h.id))
        self._finished(h)

    def _finished(self, h: RunHandle) -> None:
        """The run has executed: its event streams end; it finishes once its events are delivered."""
        h._ran.set()
        with h._grew:
            h._grew.notify_all()
        self._listeners.finish(h._finished)

    def cancel(self) -> None:
        """Cancel the running run and every queued one."""
        with self._lock:
            handles = [*self._pending, *([self._current] if self._current else [])]
        for h in handles:  # outside the lock: cancelling a queued handle takes it
            h.cancel()

    def _take_turn(self, h: RunHandle) -> None:
        """The worker's part for each queued run, in queue order: wait until no run executes, then
        execute it here, or hand the turn to the thread of the ``run`` call that queued it."""
        self._busy.acquire()
        if h._turn is not None:
            with self._lock:
                waiting = h in self._pending  # else cancelled while queued (already finished)
                if waiting:
                    h._turn.set()  # under the lock: a cancel that follows sees the turn handed
            if not waiting:
                self._busy.release()
            return  # the caller's thread releases the busy lock when its run ends
        try:
            self._execute(h, reraise=False)
        finally:
            self._busy.release()

    def _execute(self, h: RunHandle, on_event: Callable[[ev.Event], None] | None = None, reraise: bool = True) -> None:
        """Execute ``h`` on this thread (holding the busy lock, or nested in a run that does).
        A KeyboardInterrupt in the run cancels it; ``reraise``: then raise it on, once finished."""
        with self._lock:
            if h.status == "cancelled":
                return  # cancelled while queued: already finished
            if h in self._pending:
                self._pending.remove(h)
            if h.cancel_event.is_set():
                h.status = "cancelled"
            else:
                h.status = "running"
                outer, self._current = self._current, h
        if h.status == "cancelled":
            self._finish_cancelled(h)
            return
        outer_thread, self._run_thread = self._run_thread, threading.get_ident()
        emit = self._listeners.emitter(h.recorder, on_event)
        runner, interrupted, t0 = None, None, time.perf_counter()
        try:
            if isinstance(h.bound, _Together):
                self._run_together(h.bound, h, on_event)
                return
            with fewer_gc_passes():
                runner, steps = self._runner(h, emit)
                h._result = r = runner.execute(steps)
            h.status = r.status
        except KeyboardInterrupt as e:
            # raised in this thread, anywhere in the run: what the run computed is its own and goes
            # with it; files are written whole or not at all (atomic.py); what it stored is complete
            h.status, interrupted = "cancelled", e
            h._result = _cancelled(h.bound, h.id, runner.stats if runner else {}, time.perf_counter() - t0)
        except BaseException as e:  # an engine bug must not kill the worker or hang result()
            h.status = "failed"
            h._result = RunResult({}, [NodeError.wrap("(executor)", "Executor", e, None)], {}, False, 0.0, {}, h.id)
        finally:
            self.models.release(h.id)
            self._run_thread = outer_thread
            with self._lock:
                self._current = outer
            if interrupted is not None:
                try:
                    emit(ev.RunFinished(h._result.seconds, False, True, h.id))
                except Exception:
                    pass
            self._finished(h)
        if interrupted is not None and reraise:
            raise interrupted

    def close(self) -> None:
        """Cancel what is queued and running; the threads end once the executor is collected."""
        self.cancel()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cancelled(bound: Any, run_id: str, stats: dict, seconds: float) -> Any:
    """The result of a run cancelled before or while it ran (a list of them for runs together)."""
    if isinstance(bound, _Together):
        return [_cancelled(b, run_id, {}, seconds) for b in bound.bounds]
    return RunResult({}, [], stats, True, seconds, {n: "the run was cancelled" for n in bound.checked.doc.outputs}, run_id)


@dataclasses.dataclass
class _Together:
    """Runs that take one turn of the queue together (``run_many``); already bound."""

    bounds: list[BoundGraph]
    outs: list[Path | None]


def _work(ref: weakref.ref, runs: queue.Queue) -> None:
    while (h := runs.get()) is not None:
        ex = ref()
        if ex is None:
            return
        ex._take_turn(h)
        del ex, h  # hold neither the executor nor a run's results while waiting

