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
                 "collect": {"history": {"from": "inc.sum"}}}
      },
      "outputs": {"total": "loop.acc"}
    }

An input value is a link ``{"from": "node.port"}``, a list of links (gathered into one list), a
parameter ``{"param": "name"}``, an escaped literal ``{"literal": ...}``, or any other JSON value
taken literally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphflow.problems import Problem, ValidationFailed

FORMAT_VERSION = 1
NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


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
    loop: str | None = None
    when: When | None = None
    otherwise: dict[str, Ref] = field(default_factory=dict)
    title: str | None = None


@dataclass
class LoopDef:
    id: str
    over: Ref
    carry: dict[str, Ref]
    body: dict[str, NodeDef]
    next: dict[str, Ref]
    collect: dict[str, Ref]
    title: str | None = None
    type: str = "Loop"
    #: the name under which the body sees the current element ("item" unless renamed)
    item: str = "item"

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.item, "index", "count")


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
    nodes: dict[str, NodeDef | LoopDef]
    outputs: dict[str, Link]
    source: str = "<dict>"

    def all_nodes(self) -> dict[str, NodeDef | LoopDef]:
        """Top-level nodes and loop bodies, flattened: node ids are unique across the workflow."""
        out: dict[str, NodeDef | LoopDef] = {}
        for nid, n in self.nodes.items():
            out[nid] = n
            if isinstance(n, LoopDef):
                out.update(n.body)
        return out


def links_of(d: NodeDef | LoopDef) -> list[Link]:
    """Every link a node makes (a loop: with its body's), lists of links flattened. The one
    definition of "what a node reads" that the validator's graph and the executor's plan share."""
    if isinstance(d, NodeDef):
        refs = [*d.inputs.values(), *d.otherwise.values()]
    else:
        refs = [d.over, *d.carry.values(), *d.next.values(), *d.collect.values()]
        for b in d.body.values():
            refs += [*b.inputs.values(), *b.otherwise.values()]
    out: list[Link] = []
    for r in refs:
        if isinstance(r, LinkList):
            out.extend(r.links)
        elif isinstance(r, Link):
            out.append(r)
    return out


def top_level_of(nodes: dict[str, NodeDef | LoopDef]) -> dict[str, str]:
    """Each node id -> the top-level node that holds it (itself, or the loop whose body it is in)."""
    return {n: (d.loop if isinstance(d, NodeDef) and d.loop else n) for n, d in nodes.items()}


# --- the document's shape, as pydantic models -------------------------------------------------

_Strict = ConfigDict(extra="forbid")


class _WhenModel(BaseModel):
    model_config = _Strict
    every: int = Field(1, ge=1, description="run on every N-th iteration")
    start: int = Field(0, ge=0, description="first iteration on which the node runs")
    stop: int | None = Field(None, ge=0, description="iteration before which it stops running")


class _NodeModel(BaseModel):
    model_config = _Strict
    type: str = Field(description="node type name (see `graphflow nodes`)")
    inputs: dict[str, Any] = Field(default_factory=dict)
    when: _WhenModel | None = Field(None, description="only inside a loop body: the iterations the node runs on")
    otherwise: dict[str, Any] = Field(default_factory=dict, description="outputs on iterations the node skips")
    title: str | None = None


class _LoopModel(BaseModel):
    model_config = _Strict
    type: Literal["Loop"]
    over: Any = Field(description="the sequence to iterate: a link to a list or tensor")
    item: str = Field("item", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="the name of the current element inside the body")
    carry: dict[str, Any] = Field(default_factory=dict, description="loop-carried values and their initial values")
    body: dict[str, dict[str, Any]] = Field(description="the nodes run once per iteration")
    next: dict[str, Any] = Field(default_factory=dict, description="each carried value's value for the next iteration")
    collect: dict[str, Any] = Field(default_factory=dict, description="per-iteration values gathered into lists")
    title: str | None = None


class _ParamModel(BaseModel):
    model_config = _Strict
    default: Any = None
    description: str = ""
    type: Literal["int", "float", "string", "bool", "list", "any"] | None = None


