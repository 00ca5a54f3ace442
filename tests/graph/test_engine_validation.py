"""One test per validation error kind: each asserts the problem's code and that it names the node
and the field it is about. Nothing runs in these tests."""

from __future__ import annotations

import copy

import pytest

from graphflow import Problem, ValidationFailed, Workflow
from graphflow.document.jsontext import parse_json
from tests import toy_nodes
from tests.toy_nodes import RUNS, link, toy_registry


@pytest.fixture(autouse=True)
def _reset():
    toy_nodes.reset()
    yield
    assert sum(RUNS.values()) == 0, "validation must not run any node"


def doc(nodes: dict, outputs=None, params: dict | None = None, **extra) -> dict:
    d = {"format": 1, "nodes": nodes, "outputs": outputs if outputs is not None else {"x": f"{next(iter(nodes))}.value"}}
    if params is not None:
        d["params"] = params
    d.update(extra)
    return d


def problems(d: dict, **params) -> list[Problem]:
    """Every problem, whether the document's shape or the checker found it."""
    try:
        wf = Workflow.from_dict(d, toy_registry())
        wf.with_params(**params).check()
    except ValidationFailed as e:
        assert e.problems, "ValidationFailed without problems"
        return e.problems
    return []


def only(d: dict, code: str, **params) -> Problem:
    ps = problems(d, **params)
    assert [p.code for p in ps] == [code], [str(p) for p in ps]
    return ps[0]


NUM = {"type": "Num", "inputs": {"value": 1}}


def test_valid_document_has_no_problems():
    assert problems(doc({"n": NUM})) == []


def test_unknown_node_type_with_hint():
    p = only(doc({"n": {"type": "num"}}), "unknown_node_type")
    assert (p.node, p.field) == ("n", "type")
    assert "'num'" in p.message and "did you mean 'Num'" in p.message


def test_unknown_input():
    p = only(doc({"n": {"type": "Num", "inputs": {"valu": 1}}}), "unknown_input")
    assert (p.node, p.field) == ("n", "inputs.valu")
    assert "Num has no input 'valu'" in p.message and "value" in p.message


def test_missing_input():
    d = doc({"n": NUM, "s": {"type": "Add", "inputs": {"b": 1}}}, {"x": "s.sum"})
    p = only(d, "missing_input")
    assert (p.node, p.field) == ("s", "inputs.a")
    assert "'a'" in p.message


def test_bad_literal_wrong_type():
    p = only(doc({"n": {"type": "Num", "inputs": {"value": "lots"}}}), "bad_literal")
    assert (p.node, p.field) == ("n", "inputs.value")
    assert "'lots'" in p.message


def test_bad_literal_out_of_range_le():
    p = only(doc({"n": {"type": "Num", "inputs": {"value": 2e6}}}), "bad_literal")
    assert (p.node, p.field) == ("n", "inputs.value")
    assert "less than or equal to 1000000" in p.message


def test_bad_literal_out_of_range_ge():
    p = only(doc({"v": {"type": "MakeVec", "inputs": {"size": 0}}}, {"x": "v.vec"}), "bad_literal")
    assert (p.node, p.field) == ("v", "inputs.size")
    assert "greater than or equal to 1" in p.message


def test_bad_literal_enum_choice():
    p = only(doc({"m": {"type": "Math", "inputs": {"a": 1, "op": "mod"}}}, {"x": "m.result"}), "bad_literal")
    assert (p.node, p.field) == ("m", "inputs.op")
    assert "'mod'" in p.message and "'add'" in p.message


def test_literal_not_allowed_for_tensor_port():
    p = only(doc({"s": {"type": "ScaleVec", "inputs": {"vec": [1, 2, 3]}}}, {"x": "s.vec"}), "literal_not_allowed")
    assert (p.node, p.field) == ("s", "inputs.vec")
    assert "vec" in p.message


