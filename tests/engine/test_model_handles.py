"""Models as handles: what flows through the graph is a small frozen reference, the executor's
model manager turns it into weights (once, shared, evicted under a budget), patches make new
models without touching the base, and nodes declare what they read from their context."""

from __future__ import annotations

import ast
import inspect
import json
import pickle
import shutil
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import Field

import graphflow
from graphflow import Context, Executor, Inputs, Node, Outputs, Workflow, default_registry
from graphflow.engine.model_manager import ModelManager
from graphflow.node.declaration import CONTEXT_INPUTS

REPO = Path(__file__).resolve().parents[2]


def model_refs(path: Path) -> dict[str, Any]:
    from graphflow_nodes.loading.models import LoadModel

    return LoadModel().run(LoadModel.In(path=str(path)), Context())


# --- references ------------------------------------------------------------------------------


def test_refs_are_hashable_picklable_and_the_same_model_at_another_path(tiny_model, tmp_path):
    a = model_refs(tiny_model)
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_model, copy)
    b = model_refs(copy)
    for comp in ("tokenizer", "text_encoder", "unet", "vae"):
        ref = a[comp]
        assert ref.component == comp and ref.family == "sd" and ref.patches == ()
        assert pickle.loads(pickle.dumps(ref)) == ref
        assert b[comp] == ref and hash(b[comp]) == hash(ref) and b[comp].path != ref.path
    assert len({a[c] for c in ("tokenizer", "text_encoder", "unet", "vae")}) == 4
    mm = ModelManager()
    vae = mm.get(a["vae"])
    assert mm.get(b["vae"]) is vae and mm.loads[a["vae"]] == 1  # the copy's bytes are the same model

    cfg = copy / "vae" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "scaling_factor": 0.25}))
    assert model_refs(copy)["vae"] != a["vae"]  # other bytes: another model


def test_two_models_that_ship_the_same_component_bytes_share_it(tiny_model, tmp_path):
    """A reference names a component by its own content: a fine-tune with another UNet and the
    same VAE shares the VAE already in memory."""
    tuned = tmp_path / "fine-tune"
    shutil.copytree(tiny_model, tuned)
    cfg = tuned / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "sample_size": 16}))
    a, b = model_refs(tiny_model), model_refs(tuned)
    assert a["unet"] != b["unet"]
    assert all(a[c] == b[c] for c in ("tokenizer", "text_encoder", "vae"))
    mm = ModelManager()
    assert mm.get(a["vae"]) is mm.get(b["vae"]) and mm.loads[a["vae"]] == 1


