"""LoRAs on SD3 and Flux: LoadLoRA patches the transformer and the CLIP encoders as references,
stacked, the base untouched, and the pictures equal the pipelines' ``load_lora_weights`` +
``set_adapters`` (diffusers/peft files for both families, kohya-style files for both: SD3's against
its diffusers-format twin, since diffusers reads no kohya SD3 file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphflow import Executor, Workflow
from tests.flow_lora_files import flow_lora_tensors, with_loras, write_flow_lora, write_flux_kohya, write_sd3_kohya

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
STEPS, SIZE, SEED = 2, 32, 5
WORKFLOW = {"sd3": "txt2img_sd3", "flux": "txt2img_flux"}


def graph(model: Path, loras, sd3: bool, executor: Executor | None = None) -> torch.Tensor:
    doc = with_loras(WORKFLOW["sd3" if sd3 else "flux"], loras, sd3)
    r = (executor or Executor()).run(Workflow.from_dict(doc).with_params(
        model=str(model), prompt=PROMPT, steps=STEPS, seed=SEED, width=SIZE, height=SIZE))
    assert r.ok, r.errors
    return r.outputs["image"]


def reference(model: Path, loras, sd3: bool) -> torch.Tensor:
    import diffusers

    p = getattr(diffusers, "StableDiffusion3Pipeline" if sd3 else "FluxPipeline").from_pretrained(model, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    names = []
    for n, (path, _) in enumerate(loras):
        p.load_lora_weights(str(path), adapter_name=f"l{n}")
        names.append(f"l{n}")
    p.set_adapters(names, [s for _, s in loras])
    kw = dict(guidance_scale=7.0 if sd3 else 3.5, max_sequence_length=256 if sd3 else 512)
    return p(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(SEED),
             output_type="pt", **kw).images


@pytest.fixture(scope="module")
def flow_loras(tiny_sd3, tiny_flux, tmp_path_factory):
    d = tmp_path_factory.mktemp("flow-loras")
    return {
        "sd3": (write_flow_lora(d / "sd3-a.safetensors", tiny_sd3, flow_lora_tensors(tiny_sd3, 1)),
                write_flow_lora(d / "sd3-b.safetensors", tiny_sd3, flow_lora_tensors(tiny_sd3, 2))),
        "flux": (write_flow_lora(d / "flux-a.safetensors", tiny_flux, flow_lora_tensors(tiny_flux, 3)),
                 write_flux_kohya(d / "flux-kohya.safetensors", tiny_flux, 4)),
    }


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_stacked_loras_equal_load_lora_weights_and_set_adapters(family, flow_loras, request):
    sd3 = family == "sd3"
    model = request.getfixturevalue("tiny_sd3" if sd3 else "tiny_flux")
    a, b = flow_loras[family]  # flux: a diffusers file, then a kohya-style one
    ex = Executor()
    base = graph(model, [], sd3, ex)
    for loras in ([(a, 0.8)], [(b, 1.0)], [(a, 0.7), (b, 0.4)]):
        ours, theirs = graph(model, loras, sd3, ex), reference(model, loras, sd3)
        diff = (ours - theirs).abs().max().item()
        assert diff <= 1e-5, (loras, diff)
        assert (ours - base).abs().max().item() > 1e-3  # the LoRA does change the picture
    assert torch.equal(graph(model, [], sd3, ex), base)  # the base in memory was never touched


@pytest.fixture(scope="module")
def sd3_kohya(tiny_sd3, tmp_path_factory):
    d = tmp_path_factory.mktemp("sd3-kohya")
    return write_sd3_kohya(d / "sd3-kohya.safetensors", d / "sd3-kohya-twin.safetensors", tiny_sd3, 7)


def test_a_kohya_sd3_lora_equals_its_diffusers_twin(tiny_sd3, flow_loras, sd3_kohya):
    """A kohya-style SD3 file (original MMDiT names, fused qkv, the final and last text-side
    modulations in (shift, scale) order, alphas; CLIP-L and CLIP-G as lora_te1_/lora_te2_) gives
    the picture diffusers gives for the same LoRA in its own format, alone and stacked after a
    diffusers file. (Before sd3_kohya, LoadLoRA refused such files by name.)"""
    kohya, twin = sd3_kohya
    ex = Executor()
    base = graph(tiny_sd3, [], True, ex)
    for ours_loras, twin_loras in (([(kohya, 0.9)], [(twin, 0.9)]),
                                   ([(flow_loras["sd3"][0], 0.7), (kohya, 0.4)], [(flow_loras["sd3"][0], 0.7), (twin, 0.4)])):
        ours, theirs = graph(tiny_sd3, ours_loras, True, ex), reference(tiny_sd3, twin_loras, True)
        diff = (ours - theirs).abs().max().item()
        assert diff <= 1e-5, (ours_loras, diff)
        assert (ours - base).abs().max().item() > 1e-3
    assert torch.equal(graph(tiny_sd3, [], True, ex), base)


def test_a_kohya_sd3_lora_with_t5_weights_is_refused_by_name(tiny_sd3, sd3_kohya, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(sd3_kohya[0]))
    tensors |= {"lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.zeros(4, 32),
                "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": torch.zeros(32, 4)}
    save_file(tensors, str(tmp_path / "with-t5.safetensors"))
    doc = with_loras("txt2img_sd3", [(tmp_path / "with-t5.safetensors", 1.0)], sd3=True)
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_sd3), steps=1, width=SIZE, height=SIZE))
    assert not r.ok
    assert r.errors[0].node == "lora0"
    assert "with-t5.safetensors has T5 weights (lora_te3_…): graphflow patches SD3's transformer and CLIP encoders only" in str(r.errors[0])


def test_a_flux_lora_on_sd3_is_refused_by_name(tiny_sd3, flow_loras):
    doc = with_loras("txt2img_sd3", [(flow_loras["flux"][0], 1.0)], sd3=True)
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_sd3), steps=1, width=SIZE, height=SIZE))
    assert not r.ok
    # (refused where the patched transformer first loads: the file is read then, not in LoadLoRA)
    assert "flux-a.safetensors does not fit this sd3 transformer: it has no layer single_transformer_blocks.0." in str(r.errors[0]), r.errors
