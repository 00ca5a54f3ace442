"""A run survives its user's mistakes: resource ceilings refused before anything runs, NaN or Inf
reported with the node that made it, and a failed run that gives back its memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
from pydantic import Field

from graphflow import Executor, Inputs, Node, Outputs, ValidationFailed, Workflow, load
from graphflow.cli import main
from graphflow.node.limits import Limits
from tests.toy_nodes import RUNS, Vec, link, toy_registry

REPO = Path(__file__).resolve().parents[2]


# --- resource ceilings ---------------------------------------------------------------------------


def problem(exc: pytest.ExceptionInfo) -> Any:
    (p,) = exc.value.problems
    return p


def test_steps_over_the_limit_are_refused_naming_the_node_and_field():
    wf = load(REPO / "workflows" / "txt2img.json")
    with pytest.raises(ValidationFailed) as e:
        wf.bind({"steps": 501})
    p = problem(e)
    assert (p.code, p.node, p.field) == ("over_limit", "schedule", "inputs.steps") and "500" in p.message
    wf.bind({"steps": 501}, Limits(steps=600))  # raised: fine
    with pytest.raises(ValidationFailed) as e:
        Executor(limits=Limits(steps=10)).submit(wf.with_params(steps=11))  # refused before it queues
    assert problem(e).field == "inputs.steps"


def test_size_batch_and_list_ceilings():
    wf = load(REPO / "workflows" / "txt2img.json")
    doc = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    doc["nodes"]["noise"]["inputs"].update(width=4096, batch_size=32)
    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict(doc).bind()
    assert {(p.node, p.field) for p in e.value.problems} == {("noise", "inputs.width"), ("noise", "inputs.batch_size")}
    seeds = load(REPO / "workflows" / "map_seeds.json")
    with pytest.raises(ValidationFailed) as e:
        seeds.bind({"seeds": list(range(11))}, Limits(list=10))
    assert problem(e).field == "params.seeds" and "11 items" in problem(e).message
    assert wf.problems() == [] and seeds.problems({"seeds": list(range(10))}, Limits(list=10)) == []


def test_document_size_ceiling(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"format": 1, "description": "x" * 5000, "nodes": {}, "outputs": {}}))
    with pytest.raises(ValidationFailed) as e:
        load(big, limits=Limits(document=1000))
    assert problem(e).code == "over_limit" and "document" in problem(e).message


def test_limit_flags_on_the_command_line(capsys):
    wf = str(REPO / "workflows" / "txt2img.json")
    assert main(["validate", wf, "--set", "steps=700"]) == 2
    assert "over_limit" in capsys.readouterr().err
    assert main(["validate", wf, "--set", "steps=700", "--limit", "steps=700"]) == 0
    assert main(["validate", wf, "--limit", "stepz=1"]) == 2
    assert "unknown limit stepz" in capsys.readouterr().err
    assert main(["validate", wf, "--limit", "steps=lots"]) == 2


# --- NaN and Inf ---------------------------------------------------------------------------------


class Divide(Node, name="Divide", category="test"):
    """A vector divided by a number: 0 gives Inf (or NaN for 0/0)."""

    class In(Inputs):
        vec: Annotated[Any, Vec] = Field(description="numerator")
        by: float = Field(1.0, description="denominator")

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field(description="vec / by")

    def run(self, i, ctx):
        RUNS[ctx.node_id] += 1
        return {"vec": i.vec / i.by}


def divide_wf(by: float, loop: bool = False) -> Workflow:
    reg = toy_registry()
    reg.register(Divide)
    nodes: dict = {"v": {"type": "MakeVec", "inputs": {"value": 1.0}}}
    if loop:
        nodes["r"] = {"type": "Range", "inputs": {"stop": 3}}
        nodes["L"] = {"type": "Loop", "over": link("r.values"), "carry": {"x": link("v.vec")},
                      "body": {"i": {"type": "Math", "inputs": {"a": 1, "b": link("L.item"), "op": "sub"}},
                               "d": {"type": "Divide", "inputs": {"vec": link("L.x"), "by": link("i.result")}}},
                      "next": {"x": link("d.vec")}}
        out = {"x": "L.x"}
    else:
        nodes["d"] = {"type": "Divide", "inputs": {"vec": link("v.vec"), "by": by}}
        nodes["s"] = {"type": "SumVec", "inputs": {"vec": link("d.vec")}}
        out = {"total": "s.total"}
    return Workflow.from_dict({"format": 1, "nodes": nodes, "outputs": out}, reg)


def test_a_nan_or_inf_output_fails_the_node_that_made_it():
    r = Executor(check_finite=True).run(divide_wf(0.0))
    assert not r.ok and RUNS["s"] == 0  # nothing downstream consumed the Inf
    (e,) = r.errors
    assert (e.node, e.exc_type) == ("d", "NonFinite") and "'vec'" in e.message
    assert "skipped because 'd' failed" in r.missing["total"]
    assert Executor().run(divide_wf(0.0)).ok  # off by default in the Python API
    assert Executor(check_finite=True).run(divide_wf(2.0))["total"] == 2.0


def test_a_nan_inside_a_loop_names_the_body_node_and_iteration():
    r = Executor(check_finite=True).run(divide_wf(0.0, loop=True))  # 1 - item reaches 0 at iteration 1
    (e,) = r.errors
    assert (e.node, e.iteration, e.exc_type) == ("d", 1, "NonFinite")


def test_the_cli_checks_for_nan_by_default(tmp_path):
    doc = {"format": 1, "nodes": {"v": {"type": "MakeVec"}, "d": {"type": "Divide", "inputs": {"vec": link("v.vec"), "by": 0.0}}},
           "outputs": {"d": "d.vec"}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(doc))
    base = [sys.executable, "-m", "graphflow.cli", "run", str(wf), "--no-cache", "--out", str(tmp_path), "--quiet",
            "--plugin", "tests.toy_nodes", "--plugin", "tests.engine.test_reliability"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 1 and "node 'd' (Divide) failed: output 'vec' holds NaN or Inf" in r.stderr, r.stderr
    r = subprocess.run([*base, "--no-check-finite"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and "d: tensor (4,)" in r.stdout, r.stderr


# --- a failed run gives its memory back ----------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Big(Node, name="Big", category="test"):
    """A large tensor (the size of real latents batches or model activations)."""

    class In(Inputs):
        mib: int = Field(200, description="size in MiB")

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field(description="ones")

    def run(self, i, ctx):
        import torch

        return {"vec": torch.ones(i.mib << 18)}


class Explode(Node, name="Explode", category="test"):
    """Works on a large tensor, then raises: its frame (inputs and work) is in the traceback."""

    class In(Inputs):
        vec: Annotated[Any, Vec] = Field(description="input")

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field(description="never produced")

    seen: ClassVar[list] = []  # weak references to the tensors its frame holds when it raises

    def run(self, i, ctx):
        work = i.vec * 2  # held by this frame when the error is raised
        Explode.seen[:] = [weakref.ref(i.vec), weakref.ref(work)]
        raise RuntimeError("boom")


def failed_run_memory() -> dict:
    """The scenario of the test below, run in a process of its own: a warm executor, then a run
    whose node fails holding 200 MB it made plus 200 MB of its own work, then a good run."""
    import gc

    reg = toy_registry()
    reg.register(Big)
    reg.register(Explode)
    failing = Workflow.from_dict({"format": 1, "nodes": {"v": {"type": "Big"}, "bad": {"type": "Explode", "inputs": {"vec": link("v.vec")}},
                                                         "s": {"type": "SumVec", "inputs": {"vec": link("bad.vec")}}},
                                  "outputs": {"x": "s.total"}}, reg)
    ex = Executor(memory_budget=0)
    ex.run(Workflow.from_dict({"format": 1, "nodes": {"b": {"type": "Big", "inputs": {"mib": 1}}}, "outputs": ["b"]}, reg))
    gc.collect()
    before = rss()  # torch loaded and warm: what is measured is the run
    r = ex.run(failing)
    failed = not r.ok and r.errors[0].node == "bad" and "boom" in r.errors[0].traceback
    gc.collect()  # the result, and its error, stay held: they must not hold the tensors
    after_failure = rss()
    gone = len(Explode.seen) == 2 and all(ref() is None for ref in Explode.seen)
    good = ex.run(Workflow.from_dict({"format": 1, "nodes": {"n": {"type": "Num", "inputs": {"value": 2}}}, "outputs": {"n": "n.value"}},
                                     toy_registry()))
    gc.collect()
    return {"failed": failed, "gone": gone, "good": good.ok and good["n"] == 2.0,
            "before": before, "after_failure": after_failure, "after_good": rss()}


def test_a_failed_run_returns_its_memory_and_the_next_run_works():
    """200 MB made, then a node fails working on it: once the run is over nothing holds either
    tensor (not the error, not its traceback, whose frames held them): both are gone (weak
    references), and the process's resident memory is back within 50 MB. The result cache is off
    (budget 0) so that what is measured is the run's own bookkeeping, not results kept on purpose.
    In a fresh process: resident memory is the whole process's, and in the suite's process other
    tests' threads and allocations moved it by 400 MB now and then (CI, twice), while the weak
    references showed the tensors gone."""
    code = "import json; from tests.engine.test_reliability import failed_run_memory; print(json.dumps(failed_run_memory()))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout.strip().splitlines()[-1])
    assert m["failed"] and m["good"]
    assert m["gone"], "a tensor of the failed run is still held"
    print(f"resident memory: before {m['before'] >> 20} MiB, after the failed run {m['after_failure'] >> 20} MiB, "
          f"after a good run {m['after_good'] >> 20} MiB")
    assert m["after_failure"] - m["before"] < 50 << 20 and m["after_good"] - m["before"] < 50 << 20
