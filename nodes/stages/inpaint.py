"""Inpainting's share of the loop, for both kinds of UNet, as diffusers' inpainting pipelines
(SD 1.x and SDXL) branch on ``unet.config.in_channels`` (SD3's and Flux's transformers blend, as
a 4-channel UNet does):

- a dedicated inpainting UNet (9 input channels) is shown the mask and the masked picture's
  latents beside its own latents at every step (``InpaintChannels``);
- an ordinary UNet (4 channels) denoises the whole picture, and after each step the kept region
  is put back from the original latents noised to the next timestep (``KeepUnmasked``).

Each node passes its value through for the other kind, so one workflow serves both. The starting
latents (``InpaintLatents``, then ``InpaintStart``) draw from the seed in the pipeline's order,
which differs between the two kinds: that order is what makes a seed give the pipeline's picture."""

from __future__ import annotations

from graphflow_nodes.kinds import SEED_MAX, VAE, Image, LatentMask, Latents, ModelInput, Rng, Scheduler, Timesteps, Transformer, UNet
from graphflow_nodes.stages.scheduling import noised
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs

#: latents + mask + masked picture's latents: the input of SD's and SDXL's inpainting UNets
INPAINT_CHANNELS = 9


def unet_kind(unet, latent_channels: int = 4, field: str = "unet") -> str:
    """'inpaint' (9 channels for SD's 4-channel latents), 'plain' (the latents' own channels) or a
    refusal naming the count."""
    c = unet.config.in_channels
    if c == latent_channels or (type(unet).__name__ == "FluxTransformer2DModel" and c == 4 * latent_channels):
        return "plain"  # Flux's transformer takes packed 2×2 patches: four times the latents' channels
    if c == 2 * latent_channels + 1 and field == "unet":
        return "inpaint"
    kinds = f"a {latent_channels}-channel model" + (f" or a {2 * latent_channels + 1}-channel inpainting model" if field == "unet" else "")
    raise ValueError(f"{field}: this model takes {c} input channels; inpainting runs {kinds}")


def denoiser(ctx: Context, i) -> tuple[object, str]:
    """The node's UNet or (SD3) transformer, and the field it came in on: exactly one is given."""
    if (i.unet is None) == (i.transformer is None):
        raise ValueError("unet, transformer: give one, the UNet (SD 1.x, SDXL) or the transformer (SD3, Flux)")
    return (ctx.models.get(i.unet), "unet") if i.unet is not None else (ctx.models.get(i.transformer), "transformer")


