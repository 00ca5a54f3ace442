"""Workflow format version 1: reading the JSON text into a typed, immutable description.

This module checks only the shape of the document (which keys, which value types); whether node
types exist and links fit is the validator's job, which has the registry.

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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from graphflow.format import (
    FORMAT_VERSION,
    NAME_PATTERN,
    NODE_ID_PATTERN,
    SCOPE_TYPES,
    DocModel,
    NodeModel,
    ParamModel,
    ScopeModel,
)
from graphflow.problems import Problem, ValidationFailed

NODE_ID = re.compile(NODE_ID_PATTERN)
NAME = re.compile(NAME_PATTERN)


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


def member_of(chain: tuple[str, ...], nid: str, scope: str | None) -> str | None:
    """The member of ``scope``'s body (or of the top level, scope None) that holds node ``nid``
    (itself, or the scope nesting it); None if ``nid`` is not inside ``scope``."""
    if scope is None:
        return chain[0] if chain else nid
    if scope not in chain:
        return None
    k = chain.index(scope)
    return chain[k + 1] if k + 1 < len(chain) else nid



# --- reading the document with the format's models ----------------------------------------

def _pydantic_problems(e: ValidationError, node: str | None, prefix: str = "") -> list[Problem]:
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        path = ".".join(x for x in (prefix, loc) if x) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        out.append(Problem("invalid_document", msg, node=node, field=path))
    return out


def parse_ref(value: Any) -> Ref | str:
    """Classify one input value; returns an error message (str) for a malformed link."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and set(v) == {"from"} for v in value):
        links = [parse_ref(v) for v in value]
        bad = next((x for x in links if isinstance(x, str)), None)
        return bad if bad is not None else LinkList(tuple(links))
    if not isinstance(value, dict):
        return Lit(value)
    if isinstance(value, dict) and len(value) == 1:
        (key, v), = value.items()
        if key == "from":
            if not isinstance(v, str) or v.count(".") != 1:
                return f'a link is written {{"from": "node.port"}}, got {orjson.dumps(value).decode()}'
            node, port = v.split(".")
            if not node or not port:
                return f'a link is written {{"from": "node.port"}}, got {orjson.dumps(value).decode()}'
            return Link(node, port)
        if key == "param":
            if not isinstance(v, str):
                return f'a parameter reference is written {{"param": "name"}}, got {orjson.dumps(value).decode()}'
            return ParamRef(v)
        if key == "literal":
            return Lit(v)
    return Lit(value)


def _output_link(value: Any) -> Link | str:
    if isinstance(value, str):
        value = {"from": value}
    ref = parse_ref(value)
    if isinstance(ref, str):
        return ref
    if not isinstance(ref, Link):
        return 'an output is "node.port" or {"from": "node.port"}'
    return ref


