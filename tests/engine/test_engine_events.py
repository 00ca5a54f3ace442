"""The event stream a subscriber sees, and cancellation (from a node and from a listener)."""

from __future__ import annotations

import pytest

from graphflow import Executor, Workflow
from graphflow.engine import events as ev
from tests.toy_nodes import RUNS, link, make


def simple() -> Workflow:
    return make(
        {
            "n": {"type": "Num", "inputs": {"value": 1}},
            "r": {"type": "Range", "inputs": {"stop": 3}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": link("n.value")},
                "body": {"inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}}},
                "next": {"acc": link("inc.sum")},
            },
        },
        {"acc": "L.acc"},
    )


def strip(events: list) -> list:
    """Events with their (non-deterministic) durations removed."""
    out = []
    for e in events:
        if isinstance(e, ev.NodeFinished):
            out.append(("finished", e.node, e.type, e.cached, e.iteration))
        elif isinstance(e, ev.NodeStarted):
            out.append(("started", e.node, e.type, e.iteration))
        elif isinstance(e, ev.LoopStep):
            out.append(("step", e.node, e.index, e.count))
        elif isinstance(e, ev.RunStarted):
            out.append(("run", e.nodes))
        elif isinstance(e, ev.RunFinished):
            out.append(("done", e.ok, e.cancelled))
        else:
            out.append(e)
    return out


def test_event_stream_of_a_run_and_of_a_cached_rerun():
    ex = Executor()
    events: list = []
    ex.subscribe(events.append, on_run_thread=True)
    r = ex.run(simple())
    assert r["acc"] == 4.0  # 1 + 0 + 1 + 2
    first = strip(events)
    # n and r have no mutual dependency: either may come first
    head = first[1:5]
    assert sorted(head[0::2]) == [("started", "n", "Num", None), ("started", "r", "Range", None)]
    assert first[0] == ("run", 3)
    assert first[5:] == [
        ("started", "L", "Loop", None),
        ("step", "L", 0, 3),
        ("started", "inc", "Add", 0),
        ("finished", "inc", "Add", None, 0),
        ("step", "L", 1, 3),
        ("started", "inc", "Add", 1),
        ("finished", "inc", "Add", None, 1),
        ("step", "L", 2, 3),
        ("started", "inc", "Add", 2),
        ("finished", "inc", "Add", None, 2),
        ("finished", "L", "Loop", None, None),
        ("done", True, False),
    ]
    assert all(e.seconds >= 0 for e in events if isinstance(e, (ev.NodeFinished, ev.RunFinished)))

    events.clear()
    ex.run(simple())
    second = strip(events)
    assert second[0][0] == "run" and second[-1] == ("done", True, False)
    finished = {e[1]: e[3] for e in second if e[0] == "finished"}
    assert finished["L"] == "memory"
    # the loop's inputs are not needed once the loop itself is a hit; if touched, they are hits too
    assert set(finished) <= {"n", "r", "L"} and set(finished.values()) == {"memory"}
    assert second[0][1] == len(finished)
    assert not any(e[0] in ("step", "started") and e[-1] is not None for e in second)  # no loop steps, no body nodes


def test_several_subscribers_each_get_every_event():
    ex = Executor()
    a: list = []
    b: list = []
    ex.subscribe(a.append)
    ex.subscribe(b.append)
    ex.run(simple())
    assert strip(a) == strip(b) and len(a) == 17  # delivered before run() returned: no flush needed


def test_every_event_reaches_a_listener_before_run_and_result_return():
    """An embedder subscribes, runs, then checks what its listener saw: run() and a submitted
    run's result() return once the run's last event (RunFinished) has been delivered, 20 runs in
    a row, each with all of its own events and none of the next run's."""
    import threading

    ex = Executor()
    seen: list = []
    threads: set = set()
    ex.subscribe(lambda e: (seen.append(e), threads.add(threading.current_thread().name)))
    for k in range(10):
        seen.clear()
        r = ex.run(simple())
        assert isinstance(seen[-1], ev.RunFinished) and seen[-1].run_id == r.run_id and len(seen) == (17 if k == 0 else 4)  # a cached re-run: the loop, a hit
        seen.clear()
        h = ex.submit(simple())
        h.result()
        assert h.done() and isinstance(seen[-1], ev.RunFinished) and seen[-1].run_id == h.id
    assert threads == {"graphflow-dispatch"}  # off the run's thread


def test_a_slow_listener_holds_back_run_not_the_loop():
    """A listener that blocks does not block the run's thread: the loop runs to its end (an
    on-run-thread hook sees RunFinished) while the listener is still stuck on the first event,
    and run() returns only after the listener caught up. A listener waiting for the result of
    the run it listens to gets it (it waits for the run, not for its own delivery)."""
    import threading

    ex = Executor()
    gate, executed = threading.Event(), threading.Event()
    slow: list = []
    results: list = []

    def stuck(e):
        gate.wait(10)
        slow.append(e)
        if isinstance(e, ev.RunStarted) and handles:
            results.append(handles[0].result(timeout=10).ok)

    ex.subscribe(stuck)
    ex.subscribe(lambda e: isinstance(e, ev.RunFinished) and executed.set(), on_run_thread=True)
    handles: list = []
    h = ex.submit(simple())
    handles.append(h)
    assert executed.wait(10)  # the whole run executed while the listener was stuck
    assert not h.done() and slow == []
    with pytest.raises(TimeoutError):
        h.result(timeout=0.2)
    gate.set()
    assert h.result(timeout=10).ok and isinstance(slow[-1], ev.RunFinished) and len(slow) == 17
    assert results == [True]


def cancel_chain() -> Workflow:
    return make(
        {
            "a": {"type": "Num", "inputs": {"value": 3}},
            "c": {"type": "CancelMe", "inputs": {"x": link("a.value")}},
            "b": {"type": "Add", "inputs": {"a": link("c.x"), "b": 1}},
            "d": {"type": "Add", "inputs": {"a": link("b.sum"), "b": 1}},
        },
        {"d": "d.sum", "a": "a.value"},
    )


def test_cancel_from_a_node_stops_before_the_next_node_and_next_run_works():
    ex = Executor()
    events: list = []
    ex.subscribe(events.append, on_run_thread=True)
    r = ex.run(cancel_chain())
    assert r.cancelled and not r.ok and r.errors == []
    assert dict(RUNS) == {"a": 1, "c": 1}
    assert [e.node for e in events if isinstance(e, ev.NodeStarted)] == ["a", "c"]
    assert strip(events)[-1] == ("done", False, True)
    assert r.outputs == {"a": 3.0}
    with pytest.raises(KeyError, match="cancelled"):
        r["d"]

    # the next run is not cancelled; what completed before is reused from the cache
    RUNS.clear()
    events.clear()
    r2 = ex.run(cancel_chain())
    assert not r2.cancelled and r2.ok
    assert r2["d"] == 5.0
    assert dict(RUNS) == {"b": 1, "d": 1}
    assert r2.stats["a"].status == "memory" and r2.stats["c"].status == "memory"
    assert strip(events)[-1] == ("done", True, False)


def test_cancel_from_a_listener_mid_loop_leaves_no_partial_loop_in_the_cache():
    wf = make(
        {
            "r": {"type": "Range", "inputs": {"stop": 6}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 0},
                "body": {"inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}}},
                "next": {"acc": link("inc.sum")},
            },
        },
        {"acc": "L.acc"},
    )
    ex = Executor()

    def stop_at_step_2(e):
        if isinstance(e, ev.LoopStep) and e.index == 2:
            ex.cancel()

    unsubscribe = ex.subscribe(stop_at_step_2, on_run_thread=True)  # acts at an exact step
    r = ex.run(wf)
    assert r.cancelled
    assert RUNS["inc"] == 3  # iterations 0, 1, 2 ran; the run stopped before iteration 3
    unsubscribe()

    RUNS.clear()
    r2 = ex.run(wf)
    assert r2.ok and r2["acc"] == 15.0
    assert RUNS["inc"] == 6  # the whole loop ran again: the cancelled one was not cached
    assert r2.stats["r"].status == "memory"


def test_cancel_from_a_listener_between_top_level_nodes():
    ex = Executor()
    wf = make(
        {
            "a": {"type": "Num", "inputs": {"value": 1}},
            "b": {"type": "Add", "inputs": {"a": link("a.value")}},
        },
        {"b": "b.sum"},
    )
    ex.subscribe(lambda e: ex.cancel() if isinstance(e, ev.NodeFinished) and e.node == "a" else None, on_run_thread=True)
    r = ex.run(wf)
    assert r.cancelled and dict(RUNS) == {"a": 1}
