"""The end of the pipeline: latents back to pictures through the VAE. A stage of its own, as in
diffusers, so a family that leaves the picture another way (pixel models: no VAE) brings its own
decoder instead of a branch in this one."""

from __future__ import annotations

from graphflow_nodes.kinds import VAE, Image, Latents
from graphflow_nodes.stages.vae import decode, pixel_vae
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


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
