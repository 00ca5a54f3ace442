"""The end of the pipeline: latents back to pictures through the VAE. A stage of its own, as in
diffusers, so a family that leaves the picture another way (pixel models: no VAE) brings its own
decoder instead of a branch in this one."""

from __future__ import annotations

from graphflow_nodes.kinds import VAE, Image, Latents
from graphflow_nodes.stages.vae import Tiling, decode, pixel_vae, tile_overlap_field, tile_size_field, tiled_field
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class Decode(Node, name="Decode", category="latents", uses=("models",)):
    """Latents ÷ scaling factor → VAE decoder → images in [0, 1]; with ``tiled``, in overlapping
    tiles (diffusers' ``vae.enable_tiling()``), for pictures whose whole decode would not fit in memory."""

    class In(Inputs):
        vae: VAE = Field(description="from LoadModel")
        latents: Latents = Field(description="latents to decode")
        tiled: bool = tiled_field()
        tile_size: int | None = tile_size_field()
        tile_overlap: float = tile_overlap_field()

    class Out(Outputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        vae = pixel_vae(ctx, i.vae)
        tiling = Tiling.of(vae, i.tile_size, i.tile_overlap, "tile_size") if i.tiled else None
        with torch.no_grad():
            return {"image": decode(vae, i.latents, tiling).float()}
