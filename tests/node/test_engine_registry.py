"""Node declarations and the registry: what a node type must define, duplicate names, plugins."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from graphflow import Context, Executor, FileInput, Inputs, Node, Outputs, Registry, Workflow, default_registry
from graphflow.node.registry import RegistryError
from tests import toy_nodes
from tests.toy_nodes import RUNS, Num, toy_registry

TOY_PLUGIN = str(Path(__file__).resolve().parents[1] / "toy_nodes.py")
TOY_TYPES = {"Num", "Add", "MakeVec", "ScaleVec", "SumVec", "TakeOther", "Fail", "Record", "CancelMe", "Iteration"}


def test_a_node_runs_with_a_bare_context():
    out = Num().run(Num.In(value=2.5), Context(node_id="n"))
    assert out == {"value": 2.5} and RUNS["n"] == 1


def test_declaration_derives_ports_kinds_defaults_and_ranges():
    from graphflow.node.builtin import Math

    assert Math.type_name == "Math" and Math.version == 1 and Math.category == "values" and Math.pure
    a, op = Math.inputs["a"], Math.inputs["op"]
    assert a.required and a.kind.name == "float"
    assert not op.required and op.default == "add" and op.choices == ("add", "sub", "mul", "div", "min", "max", "pow")
    assert Math.outputs["result"].kind.name == "float"
    assert toy_nodes.ScaleVec.inputs["vec"].kind.name == "vec"
    assert not toy_nodes.ScaleVec.inputs["vec"].kind.literal
    assert not toy_nodes.Record.pure and not toy_nodes.Record.disk_cache


def _declare(**kw):
    class In(Inputs):
        x: float = 0.0

    class Out(Outputs):
        y: float = Field()

    body = {"In": In, "Out": Out, "run": lambda self, i, ctx: {"y": i.x}}
    for k, v in kw.pop("body", {}).items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    return type("T", (Node,), body, **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "Loop"}, "invalid node type name"),
        ({"name": "9lives"}, "invalid node type name"),
        ({"name": "has space"}, "invalid node type name"),
        ({"name": "V", "version": 0}, "version must be a positive int"),
        ({"name": "NoIn", "body": {"In": None}}, re.escape("must define `class In(Inputs)`")),
        ({"name": "NoOutModel", "body": {"Out": None}}, re.escape("must define `class Out(Outputs)`")),
        ({"name": "NoRun", "body": {"run": None}}, re.escape("must define run(self, inputs, ctx)")),
    ],
)
def test_invalid_declarations_are_refused(kw, message):
    with pytest.raises(TypeError, match=message):
        _declare(**kw)


def test_a_node_needs_an_output():
    with pytest.raises(TypeError, match="at least one output"):

        class NoOut(Node, name="NoOut"):
            class In(Inputs):
                x: float = 0.0

            class Out(Outputs):
                pass

            def run(self, i, ctx):
                return {}


def test_duplicate_type_name_is_refused_naming_both_sources():
    class Num2(Node, name="Num"):
        class In(Inputs):
            x: float = 0.0

        class Out(Outputs):
            y: float = Field()

        def run(self, i, ctx):
            return {"y": 0.0}

    reg = toy_registry()
    reg.register(Num)  # the same class again is fine
    with pytest.raises(RegistryError, match="node type 'Num' from .* is already registered by tests.toy_nodes"):
        reg.register(Num2)


def test_only_node_types_can_be_registered():
    with pytest.raises(RegistryError, match="not a node type"):
        Registry().register(int)


def test_registry_iterates_by_category_then_name():
    names = [n.type_name for n in toy_registry()]
    assert names[:3] == ["SaveText", "Text", "Add"]  # category 'output', 'text', then 'toy'
    assert toy_registry().names() == sorted(names)
    assert len(toy_registry()) == 14 and "Num" in toy_registry() and toy_registry().get("Nope") is None


def test_plugin_file_next_to_default_registry_loads_without_duplicate_error():
    reg = default_registry([TOY_PLUGIN])
    assert TOY_TYPES <= set(reg.names())
    assert {"Math", "Range", "Text", "SaveText", "Value"} <= set(reg.names())


def test_loading_the_same_plugin_file_twice_is_a_duplicate():
    reg = Registry()
    reg.load_plugin(TOY_PLUGIN)
    with pytest.raises(RegistryError, match="already registered"):
        reg.load_plugin(TOY_PLUGIN)


def test_missing_plugin_file():
    with pytest.raises(RegistryError, match="plugin file not found"):
        Registry().load_plugin("no/such/file.py")


def test_register_module_takes_only_the_modules_own_node_types():
    found = Registry().load_plugin(TOY_PLUGIN)
    assert {n.type_name for n in found} == TOY_TYPES
    reg = default_registry([TOY_PLUGIN])
    assert reg.sources["Math"] == "graphflow (built-in)"


def test_plugin_file_with_postponed_annotations_keeps_port_kinds():
    reg = Registry()
    reg.load_plugin(TOY_PLUGIN)
    cls = reg.get("ScaleVec")
    assert cls.inputs["vec"].kind.name == "vec"
    cls.In.model_rebuild()  # models build on first use (defer_build); their annotations must resolve
    assert cls.In.__pydantic_complete__


# --- file inputs: what the node reads from disk is part of the cache key -----------------------------


class Stamped(Node, name="Stamped", category="test"):
    """Reads a number from a file: the file's content is part of the cache key."""

    class In(Inputs):
        path: Annotated[str, FileInput()] = Field(description="a text file holding a number")

    class Out(Outputs):
        value: float = Field()

    def run(self, i, ctx):
        RUNS[ctx.node_id] += 1
        return {"value": float(Path(i.path).read_text())}


def test_file_content_is_part_of_the_cache_key(tmp_path):
    reg = toy_registry()
    reg.register(Stamped)
    f = tmp_path / "stamp.txt"
    wf = Workflow.from_dict({"format": 1, "nodes": {"s": {"type": "Stamped", "inputs": {"path": str(f)}}}, "outputs": {"v": "s.value"}}, reg)
    ex = Executor()
    f.write_text("1")
    assert ex.run(wf)["v"] == 1.0
    assert ex.run(wf)["v"] == 1.0
    assert RUNS["s"] == 1
    f.write_text("2")  # the file changed
    assert ex.run(wf)["v"] == 2.0
    assert RUNS["s"] == 2


def test_inputs_a_run_builds_equal_what_pydantic_constructs():
    """The executor's fast construction of a node's inputs matches ``model_construct`` for every
    node type shipped: same values, defaults and default factories, same set of given fields."""
    for cls in default_registry():
        given = {name: f"value-{name}" for name, port in cls.inputs.items() if port.required}
        fast, slow = cls.make_inputs(dict(given)), cls.In.model_construct(**given)
        assert type(fast) is cls.In
        assert fast.__dict__ == slow.__dict__ and fast.model_fields_set == slow.model_fields_set == set(given), cls.type_name
