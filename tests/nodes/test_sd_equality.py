"""The node library against diffusers and transformers themselves, on a tiny random-weight model
built from the real classes: same weights, seed and settings must give the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
PROMPT = "a red circle on a blue background"


def load(name: str, **params) -> Workflow:
    """A shipped workflow without its file-writing output: these tests compare tensors."""
    wf = graphflow.load(WORKFLOWS / f"{name}.json")
    wf.doc.outputs.pop("files", None)
    return wf.with_params(**params)


def test_token_ids_are_clips():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(REPO / "nodes" / "models" / "tiny-sd" / "tokenizer")
    ids = tok("A picture of a puppy", padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert ids == [49406, 320, 1674, 539, 320, 6829, 49407] + [49407] * 70
    assert len(tok) == 49408


def test_tokenize_node_gives_clip_ids(tiny_model):
    wf = Workflow.from_dict({
        "format": 1,
        "nodes": {
            "model": {"type": "LoadModel", "inputs": {"path": str(tiny_model)}},
            "tok": {"type": "Tokenize", "inputs": {"tokenizer": {"from": "model.tokenizer"}, "text": "A picture of a puppy"}},
        },
        "outputs": {"ids": "tok.token_ids", "mask": "tok.attention_mask"},
    })
    r = Executor().run(wf)
    assert r["ids"].tolist() == [[49406, 320, 1674, 539, 320, 6829, 49407] + [49407] * 70]
    assert r["mask"].sum().item() == 7


def text_chain_doc(model: Path, prompt: str) -> dict:
    f = lambda r: {"from": r}  # noqa: E731
    return {
        "format": 1,
        "nodes": {
            "model": {"type": "LoadModel", "inputs": {"path": str(model)}},
            "tok": {"type": "Tokenize", "inputs": {"tokenizer": f("model.tokenizer"), "text": prompt}},
            "te": {"type": "TokenEmbed", "inputs": {"text_encoder": f("model.text_encoder"), "token_ids": f("tok.token_ids")}},
            "pe": {"type": "PosEmbed", "inputs": {"text_encoder": f("model.text_encoder"), "token_ids": f("tok.token_ids")}},
            "add": {"type": "AddEmbeddings", "inputs": {"token_embeddings": f("te.token_embeddings"), "position_embeddings": f("pe.position_embeddings")}},
            "enc": {"type": "TextEncode", "inputs": {"text_encoder": f("model.text_encoder"), "input_embeddings": f("add.input_embeddings")}},
            "one": {"type": "EncodePrompt", "inputs": {"tokenizer": f("model.tokenizer"), "text_encoder": f("model.text_encoder"), "text": prompt}},
        },
        "outputs": {"chain": "enc.text_embeddings", "one": "one.text_embeddings", "ids": "tok.token_ids"},
    }


def test_text_internals_equal_the_text_encoder(tiny_model, pipe):
    r = Executor().run(Workflow.from_dict(text_chain_doc(tiny_model, PROMPT)))
    assert r.ok, r.errors
    with torch.no_grad():
        ref = pipe.text_encoder(r["ids"])[0]
    assert (r["chain"] - ref).abs().max().item() <= 1e-5
    assert (r["one"] - ref).abs().max().item() <= 1e-5
    assert ref.abs().mean().item() > 0.1  # a real tensor, not zeros


@pytest.mark.parametrize("name,cls", [
    ("lms", "LMSDiscreteScheduler"),
    ("ddim", "DDIMScheduler"),
    ("dpm", "DPMSolverMultistepScheduler"),
    ("euler", "EulerDiscreteScheduler"),
    ("euler_a", "EulerAncestralDiscreteScheduler"),
    ("ddpm", "DDPMScheduler"),
])
def test_txt2img_equals_stable_diffusion_pipeline(tiny_model, pipe, name, cls):
    import diffusers

    steps, seed, guidance = 6, 3, 7.5
    r = Executor().run(load("txt2img", model=str(tiny_model), steps=steps, seed=seed, guidance=guidance, scheduler=name))
    assert r.ok, r.errors
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)
    ref = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
               output_type="pt").images
    assert r["image"].shape == ref.shape == (1, 3, 64, 64)
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01  # the comparison is between pictures, not two flat fields


@pytest.mark.parametrize("name,cls", [("lms", "LMSDiscreteScheduler"), ("euler_a", "EulerAncestralDiscreteScheduler")])
def test_img2img_same_seed_same_picture(tiny_model, tmp_path, name, cls):
    """Start step k of n steps is strength 1 - k/n. With nothing but the seed, the graph draws the
    VAE's sample, then the noise, then each ancestral step's noise from one generator, in the
    pipeline's order (VAEEncode.rng -> NoiseLike -> the loop's carried rng): the same picture."""
    import diffusers
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    steps, start, seed = 10, 4, 5
    image_path = REPO / "nodes" / "samples" / "red-circle-on-blue.png"
    p2 = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    p2.set_progress_bar_config(disable=True)
    p2.scheduler = getattr(diffusers, cls).from_config(p2.scheduler.config)
    ref = p2("a yellow circle on a blue background", image=Image.open(image_path), strength=1 - start / steps,
             num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(seed), output_type="pt").images
    wf = load("img2img", model=str(tiny_model), steps=steps, start_step=start, seed=seed, scheduler=name,
              image=str(image_path), guidance=4.0)
    r = Executor(out_dir=tmp_path).run(wf)
    assert r.ok, r.errors
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01
    other = Executor(out_dir=tmp_path).run(wf.with_params(seed=seed + 1))
    assert (other["image"] - ref).abs().max().item() > 1e-3  # the seed reaches the picture


def test_textual_inversion_equals_diffusers_loader(tiny_model, tmp_path):
    """A multi-piece placeholder replaced in the token embeddings gives the text embeddings
    diffusers computes after adding the placeholder to its vocabulary."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    vec = torch.randn(32, generator=torch.Generator().manual_seed(1))
    save_file({"<my-shape>": vec}, tmp_path / "ti.safetensors")
    p = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    p.load_textual_inversion(str(tmp_path / "ti.safetensors"), token="<my-shape>")
    prompt = "a red <my-shape> on a blue background"
    ref, _ = p.encode_prompt(prompt, "cpu", 1, False)

    doc = load("textual_inversion").doc.raw
    doc["outputs"] = {"cond": "cond.text_embeddings", "replaced": "replace.replaced"}
    wf = Workflow.from_dict(doc).with_params(model=str(tiny_model), embedding=str(tmp_path / "ti.safetensors"), prompt=prompt)
    r = Executor().run(wf)
    assert r.ok, r.errors
    assert r["replaced"] == 1
    assert (r["cond"] - ref).abs().max().item() <= 1e-5


