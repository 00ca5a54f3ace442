"""A JSON Schema of workflow format 1, so that an editor autocompletes node types, their inputs
and enum values, and flags a wrong literal as it is typed.

One source for each fact: the document's structure is ``model_json_schema()`` of the pydantic
models in ``document/format.py`` that the reader (``document/reader.py``) parses with, patterns and the parameter
types are ``document/format.py``'s constants, and each node type's literals are its own ``In`` model's field
schemas. This module only fills in what the models leave as "any":

- the registry: per node type its ``type`` const, its inputs (each a literal of the port's schema
  for literal kinds, a link, a parameter, a list of links for list ports, or ``{"literal": ...}``),
  its required inputs, and ``when``/``otherwise`` for nodes inside scope bodies;
- the reader's rules for references (``document.parse_ref``): which JSON values are links,
  parameters and escapes, and that a malformed one is an error, never a literal;
- the reader's rules for scopes (``_Reader.check_scope_names``) that a schema can state: bodies
  hold nodes and Loop/Map scopes at any depth, a Map has no carry/next, and the loop variables'
  names are reserved;
- names a link or a parameter reference can point at (parameters, carried and collected values)
  follow ``NAME_PATTERN``, as the link's port does.

What a JSON Schema cannot state (the checker reports it): links to nodes that do not exist or do
not fit (kinds), cycles, duplicate node ids across bodies, and the Loop rules that compare two
fields (every carried value has a ``next`` value and vice versa, a collected output does not
reuse a carried name, no carried value is named like a renamed ``item``).
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from graphflow.document.tree import Lit, ScopeDef
from graphflow.document.format import (
    FORMAT_VERSION,
    NAME_PATTERN,
    NODE_ID_PATTERN,
    SCOPE_TYPES,
    DocModel,
    NodeModel,
    ParamModel,
    ParamType,
    ScopeModel,
    WhenModel,
)
from graphflow.node.declaration import Node, Port
from graphflow.node.registry import Registry

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _core(pattern: str) -> str:
    """A format.py pattern without its anchors, to build longer patterns from."""
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return f"(?:{pattern[1:-1]})"


#: ``node.port``: a node id, a dot, a name (an output, a scope's variable or value)
LINK_PATTERN = f"^{_core(NODE_ID_PATTERN)}\\.{_core(NAME_PATTERN)}$"
#: an entry of a list of outputs: a node id (all its outputs) or ``node.port``
OUTPUT_ENTRY_PATTERN = f"^{_core(NODE_ID_PATTERN)}(?:\\.{_core(NAME_PATTERN)})?$"
#: the name ``item`` has unless the scope renames it
DEFAULT_ITEM: str = ScopeModel.model_fields["item"].default
#: the scope variables whose names are fixed ("index", "count"), read from the reader's own list
FIXED_VARIABLES: tuple[str, ...] = tuple(
    v for v in ScopeDef("_", SCOPE_TYPES[0], Lit(None), {}, {}, {}, {}, item="\0").variables if v != "\0"
)
#: scope types without carried values (check_scope_names: "a Map's items are independent")
NO_CARRY_SCOPES = ("Map",)
assert set(NO_CARRY_SCOPES) <= set(SCOPE_TYPES)

#: pydantic's names for the nested models -> this schema's $defs names
_DEF_NAMES = {"WhenModel": "when", "ParamModel": "param_spec"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _renamed(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _renamed(v) for k, v in value.items()}
        r = out.get("$ref")
        if isinstance(r, str) and r.startswith("#/$defs/"):
            name = r.removeprefix("#/$defs/")
            out["$ref"] = f"#/$defs/{_DEF_NAMES.get(name, name)}"
        return out
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return value


def _model(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """``model_json_schema()`` with the nested models hoisted into ``defs`` under our names."""
    s = model.model_json_schema(ref_template="#/$defs/{model}")
    for name, sub in s.pop("$defs", {}).items():
        defs.setdefault(_DEF_NAMES.get(name, name), _renamed(sub))
    return _renamed(s)


def _props(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    """The model's properties, failing loudly if format.py renamed one this module fills in."""
    props = dict(schema["properties"])
    missing = [n for n in names if n not in props]
    assert not missing, f"format.py no longer has {missing}: update graphflow/node/schema.py"
    return props


# --- references: what document.parse_ref reads as a link, a parameter or an escape ------------

