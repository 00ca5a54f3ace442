"""Nesting ceilings and the shape of ``params`` (issue #24): a value nested hundreds of levels is
refused as ``too_deep``, naming where, before pydantic, the fingerprint or a JSON writer recurse
into it (they failed with RecursionError or orjson's "Recursion limit reached", a 500 from the
server); ``params`` that is not an object is refused, never read as "no parameters"."""

from __future__ import annotations

import pytest

import graphflow
from graphflow import Executor, Limits, ValidationFailed, Workflow
from graphflow.cli import main
from graphflow.graph.bind import bind
from tests.toy_nodes import toy_registry


def nest(n: int, leaf=1):
    for _ in range(n):
        leaf = [leaf]
    return leaf


def doc(value) -> dict:
    return {"format": 1, "params": {"p": {"default": 0}},
            "nodes": {"a": {"type": "Value", "inputs": {"value": value}}, "b": {"type": "Value", "inputs": {"value": {"param": "p"}}}},
            "outputs": {"a": "a.value", "b": "b.value"}}


DEEP_DOC = ("the document nests lists and objects more than 64 levels deep, over the limit for 'depth' (raise it with --limit "
            "depth=N, at most 200)")


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_document_value_nested_hundreds_of_levels_is_too_deep(levels):
    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict(doc(nest(levels)), toy_registry())
    assert [(p.code, p.node, p.field, p.message) for p in e.value.problems] == [("too_deep", "a", "nodes.a.inputs.value", DEEP_DOC)]


def test_the_depth_ceiling_is_exact_and_can_be_raised():
    # the document itself, its nodes, a node, its inputs: 4 levels above the value
    Workflow.from_dict(doc(nest(60)), toy_registry()).bind()
    with pytest.raises(ValidationFailed):
        Workflow.from_dict(doc(nest(61)), toy_registry())
    wf = Workflow.from_dict(doc(nest(150)), toy_registry(), limits=Limits(depth=160))
    assert Executor(limits=Limits(depth=160)).run(wf)["a"] == nest(150)


def test_a_parameter_nested_1000_levels_is_too_deep_and_nothing_runs():
    wf = Workflow.from_dict(doc(1), toy_registry())
    ex = Executor()
    for value in (nest(1000), nest(65), nest(64, {"k": 1})):
        with pytest.raises(ValidationFailed) as e:
            ex.run(wf.with_params(p=value))
        assert [(p.code, p.node, p.field, p.message) for p in e.value.problems] == [(
            "too_deep", None, "params.p", "parameter 'p' nests lists and objects more than 64 levels deep, over the limit for 'depth' "
                                          "(raise it with --limit depth=N, at most 200)")]
    assert ex.run(wf.with_params(p=nest(64)))["b"] == nest(64)


def test_a_parameter_that_contains_itself_is_too_deep_not_a_recursion_error():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict(doc(1), toy_registry()).bind({"p": loop})
    assert [p.code for p in e.value.problems] == ["too_deep"]


@pytest.mark.parametrize(("params", "shown"), [(False, "False"), (0, "0"), ("", "''"), ([], "a list"), ((), "a tuple")])
def test_params_that_are_not_an_object_are_refused(params, shown):
    wf = Workflow.from_dict(doc(1), toy_registry())
    message = f"params must be an object (parameter name -> value), got {shown}"
    for call in (lambda: wf.bind(params), lambda: bind(wf.checked(), params), lambda: Executor().run(wf, params),
                 lambda: Executor().submit(wf, params)):
        with pytest.raises(ValidationFailed) as e:
            call()
        assert [(p.code, p.field, p.message) for p in e.value.problems] == [("bad_param", "params", message)]
    assert wf.bind(None).params == {"p": 0} and wf.bind({}).params == {"p": 0}


def test_the_depth_limit_has_a_ceiling_of_its_own(capsys):
    assert graphflow.Limits is Limits and Limits().depth == 64
    with pytest.raises(ValueError, match="the 'depth' limit is between 1 and 200, got 500"):
        Limits(depth=500)
    hello = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "workflows" / "hello.json")
    assert main(["validate", hello, "--limit", "depth=500"]) == 2
    assert "[bad_limit] the 'depth' limit is between 1 and 200, got 500" in capsys.readouterr().err
    assert main(["validate", hello, "--limit", "depth=7"]) == 0  # hello.json nests 7 levels: a link in a loop body's node
    assert main(["validate", hello, "--limit", "depth=6"]) == 2
    assert "[too_deep] node 'add', field 'nodes.sum.body.add.inputs.a': the document nests" in capsys.readouterr().err
