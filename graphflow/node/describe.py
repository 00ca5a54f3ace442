"""A node type as data: its ports with kinds, defaults, choices, ranges and ceilings. The one
description `graphflow describe` prints and `/api/nodes` serves, so the two cannot drift."""

from __future__ import annotations

from typing import Any

#: pydantic's numeric constraints, and how `describe` writes each
BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "multiple_of": "multiple of"}


def describe_port(p, inputs: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"name": p.name, "kind": str(p.kind), "description": p.description}
    if inputs:
        d["required"] = p.required
        if not p.required:
            d["default"] = p.default
        if p.choices:
            d["choices"] = list(p.choices)
        for m in p.metadata:
            for attr in BOUNDS:
                if getattr(m, attr, None) is not None:
                    d[attr] = getattr(m, attr)
        if p.limit:
            d["limit"] = p.limit
        d["link_only"] = not p.kind.literal
    return d


def describe_node(n) -> dict[str, Any]:
    """Everything a client needs to build a form for any node type, a third party's too."""
    return {"type": n.type_name, "category": n.category, "version": n.version, "pure": n.pure, "summary": n.summary(), "doc": n.doc(),
            "inputs": [describe_port(p, True) for p in n.inputs.values()], "outputs": [describe_port(p, False) for p in n.outputs.values()]}
