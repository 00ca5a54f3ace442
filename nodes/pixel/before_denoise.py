"""A pixel model's loop starts from noise the size of its pictures and, for a class-conditioned
model, a class id. Its own nodes because there is no VAE to give the latent shape, and the noise
must be drawn as DDPMPipeline draws it for a seed to give that pipeline's picture."""

from __future__ import annotations

from typing import Annotated

from graphflow_nodes.kinds import SEED_MAX, ClassLabels, Latents, Rng, Scheduler, UNet
from pydantic import Field

from graphflow.node_api import Context, Inputs, Limit, Node, Outputs


class RandomPixels(Node, name="RandomPixels", category="pixel", uses=("models",)):
    """Seeded Gaussian noise the size of the UNet's pictures, drawn as DDPMPipeline and
    DDIMPipeline draw it (so a seed gives the pipeline's picture)."""

    class In(Inputs):
        unet: UNet = Field(description="a UNet2DModel: gives channels and size")
        scheduler: Scheduler = Field(description="gives init_noise_sigma (1 for DDPM and DDIM)")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="random seed")
        batch_size: Annotated[int, Limit("batch")] = Field(1, ge=1, le=64, description="pictures to draw")
        rng: Rng | None = Field(None, description="draw from this generator state instead of a fresh one from the seed")

    class Out(Outputs):
        latents: Latents = Field(description="the starting sample, (batch, channels, size, size)")
        rng: Rng = Field(description="the generator after this draw: carry it to SchedulerStep (DDPM draws every step)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        unet = ctx.models.get(i.unet)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        device, dtype = placement(unet)
        g = generator_from(i.seed, i.rng)
        x = torch.randn((i.batch_size, unet.config.in_channels, h, w), generator=g, dtype=dtype).to(device)
        return {"latents": x * i.scheduler.init_noise_sigma, "rng": g.get_state()}


class ClassLabel(Node, name="ClassLabel", category="pixel"):
    """A class id for a class-conditioned UNet, by name (the model's ``id2label`` in
    model_index.json, e.g. "red circle") or by number, repeated for the batch."""

    class In(Inputs):
        label: str = Field(description="a class name from the model's labels, or its number")
        pipeline_config: dict = Field(default_factory=dict, description="LoadModel.pipeline_config (gives id2label)")
        batch_size: Annotated[int, Limit("batch")] = Field(1, ge=1, le=64, description="how many pictures")

    class Out(Outputs):
        class_labels: ClassLabels = Field(description="(batch,) int64")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        labels = {str(v): int(k) for k, v in (i.pipeline_config.get("id2label") or {}).items()}
        text = i.label.strip()
        if text in labels:
            k = labels[text]
        elif text.isdigit():
            k = int(text)
            if labels and k not in labels.values():
                raise ValueError(f"class {k} is not one of the model's {len(labels)} classes (0..{len(labels) - 1})")
        else:
            known = ", ".join(repr(n) for n in labels) or "none: give a number"
            raise ValueError(f"unknown class label {i.label!r}; the model's labels: {known}")
        return {"class_labels": torch.full((i.batch_size,), k, dtype=torch.long)}
