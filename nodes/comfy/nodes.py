"""The three nodes a translated ComfyUI sampler needs beyond the library's own: ComfyUI's empty
latent, its schedule (its sigmas in a diffusers scheduler), and its starting noise. The loop
itself stays the library's ScaleModelInput → PredictNoise → CFG → SchedulerStep, so a translated
workflow reads like any other."""

from __future__ import annotations

import math

from typing import Annotated, Literal

from graphflow_nodes.comfy.samplers import (
    FLOW_REFUSED, FLOW_SAMPLERS, SAMPLERS, SCHEDULERS, VP_SPACE, ModelSampling, ModelSamplingFlow, check_pair, comfy_sigmas, flux_default_shift, is_flow, max_denoise,
)
from typing import Any

from graphflow_nodes.kinds import (
    POOLED_K, TEXT_EMBEDDINGS_K, TEXT_IDS_K, TIME_IDS_K, ImageIds, Latents, ModelInput, NoisePred, Rng, Scheduler, SchedulerConfig, TimeIds, Timestep,
    Timesteps, Transformer, UNet,
)
from pydantic import Field

from graphflow.node_api import Context, Inputs, Limit, Node, Outputs, list_of

EmbeddingsList = Annotated[list[Any], list_of(TEXT_EMBEDDINGS_K)]
PooledList = Annotated[list[Any], list_of(POOLED_K)]
TimeIdsList = Annotated[list[Any], list_of(TIME_IDS_K)]
TextIdsList = Annotated[list[Any], list_of(TEXT_IDS_K)]

SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


