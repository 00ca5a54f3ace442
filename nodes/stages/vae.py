"""The VAE's side of every stage: its downscaling factor, the copy that makes pictures (SDXL's VAE
overflows float16) and the differentiable decode. Here and not in encoders or decoders because
colour guidance (denoise) and SDXL's size conditions need them too."""

from __future__ import annotations

from dataclasses import dataclass

from graphflow_nodes.loading.families import SDXL_FAMILIES
from pydantic import Field

from graphflow.node_api import Context


def tiled_field():
    """The tiling inputs Decode and VAEEncode share (each class gets a Field of its own)."""
    return Field(False, description="encode/decode in overlapping tiles, as diffusers' vae.enable_tiling(): for pictures too large for memory (the result differs slightly from the whole-picture one)")


def tile_size_field():
    return Field(None, ge=16, le=4096, description="tiled: the tile's side in pixels (a multiple of the VAE's factor, 8); "
                                                   "default: the VAE's sample_size, as diffusers (512 for SD 1.x)")


def tile_overlap_field():
    return Field(0.25, ge=0.0, le=0.75, description="tiled: the part of a tile blended with its neighbour (diffusers: 0.25)")


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


@dataclass(frozen=True)
class Tiling:
    """Encoding and decoding in overlapping tiles, as diffusers' ``vae.enable_tiling()`` does it,
    without switching tiling on in the shared VAE: ``size`` is the picture-side tile
    (``tile_sample_min_size``; diffusers' default is the VAE's ``sample_size``), ``overlap`` the
    part of a tile shared with its neighbour (``tile_overlap_factor``, 0.25 in diffusers). The
    tile loops below are diffusers' ``_tiled_encode`` and ``tiled_decode`` step for step, with the
    VAE's own ``blend_v``/``blend_h``, in-place blending included, so the result is the one its
    pipelines give with tiling on."""

    size: int
    overlap: float = 0.25

    @classmethod
    def of(cls, vae, size: int | None, overlap: float, where: str) -> Tiling:
        factor = vae_scale_factor(vae)
        sample = size or _sample_size(vae)
        if sample % factor or sample // factor < 2:
            raise ValueError(f"{where}: tile_size must be a multiple of the VAE's factor {factor} and at least {2 * factor}, not {sample}")
        latent = sample // factor
        if int(latent * (1 - overlap)) < 1:
            raise ValueError(f"{where}: tile_overlap {overlap} leaves no step between {sample}-pixel tiles")
        # diffusers' loops step by one rounding and keep by another: where the two disagree, the
        # kept parts do not add up to the picture (48-pixel tiles at 0.25 encode 96 pixels into
        # 13 latent rows, not 12), so such a pair is refused rather than giving a wrong size
        if not _adds_up(sample, overlap, factor):
            fits = next((n for n in range(sample, 4097, factor) if _adds_up(n, overlap, factor)), None)
            raise ValueError(f"{where}: {sample}-pixel tiles overlapping by {overlap} do not add up to the picture "
                             f"(diffusers' tiling would change its size)" + (f"; {fits} does" if fits else ""))
        return cls(sample, overlap)

    def tiles(self, x, tile: int, step: int, run) -> list[list]:
        return [[run(x[:, :, i:i + tile, j:j + tile]) for j in range(0, x.shape[3], step)] for i in range(0, x.shape[2], step)]

    @staticmethod
    def blend(vae, rows: list[list], extent: int, limit: int):
        import torch

        out = []
        for i, row in enumerate(rows):
            kept = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = vae.blend_v(rows[i - 1][j], tile, extent)
                if j > 0:
                    tile = vae.blend_h(row[j - 1], tile, extent)
                kept.append(tile[:, :, :limit, :limit])
            out.append(torch.cat(kept, dim=3))
        return torch.cat(out, dim=2)

    def encode(self, vae, x):
        """The moments (mean and log-variance) of the latent distribution, as ``vae._encode``."""
        latent = self.size // vae_scale_factor(vae)
        if x.shape[-1] <= self.size and x.shape[-2] <= self.size:  # one tile: diffusers encodes it whole
            return _quant(vae, vae.encoder(x))
        rows = self.tiles(x, self.size, int(self.size * (1 - self.overlap)), lambda t: _quant(vae, vae.encoder(t)))
        extent = int(latent * self.overlap)
        return self.blend(vae, rows, extent, latent - extent)

    def decode(self, vae, z):
        """``vae.decode(z).sample`` for unscaled latents ``z``."""
        latent = self.size // vae_scale_factor(vae)
        if z.shape[-1] <= latent and z.shape[-2] <= latent:
            return vae.decode(z).sample
        post = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else (lambda t: t)
        rows = self.tiles(z, latent, int(latent * (1 - self.overlap)), lambda t: vae.decoder(post(t)))
        extent = int(self.size * self.overlap)
        return self.blend(vae, rows, extent, self.size - extent)


def _adds_up(sample: int, overlap: float, factor: int) -> bool:
    latent = sample // factor
    encodes = int(sample * (1 - overlap)) == (latent - int(latent * overlap)) * factor
    decodes = int(latent * (1 - overlap)) * factor == sample - int(sample * overlap)
    return encodes and decodes


def _sample_size(vae) -> int:
    size = vae.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _quant(vae, h):
    return vae.quant_conv(h) if getattr(vae, "quant_conv", None) is not None else h


def decode(vae, latents, tiling: Tiling | None = None):
    """Latents → images in [0, 1], differentiable (guidance takes gradients through it); in
    tiles when ``tiling`` is given."""
    from graphflow_nodes.runtime import placement

    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents.to(dtype=placement(vae)[1]) / vae.config.scaling_factor + shift
    sample = tiling.decode(vae, z) if tiling else vae.decode(z).sample
    return (sample / 2 + 0.5).clamp(0, 1)
