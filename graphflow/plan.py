"""plan: bound graph + cache index → the steps of a run. A pure function of its arguments: it
computes every fingerprint, then walks back from the outputs; a member found in a cache stops the
walk, so what only it consumes is never run or loaded (a fully cached re-run loads no model).

A node whose file input arrives through a link cannot be fingerprinted before that link's value
exists; it is *late*: the runner fingerprints it (and what depends on it) when it gets there,
with ``node_key`` below, and looks it up then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from graphflow.bind import BoundGraph
from graphflow.document import Def, Link, LinkList, Lit, NodeDef, ParamRef, Ref, ScopeDef, links_of
from graphflow.fingerprint import code_version, content_id, digest


class CacheIndex(Protocol):
    def lookup(self, fp: str, member: str, ports: set[str]) -> str | None:
        """Where a complete-enough entry for ``fp`` is ("memory", "disk", ...), or None."""


@dataclass(frozen=True)
class RunOptions:
    """The context values a run offers its nodes (``Node.uses``)."""

    device: str = "cpu"
    dtype: str = "float32"
    out_dir: str = "out"

    def context_key(self, uses: frozenset[str], workflow_key: Callable[[], str]) -> list:
        out = []
        for u in sorted(uses):
            if u in ("device", "dtype", "out_dir"):
                out.append([u, getattr(self, u)])
            elif u == "workflow":
                out.append([u, workflow_key()])
        return out


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
    #: member -> how many steps still read it (its values are dropped at zero)
    remaining: dict[str, int] = field(default_factory=dict)
    #: members whose outputs are returned to the caller
    keep: set[str] = field(default_factory=set)


class Keys:
    """Fingerprints of a bound graph's members. ``token`` makes impure nodes (side effects) unique
    to a run; ``fps`` holds the members' fingerprints as they become known."""

    def __init__(self, bound: BoundGraph, options: RunOptions, token: str) -> None:
        self.b = bound
        self.c = bound.checked
        self.options = options
        self.token = token
        self.fps: dict[str, str | None] = {}
        self._static = _static_keys(self.c)
        self._wf: str | None = None

    def workflow_key(self) -> str:
        if self._wf is None:
            self._wf = digest([self.c.doc.raw, self.b.params])
        return self._wf

    def ref_key(self, ref: Ref, nid: str, fld: str, inner: frozenset[str]) -> Any:
        if isinstance(ref, Link):
            if ref.node in inner:
                return ["in", ref.node, ref.port]
            return ["fp", self.fps[ref.node], ref.port]
        if isinstance(ref, LinkList):
            return [self.ref_key(x, nid, fld, inner) for x in ref.links]
        return ["v", self.b.value(nid, fld)]

    def node_key(self, d: NodeDef, inner: frozenset[str] = frozenset(), files: dict[str, Any] | None = None) -> list | None:
        """The key of one node; None when a file input's value is not known yet (late).
        ``files`` gives the run-time values of linked file inputs."""
        cls = self.c.types[d.id]
        ins = {}
        for k, r in d.inputs.items():
            key = self.ref_key(r, d.id, f"inputs.{k}", inner)
            if key[0] == "fp" and key[1] is None:
                return None
            port = cls.inputs[k]
            if port.file is not None:
                if isinstance(r, (Lit, ParamRef)):
                    key = ["file", content_id(port.file.path(self.b.value(d.id, f"inputs.{k}")))]
                elif files is not None and k in files:
                    key = ["file", content_id(port.file.path(files[k]))]
                else:
                    return None
            ins[k] = key
        other = {k: self.ref_key(r, d.id, f"otherwise.{k}", inner) for k, r in d.otherwise.items()}
        ctx = self.options.context_key(cls.uses, self.workflow_key)
        return [self._static[d.id], ins, other, ctx, True if cls.pure else self.token]

    def scope_key(self, s: ScopeDef) -> list | None:
        inner = frozenset(x for x in self.c.nodes if s.id in self.c.chain[x]) | {s.id}
        own = {f: self.ref_key(r, s.id, f, inner) for f, r in s.refs()}
        if any(k[0] == "fp" and k[1] is None for k in own.values()):
            return None
        body = {}
        for x in sorted(inner - {s.id}):
            d = self.c.nodes[x]
            if isinstance(d, ScopeDef):
                body[x] = [self._static[x], {f: self.ref_key(r, x, f, inner) for f, r in d.refs()}]
                continue
            k = self.node_key(d, inner)
            if k is None:  # a file path produced inside the scope: no key can promise its outputs
                k = self.token
            body[x] = k
        return [self._static[s.id], own, body]

    def member(self, m: str, files: dict[str, Any] | None = None) -> str | None:
        d = self.c.nodes[m]
        k = self.scope_key(d) if isinstance(d, ScopeDef) else self.node_key(d, files=files)
        fp = None if k is None else digest(k)
        self.fps[m] = fp
        return fp


def _static_keys(c) -> dict[str, Any]:
    """What never changes for a checked document: each node's type, versions, condition and
    scope shape. Computed once per document and kept on it."""
    memo = getattr(c, "_static_keys", None)
    if memo is None:
        memo = {}
        for nid, d in c.nodes.items():
            if isinstance(d, ScopeDef):
                memo[nid] = [d.type, d.item]
            else:
                cls = c.types[nid]
                memo[nid] = [cls.type_name, cls.version, code_version(cls), sorted(cls.uses),
                             [d.when.every, d.when.start, d.when.stop] if d.when else None]
        c._static_keys = memo
    return memo


def output_ports(c, m: str) -> set[str]:
    d = c.nodes[m]
    return set(d.outputs) if isinstance(d, ScopeDef) else set(c.types[m].outputs)


def is_pure(c, m: str) -> bool:
    d = c.nodes[m]
    if isinstance(d, ScopeDef):
        return all(c.types[x].pure for x, dd in c.nodes.items() if isinstance(dd, NodeDef) and m in c.chain[x])
    return c.types[m].pure


def plan(keys: Keys, index: CacheIndex) -> Plan:
    c = keys.c
    top = c.order[None]
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
    members = [n for n in top if n in needed]
    for n in members:
        for link in links_of(c.nodes[n]):
            if link.node in consumed and link.node != n:
                consumed[link.node].add(link.port)
        keys.member(n)
    hits: dict[str, str] = {}
    active: set[str] = set()
    keep = {link.node for link in outputs}
    stack = list(keep)
    while stack:
        n = stack.pop()
        if n in active:
            continue
        active.add(n)
        fp = keys.fps[n]
        if fp is not None and is_pure(c, n):
            ports = consumed[n]
            where = index.lookup(fp, n, output_ports(c, n) if "*" in ports else ports)
            if where is not None:
                hits[n] = where
                continue
        stack.extend(preds[n])
    steps = [n for n in members if n in active]
    return Plan(steps, {n: keys.fps[n] for n in steps}, hits, consumed, _remaining(c, steps, hits), keep)


def _remaining(c, steps: list[str], hits: dict[str, str]) -> dict[str, int]:
    out = dict.fromkeys(steps, 0)
    for s in steps:
        if s not in hits:
            for p in c.preds[None][s]:
                if p in out:
                    out[p] += 1
    return out
