"""The on-disk cache: reused by a later executor and by a later process; a damaged entry is
recomputed, never trusted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import pytest
from pydantic import Field

from graphflow import OBJECT, Executor, Inputs, Node, Outputs, Workflow
from graphflow.engine import events as ev
from tests.toy_nodes import RUNS, Vec, link, toy_registry

ROOT = Path(__file__).resolve().parents[2]
TOY_PLUGIN = str(ROOT / "tests" / "toy_nodes.py")


VEC_DOC = {
    "format": 1,
    "params": {"factor": {"default": 3}},
    "nodes": {
        "make": {"type": "MakeVec", "inputs": {"value": 2, "size": 4}},
        "scale": {"type": "ScaleVec", "inputs": {"vec": link("make.vec"), "factor": {"param": "factor"}}},
        "total": {"type": "SumVec", "inputs": {"vec": link("scale.vec")}},
        # a side effect: always runs, never cached; it shows the value the run really used
        "save": {"type": "SaveText", "inputs": {"text": link("scale.vec"), "filename": "vec.txt"}},
    },
    "outputs": {"total": "total.total", "file": "save.path"},
}


def entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.safetensors"))


def entry_info(p: Path) -> tuple[dict, dict]:
    """(graphflow metadata, tensors) of one cache entry."""
    from safetensors.torch import load

    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = orjson.loads(orjson.loads(data[8 : 8 + n])["__metadata__"]["graphflow"])
    return meta, load(data)


def find_entry(cache: Path, *, vec_value: float | None = None, output: str | None = None) -> Path:
    """The entry of MakeVec / ScaleVec (told apart by their tensor's value) or of SumVec."""
    found = []
    for p in entries(cache):
        meta, tensors = entry_info(p)
        if output is not None and output in meta["outputs"]:
            found.append(p)
        if vec_value is not None and "vec" in meta["outputs"] and tensors["o.vec"].tolist() == [vec_value] * 4:
            found.append(p)
    assert len(found) == 1, found
    return found[0]


def flip_tensor_bytes(p: Path) -> None:
    """Change bytes in the middle of the tensor data (the file's tail), keeping the file parseable."""
    data = bytearray(p.read_bytes())
    for i in (-10, -9):
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))


def truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


# --- in process ------------------------------------------------------------------------------------


def test_second_executor_reads_every_entry_from_disk(tmp_path):
    cache = tmp_path / "cache"
    wf = Workflow.from_dict(VEC_DOC, toy_registry())
    r1 = Executor(cache_dir=cache, out_dir=tmp_path / "out").run(wf)
    assert r1.ok and r1["total"] == 24.0
    assert len(entries(cache)) == 3  # make, scale, total; never the side-effect node
    assert RUNS == {"make": 1, "scale": 1, "total": 1}

    RUNS.clear()
    ex2 = Executor(cache_dir=cache, out_dir=tmp_path / "out")
    events: list = []
    ex2.subscribe(events.append, on_run_thread=True)
    r2 = ex2.run(wf)
    assert r2["total"] == 24.0
    assert sum(RUNS.values()) == 0
    statuses = {n: s.status for n, s in r2.stats.items()}
    # 'make' only feeds 'scale', a hit: it need not be touched (if it is, it is a disk hit too)
    assert statuses.pop("make", "disk") == "disk"
    assert statuses == {"scale": "disk", "total": "disk", "save": "ran"}
    cached = {e.node: e.cached for e in events if isinstance(e, ev.NodeFinished)}
    assert cached.pop("make", "disk") == "disk"
    assert cached == {"scale": "disk", "total": "disk", "save": None}
    assert (tmp_path / "out" / "vec.txt").read_text() == "tensor([6., 6., 6., 6.])\n"
    assert r2.cache_errors == []

    # the same executor again: now from memory
    RUNS.clear()
    r3 = ex2.run(wf)
    assert r3.stats["scale"].status == "memory" and sum(RUNS.values()) == 0


def test_a_changed_parameter_gets_its_own_entries(tmp_path):
    cache = tmp_path / "cache"
    wf = Workflow.from_dict(VEC_DOC, toy_registry())
    Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    RUNS.clear()
    r = Executor(cache_dir=cache, out_dir=tmp_path).run(wf.with_params(factor=5))
    assert r["total"] == 40.0
    assert dict(RUNS) == {"scale": 1, "total": 1}  # make was a disk hit
    assert len(entries(cache)) == 5


