"""What the flow families' loop starts from: seeded noise of the transformer's latent shape, Flux's
packing into 2×2 patches with their position ids, and the schedule's shift from the image's
sequence length (``mu``: larger pictures are shifted further towards the noisy end, FLUX.1-dev's
dynamic shifting). The schedule itself is the shared Scheduler node given ``mu``."""

from __future__ import annotations

from typing import Annotated, Any

from graphflow_nodes.kinds import SEED_MAX, VAE, ImageIds, Latents, Rng, SchedulerConfig, Transformer
from graphflow_nodes.stages.vae import vae_scale_factor
from pydantic import Field

from graphflow.node_api import Context, Inputs, Limit, Node, Outputs


def is_flux(transformer: Any) -> bool:
    """Flux's transformer takes packed 2×2 patches (its own patch size is 1) and position ids."""
    return type(transformer).__name__ == "FluxTransformer2DModel"


class FlowLatents(Node, name="FlowLatents", category="latents", uses=("models",)):
    """Seeded Gaussian latents of an SD3 or Flux transformer's shape, drawn as their pipelines
    draw them (unit noise: a flow starts at σ = 1, pure noise, with no initial sigma to scale by).
    Flux's latent size is rounded down to whole 2×2 patches, as FluxPipeline rounds it; give the
    latents to PackLatents for Flux's transformer."""

    class In(Inputs):
        transformer: Transformer = Field(description="gives the latent channels and default size")
        vae: VAE = Field(description="gives the downscaling factor")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="random seed")
        width: Annotated[int, Limit("size")] | None = Field(None, ge=16, le=4096, multiple_of=8, description="image width in pixels; default: the model's (Flux: 1024)")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=16, le=4096, multiple_of=8, description="image height in pixels; default: the model's (Flux: 1024)")
        batch_size: Annotated[int, Limit("batch")] = Field(1, ge=1, le=64, description="images per prompt")
        rng: Rng | None = Field(None, description="draw from this generator state instead of a fresh one from the seed")

    class Out(Outputs):
        latents: Latents = Field(description="(batch, channels, height/8, width/8) unit noise")
        rng: Rng = Field(description="the generator after this draw")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        transformer = ctx.models.get(i.transformer)
        f = vae_scale_factor(ctx.models.get(i.vae))
        flux = is_flux(transformer)
        default = 128 * f if flux else transformer.config.sample_size * f  # FluxPipeline's default_sample_size is 128
        h, w = i.height or default, i.width or default
        if flux:
            shape = (i.batch_size, transformer.config.in_channels // 4, 2 * (h // (f * 2)), 2 * (w // (f * 2)))
        else:
            p = transformer.config.patch_size
            if h % (f * p) or w % (f * p):
                raise ValueError(f"width and height must be multiples of {f * p} for this transformer (VAE factor {f} × patch size {p}); "
                                 f"given {w}×{h}")
            shape = (i.batch_size, transformer.config.in_channels, h // f, w // f)
        device, dtype = placement(transformer)
        g = generator_from(i.seed, i.rng)
        return {"latents": torch.randn(shape, generator=g, dtype=dtype).to(device), "rng": g.get_state()}


class PackLatents(Node, name="PackLatents", category="latents"):
    """Flux's packing: each 2×2 patch of the latents becomes one token of 4 × channels features,
    row by row, with its position id (0, row, column) for the rotary embedding (FluxPipeline's
    ``_pack_latents`` and ``_prepare_latent_image_ids``)."""

    class In(Inputs):
        latents: Latents = Field(description="(batch, channels, height, width), height and width even")

    class Out(Outputs):
        latents: Latents = Field(description="(batch, height/2 × width/2, channels × 4)")
        image_ids: ImageIds = Field(description="(height/2 × width/2, 3)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        if i.latents.ndim != 4:
            raise ValueError(f"PackLatents takes (batch, channels, height, width) latents; these are {tuple(i.latents.shape)} (packed already?)")
        b, c, h, w = i.latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"Flux packs 2×2 patches: the latents' height and width must be even, not {h}×{w}")
        packed = i.latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
        ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
        return {"latents": packed, "image_ids": ids.reshape(-1, 3).to(device=i.latents.device, dtype=i.latents.dtype)}


def image_seq_len(latents: Any, transformer: Any) -> int:
    """The tokens the transformer sees: a packed sequence's length, or the latents' patches."""
    if latents.ndim == 3:
        return int(latents.shape[1])
    p = 2 if is_flux(transformer) else transformer.config.patch_size
    return (latents.shape[-2] // p) * (latents.shape[-1] // p)


def calculate_shift(seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """The shift ``mu`` for a sequence length: a straight line through (base_seq_len, base_shift)
    and (max_seq_len, max_shift), as the Flux and SD3 pipelines compute it."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + (base_shift - m * base_seq_len)


class FlowShift(Node, name="FlowShift", category="sampling", uses=("models",)):
    """The schedule's shift for this picture's size (``mu`` of the Scheduler): from the number of
    tokens the transformer sees, between the scheduler config's base and max shift. Schedulers with
    ``use_dynamic_shifting`` (FLUX.1-dev) shift their sigmas by ``exp(mu)``; others ignore it."""

    class In(Inputs):
        scheduler_config: SchedulerConfig = Field(description="from LoadModel (gives the base and max shift and lengths)")
        transformer: Transformer = Field(description="gives the patch size")
        latents: Latents = Field(description="the starting latents (packed or not): their size is the picture's")

    class Out(Outputs):
        mu: float = Field(description="for the Scheduler's mu")
        image_seq_len: int = Field(description="the transformer's image tokens")

    def run(self, i: In, ctx: Context) -> dict:
        import diffusers

        cls = getattr(diffusers, str(i.scheduler_config.get("_class_name", "")), None)
        config = dict(cls.from_config(i.scheduler_config).config) if cls is not None else dict(i.scheduler_config)
        n = image_seq_len(i.latents, ctx.models.get(i.transformer))
        mu = calculate_shift(n, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return {"mu": float(mu), "image_seq_len": n}
