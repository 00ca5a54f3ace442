"""Reading a workflow: JSON text (or a PNG graphflow saved) → the typed document of
``document.py``. Only the shape is checked here (which keys, which value types, with the format's
pydantic models); whether node types exist and links fit is ``check.py``'s job, which has the
registry. Every input is untrusted text: parsed, never evaluated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from graphflow.document import Def, Document, Link, LinkList, Lit, NodeDef, ParamDef, ParamRef, Ref, ScopeDef, When
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
    """orjson, with the position of a syntax error turned into a problem with line and column,
    and what orjson would silently lose refused: a key repeated inside one object, an integer
    beyond 64 bits (see ``silent_losses``)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValidationFailed([_syntax_problem(text, source, e)]) from None
    lost = silent_losses(text)
    if lost:
        raise ValidationFailed(lost)
    return data


def _syntax_problem(text: bytes | str, source: str, e: orjson.JSONDecodeError) -> Problem:
    """orjson's message, or a plainer one for text that is not UTF-8 at all."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return Problem("invalid_json", f"{source} is UTF-16 (or UTF-32) text: a workflow is UTF-8", line=1, column=1)
        if raw.startswith(b"\xef\xbb\xbf"):
            return Problem("invalid_json", f"{source} starts with a byte order mark (BOM): save it as UTF-8 without one", line=1, column=1)
        if "UTF-8" in e.msg:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as u:
                line = raw.count(b"\n", 0, u.start) + 1
                column = len(raw[raw.rfind(b"\n", 0, u.start) + 1 : u.start].decode("utf-8", "replace")) + 1
                return Problem("invalid_json", f"{source} is not UTF-8 text: byte 0x{raw[u.start]:02x} cannot start or continue "
                               "a character", line=line, column=column)
    return Problem("invalid_json", f"{source} is not valid JSON: {e.msg}", line=e.lineno, column=e.colno)


#: the tokens the scanner needs: strings (escapes included), numbers, brackets, commas
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|[{}\[\],]')
#: the integers a JSON number may hold without orjson turning it into a float (int64 and uint64)
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
#: at most this many problems from the scanner, then one that counts the rest
MAX_REPORTED = 100


def _int_too_big(token: str) -> bool:
    if len(token) > 21:  # past 20 digits and a sign: beyond 64 bits (and never int() a 10,000-digit string)
        return True
    return not INT_MIN <= int(token) <= INT_MAX


def silent_losses(text: bytes | str) -> list[Problem]:
    """What a JSON parser would drop without a word, as problems with the JSON path as the
    field, the node it is in, and the line: a key repeated inside one object (``duplicate_key``),
    and an integer beyond 64 bits (``invalid_document``). [] for the usual document.

    JSON parsers keep one of two equal keys and drop the other: two nodes with the same id, or
    two values for one input, would run whichever came last. And orjson reads an integer beyond
    64 bits as a rounded float. orjson, which graphflow keeps for its speed (about 5× the
    standard library), cannot tell that either happened. So the text orjson accepted is parsed a
    second time by the standard library's ``json``, whose ``object_pairs_hook`` sees every
    (key, value) pair of every object and whose ``parse_int`` sees every integer's digits: that
    C-speed pass only answers *whether* something was lost (about 80 µs for txt2img.json, 0.1 s
    for a 50 MB document). Only then, or when that parser's recursion limit is reached (nesting
    near orjson's own limit of 1024 levels), does an iterative scan of the text's tokens find
    each one's path and line: the usual document pays one extra parse, never a walk in Python.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")  # orjson has accepted it: valid UTF-8
    lost = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal lost
        d = dict(pairs)
        if len(d) != len(pairs):
            lost = True
        return d

    def int_hook(token: str) -> int:
        nonlocal lost
        if len(token) > 18 and _int_too_big(token):
            lost = True
            return 0
        return int(token)

    try:
        json.loads(text, object_pairs_hook=pairs_hook, parse_int=int_hook)
    except (RecursionError, ValueError):
        lost = True  # too deep for the standard parser: let the scanner decide
    if not lost:
        return []
    return _scan(text)


def _scan(text: str) -> list[Problem]:
    found: list[Problem] = []
    # one frame per open object or array: [is_object, path, key or index, keys seen -> position, expecting a key]
    stack: list[list[Any]] = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        c = tok[0]
        if c == '"':
            if stack and stack[-1][0] and stack[-1][4]:
                f = stack[-1]
                key = json.loads(tok)
                if key in f[3]:
                    path = (*f[1], key)
                    found.append(_located(
                        "duplicate_key", f"the key '{key}' appears twice in one object (first on line "
                        f"{_line_column(text, f[3][key])[0]}); JSON readers silently keep only one of them: remove or rename one",
                        path, text, m.start()))
                else:
                    f[3][key] = m.start()
                f[2], f[4] = key, False
        elif c == "{" or c == "[":
            path = (*stack[-1][1], stack[-1][2]) if stack else ()
            stack.append([c == "{", path, 0, {}, True])
        elif c == ",":
            f = stack[-1]
            if f[0]:
                f[4] = True
            else:
                f[2] += 1
        elif c == "}" or c == "]":
            stack.pop()
        elif len(tok) > 18 and not any(x in tok for x in ".eE") and _int_too_big(tok):
            path = (*stack[-1][1], stack[-1][2]) if stack else ()
            found.append(_located("invalid_document", f"the integer {tok} does not fit in 64 bits (it would be read as a rounded "
                                  "float)", path, text, m.start()))
    if len(found) > MAX_REPORTED:
        found[MAX_REPORTED:] = [Problem(found[-1].code, f"and {len(found) - MAX_REPORTED} more like these")]
    return found


def _located(code: str, message: str, path: tuple[str | int, ...], text: str, pos: int) -> Problem:
    line, column = _line_column(text, pos)
    return Problem(code, message, node=_node_of(path), field=_json_path(path) or None, line=line, column=column)


def _line_column(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def _json_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _node_of(path: tuple[str | int, ...]) -> str | None:
    """The innermost node a JSON path is in: nodes.<id>, then <scope>.body.<id> at any depth."""
    if len(path) < 2 or path[0] != "nodes" or not isinstance(path[1], str):
        return None
    node, i = path[1], 2
    while i + 1 < len(path) and path[i] == "body" and isinstance(path[i + 1], str):
        node, i = path[i + 1], i + 2
    return node


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_json_file(path: str | Path, max_bytes: int | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A workflow file's document, and the parameter values a PNG recorded with it (None for
    JSON). A PNG that graphflow saved carries both as text chunks; they are parsed like any
    untrusted document, never evaluated. A file over ``max_bytes`` is refused unread."""
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