@pytest.mark.parametrize("damage", [flip_tensor_bytes, truncate, lambda p: p.write_bytes(b"garbage")])
def test_damaged_tensor_entry_is_recomputed_not_trusted(tmp_path, damage):
    cache = tmp_path / "cache"
    wf = Workflow.from_dict(VEC_DOC, toy_registry())
    Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    scale_entry = find_entry(cache, vec_value=6.0)
    damage(scale_entry)

    RUNS.clear()
    ex = Executor(cache_dir=cache, out_dir=tmp_path)
    r = ex.run(wf)
    assert r.ok and r["total"] == 24.0
    assert dict(RUNS) == {"scale": 1}  # only the damaged node ran again
    assert r.stats["make"].status == "disk" and r.stats["scale"].status == "ran" and r.stats["total"].status == "disk"
    assert (tmp_path / "vec.txt").read_text() == "tensor([6., 6., 6., 6.])\n"
    assert len(r.cache_errors) == 1 and scale_entry.name in r.cache_errors[0]
    # the entry was written again, intact
    assert entry_info(scale_entry)[1]["o.vec"].tolist() == [6.0] * 4

    RUNS.clear()
    ex3 = Executor(cache_dir=cache, out_dir=tmp_path)
    r3 = ex3.run(wf)
    assert sum(RUNS.values()) == 0 and r3.cache_errors == []


def test_a_failed_node_is_not_run_again_when_a_damaged_entry_makes_the_run_re_plan(tmp_path):
    """The re-plan around a damaged entry leaves out what already ran or failed."""
    cache = tmp_path / "cache"
    doc = {**VEC_DOC, "nodes": {"bad": {"type": "Fail"}, **VEC_DOC["nodes"]},
           "outputs": {**VEC_DOC["outputs"], "never": "bad.y"}}
    wf = Workflow.from_dict(doc, toy_registry())
    Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    flip_tensor_bytes(find_entry(cache, vec_value=6.0))  # found by the plan, refused when loaded
    RUNS.clear()
    r = Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    assert r["total"] == 24.0 and len(r.cache_errors) == 1  # scale's entry failed to load: the run re-planned
    assert dict(RUNS) == {"bad": 1, "scale": 1}
    assert [e.node for e in r.errors] == ["bad"] and r.stats["bad"].status == "failed"


def test_an_entry_already_stored_is_kept_not_written_again(tmp_path):
    """Batched runs sharing a prompt each store its embeddings under one key: one write."""
    import torch

    from graphflow.cache.disk import DiskCache

    disk = DiskCache(tmp_path / "c")
    assert disk.put("ab" * 20, {"vec": torch.ones(2)})
    first = os.stat(disk.path("ab" * 20))
    assert disk.put("ab" * 20, {"vec": torch.ones(2)})
    again = os.stat(disk.path("ab" * 20))
    assert again.st_ino == first.st_ino and again.st_mtime_ns >= first.st_mtime_ns
    assert disk.get("ab" * 20, {"vec"})[0]["vec"].tolist() == [1.0, 1.0]


def test_damaged_scalar_entry_is_recomputed(tmp_path):
    cache = tmp_path / "cache"
    wf = Workflow.from_dict(VEC_DOC, toy_registry())
    Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    truncate(find_entry(cache, output="total"))
    RUNS.clear()
    r = Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    assert r["total"] == 24.0 and dict(RUNS) == {"total": 1}


def test_entry_with_a_different_key_inside_is_refused(tmp_path):
    """A file copied under another fingerprint's name must not be used for that fingerprint."""
    cache = tmp_path / "cache"
    wf = Workflow.from_dict(VEC_DOC, toy_registry())
    Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    make_entry = find_entry(cache, vec_value=2.0)
    scale_entry = find_entry(cache, vec_value=6.0)
    scale_entry.write_bytes(make_entry.read_bytes())  # scale's name, make's content (value 2.0)
    RUNS.clear()
    r = Executor(cache_dir=cache, out_dir=tmp_path).run(wf)
    assert r["total"] == 24.0 and dict(RUNS) == {"scale": 1}
    assert (tmp_path / "vec.txt").read_text() == "tensor([6., 6., 6., 6.])\n"


def test_side_effect_and_loop_outputs_on_disk(tmp_path):
    cache = tmp_path / "cache"
    doc = {
        "format": 1,
        "nodes": {
            "r": {"type": "Range", "inputs": {"stop": 4}},
            "L": {
                "type": "Loop",
                "over": link("r.values"),
                "carry": {"acc": 0},
                "body": {"inc": {"type": "Add", "inputs": {"a": link("L.acc"), "b": link("L.item")}}},
                "next": {"acc": link("inc.sum")},
                "collect": {"h": link("inc.sum")},
            },
            "rec": {"type": "Record", "inputs": {"value": link("L.acc")}},
        },
        "outputs": {"acc": "L.acc", "h": "L.h", "n": "rec.count"},
    }
    wf = Workflow.from_dict(doc, toy_registry())
    Executor(cache_dir=cache).run(wf)
    assert len(entries(cache)) == 2  # Range and the loop; not the Record side effect
    RUNS.clear()
    r = Executor(cache_dir=cache).run(wf)
    assert r["acc"] == 6.0 and r["h"] == [0.0, 1.0, 3.0, 6.0]
    assert r.stats["L"].status == "disk" and dict(RUNS) == {"rec": 1}


