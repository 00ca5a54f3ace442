"""Loop semantics: carried values, collected lists, loop variables, conditional body nodes,
loop-invariant body nodes, and caching of the loop as a whole."""

from __future__ import annotations

import pytest

from graphflow import Executor, Workflow
from graphflow.engine import events as ev
from tests.toy_nodes import RECORDED, RUNS, link, make


def loop_workflow() -> Workflow:
    """Sums 0..n-1 (carry), and exercises every loop feature in one body."""
    return make(
        {
            "r": {"type": "Range", "inputs": {"stop": {"param": "n"}}},
            "outer": {"type": "Num", "inputs": {"value": 100}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 0},
                "body": {
                    "inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}},
                    "idx": {"type": "Add", "inputs": {"a": link("L.index"), "b": link("L.count")}},
                    # reads only outer values: the same on every iteration
                    "inv": {"type": "Add", "inputs": {"a": link("outer.value"), "b": 1}},
                    "useinv": {"type": "Add", "inputs": {"a": link("inv.sum"), "b": link("L.item")}},
                    # acts on iterations 0, 2, 4; passes inc.sum through otherwise
                    "every2": {
                        "type": "Add",
                        "inputs": {"a": link("inc.sum"), "b": 1000},
                        "when": {"every": 2},
                        "otherwise": {"sum": link("inc.sum")},
                    },
                    # acts on iterations 0 and 3, no otherwise: only collected
                    "every3": {"type": "Add", "inputs": {"a": link("L.item"), "b": 0.5}, "when": {"every": 3}},
                    # from iteration 1 up to (not including) 4, every 2nd: iterations 1 and 3
                    "window": {"type": "Add", "inputs": {"a": link("L.index")}, "when": {"every": 2, "start": 1, "stop": 4}},
                    # in the body but nothing reads it: never runs
                    "dead": {"type": "Add", "inputs": {"a": link("L.item")}},
                },
                "next": {"acc": link("inc.sum")},
                "collect": {
                    "history": link("inc.sum"),
                    "idx": link("idx.sum"),
                    "items": link("L.item"),
                    "shifted": link("useinv.sum"),
                    "every2": link("every2.sum"),
                    "every3": link("every3.sum"),
                    "window": link("window.sum"),
                },
            },
            "post": {"type": "Add", "inputs": {"a": link("L.acc"), "b": {"param": "k"}}},
        },
        {
            "acc": "L.acc",
            "history": "L.history",
            "idx": "L.idx",
            "items": "L.items",
            "shifted": "L.shifted",
            "every2": "L.every2",
            "every3": "L.every3",
            "window": "L.window",
            "post": "post.sum",
        },
        {"n": {"default": 6, "type": "int"}, "k": {"default": 5}},
    )


def test_carry_collect_and_loop_variables():
    r = Executor().run(loop_workflow())
    assert r.ok, r.errors
    assert r["acc"] == 15.0  # 0+1+2+3+4+5
    assert r["history"] == [0.0, 1.0, 3.0, 6.0, 10.0, 15.0]
    assert r["items"] == [0, 1, 2, 3, 4, 5]
    assert r["idx"] == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]  # index + count(6)
    assert r["shifted"] == [101.0, 102.0, 103.0, 104.0, 105.0, 106.0]
    assert r["post"] == 20.0


def test_when_every_n_acts_only_on_its_iterations_with_otherwise_pass_through():
    r = Executor().run(loop_workflow())
    # iterations 0, 2, 4 add 1000; 1, 3, 5 pass inc.sum through
    assert r["every2"] == [1000.0, 1.0, 1003.0, 6.0, 1010.0, 15.0]
    assert RUNS["every2"] == 3 and r.runs("every2") == 3


def test_collected_output_of_conditional_node_without_otherwise_covers_only_its_iterations():
    r = Executor().run(loop_workflow())
    assert r["every3"] == [0.5, 3.5]  # items 0 and 3
    assert RUNS["every3"] == 2
    assert r["window"] == [1.0, 3.0]  # start 1, stop 4, every 2
    assert RUNS["window"] == 2


def test_body_run_counts_invariant_nodes_run_once_and_unread_nodes_never():
    r = Executor().run(loop_workflow())
    assert r.runs("r") == 1  # Range is a built-in node: counted by the executor, not by RUNS
    assert RUNS == {
        "outer": 1,
        "inc": 6,
        "idx": 6,
        "inv": 1,  # loop-invariant: once per loop run, not once per iteration
        "useinv": 6,
        "every2": 3,
        "every3": 2,
        "window": 2,
        "post": 1,
    }
    assert RUNS["dead"] == 0
    assert r.runs("L") == 1 and r.runs("inc") == 6 and r.runs("inv") == 1


def test_loop_is_cached_as_a_whole_and_downstream_change_does_not_rerun_it():
    ex = Executor()
    wf = loop_workflow()
    ex.run(wf)

    RUNS.clear()
    r2 = ex.run(wf)
    assert r2["acc"] == 15.0 and r2["every3"] == [0.5, 3.5]
    assert sum(RUNS.values()) == 0
    assert r2.stats["L"].status == "memory" and r2.runs("L") == 0 and r2.runs("inc") == 0

    # 'k' feeds only the node after the loop
    RUNS.clear()
    r3 = ex.run(wf.with_params(k=7))
    assert r3["post"] == 22.0
    assert dict(RUNS) == {"post": 1}

    # 'n' changes what the loop iterates over: the loop reruns, outer stays cached
    RUNS.clear()
    r4 = ex.run(wf.with_params(n=4))
    assert r4["acc"] == 6.0 and r4["history"] == [0.0, 1.0, 3.0, 6.0]
    assert r4["every3"] == [0.5, 3.5] and r4["window"] == [1.0, 3.0]
    assert r4.runs("r") == 1 and r4.runs("outer") == 0 and RUNS["outer"] == 0
    assert RUNS["inc"] == 4 and RUNS["inv"] == 1 and RUNS["every2"] == 2 and RUNS["post"] == 1


