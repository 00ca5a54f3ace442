"""Batching across runs: several runs advance together, and a node call that batches (a model's
forward pass) is made once for all of them.

Why co-running whole runs rather than a batched graph: each item stays an ordinary run of its own,
so its cache entries, events, progress, failures and files are exactly those of an unbatched run;
the engine knows nothing of tensors. Nodes decide what batches: a node calls
``ctx.batched(key, payload, call)``; calls that arrive from the members of one group with the same
``key`` are answered by one ``call([payload, ...])`` that returns one result per payload. Calls with
different keys (another model, shape or timestep) are made separately, so items that differ in
anything but per-sample values still run, just not batched.

Members run on threads of their own but one at a time (``CoRun`` hands a baton): a member runs
until it reaches a batched call or ends, then the next runnable member runs. When none is
runnable, the waiting calls are made, grouped by key, and their members resume. One at a time
keeps the engine's caches, the model manager and torch free of concurrent use; it also means a
prompt shared by two items is encoded once (the second member finds it in the cache).

A failing batched call is made again for each member alone, so a failing item does not fail its
batch-mates; a member that fails elsewhere simply leaves the group.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["CoRun", "batched"]

_member: contextvars.ContextVar[tuple[CoRun, int] | None] = contextvars.ContextVar("graphflow_batch_member", default=None)


def batched(key: Hashable, payload: Any, call: Callable[[list[Any]], Sequence[Any]]) -> Any:
    """``call([payload])[0]``, made together with the same-``key`` calls of the other members of
    this thread's group (``CoRun``); outside a group, at once."""
    m = _member.get()
    if m is None:
        return call([payload])[0]
    return m[0]._gather(m[1], key, payload, call)


class CoRun:
    """Runs ``bodies`` (callables) as members of one group, one at a time, and returns their
    results in order (an exception a body raised is returned in its place)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._turn: int | None = None  # the member that may run now; None: the scheduler
        self._waiting: dict[int, tuple[Hashable, Any, Callable]] = {}
        self._answers: dict[int, tuple[bool, Any]] = {}
        self._done: set[int] = set()
        self.calls = 0  # batched calls made (one per key per round)
        self.sizes: list[int] = []  # how many members each call served

    def run(self, bodies: Sequence[Callable[[], Any]]) -> list[Any]:
        n = len(bodies)
        results: list[Any] = [None] * n
        if n == 0:
            return results

        def member(k: int) -> None:
            _member.set((self, k))
            with self._cv:
                while self._turn != k:
                    self._cv.wait()
            try:
                results[k] = bodies[k]()
            except BaseException as e:  # the caller decides what a failure means
                results[k] = e
            finally:
                with self._cv:
                    self._done.add(k)
                    self._turn = None
                    self._cv.notify_all()

        threads = [threading.Thread(target=member, args=(k,), name=f"graphflow-batch-{k}", daemon=True)
                   for k in range(n)]
        for t in threads:
            t.start()
        runnable = list(range(n))
        while runnable or self._waiting:
            if runnable:
                k = runnable.pop(0)
                with self._cv:
                    self._turn = k
                    self._cv.notify_all()
                    while self._turn is not None:
                        self._cv.wait()
                continue
            runnable = self._answer()
        for t in threads:
            t.join()
        return results

    def _answer(self) -> list[int]:
        """Make the waiting calls, one per key; the members they answer become runnable."""
        groups: dict[Hashable, list[int]] = {}
        for k, (key, _, _) in self._waiting.items():
            groups.setdefault(key, []).append(k)
        for ks in groups.values():
            call = self._waiting[ks[0]][2]
            payloads = [self._waiting[k][1] for k in ks]
            self.calls += 1
            self.sizes.append(len(ks))
            try:
                out = list(call(payloads))
                if len(out) != len(ks):
                    raise RuntimeError(f"a batched call returned {len(out)} results for {len(ks)} payloads")
                for k, v in zip(ks, out):
                    self._answers[k] = (True, v)
            except Exception as e:
                if len(ks) == 1:
                    self._answers[ks[0]] = (False, e)
                    continue
                for k in ks:  # alone, so only the member whose input fails gets the error
                    try:
                        self._answers[k] = (True, self._waiting[k][2]([self._waiting[k][1]])[0])
                    except Exception as e1:
                        self._answers[k] = (False, e1)
        ready = sorted(self._waiting)
        self._waiting.clear()
        return ready

    def _gather(self, k: int, key: Hashable, payload: Any, call: Callable) -> Any:
        with self._cv:
            self._waiting[k] = (key, payload, call)
            self._turn = None
            self._cv.notify_all()
            while self._turn != k:
                self._cv.wait()
            ok, v = self._answers.pop(k)
        if not ok:
            raise v
        return v
