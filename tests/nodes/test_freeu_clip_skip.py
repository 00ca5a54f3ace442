"""FreeU as a model patch (equal to diffusers' ``enable_freeu``, the shared UNet never changed),
``clip_skip`` on EncodePrompt (equal to StableDiffusionPipeline's), and a long weighted prompt
guided against a short negative one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
FACTORS = dict(s1=0.9, s2=0.2, b1=1.5, b2=1.6)


def run(name: str, ex: Executor, **params) -> graphflow.RunResult:
    wf = graphflow.load(REPO / "workflows" / f"{name}.json")
    wf.doc.outputs.pop("files", None)
    r = ex.run(wf.with_params(**params))
    assert r.ok, r.errors
    return r


def test_freeu_equals_enable_freeu_and_never_changes_the_shared_unet(tiny_model):
    """base, FreeU, base again in one model manager (fresh executors: no result cache): the base
    picture comes back bit for bit, the shared UNet has no FreeU factors set, each UNet loads once,
    and the FreeU UNet's prediction is diffusers' UNet with ``enable_freeu`` on the same input."""
    from diffusers import UNet2DConditionModel
    from graphflow_nodes.loading.freeu import FreeU
    from graphflow_nodes.loading.models import LoadModel

    common = dict(model=str(tiny_model), steps=2, seed=1, scheduler="euler")
    first = Executor()
    models = first.models
    b1 = run("txt2img", first, **common)
    fu = run("freeu", Executor(models=models), **common, **FACTORS)
    b2 = run("txt2img", Executor(models=models), **common)
    assert torch.equal(b1["image"], b2["image"])
    assert (fu["image"] - b1["image"]).abs().max().item() > 1e-3

    refs = LoadModel().run(LoadModel.In(path=str(tiny_model)), graphflow.Context())
    base = models.get(refs["unet"])
    assert all(getattr(block, "b1", None) is None for block in base.up_blocks)
    patched = FreeU().run(FreeU.In(unet=refs["unet"], **FACTORS), graphflow.Context())["unet"]
    assert models.loads[refs["unet"]] == 1 and models.loads[patched] == 1

    ref = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    ref.enable_freeu(**FACTORS)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        want = ref(x, 500, ctx).sample
        got = models.get(patched)(x, 500, ctx).sample
        plain = base(x, 500, ctx).sample
    assert torch.equal(got, want)
    assert (plain - want).abs().max().item() > 1e-3


def test_freeu_refuses_a_flow_model_by_name(tiny_sd3):
    doc = {"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(tiny_sd3)}},
        "freeu": {"type": "FreeU", "inputs": {"unet": {"from": "model.unet"}}},
    }, "outputs": {"unet": "freeu.unet"}}
    r = Executor().run(Workflow.from_dict(doc))
    assert not r.ok and r.errors[0].node == "freeu"
    assert "a flow model has a transformer, which FreeU does not patch" in r.errors[0].message


@pytest.fixture(scope="module")
def sd(tiny_model):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    # diffusers 0.42.1 reaches the final norm through ``text_encoder.text_model``, which
    # transformers 5 flattened away: the same module under the name the pipeline expects
    object.__setattr__(p.text_encoder, "text_model", p.text_encoder)
    return p


def encode_prompt(model: Path, clip_skip: int) -> graphflow.RunResult:
    doc = {"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(model)}},
        "e": {"type": "EncodePrompt", "inputs": {"tokenizer": {"from": "model.tokenizer"}, "text_encoder": {"from": "model.text_encoder"},
                                                 "text": PROMPT, "clip_skip": clip_skip}},
    }, "outputs": {"z": "e.text_embeddings"}}
    return Executor().run(Workflow.from_dict(doc))


def test_encode_prompt_clip_skip_equals_the_pipeline(tiny_model, sd):
    ref, _ = sd.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=1)
    plain, _ = sd.encode_prompt(PROMPT, "cpu", 1, False)
    r = encode_prompt(tiny_model, 1)
    assert r.ok, r.errors
    assert (r["z"] - ref).abs().max().item() == 0.0
    assert (plain - ref).abs().max().item() > 1e-2


def test_clip_skip_past_the_first_layer_is_refused(tiny_model):
    r = encode_prompt(tiny_model, 2)  # the tiny encoder has 2 layers
    assert not r.ok and r.errors[0].node == "e"
    assert "clip_skip 2 reaches past the first of the text encoder's 2 layers" in r.errors[0].message
    for layer, skip in (("last", 2), ("penultimate", 1)):
        doc = {"format": 1, "nodes": {
            "model": {"type": "LoadModel", "inputs": {"path": str(tiny_model)}},
            "w": {"type": "EncodeWeighted", "inputs": {"tokenizer": {"from": "model.tokenizer"}, "text_encoder": {"from": "model.text_encoder"},
                                                       "text": PROMPT, "layer": layer, "clip_skip": skip}},
        }, "outputs": {"z": "w.text_embeddings"}}
        r = Executor().run(Workflow.from_dict(doc))
        assert not r.ok and r.errors[0].node == "w"
        assert f"clip_skip {skip} reaches past the first of the text encoder's 2 layers" in r.errors[0].message


def test_a_long_weighted_prompt_is_guided_against_a_short_negative(tiny_model):
    """A 3-chunk prompt and a 1-chunk negative: the negative repeats to 231 states, as ComfyUI
    batches them, and the prompt's chunks stay its own."""
    long = "a red circle on a blue background, " * 25 + "(yellow:1.4) border"  # 178 tokens
    wf = graphflow.load(REPO / "workflows" / "prompt_weighting.json")
    doc = wf.doc.raw
    doc["outputs"] = {"image": "decode.image", "embeddings": "embeddings.embeddings"}
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_model), prompt=long, negative_prompt="blurry", steps=1))
    assert r.ok, r.errors
    e = r["embeddings"]
    assert e.shape == (2, 231, 32)
    assert torch.equal(e[0, :77], e[0, 77:154]) and torch.equal(e[0, :77], e[0, 154:])
    assert not torch.equal(e[1, :77], e[1, 154:])