class EmptyLatents(Node, name="EmptyLatents", category="latents", uses=("device",)):
    """Zero latents of a picture's size (ComfyUI's EmptyLatentImage: 4 channels at an eighth of the
    size, whatever the model): the sampler adds the noise."""

    class In(Inputs):
        width: Annotated[int, Limit("size")] = Field(512, ge=16, le=4096, multiple_of=8, description="picture width in pixels")
        height: Annotated[int, Limit("size")] = Field(512, ge=16, le=4096, multiple_of=8, description="picture height in pixels")
        batch_size: Annotated[int, Limit("batch")] = Field(1, ge=1, le=64, description="pictures")
        channels: int = Field(4, ge=1, le=64, description="latent channels (ComfyUI's: 4)")

    class Out(Outputs):
        latents: Latents = Field(description="zeros, (batch, channels, height / 8, width / 8)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        return {"latents": torch.zeros((i.batch_size, i.channels, i.height // 8, i.width // 8), device=ctx.device)}


class ComfySchedule(Node, name="ComfySchedule", category="sampling", uses=("device",)):
    """A diffusers scheduler stepping ComfyUI's sigmas for a ``sampler_name`` × ``scheduler`` pair:
    the sigmas as comfy/samplers.py computes them (KSampler's ``denoise``, KSamplerAdvanced's start
    and end steps), the UNet timesteps as ComfyUI's nearest training step, written into the
    scheduler after ``set_timesteps``. Also the two factors that start the run as ComfyUI does:
    latents × ``latent_scale`` + unit noise × ``noise_scale``."""

    class In(Inputs):
        scheduler_config: SchedulerConfig = Field(description="from LoadModel")
        sampler_name: SamplerName = Field("euler", description="ComfyUI's sampler_name (README: Coming from ComfyUI)")
        scheduler: SchedulerName = Field("normal", description="ComfyUI's scheduler")
        steps: Annotated[int, Limit("steps")] = Field(20, ge=1, description="ComfyUI's steps")
        denoise: float = Field(1.0, ge=0.0, le=1.0, description="KSampler's denoise: run the last steps of steps / denoise")
        start_step: int = Field(0, ge=0, description="KSamplerAdvanced's start_at_step")
        end_step: int = Field(10000, ge=0, description="KSamplerAdvanced's end_at_step")
        force_full_denoise: bool = Field(False, description="end at sigma 0 even when end_step stops early (return_with_leftover_noise disabled)")
        family: str = Field("sd", description="LoadModel's family")
        translated_for: str = Field("sd", description="the family the prompt was translated for (sd: SD 1.x/2.x, sdxl, sd3, flux)")
        shift: float | None = Field(None, gt=0.0, le=100.0, description="a flow model's shift (ModelSamplingSD3, ModelSamplingFlux); "
                                    "default: SD3's scheduler config's, Flux's ComfyUI default (dev 1.15, schnell 1.0)")

    class Out(Outputs):
        scheduler: Scheduler = Field(description="the scheduler, ComfyUI's sigmas set")
        timesteps: Timesteps = Field(description="the UNet timesteps to run")
        sigmas: list[float] = Field(description="ComfyUI's sigmas, the last one where the run ends")
        noise_scale: float = Field(description="the unit noise's factor in the starting latents")
        latent_scale: float = Field(description="the input latents' factor in the starting latents")
        end_scale: float = Field(description="the factor that turns the loop's last latents into ComfyUI's (not 1 only for a "
                                             "variance-preserving scheduler stopped with leftover noise)")

    def run(self, i: In, ctx: Context) -> dict:
        import diffusers
        import torch

        cls_name, extra = check_pair(i.sampler_name, i.scheduler)
        if i.family != i.translated_for:
            what = {"sd": "an SD 1.x/2.x", "sdxl": "an SDXL"}.get(i.translated_for, i.translated_for)
            raise ValueError(f"the checkpoint is a {i.family} model, but the prompt was translated for {what} checkpoint "
                             "(its text encoders and conditions differ): set the prompt's ckpt_name to this checkpoint (a path, or its name in the models folders' checkpoints/) and translate again")
        config = dict(i.scheduler_config)
        if is_flow(config):
            return self.flow(i, ctx, config)
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"ComfyUI's samplers are translated for epsilon models; this model predicts {config.get('prediction_type')}")
        sigmas = comfy_sigmas(config, i.scheduler, i.steps, i.denoise, i.start_step, i.end_step, i.force_full_denoise)
        if len(sigmas) < 2:
            raise ValueError(f"steps {i.steps}, denoise {i.denoise}, start_step {i.start_step}, end_step {i.end_step} leave no step to run")
        cls = getattr(diffusers, cls_name)
        s = cls.from_config({**config, **extra, "timestep_spacing": "linspace"})
        n = len(sigmas) - 1
        s.set_timesteps(n, device=ctx.device)
        ms = ModelSampling(config)
        sig = torch.tensor(sigmas, dtype=torch.float32)
        ts = ms.timestep(sig[:-1]).to(s.timesteps.dtype)
        if cls_name == "HeunDiscreteScheduler":  # each sigma but the ends taken twice (its two halves)
            sig = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
            ts = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
        s.sigmas = sig.to(ctx.device)
        s.timesteps = ts.to(ctx.device)
        s.num_inference_steps = n
        if hasattr(s, "_begin_index"):
            s._begin_index = None
        first = float(sigmas[0])
        noise_scale = (1 + first ** 2) ** 0.5 if max_denoise(config, first) else first
        latent_scale = end_scale = 1.0
        if cls_name in VP_SPACE:
            end_scale = (1 + float(sigmas[-1]) ** 2) ** 0.5  # diffusers' DPM-Solver keeps x / sqrt(1 + sigma^2): the same start in its scale
            noise_scale /= (1 + first ** 2) ** 0.5
            latent_scale /= (1 + first ** 2) ** 0.5
        return {"scheduler": s, "timesteps": s.timesteps, "sigmas": sigmas, "noise_scale": noise_scale, "latent_scale": latent_scale,
                "end_scale": end_scale}

    def flow(self, i: In, ctx: Context, config: dict) -> dict:
        """A flow-matching model (SD3/SD3.5, FLUX.1): FlowMatchEulerDiscreteScheduler over ComfyUI's
        flow sigmas, timesteps sigma × 1000 (PredictFlux divides them back), and ComfyUI's start,
        σ·noise + (1 − σ)·latents."""
        import diffusers
        import torch

        if i.sampler_name not in FLOW_SAMPLERS:
            raise ValueError(f"sampler_name {i.sampler_name!r} on a flow model is refused: {FLOW_REFUSED}; translatable: {', '.join(FLOW_SAMPLERS)}")
        sigmas = comfy_sigmas(config, i.scheduler, i.steps, i.denoise, i.start_step, i.end_step, i.force_full_denoise, shift=i.shift,
                              flux=i.translated_for == "flux")
        if len(sigmas) < 2:
            raise ValueError(f"steps {i.steps}, denoise {i.denoise}, start_step {i.start_step}, end_step {i.end_step} leave no step to run")
        s = getattr(diffusers, FLOW_SAMPLERS[i.sampler_name][0]).from_config({**config, "use_dynamic_shifting": False})  # sigmas set below
        n = len(sigmas) - 1
        s.set_timesteps(n, device=ctx.device)
        sig = torch.tensor(sigmas, dtype=torch.float32)
        s.sigmas = sig.to(ctx.device)
        s.timesteps = (sig[:-1] * 1000).to(ctx.device)
        s.num_inference_steps = n
        s._begin_index = None
        first = float(sigmas[0])
        return {"scheduler": s, "timesteps": s.timesteps, "sigmas": sigmas, "noise_scale": first, "latent_scale": 1.0 - first, "end_scale": 1.0}


