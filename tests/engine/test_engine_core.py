"""Regression tests for holes found in the first engine, one (or a few) per hole:

1. a file read through a linked path was not part of the cache key (stale results);
2. files were identified by path and modification time instead of content;
3. context values (the loop iteration, the dtype) reached nodes unseen by the cache and by hoisting;
4. editing a node's code without bumping ``version`` reused old results from disk;
5. the document was checked again for every parameter set; a literal carry was a run-time failure;
6. runs were not objects (no queue, no per-run events, listeners on the run thread, errors as text);
7. a PNG written by SaveImage could not be run or validated again.

Toy nodes where possible; the Stable Diffusion nodes only where the hole is theirs.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import pytest
from pydantic import Field

import graphflow
from graphflow import Executor, Inputs, Node, Outputs, ValidationFailed, Workflow
from graphflow.engine import events as ev
from tests.toy_nodes import RUNS, Iteration, counted, link, make, toy_registry

try:  # module level: pydantic resolves the (postponed) annotations of ReadText from here
    from graphflow.node.kinds import FileInput
except ImportError:  # the first engine had no file inputs
    FileInput = None

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"


# --- toy nodes of this file ------------------------------------------------------------------------
# Nodes that use only the first engine's API are defined at module level; those that declare
# context inputs or file inputs are built on first use, so that on an engine without that API
# each test fails on its own instead of the whole file failing to import.


class PeekIteration(Node, name="PeekIteration", category="toy"):
    """Reads ctx.iteration without declaring it: the engine must refuse."""

    class In(Inputs):
        x: float = Field(0.0, description="ignored")

    class Out(Outputs):
        value: Annotated[Any, graphflow.ANY] = Field(description="what ctx.iteration said")

    def run(self, i, ctx):
        counted(ctx)
        return {"value": ctx.iteration}


GATE_STARTED = threading.Event()
GATE_RELEASE = threading.Event()
THREADS: list[tuple[str, int]] = []


class Gate(Node, name="Gate", category="toy"):
    """Holds its run until the test opens the gate, so that later runs queue behind it."""

    class In(Inputs):
        x: float = Field(0.0, description="passed through")

    class Out(Outputs):
        x: float = Field(description="x")

    def run(self, i, ctx):
        counted(ctx)
        GATE_STARTED.set()
        if not GATE_RELEASE.wait(20):
            raise TimeoutError("the test never opened the gate")
        return {"x": i.x}


class WhereAmI(Node, name="WhereAmI", category="toy"):
    """Records the thread it runs on, and the order it ran in relative to events."""

    class In(Inputs):
        x: float = Field(0.0, description="passed through")

    class Out(Outputs):
        x: float = Field(description="x")

    def run(self, i, ctx):
        counted(ctx)
        THREADS.append(("ran " + ctx.node_id, threading.get_ident()))
        return {"x": i.x}


def _text_file(value: str) -> Path:
    """FileInput resolver of ReadText: a plain path (module level, as FileInput requires)."""
    return Path(value).expanduser()


@functools.cache
def read_text_node() -> type[Node]:
    """A node with a file input (``FileInput``)."""
    if FileInput is None:
        raise ImportError("graphflow.node.kinds has no FileInput")

    class ReadText(Node, name="ReadText", category="toy"):
        """The content of a text file."""

        class In(Inputs):
            path: Annotated[str, FileInput(resolve=_text_file)] = Field(description="a text file")

        class Out(Outputs):
            text: str = Field(description="its content")

        def run(self, i, ctx):
            counted(ctx)
            return {"text": _text_file(i.path).read_text()}

    return ReadText


@functools.cache
def dtype_node() -> type[Node]:
    """A node that declares the run's dtype as a context input."""

    class DtypeName(Node, name="DtypeName", category="toy", uses=("dtype",)):
        """The run's dtype, as text."""

        class In(Inputs):
            x: float = Field(0.0, description="ignored")

        class Out(Outputs):
            dtype: str = Field(description="ctx.dtype")

        def run(self, i, ctx):
            counted(ctx)
            return {"dtype": str(ctx.dtype)}

    return DtypeName