def test_load_model_refuses_an_unknown_family_naming_its_pipeline_and_the_supported_families(tiny_model, tmp_path):
    aura = tmp_path / "auraflow"
    shutil.copytree(tiny_model, aura)
    index = json.loads((aura / "model_index.json").read_text())
    index["_class_name"] = "AuraFlowPipeline"
    index["transformer"] = ["diffusers", "AuraFlowTransformer2DModel"]
    (aura / "model_index.json").write_text(json.dumps(index))
    r = Executor().run(Workflow.from_dict({"format": 1, "nodes": {"m": {"type": "LoadModel", "inputs": {"path": str(aura)}}},
                                           "outputs": ["m"]}))
    assert not r.ok and r.errors[0].node == "m"
    msg = r.errors[0].message
    assert "AuraFlowPipeline" in msg and "not supported" in msg
    for family, pipeline in (("sd", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline"), ("pixel", "DDPMPipeline"),
                             ("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")):
        assert f"{family} (" in msg and pipeline in msg


# --- patches ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleWeight:
    """A toy patch: multiplies one parameter (a LoRA will be a patch like this one)."""

    name: str
    factor: float

    def apply(self, model) -> None:
        import torch

        with torch.no_grad():
            model.get_parameter(self.name).mul_(self.factor)


class PatchUNet(Node, name="PatchUNet", category="test"):
    """A node that hands on a patched reference: no weights move here."""

    class In(Inputs):
        unet: Any = Field(description="a UNet reference")
        factor: float = Field(1.0, description="scale of conv_in's weight")

    class Out(Outputs):
        unet: Any = Field(description="the patched reference")

    def run(self, i, ctx):
        return {"unet": i.unet.with_patch(ScaleWeight("conv_in.weight", i.factor))}


def txt2img(model: Path, *, patched: bool) -> Workflow:
    doc = graphflow.load(REPO / "workflows" / "txt2img.json").doc.raw
    doc = json.loads(json.dumps(doc))
    doc["outputs"] = {"image": "decode.image"}
    if patched:
        text = json.dumps(doc).replace('{"from": "model.unet"}', '{"from": "patch.unet"}')
        doc = json.loads(text)
        doc["nodes"]["patch"] = {"type": "PatchUNet", "inputs": {"unet": {"from": "model.unet"}, "factor": 1.5}}
    reg = default_registry()
    reg.register(PatchUNet)
    return Workflow.from_dict(doc, registry=reg).with_params(model=str(model), steps=4, seed=1)


def test_a_patch_changes_the_picture_and_never_the_shared_base(tiny_model):
    import torch

    base_image = Executor().run(txt2img(tiny_model, patched=False))["image"]
    ex = Executor()
    patched = ex.run(txt2img(tiny_model, patched=True))
    assert patched.ok, patched.errors
    assert (patched["image"] - base_image).abs().max().item() > 1e-3
    again = ex.run(txt2img(tiny_model, patched=False))
    assert again.ok, again.errors
    assert torch.equal(again["image"], base_image)  # the base weights were never touched
    unet = model_refs(tiny_model)["unet"]
    p = unet.with_patch(ScaleWeight("conv_in.weight", 1.5))
    assert pickle.loads(pickle.dumps(p)) == p and p != unet and p.base() == unet
    assert ex.models.loads[unet] == 1 and ex.models.loads[p] == 1  # the base loaded once, shared by both runs


# --- the manager -----------------------------------------------------------------------------


class Weights:
    """Duck-typed like a torch module for the manager's size count."""

    def __init__(self, nbytes: int) -> None:
        self.value = 1.0
        self._p = [SimpleNamespace(nbytes=nbytes)]

    def parameters(self):
        return iter(self._p)

    def buffers(self):
        return iter(())


@dataclass(frozen=True)
class Blob:
    name: str
    nbytes: int = 100
    patches: tuple = ()
    delay: float = 0.0

    def load(self, manager):
        from graphflow.engine.model_manager import load_patched

        if self.patches:
            return load_patched(manager, Blob(self.name, self.nbytes, delay=self.delay), self.patches)
        time.sleep(self.delay)
        return Weights(self.nbytes)


@dataclass(frozen=True)
class Double:
    def apply(self, model) -> None:
        model.value *= 2


def test_least_recently_used_models_are_evicted_over_budget_unless_a_run_holds_them():
    a, b, c = Blob("a"), Blob("b"), Blob("c")
    mm = ModelManager(budget=250)
    mm.get(a), mm.get(b), mm.get(a)  # a is now the more recently used
    mm.get(c)
    assert a in mm and c in mm and b not in mm and mm.used == 200 and len(mm) == 2
    mm.get(b)  # reloaded; a is now the least recently used
    assert mm.loads[b] == 2 and a not in mm

    mm = ModelManager(budget=250)
    mm.get(a, "run")  # pinned until the run ends
    mm.get(b), mm.get(c)
    assert a in mm and b not in mm and c in mm
    mm.get(b, "run"), mm.get(c, "run")
    assert len(mm) == 3 and mm.used == 300  # over budget, but the run needs all three
    mm.release("run")
    assert mm.used <= 250 and len(mm) == 2
    mm.clear()
    assert len(mm) == 0 and mm.used == 0 and mm.loads[a] == 1


def test_a_model_is_loaded_once_for_concurrent_callers():
    slow = Blob("slow", delay=0.2)
    mm = ModelManager()
    got = []
    threads = [threading.Thread(target=lambda: got.append(mm.get(slow, "r"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mm.loads[slow] == 1 and len(got) == 8 and all(g is got[0] for g in got)


def test_patched_models_are_copies_of_one_shared_base():
    base = Blob("m")
    once, twice = Blob("m", patches=(Double(),)), Blob("m", patches=(Double(), Double()))
    mm = ModelManager()
    assert mm.get(once).value == 2.0 and mm.get(twice).value == 4.0
    assert mm.get(base).value == 1.0 and mm.loads[base] == 1
    assert mm.used == 300  # the copies are models of their own


def test_a_small_model_budget_reloads_between_runs(tiny_model, tmp_path):
    refs = model_refs(tiny_model)
    small = Executor(model_budget=1)
    for seed in (1, 2):
        r = small.run(txt2img(tiny_model, patched=False).with_params(seed=seed))
        assert r.ok, r.errors
        assert small.models.used <= 1 and refs["unet"] not in small.models  # the run is over: nothing held over budget
    assert small.models.loads[refs["unet"]] == 2 and small.models.loads[refs["vae"]] == 2
    assert small.models.loads[refs["text_encoder"]] == 1  # the prompt's embeddings were cached
    roomy = Executor()
    for seed in (1, 2):
        roomy.run(txt2img(tiny_model, patched=False).with_params(seed=seed))
    assert roomy.models.loads[refs["unet"]] == 1 and refs["unet"] in roomy.models


def test_executors_can_share_one_model_manager(tiny_model):
    """Fresh executors (empty result caches) over one manager load the weights once."""
    refs = model_refs(tiny_model)
    shared = ModelManager()
    for seed in (1, 2):
        assert Executor(models=shared).run(txt2img(tiny_model, patched=False).with_params(seed=seed)).ok
    assert shared.loads[refs["unet"]] == 1 and shared.loads[refs["text_encoder"]] == 1
    with pytest.raises(ValueError, match="float16"):
        Executor(models=shared, dtype="float16")


# --- context inputs --------------------------------------------------------------------------


class Peek(Node, name="Peek", category="test"):
    """Reads the loop iteration without declaring it."""

    class In(Inputs):
        x: int = Field(0, description="anything")

    class Out(Outputs):
        i: int = Field(description="the iteration")

    def run(self, i, ctx):
        return {"i": ctx.iteration or 0}


def test_reading_an_undeclared_context_input_fails_naming_the_node():
    reg = default_registry()
    reg.register(Peek)
    wf = Workflow.from_dict({"format": 1, "nodes": {"peek": {"type": "Peek", "inputs": {}}}, "outputs": {"i": "peek.i"}},
                            registry=reg)
    r = Executor().run(wf)
    assert not r.ok and r.errors[0].node == "peek"
    assert "'peek'" in r.errors[0].message and "iteration" in r.errors[0].message


CONTEXT_ATTRS = {"iteration": "iteration", "iterations": "iteration", "params": "workflow", "workflow": "workflow",
                 "device": "device", "dtype": "dtype", "models": "models", "out_dir": "out_dir"}


def test_every_shipped_node_declares_what_it_reads_from_its_context():
    """A static check over the sources: an undeclared read would otherwise only fail when that
    code path runs (a stochastic scheduler, a save)."""
    assert set(CONTEXT_ATTRS.values()) == set(CONTEXT_INPUTS)
    for cls in default_registry():
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        reads = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                 and n.value.id == "ctx"}
        needs = {CONTEXT_ATTRS[a] for a in reads if a in CONTEXT_ATTRS}
        assert needs <= cls.uses, f"{cls.type_name} reads {sorted(needs - cls.uses)} without declaring it"
