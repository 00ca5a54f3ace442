"""The flow-matching families (SD3, Flux.1) node by node, on tiny random folders built from the
real classes: loading and describing the folders, each text-side and latent-side node against the
pipelines' own methods, the scheduler's shift, x0 for a velocity, and the errors that name the
node and the fix. Whole pictures against the pipelines are cells of tests/conformance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"


def run(doc: dict, **params):
    r = Executor().run(Workflow.from_dict(doc).with_params(**params))
    assert r.ok, r.errors
    return r


def workflow(name: str, outputs: dict) -> dict:
    doc = graphflow.load(REPO / "workflows" / f"{name}.json").doc.raw
    doc["outputs"] = outputs
    return doc


def pipeline(cls: str, path: Path, **kw):
    import diffusers

    p = getattr(diffusers, cls).from_pretrained(path, local_files_only=True, **kw)
    p.set_progress_bar_config(disable=True)
    return p


# --- loading -------------------------------------------------------------------------------------

def test_load_model_reads_sd3_and_flux_folders(tiny_sd3, tiny_flux, tiny_sd3_no_t5):
    doc = {"format": 1, "params": {"model": {"default": ""}},
           "nodes": {"m": {"type": "LoadModel", "inputs": {"path": {"param": "model"}}}},
           "outputs": {"family": "m.family", "transformer": "m.transformer", "t5": "m.text_encoder_3", "unet": "m.unet",
                       "flux_t5": "m.text_encoder_2"}}
    r = run(doc, model=str(tiny_sd3))
    assert r["family"] == "sd3"
    assert (r["transformer"].component, r["transformer"].family, r["t5"].component) == ("transformer", "sd3", "text_encoder_3")
    assert type(r["unet"]).__name__ == "MissingComponent"
    r = run(doc, model=str(tiny_sd3_no_t5))
    assert type(r["t5"]).__name__ == "AbsentComponent" and r["family"] == "sd3"
    r = run(doc, model=str(tiny_flux))
    assert r["family"] == "flux" and r["flux_t5"].component == "text_encoder_2" and type(r["t5"]).__name__ == "MissingComponent"


def test_a_flux_folder_missing_its_t5_is_refused_by_name(tiny_flux, tmp_path):
    """T5 is optional for SD3 only: a Flux folder without it is refused before anything loads."""
    broken = tmp_path / "flux"
    shutil.copytree(tiny_flux, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["text_encoder_2"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    r = Executor().run(Workflow.from_dict({"format": 1, "nodes": {"m": {"type": "LoadModel", "inputs": {"path": str(broken)}}},
                                           "outputs": ["m"]}))
    assert not r.ok and r.errors[0].node == "m"
    assert "has no 'text_encoder_2' component; a flux model (FluxPipeline) needs" in r.errors[0].message


def test_validate_and_models_say_the_family(tiny_sd3, tiny_sd3_no_t5, tiny_flux):
    from graphflow_nodes.catalog import folder_family
    from graphflow_nodes.loading.descriptions import describe_model_folder

    assert describe_model_folder(str(tiny_sd3)).startswith("sd3 model (StableDiffusion3Pipeline: Stable Diffusion 3 and 3.5")
    assert "saved without tokenizer_3 and text_encoder_3" in describe_model_folder(str(tiny_sd3_no_t5))
    assert describe_model_folder(str(tiny_flux)).startswith("flux model (FluxPipeline: FLUX.1 dev and schnell")
    assert [folder_family(p) for p in (tiny_sd3, tiny_sd3_no_t5, tiny_flux)] == ["sd3", "sd3", "flux"]


# --- the text side -------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_sd3_no_t5"])
def test_sd3_joint_embeddings_equal_encode_prompt(model, request):
    """Two CLIP penultimate states padded to T5's width, then T5's sequence (zeros without T5);
    the projected pooled embeddings concatenated; negative first in the guidance batch."""
    path = request.getfixturevalue(model)
    r = run(workflow("txt2img_sd3", {"embeddings": "embeddings.embeddings", "pooled": "pooled.pooled"}),
            model=str(path), prompt=PROMPT, negative_prompt="blurry", max_sequence_length=32)
    extra = {} if model == "tiny_sd3" else {"text_encoder_3": None, "tokenizer_3": None}
    with torch.no_grad():  # as inside the pipeline's __call__ (with gradients T5's attention sums in another order)
        pe, ne, pp, npool = pipeline("StableDiffusion3Pipeline", path, **extra).encode_prompt(
            PROMPT, None, None, device="cpu", negative_prompt="blurry", max_sequence_length=32)
    assert r["embeddings"].shape == (2, 77 + 32, 96) and r["pooled"].shape == (2, 32)
    assert (r["embeddings"] - torch.cat([ne, pe])).abs().max().item() == 0.0
    assert (r["pooled"] - torch.cat([npool, pp])).abs().max().item() == 0.0
    assert (r["embeddings"][:, 77:].abs().max().item() == 0.0) == (model == "tiny_sd3_no_t5")


def test_flux_text_side_equals_encode_prompt(tiny_flux):
    r = run(workflow("txt2img_flux", {"t5": "t5.hidden_states", "pooled": "clip.pooled", "ids": "text_ids.text_ids"}),
            model=str(tiny_flux), prompt=PROMPT, prompt_2="a blue square", max_sequence_length=24)
    with torch.no_grad():
        pe, pp, ids = pipeline("FluxPipeline", tiny_flux).encode_prompt(PROMPT, "a blue square", device="cpu", max_sequence_length=24)
    assert r["t5"].shape == (1, 24, 32) and r["pooled"].shape == (1, 32) and r["ids"].shape == (24, 3)
    assert (r["t5"] - pe).abs().max().item() == 0.0 and (r["pooled"] - pp).abs().max().item() == 0.0
    assert torch.equal(r["ids"], ids)


def test_the_t5_node_without_an_encoder_needs_the_transformer(tiny_sd3_no_t5):
    doc = workflow("txt2img_sd3", {"t5": "cond_3.hidden_states"})
    del doc["nodes"]["cond_3"]["inputs"]["transformer"]
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_sd3_no_t5)))
    assert not r.ok and r.errors[0].node == "cond_3"
    assert "the model has no T5 encoder: wire the transformer to EncodeT5" in r.errors[0].message


# --- latents, schedule, x0 -----------------------------------------------------------------------

def test_pack_and_unpack_equal_the_flux_pipeline(tiny_flux):
    from diffusers import FluxPipeline

    doc = {"format": 1, "params": {"model": {"default": ""}}, "nodes": {
        "m": {"type": "LoadModel", "inputs": {"path": {"param": "model"}}},
        "noise": {"type": "FlowLatents", "inputs": {"transformer": {"from": "m.transformer"}, "vae": {"from": "m.vae"}, "seed": 5,
                                                    "width": 96, "height": 64}},
        "pack": {"type": "PackLatents", "inputs": {"latents": {"from": "noise.latents"}}},
        "unpack": {"type": "UnpackLatents", "inputs": {"latents": {"from": "pack.latents"}, "image_ids": {"from": "pack.image_ids"}}}},
        "outputs": {"noise": "noise.latents", "packed": "pack.latents", "ids": "pack.image_ids", "unpacked": "unpack.latents"}}
    r = run(doc, model=str(tiny_flux))
    p = pipeline("FluxPipeline", tiny_flux)
    latents, ids = p.prepare_latents(1, 16, 64, 96, torch.float32, "cpu", torch.Generator().manual_seed(5))
    assert r["noise"].shape == (1, 16, 8, 12) and r["packed"].shape == (1, 24, 64)
    assert torch.equal(r["packed"], latents) and torch.equal(r["ids"], ids)
    assert torch.equal(r["unpacked"], FluxPipeline._unpack_latents(latents, 64, 96, 8)) and torch.equal(r["unpacked"], r["noise"])


def test_flow_shift_and_the_flux_schedule(tiny_flux):
    """mu from the packed sequence length (FluxPipeline's calculate_shift), then the schedule of
    sigmas 1 → 1/steps shifted by exp(mu): the pipeline's timesteps exactly."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    r = run(workflow("txt2img_flux", {"mu": "shift.mu", "n": "shift.image_seq_len", "timesteps": "schedule.timesteps"}),
            model=str(tiny_flux), width=128, height=64, steps=5)
    assert r["n"] == 4 * 8 and r["mu"] == calculate_shift(32, 256, 4096, 0.5, 1.15)
    p = pipeline("FluxPipeline", tiny_flux)
    p.scheduler.set_timesteps(5, sigmas=np.linspace(1.0, 1 / 5, 5), mu=r["mu"])
    assert torch.equal(torch.stack(list(r["timesteps"])), p.scheduler.timesteps)


