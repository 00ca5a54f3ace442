"""What the engine spends on a node when no one looks (issue 29, "the engine's own cost"): a run
no one hears builds no event, a run that pins no model walks no graph to unpin, a linked value of
exactly its port's type passes without a validator call (and any other value is still checked),
and the command line builds the parser of the command it runs, not all of them. Speed itself is
measured in bench/bench_engine.py; these tests hold the behaviour the fast paths must keep."""

from __future__ import annotations

import pytest

import graphflow.node.builtin
from graphflow import Executor, Workflow
from graphflow.engine import events as ev
from graphflow.engine.listeners import Listeners
from graphflow.engine.run import Runner
from graphflow.node.builtin import Math, Range
from graphflow.node.context import Context
from graphflow.node.declaration import Inputs, Node, Outputs
from graphflow.node.registry import Registry

HEARD: list = []
EXECUTOR: list = []  # the executor the Subscribe node subscribes to, set by the test


class Subscribe(Node, name="Subscribe", pure=False):
    """Subscribes a run-thread listener to the running executor, mid-run."""

    class In(Inputs):
        value: float

    class Out(Outputs):
        value: float

    def run(self, i: In, ctx: Context) -> dict:
        EXECUTOR[0].subscribe(HEARD.append, on_run_thread=True)
        return {"value": i.value}


def registry() -> Registry:
    reg = Registry()
    reg.register_module(graphflow.node.builtin)
    reg.register(Subscribe)
    return reg


def chain(n: int, first: object = 1) -> dict:
    nodes = {"n0": {"type": "Value", "inputs": {"value": first}}}
    for i in range(1, n):
        nodes[f"n{i}"] = {"type": "Math", "inputs": {"a": {"from": f"n{i - 1}.{'value' if i == 1 else 'result'}"}, "b": 1}}
    return {"format": 1, "nodes": nodes, "outputs": {"x": f"n{n - 1}.result"}}


def test_a_run_no_one_hears_builds_no_event(monkeypatch):
    built = []

    class Counted(ev.NodeStarted):
        __slots__ = ()

        def __init__(self, *a, **k):
            built.append(a[0])
            super().__init__(*a, **k)

    monkeypatch.setattr(ev, "NodeStarted", Counted)
    ex = Executor()
    assert ex.run(Workflow.from_dict(chain(5), registry()))["x"] == 5.0
    assert built == []
    seen: list = []
    assert Executor().run(Workflow.from_dict(chain(6), registry()), on_event=seen.append)["x"] == 6.0
    assert built == [f"n{i}" for i in range(6)]
    assert [e.node for e in seen if isinstance(e, ev.NodeFinished)] == built


def test_a_listener_subscribed_mid_run_hears_the_rest_from_the_next_node_on():
    HEARD.clear()
    ex = Executor()
    EXECUTOR[:] = [ex]
    doc = chain(3)
    doc["nodes"]["sub"] = {"type": "Subscribe", "inputs": {"value": {"from": "n2.result"}}}
    doc["nodes"]["after"] = {"type": "Math", "inputs": {"a": {"from": "sub.value"}, "b": 10}}
    doc["outputs"] = {"x": "after.result"}
    assert ex.run(Workflow.from_dict(doc, registry()))["x"] == 13.0
    assert [(type(e).__name__, getattr(e, "node", None)) for e in HEARD] == [
        ("NodeStarted", "after"), ("NodeFinished", "after"), ("RunFinished", None)]


def test_an_emitter_is_false_until_someone_could_hear_it():
    hub = Listeners(10)
    assert not hub.emitter(None)
    assert hub.emitter([].append)  # a submitted run's handle keeps its events
    assert hub.emitter(None, on_event=print)
    quiet = hub.emitter(None)
    unsubscribe = hub.subscribe(lambda e: None, on_run_thread=True)
    assert quiet  # read when asked: a listener subscribed after the emitter was made counts
    unsubscribe()
    assert not quiet


def test_a_submitted_run_keeps_its_events_though_no_one_listens():
    ex = Executor()
    h = ex.submit(Workflow.from_dict(chain(3), registry()))
    assert h.result()["x"] == 3.0
    assert [type(e).__name__ for e in h.events()] == ["RunStarted"] + ["NodeStarted", "NodeFinished"] * 3 + ["RunFinished"]


def test_a_run_that_pins_no_model_walks_no_graph_to_unpin(monkeypatch):
    walks = []
    real = Runner.unpin_unreachable
    monkeypatch.setattr(Runner, "unpin_unreachable", lambda self, rest: walks.append(len(rest)) or real(self, rest))
    assert Executor().run(Workflow.from_dict(chain(200), registry()))["x"] == 200.0
    assert walks == []  # it walked the steps left after every step: 200 walks, quadratic in the steps


def test_exact_types_are_the_unconstrained_plain_ones():
    assert Math.inputs["a"].exact_type is float and Math.inputs["as_int"].exact_type is bool
    assert Math.inputs["op"].exact_type is None  # a Literal: its values are checked
    assert Range.inputs["stop"].exact_type is None  # Limit("list")
    assert Range.inputs["step"].exact_type is None  # ge=1


def test_a_linked_value_of_another_type_is_still_converted_or_refused():
    ex = Executor()
    r = ex.run(Workflow.from_dict(chain(2, first=3), registry()))  # an int into Math's float 'a'
    assert r["x"] == 4.0 and type(r["x"]) is float
    r = ex.run(Workflow.from_dict(chain(2, first="three"), registry()))
    assert not r.ok
    assert r.errors[0].node == "n1" and r.errors[0].exc_type == "ValidationError"
    assert "input 'a' received 'three' from 'n0.value'" in r.errors[0].message


@pytest.mark.parametrize("command", ["validate", "run", "describe"])
def test_the_command_line_builds_the_parser_of_the_command_it_runs(command):
    from graphflow.cli import BUILT_IN, build_parser

    one = build_parser(command).get_default("commands").choices
    everything = build_parser().get_default("commands").choices
    assert command in one and set(one) <= BUILT_IN and len(one) < len(everything)
    assert BUILT_IN < set(everything)  # all of them, and the node library's commands (models, import)
    assert one[command].format_help() == everything[command].format_help()
