"""The short paths of a cold run (issue 29, "the engine's own cost", second pass) keep what the
long ones give: the same fingerprints (so disk caches made before stay valid), the same node
stats, the same memory-cache entries, and no cache lookup when there is nothing to find. Speed
itself is measured in bench/bench_engine.py."""

from __future__ import annotations

import pytest

import graphflow.node.builtin
from graphflow import Executor, Workflow
from graphflow.cache.memory import MemoryCache
from graphflow.cache.run_caches import RunCaches
from graphflow.engine import model_manager
from graphflow.engine.fingerprint import Fingerprints, RunOptions, _plain
from graphflow.engine.plan import shape
from graphflow.engine.results import NodeStat
from graphflow.node.registry import Registry


def registry() -> Registry:
    reg = Registry()
    reg.register_module(graphflow.node.builtin)
    return reg


def mixed() -> dict:
    """Every kind of top-level input a fingerprint reads: literals only, one link, two links, a
    list of links, an empty list, a parameter, a side effect and a context value (SaveText)."""
    return {
        "format": 1,
        "params": {"x0": {"default": 2.0, "type": "float"}},
        "nodes": {
            "lit": {"type": "Value", "inputs": {"value": 1.5}},
            "par": {"type": "Value", "inputs": {"value": {"param": "x0"}}},
            "one": {"type": "Math", "inputs": {"a": {"from": "lit.value"}, "b": 3, "op": "mul"}},
            "two": {"type": "Math", "inputs": {"a": {"from": "one.result"}, "b": {"from": "par.value"}}},
            "many": {"type": "Value", "inputs": {"value": [{"from": "two.result"}, {"from": "one.result"}]}},
            "none": {"type": "Value", "inputs": {"value": []}},
            "text": {"type": "Text", "inputs": {"template": "$value", "value": {"from": "many.value"}}},
            "save": {"type": "SaveText", "inputs": {"text": {"from": "text.text"}}},
            "after": {"type": "Math", "inputs": {"a": {"from": "two.result"}, "b": {"from": "one.result"}, "op": "sub"}},
        },
        "outputs": {"x": "after.result", "t": "text.text", "saved": "save.path", "none": "none.value"},
    }


def test_plain_nodes_get_the_fingerprint_the_general_hash_gives():
    bound = Workflow.from_dict(mixed(), registry()).bind()
    members = shape(bound.checked).members
    fast = Fingerprints(bound, RunOptions(), "token")
    fast.all(members)
    slow = Fingerprints(bound, RunOptions(), "token")
    for m in members:  # member() hashes each node through _hash, part by part
        slow.member(m)
    assert fast.fps == slow.fps and None not in fast.fps.values()
    assert fast.tainted == slow.tainted == {"save"}
    recipes = bound.checked.memo.recipes
    plain = {m for m in members if _plain(recipes[m]) is not None}
    # a parameter's reader (par), a side effect with a context value (save) take the general path;
    # the others (a link to par's output included) are joined from segments
    assert plain == {"lit", "one", "two", "many", "none", "text", "after"}


def test_a_fresh_executor_plans_without_asking_the_cache(monkeypatch, tmp_path):
    asked = []
    real = RunCaches.lookup
    monkeypatch.setattr(RunCaches, "lookup", lambda self, fp, m, ports: asked.append(m) or real(self, fp, m, ports))
    ex = Executor()
    wf = Workflow.from_dict(mixed(), registry())
    assert ex.run(wf, params={"x0": 2.0}, out_dir=tmp_path)["x"] == (4.5 + 2.0) - 4.5
    assert asked == []  # nothing to find: no walk, every member a step (it asked 9 times)
    r = ex.run(wf, params={"x0": 5.0}, out_dir=tmp_path)
    assert r["x"] == 5.0 and "one" in asked and "save" not in asked  # now it walks, asking of pure members
    assert r.stats["one"].status == "memory" and r.stats["two"].runs == 1


def test_small_entries_reach_the_memory_cache_when_the_run_ends(tmp_path):
    ex = Executor()
    wf = Workflow.from_dict(mixed(), registry())
    r = ex.run(wf, out_dir=tmp_path)
    assert r.ok and len(ex.memory) == 8 and isinstance(ex.memory, MemoryCache)  # every pure member
    assert r.stats["one"] == NodeStat("Math", 1, 0, r.stats["one"].seconds, "ran")
    again = ex.run(wf, out_dir=tmp_path)
    # loaded from memory: what the outputs and the side effect (save, which runs again) read
    assert {m: s.status for m, s in again.stats.items()} == {"after": "memory", "text": "memory", "none": "memory",
                                                           "save": "ran"}


def test_only_a_member_that_may_pin_a_model_starts_the_pin_checks(monkeypatch, tmp_path):
    asked = []
    real = model_manager.ModelSession.holds_pins
    monkeypatch.setattr(model_manager.ModelSession, "holds_pins", lambda self: asked.append(1) or real(self))
    assert Executor().run(Workflow.from_dict(mixed(), registry()), out_dir=tmp_path)["x"] == 2.0
    assert asked == []  # asked after each of the 9 steps, though no node can reach a model


@pytest.mark.parametrize("listening", [False, True])
def test_a_failing_node_on_the_short_path_reports_as_before(listening, tmp_path):
    doc = mixed()
    doc["nodes"]["two"]["inputs"]["op"] = "div"
    doc["params"]["x0"]["default"] = 0.0
    seen: list = []
    r = Executor().run(Workflow.from_dict(doc, registry()), out_dir=tmp_path, on_event=seen.append if listening else None)
    assert not r.ok and [e.node for e in r.errors] == ["two"] and r.errors[0].exc_type == "ZeroDivisionError"
    assert r.stats["two"].status == "failed" and r.stats["after"].status == "skipped"
    assert r.stats["one"].status == "ran" and r.stats["one"].runs == 1
    assert r.missing["x"] == "skipped because 'two' failed"
    assert not listening or [e.node for e in seen if type(e).__name__ == "NodeFinished"][:2] == ["lit", "par"]
