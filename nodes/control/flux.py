"""Flux ControlNets (``FluxControlNetModel``), as FluxControlNetPipeline runs them. InstantX-style
ControlNets read the control image as packed latents: through the VAE (a sample drawn from the
pipeline's own generator, before the starting noise: hand ``rng`` on to FlowLatents), less the
shift, times the scale, packed in 2×2 patches as the latents are. XLabs-style ones
(``input_hint_block``) read the picture itself, in [-1, 1]. The ControlNet hands the transformer
residuals for its double-stream and single-stream blocks, which PredictFlux adds through
``control``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from graphflow_nodes.control.controlnet import acting, scaled
from graphflow_nodes.kinds import (SEED_MAX, VAE, ControlImage, ControlNet, ControlResiduals, Embeddings, ImageIds, Latents, Pooled, Rng,
                                   TextIds, Timestep)
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


@dataclass(frozen=True)
class FluxResiduals:
    """A Flux ControlNet's residuals for the double-stream and single-stream blocks; ``repeat``:
    XLabs-style ControlNets' few blocks are cycled over the transformer's. Stacked ones are summed
    as FluxMultiControlNetModel sums them."""

    blocks: tuple | None
    single_blocks: tuple | None
    repeat: bool

    def __add__(self, other: FluxResiduals) -> FluxResiduals:
        def add(a, b):
            return a if a is None or b is None else tuple(x + y for x, y in zip(a, b))  # diffusers keeps the earlier

        return FluxResiduals(add(self.blocks, other.blocks), add(self.single_blocks, other.single_blocks), self.repeat)


def flux_controlnet(ctx: Context, ref: Any) -> Any:
    net = ctx.models.get(ref)
    if type(net).__name__ != "FluxControlNetModel":
        raise ValueError(f"controlnet: this is a {type(net).__name__} ({getattr(ref, 'family', '?')} family); "
                         "a Flux model takes a FluxControlNetModel")
    return net


class FluxControlLatents(Node, name="FluxControlLatents", category="control", uses=("models",)):
    """The control image as a Flux ControlNet reads it: for InstantX-style ones, in [-1, 1] through
    the VAE (a seeded sample), less the shift, times the scale, packed; for XLabs-style ones the
    picture in [-1, 1]. Draw it first and hand ``rng`` to FlowLatents: the pipeline encodes the
    control image with its generator before it draws the noise."""

    class In(Inputs):
        vae: VAE = Field(description="from LoadModel")
        controlnet: ControlNet = Field(description="from LoadControlNet (a Flux ControlNet)")
        control_image: ControlImage = Field(description="from ControlImage, the picture's size")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="the VAE sample's seed (the pipeline's generator)")
        rng: Rng | None = Field(None, description="draw from this generator state instead of the seed")
        mode: Literal["sample", "mean"] = Field("sample", description="a sample of the latent distribution (diffusers' pipeline) or its "
                                                "mean (ComfyUI's VAE encode)")

    class Out(Outputs):
        latents: Latents = Field(description="the ControlNet's condition: packed latents, or the picture for XLabs-style ones")
        rng: Rng = Field(description="the generator after the draw: FlowLatents' rng")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        vae, net = ctx.models.get(i.vae), flux_controlnet(ctx, i.controlnet)
        device, dtype = placement(vae)
        image = (2 * i.control_image - 1).to(device=device, dtype=dtype)
        g = generator_from(i.seed, i.rng)
        if net.input_hint_block is not None:
            return {"latents": image, "rng": g.get_state()}
        with torch.no_grad():
            dist = vae.encode(image).latent_dist
            z = dist.mean if i.mode == "mean" else dist.sample(generator=g)
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        b, c, h, w = z.shape
        packed = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        return {"latents": packed, "rng": g.get_state()}


class ApplyFluxControlNet(Node, name="ApplyFluxControlNet", category="control", uses=("models",)):
    """Runs a Flux ControlNet for this step on the packed latents, the timestep, the T5 sequence
    and pooled embedding with their ids, and dev's guidance (when the ControlNet embeds it), with
    the control latents, times ``scale`` inside its [start, end] fraction of the schedule; outside
    it is not run. Chain several through ``residuals``: summed."""

    class In(Inputs):
        controlnet: ControlNet = Field(description="from LoadControlNet (a Flux ControlNet)")
        latents: Latents = Field(description="the loop's packed latents")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="the T5 sequence (as PredictFlux's)")
        pooled: Pooled = Field(description="the CLIP pooled embedding (as PredictFlux's)")
        text_ids: TextIds = Field(description="TextIds")
        image_ids: ImageIds = Field(description="PackLatents.image_ids")
        control_latents: Latents = Field(description="from FluxControlLatents")
        guidance: float = Field(3.5, ge=0.0, le=100.0, description="dev's distilled guidance (as PredictFlux's)")
        step: int = Field(ge=0, description="the loop's index (denoise.index)")
        steps: int = Field(ge=1, description="the loop's count (denoise.count)")
        scale: float = Field(1.0, ge=0.0, le=10.0, description="conditioning scale")
        start: float = Field(0.0, ge=0.0, le=1.0, description="the fraction of the schedule at which the ControlNet starts acting")
        end: float = Field(1.0, ge=0.0, le=1.0, description="the fraction of the schedule after which it stops")
        residuals: ControlResiduals | None = Field(None, description="an earlier ApplyFluxControlNet's: this one's are added to them")

    class Out(Outputs):
        residuals: ControlResiduals | None = Field(description="into PredictFlux's control (None while no ControlNet of the chain acts)")

    def run(self, i: In, ctx: Context) -> dict:
        if not acting(i):
            return {"residuals": i.residuals}
        import torch
        from graphflow_nodes.batch_calls import per_sample, value_key
        from graphflow_nodes.runtime import placement, to_batch

        net = flux_controlnet(ctx, i.controlnet)
        device, dtype = placement(net)
        x = i.latents.to(device=device, dtype=dtype)
        n = x.shape[0]
        guidance = torch.full([1], i.guidance, device=device, dtype=torch.float32).expand(n) if net.config.guidance_embeds else None
        args = {"hidden_states": x, "controlnet_cond": to_batch(i.control_latents.to(device=device, dtype=dtype), n, "control_latents"),
                "timestep": i.timestep.expand(n).to(x.dtype) / 1000, "guidance": guidance,
                "pooled_projections": to_batch(i.pooled.to(device=device, dtype=dtype), n, "pooled"),
                "encoder_hidden_states": to_batch(i.embeddings.to(device=device, dtype=dtype), n, "embeddings")}
        txt_ids, img_ids = i.text_ids.to(device), i.image_ids.to(device)

        def call(a):  # per sample: all but the position ids (in the key); scaled per item after
            with torch.no_grad():
                return net(**a, conditioning_scale=1.0, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)

        blocks, single = per_sample(ctx, ("flux-controlnet", id(net), value_key(txt_ids), value_key(img_ids)), args, call)
        mine = FluxResiduals(scaled(blocks, i.scale), scaled(single, i.scale), net.input_hint_block is not None)
        return {"residuals": mine if i.residuals is None else i.residuals + mine}