def test_a_dynamically_shifted_scheduler_without_mu_is_refused(tiny_flux):
    doc = workflow("txt2img_flux", {"timesteps": "schedule.timesteps"})
    del doc["nodes"]["schedule"]["inputs"]["mu"]
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_flux)))
    assert not r.ok and r.errors[0].node == "schedule"
    assert "use_dynamic_shifting (Flux dev's config) needs mu: wire FlowShift.mu" in r.errors[0].message


@pytest.mark.parametrize("model,name", [("tiny_flux", "lms"), ("tiny_sd3", "euler_a"), ("tiny_model", "flow_euler")])
def test_a_scheduler_of_the_other_kind_is_refused_by_name(model, name, request):
    """A velocity stepped as noise (or noise as a velocity) gives a picture of nothing: refused,
    naming the schedulers that fit."""
    path = request.getfixturevalue(model)
    wf = {"tiny_flux": "txt2img_flux", "tiny_sd3": "txt2img_sd3", "tiny_model": "txt2img"}[model]
    r = Executor().run(graphflow.load(REPO / "workflows" / f"{wf}.json").with_params(model=str(path), scheduler=name, steps=2))
    assert not r.ok and r.errors[0].node == "schedule"
    msg = r.errors[0].message
    if model == "tiny_model":
        assert "FlowMatchEulerDiscreteScheduler does not fit a noise-prediction model" in msg and "lms, ddim" in msg
    else:
        assert ("does not fit a flow-matching model (SD3, Flux) (its config is a FlowMatchEulerDiscreteScheduler); use model or one of: "
                "flow_euler, flow_euler_karras, flow_euler_exponential, flow_euler_beta, flow_heun, flow_dpm, flow_dpm_single, flow_unipc, "
                "flow_deis") in msg