class _DocModel(BaseModel):
    model_config = _Strict
    format: int = Field(description="workflow format version")
    description: str = ""
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]]
    outputs: dict[str, Any] | list[str]
    meta: dict[str, Any] = Field(default_factory=dict, description="free-form data for tools; ignored by graphflow")


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
        if not NODE_ID.match(nid):
            self.problems.append(
                Problem("bad_node_id", "node ids start with a letter or '_' and use letters, digits, '_' and '-'", node=nid)
            )
            return False
        if nid in self.seen_ids:
            self.problems.append(Problem("duplicate_node_id", "this id is used twice (ids are unique across loop bodies too)", node=nid))
            return False
        self.seen_ids.add(nid)
        return True

    def plain_node(self, nid: str, body: dict[str, Any], loop: str | None) -> NodeDef | None:
        try:
            m = _NodeModel.model_validate(body)
        except ValidationError as e:
            self.problems.extend(_pydantic_problems(e, nid))
            return None
        when = When(m.when.every, m.when.start, m.when.stop) if m.when else None
        if loop is None and (when or m.otherwise):
            self.problems.append(Problem("when_outside_loop", "'when' and 'otherwise' are only allowed in a loop body", node=nid, field="when"))
        return NodeDef(nid, m.type, self.refs(m.inputs, nid, "inputs"), loop, when, self.refs(m.otherwise, nid, "otherwise"), m.title)

    def loop_node(self, nid: str, body: dict[str, Any]) -> LoopDef | None:
        try:
            m = _LoopModel.model_validate(body)
        except ValidationError as e:
            self.problems.extend(_pydantic_problems(e, nid))
            return None
        over = parse_ref(m.over)
        if isinstance(over, str):
            self.problems.append(Problem("bad_link", over, node=nid, field="over"))
            over = Lit([])
        inner: dict[str, NodeDef] = {}
        for bid, bbody in m.body.items():
            if not self.node_id(bid):
                continue
            if not isinstance(bbody, dict):
                self.problems.append(Problem("invalid_document", "a node is a JSON object", node=bid))
                continue
            if bbody.get("type") == "Loop":
                self.problems.append(
                    Problem("nested_loop", f"loops cannot be nested: move loop '{bid}' out of the body of '{nid}'", node=bid, field="type")
                )
                continue
            n = self.plain_node(bid, bbody, nid)
            if n:
                inner[bid] = n
        variables = (m.item, "index", "count")
        if m.item in ("index", "count"):
            self.problems.append(Problem("bad_loop", f"'item' cannot be renamed to '{m.item}'", node=nid, field="item"))
        for name in m.carry:
            if name in variables:
                self.problems.append(
                    Problem("bad_loop", f"'{name}' is a loop variable and cannot be a carried value name", node=nid, field=f"carry.{name}")
                )
        for name in m.next:
            if name not in m.carry:
                self.problems.append(Problem("bad_loop", f"'next' names '{name}', which is not in 'carry'", node=nid, field=f"next.{name}"))
        for name in m.carry:
            if name not in m.next:
                self.problems.append(Problem("bad_loop", f"carried value '{name}' has no 'next' value", node=nid, field=f"carry.{name}"))
        for name in m.collect:
            if name in m.carry or name in variables:
                self.problems.append(
                    Problem("bad_loop", f"collected output '{name}' clashes with a carried value or loop variable", node=nid, field=f"collect.{name}")
                )
        return LoopDef(
            nid, over, self.refs(m.carry, nid, "carry"), inner, self.refs(m.next, nid, "next"), self.refs(m.collect, nid, "collect"),
            m.title, item=m.item,
        )

    def read(self) -> Document | None:
        try:
            m = _DocModel.model_validate(self.raw)
        except ValidationError as e:
            self.problems.extend(_pydantic_problems(e, None))
            return None
        if m.format != FORMAT_VERSION:
            self.problems.append(
                Problem("unsupported_format", f"this graphflow reads format {FORMAT_VERSION}, the file says {m.format}", field="format")
            )
            return None
        params = {}
        for name, p in m.params.items():
            try:
                pm = _ParamModel.model_validate(p)
            except ValidationError as e:
                self.problems.extend(_pydantic_problems(e, None, f"params.{name}"))
                continue
            params[name] = ParamDef(name, pm.default, "default" in p, pm.description, pm.type)
        nodes: dict[str, NodeDef | LoopDef] = {}
        for nid, body in m.nodes.items():
            if not self.node_id(nid):
                continue
            n = self.loop_node(nid, body) if body.get("type") == "Loop" else self.plain_node(nid, body, None)
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


def load_json_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ValidationFailed([Problem("unreadable_file", f"cannot read {p}: {e.strerror}")]) from None
    return parse_json(data, str(p))
