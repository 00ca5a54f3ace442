"""SD3 ControlNets (``SD3ControlNetModel``), as StableDiffusion3ControlNetPipeline runs them: the
control image goes through the VAE first (the ControlNet reads latents, patched as the
transformer patches its own), and the ControlNet hands the transformer one residual per
transformer block it copies, which PredictSD3 adds through ``control``.

Two things the pipeline does that these nodes make explicit: it encodes the control image once
per half of the guidance batch, each a fresh sample of the VAE's latent distribution, and it
draws those samples from torch's global generator, not the one it is given: ``SD3ControlLatents``
draws them from its own seed, so a graph is reproducible where the pipeline is only when the
global generator is seeded. InstantX-style ControlNets (``force_zeros_for_pooled_projection``, the
diffusers default) read the latents without the VAE's shift and zeros for the pooled projection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from graphflow_nodes.control.controlnet import acting, scaled
from graphflow_nodes.kinds import SEED_MAX, VAE, ControlImage, ControlNet, ControlResiduals, Embeddings, Latents, Pooled, Rng, Timestep
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


@dataclass(frozen=True)
class BlockResiduals:
    """An SD3 ControlNet's residuals, one per block it copies (the transformer spreads them over its
    own blocks); stacked ControlNets' are summed as SD3MultiControlNetModel sums them."""

    blocks: tuple

    def __add__(self, other: BlockResiduals) -> BlockResiduals:
        return BlockResiduals(tuple(a + b for a, b in zip(self.blocks, other.blocks)))


def sd3_controlnet(ctx: Context, ref: Any) -> Any:
    net = ctx.models.get(ref)
    if type(net).__name__ != "SD3ControlNetModel":
        raise ValueError(f"controlnet: this is a {type(net).__name__} ({getattr(ref, 'family', '?')} family); "
                         "an SD3 model takes an SD3ControlNetModel")
    return net


class SD3ControlLatents(Node, name="SD3ControlLatents", category="control", uses=("models",)):
    """The control image as an SD3 ControlNet reads it: in [-1, 1] through the VAE, a sample of its
    latent distribution per picture (and per half of the guidance batch, as the pipeline encodes
    its doubled image), times the VAE's scaling factor, less its shift unless the ControlNet was
    trained without it (``force_zeros_for_pooled_projection``, InstantX's)."""

    class In(Inputs):
        vae: VAE = Field(description="from LoadModel")
        controlnet: ControlNet = Field(description="from LoadControlNet (an SD3 ControlNet)")
        control_image: ControlImage = Field(description="from ControlImage, the picture's size")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="the VAE sample's seed")
        rng: Rng | None = Field(None, description="draw from this generator state instead of the seed")
        cfg: bool = Field(True, description="one sample for each half of the guidance batch")
        mode: Literal["sample", "mean"] = Field("sample", description="a sample of the latent distribution (diffusers' pipeline) or its "
                                                "mean (ComfyUI's VAE encode)")

    class Out(Outputs):
        latents: Latents = Field(description="the control latents, one row per row of the transformer's batch")
        rng: Rng = Field(description="the generator after the draw")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        vae, net = ctx.models.get(i.vae), sd3_controlnet(ctx, i.controlnet)
        device, dtype = placement(vae)
        image = torch.cat([i.control_image] * 2) if i.cfg else i.control_image
        g = generator_from(i.seed, i.rng)
        with torch.no_grad():
            dist = vae.encode((2 * image - 1).to(device=device, dtype=dtype)).latent_dist
            z = dist.mean if i.mode == "mean" else dist.sample(generator=g)
        shift = 0.0 if net.config.force_zeros_for_pooled_projection else (getattr(vae.config, "shift_factor", None) or 0.0)
        return {"latents": (z - shift) * vae.config.scaling_factor, "rng": g.get_state()}


class ApplySD3ControlNet(Node, name="ApplySD3ControlNet", category="control", uses=("models",)):
    """Runs an SD3 ControlNet for this step on the latents (doubled for guidance, as PredictSD3
    doubles them), the timestep, the joint text sequence (unless the ControlNet reads none, as
    SD3.5's own do) and the pooled projection (zeros for InstantX-style ControlNets), with the
    control latents, times ``scale`` inside its [start, end] fraction of the schedule; outside it
    is not run. Chain several through ``residuals``: summed."""

    class In(Inputs):
        controlnet: ControlNet = Field(description="from LoadControlNet (an SD3 ControlNet)")
        latents: Latents = Field(description="the loop's latents")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="CFGEmbeddings of JointEmbeddings (as PredictSD3's)")
        pooled: Pooled = Field(description="CFGPooled (as PredictSD3's)")
        control_latents: Latents = Field(description="from SD3ControlLatents")
        step: int = Field(ge=0, description="the loop's index (denoise.index)")
        steps: int = Field(ge=1, description="the loop's count (denoise.count)")
        scale: float = Field(1.0, ge=0.0, le=10.0, description="conditioning scale")
        start: float = Field(0.0, ge=0.0, le=1.0, description="the fraction of the schedule at which the ControlNet starts acting")
        end: float = Field(1.0, ge=0.0, le=1.0, description="the fraction of the schedule after which it stops")
        cfg: bool = Field(True, description="double the latents for classifier-free guidance (as PredictSD3)")
        residuals: ControlResiduals | None = Field(None, description="an earlier ApplySD3ControlNet's: this one's are added to them")

    class Out(Outputs):
        residuals: ControlResiduals | None = Field(description="into PredictSD3's control (None while no ControlNet of the chain acts)")

    def run(self, i: In, ctx: Context) -> dict:
        if not acting(i):
            return {"residuals": i.residuals}
        import torch
        from graphflow_nodes.batch_calls import per_sample
        from graphflow_nodes.runtime import placement, to_batch

        net = sd3_controlnet(ctx, i.controlnet)
        device, dtype = placement(net)
        x = (torch.cat([i.latents] * 2) if i.cfg else i.latents).to(device=device, dtype=dtype)
        cond = i.control_latents.to(device=device, dtype=dtype)
        if cond.shape[0] != x.shape[0] or cond.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"control_latents: {tuple(cond.shape)} do not match the transformer's input {tuple(x.shape)}: "
                             "give ControlImage the picture's size, and SD3ControlLatents the same cfg")
        pooled = to_batch(i.pooled.to(device=device, dtype=dtype), x.shape[0], "pooled")
        if net.config.force_zeros_for_pooled_projection:
            pooled = torch.zeros_like(pooled)
        emb = to_batch(i.embeddings.to(device=device, dtype=dtype), x.shape[0], "embeddings") if net.config.joint_attention_dim else None
        args = {"hidden_states": x, "timestep": i.timestep.expand(x.shape[0]), "encoder_hidden_states": emb,
                "pooled_projections": pooled, "controlnet_cond": cond}

        def call(a):  # per sample, the timestep included: a sweep's items share one call, scaled per item after
            with torch.no_grad():
                return net(**a, conditioning_scale=1.0, return_dict=False)[0]

        mine = BlockResiduals(scaled(per_sample(ctx, ("sd3-controlnet", id(net)), args, call), i.scale))
        return {"residuals": mine if i.residuals is None else i.residuals + mine}
