"""Where the denoising loop's starting latents come from: seeded noise of the model's shape, a
tensor saved elsewhere, and the noise img2img adds to an encoded picture. A stage of its own
because the draws' order and shapes are what make a seed give the diffusers pipeline's picture,
and every latent family starts from them."""

from __future__ import annotations

from typing import Annotated

from graphflow_nodes.kinds import SEED_MAX, VAE, Latents, Rng, Scheduler, UNet
from graphflow_nodes.loading.files import resolve_input_file
from graphflow_nodes.stages.vae import vae_scale_factor
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Limit, Node, Outputs, open_input


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
        from safetensors.torch import load

        path = resolve_input_file(i.path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors files are read (no pickles)")
        with open_input(ctx, path) as f:
            data = load(f.read())
        if i.key not in data:
            raise KeyError(f"{path} has no tensor {i.key!r} (it has {', '.join(data)})")
        return {"latents": data[i.key].to(ctx.device)}