def test_changing_an_outer_value_read_by_a_body_node_reruns_the_loop():
    wf = make(
        {
            "r": {"type": "Range", "inputs": {"stop": 3}},
            "off": {"type": "Num", "inputs": {"value": {"param": "off"}}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {"s": {"type": "Add", "inputs": {"a": link("L.item"), "b": link("off.value")}}},
                "collect": {"out": link("s.sum")},
            },
        },
        {"out": "L.out"},
        {"off": {"default": 10}},
    )
    ex = Executor()
    assert ex.run(wf)["out"] == [10.0, 11.0, 12.0]
    RUNS.clear()
    assert ex.run(wf.with_params(off=20))["out"] == [20.0, 21.0, 22.0]
    assert dict(RUNS) == {"off": 1, "s": 3}


def test_loop_over_empty_sequence_returns_initial_carry_and_empty_lists():
    wf = make(
        {
            "r": {"type": "Range", "inputs": {"stop": 0}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 42},
                "body": {"inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}}},
                "next": {"acc": link("inc.sum")},
                "collect": {"h": link("inc.sum")},
            },
        },
        {"acc": "L.acc", "h": "L.h"},
    )
    r = Executor().run(wf)
    assert r["acc"] == 42 and r["h"] == []
    assert RUNS["inc"] == 0


def test_loop_with_side_effect_body_node_is_never_cached():
    wf = make(
        {
            "r": {"type": "Range", "inputs": {"stop": 3}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 0},
                "body": {
                    "inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}},
                    # a side effect nobody reads still runs on every iteration
                    "rec": {"type": "Record", "inputs": {"value": link("L.item")}},
                },
                "next": {"acc": link("inc.sum")},
            },
        },
        {"acc": "L.acc"},
    )
    ex = Executor()
    assert ex.run(wf)["acc"] == 3.0
    assert ex.run(wf)["acc"] == 3.0
    assert RECORDED == [0, 1, 2, 0, 1, 2]
    assert RUNS == {"inc": 6, "rec": 6}


def test_failure_inside_loop_names_body_node_and_iteration():
    wf = make(
        {
            "r": {"type": "Range", "inputs": {"stop": 5}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 0},
                "body": {
                    "inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}},
                    "boom": {
                        "type": "Fail",
                        "inputs": {"x": link("inc.sum")},
                        "when": {"start": 2},
                        "otherwise": {"y": link("inc.sum")},
                    },
                },
                "next": {"acc": link("boom.y")},
            },
            "after": {"type": "Add", "inputs": {"a": link("L.acc")}},
        },
        {"acc": "after.sum"},
    )
    r = Executor().run(wf)
    assert [(e.node, e.type, e.iteration) for e in r.errors] == [("boom", "Fail", 2)]
    assert "at iteration 2" in str(r.errors[0]) and "boom" in str(r.errors[0])
    assert RUNS == {"inc": 3, "boom": 1}
    assert r.stats["L"].status == "failed" and r.stats["after"].status == "skipped"
    with pytest.raises(KeyError, match="skipped because 'L' failed"):
        r["acc"]


def test_loop_step_events_count_iterations():
    ex = Executor()
    events: list = []
    ex.subscribe(events.append, on_run_thread=True)
    ex.run(loop_workflow())
    steps = [(e.node, e.index, e.count) for e in events if isinstance(e, ev.LoopStep)]
    assert steps == [("L", i, 6) for i in range(6)]
    skipped = [(e.node, e.iteration) for e in events if isinstance(e, ev.NodeFinished) and e.cached == "skipped"]
    assert sorted(skipped) == sorted(
        [("every2", i) for i in (1, 3, 5)] + [("every3", i) for i in (1, 2, 4, 5)] + [("window", i) for i in (0, 2, 4, 5)]
    )
    body_runs = [e.iteration for e in events if isinstance(e, ev.NodeStarted) and e.node == "inc"]
    assert body_runs == list(range(6))


def test_invariant_body_node_status_is_ran():
    r = Executor().run(loop_workflow())
    assert r.stats["inv"].status == "ran"


def _sum_over(over) -> Workflow:
    return make(
        {
            "L": {
                "type": "Loop",
                "over": over,
                "carry": {"acc": 0},
                "body": {"inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}}},
                "next": {"acc": link("inc.sum")},
            }
        },
        {"acc": "L.acc"},
        {"xs": {"default": [1, 2, 3]}},
    )


def test_loop_over_a_literal_or_a_parameter_list():
    ex = Executor()
    assert ex.run(_sum_over([1, 2, 3]))["acc"] == 6.0
    assert RUNS["inc"] == 3
    # the parameter's value equals the literal: same fingerprint, a cache hit
    RUNS.clear()
    wf = _sum_over({"param": "xs"})
    assert ex.run(wf)["acc"] == 6.0 and sum(RUNS.values()) == 0
    RUNS.clear()
    assert ex.run(wf.with_params(xs=[10, 20]))["acc"] == 30.0 and RUNS["inc"] == 2
    RUNS.clear()
    assert ex.run(_sum_over({"literal": [4, 5]}))["acc"] == 9.0 and RUNS["inc"] == 2
