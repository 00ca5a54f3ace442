"""A JSON Schema of workflow format 1, built from the registry, so that an editor autocompletes
node types, their inputs and enum values, and flags a wrong literal as it is typed."""

from __future__ import annotations

from typing import Any

from graphflow.node import Node
from graphflow.registry import Registry

LINK = {
    "type": "object",
    "properties": {"from": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_]*$"}},
    "required": ["from"],
    "additionalProperties": False,
    "description": 'a link to another node\'s output: {"from": "node.port"}',
}
PARAM = {
    "type": "object",
    "properties": {"param": {"type": "string"}},
    "required": ["param"],
    "additionalProperties": False,
    "description": 'a workflow parameter: {"param": "name"}',
}
WHEN = {
    "type": "object",
    "properties": {
        "every": {"type": "integer", "minimum": 1},
        "start": {"type": "integer", "minimum": 0},
        "stop": {"type": ["integer", "null"], "minimum": 0},
    },
    "additionalProperties": False,
}
NODE_ID = r"^[A-Za-z_][A-Za-z0-9_-]*$"


def _input_schema(node: type[Node], name: str, defs: dict[str, Any]) -> dict[str, Any]:
    port = node.inputs[name]
    options: list[dict[str, Any]] = [{"$ref": "#/$defs/link"}]
    if port.kind.name == "list":
        options.append({"type": "array", "items": {"$ref": "#/$defs/link"}, "description": "links gathered into a list"})
    if port.kind.literal:
        options.append({"$ref": "#/$defs/param"})
        lit = node.In.model_json_schema(ref_template="#/$defs/{model}")
        for k, v in lit.pop("$defs", {}).items():
            defs.setdefault(k, v)
        options.insert(0, lit["properties"][name])
    desc = f"{port.description} ({port.kind})".strip()
    return {"anyOf": options, "description": desc}


def _node_schema(node: type[Node], defs: dict[str, Any], in_loop: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "type": {"const": node.type_name, "description": node.summary()},
        "inputs": {
            "type": "object",
            "properties": {n: _input_schema(node, n, defs) for n in node.inputs},
            "required": [n for n, p in node.inputs.items() if p.required],
            "additionalProperties": False,
        },
        "title": {"type": "string"},
    }
    if in_loop:
        props["when"] = {"$ref": "#/$defs/when"}
        props["otherwise"] = {"type": "object", "properties": {o: {"$ref": "#/$defs/link"} for o in node.outputs}}
    return {"type": "object", "properties": props, "required": ["type"], "additionalProperties": False}


def workflow_schema(registry: Registry) -> dict[str, Any]:
    defs: dict[str, Any] = {"link": LINK, "param": PARAM, "when": WHEN}
    nodes = list(registry)
    defs["node"] = {"anyOf": [_node_schema(n, defs, False) for n in nodes]}
    defs["body_node"] = {"anyOf": [_node_schema(n, defs, True) for n in nodes]}
    value = {"description": "a link, a parameter reference or a literal"}
    defs["loop"] = {
        "type": "object",
        "properties": {
            "type": {"const": "Loop", "description": "runs its body once per element of 'over'"},
            "over": {"$ref": "#/$defs/link"},
            "item": {"type": "string", "description": "the name of the current element inside the body (default 'item')"},
            "carry": {"type": "object", "additionalProperties": value},
            "body": {"type": "object", "patternProperties": {NODE_ID: {"$ref": "#/$defs/body_node"}}, "additionalProperties": False},
            "next": {"type": "object", "additionalProperties": {"$ref": "#/$defs/link"}},
            "collect": {"type": "object", "additionalProperties": {"$ref": "#/$defs/link"}},
            "title": {"type": "string"},
        },
        "required": ["type", "over", "body"],
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "graphflow workflow, format 1",
        "type": "object",
        "properties": {
            "format": {"const": 1},
            "description": {"type": "string"},
            "params": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "default": {},
                        "description": {"type": "string"},
                        "type": {"enum": ["int", "float", "string", "bool", "list", "any"]},
                    },
                    "additionalProperties": False,
                },
            },
            "nodes": {
                "type": "object",
                "patternProperties": {NODE_ID: {"anyOf": [{"$ref": "#/$defs/loop"}, {"$ref": "#/$defs/node"}]}},
                "additionalProperties": False,
            },
            "outputs": {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/link"}]}},
                    {"type": "array", "items": {"type": "string"}},
                ]
            },
            "meta": {"type": "object"},
        },
        "required": ["format", "nodes", "outputs"],
        "additionalProperties": False,
        "$defs": defs,
    }
