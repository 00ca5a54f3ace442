"""JSON text → values, refusing what a parser would lose without a word (a key given twice, an
integer beyond 64 bits), with the line and column of every problem. Used for workflow documents
and for ``--set`` values alike."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from graphflow.problems import Problem, ValidationFailed


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