class ComfyNoise(Node, name="ComfyNoise", category="latents"):
    """The starting latents as ComfyUI's KSampler makes them: unit noise drawn on the CPU from a
    generator seeded with the seed over the latents' shape (comfy/sample.py ``prepare_noise``),
    added to the input latents; and the state of the generator ComfyUI's ancestral samplers draw
    their step noise from (comfy/k_diffusion/sampling.py ``default_noise_sampler``: on the CPU a
    fresh one seeded with seed + 1, so the step noise is not the starting noise again)."""

    class In(Inputs):
        latents: Latents = Field(description="the input latents (EmptyLatents' zeros, or an encoded picture)")
        seed: int = Field(0, ge=0, le=2 ** 64 - 1, description="ComfyUI's noise_seed (ComfyUI allows the whole unsigned 64-bit range)")
        noise_scale: float = Field(description="from ComfySchedule")
        latent_scale: float = Field(1.0, description="from ComfySchedule")
        add_noise: bool = Field(True, description="KSamplerAdvanced's add_noise (false: no noise, as ComfyUI's zeros)")

    class Out(Outputs):
        latents: Latents = Field(description="the loop's starting latents")
        rng: Rng = Field(description="the generator ComfyUI's ancestral samplers draw their step noise from (on the CPU: seeded with seed + 1)")
        noise: Latents = Field(description="the unit noise (zeros without add_noise): inpainting noises the kept region with it")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator

        x = i.latents.float() * i.latent_scale
        noise = torch.zeros_like(x)
        if i.add_noise:
            noise = torch.randn(tuple(i.latents.shape), generator=generator(i.seed), dtype=torch.float32, device="cpu").to(x.device)
            x = x + noise * i.noise_scale
        return {"latents": x.to(i.latents.dtype), "rng": generator((i.seed + 1) % 2 ** 64).get_state(), "noise": noise.to(i.latents.dtype)}


class ScaleLatents(Node, name="ScaleLatents", category="latents"):
    """Latents times a factor (ComfySchedule's end_scale: a DPM-Solver run stopped with leftover
    noise handed on in ComfyUI's scale)."""

    class In(Inputs):
        latents: Latents = Field(description="the latents")
        factor: float = Field(1.0, description="the factor")

    class Out(Outputs):
        latents: Latents = Field(description="latents × factor")

    def run(self, i: In, ctx: Context) -> dict:
        return {"latents": i.latents if i.factor == 1.0 else i.latents * i.factor}


def active(ms: ModelSampling, sigma: float, start: float, end: float) -> bool:
    """Whether a conditioning with ComfyUI's start and end percents applies at ``sigma``
    (comfy/model_sampling.py ``percent_to_sigma``, comfy/samplers.py ``get_area_and_mult``)."""
    def percent_to_sigma(p: float) -> float:
        if p <= 0.0:
            return 999999999.9
        if p >= 1.0:
            return 0.0
        return float(ms.sigma((1.0 - p) * 999.0))

    return not (sigma > percent_to_sigma(start) or sigma < percent_to_sigma(end))


