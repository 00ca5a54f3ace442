"""SDXL's refiner through graphflow's nodes against diffusers' own pipelines, on a tiny random
refiner (tests/tiny_model.py::build_tiny_sdxl_refiner) that shares tiny_sdxl's second encoder and
VAE: the refiner's img2img against StableDiffusionXLImg2ImgPipeline, and base then refiner (the
"ensemble of expert denoisers") against base(denoising_end, output_type="latent") then
refiner(denoising_start)."""

from __future__ import annotations


import pytest
import torch

from graphflow import Executor, Workflow
from tests.nodes.test_sdxl import IMAGE, PROMPT, load


@pytest.fixture(scope="module")
def refiner_pipe(tiny_sdxl_refiner):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    p = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_sdxl_refiner, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    assert p.text_encoder is None and p.tokenizer is None and p.config.requires_aesthetics_score
    return p


@pytest.mark.parametrize("negative", [None, "a green square"])
def test_refiner_conditions_equal_the_pipeline(tiny_sdxl_refiner, refiner_pipe, negative):
    """The second encoder's penultimate state alone (48 wide, the refiner UNet's cross-attention
    width), its projected pooled embedding, the empty negative prompt encoded (the refiner does
    not force zeros), and five time ids per side: original size, crop, aesthetic score 6.0 for the
    prompt and 2.5 for the unconditional side."""
    doc = load("img2img_sdxl_refiner").doc.raw
    doc["outputs"] = {"embeddings": "conditions.embeddings", "pooled": "conditions.pooled", "time_ids": "conditions.time_ids",
                      "family": "model.family"}
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_sdxl_refiner), negative_prompt=negative or "", image=str(IMAGE)))
    assert r.ok, r.errors
    assert r["family"] == "sdxl-refiner"
    pe, ne, pp, npool = refiner_pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative)
    assert r["embeddings"].shape == (2, 77, 48) and r["pooled"].shape == (2, 24)
    assert (r["embeddings"] - torch.cat([ne, pe])).abs().max().item() == 0.0
    assert (r["pooled"] - torch.cat([npool, pp])).abs().max().item() == 0.0
    assert ne.abs().max().item() > 0.1  # no zeros: the empty prompt is encoded
    ids, neg_ids = refiner_pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), 6.0, 2.5, (64, 64), (0, 0), (64, 64),
                                                  dtype=torch.float32, text_encoder_projection_dim=24)
    assert r["time_ids"].tolist() == torch.cat([neg_ids, ids]).tolist() == [[64, 64, 0, 0, 2.5], [64, 64, 0, 0, 6.0]]


@pytest.mark.parametrize("negative", [None, "a green square"])
def test_img2img_sdxl_refiner_equals_the_refiner_pipeline(tiny_sdxl_refiner, refiner_pipe, tmp_path, negative):
    """Measured: 0.0 (bit for bit) with and without a negative prompt."""
    from PIL import Image

    steps, start, seed = 10, 4, 5
    ref = refiner_pipe(PROMPT, negative_prompt=negative, image=Image.open(IMAGE), strength=1 - start / steps, num_inference_steps=steps,
                       guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="pt").images
    r = Executor(out_dir=tmp_path).run(load("img2img_sdxl_refiner", model=str(tiny_sdxl_refiner), prompt=PROMPT, negative_prompt=negative or "",
                                            steps=steps, start_step=start, seed=seed, image=str(IMAGE)))
    assert r.ok, r.errors
    assert r["image"].shape == ref.shape == (1, 3, 64, 64)
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01


def test_aesthetic_scores_reach_the_picture(tiny_sdxl_refiner, tmp_path):
    ex = Executor(out_dir=tmp_path)
    common = dict(model=str(tiny_sdxl_refiner), steps=6, start_step=2, image=str(IMAGE))
    a = ex.run(load("img2img_sdxl_refiner", **common))
    b = ex.run(load("img2img_sdxl_refiner", aesthetic_score=9.0, negative_aesthetic_score=1.0, **common))
    assert a.ok and b.ok, (a.errors, b.errors)
    assert (a["image"] - b["image"]).abs().max().item() > 1e-3


