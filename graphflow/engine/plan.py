"""plan: bound graph + cache index → the steps of a run. A pure function of its arguments: it
computes every fingerprint, then walks back from the outputs; a member found in a cache stops the
walk, so what only it consumes is never run or loaded (a fully cached re-run loads no model).

A node whose file input arrives through a link cannot be fingerprinted before that link's value
exists; it is *late*: the runner fingerprints it (and what depends on it) when it gets there,
with ``node_key`` below, and looks it up then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from graphflow.document.tree import NodeDef, ScopeDef, links_of, ref_links
from graphflow.engine.fingerprint import Fingerprints, RunOptions
from graphflow.graph.memo import Shape

__all__ = ["CacheIndex", "Fingerprints", "Plan", "RunOptions", "Shape", "plan"]


class CacheIndex(Protocol):
    def lookup(self, fp: str, member: str, ports: set[str]) -> str | None:
        """Where a complete-enough entry for ``fp`` is ("memory", "disk", ...), or None. An index
        may also offer ``empty()``: true when every lookup would give None, so the planner skips
        the walk; and ``all_in_memory(fps)``: true when every lookup of these would give
        "memory", so a fully cached run is planned without one."""


@dataclass
class Plan:
    #: top-level members to touch, in order
    steps: list[str]
    #: member -> fingerprint (None: late, known only at run time)
    fps: dict[str, str | None]
    #: member -> where its outputs are loaded from instead of running it
    hits: dict[str, str]
    #: member -> the output ports that later steps and the workflow's outputs read ("*": all)
    consumed: dict[str, set[str]]
    #: member -> how many steps still read it, plus one if the caller gets its outputs
    #: (``Shape.keep``): its values are dropped at zero
    remaining: dict[str, int] = field(default_factory=dict)


def shape(c) -> Shape:
    """What planning needs that depends on the document alone: computed once per checked graph."""
    memo = c.memo.shape
    if memo is not None:
        return memo
    preds = c.preds[None]
    outputs = c.doc.outputs.values()
    needed: set[str] = set()
    stack = [link.node for link in outputs]
    while stack:  # iterative: no recursion limit on long chains
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(preds[n])
    consumed: dict[str, set[str]] = {n: set() for n in needed}
    for link in outputs:
        consumed[link.node].add(link.port)
    members = [n for n in c.order[None] if n in needed]
    for n in members:
        for link in links_of(c.nodes[n]):
            if link.node in consumed and link.node != n:
                consumed[link.node].add(link.port)
    scope = {n: isinstance(c.nodes[n], ScopeDef) for n in members}
    keep = {link.node for link in outputs}
    pure = {n: is_pure(c, n) for n in members}
    c.memo.shape = memo = Shape(
        members, consumed, keep, pure,
        {n: output_ports(c, n) for n in members},
        {n: scope[n] or c.types[n].disk_cache for n in members},
        [n for n in members if n in keep] if all(pure[n] for n in keep) else None,
    )
    return memo


def body_order(c, sid: str) -> list[str]:
    """The members of a scope's body that its values need (what ``next`` and ``collect`` read,
    and every side effect), in order; once per checked graph."""
    memo = c.memo.body_order
    hit = memo.get(sid)
    if hit is None:
        s, preds = c.nodes[sid], c.preds[sid]
        needed: set[str] = set()
        stack = [link.node for _, r in s.refs() for link in ref_links(r) if link.node in s.body]
        stack += [m for m in s.body if not is_pure(c, m)]
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(preds[n])
        hit = memo[sid] = [m for m in c.order[sid] if m in needed]
    return hit


def output_ports(c, m: str) -> set[str]:
    d = c.nodes[m]
    return set(d.outputs) if isinstance(d, ScopeDef) else set(c.types[m].outputs)


def is_pure(c, m: str) -> bool:
    d = c.nodes[m]
    if isinstance(d, ScopeDef):
        return all(c.types[x].pure for x, dd in c.nodes.items() if isinstance(dd, NodeDef) and m in c.chain[x])
    return c.types[m].pure


def plan(keys: Fingerprints, index: CacheIndex) -> Plan:
    c = keys.checked
    sh = shape(c)
    keys.all(sh.members)
    fps, lookup = keys.fps, index.lookup
    hits: dict[str, str] = {}
    empty = getattr(index, "empty", None)  # optional: an index that can say it holds nothing
    if empty is not None and empty():  # nothing to find (a fresh executor, no disk cache): every member is a step
        if c.memo.all_remaining is None:
            c.memo.all_remaining = _remaining(c, sh.members, hits, sh.keep)
        return Plan(list(sh.members), dict(fps), hits, sh.consumed, dict(c.memo.all_remaining))
    if sh.kept is not None:  # a fully cached re-run: what the caller gets is all in memory
        in_memory = getattr(index, "all_in_memory", None)
        kept_fps = [fps[n] for n in sh.kept]
        if in_memory is not None and None not in kept_fps and in_memory(kept_fps):
            hits = dict.fromkeys(sh.kept, "memory")
            return Plan(list(sh.kept), dict(zip(sh.kept, kept_fps)), hits, sh.consumed,
                        _remaining(c, sh.kept, hits, sh.keep))
    walk = _walk(c, sh)
    active: set[str] = set()
    stack = list(sh.keep)
    while stack:
        n = stack.pop()
        if n in active:
            continue
        active.add(n)
        fp = fps[n]
        looked, ports, producers = walk[n]
        if fp is not None and looked:
            where = lookup(fp, n, ports)
            if where is not None:
                hits[n] = where
                continue
        stack.extend(producers)
    if len(active) < len(sh.members):
        steps = [n for n in sh.members if n in active]
        step_fps = {n: fps[n] for n in steps}
    else:  # every member is a step (a cold run): the fingerprints as they are, not a copy
        steps, step_fps = list(sh.members), dict(fps)
        if not hits:
            if c.memo.all_remaining is None:
                c.memo.all_remaining = _remaining(c, steps, hits, sh.keep)
            return Plan(steps, step_fps, hits, sh.consumed, dict(c.memo.all_remaining))
    return Plan(steps, step_fps, hits, sh.consumed, _remaining(c, steps, hits, sh.keep))


def _walk(c, sh: Shape) -> dict[str, tuple]:
    """Per member, what the plan's walk reads of it: whether a cache may hold it (pure), the
    output ports to look for, its producers. Once per checked graph: one lookup per member."""
    walk = c.memo.plan_walk
    if walk is None:
        preds = c.preds[None]
        walk = c.memo.plan_walk = {
            n: (sh.pure[n], sh.ports[n] if "*" in sh.consumed[n] else sh.consumed[n], tuple(preds[n])) for n in sh.members}
    return walk


def _remaining(c, steps: list[str], hits: dict[str, str], keep: set[str]) -> dict[str, int]:
    out = dict.fromkeys(steps, 0)
    out.update(dict.fromkeys(out.keys() & keep, 1))
    preds = c.preds[None]
    for s in steps:
        if s not in hits:
            for p in preds[s]:
                if p in out:
                    out[p] += 1
    return out
