"""SD 2.x: a v-prediction model runs through the SD 1.x workflows and equals diffusers' pipeline,
and every node that reads the model output as something (the predicted x0, colour guidance) is
right for epsilon, v and sample prediction: checked against each scheduler's own x0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Context, Executor
from tests.tiny_model import SCHEDULER_CONFIG

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
SCHEDULERS = {
    "lms": "LMSDiscreteScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler",
    "heun": "HeunDiscreteScheduler",
}


@pytest.fixture(scope="module")
def v_model(tmp_path_factory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random-sd2-v", seed=1, prediction_type="v_prediction")


def _make(name: str, prediction_type: str, steps: int = 10):
    import diffusers

    cfg = {**SCHEDULER_CONFIG, "prediction_type": prediction_type}
    s = getattr(diffusers, SCHEDULERS[name]).from_config(cfg)
    s.set_timesteps(steps)
    return s


def _dpm_x0(s, out, t, x):
    """DPM-Solver++ keeps its x0 (converted from any prediction type) in model_outputs."""
    s.step(out, t, x)
    return s.model_outputs[-1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", ["lms", "euler", "euler_a", "ddim", "ddpm", "dpm", "heun"])
def test_pred_x0_equals_the_schedulers_own(name, prediction_type):
    """SchedulerStep's pred_x0 and the x0 colour guidance decodes (prediction.predicted_x0) equal
    the scheduler's own ``pred_original_sample`` (DPM-Solver++: its converted model output), at
    the first, a middle and the last step."""
    from graphflow_nodes.stages.prediction import predicted_x0
    from graphflow_nodes.stages.scheduler_state import clone
    from graphflow_nodes.stages.scheduling import SchedulerStep

    g = torch.Generator().manual_seed(0)
    s = _make(name, prediction_type)
    x = torch.randn((1, 4, 8, 8), generator=g) * s.init_noise_sigma
    node = SchedulerStep()
    for k, t in enumerate(s.timesteps):
        out = torch.randn((1, 4, 8, 8), generator=g)
        ours = predicted_x0(s, out, t, x)
        ref_s = clone(s)
        ref_s.is_scale_input_called = True
        if name == "dpm":
            ref = _dpm_x0(ref_s, out, t, x)
        else:
            kwargs = {"generator": torch.Generator().manual_seed(k)} if name in ("euler_a", "ddpm") else {}
            try:
                ref = ref_s.step(out, t, x, **kwargs).pred_original_sample
            except NotImplementedError as e:  # Euler ancestral has no sample prediction
                pytest.skip(f"{name} does not implement {prediction_type}: {e}")
        assert (ours - ref).abs().max().item() <= 1e-5, (k, t)
        r = SchedulerStep.run(node, SchedulerStep.In(scheduler=s, noise_pred=out, timestep=t, latents=x, seed=0), Context())
        assert (r["pred_x0"] - ref).abs().max().item() <= 1e-5
        x, s = r["latents"], r["scheduler"]
    assert k == len(s.timesteps) - 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])  # PNDM has no sample prediction
def test_pndm_pred_x0_equals_ddim_at_the_same_timestep(prediction_type):
    """PNDM reports no x0; the one derived for it uses the same alphas_cumprod[t] as DDIM, whose
    step reports one: equal at every timestep of the schedule."""
    from graphflow_nodes.stages.scheduling import SchedulerStep

    g = torch.Generator().manual_seed(1)
    pndm, ddim = _make("pndm", prediction_type), _make("ddim", prediction_type)
    x = torch.randn((1, 4, 8, 8), generator=g)
    for t in pndm.timesteps[:4]:
        out = torch.randn((1, 4, 8, 8), generator=g)
        r = SchedulerStep.run(SchedulerStep(), SchedulerStep.In(scheduler=pndm, noise_pred=out, timestep=t, latents=x), Context())
        ref = ddim.step(out, t, x).pred_original_sample
        assert (r["pred_x0"] - ref).abs().max().item() <= 1e-5
        pndm = r["scheduler"]


@pytest.mark.parametrize("name", ["lms", "ddim", "dpm", "euler_a"])
def test_v_prediction_txt2img_equals_stable_diffusion_pipeline(v_model, name):
    """An SD 2.x-style v-prediction model through the unchanged txt2img workflow."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    steps, seed, guidance = 6, 4, 5.0
    wf = graphflow.load(REPO / "workflows" / "txt2img.json")
    wf.doc.outputs.pop("files", None)
    r = Executor().run(wf.with_params(model=str(v_model), steps=steps, seed=seed, guidance=guidance, scheduler=name))
    assert r.ok, r.errors
    pipe = StableDiffusionPipeline.from_pretrained(v_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ref = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
               output_type="pt").images
    assert (r["image"] - ref).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.01


def test_color_guidance_on_v_prediction_decodes_the_schedulers_x0(v_model):
    """ColorGuidance's loss is computed on the decoded x0 the scheduler itself would report: for
    a v-prediction model that is not ``latents - sigma * output`` (the epsilon formula)."""
    from graphflow_nodes.loading.models import LoadModel
    from graphflow_nodes.stages.denoise import CHANNELS, ColorGuidance
    from graphflow_nodes.stages.vae import decode

    ctx = Context()
    refs = LoadModel.run(LoadModel(), LoadModel.In(path=str(v_model)), ctx)
    from graphflow.engine.model_manager import ModelManager

    models = ModelManager()
    ctx = Context(models=models)
    vae = models.get(refs["vae"])
    s = _make("lms", "v_prediction")
    g = torch.Generator().manual_seed(2)
    t = s.timesteps[3]
    x = torch.randn((1, 4, 8, 8), generator=g) * 3
    out = torch.randn((1, 4, 8, 8), generator=g)
    from graphflow_nodes.stages.scheduler_state import clone

    x0_ref = clone(s).step(out, t, x).pred_original_sample
    eps_x0 = x - s.sigmas[3] * out
    with torch.no_grad():
        want = (decode(vae, x0_ref)[:, CHANNELS["blue"]] - 0.9).abs().mean().item() * 10
        wrong = (decode(vae, eps_x0)[:, CHANNELS["blue"]] - 0.9).abs().mean().item() * 10
    r = ColorGuidance.run(ColorGuidance(), ColorGuidance.In(vae=refs["vae"], scheduler=s, latents=x, noise_pred=out, timestep=t,
                                                            scale=10.0), ctx)
    assert abs(r["loss"] - want) <= 1e-5
    assert abs(wrong - want) > 1e-3  # the epsilon formula would have given another loss
    assert (r["latents"] - x).abs().max().item() > 0
