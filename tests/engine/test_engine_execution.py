"""Executor behaviour on plain (loop-free) graphs: order, pruning, re-run counts across parameter
changes, side effects, failures, and a very long chain. Every assertion is about values and counts
(toy_nodes.RUNS, RunResult.runs), never about time."""

from __future__ import annotations

import pytest

from graphflow import Executor, NodeError, Workflow
from graphflow.engine import events as ev
from tests.toy_nodes import RECORDED, RUNS, link, make


def started(events: list) -> list[str]:
    return [e.node for e in events if isinstance(e, ev.NodeStarted) and e.iteration is None]


# --- a diamond with a pruned side branch -------------------------------------------------------

DIAMOND = {
    # declared in an order that is NOT a valid execution order
    "d": {"type": "Add", "inputs": {"a": link("b.sum"), "b": link("c.sum")}},
    "c": {"type": "Add", "inputs": {"a": link("a.value"), "b": {"param": "cb"}}},
    "b": {"type": "Add", "inputs": {"a": link("a.value"), "b": {"param": "bb"}}},
    "a": {"type": "Num", "inputs": {"value": {"param": "start"}}},
    # nothing the outputs name needs these two
    "unused": {"type": "Num", "inputs": {"value": 99}},
    "unused_child": {"type": "Add", "inputs": {"a": link("a.value"), "b": link("unused.value")}},
}
DIAMOND_PARAMS = {"start": {"default": 1}, "bb": {"default": 10}, "cb": {"default": 20}}


def diamond() -> Workflow:
    return make(DIAMOND, {"d": "d.sum"}, DIAMOND_PARAMS)


def test_order_respects_dependencies_and_unneeded_nodes_never_run():
    ex = Executor()
    events: list = []
    ex.subscribe(events.append, on_run_thread=True)
    r = ex.run(diamond())
    assert r.ok and r["d"] == 32.0  # (1+10) + (1+20)
    order = started(events)
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order[0] == "a" and order[-1] == "d"
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("a") < order.index("c") < order.index("d")
    # pruning: neither the node nor its consumer ran, nor appear in the stats
    assert RUNS["unused"] == 0 and RUNS["unused_child"] == 0
    assert "unused" not in r.stats and "unused_child" not in r.stats
    assert dict(RUNS) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert isinstance(events[0], ev.RunStarted) and events[0].nodes == 4


def test_side_effect_order_follows_links_not_declaration_order():
    wf = make(
        {
            "r3": {"type": "Record", "inputs": {"value": link("r2.count")}},
            "r2": {"type": "Record", "inputs": {"value": link("r1.count")}},
            "r1": {"type": "Record", "inputs": {"value": "first"}},
        },
        {"n": "r3.count"},
    )
    r = Executor().run(wf)
    assert RECORDED == ["first", 1, 2]
    assert r["n"] == 3


def test_same_executor_reruns_only_what_changed():
    ex = Executor()
    wf = diamond()

    r1 = ex.run(wf)
    assert r1["d"] == 32.0
    assert {n: r1.runs(n) for n in "abcd"} == {"a": 1, "b": 1, "c": 1, "d": 1}

    # identical second run: nothing executes, everything comes from memory
    RUNS.clear()
    r2 = ex.run(wf)
    assert r2["d"] == 32.0
    assert sum(RUNS.values()) == 0
    assert {n: r2.runs(n) for n in "abcd"} == {"a": 0, "b": 0, "c": 0, "d": 0}
    assert r2.stats["d"].status == "memory" and r2.stats["d"].hits == 1
    # the ancestors of a cache hit are not needed at all (or, at most, are cache hits themselves)
    assert all(s.status == "memory" and s.runs == 0 for s in r2.stats.values())

    # a parameter that feeds only 'c': exactly c and its descendant d rerun
    RUNS.clear()
    r3 = ex.run(wf.with_params(cb=25))
    assert r3["d"] == 37.0
    assert dict(RUNS) == {"c": 1, "d": 1}
    assert r3.runs("a") == 0 and r3.runs("b") == 0 and r3.runs("c") == 1 and r3.runs("d") == 1

    # same change passed through Executor.run(params=...): all cached now
    RUNS.clear()
    r4 = ex.run(wf, {"cb": 25})
    assert r4["d"] == 37.0 and sum(RUNS.values()) == 0

    # the root parameter: everything downstream of 'a' reruns
    RUNS.clear()
    r5 = ex.run(wf.with_params(start=2))
    assert r5["d"] == 34.0
    assert dict(RUNS) == {"a": 1, "b": 1, "c": 1, "d": 1}

    # back to the first settings: still cached
    RUNS.clear()
    assert ex.run(wf)["d"] == 32.0
    assert sum(RUNS.values()) == 0


