"""Which thread a run executes on, and what that must not change: ``Executor.run`` executes on the
calling thread, in its turn in the same queue as ``submit``; runs never overlap; cancel, Ctrl-C
(a real SIGINT) and a KeyboardInterrupt raised inside a node leave the run cancelled and the
executor usable."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from pydantic import Field

from graphflow import Context, Executor, Inputs, Node, Outputs, Registry, Workflow
from graphflow import notebook as gn
from graphflow.atomic import write_new
from graphflow.cache.disk import DiskCache
from graphflow.engine import events as ev
from tests.toy_nodes import toy_registry

LOG: list[tuple[str, str, str]] = []  # (enter|exit, tag, thread name)
GATES: dict[str, threading.Event] = {}  # tag -> held until set
AT_STEP: dict[int, object] = {}  # loop step -> what Probe does there
_active = [0, 0]  # runs inside a Probe now, the most at once


class Probe(Node, name="ThreadProbe", category="test", pure=False, uses=("iteration",)):
    """Records which thread runs it and whether another Probe runs at the same time; waits on its
    tag's gate; at a loop step named in AT_STEP does what is asked there (send SIGINT...)."""

    class In(Inputs):
        x: float = Field(0.0, description="anything")
        tag: str = Field("", description="names this call in the log")

    class Out(Outputs):
        y: float = Field(description="x + 1")

    def run(self, i, ctx: Context):
        _active[0] += 1
        _active[1] = max(_active)
        LOG.append(("enter", i.tag, threading.current_thread().name))
        try:
            gate = GATES.get(i.tag)
            if gate is not None:
                assert gate.wait(30), "the test never opened the gate"
            action = AT_STEP.get(ctx.iteration)
            if action is not None:
                action()
            time.sleep(0.01)
            return {"y": i.x + 1}
        finally:
            LOG.append(("exit", i.tag, threading.current_thread().name))
            _active[0] -= 1


class WriteFile(Node, name="ThreadWriteFile", category="test", pure=False, uses=("out_dir",)):
    """Writes a file in two halves through graphflow.atomic, sending this process SIGINT between
    them when asked: an interrupt in the middle of a write."""

    class In(Inputs):
        x: float = Field(0.0, description="after what")
        interrupt: bool = Field(False, description="send SIGINT mid-write")

    class Out(Outputs):
        path: str = Field(description="the file written")

    def run(self, i, ctx: Context):
        def write(f):
            f.write(b"first half ")
            if i.interrupt:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here, in this thread
            f.write(b"second half")
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        return {"path": str(write_new(ctx.out_dir, "written.txt", write, numbered=True))}


REG = Registry([*toy_registry(), Probe, WriteFile])


@pytest.fixture(autouse=True)
def clean():
    LOG.clear()
    GATES.clear()
    AT_STEP.clear()
    _active[:] = [0, 0]
    yield
    for g in GATES.values():
        g.set()


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler during the test, even in a process started with SIGINT ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def probe(tag: str = "p", x: float = 0.0) -> Workflow:
    return Workflow.from_dict({"format": 1, "nodes": {"p": {"type": "ThreadProbe", "inputs": {"x": x, "tag": tag}}},
                               "outputs": {"y": "p.y"}}, REG)


def loop(n: int, tag: str = "step") -> Workflow:
    return Workflow.from_dict({"format": 1, "nodes": {
        "r": {"type": "Range", "inputs": {"stop": n}},
        "loop": {"type": "Loop", "over": {"from": "r.values"}, "carry": {"acc": 0.0},
                 "body": {"p": {"type": "ThreadProbe", "inputs": {"x": {"from": "loop.acc"}, "tag": tag}}},
                 "next": {"acc": {"from": "p.y"}}}}, "outputs": {"acc": "loop.acc"}}, REG)


def entered(tag: str | None = None) -> list[str]:
    return [t for k, t, _ in LOG if k == "enter" and (tag is None or t == tag)]


def assert_usable(ex: Executor) -> None:
    """Nothing left running, the busy lock free: a run here and a submitted run both complete."""
    assert ex._current is None and not ex._pending
    assert ex.run(probe("after", 1.0))["y"] == 2.0
    assert ex.submit(probe("after-submit", 2.0)).result(timeout=30)["y"] == 3.0


# --- where a run executes ---------------------------------------------------------------------

