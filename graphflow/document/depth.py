"""How deeply lists and objects nest in a workflow document or a parameter value, checked before
anything walks them. Every later stage (pydantic, the fingerprint, JSON written back by the
server, a value's ``repr`` in a message) recurses, and Python's recursion and orjson's writer
stop somewhere between 255 and 1000 levels with an error that names nothing (a value nested 300
levels gave the server a 500; 1,000 levels failed a run with RecursionError). No workflow needs
more than a few levels (the shipped ones reach 9), so a ceiling far below those limits refuses the
hostile value with a problem naming it, and no stage after this one can meet a deeper value.
"""

from __future__ import annotations

from itertools import compress, repeat
from typing import Any

from graphflow.document.jsontext import _json_path, _node_of
from graphflow.problems import Problem

#: levels of lists and objects a document or a parameter value may nest by default
DEFAULT_DEPTH = 64
#: the most ``--limit depth`` may allow: orjson writes at most 255 levels, and the server wraps
#: a document in a few levels of its own
MAX_DEPTH = 200

_CONTAINERS = (dict, list, tuple)


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` levels of lists and objects (``[[1]]`` is two).
    Level by level, holding one level's containers at a time and never recursing: a value that
    contains itself (a Python object graph is not always a tree) ends at ``limit + 1`` too."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for c in level:
            items = c.values() if isinstance(c, dict) else c
            below += compress(items, map(isinstance, items, repeat(_CONTAINERS)))  # C-speed: a list of 3 million numbers in 0.3 s
        level = below
    return False


def too_deep_path(value: Any, limit: int) -> tuple[str | int, ...] | None:
    """The keys and indices down to the first list or object nested more than ``limit`` levels
    deep, or None. A depth-first walk with its own stack; called only once ``nests_deeper`` has
    found one, so the usual value pays for one level-by-level pass and no paths."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())] if isinstance(value, _CONTAINERS) else []
    while stack:
        c, depth, path = stack.pop()
        if depth > limit:
            return path
        items = c.items() if isinstance(c, dict) else enumerate(c)
        stack += [(v, depth + 1, (*path, k)) for k, v in items if isinstance(v, _CONTAINERS)][::-1]
    return None


def _field_of(path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A deep path cut to what a user edits: a node's field (``nodes.a.inputs.value``, or
    ``nodes.loop.body.b.inputs.value`` inside a scope), else its first three steps
    (``params.seed.default``); the message says how deep."""
    if len(path) >= 2 and path[0] == "nodes":
        i = 2
        while i + 1 < len(path) and path[i] == "body" and isinstance(path[i + 1], str):
            i += 2
        return path[:i + 2]
    return path[:3]


def depth_problem(value: Any, limit: int, field: str | None = None, what: str = "the document") -> Problem | None:
    """A ``too_deep`` problem naming where ``value`` first nests past ``limit`` levels (in a
    document: the node and the JSON path; else ``field``), or None."""
    if not nests_deeper(value, limit):
        return None
    node = None
    if field is None:
        path = _field_of(too_deep_path(value, limit) or ())
        node, field = _node_of(path), _json_path(path) or None
    return Problem("too_deep", f"{what} nests lists and objects more than {limit} levels deep, over the limit for 'depth' "
                               f"(raise it with --limit depth=N, at most {MAX_DEPTH})", node=node, field=field)