class InpaintLatents(Node, name="InpaintLatents", category="latents", uses=("models",)):
    """Inpainting's draws, in the order diffusers' inpainting pipelines make them
    (``prepare_latents``): the picture is encoded first when the loop will need its latents (a
    4-channel UNet or a Flux/SD3 transformer blends them back; a start step after 0 noises them),
    then the noise. ``InpaintStart`` makes the loop's start from them once the schedule is known
    (Flux's schedule depends on the picture's size, so the draws come before it)."""

    class In(Inputs):
        unet: UNet | None = Field(None, description="its input channels say whether the picture's latents are needed")
        transformer: Transformer | None = Field(None, description="SD3 or Flux: the transformer, in place of a UNet")
        vae: VAE = Field(description="encodes the picture")
        image: Image = Field(description="the picture to inpaint, (batch, 3, H, W) in [0, 1]")
        start_step: int = Field(0, ge=0, description="the Scheduler's start_step: 0 starts from pure noise (strength 1)")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="random seed")
        rng: Rng | None = Field(None, description="draw from this generator state instead of a fresh one from the seed")

    class Out(Outputs):
        image_latents: Latents = Field(description="the picture's latents (zeros where they are not needed: a 9-channel UNet from step 0)")
        noise: Latents = Field(description="the unit noise (InpaintStart starts from it, KeepUnmasked noises the kept region with it)")
        rng: Rng = Field(description="the generator after these draws: give it to the masked picture's VAEEncode")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement
        from graphflow_nodes.stages.encoders import VAEEncode
        from graphflow_nodes.stages.vae import vae_scale_factor

        (model, field), vae = denoiser(ctx, i), ctx.models.get(i.vae)
        channels = vae.config.latent_channels
        kind = unet_kind(model, channels, field)
        f = vae_scale_factor(vae)
        b, _, h, w = i.image.shape
        if h % f or w % f:
            raise ValueError(f"image: {w}×{h} pixels is not a multiple of the VAE's factor {f}; resize it (LoadImage's width and height)")
        device, dtype = placement(model)
        rng = i.rng
        image_latents = None
        if kind == "plain" or i.start_step > 0:
            enc = VAEEncode.make_inputs({"vae": i.vae, "image": i.image, "seed": i.seed, "rng": rng})
            out = VAEEncode().run(enc, ctx)
            # the pipelines' latents are contiguous; a channels-last copy would decode 1e-6 apart
            image_latents, rng = out["latents"].contiguous(), out["rng"]
        g = generator_from(i.seed, rng)
        noise = torch.randn((b, channels, h // f, w // f), generator=g, dtype=dtype).to(device)
        if image_latents is None:
            image_latents = torch.zeros_like(noise)
        return {"image_latents": image_latents, "noise": noise, "rng": g.get_state()}


class InpaintStart(Node, name="InpaintStart", category="latents"):
    """The loop's starting latents for inpainting: from step 0 (strength 1) pure noise times the
    scheduler's initial sigma, from a later step the picture's latents noised to the first
    timestep (``add_noise``, or ``scale_noise`` for flow matching), as the pipelines'
    ``prepare_latents`` make them."""

    class In(Inputs):
        scheduler: Scheduler = Field(description="from Scheduler")
        timesteps: Timesteps = Field(description="the timesteps to run; the first is the noise level")
        image_latents: Latents = Field(description="InpaintLatents.image_latents")
        noise: Latents = Field(description="InpaintLatents.noise")
        start_step: int = Field(0, ge=0, description="the Scheduler's start_step")

    class Out(Outputs):
        latents: Latents = Field(description="the loop's starting latents")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.stages.scheduler_state import clone

        s = clone(i.scheduler)
        if i.start_step == 0:
            return {"latents": i.noise * getattr(s, "init_noise_sigma", 1.0)}
        return {"latents": noised(s, i.image_latents, i.noise, i.timesteps[:1].repeat(i.noise.shape[0]))}


class InpaintChannels(Node, name="InpaintChannels", category="sampling", uses=("models",)):
    """A 9-channel inpainting UNet's input: the scaled latents, the mask and the masked picture's
    latents side by side in the channel axis (each repeated for the guidance batch). For a
    4-channel UNet the model input passes through unchanged."""

    class In(Inputs):
        unet: UNet = Field(description="the UNet the input is for")
        model_input: ModelInput = Field(description="from ScaleModelInput")
        mask: LatentMask = Field(description="MaskToLatent's mask")
        masked_latents: Latents = Field(description="VAEEncode of MaskedImage's picture")

    class Out(Outputs):
        model_input: ModelInput = Field(description="9 channels for an inpainting UNet, else the input as it was")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import to_batch

        unet = ctx.models.get(i.unet)
        if unet_kind(unet, i.masked_latents.shape[1]) == "plain":
            return {"model_input": i.model_input}
        x = i.model_input
        if tuple(i.mask.shape[-2:]) != tuple(x.shape[-2:]) or tuple(i.masked_latents.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"mask: {tuple(i.mask.shape[-2:])} and masked_latents {tuple(i.masked_latents.shape[-2:])} "
                             f"must have the latents' size {tuple(x.shape[-2:])}")
        n = x.shape[0]
        mask = to_batch(i.mask.to(x), n, "mask")
        masked = to_batch(i.masked_latents.to(x), n, "masked_latents")
        return {"model_input": torch.cat([x, mask, masked], dim=1)}


class KeepUnmasked(Node, name="KeepUnmasked", category="sampling", uses=("models", "iteration")):
    """After a step of a 4-channel UNet, the kept region put back: the picture's latents noised to
    the next timestep (clean after the last), blended by the mask, ``(1 − m)·known + m·latents``,
    as diffusers' inpainting pipelines do with an ordinary model. Reads the loop's iteration to
    find the next timestep. A 9-channel UNet's latents pass through unchanged."""

    class In(Inputs):
        unet: UNet | None = Field(None, description="the loop's UNet (its input channels say which kind)")
        transformer: Transformer | None = Field(None, description="SD3 or Flux: the transformer, in place of a UNet")
        scheduler: Scheduler = Field(description="the scheduler after this step (SchedulerStep.scheduler)")
        latents: Latents = Field(description="the latents after this step (SchedulerStep.latents)")
        image_latents: Latents = Field(description="InpaintLatents.image_latents")
        noise: Latents = Field(description="InpaintLatents.noise")
        mask: LatentMask = Field(description="MaskToLatent's mask")
        timesteps: Timesteps = Field(description="the loop's timesteps")

    class Out(Outputs):
        latents: Latents = Field(description="the blended latents")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import to_batch
        from graphflow_nodes.stages.scheduler_state import clone

        model, field = denoiser(ctx, i)
        if i.latents.ndim != 4:
            raise ValueError(f"latents: {tuple(i.latents.shape)} are packed (Flux): unpack them first (UnpackLatents), blend, and pack again")
        if unet_kind(model, i.latents.shape[1], field) == "inpaint":
            return {"latents": i.latents}
        k = 0 if ctx.iteration is None else ctx.iteration
        known = i.image_latents.to(i.latents)
        if k < len(i.timesteps) - 1:
            s = clone(i.scheduler)
            if getattr(s, "begin_index", 0) is None and hasattr(s, "set_begin_index"):
                s.set_begin_index(0)  # the pipelines set it even from step 0: add_noise then reads the step index
            known = noised(s, known, i.noise.to(i.latents), torch.tensor([i.timesteps[k + 1]]))
        m = to_batch(i.mask.to(i.latents), i.latents.shape[0], "mask")
        return {"latents": (1 - m) * known + m * i.latents}
