"""SDXL LoRA: LoadLoRA in workflows/txt2img_sdxl.json against diffusers'
``StableDiffusionXLPipeline.load_lora_weights`` + ``set_adapters`` on a tiny random SDXL, with
LoRA files covering the UNet and both text encoders (written by diffusers' own
``save_lora_weights``); one LoRA, two stacked at different strengths, and the base picture bit
for bit after a LoRA run in the same model manager."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow
from tests.lora_files import sdxl_lora_tensors, write_sdxl_lora

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
STEPS, SEED, GUIDANCE = 4, 3, 5.0
MODEL_PARTS = ("unet", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def xl_loras(tiny_sdxl, tmp_path_factory):
    d = tmp_path_factory.mktemp("sdxl_loras")
    return {"a": write_sdxl_lora(d / "xl_a.safetensors", *sdxl_lora_tensors(tiny_sdxl, seed=1, rank=4)),
            "b": write_sdxl_lora(d / "xl_b.safetensors", *sdxl_lora_tensors(tiny_sdxl, seed=2, rank=2))}


def sdxl_lora_doc(model: Path, stack: list[tuple[Path, float, float]]) -> dict:
    """A copy of workflows/txt2img_sdxl.json with a chain of LoadLoRA nodes between LoadModel and
    every node that takes the UNet or a text encoder (none: the base workflow)."""
    doc = copy.deepcopy(graphflow.load(REPO / "workflows" / "txt2img_sdxl.json").doc.raw)
    del doc["nodes"]["save"]
    doc["outputs"] = {"image": "decode.image", "embeddings": "conditions.embeddings", "pooled": "conditions.pooled"}
    last = "model"
    chain = {}
    for n, (path, su, st) in enumerate(stack):
        chain[f"lora{n}"] = {"type": "LoadLoRA", "inputs": {
            **{part: {"from": f"{last}.{part}"} for part in MODEL_PARTS},
            "path": str(path), "unet_strength": su, "text_encoder_strength": st}}
        last = f"lora{n}"
    text = json.dumps(doc)
    for part in MODEL_PARTS:
        text = text.replace(f'"model.{part}"', f'"{last}.{part}"')
    doc = json.loads(text)
    doc["nodes"].update(chain)
    doc["params"]["model"]["default"] = str(model)
    return doc


def graph_run(ex: Executor, model: Path, stack) -> graphflow.RunResult:
    r = ex.run(Workflow.from_dict(sdxl_lora_doc(model, stack)).with_params(steps=STEPS, seed=SEED, guidance=GUIDANCE, prompt=PROMPT))
    assert r.ok, r.errors
    return r


def diffusers_run(model: Path, stack):
    """The reference: each LoRA through ``load_lora_weights`` (UNet and both text encoders), the
    strengths per component through ``set_adapters``."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    names = []
    for n, (path, _, _) in enumerate(stack):
        pipe.load_lora_weights(str(path), adapter_name=f"lora{n}")
        names.append(f"lora{n}")
    pipe.set_adapters(names, adapter_weights=[{"unet": su, "text_encoder": st, "text_encoder_2": st} for _, su, st in stack])
    image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED),
                 output_type="pt").images
    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True)
    return image, torch.cat([ne, pe]), torch.cat([npool, pp])


@pytest.fixture(scope="module")
def xl_base(tiny_sdxl):
    ex = Executor()
    return ex, graph_run(ex, tiny_sdxl, [])


def test_an_sdxl_lora_file_has_all_three_parts(xl_loras):
    from graphflow_nodes.loading.lora import file_components, lora_keys

    assert file_components(lora_keys(xl_loras["a"])) == set(MODEL_PARTS)


@pytest.mark.parametrize("stack", [
    pytest.param([("a", 0.8, 0.6)], id="one"),
    pytest.param([("a", 0.7, 0.5), ("b", 0.4, 1.2)], id="two-stacked"),
])
def test_sdxl_loras_equal_diffusers_load_lora_weights_and_set_adapters(tiny_sdxl, xl_loras, xl_base, stack):
    stack = [(xl_loras[k], su, st) for k, su, st in stack]
    _, base = xl_base
    r = graph_run(Executor(), tiny_sdxl, stack)
    ref, embeddings, pooled = diffusers_run(tiny_sdxl, stack)
    assert r["image"].shape == ref.shape == (1, 3, 64, 64)
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    # both text encoders' paths, alone: the joined hidden states (encoder 1 | encoder 2) and encoder 2's projection
    assert (r["embeddings"] - embeddings).abs().max().item() <= 1e-5
    assert (r["pooled"] - pooled).abs().max().item() <= 1e-5
    # every part moved away from the base: the comparison is not base against base
    width = 32  # the first encoder's width: its states come first in the joined embeddings
    assert (r["embeddings"][1, :, :width] - base["embeddings"][1, :, :width]).abs().max().item() > 0.05
    assert (r["embeddings"][1, :, width:] - base["embeddings"][1, :, width:]).abs().max().item() > 0.05
    assert (r["pooled"][1] - base["pooled"][1]).abs().max().item() > 0.01
    assert (r["image"] - base["image"]).abs().max().item() > 0.01