def registry(*extra: type[Node]) -> graphflow.Registry:
    reg = toy_registry()
    for n in extra:
        reg.register(n)
    return reg


def wf_of(nodes: dict, outputs, params: dict | None = None, extra: tuple = ()) -> Workflow:
    doc = {"format": 1, "nodes": nodes, "outputs": outputs, **({"params": params} if params else {})}
    return Workflow.from_dict(doc, registry(*extra))


def problems_of(wf_factory) -> list:
    """Validation problems however the engine reports them: at load or when checked."""
    try:
        wf = wf_factory()
    except ValidationFailed as e:
        return e.problems
    return wf.problems()


def png(path: Path, rgb: tuple[int, int, int], size: int = 8) -> Path:
    from PIL import Image

    Image.new("RGB", (size, size), rgb).save(path)
    return path


def touch_later(path: Path, seconds: float = 5.0) -> None:
    """A new modification time, the content unchanged."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


# --- 1. a file read through a linked path ----------------------------------------------------------

LINKED_IMAGE = {
    "format": 1,
    "params": {"image": {"default": "", "type": "string"}},
    "nodes": {
        "where": {"type": "Value", "inputs": {"value": {"param": "image"}}},
        "load": {"type": "LoadImage", "inputs": {"path": link("where.value")}},
        "mean": {"type": "ImageChannels", "inputs": {"image": link("load.image")}},
    },
    "outputs": {"red": "mean.red", "blue": "mean.blue"},
}


def test_load_image_through_a_linked_path_sees_the_new_content_with_a_disk_cache(tmp_path):
    pic = png(tmp_path / "pic.png", (255, 0, 0))
    cache = tmp_path / "cache"
    wf = Workflow.from_dict(LINKED_IMAGE).with_params(image=str(pic))

    r1 = Executor(cache_dir=cache).run(wf)
    assert r1.ok, r1.errors
    assert (r1["red"], r1["blue"]) == (1.0, 0.0)

    png(pic, (0, 0, 255))  # same path, same size, other colour
    r2 = Executor(cache_dir=cache).run(wf)  # a fresh executor: only the disk cache remembers
    assert r2.ok, r2.errors
    assert (r2["red"], r2["blue"]) == (0.0, 1.0)
    assert r2.runs("load") == 1 and r2.runs("mean") == 1

    r3 = Executor(cache_dir=cache).run(wf)  # unchanged since: from the disk cache
    assert (r3["red"], r3["blue"]) == (0.0, 1.0)
    assert r3.runs("load") == 0 and r3.runs("mean") == 0


def test_equal_nodes_on_one_linked_path_read_it_once_even_where_the_memory_cache_keeps_nothing(tmp_path):
    """Their keys are known only once the path arrives (late members): the second finds the first's
    outputs among what the run computed, not in a cache."""
    pic = png(tmp_path / "pic.png", (255, 0, 0))
    doc = {**LINKED_IMAGE, "nodes": {**LINKED_IMAGE["nodes"], "again": {"type": "LoadImage", "inputs": {"path": link("where.value")}}},
           "outputs": {**LINKED_IMAGE["outputs"], "copy": "again.image"}}
    r = Executor(memory_budget=0).run(Workflow.from_dict(doc).with_params(image=str(pic)))
    assert r.ok, r.errors
    assert (r.runs("load"), r.runs("again"), r.stats["again"].hits) == (1, 0, 1)
    assert r["red"] == 1.0 and float(r["copy"][0, 0].mean()) == 1.0


def test_file_input_fed_by_a_link_is_read_again_after_an_edit(tmp_path):
    f = tmp_path / "note.txt"
    f.write_text("one")
    wf = wf_of(
        {
            "where": {"type": "Value", "inputs": {"value": str(f)}},
            "read": {"type": "ReadText", "inputs": {"path": link("where.value")}},
        },
        {"text": "read.text"},
        extra=(read_text_node(),),
    )
    ex = Executor()
    assert ex.run(wf)["text"] == "one"
    assert ex.run(wf)["text"] == "one" and RUNS["read"] == 1

    f.write_text("three")
    r = ex.run(wf)
    assert r["text"] == "three"
    assert RUNS["read"] == 2


# --- 2. files are identified by content ------------------------------------------------------------


def test_file_identity_is_content_same_bytes_elsewhere_hit_touch_hit_new_content_miss(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("hello")
    wf = wf_of(
        {"read": {"type": "ReadText", "inputs": {"path": {"param": "path"}}}},
        {"text": "read.text"},
        {"path": {"default": str(a), "type": "string"}},
        extra=(read_text_node(),),
    )
    ex = Executor()
    assert ex.run(wf)["text"] == "hello" and RUNS["read"] == 1

    b = tmp_path / "elsewhere" / "b.txt"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    r = ex.run(wf.with_params(path=str(b)))
    assert r["text"] == "hello"
    assert RUNS["read"] == 1, "the same bytes at another path must be a cache hit"

    touch_later(b)
    r = ex.run(wf.with_params(path=str(b)))
    assert r["text"] == "hello"
    assert RUNS["read"] == 1, "a new modification time with the same content must be a cache hit"

    b.write_text("hello, world")  # new content (and size) at the same path
    r = ex.run(wf.with_params(path=str(b)))
    assert r["text"] == "hello, world"
    assert RUNS["read"] == 2


def test_load_image_same_pixels_file_elsewhere_and_touched_are_cache_hits(tmp_path):
    pic = png(tmp_path / "red.png", (255, 0, 0))
    wf = Workflow.from_dict(LINKED_IMAGE)
    ex = Executor(cache_dir=tmp_path / "cache")
    assert ex.run(wf.with_params(image=str(pic))).runs("load") == 1

    copy = tmp_path / "copies" / "same.png"
    copy.parent.mkdir()
    shutil.copyfile(pic, copy)
    r = ex.run(wf.with_params(image=str(copy)))
    assert r["red"] == 1.0
    assert r.runs("load") == 0 and r.runs("mean") == 0

    touch_later(copy)
    r = Executor(cache_dir=tmp_path / "cache").run(wf.with_params(image=str(copy)))  # across executors too
    assert r["red"] == 1.0
    assert r.runs("load") == 0 and r.runs("mean") == 0

    png(copy, (0, 255, 0))
    r = ex.run(wf.with_params(image=str(copy)))
    assert (r["red"], r["blue"]) == (0.0, 0.0)
    assert r.runs("load") == 1


# --- 3. context inputs: declared, fingerprinted, and followed by hoisting ----------------------------


def test_body_node_with_literal_inputs_declaring_iteration_runs_every_iteration():
    wf = wf_of(
        {
            "r": {"type": "Range", "inputs": {"stop": 4}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {"it": {"type": "Iteration", "inputs": {"scale": 10}}},
                "collect": {"values": link("it.value"), "counts": link("it.count")},
            },
        },
        {"values": "L.values", "counts": "L.counts"},
        extra=(Iteration,),
    )
    ex = Executor()
    r = ex.run(wf)
    assert r.ok, r.errors
    assert r["values"] == [0.0, 10.0, 20.0, 30.0]
    assert r["counts"] == [4, 4, 4, 4]
    assert RUNS["it"] == 4 and r.runs("it") == 4

    r2 = ex.run(wf)  # the loop as a whole is cached
    assert r2["values"] == [0.0, 10.0, 20.0, 30.0]
    assert RUNS["it"] == 4


def test_reading_an_undeclared_context_value_fails_naming_the_node():
    wf = wf_of(
        {
            "peek": {"type": "PeekIteration", "inputs": {"x": 1}},
            "r": {"type": "Range", "inputs": {"stop": 2}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "body": {"inner_peek": {"type": "PeekIteration", "inputs": {"x": link("L.item")}}},
                "collect": {"seen": link("inner_peek.value")},
            },
        },
        {"top": "peek.value", "seen": "L.seen"},
        extra=(PeekIteration,),
    )
    r = Executor().run(wf)
    assert not r.ok
    by_node = {e.node: e for e in r.errors}
    assert set(by_node) == {"peek", "inner_peek"}
    for node, err in by_node.items():
        assert err.type == "PeekIteration"
        assert err.exc_type == "UndeclaredContext"
        assert node in err.message and "iteration" in err.message
    assert r.missing.keys() == {"top", "seen"}

    from graphflow.node.context import UndeclaredContext

    assert issubclass(UndeclaredContext, AttributeError)


def test_declared_dtype_joins_the_fingerprint_and_undeclared_nodes_share_entries(tmp_path):
    wf = wf_of(
        {
            "n": {"type": "Num", "inputs": {"value": 3}},
            "dt": {"type": "DtypeName", "inputs": {"x": link("n.value")}},
        },
        {"n": "n.value", "dtype": "dt.dtype"},
        extra=(dtype_node(),),
    )
    cache = tmp_path / "cache"
    r32 = Executor(dtype="float32", cache_dir=cache).run(wf)
    r16 = Executor(dtype="float16", cache_dir=cache).run(wf)
    assert (r32["dtype"], r16["dtype"]) == ("float32", "float16")
    assert (r32["n"], r16["n"]) == (3.0, 3.0)
    assert RUNS["dt"] == 2
    assert RUNS["n"] == 1, "a node that does not read the dtype must not be keyed by it"
    again = Executor(dtype="float16", cache_dir=cache).run(wf)
    assert again["dtype"] == "float16" and RUNS["dt"] == 2


def test_scheduler_step_declares_iteration_and_euler_a_draws_new_noise_each_step(tmp_path, tiny_model):
    import torch
    from graphflow_nodes.stages.scheduling import SchedulerStep

    assert "iteration" in SchedulerStep.uses

    steps = 3
    wf = graphflow.load(TXT2IMG).with_params(model=str(tiny_model), steps=steps, scheduler="euler_a")
    r = Executor(out_dir=tmp_path / "out").run(wf)
    assert r.ok, r.errors
    assert r.runs("step") == steps and r.runs("unet") == steps

    # the stochastic part of one Euler-ancestral step depends on the iteration, nothing else varying
    from diffusers import EulerAncestralDiscreteScheduler

    sched = EulerAncestralDiscreteScheduler.from_pretrained(tiny_model, subfolder="scheduler")
    sched.set_timesteps(steps)
    t = sched.timesteps[1]
    g = torch.Generator().manual_seed(0)
    latents, noise_pred = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)

    def step(iteration: int):
        s = sched.__class__.from_config(sched.config)
        s.set_timesteps(steps)
        i = SchedulerStep.In.model_construct(scheduler=s, noise_pred=noise_pred, timestep=t, latents=latents, seed=0)
        return SchedulerStep().run(i, graphflow.Context(iteration=iteration, iterations=steps))["latents"]

    assert torch.equal(step(1), step(1))
    assert not torch.allclose(step(1), step(2))


# --- 4. the code version is part of the cache key ---------------------------------------------------

PLUGIN = '''
from pathlib import Path

from pydantic import Field

from graphflow import Inputs, Node, Outputs


class Scale(Node, name="EditedScale", category="toy"):
    """Multiplies by a factor written in its code (version never bumped)."""

    class In(Inputs):
        x: float = Field(1.0, description="input")

    class Out(Outputs):
        y: float = Field(description="x times the factor")

    def run(self, i, ctx):
        with open(Path(__file__).with_name("runs.log"), "a") as f:
            f.write("ran\\n")
        return {"y": i.x * FACTOR}
'''


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("GRAPHFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "graphflow.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_editing_a_node_class_without_bumping_version_invalidates_the_disk_cache(tmp_path, capsys, monkeypatch):
    from graphflow.cli import main

    plugin = tmp_path / "edited_nodes.py"
    log = tmp_path / "runs.log"
    wf = tmp_path / "wf.json"
    wf.write_bytes(orjson.dumps({"format": 1, "nodes": {"s": {"type": "EditedScale", "inputs": {"x": 3}}},
                                 "outputs": {"y": "s.y"}}))
    args = ["run", str(wf), "--plugin", str(plugin), "--cache-dir", str(tmp_path / "cache"), "--out",
            str(tmp_path / "out"), "--quiet"]
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)

    def runs() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    def in_process() -> str:
        capsys.readouterr()
        assert main(args) == 0
        return capsys.readouterr().out

    plugin.write_text(PLUGIN.replace("FACTOR", "2"))
    first = run_cli(*args, cwd=tmp_path)  # process 1 fills the disk cache
    assert first.returncode == 0, first.stderr
    assert "y: 6.0" in first.stdout and runs() == 1
    assert "y: 6.0" in in_process() and runs() == 1  # another process, unchanged code: a disk hit

    plugin.write_text(PLUGIN.replace("FACTOR", "10"))  # the edit: same version, other code
    third = run_cli(*args, cwd=tmp_path)  # a new process with the edited file
    assert third.returncode == 0, third.stderr
    assert "y: 30.0" in third.stdout, third.stdout
    assert runs() == 2
    assert "y: 30.0" in in_process() and runs() == 2  # the new code's result is cached in turn


def test_code_version_follows_the_class_source(tmp_path):
    from graphflow.engine.fingerprint import code_version

    versions = {}
    for factor in ("2", "10"):
        plugin = tmp_path / f"v{factor}" / "edited_nodes.py"
        plugin.parent.mkdir()
        plugin.write_text(PLUGIN.replace("FACTOR", factor))
        reg = graphflow.Registry()
        reg.load_plugin(str(plugin))
        versions[factor] = code_version(reg.get("EditedScale"))
    assert versions["2"] != versions["10"]
    assert code_version(PeekIteration) == code_version(PeekIteration)


# --- 5. checked once per document; values checked per binding ---------------------------------------


def test_document_is_checked_once_for_a_thousand_parameter_sets(monkeypatch):
    import graphflow.graph.check

    calls: list[int] = []
    real = graphflow.graph.check.check

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(graphflow.graph.check, "check", counting)
    wf = make(
        {
            "n": {"type": "Num", "inputs": {"value": {"param": "x"}}},
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
        {"x": {"default": 0, "type": "float"}},
    )
    t0 = time.perf_counter()
    for i in range(1000):
        wf.with_params(x=i).bind()
    bind_seconds = time.perf_counter() - t0
    assert wf.with_params(x=7).problems() == []
    # values are still checked, per binding, against the ports they feed
    assert [(p.code, p.node) for p in wf.with_params(x=2e6).problems()] == [("bad_param", "n")]
    assert any(p.code == "bad_param" for p in wf.with_params(x="seven").problems())
    assert Executor().run(wf.with_params(x=10))["acc"] == 13.0
    assert len(calls) == 1
    assert bind_seconds < 5, f"1,000 bindings took {bind_seconds:.2f} s"


def test_literal_carry_of_the_wrong_kind_is_a_validation_error_naming_the_loop_and_field():
    def doc():
        return make(
            {
                "r": {"type": "Range", "inputs": {"stop": 3}},
                "L": {
                    "type": "Loop",
                    "over": link("r.values"),
                    "carry": {"acc": {"literal": {"a": 1}}},
                    "body": {"inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}}},
                    "next": {"acc": link("inc.sum")},
                },
            },
            {"acc": "L.acc"},
        )

    problems = problems_of(doc)
    assert any(p.node == "L" and p.field == "carry.acc" for p in problems), problems
    with pytest.raises(ValidationFailed):
        Executor().run(doc())
    assert sum(RUNS.values()) == 0


# --- 6. runs as objects -----------------------------------------------------------------------------


@pytest.fixture
def gate():
    GATE_STARTED.clear()
    GATE_RELEASE.clear()
    THREADS.clear()
    yield
    GATE_RELEASE.set()  # never leave a run thread waiting


def gated() -> Workflow:
    return wf_of(
        {"g": {"type": "Gate", "inputs": {"x": {"param": "x"}}}, "after": {"type": "Add", "inputs": {"a": link("g.x"), "b": 1}}},
        {"y": "after.sum"},
        {"x": {"default": 0, "type": "float"}},
        extra=(Gate,),
    )


def test_a_queued_run_cancelled_before_it_starts_never_runs(gate):
    ex = Executor()
    first = ex.submit(gated().with_params(x=1))
    assert GATE_STARTED.wait(10)
    second = ex.submit(gated().with_params(x=2))
    assert isinstance(first.id, str) and isinstance(second.id, str) and first.id != second.id
    assert first.status == "running"
    assert second.status == "queued"
    second.cancel()
    assert second.status == "cancelled"
    GATE_RELEASE.set()

    r1 = first.result(timeout=10)
    assert r1.ok and r1["y"] == 2.0 and r1.run_id == first.id and first.status == "done"
    r2 = second.result(timeout=10)
    assert r2.cancelled and not r2.ok and r2.run_id == second.id
    assert second.status == "cancelled"
    assert RUNS == {"g": 1, "after": 1}  # only the first run's nodes ever ran

    third = ex.submit(gated().with_params(x=2))  # the executor goes on with later runs
    assert third.result(timeout=10)["y"] == 3.0 and third.status == "done"


def test_each_run_has_its_own_event_stream_tagged_with_its_id(gate):
    ex = Executor()
    everything: list = []
    ex.subscribe(everything.append, on_run_thread=True)
    a = ex.submit(gated().with_params(x=1))
    b = ex.submit(gated().with_params(x=2))
    ea, eb = a.events(), b.events()
    GATE_RELEASE.set()
    a_events, b_events = list(ea), list(eb)
    for h, events in ((a, a_events), (b, b_events)):
        assert sum(isinstance(e, ev.RunStarted) for e in events) == 1
        assert isinstance(events[-1], ev.RunFinished) and events[-1].ok
        assert {e.run_id for e in events} == {h.id}
        assert [e.node for e in events if isinstance(e, ev.NodeStarted)] == ["g", "after"]
    assert a.result(timeout=10)["y"] == 2.0 and b.result(timeout=10)["y"] == 3.0
    # the executor-wide stream holds both runs, b started only after a finished (one at a time)
    assert [e for e in everything if e.run_id == a.id] == a_events
    assert [e for e in everything if e.run_id == b.id] == b_events
    kinds = [(type(e), e.run_id) for e in everything]
    assert kinds.index((ev.RunFinished, a.id)) < kinds.index((ev.RunStarted, b.id))


def test_listeners_run_off_the_run_thread_and_cannot_stall_it():
    """A blocked listener stalls neither the run's execution (its nodes run once, an on-run-thread
    hook sees RunFinished) nor the thread that submitted it; result() waits for delivery, so once
    the listener is released the result comes with every event delivered, on another thread."""
    ex = Executor()
    release, executed = threading.Event(), threading.Event()
    seen: list = []
    listener_threads: set[int] = set()

    def slow_listener(e):
        listener_threads.add(threading.get_ident())
        release.wait(20)
        seen.append(e)

    ex.subscribe(slow_listener)
    ex.subscribe(lambda e: isinstance(e, ev.RunFinished) and executed.set(), on_run_thread=True)
    wf = make({"a": {"type": "Num", "inputs": {"value": 1}}, "b": {"type": "Add", "inputs": {"a": link("a.value"), "b": 1}}},
              {"b": "b.sum"})
    try:
        h = ex.submit(wf)
        assert executed.wait(10), "the run waited for a listener"
        assert RUNS == {"a": 1, "b": 1} and seen == []
    finally:
        release.set()
    r = h.result(timeout=10)
    assert r.ok and r["b"] == 2.0
    assert isinstance(seen[-1], ev.RunFinished) and {e.run_id for e in seen} == {h.id}
    assert threading.get_ident() not in listener_threads


def test_on_run_thread_listener_is_synchronous(gate):
    ex = Executor()

    def hook(e):
        if isinstance(e, (ev.NodeStarted, ev.NodeFinished)):
            THREADS.append((f"{type(e).__name__} {e.node}", threading.get_ident()))

    ex.subscribe(hook, on_run_thread=True)
    wf = wf_of(
        {"a": {"type": "WhereAmI", "inputs": {"x": 1}}, "b": {"type": "WhereAmI", "inputs": {"x": link("a.x")}}},
        {"b": "b.x"},
        extra=(WhereAmI,),
    )
    assert ex.run(wf)["b"] == 1.0
    assert [what for what, _ in THREADS] == [
        "NodeStarted a", "ran a", "NodeFinished a", "NodeStarted b", "ran b", "NodeFinished b"]
    assert len({tid for _, tid in THREADS}) == 1  # the hook ran on the thread that ran the nodes


def test_executor_is_safe_from_many_threads_and_runs_share_the_cache():
    ex = Executor()
    wf = make(
        {
            "c": {"type": "Num", "inputs": {"value": 1000}},  # the same in every run: computed once
            "p": {"type": "Num", "inputs": {"value": {"param": "p"}}},
            "s": {"type": "Add", "inputs": {"a": link("c.value"), "b": link("p.value")}},
        },
        {"s": "s.sum"},
        {"p": {"default": 0, "type": "float"}},
    )
    results: dict[tuple[int, int], Any] = {}
    ids: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            handles = [(k, ex.submit(wf.with_params(p=(t * 5 + k) % 10))) for k in range(5)]
            for k, h in handles:
                r = h.result(timeout=60)
                with lock:
                    results[(t, k)] = r
                    ids.append(h.id)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not failures, failures
    assert len(results) == 40 and len(set(ids)) == 40
    for (t, k), r in results.items():
        assert r.ok, r.errors
        assert r["s"] == 1000.0 + (t * 5 + k) % 10
    assert RUNS["c"] == 1
    assert RUNS["p"] == 10 and RUNS["s"] == 10  # ten distinct parameter values, each computed once


def test_node_errors_are_structured():
    wf = make(
        {"bad": {"type": "Fail", "inputs": {"x": 1}}, "after": {"type": "Add", "inputs": {"a": link("bad.y")}},
         "fine": {"type": "Num", "inputs": {"value": 2}}},
        {"x": "after.sum", "fine": "fine.value"},
    )
    r = Executor().run(wf)
    assert not r.ok and r["fine"] == 2.0
    assert isinstance(r.run_id, str) and r.run_id
    assert len(r.errors) == 1
    err = r.errors[0]
    assert isinstance(err, graphflow.NodeError)
    assert (err.node, err.type, err.exc_type) == ("bad", "Fail", "RuntimeError")
    assert "boom" in err.message
    assert 'raise RuntimeError("boom")' in err.traceback
    assert "bad" in r.missing["x"]


# --- 7. a PNG written by SaveImage is a workflow -----------------------------------------------------


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_png_written_by_save_image_runs_again_to_the_same_pixels(tmp_path, tiny_model, monkeypatch, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from graphflow.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)
    rc = main(["run", str(TXT2IMG), "--set", f"model={tiny_model}", "--set", "steps=2", "--set", "seed=5",
               "--out", "first", "--no-cache", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    [original] = sorted((tmp_path / "first").glob("txt2img_*.png"))
    text = Image.open(original).text
    assert "graphflow_workflow" in text and orjson.loads(text["graphflow_params"])["steps"] == 2

    assert main(["validate", str(original)]) == 0
    rc = main(["run", str(original), "--out", "second", "--no-cache", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    [again] = sorted((tmp_path / "second").glob("txt2img_*.png"))
    assert np.array_equal(_pixels(original), _pixels(again))

    # the Python API takes the PNG too
    r = Executor(out_dir=tmp_path / "third").run(graphflow.load(original))
    assert r.ok, r.errors
    remade = (r["image"][0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(_pixels(original), remade)


def test_png_without_a_workflow_is_a_validation_error(tmp_path, capsys):
    from graphflow.cli import main

    plain = png(tmp_path / "plain.png", (10, 20, 30))
    assert main(["validate", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "plain.png" in err and "workflow" in err.lower()
    assert main(["validate", str(plain), "--json"]) == 2
    report = orjson.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"]
    # a PNG is not broken JSON: the problem is that this picture carries no workflow
    assert all(p["code"] != "invalid_json" and "workflow" in p["message"].lower() for p in report["problems"])
    assert main(["run", str(plain), "--no-cache", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValidationFailed):
        graphflow.load(plain)