def test_value_read_by_a_cache_hit_and_by_a_node_that_must_run():
    """x feeds y (pure, cached on the second run) and rec (a side effect, runs every time): the
    second run must still hand x's value to rec."""
    wf = make(
        {
            "x": {"type": "Num", "inputs": {"value": 4}},
            "y": {"type": "Add", "inputs": {"a": link("x.value"), "b": 1}},
            "rec": {"type": "Record", "inputs": {"value": link("x.value")}},
        },
        {"y": "y.sum", "n": "rec.count"},
    )
    ex = Executor()
    r1 = ex.run(wf)
    r2 = ex.run(wf)
    assert r1.errors == [] and r2.errors == []
    assert (r1["y"], r1["n"], r2["y"], r2["n"]) == (5.0, 1, 5.0, 2)
    assert RECORDED == [4.0, 4.0]
    assert RUNS == {"x": 1, "y": 1, "rec": 2}


def test_a_new_executor_has_its_own_empty_cache():
    Executor().run(diamond())
    RUNS.clear()
    Executor().run(diamond())
    assert dict(RUNS) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_side_effect_nodes_run_every_time_pure_parents_do_not():
    wf = make(
        {
            "n": {"type": "Num", "inputs": {"value": 5}},
            "rec": {"type": "Record", "inputs": {"value": link("n.value")}},
            # depends on a side effect, so it cannot be cached either
            "after": {"type": "Add", "inputs": {"a": link("rec.count"), "b": 0.5}},
        },
        {"count": "rec.count", "after": "after.sum"},
    )
    ex = Executor()
    counts = []
    for _ in range(3):
        r = ex.run(wf)
        counts.append((r["count"], r["after"], r.runs("n"), r.runs("rec"), r.runs("after")))
    assert counts == [(1, 1.5, 1, 1, 1), (2, 2.5, 0, 1, 1), (3, 3.5, 0, 1, 1)]
    assert RUNS == {"n": 1, "rec": 3, "after": 3}
    assert RECORDED == [5.0, 5.0, 5.0]


def test_output_list_form_returns_every_output_of_a_node():
    wf = make({"n": {"type": "Num", "inputs": {"value": 4}}}, ["n"])
    assert Executor().run(wf)["n"] == {"value": 4.0}


def test_fan_in_list_of_links():
    wf = make(
        {
            "x": {"type": "Num", "inputs": {"value": 1}},
            "y": {"type": "Num", "inputs": {"value": 2}},
            "v": {"type": "Value", "inputs": {"value": [link("x.value"), link("y.value"), link("x.value")]}},
        },
        {"v": "v.value"},
    )
    r = Executor().run(wf)
    assert r["v"] == [1.0, 2.0, 1.0]
    assert RUNS == {"x": 1, "y": 1}


# --- failures ------------------------------------------------------------------------------------

FAILING = {
    "ok": {"type": "Num", "inputs": {"value": 2}},
    "ok2": {"type": "Add", "inputs": {"a": link("ok.value"), "b": 3}},
    "bad": {"type": "Fail", "inputs": {"x": link("ok.value")}},
    "after": {"type": "Add", "inputs": {"a": link("bad.y")}},
    "after2": {"type": "Add", "inputs": {"a": link("after.sum")}},
}


