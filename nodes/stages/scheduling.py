"""Schedulers as dataflow values. A diffusers scheduler keeps state between ``step()`` calls
(step index, LMS derivatives, DPM-Solver's model outputs), so no node mutates a scheduler it
received: each works on its own copy and ``SchedulerStep`` returns the advanced scheduler, which
the loop carries to the next iteration. A cached or re-run graph therefore never sees a scheduler
that an earlier run already advanced."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Literal

from graphflow_nodes.kinds import SEED_MAX, Latents, ModelInput, NoisePred, Rng, Scheduler, SchedulerConfig, Timestep, Timesteps
from graphflow_nodes.stages.scheduler_state import clone
from pydantic import Field

from graphflow.node_api import Context, Inputs, Limit, Node, Outputs

SCHEDULERS = {
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "heun": "HeunDiscreteScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
    "flow_euler_karras": "FlowMatchEulerDiscreteScheduler",
    "flow_euler_exponential": "FlowMatchEulerDiscreteScheduler",
    "flow_euler_beta": "FlowMatchEulerDiscreteScheduler",
    "flow_euler_stochastic": "FlowMatchEulerDiscreteScheduler",
    "flow_heun": "FlowMatchHeunDiscreteScheduler",
    "flow_lcm": "FlowMatchLCMScheduler",
    "flow_dpm": "DPMSolverMultistepScheduler",
    "flow_dpm_single": "DPMSolverSinglestepScheduler",
    "flow_unipc": "UniPCMultistepScheduler",
    "flow_deis": "DEISMultistepScheduler",
    "flow_sa_solver": "SASolverScheduler",
}
#: the noise-prediction solvers made to step a velocity on flow sigmas (diffusers' switches for
#: SANA, Wan and the like); ``flow_shift`` follows the model's own ``shift`` (scheduler_spec)
FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
#: the config switches a name stands for beside its class (one table: the Scheduler node and the
#: conformance cells read these two through scheduler_spec; the flow workflows' scheduler parameter
#: lists the names)
SCHEDULER_OPTIONS: dict[str, dict[str, Any]] = {
    "flow_euler_karras": {"use_karras_sigmas": True},
    "flow_euler_exponential": {"use_exponential_sigmas": True},
    "flow_euler_beta": {"use_beta_sigmas": True},
    "flow_euler_stochastic": {"stochastic_sampling": True},
    "flow_dpm": FLOW_SIGMAS,
    "flow_dpm_single": FLOW_SIGMAS,
    "flow_unipc": FLOW_SIGMAS,
    "flow_deis": FLOW_SIGMAS,
    "flow_sa_solver": FLOW_SIGMAS,
}
SchedulerName = Literal[("model", *SCHEDULERS)]  # type: ignore[valid-type]

#: flow schedulers that draw fresh noise at every step: SD3's and Flux's pipelines call ``step``
#: without their generator, so diffusers draws it from torch's global generator and its picture
#: follows no seed; there is no picture to be equal to, so these are refused rather than run
_GLOBAL_NOISE = ("it draws fresh noise at every step, which diffusers' SD3 and Flux pipelines take from torch's global "
                 "generator rather than the seeded one, so no seed reproduces their picture")
#: names FluxPipeline cannot run, and why: it hands ``set_timesteps`` its own sigmas (1 to 1/steps)
#: and ``mu`` whatever the config says
_NO_SIGMAS = ("FluxPipeline hands set_timesteps its own sigmas (1 to 1/steps), which this scheduler does not take "
              "(diffusers raises a ValueError)")
_MU_WITHOUT_SHIFTING = ("FluxPipeline passes mu, which this scheduler takes only with use_dynamic_shifting, and this config (FLUX.1 "
                        "schnell's) has none (diffusers fails an assertion in set_timesteps)")
REFUSED_ALWAYS = {"flow_euler_stochastic": _GLOBAL_NOISE, "flow_lcm": _GLOBAL_NOISE, "flow_sa_solver": _GLOBAL_NOISE}
REFUSED_ON_FLUX = {"flow_heun": _NO_SIGMAS}
REFUSED_ON_FLUX_WITHOUT_SHIFTING = {"flow_dpm": _MU_WITHOUT_SHIFTING, "flow_dpm_single": _MU_WITHOUT_SHIFTING, "flow_deis": _MU_WITHOUT_SHIFTING}


def scheduler_spec(name: str, model_config: dict) -> tuple[str, dict[str, Any]]:
    """The class and config switches ``name`` stands for on a model with this scheduler config.
    A flow-sigma solver takes the model's ``shift`` as its ``flow_shift``: SD3 is trained for
    shift 3, and a solver at its default of 1 would spend its steps where SD3 does not."""
    if name == "model":
        return str(model_config.get("_class_name", "")), {}
    options = dict(SCHEDULER_OPTIONS.get(name, {}))
    if options.get("use_flow_sigmas") and "shift" in model_config:
        options["flow_shift"] = model_config["shift"]
    return SCHEDULERS[name], options


def refusal(name: str, model_config: dict, flux_schedule: bool) -> str | None:
    """Why a flow scheduler name cannot run here (None: it can)."""
    if name in REFUSED_ALWAYS:
        return REFUSED_ALWAYS[name]
    if flux_schedule and name in REFUSED_ON_FLUX:
        return REFUSED_ON_FLUX[name]
    if flux_schedule and not model_config.get("use_dynamic_shifting", False) and name in REFUSED_ON_FLUX_WITHOUT_SHIFTING:
        return REFUSED_ON_FLUX_WITHOUT_SHIFTING[name]
    return None


def is_flow(config: dict) -> bool:
    """A flow-matching scheduler (SD3, Flux): its model predicts a velocity, and a noise-prediction
    scheduler would step it as if it were noise (and the other way round)."""
    return str(config.get("_class_name", "")).startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"


def flux_sigmas(steps: int) -> list[float]:
    """FluxPipeline's own schedule before shifting: ``steps`` sigmas from 1 down to ``1/steps`` in
    equal steps (the scheduler's own default ends at 1/1000)."""
    import numpy as np

    return list(np.linspace(1.0, 1 / steps, steps))


@functools.cache
def _step_takes_generator(cls: type) -> bool:
    return "generator" in inspect.signature(cls.step).parameters


def noise_cutoff(scheduler: Any, fraction: float) -> int:
    """The training timestep at which ``fraction`` of the denoising is done: diffusers'
    ``discrete_timestep_cutoff`` for ``denoising_end`` and ``denoising_start``."""
    total = scheduler.config.num_train_timesteps
    return int(round(total - fraction * total))


def schedule_slice(scheduler: Any, steps: int, start_step: int = 0, end_step: int | None = None,
                   denoising_start: float | None = None, denoising_end: float | None = None) -> tuple[int, int]:
    """Where a run starts and stops in ``scheduler.timesteps``, read from the schedule itself:
    schedules are not ``steps * order`` long (PNDM's PLMS has ``steps + 1`` timesteps, Heun's
    ``2 * steps - 1``), so no end is assumed from a length.

    Whole steps (``start_step``, ``end_step``) follow diffusers' img2img: step k begins at index
    ``k * order``, so ``end_step`` k keeps exactly the timesteps that ``start_step`` k skips, and
    the last step runs to the schedule's end. Fractions (``denoising_start``, ``denoising_end``)
    follow diffusers' SDXL pipelines: a cut at a noise level, the timesteps on either side of it,
    and a second-order scheduler's start moved back so it never begins between its two halves."""
    timesteps = scheduler.timesteps
    order = getattr(scheduler, "order", 1)
    if start_step and denoising_start is not None:
        raise ValueError("give start_step or denoising_start, not both")
    if end_step is not None and denoising_end is not None:
        raise ValueError("give end_step or denoising_end, not both")
    if end_step is not None and end_step > steps:
        raise ValueError(f"end_step {end_step} is past the last of {steps} steps")
    if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
        raise ValueError(f"denoising_start {denoising_start} is not before denoising_end {denoising_end}")
    if denoising_start is None:
        begin = min(start_step * order, len(timesteps))
    else:
        remaining = int((timesteps < noise_cutoff(scheduler, denoising_start)).sum())
        if order == 2 and remaining % 2 == 0:
            remaining += 1  # start on a first-order half: the step before the cut is taken again whole
        begin = max(len(timesteps) - remaining, 0)
    if denoising_end is not None:
        end = begin + int((timesteps[begin:] >= noise_cutoff(scheduler, denoising_end)).sum())
    elif end_step is None or end_step == steps:
        end = len(timesteps)
    else:
        end = end_step * order
    whole_steps_left = (end_step if end_step is not None else steps) - start_step
    if begin >= end or whole_steps_left <= 0:
        first = f"start_step {start_step}" if denoising_start is None else f"denoising_start {denoising_start}"
        last = (f" ending at step {end_step}" if end_step is not None and end_step < steps
                else f" ending at denoising_end {denoising_end}" if denoising_end is not None else "")
        raise ValueError(f"{first} leaves nothing of {steps} steps{last}")
    return begin, end


def noised(scheduler: Any, latents: Any, noise: Any, t: Any) -> Any:
    """Clean latents noised to timestep ``t``: ``add_noise``, or for a flow-matching scheduler
    ``scale_noise`` (σ·noise + (1 − σ)·latents), as the img2img and inpaint pipelines do.

    A solver on flow sigmas (DPM-Solver, UniPC, DEIS) is refused: its ``add_noise`` would mix the
    picture right, but SD3's and Flux's img2img and inpaint pipelines call ``scale_noise``, which
    only the FlowMatch schedulers have, so diffusers raises and has no picture to be equal to."""
    if scheduler.config.get("prediction_type") == "flow_prediction" and not hasattr(scheduler, "scale_noise"):
        fitting = ", ".join(n for n, c in SCHEDULERS.items() if c.startswith("FlowMatch") and n not in REFUSED_ALWAYS)
        raise ValueError(f"{type(scheduler).__name__} cannot start from a picture on a flow model: diffusers' SD3 and Flux "
                         f"img2img and inpaint pipelines noise it with scale_noise, which this scheduler lacks (they raise "
                         f"AttributeError); use model or one of: {fitting}")
    if not hasattr(scheduler, "add_noise") and hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(latents, t, noise)
    return scheduler.add_noise(latents, noise, t)


class MakeScheduler(Node, name="Scheduler", category="sampling", uses=("device",)):
    """A diffusers scheduler from the model's config (or another by name, with extra options),
    its timesteps set for the number of steps and cut to the part this loop runs: from a start
    step (img2img starts at step k, as diffusers' img2img pipeline does for strength
    ``1 - k / steps``) to an end step, or between two noise levels given as fractions of the
    denoising (an SDXL base stops at ``denoising_end`` and hands its latents to a refiner that
    starts at the same ``denoising_start``, as diffusers' pipelines do)."""

    class In(Inputs):
        scheduler_config: SchedulerConfig = Field(description="from LoadModel")
        name: SchedulerName = Field("lms", description="'model' keeps the model's own scheduler class")
        steps: Annotated[int, Limit("steps")] = Field(30, ge=1, description="number of inference steps")
        start_step: int = Field(0, ge=0, description="skip this many steps (img2img, a refiner taking over)")
        end_step: int | None = Field(None, ge=1, description="stop before this step (a base model handing over to a refiner); default: run to the end")
        denoising_start: float | None = Field(None, gt=0, lt=1, description="start where this fraction of the denoising is done (diffusers' denoising_start; instead of start_step)")
        denoising_end: float | None = Field(None, gt=0, lt=1, description="stop where this fraction of the denoising is done (diffusers' denoising_end; instead of end_step)")
        options: dict[str, Any] = Field(default_factory=dict, description="extra scheduler config, e.g. {\"use_karras_sigmas\": true}")
        mu: float | None = Field(None, description="flow matching: the shift from the image's sequence length (FlowShift.mu), for schedulers "
                                                   "with dynamic shifting (Flux dev); ignored by those without")
        linear_sigmas: bool = Field(False, description="flow matching: FluxPipeline's schedule, sigmas from 1 to 1/steps in equal steps "
                                                       "(for schedulers that take sigmas), instead of the scheduler's own 1 to 1/1000")

    class Out(Outputs):
        scheduler: Scheduler = Field(description="the scheduler, timesteps set")
        timesteps: Timesteps = Field(description="the timesteps to run")
        init_noise_sigma: float = Field(description="the scale of the initial noise (1 for flow matching, which starts from unit noise)")

    def run(self, i: In, ctx: Context) -> dict:
        import diffusers

        cls_name, named = scheduler_spec(i.name, i.scheduler_config)
        cls = getattr(diffusers, cls_name or "", None)
        if cls is None:
            raise ValueError(f"diffusers has no scheduler class {cls_name!r}")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(i.options) - accepted)
        if unknown:
            raise ValueError(f"{cls_name} has no option {', '.join(map(repr, unknown))} (it takes: {', '.join(sorted(accepted))})")
        config = {**i.scheduler_config, **named, **i.options}
        if is_flow(i.scheduler_config) != is_flow({"_class_name": cls_name, **named, **i.options}):
            model_kind = "a flow-matching model (SD3, Flux)" if is_flow(i.scheduler_config) else "a noise-prediction model"
            fitting = ", ".join(n for n, c in SCHEDULERS.items() if is_flow({"_class_name": c, **SCHEDULER_OPTIONS.get(n, {})})
                                == is_flow(i.scheduler_config) and n not in REFUSED_ALWAYS)
            raise ValueError(f"{cls_name} does not fit {model_kind} (its config is a {i.scheduler_config.get('_class_name')}); "
                             f"use model or one of: {fitting}")
        why = refusal(i.name, i.scheduler_config, i.linear_sigmas)
        if why:
            raise ValueError(f"scheduler {i.name} ({cls_name}) is refused here: {why}")
        s = with_shared_coefficients(cls.from_config(config))
        warmup = getattr(s, "pndm_order", 0) if not s.config.get("skip_prk_steps", True) else 0
        if i.steps < warmup:  # diffusers' own set_timesteps fails with a numpy broadcast error
            raise ValueError(f"{cls_name} with skip_prk_steps false (its Runge-Kutta warm-up, as SD 2.x configs leave it) needs at "
                             f"least {warmup} steps, not {i.steps}: use more steps, or options {{\"skip_prk_steps\": true}}")
        takes = inspect.signature(s.set_timesteps).parameters
        kwargs: dict[str, Any] = {}
        if i.mu is not None and "mu" in takes and s.config.get("use_dynamic_shifting", False):
            kwargs["mu"] = i.mu
        if i.linear_sigmas and "sigmas" in takes and not s.config.get("use_flow_sigmas", False):
            kwargs["sigmas"] = flux_sigmas(i.steps)
        if s.config.get("use_dynamic_shifting", False) and "mu" in takes and "mu" not in kwargs:
            raise ValueError(f"{cls_name} with use_dynamic_shifting (Flux dev's config) needs mu: wire FlowShift.mu to the Scheduler's mu")
        s.set_timesteps(i.steps, device=ctx.device, **kwargs)
        begin, end = schedule_slice(s, i.steps, i.start_step, i.end_step, i.denoising_start, i.denoising_end)
        if begin and hasattr(s, "set_begin_index"):
            s.set_begin_index(begin)
        return {"scheduler": s, "timesteps": s.timesteps[begin:end], "init_noise_sigma": float(getattr(s, "init_noise_sigma", 1.0))}