def test_pred_x0_of_a_velocity_is_x_t_minus_sigma_v():
    """FlowMatch schedulers report no x0: SchedulerStep derives it as x_t − σ·v at the step's σ,
    and a step from there lands where the scheduler's own step does."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from graphflow_nodes.stages.prediction import noise_levels, predicted_x0

    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(4)
    s.set_begin_index(1)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g)
    t = s.timesteps[1]
    sigma = s.sigmas[1]
    x0 = predicted_x0(s, v, t, x)
    assert torch.equal(x0, x - sigma * v)
    alpha_t, sigma_t, exploding = noise_levels(s, t, x)
    assert (float(alpha_t), float(sigma_t), exploding) == (pytest.approx(1 - float(sigma)), pytest.approx(float(sigma)), False)
    # the noise the velocity implies, carried to the next σ along the straight path, is the Euler step
    noise = x0 + v
    step = s.step(v, t, x).prev_sample
    assert (step - ((1 - s.sigmas[2]) * x0 + s.sigmas[2] * noise)).abs().max().item() < 1e-5


def test_predict_flux_refuses_unpacked_latents(tiny_flux):
    doc = workflow("txt2img_flux", {"image": "decode.image"})
    doc["nodes"]["denoise"]["carry"]["latents"] = {"from": "noise.latents"}
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(tiny_flux), width=64, height=64, steps=1))
    assert not r.ok and r.errors[0].node == "transformer"
    assert "PredictFlux takes packed (batch, patches, features) latents, not (1, 16, 8, 8): put PackLatents before the loop" in r.errors[0].message