def test_sdxl_base_picture_comes_back_bit_for_bit_after_a_lora_run(tiny_sdxl, xl_loras, xl_base):
    """One model manager: the base, a LoRA run, the base again (fresh executors, so no result
    cache answers). The base picture is the same bytes, each base component loaded once, and the
    base UNet's and second encoder's weights untouched."""
    from graphflow_nodes.loading.models import LoadModel

    first, base = xl_base
    models = first.models
    refs = LoadModel().run(LoadModel.In(path=str(tiny_sdxl)), graphflow.Context())
    before = {part: {k: v.clone() for k, v in models.get(refs[part]).state_dict().items()} for part in MODEL_PARTS}

    with_lora = graph_run(Executor(models=models), tiny_sdxl, [(xl_loras["a"], 1.0, 1.0)])
    again = graph_run(Executor(models=models), tiny_sdxl, [])

    assert torch.equal(again["image"], base["image"]) and torch.equal(again["embeddings"], base["embeddings"])
    assert torch.equal(again["pooled"], base["pooled"])
    assert not torch.equal(with_lora["image"], base["image"])
    for part in MODEL_PARTS:
        assert models.loads[refs[part]] == 1, part
        after = models.get(refs[part]).state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before[part].items()), part
    patched = [ref for ref in models.loads if getattr(ref, "patches", ())]
    assert sorted(ref.component for ref in patched) == sorted(MODEL_PARTS) and all(models.loads[p] == 1 for p in patched)


def test_an_sdxl_kohya_file_gives_the_diffusers_files_model(tiny_sdxl, xl_loras, tmp_path):
    """The same LoRA in kohya's SDXL layout (lora_unet_…, lora_te1_…, lora_te2_…, alpha 2 for
    rank 4) patches all three parts as the diffusers file does."""
    from graphflow_nodes.loading.lora import file_components, lora_keys

    from tests.lora_files import write_kohya

    unet, te, te2 = sdxl_lora_tensors(tiny_sdxl, seed=1, rank=4)
    path = write_kohya(tmp_path / "xl_kohya.safetensors", unet, te, alpha=2.0, te2_layers=te2)
    keys = lora_keys(path)
    assert any(k.startswith("lora_te2_") for k in keys) and file_components(keys) == set(MODEL_PARTS)
    ex = Executor()
    a = graph_run(ex, tiny_sdxl, [(xl_loras["a"], 0.8, 0.6)])
    k = graph_run(ex, tiny_sdxl, [(path, 0.8, 0.6)])
    assert (a["image"] - k["image"]).abs().max().item() <= 1e-5
    assert (a["embeddings"] - k["embeddings"]).abs().max().item() <= 1e-5
    assert (a["pooled"] - k["pooled"]).abs().max().item() <= 1e-5


def test_an_sdxl_lora_patches_a_single_file_checkpoint_as_it_patches_the_folder(tiny_sdxl, xl_loras, tmp_path):
    """The same SDXL weights as one original-layout file (built with the folder's configs): two
    stacked LoRAs give the folder's LoRA picture (within 1e-5: the folder's weights are
    memory-mapped at other alignments, see test_checkpoint) and embeddings exactly."""
    from tests.original_layout import write_original_checkpoint

    ckpt = write_original_checkpoint(tiny_sdxl, tmp_path / "tiny-sdxl.safetensors", "sdxl")
    stack = [(xl_loras["a"], 0.7, 0.5), (xl_loras["b"], 0.4, 1.2)]
    ex = Executor()
    folder = graph_run(ex, tiny_sdxl, stack)
    r = ex.run(Workflow.from_dict(sdxl_lora_doc(ckpt, stack)).with_params(
        config=str(tiny_sdxl), steps=STEPS, seed=SEED, guidance=GUIDANCE, prompt=PROMPT))
    assert r.ok, r.errors
    assert torch.equal(r["embeddings"], folder["embeddings"])
    assert (r["pooled"] - folder["pooled"]).abs().max().item() <= 1e-6
    assert (r["image"] - folder["image"]).abs().max().item() <= 1e-5