def test_unknown_node():
    d = doc({"n": NUM, "s": {"type": "Add", "inputs": {"a": link("ghost.sum")}}}, {"x": "s.sum"})
    p = only(d, "unknown_node")
    assert (p.node, p.field) == ("s", "inputs.a")
    assert "'ghost'" in p.message


def test_unknown_node_in_outputs():
    p = only(doc({"n": NUM}, {"x": "ghost.value"}), "unknown_node")
    assert p.field == "outputs.x" and "'ghost'" in p.message


def test_unknown_output():
    d = doc({"n": NUM, "s": {"type": "Add", "inputs": {"a": link("n.val")}}}, {"x": "s.sum"})
    p = only(d, "unknown_output")
    assert (p.node, p.field) == ("s", "inputs.a")
    assert "n.val" in p.message and "value" in p.message


def test_unknown_output_in_workflow_outputs():
    p = only(doc({"n": NUM}, {"x": "n.nope"}), "unknown_output")
    assert p.field == "outputs.x" and "n.nope" in p.message


def test_type_mismatch_between_tensor_kinds():
    d = doc(
        {"v": {"type": "MakeVec"}, "t": {"type": "TakeOther", "inputs": {"x": link("v.vec")}}},
        {"y": "t.y"},
    )
    p = only(d, "type_mismatch")
    assert (p.node, p.field) == ("t", "inputs.x")
    assert "'v.vec' is a vec" in p.message and "other" in p.message


def test_type_mismatch_string_into_float():
    d = doc(
        {"t": {"type": "Text", "inputs": {"template": "hi"}}, "s": {"type": "Add", "inputs": {"a": link("t.text")}}},
        {"x": "s.sum"},
    )
    p = only(d, "type_mismatch")
    assert (p.node, p.field) == ("s", "inputs.a")


def test_type_mismatch_loop_over_non_sequence():
    d = doc(
        {
            "v": {"type": "MakeVec"},
            "L": {"type": "Loop", "over": link("v.vec"), "body": {"b": {"type": "Add", "inputs": {"a": link("L.index")}}},
                  "collect": {"c": link("b.sum")}},
        },
        {"c": "L.c"},
    )
    p = only(d, "type_mismatch")
    assert (p.node, p.field) == ("L", "over")


def test_cycle():
    d = doc(
        {
            "a": {"type": "Add", "inputs": {"a": link("b.sum")}},
            "b": {"type": "Add", "inputs": {"a": link("a.sum")}},
        },
        {"x": "b.sum"},
    )
    p = only(d, "cycle")
    assert p.node in ("a", "b")
    assert "a -> b -> a" in p.message or "b -> a -> b" in p.message


def test_cycle_in_loop_body():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {
                    "p": {"type": "Add", "inputs": {"a": link("q.sum")}},
                    "q": {"type": "Add", "inputs": {"a": link("p.sum")}},
                },
                "collect": {"c": link("q.sum")},
            },
        },
        {"c": "L.c"},
    )
    p = only(d, "cycle")
    assert p.node in ("p", "q") and "loop 'L'" in p.message


def test_unknown_param_from_override():
    d = doc({"n": {"type": "Num", "inputs": {"value": {"param": "v"}}}}, params={"v": {"default": 1}})
    p = only(d, "unknown_param", w=3)
    assert p.field == "params.w"
    assert "'w'" in p.message and "known: v" in p.message


def test_unknown_param_from_reference():
    d = doc({"n": {"type": "Num", "inputs": {"value": {"param": "nope"}}}})
    p = only(d, "unknown_param")
    assert (p.node, p.field) == ("n", "inputs.value")
    assert "'nope'" in p.message


def test_bad_param_declared_type():
    d = doc(
        {"r": {"type": "Range", "inputs": {"stop": {"param": "n"}}}}, {"x": "r.values"}, params={"n": {"default": 3, "type": "int"}}
    )
    ps = problems(d, n="many")
    assert {p.code for p in ps} == {"bad_param"}
    declared = next(p for p in ps if p.field == "params.n")
    assert "declared int" in declared.message and "'many'" in declared.message