class _Reader:
    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source
        self.problems: list[Problem] = []
        self.seen_ids: set[str] = set()

    def refs(self, values: dict[str, Any], node: str, section: str) -> dict[str, Ref]:
        out = {}
        for k, v in values.items():
            ref = parse_ref(v)
            if isinstance(ref, str):
                self.problems.append(Problem("bad_link", ref, node=node, field=f"{section}.{k}"))
            else:
                out[k] = ref
        return out

    def node_id(self, nid: str) -> bool:
        if not NODE_ID.fullmatch(nid):
            self.problems.append(
                Problem("bad_node_id", "node ids start with a letter or '_' and use letters, digits, '_' and '-'", node=nid)
            )
            return False
        if nid in self.seen_ids:
            self.problems.append(Problem("duplicate_node_id", "this id is used twice (ids are unique across loop bodies too)", node=nid))
            return False
        self.seen_ids.add(nid)
        return True

    def node(self, nid: str, body: Any, scope: str | None) -> Def | None:
        if not self.node_id(nid):
            return None
        if not isinstance(body, dict):
            self.problems.append(Problem("invalid_document", "a node is a JSON object", node=nid))
            return None
        if body.get("type") in SCOPE_TYPES:
            return self.scope_node(nid, body, scope)
        return self.plain_node(nid, body, scope)

    def plain_node(self, nid: str, body: dict[str, Any], scope: str | None) -> NodeDef | None:
        m = self.model(NodeModel, body, nid)
        if m is None:
            return None
        when = When(m.when.every, m.when.start, m.when.stop) if m.when else None
        if scope is None and ("when" in body or "otherwise" in body):
            self.problems.append(Problem("when_outside_loop", "'when' and 'otherwise' are only allowed in a loop body", node=nid, field="when"))
        return NodeDef(nid, m.type, self.refs(m.inputs, nid, "inputs"), scope, when, self.refs(m.otherwise, nid, "otherwise"), m.title)

    def model(self, cls: type[BaseModel], body: dict[str, Any], nid: str | None, prefix: str = "") -> Any:
        try:
            return cls.model_validate(body, strict=True)  # JSON true is no number, "1" no version
        except ValidationError as e:
            self.problems.extend(_pydantic_problems(e, nid, prefix))
            return None

    def scope_node(self, nid: str, body: dict[str, Any], parent: str | None) -> ScopeDef | None:
        m = self.model(ScopeModel, body, nid)
        if m is None:
            return None
        over = parse_ref(m.over)
        if isinstance(over, str):
            self.problems.append(Problem("bad_link", over, node=nid, field="over"))
            over = Lit([])
        inner: dict[str, Def] = {}
        for bid, bbody in m.body.items():
            n = self.node(bid, bbody, nid)
            if n:
                inner[bid] = n
        self.check_scope_names(nid, m)
        return ScopeDef(
            nid, m.type, over, self.refs(m.carry, nid, "carry"), inner, self.refs(m.next, nid, "next"),
            self.refs(m.collect, nid, "collect"), m.title, item=m.item, scope=parent,
        )

    def check_scope_names(self, nid: str, m: ScopeModel) -> None:
        def bad(msg: str, fld: str) -> None:
            self.problems.append(Problem("bad_loop", msg, node=nid, field=fld))

        variables = (m.item, "index", "count")
        for section in ("carry", "collect"):
            for name in getattr(m, section):
                if not NAME.fullmatch(name):
                    bad(f"'{name}' cannot be read through a link: names use letters, digits and '_'", f"{section}.{name}")
        if m.item in ("index", "count"):
            bad(f"'item' cannot be renamed to '{m.item}'", "item")
        if m.type == "Map":
            for section in ("carry", "next"):
                if getattr(m, section):
                    bad(f"a Map's items are independent: it has no '{section}' (use a Loop to carry values)", section)
            return
        for name in m.carry:
            if name in variables:
                bad(f"'{name}' is a loop variable and cannot be a carried value name", f"carry.{name}")
            if name not in m.next:
                bad(f"carried value '{name}' has no 'next' value", f"carry.{name}")
        for name in m.next:
            if name not in m.carry:
                bad(f"'next' names '{name}', which is not in 'carry'", f"next.{name}")
        for name in m.collect:
            if name in m.carry or name in variables:
                bad(f"collected output '{name}' clashes with a carried value or loop variable", f"collect.{name}")

    def read(self) -> Document | None:
        m = self.model(DocModel, self.raw, None)
        if m is None:
            return None
        if m.format != FORMAT_VERSION:
            self.problems.append(
                Problem("unsupported_format", f"this graphflow reads format {FORMAT_VERSION}, the file says {m.format}", field="format")
            )
            return None
        params = {}
        for name, p in m.params.items():
            if not NAME.fullmatch(name):
                self.problems.append(Problem("invalid_document", "parameter names use letters, digits and '_', starting with a letter or '_'",
                                            field=f"params.{name}"))
                continue
            pm = self.model(ParamModel, p, None, f"params.{name}")
            if pm is None:
                continue
            params[name] = ParamDef(name, pm.default, "default" in p, pm.description, pm.type)
        nodes: dict[str, Def] = {}
        for nid, body in m.nodes.items():
            n = self.node(nid, body, None)
            if n:
                nodes[nid] = n
        outputs: dict[str, Link] = {}
        items = m.outputs.items() if isinstance(m.outputs, dict) else ((o, o) for o in m.outputs)
        for name, value in items:
            if isinstance(m.outputs, list) and "." not in value:
                outputs[name] = Link(value, "*")  # every output of that node
                continue
            link = _output_link(value)
            if isinstance(link, str):
                self.problems.append(Problem("bad_link", link, field=f"outputs.{name}"))
            else:
                outputs[name] = link
        if not outputs:
            self.problems.append(Problem("no_outputs", "the workflow names no outputs, so nothing would run", field="outputs"))
        return Document(self.raw, m.description, params, nodes, outputs, self.source)


def read_document(raw: dict[str, Any], source: str = "<dict>") -> tuple[Document | None, list[Problem]]:
    if not isinstance(raw, dict):
        return None, [Problem("invalid_document", "a workflow is a JSON object")]
    r = _Reader(raw, source)
    doc = r.read()
    return doc, r.problems


def parse_json(text: bytes | str, source: str = "<text>") -> dict[str, Any]:
    """orjson, with the position of a syntax error turned into a problem with line and column."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValidationFailed(
            [Problem("invalid_json", f"{source} is not valid JSON: {e.msg}", line=e.lineno, column=e.colno)]
        ) from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_json_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A workflow file's document, and the parameter values a PNG recorded with it (None for
    JSON). A PNG that graphflow saved carries both as text chunks; they are parsed like any
    untrusted document, never evaluated."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ValidationFailed([Problem("unreadable_file", f"cannot read {p}: {e.strerror}")]) from None
    if not data.startswith(PNG_SIGNATURE):
        return parse_json(data, str(p)), None
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            text = {k: str(v) for k, v in (getattr(im, "text", {}) or {}).items()}  # iTXt values are str subclasses
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValidationFailed([Problem("invalid_png", f"{p} is not a readable PNG: {e}")]) from None
    if "graphflow_workflow" not in text:
        raise ValidationFailed([Problem("invalid_png", f"{p} holds no graphflow workflow (it was not saved by graphflow's SaveImage)")])
    doc = parse_json(text["graphflow_workflow"], f"{p} (embedded workflow)")
    params = parse_json(text.get("graphflow_params", "{}"), f"{p} (embedded parameters)")
    if not isinstance(params, dict):
        raise ValidationFailed([Problem("invalid_png", f"{p}: the embedded parameters are not a JSON object")])
    return doc, params