# --- engine bugs found while writing these tests ---------------------------------------------------


class Obj:
    pass


class TensorAndObject(Node, name="TensorAndObject", category="test"):
    """Like a model loader that also returns a tensor: only the tensor can go to disk."""

    class In(Inputs):
        x: float = 1.0

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field()
        obj: Annotated[Any, OBJECT] = Field()

    def run(self, i, ctx):
        import torch

        RUNS[ctx.node_id] += 1
        return {"vec": torch.ones(2), "obj": Obj()}


class UseObject(Node, name="UseObject", category="test"):
    class In(Inputs):
        o: Annotated[Any, OBJECT] = Field()

    class Out(Outputs):
        name: str = Field()

    def run(self, i, ctx):
        return {"name": type(i.o).__name__}


class Loader(Node, name="Loader", category="test", disk_cache=False):
    """Stands for an expensive model loader whose output never goes to disk."""

    class In(Inputs):
        x: float = 1.0

    class Out(Outputs):
        model: Annotated[Any, OBJECT] = Field()

    def run(self, i, ctx):
        RUNS[ctx.node_id] += 1
        return {"model": Obj()}


class Encode(Node, name="Encode", category="test"):
    class In(Inputs):
        model: Annotated[Any, OBJECT] = Field()

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field()

    def run(self, i, ctx):
        import torch

        RUNS[ctx.node_id] += 1
        return {"vec": torch.ones(3)}


def _reg():
    reg = toy_registry()
    for n in (TensorAndObject, UseObject, Loader, Encode):
        reg.register(n)
    return reg


def test_partial_disk_entry_does_not_poison_memory_cache(tmp_path):
    reg = _reg()
    uses_tensor = Workflow.from_dict(
        {"format": 1, "nodes": {"b": {"type": "TensorAndObject"}, "s": {"type": "SumVec", "inputs": {"vec": link("b.vec")}}},
         "outputs": {"t": "s.total"}}, reg)
    uses_object = Workflow.from_dict(
        {"format": 1, "nodes": {"b": {"type": "TensorAndObject"}, "u": {"type": "UseObject", "inputs": {"o": link("b.obj")}}},
         "outputs": {"n": "u.name"}}, reg)
    scaled = Workflow.from_dict(
        {"format": 1, "nodes": {"b": {"type": "TensorAndObject"}, "x": {"type": "ScaleVec", "inputs": {"vec": link("b.vec"), "factor": 3}},
                                "s": {"type": "SumVec", "inputs": {"vec": link("x.vec")}}}, "outputs": {"t": "s.total"}}, reg)
    Executor(cache_dir=tmp_path).run(uses_tensor)
    ex = Executor(cache_dir=tmp_path)
    r = ex.run(scaled)  # a new consumer of 'b.vec': 'b' itself comes from its partial disk entry
    assert r.stats["b"].status == "disk" and r["t"] == 6.0  # 3 × sum(ones(2))
    r = ex.run(uses_object)  # needs 'obj', which the disk entry lacks: must rerun 'b'
    assert r.ok and r["n"] == "Obj"


def test_ancestors_of_a_disk_hit_do_not_run(tmp_path):
    """A model loader (never on disk) is not run again in a new process when its only consumer is a
    disk hit."""
    reg = _reg()
    wf = Workflow.from_dict(
        {"format": 1, "nodes": {"load": {"type": "Loader"}, "enc": {"type": "Encode", "inputs": {"model": link("load.model")}}},
         "outputs": {"v": "enc.vec"}}, reg)
    Executor(cache_dir=tmp_path).run(wf)
    RUNS.clear()
    r = Executor(cache_dir=tmp_path).run(wf)
    assert r.stats["enc"].status == "disk"
    assert RUNS["load"] == 0


