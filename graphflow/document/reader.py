"""Reading a workflow: JSON text (or a PNG graphflow saved) → the typed document of
``document.py``. Only the shape is checked here (which keys, which value types, with the format's
pydantic models); whether node types exist and links fit is ``check.py``'s job, which has the
registry. Every input is untrusted text: parsed, never evaluated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from graphflow.document.tree import Def, Document, Link, LinkList, Lit, NodeDef, ParamDef, ParamRef, Ref, ScopeDef, When
from graphflow.document.format import (
    FORMAT_VERSION,
    NAME_PATTERN,
    NODE_ID_PATTERN,
    SCOPE_TYPES,
    DocModel,
    NodeModel,
    ParamModel,
    ScopeModel,
)
from graphflow.document.depth import DEFAULT_DEPTH, depth_problem
from graphflow.document.jsontext import parse_json
from graphflow.problems import Problem, ValidationFailed

NODE_ID = re.compile(NODE_ID_PATTERN)
NAME = re.compile(NAME_PATTERN)


#: a step of a pydantic error location that names a union member ('dict[str,any]'), not a key
_UNION_TAG = re.compile(r"^[a-z-]+\[.*\]$")


def _pydantic_problems(e: ValidationError, node: str | None, prefix: str = "") -> list[Problem]:
    """One problem per place: the union members pydantic tried at one key ('outputs' is an object
    or a list) are one problem whose message lists what each wanted; a top-level error under
    ``nodes.<id>`` names that node."""
    found: dict[tuple[str | None, str | None], list[str]] = {}
    for err in e.errors():
        loc = [x for x in err["loc"] if not (isinstance(x, str) and _UNION_TAG.match(x))]
        where = node
        if where is None and not prefix and len(loc) >= 2 and loc[0] == "nodes":
            where, loc = str(loc[1]), loc[2:]
        path = ".".join(x for x in (prefix, ".".join(str(x) for x in loc)) if x) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif where is not None and not path and err["type"] == "dict_type":
            msg = "a node is a JSON object"
        msgs = found.setdefault((where, path), [])
        if msg not in msgs:
            msgs.append(msg)
    return [Problem("invalid_document", " or ".join(msgs), node=where, field=path) for (where, path), msgs in found.items()]


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
            self.refs(m.collect, nid, "collect"), m.title, item=m.item, scope=parent, batch=m.batch,
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
        if m.type == "Loop" and m.batch != 1:
            bad("a Loop's iterations follow one another: only a Map's items batch", "batch")
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


def read_document(raw: dict[str, Any], source: str = "<dict>", max_depth: int | None = DEFAULT_DEPTH) -> tuple[Document | None, list[Problem]]:
    """The typed document and every problem of its shape. A document nested more than
    ``max_depth`` levels is refused first, with that problem alone, before anything walks it
    (None: the caller has checked)."""
    if not isinstance(raw, dict):
        return None, [Problem("invalid_document", "a workflow is a JSON object")]
    deep = None if max_depth is None else depth_problem(raw, max_depth)
    if deep is not None:
        return None, [deep]
    r = _Reader(raw, source)
    doc = r.read()
    return doc, r.problems


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _foreign(readers, data: dict[str, Any] | None, text: dict[str, str] | None, source: str):
    """The first node pack reader that knows this document (a JSON object with no ``format``, or a
    PNG's text chunks without graphflow's): its translation, or None."""
    for read in readers:
        hit = read(data, text, source)
        if hit is not None:
            return hit
    return None


def load_json_file(path: str | Path, max_bytes: int | None = None, readers=()) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A workflow file's document, and the parameter values a PNG recorded with it (None for
    JSON). A PNG that graphflow saved carries both as text chunks; they are parsed like any
    untrusted document, never evaluated. A file over ``max_bytes`` is refused unread.

    ``readers`` are the document readers node packs contributed (``Registry.add_reader``): a file
    in another program's format (a JSON object without ``format``, a PNG without graphflow's
    chunks) is handed to each, and the first that knows it gives the workflow and parameters; the
    reader is called as ``read(json_object_or_None, png_text_chunks_or_None, source)``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ValidationFailed([Problem("over_limit", f"{p} has {size} bytes, over the limit of {max_bytes} for 'document' "
                                                          f"(raise it with --limit document=N)")])
        data = p.read_bytes()
    except OSError as e:
        raise ValidationFailed([Problem("unreadable_file", f"cannot read {p}: {e.strerror}")]) from None
    if not data.startswith(PNG_SIGNATURE):
        doc = parse_json(data, str(p))
        if readers and isinstance(doc, dict) and "format" not in doc:
            hit = _foreign(readers, doc, None, str(p))
            if hit is not None:
                return hit
        return doc, None
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            text = {k: str(v) for k, v in (getattr(im, "text", {}) or {}).items()}  # iTXt values are str subclasses
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValidationFailed([Problem("invalid_png", f"{p} is not a readable PNG: {e}")]) from None
    if "graphflow_workflow" not in text:
        hit = _foreign(readers, None, text, str(p)) if readers else None
        if hit is not None:
            return hit
        raise ValidationFailed([Problem("invalid_png", f"{p} holds no graphflow workflow (it was not saved by graphflow's SaveImage)")])
    doc = parse_json(text["graphflow_workflow"], f"{p} (embedded workflow)")
    params = parse_json(text.get("graphflow_params", "{}"), f"{p} (embedded parameters)")
    if not isinstance(params, dict):
        raise ValidationFailed([Problem("invalid_png", f"{p}: the embedded parameters are not a JSON object")])
    return doc, params