def test_failure_reports_node_and_spares_independent_branch():
    wf = make(FAILING, {"good": "ok2.sum", "bad": "after2.sum", "direct": "bad.y"})
    r = Executor().run(wf)
    assert not r.ok and not r.cancelled
    assert len(r.errors) == 1
    err = r.errors[0]
    assert isinstance(err, NodeError)
    assert (err.node, err.type, err.iteration) == ("bad", "Fail", None)
    assert "boom" in err.message and "RuntimeError" in err.message
    assert str(err) == "node 'bad' (Fail) failed: RuntimeError: boom"
    # the independent branch still produced its output
    assert r.outputs == {"good": 5.0}
    assert r["good"] == 5.0
    # descendants of the failed node were skipped, not run
    assert RUNS["after"] == 0 and RUNS["after2"] == 0
    assert r.stats["bad"].status == "failed"
    assert r.stats["after"].status == "skipped" and r.stats["after2"].status == "skipped"
    # asking for a missing output says why
    with pytest.raises(KeyError, match=r"output 'direct' was not produced: node 'bad' \(Fail\) failed: RuntimeError: boom"):
        r["direct"]
    with pytest.raises(KeyError, match=r"output 'bad' was not produced: skipped because"):
        r["bad"]
    with pytest.raises(KeyError, match="unknown output"):
        r["nonexistent"]


def test_failed_node_is_not_cached_and_retried_next_run():
    ex = Executor()
    wf = make(FAILING, {"good": "ok2.sum", "bad": "after2.sum"})
    ex.run(wf)
    ex.run(wf)
    assert RUNS == {"ok": 1, "ok2": 1, "bad": 2}


def test_failure_event_is_emitted():
    ex = Executor()
    events: list = []
    ex.subscribe(events.append, on_run_thread=True)
    r = ex.run(make(FAILING, {"bad": "after2.sum"}))
    failed = [e for e in events if isinstance(e, ev.NodeFailedEvent)]
    assert failed == [ev.NodeFailedEvent("bad", "Fail", "RuntimeError: boom", r.run_id)]
    assert events[-1].ok is False and events[-1].cancelled is False


def test_linked_value_out_of_range_fails_at_run_time_naming_node_and_input():
    # Num.value must be <= 1e6; the validator cannot know what a link will carry
    wf = make(
        {
            "big": {"type": "Add", "inputs": {"a": 1e6, "b": 1e6}},
            "n": {"type": "Num", "inputs": {"value": link("big.sum")}},
        },
        {"v": "n.value"},
    )
    r = Executor().run(wf)
    assert [(e.node, e.type) for e in r.errors] == [("n", "Num")]
    assert "input 'value'" in r.errors[0].message and "big.sum" in r.errors[0].message
    assert RUNS == {"big": 1}


def test_unsubscribe_stops_events():
    ex = Executor()
    events: list = []
    unsubscribe = ex.subscribe(events.append, on_run_thread=True)
    ex.run(diamond())
    n = len(events)
    unsubscribe()
    ex.run(diamond())
    assert len(events) == n


# --- scale ---------------------------------------------------------------------------------------


def test_ten_thousand_node_chain_validates_and_runs_without_recursion_error():
    n = 10_000
    nodes = {"n0": {"type": "Num", "inputs": {"value": 0.5}}}
    prev = "n0.value"
    for i in range(1, n):
        nodes[f"n{i}"] = {"type": "Add", "inputs": {"a": link(prev), "b": 1}}
        prev = f"n{i}.sum"
    wf = make(nodes, {"x": prev, "first": "n1.sum"})
    assert wf.problems() == []
    ex = Executor()
    r = ex.run(wf)
    assert r.ok
    assert r["x"] == 0.5 + (n - 1)
    assert r["first"] == 1.5
    assert sum(RUNS.values()) == n
    # and a second run is all cache hits
    RUNS.clear()
    r2 = ex.run(wf)
    assert r2["x"] == 0.5 + (n - 1) and sum(RUNS.values()) == 0