# --- across processes --------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRAPHFLOW_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "graphflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def profile(stderr: str) -> dict[str, tuple[int, int, str]]:
    """node -> (runs, hits, status) from the `run --profile` table."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:6] == ["node", "type", "runs", "hits", "seconds", "status"])
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("run wall time"):
            break
        name, _type, runs, hits, _secs, status = line.split()
        rows[name] = (int(runs), int(hits), status)
    return rows


def test_disk_cache_across_processes_and_damaged_entries(tmp_path):
    wf = tmp_path / "vec.json"
    wf.write_bytes(orjson.dumps(VEC_DOC))
    cache = tmp_path / "cache"
    args = ["run", str(wf), "--plugin", TOY_PLUGIN, "--cache-dir", str(cache), "--out", str(tmp_path / "out"),
            "--profile", "--quiet"]
    out_file = tmp_path / "out" / "vec.txt"

    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "total: 24.0" in first.stdout
    assert profile(first.stderr) == {
        "make": (1, 0, "ran"), "scale": (1, 0, "ran"), "total": (1, 0, "ran"), "save": (1, 0, "ran")}
    assert len(entries(cache)) == 3

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "total: 24.0" in second.stdout
    # no toy node ran: every pure node came from disk (or, like 'make', whose only consumer is a
    # hit, was not needed at all); only the side effect ran
    rows = profile(second.stderr)
    assert rows.pop("make", (0, 1, "disk")) == (0, 1, "disk")
    assert rows == {"scale": (0, 1, "disk"), "total": (0, 1, "disk"), "save": (1, 0, "ran")}
    assert out_file.read_text() == "tensor([6., 6., 6., 6.])\n"
    assert "damaged" not in second.stderr

    # damage two entries in two ways: flipped tensor bytes (checksum) and a truncated file (unreadable)
    scale_entry = find_entry(cache, vec_value=6.0)
    flip_tensor_bytes(scale_entry)
    truncate(find_entry(cache, output="total"))
    out_file.unlink()

    third = run_cli(*args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "total: 24.0" in third.stdout
    assert profile(third.stderr) == {
        "make": (0, 1, "disk"), "scale": (1, 0, "ran"), "total": (1, 0, "ran"), "save": (1, 0, "ran")}
    # the recomputed value, not the damaged one, reached the consumer
    assert out_file.read_text() == "tensor([6., 6., 6., 6.])\n"
    assert third.stderr.count("cache: recomputed a damaged entry") == 2
    assert "checksum mismatch" in third.stderr
    assert entry_info(scale_entry)[1]["o.vec"].tolist() == [6.0] * 4


# --- tensors in other layouts ----------------------------------------------------------------------


class Strided(Node, name="Strided", category="test"):
    """Tensors as real nodes make them: channels-last (a VAE's latents from a picture) and a
    transposed view, neither contiguous."""

    class In(Inputs):
        seed: int = Field(0, description="values")

    class Out(Outputs):
        latents: Annotated[Any, Vec] = Field(description="(1, 4, 8, 8), channels-last")
        transposed: Annotated[Any, Vec] = Field(description="(3, 5), a transposed view")

    def run(self, i, ctx):
        import torch

        g = torch.Generator().manual_seed(i.seed)
        latents = torch.randn(1, 4, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
        return {"latents": latents, "transposed": torch.randn(5, 3, generator=g).T}


def test_non_contiguous_tensors_are_stored_and_come_back_in_their_layout(tmp_path):
    """safetensors refuses non-contiguous tensors: the entry holds contiguous copies, a
    channels-last tensor comes back channels-last (so what follows computes as on a fresh run),
    the values exactly; before, writing the entry failed the whole run."""
    import torch

    reg = toy_registry()
    reg.register(Strided)
    wf = Workflow.from_dict({"format": 1, "nodes": {"s": {"type": "Strided", "inputs": {"seed": 3}}},
                             "outputs": {"latents": "s.latents", "transposed": "s.transposed"}}, reg)
    first = Executor(cache_dir=tmp_path).run(wf)
    assert first.ok and not first.cache_errors, (first.errors, first.cache_errors)
    again = Executor(cache_dir=tmp_path).run(wf)  # a new executor: the disk answers
    assert again.stats["s"].status == "disk"
    for name in ("latents", "transposed"):
        assert torch.equal(again[name], first[name])
    assert again["latents"].is_contiguous(memory_format=torch.channels_last) and not again["latents"].is_contiguous()


def test_a_cache_entry_that_cannot_be_written_costs_the_run_nothing(tmp_path, monkeypatch):
    """Any failure writing the disk cache is reported among the run's cache errors; the run's
    results stand."""
    from graphflow.cache.disk import DiskCache

    def refuse(self, key, outputs):
        raise ValueError("the library refused the tensors")

    monkeypatch.setattr(DiskCache, "put", refuse)
    r = Executor(cache_dir=tmp_path).run(Workflow.from_dict(VEC_DOC, toy_registry()), out_dir=tmp_path / "out")
    assert r.ok and r["total"] == 24.0
    assert r.cache_errors and "ValueError: the library refused the tensors" in r.cache_errors[0]
