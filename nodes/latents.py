"""Latents in and out of the VAE, and the seeded noise that starts sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from graphflow_nodes.families import SDXL_FAMILIES
from graphflow_nodes.files import resolve_input_file
from graphflow_nodes.kinds import SEED_MAX, VAE, Image, Latents, Rng, Scheduler, UNet
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Limit, Node, Outputs


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


class RandomLatents(Node, name="RandomLatents", category="latents", uses=("models",)):
    """Seeded Gaussian latents of the right shape, scaled by the scheduler's initial noise sigma,
    drawn as diffusers' pipelines draw them (so a seed gives the pipeline's picture)."""

    class In(Inputs):
        unet: UNet = Field(description="gives the latent channels and default size")
        vae: VAE = Field(description="gives the downscaling factor")
        scheduler: Scheduler = Field(description="gives init_noise_sigma")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="random seed")
        width: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, multiple_of=8, description="image width in pixels; default: the model's")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, multiple_of=8, description="image height in pixels; default: the model's")
        batch_size: Annotated[int, Limit("batch")] = Field(1, ge=1, le=64, description="images per prompt")
        rng: Rng | None = Field(None, description="draw from this generator state instead of a fresh one from the seed")

    class Out(Outputs):
        latents: Latents = Field(description="noise × init_noise_sigma: the loop's starting latents")
        noise: Latents = Field(description="the unit noise itself (for AddNoise)")
        rng: Rng = Field(description="the generator after this draw: hand it to the loop's SchedulerStep (stochastic schedulers)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        unet = ctx.models.get(i.unet)
        f = vae_scale_factor(ctx.models.get(i.vae))
        w = i.width or unet.config.sample_size * f
        h = i.height or unet.config.sample_size * f
        shape = (i.batch_size, unet.config.in_channels, h // f, w // f)
        device, dtype = placement(unet)
        g = generator_from(i.seed, i.rng)
        noise = torch.randn(shape, generator=g, dtype=dtype).to(device)
        return {"latents": noise * i.scheduler.init_noise_sigma, "noise": noise, "rng": g.get_state()}


class NoiseLike(Node, name="NoiseLike", category="latents"):
    """Seeded unit Gaussian noise shaped like the given latents (the noise img2img adds)."""

    class In(Inputs):
        latents: Latents = Field(description="gives the shape, dtype and device")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="random seed")
        rng: Rng | None = Field(None, description="draw from this generator state (e.g. VAEEncode.rng: the pipeline's order) instead of the seed")

    class Out(Outputs):
        noise: Latents = Field(description="unit noise")
        rng: Rng = Field(description="the generator after this draw")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from

        g = generator_from(i.seed, i.rng)
        noise = torch.randn(tuple(i.latents.shape), generator=g, dtype=i.latents.dtype)
        return {"noise": noise.to(i.latents.device), "rng": g.get_state()}


class LoadLatents(Node, name="LoadLatents", category="latents", uses=("device",)):
    """A tensor from a safetensors file (latents or noise saved elsewhere)."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_input_file)] = Field(description="a .safetensors file")
        key: str = Field("latents", description="the tensor's name in the file")

    class Out(Outputs):
        latents: Latents = Field(description="the tensor")

    def run(self, i: In, ctx: Context) -> dict:
        from safetensors.torch import load_file

        path = resolve_input_file(i.path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors files are read (no pickles)")
        data = load_file(str(path), device=ctx.device)
        if i.key not in data:
            raise KeyError(f"{path} has no tensor {i.key!r} (it has {', '.join(data)})")
        return {"latents": data[i.key]}


class VAEEncode(Node, name="VAEEncode", category="latents", uses=("models",)):
    """Image in [0, 1] → latents × the VAE's scaling factor: a sample of the latent distribution
    (seeded, as diffusers' img2img draws it) or its mean."""

    class In(Inputs):
        vae: VAE = Field(description="from LoadModel")
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        mode: Literal["sample", "mean"] = Field("sample", description="sample the latent distribution, or take its mean")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="seed for 'sample'")
        rng: Rng | None = Field(None, description="draw from this generator state instead of a fresh one from the seed")

    class Out(Outputs):
        latents: Latents = Field(description="scaled latents")
        rng: Rng = Field(description="the generator after the sample: give it to NoiseLike, and the noise comes as "
                                     "diffusers' img2img pipelines draw it from the same seed")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        dtype_out = placement(ctx.models.get(i.vae))[1]  # latents come out in the model's dtype, even from an upcast VAE
        vae = pixel_vae(ctx, i.vae)
        device, dtype = placement(vae)
        # channels-last, as diffusers' image processor hands a picture to the VAE (a numpy HWC
        # array transposed): convolutions sum in another order on the other layout, 1e-5 apart
        # the picture passes through the model's dtype even for an upcast VAE, as in diffusers' SDXL img2img
        x = (i.image * 2 - 1).to(device=device, dtype=dtype_out).to(dtype).contiguous(memory_format=torch.channels_last)
        g = generator_from(i.seed, i.rng)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            z = dist.sample(generator=g) if i.mode == "sample" else dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return {"latents": (z.to(dtype_out) - shift) * vae.config.scaling_factor, "rng": g.get_state()}


def decode(vae, latents):
    """Latents → images in [0, 1], differentiable (guidance takes gradients through it)."""
    from graphflow_nodes.runtime import placement

    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents.to(dtype=placement(vae)[1]) / vae.config.scaling_factor + shift
    return (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)


class Decode(Node, name="Decode", category="latents", uses=("models",)):
    """Latents ÷ scaling factor → VAE decoder → images in [0, 1]."""

    class In(Inputs):
        vae: VAE = Field(description="from LoadModel")
        latents: Latents = Field(description="latents to decode")

    class Out(Outputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        with torch.no_grad():
            return {"image": decode(pixel_vae(ctx, i.vae), i.latents).float()}