@pytest.mark.parametrize("scheduler,negative", [("model", None), ("model", "a green square"), ("euler_a", None)])
def test_base_then_refiner_equals_denoising_end_then_denoising_start(tiny_sdxl, tiny_sdxl_refiner, refiner_pipe, scheduler, negative):
    """The base denoises steps [0, 6) of 10 and hands its latents to the refiner for [6, 10):
    diffusers' base(denoising_end=0.6, output_type="latent") then refiner(denoising_start=0.6),
    one seeded generator (Euler ancestral draws from it in both loops: the graph carries the
    base loop's generator state into the refiner's). Measured: 0.0 (bit for bit) in all three."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline

    steps, switch, seed = 10, 6, 2
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    original = refiner_pipe.scheduler
    if scheduler == "euler_a":
        base.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(base.scheduler.config)
        refiner_pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(original.config)
    g = torch.Generator().manual_seed(seed)
    try:
        latents = base(PROMPT, negative_prompt=negative, num_inference_steps=steps, denoising_end=switch / steps, guidance_scale=5.0,
                       generator=g, output_type="latent").images
        ref = refiner_pipe(PROMPT, negative_prompt=negative, image=latents, num_inference_steps=steps, denoising_start=switch / steps,
                           guidance_scale=5.0, generator=g, output_type="pt").images
    finally:
        refiner_pipe.scheduler = original
    doc = load("txt2img_sdxl_refiner").doc.raw
    doc["outputs"] = {"image": "decode.image", "handed_over": "denoise.latents", "base_steps": "schedule.timesteps",
                      "refiner_steps": "refiner_schedule.timesteps"}
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_sdxl), refiner=str(tiny_sdxl_refiner), negative_prompt=negative or "",
                                                           steps=steps, switch=switch / steps, seed=seed, scheduler=scheduler))
    assert r.ok, r.errors
    assert len(r["base_steps"]) == switch and len(r["refiner_steps"]) == steps - switch
    assert (r["handed_over"] - latents).abs().max().item() <= 1e-5
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01


def test_a_handoff_that_leaves_a_side_nothing_is_refused_naming_the_node(tiny_sdxl, tiny_sdxl_refiner):
    """A switch so late that no timestep of 4 lies below its noise level leaves the refiner
    nothing (its Scheduler says so); one so early that none lies above leaves the base nothing."""
    params = dict(model=str(tiny_sdxl), refiner=str(tiny_sdxl_refiner), steps=4)
    r = Executor().run(load("txt2img_sdxl_refiner", switch=0.999, **params))
    assert not r.ok
    (err,) = r.errors
    assert err.node == "refiner_schedule" and "denoising_start 0.999 leaves nothing of 4 steps" in err.message
    r = Executor().run(load("txt2img_sdxl_refiner", switch=0.01, **params))
    assert not r.ok and any(e.node == "schedule" and "leaves nothing of 4 steps ending at denoising_end 0.01" in e.message for e in r.errors)


def test_a_refiner_in_the_base_workflow_fails_naming_its_missing_encoder(tiny_sdxl_refiner):
    """A refiner has no first text encoder: txt2img_sdxl fails at the node that asks for it."""
    r = Executor().run(load("txt2img_sdxl", model=str(tiny_sdxl_refiner), steps=2))
    assert not r.ok
    err = next(e for e in r.errors if "text_encoder" in e.message)
    assert err.node in ("prompt_1", "negative_1") and "sdxl-refiner model" in err.message and "no text_encoder" in err.message


def test_a_base_model_in_the_refiner_workflow_is_told_which_conditions_it_takes(tiny_sdxl, tmp_path):
    """A base UNet given a refiner's five time ids: an error naming the node and the conditions it
    wants, as diffusers' _get_add_time_ids says, not a matrix-shape error inside the UNet."""
    r = Executor(out_dir=tmp_path).run(load("img2img_sdxl_refiner", model=str(tiny_sdxl), steps=4, start_step=2, image=str(IMAGE)))
    assert not r.ok
    (err,) = [e for e in r.errors if "time ids" in e.message]
    assert err.node == "unet" and "take 6 time ids" in err.message and "SizeConditions" in err.message


def test_a_lora_on_a_refiner_is_refused_by_name(tiny_model, tiny_sdxl_refiner, tmp_path):
    """The LoRA conversion knows SD and SDXL base layouts; a refiner's is refused, not guessed."""
    from tests.lora_files import lora_tensors, write_lora

    lora = write_lora(tmp_path / "sd.safetensors", *lora_tensors(tiny_model, seed=0))
    f = lambda r: {"from": r}  # noqa: E731
    r = Executor().run(Workflow.from_dict({"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(tiny_sdxl_refiner)}},
        "lora": {"type": "LoadLoRA", "inputs": {"unet": f("model.unet"), "text_encoder": f("model.text_encoder_2"), "path": str(lora)}},
    }, "outputs": {"unet": "lora.unet"}}))
    assert not r.ok
    (err,) = r.errors
    assert err.node == "lora" and "sdxl-refiner" in err.message and "not supported" in err.message


def test_float16_refiner_turns_latents_into_pixels_with_a_float32_vae(tiny_sdxl_refiner):
    """A refiner's VAE is SDXL's (``force_upcast``): under float16 it encodes and decodes through
    one float32 copy, as for an SDXL base, while the shared VAE stays float16."""
    f = lambda r: {"from": r}  # noqa: E731
    ex = Executor(dtype="float16")
    r = ex.run(Workflow.from_dict({"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(tiny_sdxl_refiner)}},
        "image": {"type": "LoadImage", "inputs": {"path": str(IMAGE)}},
        "encode": {"type": "VAEEncode", "inputs": {"vae": f("model.vae"), "image": f("image.image")}},
        "decode": {"type": "Decode", "inputs": {"vae": f("model.vae"), "latents": f("encode.latents")}},
    }, "outputs": {"image": "decode.image", "vae": "model.vae"}}))
    assert r.ok, r.errors
    assert torch.isfinite(r["image"]).all()
    assert next(ex.models.get(r["vae"]).parameters()).dtype == torch.float16
    upcast = [ref for ref in ex.models.loads if ref.component == "vae" and ref.patches]
    assert len(upcast) == 1 and ex.models.loads[upcast[0]] == 1
    assert next(ex.models.get(upcast[0]).parameters()).dtype == torch.float32
