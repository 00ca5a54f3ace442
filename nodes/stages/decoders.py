"""The end of the pipeline: latents back to pictures through the VAE. A stage of its own, as in
diffusers, so a family that leaves the picture another way (pixel models: no VAE) brings its own
decoder instead of a branch in this one."""

from __future__ import annotations

from graphflow_nodes.kinds import VAE, Image, Latents
from graphflow_nodes.stages.denoise import batch_key
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
        if tiling is not None:
            with torch.no_grad():
                return {"image": decode(vae, i.latents, tiling).float()}
        # runs batched together (a sweep's --batch) decode in one call: the VAE's decoder has no
        # cross-sample operation (group norms and attention are per sample)
        return {"image": ctx.batched(batch_key(vae, 0, i.latents), i.latents, lambda zs: decode_batch(vae, zs))}


def decode_batch(vae, latents: list) -> list:
    import torch

    with torch.no_grad():
        if len(latents) == 1:
            return [decode(vae, latents[0]).float()]
        out = decode(vae, torch.cat(latents)).float()
    return list(out.split([z.shape[0] for z in latents]))