def test_run_executes_on_the_calling_thread_and_submit_on_the_worker():
    ex = Executor()
    assert ex.run(probe("main"))["y"] == 1.0
    assert ex._worker is None  # nothing queued: no worker thread was even started
    t = threading.Thread(target=lambda: ex.run(probe("other")), name="a-caller")
    t.start()
    t.join(30)
    ex.submit(probe("queued")).result(timeout=30)
    threads = {tag: name for k, tag, name in LOG if k == "enter"}
    assert threads == {"main": threading.main_thread().name, "other": "a-caller", "queued": "graphflow-work"}


def test_run_events_and_listeners_work_as_for_a_submitted_run():
    ex = Executor()
    sync, seen_async, mine = [], [], []
    ex.subscribe(lambda e: sync.append((type(e).__name__, threading.current_thread().name)), on_run_thread=True)
    ex.subscribe(seen_async.append)
    r = ex.run(loop(3), on_event=mine.append)
    assert r["acc"] == 3.0 and r.ok and not r.cancelled
    assert ex.flush(10)
    kinds = [type(e).__name__ for e in mine]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished" and kinds.count("LoopStep") == 3
    assert [type(e).__name__ for e in seen_async] == kinds and [k for k, _ in sync] == kinds
    assert {name for _, name in sync} == {threading.main_thread().name}  # run-thread hooks: on the caller's
    assert len({e.run_id for e in mine}) == 1 and mine[0].run_id == r.run_id


def test_a_run_called_from_a_run_thread_hook_nests_inline_on_that_thread():
    ex = Executor()
    inner, started = [], []

    def hook(e):
        if isinstance(e, ev.RunStarted) and not started:
            started.append(e.run_id)
            inner.append(ex.run(probe("inner", 10.0)))
    ex.subscribe(hook, on_run_thread=True)
    assert ex.run(probe("outer"))["y"] == 1.0
    assert inner[0]["y"] == 11.0
    assert {name for _, _, name in LOG} == {threading.main_thread().name}
    assert_usable(ex)


def test_notebook_run_executes_on_the_cells_thread():
    ex = Executor()
    assert gn.run(probe("cell"), executor=ex, progress=False)["y"] == 1.0
    assert LOG[0] == ("enter", "cell", threading.main_thread().name) and ex._worker is None


# --- one run at a time, in order ----------------------------------------------------------------

def test_submitted_and_run_calls_from_many_threads_never_overlap_and_keep_queue_order():
    ex = Executor()
    GATES["first"] = threading.Event()
    a = ex.submit(probe("first"))
    while entered() != ["first"]:  # the worker holds the turn, inside the first run
        time.sleep(0.01)
    b = ex.submit(probe("second"))
    results = {}
    callers = []
    for k in range(3):  # queued behind "second", each on its own thread, in this order
        t = threading.Thread(target=lambda k=k: results.setdefault(k, ex.run(probe(f"run{k}"))), name=f"caller{k}")
        t.start()
        callers.append(t)
        while len(ex._pending) < 2 + k:
            time.sleep(0.01)
    c = ex.submit(probe("last"))  # after the three run() calls: runs after them
    GATES["first"].set()
    for t in callers:
        t.join(30)
    assert a.result(30).ok and b.result(30).ok and c.result(30).ok
    assert [results[k]["y"] for k in range(3)] == [1.0, 1.0, 1.0]
    assert _active[1] == 1  # never two runs inside a node at once
    assert entered() == ["first", "second", "run0", "run1", "run2", "last"]
    threads = {tag: name for k, tag, name in LOG if k == "enter"}
    assert [threads[f"run{k}"] for k in range(3)] == ["caller0", "caller1", "caller2"]
    assert threads["first"] == threads["second"] == threads["last"] == "graphflow-work"
    assert_usable(ex)


def test_a_submit_waits_for_a_run_already_executing_on_its_callers_thread():
    ex = Executor()
    GATES["mine"] = threading.Event()
    t = threading.Thread(target=lambda: ex.run(probe("mine")), name="caller")
    t.start()
    while entered() != ["mine"]:
        time.sleep(0.01)
    h = ex.submit(probe("submitted"))
    time.sleep(0.2)
    assert h.status == "queued" and entered() == ["mine"]  # the worker waits for the busy lock
    GATES["mine"].set()
    t.join(30)
    assert h.result(30).ok and entered() == ["mine", "submitted"] and _active[1] == 1


# --- cancelling -----------------------------------------------------------------------------------

def test_cancel_from_another_thread_stops_a_run_on_the_callers_thread_at_its_next_step():
    ex = Executor()
    at_step_3, asked = threading.Event(), threading.Event()
    AT_STEP[3] = lambda: (at_step_3.set(), asked.wait(30))  # step 3 ends once the other thread has cancelled
    canceller = threading.Thread(target=lambda: (at_step_3.wait(30), ex.cancel(), asked.set()))
    canceller.start()
    r = ex.run(loop(500))
    canceller.join(30)
    assert r.cancelled and not r.ok and r.missing == {"acc": "the run was cancelled"}
    assert len(entered("step")) == 4  # step 3 finished; no step after it began
    assert_usable(ex)


