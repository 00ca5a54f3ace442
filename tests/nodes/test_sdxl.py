"""SDXL through graphflow's nodes against diffusers' own SDXL pipelines, on a tiny random-weight
SDXL built from the real classes: same weights, seed and settings, same picture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
IMAGE = REPO / "nodes" / "samples" / "red-circle-on-blue.png"


def load(name: str, **params) -> Workflow:
    wf = graphflow.load(REPO / "workflows" / f"{name}.json")
    wf.doc.outputs.pop("files", None)
    return wf.with_params(**params)


@pytest.fixture(scope="module")
def xl(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    p = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def conditions(model: Path, **params) -> dict:
    """The workflow's conditioning nodes only (no loop)."""
    doc = load("txt2img_sdxl").doc.raw
    doc["outputs"] = {"embeddings": "conditions.embeddings", "pooled": "conditions.pooled", "time_ids": "conditions.time_ids",
                      "family": "model.family"}
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(model), **params))
    assert r.ok, r.errors
    return r


@pytest.mark.parametrize("negative", [None, "a green square"])
def test_conditions_equal_encode_prompt(tiny_sdxl, xl, negative):
    """Penultimate states of both encoders joined, the projected pooled embedding, zeros for no
    negative prompt (force_zeros_for_empty_prompt) or the negative prompt's embeddings."""
    r = conditions(tiny_sdxl, negative_prompt=negative or "")
    assert r["family"] == "sdxl"
    pe, ne, pp, npool = xl.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative)
    assert r["embeddings"].shape == (2, 77, 80) and r["pooled"].shape == (2, 24)
    assert (r["embeddings"] - torch.cat([ne, pe])).abs().max().item() == 0.0
    assert (r["pooled"] - torch.cat([npool, pp])).abs().max().item() == 0.0
    assert (r["embeddings"][0].abs().max().item() == 0.0) == (negative is None)
    ref_ids = xl._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32, text_encoder_projection_dim=24)
    assert r["time_ids"].tolist() == torch.cat([ref_ids, ref_ids]).tolist()


@pytest.mark.parametrize("negative,negative_2", [("a green square", "a white triangle"), ("", "a white triangle"), ("a green square", "")])
def test_second_prompts_equal_encode_prompt(tiny_sdxl, xl, negative, negative_2):
    """prompt_2 and negative_prompt_2 reach the second encoder only; empty means the same as
    prompt / negative_prompt (diffusers' ``prompt_2 or prompt``). A second negative prompt alone is
    a negative prompt (no zeros): the pipeline given negative_prompt="" and negative_prompt_2."""
    r = conditions(tiny_sdxl, prompt_2="a yellow square on a black background", negative_prompt=negative, negative_prompt_2=negative_2)
    pe, ne, pp, npool = xl.encode_prompt(PROMPT, prompt_2="a yellow square on a black background", device="cpu", do_classifier_free_guidance=True,
                                         negative_prompt=negative, negative_prompt_2=negative_2 or None)
    assert (r["embeddings"] - torch.cat([ne, pe])).abs().max().item() == 0.0
    assert (r["pooled"] - torch.cat([npool, pp])).abs().max().item() == 0.0
    same, *_ = xl.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert (pe[..., :32] - same[..., :32]).abs().max().item() == 0.0  # the first encoder still reads prompt
    assert (pe[..., 32:] - same[..., 32:]).abs().max().item() > 0.1
    assert ne.abs().max().item() > 0.1


def test_txt2img_sdxl_prompt_2_equals_the_pipeline_given_prompt_2(tiny_sdxl, xl):
    steps, seed, other = 4, 1, "a yellow square on a black background"
    r = Executor().run(load("txt2img_sdxl", model=str(tiny_sdxl), steps=steps, seed=seed, prompt_2=other))
    assert r.ok, r.errors
    ref = xl(PROMPT, prompt_2=other, num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
             output_type="pt").images
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    plain = xl(PROMPT, num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="pt").images
    assert (r["image"] - plain).abs().max().item() > 1e-3  # prompt_2 reaches the picture