class PredictConditioned(Node, name="PredictConditioned", category="sampling", uses=("models",)):
    """Guided noise prediction for ComfyUI's combined and time-ranged conditionings: on each side
    (positive, negative) every conditioning whose percent range holds the current sigma is
    predicted and their predictions averaged, as ComfyUI's ``calc_cond_batch`` does for full-image
    conditionings of strength 1 (a side with none active predicts a clean picture of zeros, as
    ComfyUI's does); then classifier-free guidance. Each conditioning keeps what it carries: an
    SDXL one its pooled embedding and size conditions (``*_pooled``, ``*_time_ids``), an SD3 one
    its pooled embedding, with the ``transformer`` and the loop's ``latents`` in place of the UNet
    and its scaled input; a FLUX.1 one (``flux``, packed latents) its pooled embedding, text ids and
    distilled guidance. Averaging the predictions is averaging ComfyUI's denoised estimates,
    since both are the same line in the prediction for one input and sigma. At cfg 1 the
    negative side is not predicted, as ComfyUI skips it."""

    class In(Inputs):
        unet: UNet | None = Field(None, description="from LoadModel (SD 1.x/2.x, SDXL)")
        model_input: ModelInput | None = Field(None, description="from ScaleModelInput with cfg false (one batch, not doubled)")
        transformer: Transformer | None = Field(None, description="an SD3 model's, from LoadModel (in place of unet)")
        latents: Latents | None = Field(None, description="SD3: the loop's latents (in place of model_input)")
        timestep: Timestep = Field(description="the loop's timestep")
        scheduler: Scheduler = Field(description="the loop's current scheduler (gives the current sigma)")
        positive: EmbeddingsList = Field(description="the positive conditionings' embeddings")
        positive_ranges: list[list[float]] = Field(description="[start, end] percents per positive conditioning")
        negative: EmbeddingsList = Field(description="the negative conditionings' embeddings")
        negative_ranges: list[list[float]] = Field(description="[start, end] percents per negative conditioning")
        positive_pooled: PooledList | None = Field(None, description="SDXL, SD3: each positive conditioning's pooled embedding")
        negative_pooled: PooledList | None = Field(None, description="SDXL, SD3: each negative conditioning's pooled embedding")
        positive_time_ids: TimeIdsList | None = Field(None, description="SDXL: each positive conditioning's size conditions")
        negative_time_ids: TimeIdsList | None = Field(None, description="SDXL: each negative conditioning's size conditions")
        shift: float | None = Field(None, gt=0.0, le=100.0, description="SD3: ModelSamplingSD3's shift (default: the scheduler config's); "
                                    "FLUX.1: ModelSamplingFlux's (default: dev 1.15, schnell 1.0)")
        flux: bool = Field(False, description="a FLUX.1 transformer on packed latents (ComfyUI's ModelSamplingFlux percents)")
        scheduler_config: SchedulerConfig | None = Field(None, description="FLUX.1: LoadModel's, which tells dev from schnell for the default shift")
        image_ids: ImageIds | None = Field(None, description="FLUX.1: PackLatents.image_ids")
        positive_text_ids: TextIdsList | None = Field(None, description="FLUX.1: each positive conditioning's text ids")
        negative_text_ids: TextIdsList | None = Field(None, description="FLUX.1: each negative conditioning's text ids")
        positive_guidance: list[float] | None = Field(None, description="FLUX.1: each positive conditioning's distilled guidance")
        negative_guidance: list[float] | None = Field(None, description="FLUX.1: each negative conditioning's distilled guidance")
        guidance_scale: float = Field(7.5, ge=0.0, le=100.0, description="ComfyUI's cfg")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the guided prediction")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.comfy.inpaint import sigma_now
        from graphflow_nodes.runtime import placement

        flow = i.transformer is not None
        if flow == (i.unet is not None) or (i.latents if flow else i.model_input) is None:
            raise ValueError("give unet and model_input (SD 1.x/2.x, SDXL) or transformer and latents (SD3)")
        if i.flux and (not flow or i.image_ids is None or None in (i.positive_pooled, i.positive_text_ids, i.positive_guidance)):
            raise ValueError("flux: give transformer, packed latents, image_ids and each conditioning's pooled, text ids and guidance")
        sides = [(i.positive, i.positive_ranges, i.positive_pooled, i.positive_time_ids, i.positive_text_ids, i.positive_guidance),
                 (i.negative, i.negative_ranges, i.negative_pooled, i.negative_time_ids, i.negative_text_ids, i.negative_guidance)]
        if math.isclose(i.guidance_scale, 1.0):  # ComfyUI's sampling_function leaves the negative out at cfg 1
            sides = sides[:1]
        for embs, ranges, *per in sides:
            if len(embs) != len(ranges) or any(x is not None and len(x) != len(embs) for x in per):
                raise ValueError("each conditioning needs its [start, end] range (and its pooled embedding, size conditions, text ids "
                                 "and guidance where given)")
        sigma = sigma_now(i.scheduler, i.timestep)
        if i.flux:  # ModelSamplingFlux.percent_to_sigma: flux_time_shift(shift, 1, 1 - percent), 1 and 0 at the ends
            mu = i.shift if i.shift is not None else flux_default_shift(dict(i.scheduler_config or {}))
            to_sigma = lambda p: 1.0 if p <= 0.0 else 0.0 if p >= 1.0 else math.exp(mu) / (math.exp(mu) + (1 / (1.0 - p) - 1))
            on = lambda a, b: not (sigma > to_sigma(a) or sigma < to_sigma(b))
        elif flow:  # ModelSamplingDiscreteFlow.percent_to_sigma: 1 and 0 at the ends
            ms = ModelSamplingFlow(i.shift or float(i.scheduler.config.get("shift", 1.0)))
            to_sigma = lambda p: 1.0 if p <= 0.0 else 0.0 if p >= 1.0 else float(ms.sigma((1.0 - p) * 1000.0))
            on = lambda a, b: not (sigma > to_sigma(a) or sigma < to_sigma(b))
        else:
            vp = ModelSampling(dict(i.scheduler.config))
            on = lambda a, b: active(vp, sigma, a, b)
        model = ctx.models.get(i.transformer if flow else i.unet)
        device, dtype = placement(model)
        x = (i.latents if flow else i.model_input).to(device=device, dtype=dtype)
        n = x.shape[0]
        rows = lambda ts: torch.cat([t.to(device=device, dtype=dtype).expand(n, *t.shape[1:]) for t in ts])
        out = []
        for embs, ranges, pooled, time_ids, text_ids, guidance in sides:
            used = [k for k, (a, b) in enumerate(ranges) if on(a, b)]
            if not used:  # ComfyUI: denoised 0, i.e. the prediction that removes all of x
                out.append(x / sigma if flow else x * (1 + sigma ** 2) ** 0.5 / sigma)
                continue
            pick = lambda ts: rows([ts[k] for k in used])
            xs = torch.cat([x] * len(used))
            with torch.no_grad():
                if i.flux:  # one call per conditioning: each has its own text ids
                    g = lambda k: torch.full([n], guidance[k], device=device, dtype=torch.float32) if model.config.guidance_embeds else None
                    pred = torch.cat([model(hidden_states=x, timestep=i.timestep.expand(n).to(x.dtype) / 1000, guidance=g(k),
                                            pooled_projections=rows([pooled[k]]), encoder_hidden_states=rows([embs[k]]),
                                            txt_ids=text_ids[k].to(device), img_ids=i.image_ids.to(device), return_dict=False)[0] for k in used])
                elif flow:
                    pred = model(hidden_states=xs, timestep=i.timestep.expand(xs.shape[0]), encoder_hidden_states=pick(embs),
                                 pooled_projections=pick(pooled), return_dict=False)[0]
                else:
                    added = {} if pooled is None else {"added_cond_kwargs": {"text_embeds": pick(pooled), "time_ids": pick(time_ids)}}
                    pred = model(xs, i.timestep, encoder_hidden_states=pick(embs), **added).sample
            out.append(pred.view(len(used), *x.shape).mean(0))
        if len(out) == 1:
            return {"noise_pred": out[0]}
        cond, uncond = out
        return {"noise_pred": uncond + i.guidance_scale * (cond - uncond)}


