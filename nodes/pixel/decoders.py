"""A pixel model's sample is already the picture: decoding is only a change of range, no VAE."""

from __future__ import annotations

from graphflow_nodes.kinds import Image, Latents
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class PixelsToImage(Node, name="PixelsToImage", category="pixel"):
    """A denoised pixel sample in [-1, 1] → an image in [0, 1] (what DDPMPipeline returns)."""

    class In(Inputs):
        latents: Latents = Field(description="the loop's final sample")

    class Out(Outputs):
        image: Image = Field(description="(batch, channels, H, W) in [0, 1]")

    def run(self, i: In, ctx: Context) -> dict:
        return {"image": (i.latents / 2 + 0.5).clamp(0, 1).float()}