def test_empty_prompt_is_encoded_when_the_model_does_not_force_zeros(tiny_sdxl, xl):
    """UncondXL's zeros default follows the model's force_zeros_for_empty_prompt; without it the
    empty prompt is encoded, as the pipeline does."""
    doc = load("txt2img_sdxl").doc.raw
    doc["outputs"] = {"embeddings": "conditions.embeddings", "pooled": "conditions.pooled"}
    doc["nodes"]["uncond"]["inputs"]["zeros"] = False
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_sdxl)))
    assert r.ok, r.errors
    xl.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        pe, ne, pp, npool = xl.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True)
    finally:
        xl.register_to_config(force_zeros_for_empty_prompt=True)
    assert ne.abs().max().item() > 0.1
    assert (r["embeddings"] - torch.cat([ne, pe])).abs().max().item() == 0.0
    assert (r["pooled"] - torch.cat([npool, pp])).abs().max().item() == 0.0


def test_hidden_state_choice_equals_clip_skip(tiny_sdxl, xl):
    """EncodeHidden 'last' is the final state after the final norm; 'penultimate' with skip=1 is
    diffusers' clip_skip=1."""
    f = lambda r: {"from": r}
    doc = {"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(tiny_sdxl)}},
        "last": {"type": "EncodeHidden", "inputs": {"tokenizer": f("model.tokenizer"), "text_encoder": f("model.text_encoder"), "text": PROMPT, "layer": "last"}},
        "s1": {"type": "EncodeHidden", "inputs": {"tokenizer": f("model.tokenizer"), "text_encoder": f("model.text_encoder"), "text": PROMPT, "skip": 1}},
        "s2": {"type": "EncodeHidden", "inputs": {"tokenizer": f("model.tokenizer_2"), "text_encoder": f("model.text_encoder_2"), "text": PROMPT, "skip": 1}},
        "cat": {"type": "ConcatEmbeddings", "inputs": {"a": f("s1.hidden_states"), "b": f("s2.hidden_states")}},
        "tok": {"type": "Tokenize", "inputs": {"tokenizer": f("model.tokenizer"), "text": PROMPT}},
    }, "outputs": {"last": "last.hidden_states", "skip1": "cat.text_embeddings", "ids": "tok.token_ids"}}
    r = Executor().run(Workflow.from_dict(doc))
    assert r.ok, r.errors
    with torch.no_grad():
        assert (r["last"] - xl.text_encoder(r["ids"])[0]).abs().max().item() == 0.0
    ref, *_ = xl.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False, clip_skip=1)
    assert (r["skip1"] - ref).abs().max().item() == 0.0


@pytest.mark.parametrize("name,cls", [("model", "EulerDiscreteScheduler"), ("euler_a", "EulerAncestralDiscreteScheduler"),
                                      ("dpm", "DPMSolverMultistepScheduler")])
def test_txt2img_sdxl_equals_the_sdxl_pipeline(tiny_sdxl, xl, name, cls):
    import diffusers

    steps, seed, guidance = 5, 3, 5.0
    r = Executor().run(load("txt2img_sdxl", model=str(tiny_sdxl), steps=steps, seed=seed, guidance=guidance, scheduler=name))
    assert r.ok, r.errors
    original = xl.scheduler
    xl.scheduler = getattr(diffusers, cls).from_config(original.config)
    try:
        ref = xl(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                 output_type="pt").images
    finally:
        xl.scheduler = original
    assert r["image"].shape == ref.shape == (1, 3, 64, 64)
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01


def test_txt2img_sdxl_negative_prompt_equals_the_pipeline(tiny_sdxl, xl):
    steps, seed = 4, 1
    r = Executor().run(load("txt2img_sdxl", model=str(tiny_sdxl), steps=steps, seed=seed, negative_prompt="a green square"))
    assert r.ok, r.errors
    ref = xl(PROMPT, negative_prompt="a green square", num_inference_steps=steps, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(seed), output_type="pt").images
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    plain = Executor().run(load("txt2img_sdxl", model=str(tiny_sdxl), steps=steps, seed=seed))
    assert (plain["image"] - ref).abs().max().item() > 1e-3  # the negative prompt reaches the picture