class ComfyControlScale(Node, name="ComfyControlScale", category="control"):
    """A ControlNet's strength at this step by ComfyUI's rule: its ``start_percent`` and
    ``end_percent`` are noise levels (``percent_to_sigma``), not step counts as in diffusers'
    pipelines, so the strength is the ControlNet's while the current sigma lies inside them and
    0 outside (ApplyControlNet's residuals times 0 add nothing)."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="the loop's scheduler (gives the current sigma)")
        timestep: Timestep = Field(description="the loop's timestep")
        strength: float = Field(1.0, ge=0.0, le=10.0, description="ControlNetApplyAdvanced's strength")
        start: float = Field(0.0, ge=0.0, le=1.0, description="start_percent")
        end: float = Field(1.0, ge=0.0, le=1.0, description="end_percent")
        shift: float | None = Field(None, gt=0.0, le=100.0, description="a flow model's shift (ModelSamplingSD3, ModelSamplingFlux); "
                                    "default: SD3's scheduler config's, FLUX.1's ComfyUI default (dev 1.15, schnell 1.0)")
        flux: bool = Field(False, description="a FLUX.1 model (ComfyUI's ModelSamplingFlux percents)")
        scheduler_config: SchedulerConfig | None = Field(None, description="FLUX.1: LoadModel's, which tells dev from schnell for the default shift")

    class Out(Outputs):
        scale: float = Field(description="the strength, or 0 outside the range")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.comfy.inpaint import sigma_now

        sigma = sigma_now(i.scheduler, i.timestep)
        if i.flux:  # ModelSamplingFlux.percent_to_sigma: flux_time_shift(shift, 1, 1 - percent), 1 and 0 at the ends
            import math

            mu = i.shift if i.shift is not None else flux_default_shift(dict(i.scheduler_config or {}))
            to_sigma = lambda p: 1.0 if p <= 0.0 else 0.0 if p >= 1.0 else math.exp(mu) / (math.exp(mu) + (1 / (1.0 - p) - 1))
            on = not (sigma > to_sigma(i.start) or sigma < to_sigma(i.end))
        elif "FlowMatch" in type(i.scheduler).__name__:  # ModelSamplingDiscreteFlow.percent_to_sigma: 1 and 0 at the ends
            ms = ModelSamplingFlow(i.shift or float(i.scheduler.config.get("shift", 1.0)))
            to_sigma = lambda p: 1.0 if p <= 0.0 else 0.0 if p >= 1.0 else float(ms.sigma((1.0 - p) * 1000.0))
            on = not (sigma > to_sigma(i.start) or sigma < to_sigma(i.end))
        else:
            on = active(ModelSampling(dict(i.scheduler.config)), sigma, i.start, i.end)
        return {"scale": i.strength if on else 0.0}


class ComfySizeConditions(Node, name="ComfySizeConditions", category="sampling"):
    """SDXL's size conditions as a ComfyUI conditioning carries them: CLIPTextEncodeSDXL's width,
    height, crop and target size; for a conditioning that carries none (a plain CLIPTextEncode)
    the picture's size from the sampler's ``latents``, uncropped, as comfy/samplers.py
    ``encode_model_conds`` fills in the width and height before ``SDXL.encode_adm`` reads them.
    An SDXL refiner's (``aesthetic_score`` given): original size, crop and the aesthetic score
    (CLIPTextEncodeSDXLRefiner's ``ascore``; ComfyUI's 6 for a positive conditioning without one,
    2.5 for a negative)."""

    class In(Inputs):
        width: int = Field(768, ge=0, le=16384, description="the original width")
        height: int = Field(768, ge=0, le=16384, description="the original height")
        crop_w: int = Field(0, ge=0, le=16384, description="crop, left")
        crop_h: int = Field(0, ge=0, le=16384, description="crop, top")
        target_width: int = Field(768, ge=0, le=16384, description="the target width")
        target_height: int = Field(768, ge=0, le=16384, description="the target height")
        latents: Latents | None = Field(None, description="the sampler's latents: width, height and the target size are theirs × 8")
        aesthetic_score: float | None = Field(None, ge=0.0, le=1000.0, description="an SDXL refiner's aesthetic score (5 conditions, no target)")

    class Out(Outputs):
        time_ids: TimeIds = Field(description="(1, 6): original (h, w), crop (top, left), target (h, w); a refiner's (1, 5): "
                                              "original (h, w), crop (top, left), aesthetic score")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        w, h, tw, th = i.width, i.height, i.target_width, i.target_height
        if i.latents is not None:
            h, w = (int(v) * 8 for v in i.latents.shape[-2:])
            th, tw = h, w
        if i.aesthetic_score is not None:
            return {"time_ids": torch.tensor([[h, w, i.crop_h, i.crop_w, i.aesthetic_score]], dtype=torch.float32)}
        return {"time_ids": torch.tensor([[h, w, i.crop_h, i.crop_w, th, tw]], dtype=torch.float32)}