def test_token_replacement_equals_the_replacing_prompt(tiny_model):
    """Putting the embedding of 'green' in place of 'red' is, for a one-token word, exactly the
    prompt that says 'green'."""
    doc = load("token_replace").doc.raw
    doc["outputs"] = {"cond": "cond.text_embeddings"}
    doc["nodes"]["direct"] = {"type": "EncodePrompt", "inputs": {"tokenizer": {"from": "model.tokenizer"},
                              "text_encoder": {"from": "model.text_encoder"}, "text": "a green circle on a blue background"}}
    doc["outputs"]["direct"] = "direct.text_embeddings"
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_model)))
    assert r.ok, r.errors
    assert (r["cond"] - r["direct"]).abs().max().item() <= 1e-5


def test_guidance_change_reruns_the_loop_and_still_equals_the_pipeline(tiny_model, pipe):
    """The scheduler is a value carried through the loop: a cached scheduler is never advanced, so
    a second run in the same executor, with a new guidance scale, is again exact."""
    from diffusers import LMSDiscreteScheduler

    ex = Executor()
    wf = load("txt2img", model=str(tiny_model), steps=5, seed=2, scheduler="lms")
    first = ex.run(wf.with_params(guidance=3.0))
    second = ex.run(wf.with_params(guidance=6.0))
    assert second.runs("unet") == 5 and second.runs("model") == 0 and second.runs("cond") == 0
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    ref = pipe(PROMPT, num_inference_steps=5, guidance_scale=6.0, generator=torch.Generator().manual_seed(2), output_type="pt").images
    assert (second["image"] - ref).abs().max().item() <= 1e-4
    assert (first["image"] - second["image"]).abs().max().item() > 1e-3
    third = ex.run(wf.with_params(guidance=6.0))
    assert third.runs("denoise") == 0 and third.runs("unet") == 0 and third.runs("decode") == 0
