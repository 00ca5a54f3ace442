"""Scopes (Loop, Map) at run time: iterate over ``over``, run the body per item, carry values
from one item to the next, collect per-item values into lists. Bodies nest to any depth.

Apart from ``run.py``'s top level because nothing here is cached or planned: a body runs whole
every time its scope runs (the scope as a whole is what the caches hold). A body member that does
not change with its scope's items is *hoisted*: run once per item of the innermost scope it does
change with, not once per item.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from graphflow.document.tree import Link, NodeDef, ScopeDef
from graphflow.engine import events as ev
from graphflow.engine.plan import body_order
from graphflow.engine.results import NodeError
from graphflow.node.context import Cancelled

__all__ = ["ScopeRunner"]


class ScopeRunner:
    """One top-level scope's run, nested scopes included. ``frames``, passed down the nesting,
    hold each enclosing scope's current values (its item, index, carried values, body outputs),
    innermost last. Made per top-level scope, holding the runner's node call, value lookup and
    stats; the runner holds no reference back, so no cycle keeps a finished run's values alive
    until the garbage collector's next pass."""

    def __init__(self, runner: Any) -> None:
        self.c = runner.c
        self.run_id = runner.run_id
        self.cancel = runner.cancel
        self.emit: Callable[[ev.Event], None] | None = runner.emit
        self.call = runner.call
        self.resolve = runner.resolve
        self.stat = runner.stat
        self.tokens: dict[str | None, int] = {}  # scope -> items begun so far (hoisting's clock)
        self.memo: dict[str, tuple[tuple, dict[str, Any]]] = {}  # hoisted member -> (clock, outputs)

    def run_body_node(self, d: NodeDef, frames: list, i: int | None, count: int) -> dict[str, Any]:
        """One body node once (``i`` None: an invariant node, run once per run of its scope)."""
        emit = self.emit if self.emit else None  # asked once per node: built only if someone hears
        if emit is not None:
            emit(ev.NodeStarted(d.id, d.type, i, self.run_id))
        t0 = time.perf_counter()
        out = self.call(d, frames, i, count if i is not None else None)
        dt = time.perf_counter() - t0
        st = self.stat(d.id)
        st.runs += 1
        st.seconds += dt
        st.status = "ran"
        if emit is not None:
            emit(ev.NodeFinished(d.id, d.type, dt, None, i, self.run_id))
        return out

    def run_scope(self, s: ScopeDef, frames: list) -> dict[str, Any]:
        """The scope's outputs: its carried values after the last item, and what it collected."""
        seq = self.resolve(s.over, s.id, "over", frames)
        try:
            count = len(seq)
        except TypeError:
            raise NodeError(s.id, s.type, f"'over' is a {type(seq).__name__}, which has no length") from None
        order = body_order(self.c, s.id)
        varies = self.c.varies
        frame: dict[str, dict[str, Any]] = {}
        inner = [*frames, frame]
        for m in order:
            if s.id not in varies[m]:
                frame[m] = self.hoisted(s.body[m], inner, count)
        per_item = [m for m in order if s.id in varies[m]]
        carry = {k: self.resolve(r, s.id, f"carry.{k}", frames) for k, r in s.carry.items()}
        collected: dict[str, list] = {k: [] for k in s.collect}
        if s.type == "Map" and s.batch > 1 and count > 1:
            return self.map_batched(s, frames, frame, seq, per_item, collected)
        for i, item in enumerate(seq):
            frame[s.id] = {s.item: item, "index": i, "count": count, **carry}
            self.run_item(s, frame, inner, i, per_item, count)
            for k, v in self.collect_item(s, frame, inner).items():
                collected[k].append(v)
            carry = {k: self.resolve(r, s.id, f"next.{k}", inner) for k, r in s.next.items()}
        return {**carry, **collected}

    def run_item(self, s: ScopeDef, frame: dict, inner: list, i: int, per_item: list[str], count: int) -> None:
        """The scope's body for item ``i`` (``frame[s.id]`` already holds its variables)."""
        if self.cancel.is_set():
            raise Cancelled()
        emit = self.emit if self.emit else None
        if emit is not None:
            emit(ev.LoopStep(s.id, i, count, self.run_id))
        self.tokens[s.id] = self.tokens.get(s.id, 0) + 1
        for m in per_item:
            d = s.body[m]
            if isinstance(d, NodeDef) and d.when and not d.when.active(i):  # skipped: 'otherwise'
                frame[m] = {k: self.resolve(r, m, f"otherwise.{k}", inner) for k, r in d.otherwise.items()}
                if emit is not None:
                    emit(ev.NodeFinished(m, d.type, 0.0, "skipped", i, self.run_id))
                continue
            frame[m] = self.run_member(d, inner, i, count)

    def collect_item(self, s: ScopeDef, frame: dict, inner: list) -> dict[str, Any]:
        out = {}
        for k, r in s.collect.items():
            if isinstance(r, Link) and r.port not in frame.get(r.node, {r.port: None}):
                continue  # produced by a node that skipped this iteration
            out[k] = self.resolve(r, s.id, f"collect.{k}", inner)
        return out

    def map_batched(self, s: ScopeDef, frames: list, shared: dict, seq, per_item: list[str], collected: dict) -> dict[str, Any]:
        """A Map's items ``s.batch`` at a time, advanced together (``graphflow/node/batching.py``):
        each item's body on a copy of this runner (its own hoisting clock and memo, so one item
        never reads what another hoisted) and a frame of its own over the shared hoisted values;
        their batchable node calls are made once for all. Collected in item order; the first
        item (in order) that failed fails the Map, as it would one item at a time."""
        from graphflow.node.batching import CoRun

        count = len(seq)
        base = self.tokens.get(s.id, 0)

        def item_body(i: int):
            def body() -> dict[str, Any]:
                clone = copy.copy(self)
                clone.tokens, clone.memo = {**self.tokens, s.id: base + i}, {}
                frame = {**shared, s.id: {s.item: seq[i], "index": i, "count": count}}
                inner = [*frames, frame]
                clone.run_item(s, frame, inner, i, per_item, count)
                return clone.collect_item(s, frame, inner)
            return body

        for start in range(0, count, s.batch):
            items = range(start, min(start + s.batch, count))
            outs = CoRun().run([item_body(i) for i in items])
            for out in outs:
                if isinstance(out, BaseException):
                    raise out
                for k, v in out.items():
                    collected[k].append(v)
        self.tokens[s.id] = base + count
        return collected

    def hoisted(self, d, frames: list, count: int) -> dict[str, Any]:
        """A member that does not change with its scope's items: run once per item of the
        innermost scope it does change with (once per run if none), however deep it sits."""
        level = self.c.level(d.id)
        key = (level, self.tokens.get(level, 0))
        hit = self.memo.get(d.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        out = self.run_member(d, frames, None, count)
        self.memo[d.id] = (key, out)
        return out

    def run_member(self, d, frames: list, i: int | None, count: int) -> dict[str, Any]:
        if isinstance(d, NodeDef):
            return self.run_body_node(d, frames, i, count)
        emit = self.emit if self.emit else None
        if emit is not None:
            emit(ev.NodeStarted(d.id, d.type, i, self.run_id))
        t0 = time.perf_counter()
        out = self.run_scope(d, frames)
        st = self.stat(d.id)
        st.runs += 1
        st.seconds += time.perf_counter() - t0
        st.status = "ran"
        if emit is not None:
            emit(ev.NodeFinished(d.id, d.type, time.perf_counter() - t0, None, i, self.run_id))
        return out
