"""Runs a validated workflow: only what the outputs need, in topological order, each node at most
once per distinct fingerprint, loops as first-class units.

The executor keeps its caches between runs, so an embedding tool (or the CLI with
``--cache-dir``) that runs the same workflow again recomputes only what changed.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import orjson
from pydantic import ValidationError

from graphflow import events as ev
from graphflow.cache import DiskCache, MemoryCache
from graphflow.context import Cancelled, Context
from graphflow.document import Link, LinkList, Lit, LoopDef, NodeDef, ParamRef, Ref, links_of, top_level_of
from graphflow.gc_tuning import fewer_gc_passes
from graphflow.node import Node, Outputs
from graphflow.validate import Checked


class NodeError(Exception):
    def __init__(self, node: str, type_name: str, message: str, iteration: int | None = None) -> None:
        self.node, self.type, self.message, self.iteration = node, type_name, message, iteration
        at = f" at iteration {iteration}" if iteration is not None else ""
        super().__init__(f"node '{node}' ({type_name}){at} failed: {message}")


@dataclass
class NodeStat:
    type: str
    runs: int = 0
    hits: int = 0
    seconds: float = 0.0
    status: str = "pending"  # ran | memory | disk | failed | skipped


@dataclass
class RunResult:
    outputs: dict[str, Any]
    errors: list[NodeError]
    stats: dict[str, NodeStat]
    cancelled: bool
    seconds: float
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.cancelled

    def __getitem__(self, name: str) -> Any:
        if name in self.outputs:
            return self.outputs[name]
        raise KeyError(f"output '{name}' was not produced: {self.missing.get(name, 'unknown output')}")

    def runs(self, node: str) -> int:
        """How many times a node's code actually ran in this run (cache hits excluded)."""
        s = self.stats.get(node)
        return s.runs if s else 0


def _fingerprint(obj: Any) -> str:
    try:
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # e.g. an int beyond 64 bits, which orjson does not write
        data = repr(obj).encode()
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _outputs_dict(out: Any, cls: type[Node]) -> dict[str, Any]:
    if isinstance(out, Outputs):
        out = dict(out.__dict__)
    if not isinstance(out, dict):
        raise TypeError(f"run() returned {type(out).__name__}, expected a dict of outputs")
    missing = cls.outputs.keys() - out.keys()
    if missing:
        raise TypeError(f"run() did not return output(s) {', '.join(sorted(missing))}")
    return out