def test_bad_param_value_invalid_for_the_port_it_feeds():
    d = doc({"n": {"type": "Num", "inputs": {"value": {"param": "v"}}}}, params={"v": {"default": 1}})
    p = only(d, "bad_param", v=5e6)
    assert (p.node, p.field) == ("n", "inputs.value")
    assert "parameter 'v'" in p.message and "less than or equal to 1000000" in p.message


def test_missing_param():
    d = doc({"n": {"type": "Num", "inputs": {"value": {"param": "v"}}}}, params={"v": {"description": "no default"}})
    p = only(d, "missing_param")
    assert (p.node, p.field) == ("n", "inputs.value")
    assert "'v'" in p.message
    assert problems(d, v=2) == []


def test_nested_loop_is_allowed_but_its_body_stays_its_own():
    """Scopes nest; an inner body is visible to neither the outer body nor the top level."""
    nested = {
        "r": {"type": "Range", "inputs": {"stop": 2}},
        "L": {
            "type": "Loop",
            "over": link("r.values"),
            "body": {"inner": {"type": "Loop", "over": link("r.values"), "body": {"deep": {"type": "Num"}}}},
            "carry": {},
        },
    }
    assert problems(doc(nested, {"x": "r.values"})) == []
    bad = copy.deepcopy(nested)
    bad["L"]["body"]["peek"] = {"type": "Add", "inputs": {"a": link("deep.value")}}
    p = only(doc(bad, {"x": "r.values"}), "loop_scope")
    assert (p.node, p.field) == ("peek", "inputs.a")
    assert "'deep'" in p.message and "'inner'" in p.message


def test_loop_scope_outer_node_links_into_body():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {"b": {"type": "Add", "inputs": {"a": link("L.item")}}},
                "collect": {"c": link("b.sum")},
            },
            "peek": {"type": "Add", "inputs": {"a": link("b.sum")}},
        },
        {"x": "peek.sum"},
    )
    p = only(d, "loop_scope")
    assert (p.node, p.field) == ("peek", "inputs.a")
    assert "'b'" in p.message and "'L'" in p.message


def test_loop_scope_loop_variable_outside_body():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {"type": "Loop", "over": link("r.values"), "body": {"b": {"type": "Add", "inputs": {"a": link("L.item")}}},
                  "collect": {"c": link("b.sum")}},
            "peek": {"type": "Add", "inputs": {"a": link("L.index")}},
        },
        {"x": "peek.sum"},
    )
    p = only(d, "loop_scope")
    assert (p.node, p.field) == ("peek", "inputs.a")


def test_bad_loop_next_without_carry():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {"b": {"type": "Add", "inputs": {"a": link("L.item")}}},
                "next": {"acc": link("b.sum")},
                "collect": {"c": link("b.sum")},
            },
        },
        {"c": "L.c"},
    )
    p = only(d, "bad_loop")
    assert (p.node, p.field) == ("L", "next.acc")
    assert "'acc'" in p.message


def test_bad_loop_carry_without_next():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {"type": "Loop", "over": link("r.values"), "carry": {"acc": 0},
                  "body": {"b": {"type": "Add", "inputs": {"a": link("L.item")}}}, "collect": {"c": link("b.sum")}},
        },
        {"c": "L.c"},
    )
    p = only(d, "bad_loop")
    assert (p.node, p.field) == ("L", "carry.acc")


def test_conditional_output_read_without_otherwise():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 4}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {
                    "sometimes": {"type": "Add", "inputs": {"a": link("L.item")}, "when": {"every": 2}},
                    "reader": {"type": "Add", "inputs": {"a": link("sometimes.sum")}},
                },
                "collect": {"c": link("reader.sum")},
            },
        },
        {"c": "L.c"},
    )
    p = only(d, "conditional_output")
    assert (p.node, p.field) == ("sometimes", "otherwise")
    assert "'reader'" in p.message and "'sum'" in p.message


