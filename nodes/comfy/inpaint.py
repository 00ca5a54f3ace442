"""ComfyUI's inpainting, as its own code does it, for translated prompts. The library's inpainting
nodes (stages/inpaint.py, masks.py) follow diffusers' pipelines, which differ from ComfyUI in
three places that change the picture, so a translated prompt uses these instead:

- the picture a mask is drawn over (``VAEEncodeForInpaint``, ``InpaintModelConditioning``) is
  greyed where ``round(mask)`` is 1, and VAEEncodeForInpaint grows its noise mask with a
  ``grow_mask_by``-wide box (an even width reaches one pixel further up and left than down and
  right), not a centred one (``ComfyInpaintPicture``);
- the mask reaches the latents by bilinear interpolation, so its edge is soft there
  (comfy/utils.py ``reshape_mask``; diffusers takes the nearest pixel) (``ComfyLatentMask``);
- ComfyUI does not blend the latents after each step: it blends the *model's input* (the kept
  region replaced by the picture's latents plus the noise at the current sigma) and the
  *denoised prediction* (the kept region replaced by the picture's latents), and leaves the
  sampler's own latents alone (comfy/samplers.py ``KSamplerX0Inpaint``). ``ComfyInpaintInput`` is
  the first blend; ``ComfyInpaintPrediction`` turns the second into the noise prediction the
  diffusers scheduler expects, so any translated sampler steps it unchanged."""

from __future__ import annotations

import math