def test_a_run_cancelled_while_it_waits_its_turn_never_starts():
    ex = Executor()
    GATES["first"] = threading.Event()
    a = ex.submit(probe("first"))
    while entered() != ["first"]:
        time.sleep(0.01)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", ex.run(probe("waiting"))))
    t.start()
    while len(ex._pending) < 1:
        time.sleep(0.01)
    ex.cancel()  # cancels "first" (running) and the waiting run
    t.join(10)
    assert not t.is_alive() and out["r"].cancelled
    GATES["first"].set()
    assert a.result(30).ok  # "first" had begun its only node: it finishes it
    assert entered("waiting") == []
    assert_usable(ex)


# --- Ctrl-C: a real SIGINT --------------------------------------------------------------------------

def test_ctrl_c_cancels_the_run_at_its_next_step_then_raises(sigint_raises, capsys):
    ex = Executor()
    events = []
    ex.subscribe(events.append, on_run_thread=True)
    AT_STEP[3] = lambda: os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        ex.run(loop(500))
    assert len(entered("step")) == 4  # the node that got the signal finished; no step after it
    assert [e for e in LOG if e[0] == "exit"][-1][1] == "step"
    last = events[-1]
    assert isinstance(last, ev.RunFinished) and last.cancelled and not last.ok
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    assert "interrupted: the run stops at its next node or loop step" in capsys.readouterr().err
    assert_usable(ex)


def test_a_second_ctrl_c_raises_inside_the_node_and_the_run_ends_cancelled(sigint_raises):
    ex = Executor()
    events = []
    ex.subscribe(events.append, on_run_thread=True)

    def twice():
        os.kill(os.getpid(), signal.SIGINT)  # the first: cancel at the next step
        os.kill(os.getpid(), signal.SIGINT)  # the second: now, here
        time.sleep(1)
        raise AssertionError("the second SIGINT did not interrupt the node")
    AT_STEP[2] = twice
    with pytest.raises(KeyboardInterrupt):
        ex.run(loop(500))
    assert len(entered("step")) == 3 and LOG[-1][0] == "exit"  # the node's own finally ran
    last = events[-1]
    assert isinstance(last, ev.RunFinished) and last.cancelled
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert_usable(ex)


def test_a_keyboardinterrupt_mid_write_leaves_no_file_and_a_complete_cache(tmp_path):
    """Another SIGINT handler (one that raises at once) is left in place: the KeyboardInterrupt
    lands inside the node, in the middle of a file write."""
    def raise_now(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGINT, raise_now)
    try:
        doc = {"format": 1, "params": {"interrupt": {"default": True, "type": "bool"}}, "nodes": {
            "a": {"type": "Math", "inputs": {"a": 40, "b": 2}},
            "w": {"type": "ThreadWriteFile", "inputs": {"x": {"from": "a.result"}, "interrupt": {"param": "interrupt"}}}},
            "outputs": {"a": "a.result", "path": "w.path"}}
        wf = Workflow.from_dict(doc, REG)
        ex = Executor(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
        events = []
        ex.subscribe(events.append, on_run_thread=True)
        with pytest.raises(KeyboardInterrupt):
            ex.run(wf)
        assert isinstance(events[-1], ev.RunFinished) and events[-1].cancelled
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # no half file, no temporary
        assert len(DiskCache(tmp_path / "cache").entries()) == 1  # 'a' finished before: stored whole
        assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]
        r = ex.run(wf.with_params(interrupt=False))
        assert r.ok and r.stats["a"].status == "memory" and r["a"] == 42
        assert open(r["path"], "rb").read() == b"first half second half"
        assert_usable(ex)
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_while_waiting_behind_a_submitted_run_gives_up_the_place_at_once(sigint_raises):
    ex = Executor()
    GATES["first"] = threading.Event()
    a = ex.submit(probe("first"))
    while entered() != ["first"]:
        time.sleep(0.01)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ex.run(probe("waiting"))
    assert time.monotonic() - t0 < 5 and not GATES["first"].is_set()  # raised while "first" still ran
    assert entered("waiting") == [] and ex._pending == []
    GATES["first"].set()
    assert a.result(30).ok
    assert entered("waiting") == []  # the cancelled run never ran later either
    assert_usable(ex)
