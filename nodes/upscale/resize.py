"""Interpolated resizing of latents and pictures: the first half of a hires fix (a picture made at
the model's size, enlarged, then refined by img2img from a start step at the larger size), and
the step after a learned upscaler that enlarges by its own fixed factor. torch's
``interpolate`` does the work, with the modes ComfyUI's ``LatentUpscale`` offers by the same names."""

from __future__ import annotations

from typing import Annotated, Literal

from graphflow_nodes.kinds import Image, Latents
from pydantic import Field

from graphflow.node_api import Context, Inputs, Limit, Node, Outputs

Mode = Literal["nearest", "nearest-exact", "bilinear", "bicubic", "area"]
MODE_HELP = ("nearest (torch's, as A1111's 'Latent (nearest)'), nearest-exact, bilinear, bicubic (both without "
             "corner alignment), or area (the mean of the covered cells; for shrinking)")


def target_size(shape, scale: float, width: int | None, height: int | None, factor: int = 1) -> tuple[int, int]:
    """(h, w) after resizing: the given size (in pixels, ÷ factor for latents), else ``round(side ×
    scale)`` as ComfyUI's LatentUpscaleBy rounds; a side given alone keeps the aspect ratio."""
    h, w = shape[-2], shape[-1]
    if width is None and height is None:
        return max(1, round(h * scale)), max(1, round(w * scale))
    if width is not None and height is not None:
        return height // factor, width // factor
    if width is not None:
        return max(1, round(h * width / factor / w)), width // factor
    return height // factor, max(1, round(w * height / factor / h))


def interpolate(x, size: tuple[int, int], mode: str):
    import torch.nn.functional as F  # noqa: N812

    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=size, mode=mode, **corners)


class UpscaleLatents(Node, name="UpscaleLatents", category="latents"):
    """Latents resized by a factor (or to a size in pixels): a hires fix's enlargement, which the
    next img2img pass (AddNoise at a start step, then the loop) turns into detail at the larger size."""

    class In(Inputs):
        latents: Latents = Field(description="(batch, C, h, w) latents")
        scale: float = Field(2.0, gt=0.0, le=8.0, description="factor on each side (when no width/height is given)")
        mode: Mode = Field("nearest-exact", description=MODE_HELP)
        width: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, multiple_of=8,
                                                             description="the picture's width in pixels after the pass (the latents' × 8)")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, multiple_of=8,
                                                              description="the picture's height in pixels (the latents' × 8)")

    class Out(Outputs):
        latents: Latents = Field(description="the resized latents")

    def run(self, i: In, ctx: Context) -> dict:
        if i.latents.dim() != 4:
            raise ValueError(f"latents: expected (batch, channels, h, w) latents, got shape {tuple(i.latents.shape)} "
                             "(Flux's packed latents: UnpackLatents first)")
        return {"latents": interpolate(i.latents, target_size(i.latents.shape, i.scale, i.width, i.height, 8), i.mode)}


class ResizeImage(Node, name="ResizeImage", category="image"):
    """A picture resized by a factor or to a size: a hires fix in pixels (then VAEEncode), or an
    upscaler's fixed ×4 brought to the size wanted. Values stay in [0, 1] (bicubic overshoots)."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        scale: float = Field(2.0, gt=0.0, le=8.0, description="factor on each side (when no width/height is given)")
        mode: Mode = Field("bicubic", description=MODE_HELP)
        width: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=8192, description="width in pixels")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=8192, description="height in pixels")

    class Out(Outputs):
        image: Image = Field(description="the resized picture")

    def run(self, i: In, ctx: Context) -> dict:
        size = target_size(i.image.shape, i.scale, i.width, i.height)
        return {"image": interpolate(i.image.float(), size, i.mode).clamp(0, 1)}
