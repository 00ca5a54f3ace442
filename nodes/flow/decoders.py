"""Flux's way out of the loop: its packed latents back to a (batch, channels, height, width) grid
for the shared Decode (which undoes the VAE's scale and shift)."""

from __future__ import annotations

from graphflow_nodes.kinds import ImageIds, Latents
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class UnpackLatents(Node, name="UnpackLatents", category="latents"):
    """Packed Flux latents → latents: each token back to its 2×2 patch, the grid read from the
    packing's image ids (FluxPipeline's ``_unpack_latents``)."""

    class In(Inputs):
        latents: Latents = Field(description="(batch, patches, channels × 4), e.g. the loop's latents or a pred_x0 frame")
        image_ids: ImageIds = Field(description="PackLatents.image_ids (gives the grid)")

    class Out(Outputs):
        latents: Latents = Field(description="(batch, channels, height, width)")

    def run(self, i: In, ctx: Context) -> dict:
        if i.latents.ndim != 3:
            raise ValueError(f"UnpackLatents takes packed (batch, patches, features) latents, not {tuple(i.latents.shape)}")
        rows, cols = int(i.image_ids[:, 1].max()) + 1, int(i.image_ids[:, 2].max()) + 1
        b, n, c = i.latents.shape
        if n != rows * cols:
            raise ValueError(f"{n} packed patches do not fill the image ids' {rows}×{cols} grid")
        x = i.latents.view(b, rows, cols, c // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return {"latents": x.reshape(b, c // 4, rows * 2, cols * 2)}