_LMS_COEFFICIENTS: dict[tuple, float] = {}


def _shared_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
    """``LMSDiscreteScheduler.get_lms_coefficient``, computed by diffusers' own method once per
    process for each set of the sigmas it reads (the key): the same value, bit for bit."""
    key = (order, current_order, *(float(self.sigmas[k]) for k in range(t - order + 1, t + 2)))
    hit = _LMS_COEFFICIENTS.get(key)
    if hit is None:
        if len(_LMS_COEFFICIENTS) > 100_000:
            _LMS_COEFFICIENTS.clear()
        hit = _LMS_COEFFICIENTS[key] = type(self).__mro__[1].get_lms_coefficient(self, order, t, current_order)
    return hit


def _shared_again(base: type, state: dict) -> Any:
    """A copy or an unpickled scheduler of a ``_sharing`` class (pickle names the base class)."""
    s = base.__new__(base)
    s.__dict__.update(state)
    return with_shared_coefficients(s)


@functools.cache
def _sharing(cls: type) -> type:
    """``cls`` with its LMS coefficients shared; the same name, so configs and messages read alike."""
    return type(cls.__name__, (cls,), {"get_lms_coefficient": _shared_lms_coefficient, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__,
                                       "__reduce__": lambda self: (_shared_again, (cls, self.__dict__))})


