"""Memory: intermediate values are dropped after their last consumer ran, and the in-memory LRU
cache keeps within its byte budget."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Annotated, Any

import pytest
from pydantic import Field

from graphflow import Executor, Inputs, Node, Outputs, Workflow
from graphflow.cache.memory import MemoryCache, nbytes
from graphflow.engine import events as ev
from tests import toy_nodes
from tests.toy_nodes import RUNS, Vec, link, toy_registry

REFS: list[weakref.ref] = []


class WeakVec(Node, name="WeakVec", category="test"):
    """MakeVec that keeps a weak reference to every tensor it returns."""

    class In(Inputs):
        value: float = Field(1.0)
        size: int = Field(4, ge=1)

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field()

    def run(self, i, ctx):
        import torch

        t = torch.full((i.size,), float(i.value))
        REFS.append(weakref.ref(t))
        return {"vec": t}


@pytest.fixture(autouse=True)
def _reset():
    toy_nodes.reset()
    REFS.clear()
    yield
    toy_nodes.reset()
    REFS.clear()


def chain(outputs) -> Workflow:
    reg = toy_registry()
    reg.register(WeakVec)
    return Workflow.from_dict(
        {
            "format": 1,
            "nodes": {
                "make": {"type": "WeakVec", "inputs": {"value": 2, "size": 8}},
                "mid": {"type": "ScaleVec", "inputs": {"vec": link("make.vec"), "factor": 3}},
                "last": {"type": "ScaleVec", "inputs": {"vec": link("mid.vec"), "offset": 1}},
            },
            "outputs": outputs,
        },
        reg,
    )


def test_intermediate_value_released_after_last_consumer_ran():
    ex = Executor(memory_budget=0)  # the cache keeps no tensor: only the run itself holds values
    alive_when_last_started = []

    def probe(e):
        if isinstance(e, ev.NodeStarted) and e.node == "last":
            gc.collect()
            alive_when_last_started.append(REFS[0]() is not None)

    ex.subscribe(probe, on_run_thread=True)
    r = ex.run(chain({"out": "last.vec"}))
    assert r["out"].tolist() == [7.0] * 8
    assert len(REFS) == 1
    # make's only consumer is mid: by the time 'last' starts, make's tensor is gone
    assert alive_when_last_started == [False]
    assert len(ex.memory) == 0 and ex.memory.used == 0
    out_ref = weakref.ref(r["out"])
    gc.collect()
    assert REFS[0]() is None
    assert out_ref() is not None  # the output is alive in the result
    del r
    gc.collect()
    assert out_ref() is None


def test_output_value_kept_even_when_another_node_consumes_it():
    ex = Executor(memory_budget=0)
    r = ex.run(chain({"first": "make.vec", "out": "last.vec"}))
    assert r["first"].tolist() == [2.0] * 8
    assert r["first"] is REFS[0]()
    assert r["out"].tolist() == [7.0] * 8


def test_budget_zero_means_every_run_recomputes_tensors():
    ex = Executor(memory_budget=0)
    wf = chain({"out": "last.vec"})
    ex.run(wf)
    ex.run(wf)
    assert RUNS == {"mid": 2, "last": 2}
    assert len(REFS) == 2


def test_default_budget_keeps_intermediates_for_the_next_run():
    ex = Executor()
    wf = chain({"out": "last.vec"})
    ex.run(wf)
    gc.collect()
    assert REFS[0]() is not None  # held by the memory cache
    assert len(ex.memory) == 3 and ex.memory.used == 3 * 8 * 4
    RUNS.clear()
    r = ex.run(wf)
    assert r["out"].tolist() == [7.0] * 8 and sum(RUNS.values()) == 0 and len(REFS) == 1


def test_executor_memory_stays_within_budget():
    ex = Executor(memory_budget=70)  # room for two of the three 32-byte entries
    ex.run(chain({"out": "last.vec"}))
    assert len(ex.memory) == 2 and ex.memory.used == 64


# --- MemoryCache unit tests ----------------------------------------------------------------------


class Blob:
    def __init__(self, n: int) -> None:
        self.nbytes = n


def test_lru_evicts_least_recently_used_by_bytes():
    c = MemoryCache(100)
    c.put("a", {"x": Blob(40)})
    c.put("b", {"x": Blob(40)})
    assert c.used == 80 and len(c) == 2
    assert c.get("a")["x"].nbytes == 40  # 'a' is now the most recently used
    c.put("c", {"x": Blob(40)})
    assert "b" not in c and "a" in c and "c" in c
    assert c.used == 80 and len(c) == 2
    assert c.get("b") is None
    c.put("d", {"x": Blob(90)})  # evicts both others
    assert list(c._entries) == ["d"] and c.used == 90


def test_entry_larger_than_budget_is_not_stored_and_evicts_nothing():
    c = MemoryCache(100)
    c.put("a", {"x": Blob(60)})
    c.put("huge", {"x": Blob(101)})
    assert "huge" not in c and "a" in c and c.used == 60


def test_replacing_a_key_updates_used_bytes():
    c = MemoryCache(100)
    c.put("a", {"x": Blob(60)})
    c.put("a", {"x": Blob(10)})
    assert c.used == 10 and len(c) == 1
    c.clear()
    assert c.used == 0 and len(c) == 0


def test_zero_size_entries_do_not_count():
    c = MemoryCache(0)
    c.put("scalar", {"sum": 3.0})
    c.put("tensor", {"x": Blob(1)})
    assert "scalar" in c and "tensor" not in c and c.used == 0


def test_nbytes_of_nested_values():
    import torch

    assert nbytes(torch.zeros(10, dtype=torch.float32)) == 40
    assert nbytes({"a": [Blob(3), (Blob(4), 7)], "b": "text", "c": object()}) == 7 + sys.getsizeof("text")
    assert nbytes(None) == 0


def test_entries_of_numbers_keep_within_max_small_and_a_hit_is_kept_longest():
    c = MemoryCache(0, max_small=4)
    for i in range(4):
        c.put(f"k{i}", {"v": i})
    assert len(c) == 4 and c.get("k0") == {"v": 0}  # k0 is now the youngest but one
    c.put_scalars({"k4": {"v": 4}})  # five: the older half goes
    assert len(c) == 2 and "k0" in c and "k4" in c and "k1" not in c and c.used == 0


def test_get_many_gives_each_entry_in_order_repeats_included_or_none_if_one_is_missing():
    c = MemoryCache(100)
    c.put("a", {"v": 1.0})
    c.put("t", {"x": Blob(10)})
    c.put("b", {"v": 2.0})
    assert c.get_many(["b", "t", "a", "b"]) == [{"v": 2.0}, {"x": c.get("t")["x"]}, {"v": 1.0}, {"v": 2.0}]
    assert list(c._small) == ["b", "a"]  # the order asked: the last asked is the youngest
    assert c.get_many(["a", "gone"]) is None and "a" in c
    assert c.holds_all(["a", "b", "t"]) and not c.holds_all(["a", "gone"])


def test_text_counts_against_the_budget_and_is_evicted_like_a_tensor():
    """Text held nothing the budget counted, so megabytes of it stayed while tensors were evicted."""
    c = MemoryCache(3 << 20)
    for k in range(4):
        c.put(f"text{k}", {"caption": "x" * (1 << 20)})
    assert c.used <= 3 << 20 and "text0" not in c and "text3" in c
    c.put("tensor", {"x": Blob(2 << 20)})
    assert c.used <= 3 << 20 and "text2" not in c and "tensor" in c