def test_conditional_output_read_by_next():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 4}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 0},
                "body": {"sometimes": {"type": "Add", "inputs": {"a": link("L.acc")}, "when": {"every": 2}}},
                "next": {"acc": link("sometimes.sum")},
            },
        },
        {"acc": "L.acc"},
    )
    p = only(d, "conditional_output")
    assert (p.node, p.field) == ("sometimes", "otherwise")
    assert "'L' reads its output 'sum'" in p.message


def test_invalid_json_reports_line_and_column(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{\n  "format": 1,\n  "nodes": {,\n}\n')
    with pytest.raises(ValidationFailed) as e:
        Workflow.load(f, toy_registry())
    (p,) = e.value.problems
    assert p.code == "invalid_json"
    assert (p.line, p.column) == (3, 13)
    assert "broken.json" in p.message
    assert "line 3, column 13" in str(e.value)


def test_invalid_json_from_text():
    with pytest.raises(ValidationFailed) as e:
        parse_json('{"format": 1 "nodes": {}}')
    (p,) = e.value.problems
    assert p.code == "invalid_json" and p.line == 1 and p.column == 14


def test_invalid_document_unknown_key_in_node():
    p = only(doc({"n": {"type": "Num", "inptus": {"value": 1}}}), "invalid_document")
    assert (p.node, p.field) == ("n", "inptus")
    assert p.message == "unknown key"


def test_invalid_document_unknown_top_level_key():
    p = only(doc({"n": NUM}, extra_key=1), "invalid_document")
    assert p.field == "extra_key" and p.message == "unknown key"


def test_invalid_document_missing_nodes():
    p = only({"format": 1, "outputs": {"x": "n.value"}}, "invalid_document")
    assert p.field == "nodes" and "missing" in p.message


def test_unsupported_format():
    d = doc({"n": NUM})
    d["format"] = 2
    p = only(d, "unsupported_format")
    assert p.field == "format" and "2" in p.message


def test_no_outputs():
    p = only(doc({"n": NUM}, {}), "no_outputs")
    assert p.field == "outputs"


def test_duplicate_node_id_across_loop_body():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {"type": "Loop", "over": link("r.values"), "body": {"n": {"type": "Add", "inputs": {"a": link("L.item")}}},
                  "collect": {"c": link("n.sum")}},
            "n": NUM,
        },
        {"x": "n.value"},
    )
    p = only(d, "duplicate_node_id")
    assert p.node == "n"


def test_when_outside_loop():
    p = only(doc({"n": {**NUM, "when": {"every": 2}}}), "when_outside_loop")
    assert (p.node, p.field) == ("n", "when")


def test_otherwise_outside_loop():
    p = only(doc({"n": {**NUM, "otherwise": {"value": 1}}}), "when_outside_loop")
    assert p.node == "n"


@pytest.mark.parametrize("bad", [{"from": "nodot"}, {"from": "a.b.c"}, {"from": 3}, {"from": ".x"}])
def test_bad_link(bad):
    d = doc({"n": NUM, "s": {"type": "Add", "inputs": {"a": bad}}}, {"x": "s.sum"})
    ps = problems(d)
    assert [p.code for p in ps] == ["bad_link"]
    assert (ps[0].node, ps[0].field) == ("s", "inputs.a")
    assert 'node.port' in ps[0].message


def test_bad_link_in_outputs():
    ps = problems(doc({"n": NUM}, {"x": {"from": 5}}))
    # the only output was unusable, so the workflow also has no outputs left
    assert [(p.code, p.field) for p in ps] == [("bad_link", "outputs.x"), ("no_outputs", "outputs")]


def test_bad_node_id():
    p = only(doc({"n": NUM, "1bad": NUM}, {"x": "n.value"}), "bad_node_id")
    assert p.node == "1bad"