def with_shared_coefficients(s: Any) -> Any:
    """LMS integrates each step's coefficients numerically (scipy's quad: 2 ms a step, as long as a
    mid-size UNet call takes for a few rows), and every item of a sweep or a batch integrates the
    same ones: here they are computed once per process. Other schedulers are returned as they are."""
    import diffusers

    if isinstance(s, diffusers.LMSDiscreteScheduler) and type(s) is diffusers.LMSDiscreteScheduler:
        s.__class__ = _sharing(type(s))
    return s


class ScaleModelInput(Node, name="ScaleModelInput", category="sampling"):
    """The scheduler's input scaling for this timestep, on the latents doubled for classifier-free
    guidance (unconditional and conditional in one UNet batch)."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="the loop's current scheduler")
        latents: Latents = Field(description="the current latents")
        timestep: Timestep = Field(description="the loop's timestep")
        cfg: bool = Field(True, description="double the batch for classifier-free guidance")

    class Out(Outputs):
        model_input: ModelInput = Field(description="what the UNet takes")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        x = torch.cat([i.latents] * 2) if i.cfg else i.latents
        return {"model_input": clone(i.scheduler).scale_model_input(x, i.timestep)}


class SchedulerStep(Node, name="SchedulerStep", category="sampling", uses=("iteration",)):
    """One scheduler step: the latents of the previous timestep and the predicted clean latents
    (x0) from a single ``step()`` call, plus the advanced scheduler for the next iteration.
    Stochastic schedulers (DDPM, Euler ancestral) draw their noise from ``rng`` when the loop
    carries one (the generator state RandomLatents or NoiseLike handed on: then a seed gives the
    diffusers pipeline's picture), else from the seed and the loop's iteration, so each step gets
    its own noise and a re-run gets the same; outside a loop the step counts as iteration 0."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="the loop's current scheduler")
        noise_pred: NoisePred = Field(description="the guided model output (noise, velocity or sample, as the model predicts)")
        timestep: Timestep = Field(description="the loop's timestep")
        latents: Latents = Field(description="the current latents")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="noise seed for stochastic schedulers (DDPM, Euler ancestral)")
        rng: Rng | None = Field(None, description="the generator state carried by the loop (takes the place of seed)")
        preview_format: Literal["auto", "sd15", "sdxl", "sd3", "flux"] = Field(
            "auto", description="whose latent-to-RGB factors live previews use (auto: from the latents' layout; SDXL says sdxl)")

    class Out(Outputs):
        latents: Latents = Field(description="latents for the next timestep (prev_sample)")
        pred_x0: Latents = Field(description="the predicted denoised latents")
        scheduler: Scheduler = Field(description="the advanced scheduler: carry it to the next iteration")
        rng: Rng = Field(description="the generator after this step's draws: carry it to the next iteration")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.runtime import generator_from
        from graphflow_nodes.stages.prediction import predicted_x0
        from graphflow_nodes.stages.preview import check_decoder, latent_preview

        s = clone(i.scheduler)
        if hasattr(s, "is_scale_input_called"):
            s.is_scale_input_called = True  # ScaleModelInput scaled on its own copy of the scheduler
        if i.rng is None:
            iteration = 0 if ctx.iteration is None else ctx.iteration  # None: a single step outside a loop
            g = generator_from((i.seed * 1_000_003 + iteration) % 2**63, None)
        else:
            g = generator_from(0, i.rng)
        kwargs = {"generator": g} if _step_takes_generator(type(s)) else {}
        out = s.step(i.noise_pred, i.timestep, i.latents, return_dict=True, **kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is None:  # PNDM and DPM-Solver report none: derive it from the unadvanced scheduler
            x0 = predicted_x0(i.scheduler, i.noise_pred, i.timestep, i.latents)
        if ctx.iteration is not None:
            decoder = ctx.preview_decoder  # None unless previews are made with a tiny autoencoder
            if decoder is not None and ctx.iteration == 0:
                check_decoder(decoder, x0)  # at the first step, not the first preview: before the work is spent
            ctx.preview(ctx.iteration, ctx.iterations, lambda: latent_preview(x0, i.preview_format, decoder))
        return {"latents": out.prev_sample, "pred_x0": x0, "scheduler": s, "rng": g.get_state()}


class AddNoise(Node, name="AddNoise", category="sampling"):
    """Noises clean latents to the first of the given timesteps: the start of img2img. A
    flow-matching scheduler mixes them with the noise instead (``scale_noise``: ``σ·noise +
    (1 − σ)·latents``), as SD3's and Flux's img2img pipelines do."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="from Scheduler (with its start step)")
        latents: Latents = Field(description="clean latents, e.g. from VAEEncode")
        noise: Latents = Field(description="unit Gaussian noise, e.g. RandomLatents.noise")
        timesteps: Timesteps = Field(description="the timesteps to run; the first is the noise level")

    class Out(Outputs):
        latents: Latents = Field(description="noised latents")

    def run(self, i: In, ctx: Context) -> dict:
        t = i.timesteps[:1].repeat(i.latents.shape[0])
        return {"latents": noised(clone(i.scheduler), i.latents, i.noise.to(i.latents), t)}
