"""The VAE's side of every stage: its downscaling factor, the copy that makes pictures (SDXL's VAE
overflows float16) and the differentiable decode. Here and not in encoders or decoders because
colour guidance (denoise) and SDXL's size conditions need them too."""

from __future__ import annotations

from dataclasses import dataclass

from graphflow_nodes.loading.families import SDXL_FAMILIES

from graphflow.node_api import Context


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@dataclass(frozen=True)
class Float32:
    """A model patch: the model in float32. A copy, like every patch: the float16 VAE the executor
    shares stays as it is."""

    def apply(self, model) -> None:
        import torch

        model.to(torch.float32)


def pixel_vae(ctx: Context, ref):
    """The VAE to turn latents into pixels and back with. SDXL's VAE overflows in float16
    (``force_upcast`` in its config), so under ``--dtype float16`` its pictures are made by a
    float32 copy, as diffusers' SDXL pipelines do (``upcast_vae``); SD 1.x/2.x pipelines decode in
    float16, and so does graphflow."""
    import torch

    vae = ctx.models.get(ref)
    if getattr(ref, "family", None) in SDXL_FAMILIES and getattr(vae.config, "force_upcast", False) and next(vae.parameters()).dtype == torch.float16:
        return ctx.models.get(ref.with_patch(Float32()))
    return vae


def decode(vae, latents):
    """Latents → images in [0, 1], differentiable (guidance takes gradients through it)."""
    from graphflow_nodes.runtime import placement

    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents.to(dtype=placement(vae)[1]) / vae.config.scaling_factor + shift
    return (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