class _Run:
    """State of one run; the Executor outlives it and keeps the caches."""

    def __init__(self, ex: Executor, wf: Checked, salt: str) -> None:
        self.ex = ex
        self.wf = wf
        self.salt = salt
        self.values: dict[str, dict[str, Any]] = {}
        self.fps: dict[str, str] = {}
        self.stats: dict[str, NodeStat] = {}
        self.errors: list[NodeError] = []
        self.failed: dict[str, str] = {}  # node -> why it produced nothing
        self.root_cause: dict[str, str] = {}  # skipped node -> the failed node behind it
        self.listen = ex._listeners
        self.all = wf.doc.all_nodes()
        self.run_token = uuid.uuid4().hex

    def emit(self, e: ev.Event) -> None:
        for f in self.listen:
            f(e)

    # --- planning ---------------------------------------------------------------------------

    def plan(self) -> list[str]:
        """The nodes to touch, in order. Fingerprints need no values, so they are computed first;
        then, walking back from the outputs, a node found in a cache stops the walk: what only it
        consumes is never run or even loaded (a fully cached re-run loads no model)."""
        preds = self.wf.preds
        needed = set()
        stack = [link.node for link in self.wf.doc.outputs.values()]
        while stack:  # iterative: no recursion limit on long chains
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(preds[n])
        order = [n for n in self.wf.order if n in needed]
        self.keep = {link.node for link in self.wf.doc.outputs.values()}
        top = top_level_of(self.all)
        self.consumed: dict[str, set[str]] = {n: set() for n in needed}
        for link in self.wf.doc.outputs.values():
            self.consumed[link.node].add(link.port)
        for n in needed:
            for ref in links_of(self.wf.doc.nodes[n]):
                if top.get(ref.node) in needed and top[ref.node] != n:
                    self.consumed[top[ref.node]].add(ref.port)
        for n in order:
            self.fingerprint(n)
        self.prefetched: dict[str, tuple[dict[str, Any], str]] = {}
        active: set[str] = set()
        stack = list(self.keep)
        while stack:
            n = stack.pop()
            if n in active:
                continue
            active.add(n)
            if self.is_pure(n):
                out, where = self.cached(n, self.fps[n])
                if out is not None:
                    self.prefetched[n] = (out, where)
                    continue
            stack.extend(preds[n])
        order = [n for n in order if n in active]
        self.hits = set(self.prefetched)
        succs = self.wf.succs
        self.remaining = {n: sum(1 for s in succs[n] if s in active and s not in self.prefetched) for n in order}
        return order

    # --- fingerprints -----------------------------------------------------------------------

    def ref_key(self, ref: Ref, nid: str, name: str, inner: set[str] = frozenset()) -> Any:
        if isinstance(ref, LinkList):
            return [self.ref_key(link, nid, name, inner) for link in ref.links]
        if isinstance(ref, Link):
            if ref.node in inner:
                return ["inner", ref.node, ref.port]
            return ["link", self.fps[ref.node], ref.port]
        if isinstance(ref, ParamRef):
            lit = self.wf.literals.get((nid, name), self.wf.params.get(ref.name))
            return ["lit", lit]
        return ["lit", self.wf.literals.get((nid, name), ref.value)]

    def node_key(self, d: NodeDef, inner: set[str] = frozenset()) -> list:
        cls = self.wf.types[d.id]
        extra = None
        if cls.has_identity:
            lits = {k: self.wf.literals[(d.id, k)] for k in d.inputs if (d.id, k) in self.wf.literals}
            for k, port in cls.inputs.items():
                if k not in d.inputs and not port.required:
                    lits[k] = port.default
            try:
                extra = cls.identity(lits)
            except Exception as e:  # an unreadable file: let the node itself report it when it runs
                extra = f"identity failed: {e}"
        return [
            extra,
            cls.type_name,
            cls.version,
            {k: self.ref_key(r, d.id, k, inner) for k, r in d.inputs.items()},
            [d.when.every, d.when.start, d.when.stop] if d.when else None,
            {k: self.ref_key(r, d.id, f"otherwise.{k}", inner) for k, r in d.otherwise.items()},
            cls.pure or self.run_token,
        ]

    def fingerprint(self, nid: str) -> str:
        d = self.all[nid]
        if isinstance(d, NodeDef):
            fp = _fingerprint([self.salt, self.node_key(d)])
        else:
            inner = set(d.body) | {d.id}
            fp = _fingerprint([
                self.salt,
                "Loop",
                d.item,
                self.ref_key(d.over, d.id, "over"),
                {k: self.ref_key(r, d.id, f"carry.{k}") for k, r in d.carry.items()},
                {bid: self.node_key(b, inner) for bid, b in d.body.items()},
                {k: self.ref_key(r, d.id, f"next.{k}", inner) for k, r in d.next.items()},
                {k: self.ref_key(r, d.id, f"collect.{k}", inner) for k, r in d.collect.items()},
            ])
        self.fps[nid] = fp
        return fp

    def output_names(self, nid: str) -> set[str]:
        d = self.wf.doc.nodes[nid]
        if isinstance(d, LoopDef):
            return {*d.carry, *d.collect}
        return set(self.wf.types[nid].outputs)

    def is_pure(self, nid: str) -> bool:
        d = self.wf.doc.nodes[nid]
        if isinstance(d, LoopDef):
            return all(self.wf.types[b].pure for b in d.body)
        return self.wf.types[nid].pure

    # --- values -----------------------------------------------------------------------------

    def resolve(self, ref: Ref, nid: str, name: str, scope: dict[str, dict[str, Any]]) -> Any:
        if isinstance(ref, LinkList):
            return [self.resolve(link, nid, name, scope) for link in ref.links]
        if isinstance(ref, Link):
            src = scope.get(ref.node)
            if src is None:
                src = self.values[ref.node]
            return src[ref.port]
        if isinstance(ref, ParamRef):
            return self.wf.literals.get((nid, name), self.wf.params.get(ref.name))
        return self.wf.literals.get((nid, name), ref.value) if isinstance(ref, Lit) else ref

    def call(self, d: NodeDef, scope: dict[str, dict[str, Any]], ctx: Context) -> dict[str, Any]:
        cls = self.wf.types[d.id]
        kwargs = {}
        for name, ref in d.inputs.items():
            v = self.resolve(ref, d.id, name, scope)
            if isinstance(ref, (Link, LinkList)):
                port = cls.inputs[name]
                if port.validates_values:
                    try:
                        v = port.adapter.validate_python(v)
                    except ValidationError as e:
                        raise NodeError(d.id, cls.type_name, f"input '{name}' received {v!r} from '{ref}': "
                                        f"{e.errors()[0]['msg']}", ctx.iteration) from None
            kwargs[name] = v
        try:
            out = cls().run(cls.In.model_construct(**kwargs), ctx)
            return _outputs_dict(out, cls)
        except (Cancelled, NodeError):
            raise
        except Exception as e:
            raise NodeError(d.id, cls.type_name, f"{type(e).__name__}: {e}", ctx.iteration) from e

    def context(self, nid: str, iteration: int | None = None, iterations: int | None = None) -> Context:
        o = self.ex
        return Context(nid, o.device, o.dtype, o.out_dir, self.wf.doc.raw, self.wf.params, iteration, iterations, o._cancel)

    def stat(self, nid: str) -> NodeStat:
        s = self.stats.get(nid)
        if s is None:
            s = self.stats[nid] = NodeStat(self.all[nid].type)
        return s

    # --- running ----------------------------------------------------------------------------

    def cached(self, nid: str, fp: str) -> tuple[dict[str, Any] | None, str | None]:
        hit = self.ex.memory.get(fp)
        if hit is not None:
            return hit, "memory"
        disk = self.ex.disk
        if disk is not None:
            needed = self.consumed.get(nid, set())
            hit = disk.get(fp, self.output_names(nid) if "*" in needed else needed)
            if hit is not None:
                if hit.keys() >= self.output_names(nid):  # a partial entry must not pose as complete
                    self.ex.memory.put(fp, hit)
                return hit, "disk"
        return None, None

    def store(self, nid: str, fp: str, outputs: dict[str, Any]) -> None:
        self.ex.memory.put(fp, outputs)
        d = self.wf.doc.nodes[nid]
        to_disk = isinstance(d, LoopDef) or self.wf.types[nid].disk_cache
        if self.ex.disk is not None and to_disk:
            try:
                self.ex.disk.put(fp, outputs)
            except OSError as e:
                self.ex.disk.errors.append(f"cannot write cache entry for '{nid}': {e}")

    def run_top(self, nid: str) -> None:
        d = self.wf.doc.nodes[nid]
        s = self.stat(nid)
        fp = self.fps[nid]
        if self.listen:
            self.emit(ev.NodeStarted(nid, d.type))
        t0 = time.perf_counter()
        pure = self.is_pure(nid)
        out, where = self.prefetched.pop(nid, (None, None))
        if out is None:
            if isinstance(d, LoopDef):
                out = self.run_loop(d)
            else:
                out = self.call(d, {}, self.context(nid))
            s.runs += 1
            if pure:
                self.store(nid, fp, out)
        else:
            s.hits += 1
        dt = time.perf_counter() - t0
        s.seconds += dt
        s.status = where or "ran"
        self.values[nid] = out
        if self.listen:
            self.emit(ev.NodeFinished(nid, d.type, dt, where))

    def run_loop(self, loop: LoopDef) -> dict[str, Any]:
        seq = self.resolve(loop.over, loop.id, "over", {})
        try:
            count = len(seq)
        except TypeError:
            raise NodeError(loop.id, "Loop", f"'over' is a {type(seq).__name__}, which has no length") from None
        body = self.wf.bodies[loop.id]
        # body nodes that only read outer values are the same on every iteration: run them once
        varying = set()
        for b in nx.topological_sort(body):
            bd = loop.body[b]
            if bd.when or not self.wf.types[b].pure or any(
                r.node == loop.id or r.node in varying for r in links_of(bd)
            ):
                varying.add(b)
        needed = set()
        stack = [r.node for r in [*loop.next.values(), *loop.collect.values()] if isinstance(r, Link) and r.node in loop.body]
        stack += [b for b in loop.body if not self.wf.types[b].pure]
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(body.pred[n])
        order = [b for b in nx.topological_sort(body.subgraph(needed))]
        scope: dict[str, dict[str, Any]] = {}
        listen = self.listen
        for b in order:
            if b not in varying:
                scope[b] = self.run_body_node(loop.body[b], scope, None, count)
        per_step = [b for b in order if b in varying]
        carry = {k: self.resolve(r, loop.id, f"carry.{k}", {}) for k, r in loop.carry.items()}
        collected: dict[str, list] = {k: [] for k in loop.collect}
        cancel = self.ex._cancel
        for i, item in enumerate(seq):
            if cancel.is_set():
                raise Cancelled()
            if listen:
                self.emit(ev.LoopStep(loop.id, i, count))
            scope[loop.id] = {loop.item: item, "index": i, "count": count, **carry}
            for b in per_step:
                bd = loop.body[b]
                if bd.when and not bd.when.active(i):
                    scope[b] = {k: self.resolve(r, b, f"otherwise.{k}", scope) for k, r in bd.otherwise.items()}
                    if listen:
                        self.emit(ev.NodeFinished(b, bd.type, 0.0, "skipped", i))
                    continue
                scope[b] = self.run_body_node(bd, scope, i, count)
            for k, r in loop.collect.items():
                if isinstance(r, Link) and r.port not in scope.get(r.node, {r.port: None}):
                    continue  # produced by a node that skipped this iteration
                collected[k].append(self.resolve(r, loop.id, f"collect.{k}", scope))
            carry = {k: self.resolve(r, loop.id, f"next.{k}", scope) for k, r in loop.next.items()}
        return {**carry, **collected}

    def run_body_node(self, bd: NodeDef, scope: dict[str, dict[str, Any]], i: int | None, count: int) -> dict[str, Any]:
        """One body node, once (``i`` None: a loop-invariant node run before the first step)."""
        if self.listen:
            self.emit(ev.NodeStarted(bd.id, bd.type, i))
        t0 = time.perf_counter()
        out = self.call(bd, scope, self.context(bd.id, i, count if i is not None else None))
        dt = time.perf_counter() - t0
        st = self.stat(bd.id)
        st.runs += 1
        st.seconds += dt
        st.status = "ran"
        if self.listen:
            self.emit(ev.NodeFinished(bd.id, bd.type, dt, None, i))
        return out

    def release(self, nid: str) -> None:
        """Drop a producer's outputs once its last consumer has run (the cache may still hold them)."""
        if nid in self.hits:
            return  # it read nothing from its producers; they were not counted for it
        for p in self.wf.preds[nid]:
            if p in self.remaining:
                self.remaining[p] -= 1
                if self.remaining[p] == 0 and p not in self.keep:
                    self.values.pop(p, None)

    def execute(self) -> RunResult:
        t0 = time.perf_counter()
        order = self.plan()
        if self.listen:
            self.emit(ev.RunStarted(len(order)))
        cancelled = False
        for nid in order:
            if self.ex._cancel.is_set():
                cancelled = True
                break
            blocked = [p for p in self.wf.preds[nid] if p in self.failed] if self.failed else None
            if blocked:
                self.root_cause[nid] = root = self.root_cause.get(blocked[0], blocked[0])
                self.failed[nid] = f"skipped because '{root}' failed"
                self.stat(nid).status = "skipped"
                continue
            try:
                self.run_top(nid)
            except Cancelled:
                cancelled = True
                break
            except NodeError as e:
                self.errors.append(e)
                self.failed[nid] = str(e)
                self.stat(nid).status = "failed"
                if e.node != nid:
                    self.stat(e.node).status = "failed"
                if self.listen:
                    self.emit(ev.NodeFailedEvent(e.node, e.type, e.message))
                continue
            self.release(nid)
        outputs, missing = {}, {}
        for name, link in self.wf.doc.outputs.items():
            if link.node in self.values:
                vals = self.values[link.node]
                outputs[name] = dict(vals) if link.port == "*" else vals[link.port]
            else:
                missing[name] = self.failed.get(link.node, "the run was cancelled" if cancelled else "not run")
        dt = time.perf_counter() - t0
        if self.listen:
            self.emit(ev.RunFinished(dt, not self.errors and not cancelled, cancelled))
        return RunResult(outputs, self.errors, self.stats, cancelled, dt, missing)


class Executor:
    """Runs workflows and remembers their results. One run at a time per executor; create one
    per thread for parallel runs (the process-wide model store is shared and thread-safe)."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        out_dir: str | Path = "out",
        cache_dir: str | Path | None = None,
        memory_budget: int = 4 << 30,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.out_dir = Path(out_dir)
        self.memory = MemoryCache(memory_budget)
        self.disk = DiskCache(cache_dir) if cache_dir else None
        self._listeners: list[Callable[[ev.Event], None]] = []
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[ev.Event], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def cancel(self) -> None:
        """Stop the current run at the next node or loop step; safe from any thread or a listener."""
        self._cancel.set()

    def run(self, wf: Any, params: dict[str, Any] | None = None) -> RunResult:
        """Run a ``graphflow.Workflow`` (or an already checked workflow)."""
        with fewer_gc_passes():
            checked = wf.check(params) if hasattr(wf, "check") else wf
            with self._lock:
                self._cancel.clear()
                salt = f"{self.device}|{self.dtype}"
                return _Run(self, checked, salt).execute()