from graphflow_nodes.comfy.samplers import VP_SPACE
from graphflow_nodes.kinds import Image, LatentMask, Latents, Mask, NoisePred, Scheduler, Timestep
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class ComfyInpaintPicture(Node, name="ComfyInpaintPicture", category="mask"):
    """The greyed picture a ComfyUI inpainting node encodes, and its mask: the mask resized to
    the picture (bilinear), the picture set to mid-grey where ``round(mask)`` is 1; with
    ``grow_mask_by`` (VAEEncodeForInpaint) the mask rounded, grown by a box of that width and
    rounded again, else (InpaintModelConditioning) the resized mask as it is."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        mask: Mask = Field(description="ComfyUI's MASK: 1 repaints")
        grow_mask_by: int | None = Field(None, ge=0, le=64, description="VAEEncodeForInpaint's grow_mask_by; null: InpaintModelConditioning (no growing)")

    class Out(Outputs):
        image: Image = Field(description="the picture, grey (0.5) where it is repainted")
        mask: Mask = Field(description="the noise mask ComfyUI hands the sampler, the picture's size")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        import torch.nn.functional as F

        image = i.image
        h, w = image.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"image: {w}×{h} pixels; ComfyUI crops to a multiple of 8, graphflow asks for one (ImageScale first)")
        mask = F.interpolate(i.mask.reshape(-1, 1, *i.mask.shape[-2:]).float().to(image.device), size=(h, w), mode="bilinear")
        keep = 1.0 - mask.round()
        grey = (image - 0.5) * keep.to(image.dtype) + 0.5
        if i.grow_mask_by is None:
            return {"image": grey, "mask": mask}
        g = i.grow_mask_by
        if g == 0:
            grown = mask
        else:
            kernel = torch.ones((1, 1, g, g), dtype=mask.dtype, device=mask.device)
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=math.ceil((g - 1) / 2)), 0, 1)
        return {"image": grey, "mask": grown[:, :, :h, :w].round()}


class ComfyLatentMask(Node, name="ComfyLatentMask", category="mask"):
    """A pixel mask at the latents' size as ComfyUI's sampler takes it (bilinear, so its edge is
    soft), or rounded, as its inpainting models are shown it (comfy/model_base.py ``concat_cond``)."""

    class In(Inputs):
        mask: Mask = Field(description="the noise mask, the picture's size")
        latents: Latents = Field(description="gives the size")
        round: bool = Field(False, description="round to 0 or 1 (what a 9-channel inpainting UNet is shown)")
        pack: bool = Field(False, description="packed as FLUX.1 packs its latents (PackLatents), as many channels as they have: "
                           "(batch, h/2 × w/2, channels × 4)")

    class Out(Outputs):
        mask: LatentMask = Field(description="(batch, 1, h, w), or packed")

    def run(self, i: In, ctx: Context) -> dict:
        import torch.nn.functional as F

        m = F.interpolate(i.mask.reshape(-1, 1, *i.mask.shape[-2:]).float(), size=tuple(i.latents.shape[-2:]), mode="bilinear")
        if i.round:
            m = m.round()
        if i.pack:
            b, c, h, w = m.shape[0], i.latents.shape[1], *m.shape[-2:]
            m = m.expand(-1, c, -1, -1).reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        return {"mask": m.to(device=i.latents.device, dtype=i.latents.dtype)}


def sigma_now(scheduler, timestep) -> float:
    """The sigma of the step the loop is at (the scheduler's own table, ComfyUI's sigmas)."""
    from graphflow_nodes.stages.scheduler_state import clone

    s = clone(scheduler)
    if getattr(s, "step_index", None) is None:
        s._init_step_index(timestep)
    return float(s.sigmas[s.step_index])


def _parts(scheduler, latents, image_latents, noise, mask):
    """The scale the loop's latents are in (1, or 1/sqrt(1 + sigma²) for a variance-preserving
    scheduler), and the batch-sized mask, picture latents and noise."""
    from graphflow_nodes.runtime import to_batch

    n = latents.shape[0]
    m = to_batch(mask.to(latents), n, "mask")
    known = to_batch(image_latents.to(latents), n, "image_latents")
    noise = to_batch(noise.to(latents), n, "noise")
    return type(scheduler).__name__ in VP_SPACE, m, known, noise


class ComfyInpaintInput(Node, name="ComfyInpaintInput", category="sampling"):
    """The latents the model sees at this step, ComfyUI's way: ``m·x + (1 − m)·(picture + noise·σ)``
    (in the scheduler's scale; for a flow model ``σ·noise + (1 − σ)·picture``). The sampler keeps
    stepping the unblended latents."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="the loop's scheduler")
        timestep: Timestep = Field(description="the loop's timestep")
        latents: Latents = Field(description="the loop's latents")
        image_latents: Latents = Field(description="the latent picture (ComfyUI's latent_image)")
        noise: Latents = Field(description="ComfyNoise.noise: the unit noise the run started from")
        mask: LatentMask = Field(description="ComfyLatentMask's mask")

    class Out(Outputs):
        latents: Latents = Field(description="the blended latents, for ScaleModelInput")

    def run(self, i: In, ctx: Context) -> dict:
        sigma = sigma_now(i.scheduler, i.timestep)
        vp, m, known, noise = _parts(i.scheduler, i.latents, i.image_latents, i.noise, i.mask)
        if "FlowMatch" in type(i.scheduler).__name__:  # a flow model's noise scaling (ComfyUI's CONST)
            kept = noise * sigma + known * (1 - sigma)
        else:
            kept = known + noise * sigma
        if vp:
            kept = kept / math.sqrt(1 + sigma ** 2)
        return {"latents": i.latents * m + kept * (1 - m)}


class ComfyInpaintPrediction(Node, name="ComfyInpaintPrediction", category="sampling"):
    """The noise prediction that makes the scheduler's denoised estimate ComfyUI's blended one,
    ``m·D + (1 − m)·picture``, where ``D = x' − σ·ε`` is the model's estimate at the blended input
    ``x'``: ``ε' = (x − m·D − (1 − m)·picture) / σ`` for the loop's unblended latents ``x`` (in
    sigma scale: the same formula serves the variance-preserving DPM-Solver, whose estimate is
    ``x·sqrt(1 + σ²) − σ·ε``, and a flow model's velocity, whose estimate is ``x − σ·v``)."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="the loop's scheduler")
        timestep: Timestep = Field(description="the loop's timestep")
        latents: Latents = Field(description="the loop's (unblended) latents")
        model_latents: Latents = Field(description="ComfyInpaintInput's latents: what the model saw")
        noise_pred: NoisePred = Field(description="the guided prediction (CFG)")
        image_latents: Latents = Field(description="the latent picture")
        mask: LatentMask = Field(description="ComfyLatentMask's mask")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the prediction for SchedulerStep")

    def run(self, i: In, ctx: Context) -> dict:
        sigma = sigma_now(i.scheduler, i.timestep)
        vp, m, known, _ = _parts(i.scheduler, i.latents, i.image_latents, i.latents, i.mask)
        c = math.sqrt(1 + sigma ** 2) if vp else 1.0
        x, xm, eps = i.latents * c, i.model_latents.to(i.latents) * c, i.noise_pred.to(i.latents)
        denoised = (xm - sigma * eps) * m + known * (1 - m)
        return {"noise_pred": (x - denoised) / sigma}