def test_several_problems_reported_together():
    d = doc(
        {
            "n": {"type": "Num", "inputs": {"value": "text", "extra": 1}},
            "s": {"type": "Add", "inputs": {"a": link("ghost.sum")}},
            "t": {"type": "Nope"},
            "m": {"type": "Add", "inputs": {"b": 2}},
            "v": {"type": "MakeVec"},
            "o": {"type": "TakeOther", "inputs": {"x": link("v.vec")}},
        },
        {"x": "s.sum", "y": "o.y"},
    )
    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict(d, toy_registry()).check()
    got = {(p.code, p.node, p.field) for p in e.value.problems}
    assert got == {
        ("bad_literal", "n", "inputs.value"),
        ("unknown_input", "n", "inputs.extra"),
        ("unknown_node", "s", "inputs.a"),
        ("unknown_node_type", "t", "type"),
        ("missing_input", "m", "inputs.a"),
        ("type_mismatch", "o", "inputs.x"),
    }
    text = str(e.value)
    assert text.startswith("6 problems found:")
    assert "[unknown_node_type] node 't', field 'type'" in text


def test_several_document_shape_problems_reported_together():
    d = doc(
        {
            "n": {"type": "Num", "when": {"every": 2}},
            "m": {"type": "Num", "typo": 1},
            "s": {"type": "Add", "inputs": {"a": {"from": "nodot"}}},
        },
        {},
    )
    codes = sorted(p.code for p in problems(d))
    assert codes == ["bad_link", "invalid_document", "no_outputs", "when_outside_loop"]


def test_problems_api_and_unchanged_document():
    d = doc({"n": {"type": "Num", "inputs": {"value": {"param": "v"}}}}, params={"v": {"default": 1}})
    before = copy.deepcopy(d)
    wf = Workflow.from_dict(d, toy_registry())
    assert wf.problems() == []
    assert [p.code for p in wf.problems({"v": "x"})] == ["bad_param"]
    assert [p.code for p in wf.with_params(v=1e7).problems()] == ["bad_param"]
    assert wf.problems() == []  # with_params returned a new workflow
    assert d == before


def test_problem_to_dict_omits_empty_fields():
    p = Problem("unknown_input", "msg", node="n", field="inputs.x")
    assert p.to_dict() == {"code": "unknown_input", "message": "msg", "node": "n", "field": "inputs.x"}


def test_unknown_node_output_inside_a_loop_body():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {"type": "Loop", "over": link("r.values"), "body": {"b": {"type": "Add", "inputs": {"a": link("L.item")}}},
                  "collect": {"c": link("b.sum")}},
        },
        {"x": "b.sum"},
    )
    p = only(d, "unknown_node")
    assert p.field == "outputs.x" and "'b' is inside loop 'L'" in p.message


def test_unknown_output_of_a_loop():
    d = doc(
        {
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {"type": "Loop", "over": link("r.values"), "body": {"b": {"type": "Add", "inputs": {"a": link("L.item")}}},
                  "collect": {"c": link("b.sum")}},
            "after": {"type": "Add", "inputs": {"a": link("L.nope")}},
        },
        {"x": "after.sum"},
    )
    p = only(d, "unknown_output")
    assert (p.node, p.field) == ("after", "inputs.a") and "loop 'L' outputs c" in p.message


def test_not_plain_json_data_is_an_invalid_document():
    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict(doc({"n": {"type": "Num", "inputs": {"value": object()}}}), toy_registry())
    (p,) = e.value.problems
    assert p.code == "invalid_document" and "not plain JSON" in p.message


def test_a_node_reading_its_own_output_is_a_cycle():
    from tests.toy_nodes import make

    problems = make({"a": {"type": "Add", "inputs": {"a": {"from": "a.sum"}}}}, {"x": "a.sum"}).problems()
    assert [(p.code, p.node) for p in problems] == [("cycle", "a")]