def _reference_defs() -> dict[str, Any]:
    link = {
        "type": "object",
        "properties": {"from": {"type": "string", "pattern": LINK_PATTERN}},
        "required": ["from"],
        "additionalProperties": False,
        "description": 'a link to another node\'s output: {"from": "node.port"}',
    }
    param = {
        "type": "object",
        "properties": {"param": {"type": "string", "pattern": NAME_PATTERN}},
        "required": ["param"],
        "additionalProperties": False,
        "description": 'a workflow parameter: {"param": "name"}',
    }
    link_list = {"type": "array", "items": ref("link"), "minItems": 1, "description": "links gathered into one list"}
    # The values the reader takes as references, never as literals: an object whose one key is
    # "from", "param" or "literal", and a non-empty list of objects whose one key is "from". A
    # malformed one ({"from": 3}) is an error, so the literal branches exclude these shapes.
    reference_shaped = {
        "anyOf": [
            {"type": "object", "minProperties": 1, "maxProperties": 1, "propertyNames": {"enum": ["from", "param", "literal"]}},
            {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["from"], "maxProperties": 1}},
        ]
    }
    return {
        "link": link,
        "param": param,
        "link_list": link_list,
        "reference_shaped": reference_shaped,
        "literal": _escape({}),
        "value": {
            "anyOf": [ref("link"), ref("link_list"), ref("param"), ref("literal"), _plain_literal({})],
            "description": "a link, a list of links, a parameter or a literal",
        },
    }


def _escape(literal: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"literal": literal},
        "required": ["literal"],
        "additionalProperties": False,
        "description": 'a value written inline that would otherwise read as a reference: {"literal": ...}',
    }


def _plain_literal(literal: dict[str, Any]) -> dict[str, Any]:
    """A literal written as itself: the port's schema, but never a reference's shape."""
    t = literal.get("type")
    scalar = isinstance(t, str) and t not in ("object", "array") or isinstance(t, list) and not {"object", "array"} & set(t)
    if scalar or "enum" in literal or "const" in literal:
        return literal
    guard = {"not": ref("reference_shaped")}
    return {**literal, **guard} if "not" not in literal else {"allOf": [literal, guard]}


# --- node types: the registry fills in NodeModel's "any" -------------------------------------

def _literal_schemas(node: type[Node], defs: dict[str, Any]) -> dict[str, Any]:
    """Each input field's schema from the node's ``In`` model (its $defs hoisted, prefixed)."""
    try:
        s = node.In.model_json_schema(ref_template=f"#/$defs/{node.type_name}.{{model}}")
    except Exception:  # a field pydantic cannot describe: any literal, the checker still validates it
        return {}
    for name, sub in s.pop("$defs", {}).items():
        defs.setdefault(f"{node.type_name}.{name}", sub)
    return s.get("properties", {})


def _input_schema(port: Port, literal: dict[str, Any]) -> dict[str, Any]:
    options: list[dict[str, Any]] = []
    if port.kind.literal:
        options.append(_plain_literal(literal))
    options.append(ref("link"))
    if port.kind.literal:
        options += [ref("param"), _escape(literal)]
    if port.kind.name in ("list", "any"):  # what check.link_fits lets a list of links feed
        options.append(ref("link_list"))
    return {"anyOf": options, "description": f"{port.description} ({port.kind})".strip()}