def test_img2img_sdxl_equals_the_sdxl_img2img_pipeline(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    steps, start, seed = 10, 4, 5
    p = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    ref = p("a yellow circle on a blue background", image=Image.open(IMAGE), strength=1 - start / steps, num_inference_steps=steps,
            guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="pt").images
    r = Executor(out_dir=tmp_path).run(load("img2img_sdxl", model=str(tiny_sdxl), steps=steps, start_step=start, seed=seed,
                                            image=str(IMAGE)))
    assert r.ok, r.errors
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01


def test_an_sd_model_has_no_second_encoder(tiny_model):
    """Wiring an SD 1.x folder into the SDXL workflow fails at the node that asks for the missing
    component, naming it and the family."""
    r = Executor().run(load("txt2img_sdxl", model=str(tiny_model), steps=2))
    assert not r.ok
    err = next(e for e in r.errors if "text_encoder_2" in e.message)
    assert err.node in ("prompt_2", "negative_2") and "sd model" in err.message


def test_float16_sdxl_decodes_and_encodes_with_a_float32_vae_as_the_pipelines_do(tiny_sdxl, tmp_path):
    """Under ``dtype="float16"`` SDXL's VAE (``force_upcast``) turns latents into pixels and back
    through a float32 copy, as ``StableDiffusionXLPipeline``/``Img2ImgPipeline`` do (``upcast_vae``).
    A VAE whose decoder overflows float16 (its first convolution's weights scaled up to 2000, as SDXL's real VAE
    overflows in its activations) decodes to a finite picture, where the float16 VAE itself gives
    inf/NaN; the shared float16 VAE stays float16 and the float32 copy loads once across txt2img and
    img2img. Against the float16 pipelines: within 1e-2 (measured 6.3e-4 txt2img, 3.0e-3 img2img;
    1.9e-3 and 4.2e-3 decoding in float16; the rest is float16 rounding in the loop)."""
    import shutil

    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from graphflow_nodes.loading.models import LoadModel
    from PIL import Image

    hot = tmp_path / "hot-sdxl"
    shutil.copytree(tiny_sdxl, hot)
    vae = AutoencoderKL.from_pretrained(hot, subfolder="vae")
    with torch.no_grad():
        w = vae.decoder.conv_in.weight
        w.mul_(2000 / w.abs().max())  # weights float16 holds; sums of them it cannot
    vae.save_pretrained(hot / "vae", safe_serialization=True)

    ex = Executor(dtype="float16", out_dir=tmp_path)
    steps, seed = 4, 3
    doc = load("txt2img_sdxl").doc.raw
    doc["outputs"] = {"image": "decode.image", "latents": "denoise.latents"}
    r = ex.run(Workflow.from_dict(doc).with_params(model=str(hot), steps=steps, seed=seed))
    i2i = ex.run(load("img2img_sdxl", model=str(hot), steps=10, start_step=4, seed=5, image=str(IMAGE)))
    assert r.ok and i2i.ok, (r.errors, i2i.errors)
    assert torch.isfinite(r["image"]).all() and r["image"].std().item() > 0.01
    with torch.no_grad():  # the float16 VAE alone overflows on the same latents
        z = r["latents"] / vae.config.scaling_factor
        assert not torch.isfinite(vae.to(torch.float16).decode(z.half()).sample).all()

    p = StableDiffusionXLPipeline.from_pretrained(hot, torch_dtype=torch.float16, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    ref = p(PROMPT, num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="pt").images
    assert (r["image"] - ref.float()).abs().max().item() <= 1e-2
    p = StableDiffusionXLImg2ImgPipeline.from_pretrained(hot, torch_dtype=torch.float16, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    ref = p("a yellow circle on a blue background", image=Image.open(IMAGE), strength=0.6, num_inference_steps=10, guidance_scale=5.0,
            generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert (i2i["image"] - ref.float()).abs().max().item() <= 1e-2

    shared = LoadModel().run(LoadModel.In(path=str(hot)), graphflow.Context())["vae"]
    assert next(ex.models.get(shared).parameters()).dtype == torch.float16
    upcast = [ref for ref in ex.models.loads if ref.component == "vae" and ref.patches]
    assert len(upcast) == 1 and ex.models.loads[upcast[0]] == 1
    assert next(ex.models.get(upcast[0]).parameters()).dtype == torch.float32
