"""Workflow format version 1 as a typed, immutable description: nodes, scopes, links, parameters.
``reader.py`` builds it from JSON (or a PNG graphflow saved); ``graph/check.py`` decides whether node
types exist and links fit.

    {
      "format": 1,
      "description": "...",
      "params": {"seed": {"default": 0, "description": "noise seed"}},
      "nodes": {
        "a":    {"type": "Add", "inputs": {"a": 1, "b": {"param": "seed"}}},
        "loop": {"type": "Loop", "over": {"from": "r.values"},
                 "carry": {"acc": 0},
                 "body": {"inc": {"type": "Add", "inputs": {"a": {"from": "loop.acc"}, "b": {"from": "loop.item"}}}},
                 "next": {"acc": {"from": "inc.sum"}},
                 "collect": {"history": {"from": "inc.sum"}}},
        "each": {"type": "Map", "over": {"from": "r.values"},
                 "body": {"sq": {"type": "Math", "inputs": {"a": {"from": "each.item"}, "b": 2, "op": "pow"}}},
                 "collect": {"squares": {"from": "sq.result"}}}
      },
      "outputs": {"total": "loop.acc"}
    }

An input value is a link ``{"from": "node.port"}``, a list of links (gathered into one list), a
parameter ``{"param": "name"}``, an escaped literal ``{"literal": ...}``, or any other JSON value
taken literally. Loops and Maps are *scopes*: a body of nodes (and inner scopes, to any depth)
run once per item; a body node reads its own scope's and every enclosing scope's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Link(NamedTuple):  # NamedTuples: a 10,000-node workflow makes 20,000 of these
    node: str
    port: str

    def __str__(self) -> str:
        return f"{self.node}.{self.port}"


class LinkList(NamedTuple):
    """Several links gathered into one list input (fan-in): ``[{"from": "a.image"}, {"from": "b.image"}]``."""

    links: tuple[Link, ...]


class ParamRef(NamedTuple):
    name: str


class Lit(NamedTuple):
    value: Any


Ref = Link | LinkList | ParamRef | Lit


@dataclass(frozen=True)
class When:
    every: int = 1
    start: int = 0
    stop: int | None = None

    def active(self, i: int) -> bool:
        return i >= self.start and (self.stop is None or i < self.stop) and (i - self.start) % self.every == 0


@dataclass
class NodeDef:
    id: str
    type: str
    inputs: dict[str, Ref]
    #: the innermost scope (Loop or Map) whose body holds the node; None at the top level
    scope: str | None = None
    when: When | None = None
    otherwise: dict[str, Ref] = field(default_factory=dict)
    title: str | None = None

    def refs(self) -> list[tuple[str, Ref]]:
        """Every (field, value) the node reads, the one dispatch point over its input forms."""
        return [*((f"inputs.{k}", r) for k, r in self.inputs.items()), *((f"otherwise.{k}", r) for k, r in self.otherwise.items())]


@dataclass
class ScopeDef:
    """A Loop or a Map: ``body`` runs once per element of ``over``. A Loop carries values from
    one iteration to the next (``carry``/``next``); a Map's items are independent."""

    id: str
    type: str  # "Loop" or "Map"
    over: Ref
    carry: dict[str, Ref]
    body: dict[str, NodeDef | ScopeDef]
    next: dict[str, Ref]
    collect: dict[str, Ref]
    title: str | None = None
    #: the name under which the body sees the current element ("item" unless renamed)
    item: str = "item"
    #: the enclosing scope; None at the top level
    scope: str | None = None
    #: a Map's items advanced together (``engine/scope_run.py``); 1: one after another
    batch: int = 1

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.item, "index", "count")

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the scope gives to the nodes after it: final carried values and collected lists."""
        return (*self.carry, *self.collect)

    def refs(self) -> list[tuple[str, Ref]]:
        """The scope's own reads (not its body's), with their fields."""
        out: list[tuple[str, Ref]] = [("over", self.over)]
        for section in ("carry", "next", "collect"):
            out += [(f"{section}.{k}", r) for k, r in getattr(self, section).items()]
        return out


Def = NodeDef | ScopeDef
#: kept for code written against the first engine
LoopDef = ScopeDef


@dataclass
class ParamDef:
    name: str
    default: Any
    has_default: bool
    description: str
    type: str | None


@dataclass
class Document:
    raw: dict[str, Any]
    description: str
    params: dict[str, ParamDef]
    nodes: dict[str, Def]
    outputs: dict[str, Link]
    source: str = "<dict>"

    def all_nodes(self) -> dict[str, Def]:
        """Every node and scope at any depth, flattened: node ids are unique across the workflow."""
        out: dict[str, Def] = {}
        stack = list(self.nodes.values())
        while stack:
            n = stack.pop()
            out[n.id] = n
            if isinstance(n, ScopeDef):
                stack.extend(n.body.values())
        return out


def ref_links(ref: Ref) -> tuple[Link, ...]:
    if isinstance(ref, Link):
        return (ref,)
    if isinstance(ref, LinkList):
        return ref.links
    return ()


def links_of(d: Def) -> list[Link]:
    """Every link a node makes (a scope: with all its bodies', at any depth), lists of links
    flattened. The one definition of "what a node reads" that the checker and the planner share."""
    out: list[Link] = []
    stack = [d]
    while stack:
        n = stack.pop()
        for _, r in n.refs():
            out.extend(ref_links(r))
        if isinstance(n, ScopeDef):
            stack.extend(n.body.values())
    return out


def scope_chain(nodes: dict[str, Def]) -> dict[str, tuple[str, ...]]:
    """Each node id -> the scopes around it, outermost first (empty at the top level)."""
    out: dict[str, tuple[str, ...]] = {}
    for nid, d in nodes.items():
        if nid in out:
            continue
        path = []
        s = d.scope
        while s is not None:
            path.append(s)
            s = nodes[s].scope
        out[nid] = tuple(reversed(path))
    return out


def scope_contents(chain: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Each scope id -> every node inside it, at any depth, sorted: one pass over the scope
    chains, so no later stage scans the whole document once per scope."""
    out: dict[str, list[str]] = {}
    for nid, scopes in chain.items():
        for s in scopes:
            out.setdefault(s, []).append(nid)
    return {s: tuple(sorted(ids)) for s, ids in out.items()}


def member_of(chain: tuple[str, ...], nid: str, scope: str | None) -> str | None:
    """The member of ``scope``'s body (or of the top level, scope None) that holds node ``nid``
    (itself, or the scope nesting it); None if ``nid`` is not inside ``scope``."""
    if scope is None:
        return chain[0] if chain else nid
    if scope not in chain:
        return None
    k = chain.index(scope)
    return chain[k + 1] if k + 1 < len(chain) else nid