def _node_schemas(node: type[Node], base: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node type's schema at the top level and inside a scope body."""
    literals = _literal_schemas(node, defs)
    props = _props(base, "type", "inputs", "when", "otherwise")
    required = [n for n, p in node.inputs.items() if p.required]
    props["type"] = {**props["type"], "const": node.type_name, "description": node.summary()}
    props["inputs"] = {
        **props["inputs"],
        "properties": {n: _input_schema(p, literals.get(n, {})) for n, p in node.inputs.items()},
        "required": required,
        "additionalProperties": False,
    }
    top = {**base, "properties": dict(props), "required": [*base.get("required", []), *(["inputs"] if required else [])]}
    top["title"] = node.type_name
    # 'when' and 'otherwise' only inside a scope body (when_outside_loop). The reader lets an
    # empty pair ("when": null, "otherwise": {}) pass outside; the schema does not offer them.
    del top["properties"]["when"], top["properties"]["otherwise"]
    body = {**top, "properties": dict(props)}
    body["properties"]["otherwise"] = {
        **props["otherwise"],
        "properties": {o: ref("value") for o in node.outputs},
        "additionalProperties": False,
    }
    return top, body


# --- scopes: ScopeModel, its body recursive ---------------------------------------------------

def _scope_schemas(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    props = _props(base, "type", "over", "item", "carry", "body", "next", "collect")
    enum = props["type"].get("enum")
    assert enum is not None and set(enum) == set(SCOPE_TYPES), f"ScopeModel.type is {enum}, SCOPE_TYPES {SCOPE_TYPES}"
    names = {"type": "string", "pattern": NAME_PATTERN, "not": {"enum": list(FIXED_VARIABLES)}}
    props["item"] = {**props["item"], "not": {"enum": list(FIXED_VARIABLES)}}
    props["over"] = {**props["over"], **ref("value")}
    for section in ("carry", "next", "collect"):
        props[section] = {**props[section], "additionalProperties": ref("value"), "propertyNames": names}
    props["body"] = {
        **props["body"],
        "patternProperties": {NODE_ID_PATTERN: ref("body_member")},
        "additionalProperties": False,
    }
    # with 'item' left out, the default name is taken too
    default_item_taken = {"propertyNames": {"not": {"const": DEFAULT_ITEM}}}
    out = {}
    for t in SCOPE_TYPES:
        p = {**props, "type": {k: v for k, v in props["type"].items() if k != "enum"} | {"const": t}}
        if t in NO_CARRY_SCOPES:
            for section in ("carry", "next"):
                p[section] = {**p[section], "maxProperties": 0, "description": f"a {t}'s items are independent: no '{section}'"}
        out[t] = {
            **base,
            "title": t,
            "properties": p,
            "if": {"not": {"required": ["item"]}},
            "then": {"properties": {s: default_item_taken for s in ("carry", "next", "collect")}},
        }
    return out


def _dispatch(by_type: dict[str, str], description: str) -> dict[str, Any]:
    """One schema per value of 'type' (if/then rather than anyOf, so that an editor reports the
    mistake inside the node instead of "not valid under any of the given schemas")."""
    return {
        "type": "object",
        "description": description,
        "properties": {"type": {"enum": list(by_type)}},
        "required": ["type"],
        "allOf": [
            {"if": {"properties": {"type": {"const": t}}, "required": ["type"]}, "then": {"$ref": r}} for t, r in by_type.items()
        ],
    }


# --- the document ------------------------------------------------------------------------------

def workflow_schema(registry: Registry) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    doc = _model(DocModel, defs)
    node_base = _model(NodeModel, defs)
    defs.setdefault("when", _model(WhenModel, defs))
    param_spec = _model(ParamModel, defs)
    type_enum = [o.get("enum") for o in param_spec["properties"]["type"].get("anyOf", [])]
    assert list(get_args(ParamType)) in type_enum, "ParamModel.type no longer reads format.ParamType"
    defs["param_spec"] = param_spec
    defs.update(_reference_defs())

    tops, bodies = [], []
    for n in registry:
        top, body = _node_schemas(n, node_base, defs)
        tops.append(top)
        bodies.append(body)
    defs["node"] = {"anyOf": tops, "description": "a node of any type (outside scopes)"}
    defs["body_node"] = {"anyOf": bodies, "description": "a node of any type inside a Loop or Map body"}
    for t, s in _scope_schemas(_model(ScopeModel, defs)).items():
        defs[t.lower()] = s
    # members dispatch on 'type' to a scope or to one node type's entry of the lists above
    scopes = {t: f"#/$defs/{t.lower()}" for t in SCOPE_TYPES}
    types = [n.type_name for n in registry]
    top_types = {t: f"#/$defs/node/anyOf/{i}" for i, t in enumerate(types)}
    body_types = {t: f"#/$defs/body_node/anyOf/{i}" for i, t in enumerate(types)}
    defs["member"] = _dispatch(scopes | top_types, "a node, or a Loop or Map scope")
    defs["body_member"] = _dispatch(scopes | body_types, "a node, or a Loop or Map scope, inside a body")

    props = _props(doc, "format", "params", "nodes", "outputs")
    props["format"] = {**props["format"], "const": FORMAT_VERSION}
    props["params"] = {**props["params"], "additionalProperties": ref("param_spec"), "propertyNames": {"pattern": NAME_PATTERN}}
    props["nodes"] = {**props["nodes"], "patternProperties": {NODE_ID_PATTERN: ref("member")}, "additionalProperties": False}
    outputs = []
    for o in props["outputs"]["anyOf"]:
        if o.get("type") == "object":
            link = {"anyOf": [{"type": "string", "pattern": LINK_PATTERN}, ref("link")]}
            o = {**o, "additionalProperties": link, "minProperties": 1}
        elif o.get("type") == "array":
            o = {**o, "items": {**o.get("items", {}), "pattern": OUTPUT_ENTRY_PATTERN}, "minItems": 1}
        outputs.append(o)
    props["outputs"] = {
        **props["outputs"],
        "anyOf": outputs,
        "description": '{"name": "node.port"} or a list of node ids and "node.port"s: what the run returns',
    }
    return {
        "$schema": DRAFT,
        **doc,
        "title": f"graphflow workflow, format {FORMAT_VERSION}",
        "properties": props,
        "$defs": defs,
    }
