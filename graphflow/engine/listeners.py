"""The executor's listeners: who hears a run's events, on which thread, and when a run may count
as finished.

Listeners are called off the run's thread, through a bounded queue, so a slow listener never slows
a run; a hook that must act at an exact point subscribes ``on_run_thread=True``. A run counts as
finished (``run`` returns, ``result()`` answers) once its last event has reached every listener:
a script that subscribes, runs and then checks what its listener saw needs no ``flush``. Hence a
run has two ends: it *ran* (its result is set) and it *finished* (its events were delivered); a
flush marker queued behind its last event moves it from the one to the other.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from graphflow.engine import events as ev

__all__ = ["DISPATCHER", "Emitter", "Listeners", "awaited", "start_thread"]

_FLUSH = object()  # a marker in the listeners' queue: everything before it was delivered
DISPATCHER = "graphflow-dispatch"  # the name start_thread gives the thread that calls listeners


def awaited(ran: threading.Event, finished: threading.Event) -> threading.Event:
    """Which end of a run ``result()`` waits for: delivery, except on the thread that delivers
    (a listener asking for the result), where waiting for delivery would wait for itself."""
    return ran if threading.current_thread().name == DISPATCHER else finished


class Listeners:
    """The executor's subscribers and the thread that calls the off-run-thread ones. Its thread
    holds it only weakly, so the executor that owns it (and the executor's caches) can be
    collected; collection stops the thread."""

    def __init__(self, maxsize: int) -> None:
        self.on_run_thread: list[Callable[[ev.Event], None]] = []
        self.off_run_thread: list[Callable[[ev.Event], None]] = []
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None

    def subscribe(self, listener: Callable[[ev.Event], None], on_run_thread: bool) -> Callable[[], None]:
        group = self.on_run_thread if on_run_thread else self.off_run_thread
        with self._lock:
            group.append(listener)
            if not on_run_thread and self._dispatcher is None:
                self._dispatcher = start_thread(_dispatch, self, self._queue)
        return lambda: group.remove(listener) if listener in group else None

    def flush(self, timeout: float | None) -> bool:
        if self._dispatcher is None:
            return True
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def emitter(self, record: Callable[[ev.Event], None] | None,
                on_event: Callable[[ev.Event], None] | None = None) -> Emitter:
        """A run's ``emit``: ``record`` (the run's own log; None for a run whose handle no one
        else holds), the run-thread hooks, ``on_event``, then the queue."""
        return Emitter(record, self.on_run_thread, on_event, self.off_run_thread, self._queue.put)

    def finish(self, finished: threading.Event) -> None:
        """A run has executed: set ``finished`` once the queue has delivered every event emitted
        so far (at once when nothing listens off the run thread)."""
        if self.off_run_thread and self._dispatcher is not None:
            self._queue.put((_FLUSH, finished))
        else:
            finished.set()


class Emitter:
    """A run's ``emit``, and whether anyone hears it: false when no log records the run, no hook
    or listener is subscribed and no ``on_event`` was given, so the runner builds no event at all
    (two per node were a tenth of a trivial node's cost). Read per node: a listener subscribed
    mid-run hears the rest of it."""

    __slots__ = ("record", "sync", "on_event", "off", "put")

    def __init__(self, record, sync: list, on_event, off: list, put) -> None:
        self.record, self.sync, self.on_event, self.off, self.put = record, sync, on_event, off, put

    def __bool__(self) -> bool:
        return self.record is not None or self.on_event is not None or bool(self.sync) or bool(self.off)

    def watched(self) -> tuple[list, list] | None:
        """The lists whose emptiness alone says no one hears (listeners subscribe into them
        mid-run), for a runner that asks per node without calling ``__bool__``; None when someone
        always hears (a log, or ``on_event``)."""
        return None if self.record is not None or self.on_event is not None else (self.sync, self.off)

    def __call__(self, e: ev.Event) -> None:
        if self.record is not None:
            self.record(e)
        for f in self.sync:
            f(e)
        if self.on_event is not None:
            self.on_event(e)
        if self.off:
            self.put((e, None))


def start_thread(loop: Callable, owner: Any, q: queue.Queue) -> threading.Thread:
    """A daemon thread that holds ``owner`` only weakly, so a dropped executor (and its caches)
    is collected; collection sends the thread a stop sentinel."""
    t = threading.Thread(target=loop, args=(weakref.ref(owner), q), name=f"graphflow-{loop.__name__.strip('_')}", daemon=True)
    weakref.finalize(owner, q.put, None)
    t.start()
    return t


def _dispatch(ref: weakref.ref, events: queue.Queue) -> None:
    while (item := events.get()) is not None:
        e, done = item
        if e is _FLUSH:
            done.set()  # a flush() waiting, or a run finishing
        else:
            hub = ref()
            for f in list(hub.off_run_thread) if hub is not None else ():
                try:
                    f(e)
                except Exception:  # a broken listener must not stop the others
                    pass
            hub = None
        del item, e, done
