"""`graphflow schema` is a real JSON Schema generated from the format's pydantic models: every
shipped workflow conforms to it, the mistakes an editor should flag as you type (unknown node
type, value outside an enum or range, unknown input) do not, and on a corpus of malformed and
edge-case documents it agrees with the reader (``document.py``) about the document's shape.

What the schema cannot express, so only ``graphflow validate`` reports it:
- links to nodes, ports or parameters that do not exist (unknown_node, unknown_output,
  unknown_param), links that cross into a scope's body (loop_scope);
- kinds: a latents output wired into a text input, a list of links into a scalar port
  (type_mismatch), an inline carried value that does not suit its readers;
- cycles, conditional outputs read without 'otherwise', duplicate node ids across bodies;
- the Loop rules that compare two fields (bad_loop): every carried value has a 'next' value and
  every 'next' names a carried one, a collected output does not reuse a carried name, and no
  carried value is named like a renamed 'item' (the default name "item" is covered).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import get_args

import jsonschema
import pytest

import graphflow
from graphflow import registry
from graphflow.document.format import DocModel, NodeModel, ParamModel, ParamType, ScopeModel, WhenModel
from graphflow.node.schema import workflow_schema
from graphflow.problems import ValidationFailed

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def schema():
    return workflow_schema(registry())


@pytest.fixture(scope="module")
def validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflows_conform(validator, path):
    assert list(validator.iter_errors(json.loads(path.read_text()))) == []


@pytest.mark.parametrize("edit", [
    lambda d: d["nodes"]["schedule"].update(type="Nope"),
    lambda d: d["nodes"]["schedule"]["inputs"].update(name="not-a-scheduler"),
    lambda d: d["nodes"]["schedule"]["inputs"].update(steps=0),
    lambda d: d["nodes"]["schedule"]["inputs"].update(colour="red"),
    lambda d: d["nodes"]["denoise"]["body"]["cfg"].update(when={"every": 0}),
    lambda d: d.update(format=2),
])
def test_editor_mistakes_are_flagged(validator, edit):
    doc = json.loads(WORKFLOWS[[p.stem for p in WORKFLOWS].index("txt2img")].read_text())
    edit(doc)
    assert list(validator.iter_errors(doc))


def test_generated_quickly():
    reg = registry()
    workflow_schema(reg)
    best = min(_timed(lambda: workflow_schema(reg)) for _ in range(3))
    assert best < 0.2, f"workflow_schema took {best:.3f} s"


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


@pytest.mark.parametrize(("where", "model"), [
    (lambda s: s, DocModel),
    (lambda s: s["$defs"]["param_spec"], ParamModel),
    (lambda s: s["$defs"]["when"], WhenModel),
    (lambda s: s["$defs"]["loop"], ScopeModel),
    (lambda s: s["$defs"]["map"], ScopeModel),
    (lambda s: s["$defs"]["body_node"]["anyOf"][0], NodeModel),
])
def test_structure_comes_from_the_format_models(schema, where, model):
    """A field added to a model in format.py appears in the schema without touching schema.py."""
    part = where(schema)
    assert set(part["properties"]) == set(model.model_fields)
    assert part["additionalProperties"] is False


def test_top_level_nodes_have_no_when(schema):
    for n in schema["$defs"]["node"]["anyOf"]:
        assert set(n["properties"]) == set(NodeModel.model_fields) - {"when", "otherwise"}


def test_param_types_are_format_param_type(schema):
    enums = [o.get("enum") for o in schema["$defs"]["param_spec"]["properties"]["type"]["anyOf"]]
    assert list(get_args(ParamType)) in enums


# --- the corpus: the reader and the schema agree on the document's shape -----------------------

#: problem codes about the document's shape: the schema must refuse every such document
SHAPE = {"invalid_document", "bad_link", "bad_loop", "unsupported_format", "no_outputs", "bad_node_id", "when_outside_loop"}

#: Built-in nodes only: a Loop holding a Map holding a Loop, a parameter, both output forms.
BASE = {
    "format": 1,
    "description": "the corpus's valid document",
    "params": {"n": {"default": 3, "type": "int", "description": "size"}},
    "nodes": {
        "numbers": {"type": "Range", "inputs": {"stop": {"param": "n"}}},
        "outer": {
            "type": "Loop",
            "over": {"from": "numbers.values"},
            "item": "row",
            "carry": {"total": 0},
            "body": {
                "each": {
                    "type": "Map",
                    "over": {"from": "numbers.values"},
                    "body": {
                        "inner": {
                            "type": "Loop",
                            "over": {"from": "numbers.values"},
                            "carry": {"acc": {"from": "outer.total"}},
                            "body": {"add": {"type": "Math", "inputs": {"a": {"from": "inner.acc"}, "b": {"from": "each.item"}}}},
                            "next": {"acc": {"from": "add.result"}},
                        },
                    },
                    "collect": {"sums": {"from": "inner.acc"}},
                },
                "sum": {"type": "Math", "inputs": {"a": {"from": "outer.total"}, "b": {"from": "outer.row"}}},
            },
            "next": {"total": {"from": "sum.result"}},
            "collect": {"rows": {"from": "each.sums"}},
        },
        "msg": {"type": "Text", "inputs": {"template": "total $value", "value": {"from": "outer.total"}}},
    },
    "outputs": {"total": "outer.total", "msg": "msg.text"},
}


def outer(d):
    return d["nodes"]["outer"]


def each(d):
    return outer(d)["body"]["each"]


def inner(d):
    return each(d)["body"]["inner"]


def add(d):
    return inner(d)["body"]["add"]


def value_node(v):
    """A Value node reading ``v`` (its input takes anything) and named as the only output."""
    def edit(d):
        d["nodes"]["v"] = {"type": "Value", "inputs": {"value": v}}
        d["outputs"] = ["v"]
    return edit


def case(name, edit, codes=(), schema_rejects=None, disagree=None):
    """``codes``: what the reader and checker report (empty: the document is fine).
    ``schema_rejects``: for documents wrong only semantically, whether the schema sees it too.
    ``disagree``: a known disagreement that needs a change in the reader: the test checks that
    it still disagrees, then xfails (when the reader changes, update ``codes`` and drop it)."""
    return pytest.param(edit, set(codes), schema_rejects, disagree, id=name)


def put(target, **kv):
    return lambda d: target(d).update(kv)


def drop(target, key):
    return lambda d: target(d).pop(key) and None


CORPUS = [
    # the document as a whole
    case("base", lambda d: None),
    case("format-2", lambda d: d.update(format=2), {"unsupported_format"}),
    case("format-0", lambda d: d.update(format=0), {"unsupported_format"}),
    case("format-1.0", lambda d: d.update(format=1.0), {"invalid_document"},
         disagree="JSON Schema's integer includes 1.0; the reader wants a JSON integer"),
    case("format-missing", drop(lambda d: d, "format"), {"invalid_document"}),
    case("format-null", lambda d: d.update(format=None), {"invalid_document"}),
    case("format-string", lambda d: d.update(format="1"), {"invalid_document"}),
    case("format-true", lambda d: d.update(format=True), {"invalid_document"}),
    case("not-an-object", lambda d: [d], {"invalid_document"}),
    case("unknown-top-level-key", lambda d: d.update(version=1), {"invalid_document"}),
    case("description-not-text", lambda d: d.update(description=3), {"invalid_document"}),
    case("meta-anything", lambda d: d.update(meta={"editor": {"x": [1, {"from": 3}]}})),
    case("nodes-missing", drop(lambda d: d, "nodes"), {"invalid_document"}),
    case("nodes-a-list", lambda d: d.update(nodes=[]), {"invalid_document"}),
    case("node-not-an-object", lambda d: d["nodes"].update(msg="Text"), {"invalid_document"}),
    case("node-type-a-number", lambda d: d["nodes"]["msg"].update(type=3), {"invalid_document"}),
    case("node-inputs-null", lambda d: d["nodes"]["msg"].update(inputs=None), {"invalid_document"}),
    case("node-id-with-hyphen", lambda d: d["nodes"].update({"a-b": {"type": "Value", "inputs": {"value": 1}}})
         or d["nodes"]["msg"]["inputs"].update(value={"from": "a-b.value"})),
    # params
    case("param-unknown-type", lambda d: d["params"]["n"].update(type="integer"), {"invalid_document"}),
    case("param-every-type", lambda d: d["params"].update({t: {"type": t} for t in get_args(ParamType)})),
    case("param-type-null", lambda d: d["params"]["n"].update(type=None)),
    case("param-unknown-key", lambda d: d["params"]["n"].update(help="size"), {"invalid_document"}),
    case("param-not-an-object", lambda d: d["params"].update(n=3), {"invalid_document"}),
    case("param-ref-not-text", lambda d: d["nodes"]["numbers"]["inputs"].update(stop={"param": 3}), {"bad_link"}),
    case("param-undeclared", lambda d: d["nodes"]["numbers"]["inputs"].update(stop={"param": "m"}), {"unknown_param"},
         schema_rejects=False),
    case("param-name-with-hyphen", lambda d: d["params"].update({"my-n": d["params"].pop("n")})
         or d["nodes"]["numbers"]["inputs"].update(stop={"param": "my-n"}), {"invalid_document"}),
    # nodes
    case("node-unknown-key", lambda d: d["nodes"]["msg"].update(input={}), {"invalid_document"}),
    case("node-type-missing", drop(lambda d: d["nodes"]["msg"], "type"), {"invalid_document"}),
    case("node-title-null", lambda d: d["nodes"]["msg"].update(title=None)),
    case("node-title-number", lambda d: d["nodes"]["msg"].update(title=3), {"invalid_document"}),
    case("node-id-digit", lambda d: d["nodes"].update({"1v": {"type": "Value", "inputs": {"value": 1}}}), {"bad_node_id"}),
    case("body-node-id-space", lambda d: outer(d)["body"].update({"s um": outer(d)["body"]["sum"]}), {"bad_node_id"}),
    case("node-unknown-type", lambda d: d["nodes"]["msg"].update(type="Nope"), {"unknown_node_type"}, schema_rejects=True),
    case("node-unknown-input", lambda d: d["nodes"]["msg"]["inputs"].update(colour=1), {"unknown_input"}, schema_rejects=True),
    case("node-missing-input", drop(lambda d: d["nodes"]["msg"]["inputs"], "template"), {"missing_input"}, schema_rejects=True),
    case("bad-literal-enum", lambda d: add(d)["inputs"].update(op="mod"), {"bad_literal"}, schema_rejects=True),
    case("bad-literal-range", lambda d: d["nodes"]["numbers"]["inputs"].update(step=0), {"bad_literal"}, schema_rejects=True),
    case("literal-coerced-from-text", lambda d: d["nodes"]["numbers"]["inputs"].update(stop="3"), {"bad_literal"}, schema_rejects=True),
    case("literal-into-tensor-port", lambda d: d["nodes"].update(
        dec={"type": "Decode", "inputs": {"vae": {"from": "numbers.values"}, "latents": 3}}),
         {"literal_not_allowed", "type_mismatch"}, schema_rejects=True),
    # references
    case("link-without-port", lambda d: d["nodes"]["msg"]["inputs"].update(value={"from": "outer"}), {"bad_link"}),
    case("link-two-dots", lambda d: d["nodes"]["msg"]["inputs"].update(value={"from": "outer.total.x"}), {"bad_link"}),
    case("link-empty-port", lambda d: d["nodes"]["msg"]["inputs"].update(value={"from": "outer."}), {"bad_link"}),
    case("link-not-text-into-any", value_node({"from": 3}), {"bad_link"}),
    case("link-to-unknown-node", lambda d: d["nodes"]["msg"]["inputs"].update(value={"from": "ghost.x"}), {"unknown_node"},
         schema_rejects=False),
    case("link-type-mismatch", lambda d: d["nodes"]["msg"]["inputs"].update(template={"from": "numbers.values"}),
         {"type_mismatch"}, schema_rejects=False),
    case("cycle", lambda d: d["nodes"].update(
        p={"type": "Math", "inputs": {"a": {"from": "q.result"}}}, q={"type": "Math", "inputs": {"a": {"from": "p.result"}}}),
         {"cycle"}, schema_rejects=False),
    case("duplicate-id-across-bodies", lambda d: inner(d)["body"].update(sum={"type": "Math", "inputs": {"a": 1}}),
         {"duplicate_node_id"}, schema_rejects=False),
    case("literal-escape-of-a-link", value_node({"literal": {"from": "numbers.values"}})),
    case("literal-escape-of-links", value_node({"literal": [{"from": "numbers.values"}]})),
    case("literal-escape-of-an-escape", value_node({"literal": {"literal": 1}})),
    case("literal-object-with-two-keys", value_node({"from": "numbers.values", "note": 1})),
    case("literal-object-of-other-key", value_node({"to": "numbers.values"})),
    case("literal-empty-list", value_node([])),
    case("literal-mixed-list", value_node([{"from": "numbers.values"}, 1])),
    case("literal-escape-with-two-keys", value_node({"literal": 1, "note": 2})),
    case("literal-two-reference-keys", lambda d: d["nodes"]["msg"]["inputs"].update(template={"from": "a.b", "param": "n"}),
         {"bad_literal"}, schema_rejects=True),
    case("param-ref-empty-name", lambda d: d["nodes"]["numbers"]["inputs"].update(stop={"param": ""}), {"unknown_param"},
         schema_rejects=True),
    case("literal-escape-checked-by-port", lambda d: add(d)["inputs"].update(op={"literal": "mod"}), {"bad_literal"},
         schema_rejects=True),
    case("list-of-links", value_node([{"from": "numbers.values"}, {"from": "msg.text"}])),
    case("list-of-links-into-a-dict-port", lambda d: d["nodes"]["msg"]["inputs"].update(values=[{"from": "numbers.values"}])),
    case("list-of-links-one-bad", value_node([{"from": "numbers.values"}, {"from": "msg"}]), {"bad_link"}),
    case("list-of-links-into-a-scalar", lambda d: add(d)["inputs"].update(b=[{"from": "each.item"}]), {"type_mismatch"},
         schema_rejects=True),
    # outputs
    case("outputs-list", lambda d: d.update(outputs=["msg", "outer.total"])),
    case("outputs-link-object", lambda d: d.update(outputs={"total": {"from": "outer.total"}})),
    case("outputs-list-of-node-ids", lambda d: d.update(outputs=["numbers", "outer"])),
    case("outputs-list-of-link-objects", lambda d: d.update(outputs=[{"from": "msg.text"}]), {"invalid_document"}),
    case("outputs-dict-of-lists", lambda d: d.update(outputs={"a": ["msg.text"], "t": "msg.text"}), {"bad_link"}),
    case("outputs-empty-dict", lambda d: d.update(outputs={}), {"no_outputs"}),
    case("outputs-empty-list", lambda d: d.update(outputs=[]), {"no_outputs"}),
    case("outputs-missing", drop(lambda d: d, "outputs"), {"invalid_document"}),
    case("outputs-a-string", lambda d: d.update(outputs="msg.text"), {"invalid_document"}),
    case("outputs-list-of-numbers", lambda d: d.update(outputs=[1]), {"invalid_document"}),
    case("outputs-dict-without-port", lambda d: d.update(outputs={"m": "msg", "t": "msg.text"}), {"bad_link"}),
    case("outputs-dict-param", lambda d: d.update(outputs={"m": {"param": "n"}, "t": "msg.text"}), {"bad_link"}),
    case("outputs-list-two-dots", lambda d: d.update(outputs=["msg.text.x", "msg"]), {"bad_link"}),
    case("outputs-inside-a-body", lambda d: d.update(outputs=["sum"]), {"unknown_node"}, schema_rejects=False),
    # scopes
    case("loop-unknown-key", lambda d: outer(d).update(carries={}), {"invalid_document"}),
    case("map-unknown-key", lambda d: each(d).update(items="x"), {"invalid_document"}),
    case("inner-loop-unknown-key", lambda d: inner(d).update(nxt={}), {"invalid_document"}),
    case("innermost-node-unknown-key", lambda d: add(d).update(inptus={}), {"invalid_document"}),
    case("scope-over-missing", drop(outer, "over"), {"invalid_document"}),
    case("scope-body-missing", drop(each, "body"), {"invalid_document"}),
    case("scope-body-not-an-object", put(inner, body=[]), {"invalid_document"}),
    case("scope-over-literal-list", put(outer, over=[1, 2, 3])),
    case("scope-over-bad-link", put(each, over={"from": "numbers"}), {"bad_link"}),
    case("scope-title-null", put(each, title=None)),
    case("scope-title-number", put(each, title=3), {"invalid_document"}),
    case("scope-type-lower-case", put(each, type="map"), {"invalid_document"}),
    case("scope-over-param", put(outer, over={"param": "n"}), {"type_mismatch"}, schema_rejects=False),
    case("scope-over-literal-object", put(outer, over={"a": 1})),  # 'any' to the checker
    case("carry-literal-escape", lambda d: outer(d)["carry"].update(total={"literal": 0})),
    case("carry-list-of-links", lambda d: outer(d)["next"].update(total=[{"from": "sum.result"}]), {"type_mismatch"},
         schema_rejects=False),
    case("collect-param-and-literal", lambda d: outer(d)["collect"].update(k={"param": "n"}, j=5)),
    case("map-with-carry", put(each, carry={"x": 0}), {"bad_loop"}),
    case("map-with-next", put(each, next={"x": 1}), {"bad_loop"}),
    case("map-with-empty-carry", lambda d: each(d).update(carry={}, next={})),
    case("scope-with-when", put(inner, when={"every": 2}), {"invalid_document"}),  # a scope has no 'when'
    case("item-renamed", lambda d: each(d).update(item="n") or add(d)["inputs"].update(b={"from": "each.n"})),
    case("item-index", put(outer, item="index"), {"bad_loop"}),
    case("item-count", put(inner, item="count"), {"bad_loop"}),
    case("item-hyphen", put(each, item="my-item"), {"invalid_document"}),
    case("item-number", put(each, item=3), {"invalid_document"}),
    case("item-empty", put(each, item=""), {"invalid_document"}),
    case("carry-named-index", lambda d: outer(d).update(carry={"index": 0}, next={"index": 1}), {"bad_loop"}),
    case("carry-named-default-item", lambda d: inner(d).update(carry={"item": 0}, next={"item": 1}), {"bad_loop"}),
    case("collect-named-count", put(outer, collect={"count": {"from": "sum.result"}}), {"bad_loop"}),
    case("carry-named-with-hyphen", lambda d: inner(d).update(carry={"my-acc": 0}, next={"my-acc": {"from": "add.result"}})
         or add(d)["inputs"].update(a={"from": "inner.my-acc"})
         or each(d).update(collect={"sums": {"from": "inner.my-acc"}}), {"bad_loop"}),
    # when / otherwise
    case("when-every-0", put(add, when={"every": 0}), {"invalid_document"}),
    case("when-start-negative", put(add, when={"start": -1}), {"invalid_document"}),
    case("when-stop-null", lambda d: add(d).update(when={"every": 2, "stop": None}, otherwise={"result": 0})),
    case("when-empty", lambda d: add(d).update(when={}, otherwise={"result": 0})),
    case("when-every-1.0", lambda d: add(d).update(when={"every": 1.0}, otherwise={"result": 0}), {"invalid_document"},
         disagree="JSON Schema's integer includes 1.0; the reader wants a JSON integer"),
    case("otherwise-param", lambda d: add(d).update(when={"every": 2}, otherwise={"result": {"param": "n"}})),
    case("when-unknown-key", put(add, when={"each": 2}), {"invalid_document"}),
    case("when-every-text", lambda d: add(d).update(when={"every": "2"}, otherwise={"result": 0}), {"invalid_document"}),
    case("when-in-map-body", lambda d: each(d)["body"].update(
        half={"type": "Math", "inputs": {"a": {"from": "each.item"}}, "when": {"every": 2}})),
    case("when-at-top-level", put(lambda d: d["nodes"]["msg"], when={"every": 2}), {"when_outside_loop"}),
    case("otherwise-at-top-level", put(lambda d: d["nodes"]["msg"], otherwise={"text": "x"}), {"when_outside_loop"}),
    case("empty-when-at-top-level", lambda d: d["nodes"]["msg"].update(when=None, otherwise={}), {"when_outside_loop"}),
    case("otherwise-unknown-output", lambda d: add(d).update(when={"every": 2}, otherwise={"sum": 0}),
         {"unknown_output", "conditional_output"}, schema_rejects=True),
    case("otherwise-bad-link", lambda d: add(d).update(when={"every": 2}, otherwise={"result": {"from": "x"}}), {"bad_link"}),
]

#: where the schema refuses each document it refuses: the path (in the document) of one of its
#: errors, so that a document refused for an unintended reason fails the test
AT = {
    "format-2": "format",
    "format-0": "format",
    "format-missing": "",
    "format-null": "format",
    "format-string": "format",
    "format-true": "format",
    "not-an-object": "",
    "unknown-top-level-key": "",
    "description-not-text": "description",
    "nodes-missing": "",
    "nodes-a-list": "nodes",
    "node-not-an-object": "nodes/msg",
    "node-type-a-number": "nodes/msg/type",
    "node-inputs-null": "nodes/msg/inputs",
    "param-unknown-type": "params/n/type",
    "param-unknown-key": "params/n",
    "param-not-an-object": "params/n",
    "param-ref-not-text": "nodes/numbers/inputs/stop/param",
    "param-name-with-hyphen": "params",
    "node-unknown-key": "nodes/msg",
    "node-type-missing": "nodes/msg",
    "node-title-number": "nodes/msg/title",
    "node-id-digit": "nodes",
    "body-node-id-space": "nodes/outer/body",
    "node-unknown-type": "nodes/msg/type",
    "node-unknown-input": "nodes/msg/inputs",
    "node-missing-input": "nodes/msg/inputs",
    "bad-literal-enum": "nodes/outer/body/each/body/inner/body/add/inputs/op",
    "bad-literal-range": "nodes/numbers/inputs/step",
    "literal-coerced-from-text": "nodes/numbers/inputs/stop",
    "literal-into-tensor-port": "nodes/dec/inputs/latents",
    "link-without-port": "nodes/msg/inputs/value/from",
    "link-two-dots": "nodes/msg/inputs/value/from",
    "link-empty-port": "nodes/msg/inputs/value/from",
    "link-not-text-into-any": "nodes/v/inputs/value/from",
    "literal-two-reference-keys": "nodes/msg/inputs/template",
    "param-ref-empty-name": "nodes/numbers/inputs/stop/param",
    "literal-escape-checked-by-port": "nodes/outer/body/each/body/inner/body/add/inputs/op/literal",
    "list-of-links-one-bad": "nodes/v/inputs/value/1/from",
    "list-of-links-into-a-scalar": "nodes/outer/body/each/body/inner/body/add/inputs/b",
    "outputs-list-of-link-objects": "outputs/0",
    "outputs-dict-of-lists": "outputs/a",
    "outputs-empty-dict": "outputs",
    "outputs-empty-list": "outputs",
    "outputs-missing": "",
    "outputs-a-string": "outputs",
    "outputs-list-of-numbers": "outputs/0",
    "outputs-dict-without-port": "outputs/m",
    "outputs-dict-param": "outputs/m",
    "outputs-list-two-dots": "outputs/0",
    "loop-unknown-key": "nodes/outer",
    "map-unknown-key": "nodes/outer/body/each",
    "inner-loop-unknown-key": "nodes/outer/body/each/body/inner",
    "innermost-node-unknown-key": "nodes/outer/body/each/body/inner/body/add",
    "scope-over-missing": "nodes/outer",
    "scope-body-missing": "nodes/outer/body/each",
    "scope-body-not-an-object": "nodes/outer/body/each/body/inner/body",
    "scope-over-bad-link": "nodes/outer/body/each/over/from",
    "scope-title-number": "nodes/outer/body/each/title",
    "scope-type-lower-case": "nodes/outer/body/each/type",
    "map-with-carry": "nodes/outer/body/each/carry",
    "map-with-next": "nodes/outer/body/each/next",
    "scope-with-when": "nodes/outer/body/each/body/inner",
    "item-index": "nodes/outer/item",
    "item-count": "nodes/outer/body/each/body/inner/item",
    "item-hyphen": "nodes/outer/body/each/item",
    "item-number": "nodes/outer/body/each/item",
    "item-empty": "nodes/outer/body/each/item",
    "carry-named-index": "nodes/outer/next",
    "carry-named-default-item": "nodes/outer/body/each/body/inner/next",
    "collect-named-count": "nodes/outer/collect",
    "carry-named-with-hyphen": "nodes/outer/body/each/collect/sums/from",
    "when-every-0": "nodes/outer/body/each/body/inner/body/add/when/every",
    "when-start-negative": "nodes/outer/body/each/body/inner/body/add/when/start",
    "when-unknown-key": "nodes/outer/body/each/body/inner/body/add/when",
    "when-every-text": "nodes/outer/body/each/body/inner/body/add/when/every",
    "when-at-top-level": "nodes/msg",
    "otherwise-at-top-level": "nodes/msg",
    "empty-when-at-top-level": "nodes/msg",
    "otherwise-unknown-output": "nodes/outer/body/each/body/inner/body/add/otherwise",
    "otherwise-bad-link": "nodes/outer/body/each/body/inner/body/add/otherwise/result/from",
}


def reader_codes(doc) -> set[str]:
    try:
        graphflow.Workflow.from_dict(doc, registry()).checked()
    except ValidationFailed as e:
        return {p.code for p in e.problems}
    return set()


@pytest.mark.parametrize(("edit", "codes", "schema_rejects", "disagree"), CORPUS)
def test_reader_and_schema_agree(request, validator, edit, codes, schema_rejects, disagree):
    doc = copy.deepcopy(BASE)
    doc = edit(doc) or doc  # an edit may return a whole new document
    assert reader_codes(doc) == codes
    if codes & SHAPE:
        expected = True  # the reader refuses this document's shape
    elif codes:
        assert schema_rejects is not None, "say whether the schema can see this semantic problem"
        expected = schema_rejects
    else:
        expected = False  # the reader accepts this document
    errors = list(validator.iter_errors(doc))
    rejected = bool(errors)
    if rejected:
        assert AT.get(request.node.callspec.id) in _paths(errors)
    if disagree:
        assert rejected != expected, f"the reader and the schema agree now: drop disagree= ({disagree})"
        pytest.xfail(disagree)
    assert rejected == expected


def _paths(errors) -> set[str]:
    out = set()
    for e in errors:
        out.add("/".join(map(str, e.absolute_path)))
        out |= _paths(e.context or [])
    return out


def test_corpus_is_large():
    assert set(AT) <= {p.id for p in CORPUS}
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("edit", [
    pytest.param(lambda d: outer(d).pop("next"), id="carry-without-next"),
    pytest.param(lambda d: outer(d)["next"].update(other=1), id="next-not-carried"),
    pytest.param(lambda d: outer(d)["collect"].update(total={"from": "sum.result"}), id="collect-named-like-carry"),
    pytest.param(lambda d: outer(d).update(carry={"row": 0}, next={"row": 1}), id="carry-named-like-renamed-item"),
])
def test_cross_field_loop_rules_only_the_reader_sees(validator, edit):
    """bad_loop rules that compare two fields: JSON Schema cannot state them (see the top)."""
    doc = copy.deepcopy(BASE)
    edit(doc)
    assert "bad_loop" in reader_codes(doc)
    assert list(validator.iter_errors(doc)) == []
