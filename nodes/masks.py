"""Masks as values of their own kind: read from a picture, grown, feathered, inverted, brought to
the latents' size, and the two pixel operations inpainting needs around them (the masked picture
a 9-channel UNet is told about, and the final paste of the kept pixels). Outpainting's padding
lives here too: it is a picture and the mask over its new border. A mask is (batch, 1, H, W) in
[0, 1], 1 where the picture is repainted, as diffusers' inpainting pipelines read a white mask."""

from __future__ import annotations

from typing import Annotated, Literal

from graphflow_nodes.kinds import Image, LatentMask, Latents, Mask
from graphflow_nodes.loading.files import resolve_input_file
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Limit, Node, Outputs, open_input


def check_mask(mask, field: str, like=None, like_field: str = "image") -> None:
    """A mask that cannot mean anything is refused by the field it came in on: not one channel,
    another size than the picture it belongs to, or nothing to repaint at all."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"{field}: a mask is (batch, 1, H, W); this one is {tuple(mask.shape)}")
    if like is not None and tuple(mask.shape[-2:]) != tuple(like.shape[-2:]):
        (mh, mw), (h, w) = mask.shape[-2:], like.shape[-2:]
        raise ValueError(f"{field}: the mask is {mw}×{mh} pixels but the {like_field} is {w}×{h}; "
                         "give a mask of the picture's size (LoadMask's width and height resize it)")
    if not bool((mask > 0).any()):
        raise ValueError(f"{field}: the mask is empty (no pixel is marked to repaint); white (or transparent, "
                         "for an alpha mask) marks what is repainted")


class LoadMask(Node, name="LoadMask", category="mask", uses=("device",)):
    """A mask from a picture: its grey levels (white repaints, as diffusers reads a mask image) or
    its alpha channel (transparent repaints, as painting tools erase). With a threshold it is
    binary, as diffusers' mask processor makes it (``do_binarize``: at 0.5); without one the grey
    levels stay (a soft mask blends)."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_input_file)] = Field(
            description="a picture file (PNG), or the name of a sample shipped with graphflow (samples/...)")
        source: Literal["auto", "grey", "alpha", "red", "green", "blue"] = Field(
            "auto", description="grey: white repaints; alpha: transparent repaints; auto: alpha when the picture has one, else grey; "
                                "red, green, blue: that channel's value (ComfyUI's LoadImageMask)")
        threshold: float | None = Field(0.5, ge=0.0, le=1.0, description="values at or above it repaint, below it keep "
                                                                          "(diffusers' binarizing); null keeps the grey levels")
        invert: bool = Field(False, description="swap what is repainted and what is kept")
        width: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, description="resize to this width (nearest)")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, description="resize to this height (nearest)")

    class Out(Outputs):
        mask: Mask = Field(description="(1, 1, H, W): 1 repaints, 0 keeps")

    def run(self, i: In, ctx: Context) -> dict:
        import numpy as np
        import torch
        from PIL import Image as PILImage
        from PIL import UnidentifiedImageError

        path = resolve_input_file(i.path)
        with open_input(ctx, path) as f:
            try:
                img = PILImage.open(f)
                img.load()
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"path: {path.name} is not a picture ({e})") from None
        has_alpha = "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)
        source = ("alpha" if has_alpha else "grey") if i.source == "auto" else i.source
        if source == "alpha" and not has_alpha:
            raise ValueError(f"source: {path.name} has no alpha channel (mode {img.mode}); use source \"grey\" for a black-and-white mask")
        if i.width or i.height:
            img = img.resize((i.width or img.width, i.height or img.height), PILImage.Resampling.NEAREST)
        if source == "alpha":
            values = 1.0 - np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        elif source in ("red", "green", "blue"):
            values = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., ("red", "green", "blue").index(source)] / 255.0
        else:
            values = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        mask = torch.from_numpy(values.copy())[None, None]
        if i.threshold is not None:
            mask = (mask >= i.threshold).float()
        if i.invert:
            mask = 1 - mask
        check_mask(mask, "path")
        return {"mask": mask.to(ctx.device)}


class InvertMask(Node, name="InvertMask", category="mask"):
    """Repaint what was kept and keep what was repainted: ``1 - mask``."""

    class In(Inputs):
        mask: Mask = Field(description="the mask")

    class Out(Outputs):
        mask: Mask = Field(description="1 - mask")

    def run(self, i: In, ctx: Context) -> dict:
        return {"mask": 1 - i.mask}


class GrowMask(Node, name="GrowMask", category="mask"):
    """The repainted area grown (or, with negative pixels, shrunk) by a square neighbourhood: a
    pixel's new value is the largest (smallest) within ``|pixels|`` of it. Growing a mask past an
    object's edge gives the model room to blend it away."""

    class In(Inputs):
        mask: Mask = Field(description="the mask")
        pixels: int = Field(4, ge=-256, le=256, description="how far to grow (negative: shrink)")

    class Out(Outputs):
        mask: Mask = Field(description="the grown (or shrunk) mask")

    def run(self, i: In, ctx: Context) -> dict:
        import torch.nn.functional as F

        if i.pixels == 0:
            return {"mask": i.mask}
        k = 2 * abs(i.pixels) + 1
        if i.pixels > 0:
            return {"mask": F.max_pool2d(i.mask, k, stride=1, padding=abs(i.pixels))}
        return {"mask": -F.max_pool2d(-i.mask, k, stride=1, padding=abs(i.pixels))}


def gaussian_blur(x, radius: int):
    """A separable Gaussian blur (sigma = radius / 2, edges replicated): the soft edge of a
    feathered mask."""
    import torch
    import torch.nn.functional as F

    sigma = radius / 2
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1), groups=x.shape[1])
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(x.shape[1], 1, -1, 1), groups=x.shape[1])


class FeatherMask(Node, name="FeatherMask", category="mask"):
    """The mask's edge softened by a Gaussian blur, so the repainted area fades into the kept one
    (with a 4-channel model, whose latents are blended by the mask at every step)."""

    class In(Inputs):
        mask: Mask = Field(description="the mask")
        radius: int = Field(4, ge=0, le=256, description="blur radius in pixels (sigma = radius / 2); 0 leaves the mask as it is")

    class Out(Outputs):
        mask: Mask = Field(description="the feathered mask, in [0, 1]")

    def run(self, i: In, ctx: Context) -> dict:
        if i.radius == 0:
            return {"mask": i.mask}
        return {"mask": gaussian_blur(i.mask.float(), i.radius).clamp(0, 1).to(i.mask.dtype)}


class MaskToLatent(Node, name="MaskToLatent", category="mask"):
    """The mask at the latents' size, by nearest-neighbour sampling, as diffusers' inpainting
    pipelines shrink it (``prepare_mask_latents``): what a 9-channel UNet takes beside its latents,
    and what blends the kept region back for a 4-channel one."""

    class In(Inputs):
        mask: Mask = Field(description="the mask at the picture's size")
        latents: Latents = Field(description="gives the size (e.g. VAEEncode.latents of the picture)")

    class Out(Outputs):
        mask: LatentMask = Field(description="(batch, 1, h, w) at the latents' size")

    def run(self, i: In, ctx: Context) -> dict:
        import torch.nn.functional as F

        check_mask(i.mask, "mask")
        mask = F.interpolate(i.mask, size=tuple(i.latents.shape[-2:]))
        return {"mask": mask.to(device=i.latents.device, dtype=i.latents.dtype)}


class MaskedImage(Node, name="MaskedImage", category="mask"):
    """The picture with its repainted area blanked to mid-grey (0 in the VAE's [-1, 1]): what a
    9-channel inpainting UNet is shown of the picture, as diffusers makes it (``image * (mask <
    0.5)``: a soft mask is cut at one half)."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        mask: Mask = Field(description="the mask, the picture's size")

    class Out(Outputs):
        image: Image = Field(description="the picture, grey where it is repainted")

    def run(self, i: In, ctx: Context) -> dict:
        check_mask(i.mask, "mask", i.image)
        keep = (i.mask.to(i.image.device) < 0.5).to(i.image.dtype)
        return {"image": i.image * keep + 0.5 * (1 - keep)}


class PasteUnmasked(Node, name="PasteUnmasked", category="mask"):
    """The kept pixels of the original pasted over the result: ``result · mask + original · (1 −
    mask)``, what diffusers' ``apply_overlay`` does after inpainting a crop. The VAE never gives
    back a picture exactly, so without it the kept area drifts slightly; a feathered mask fades the
    two together. ``enabled`` false passes the result through (a workflow's switch)."""

    class In(Inputs):
        image: Image = Field(description="the inpainted picture")
        original: Image = Field(description="the picture before inpainting")
        mask: Mask = Field(description="the mask inpainting used")
        enabled: bool = Field(True, description="false: the result as it is")

    class Out(Outputs):
        image: Image = Field(description="the composite")

    def run(self, i: In, ctx: Context) -> dict:
        if not i.enabled:
            return {"image": i.image}
        if tuple(i.original.shape[-2:]) != tuple(i.image.shape[-2:]):
            (oh, ow), (h, w) = i.original.shape[-2:], i.image.shape[-2:]
            raise ValueError(f"original: {ow}×{oh} pixels, but the image is {w}×{h}")
        check_mask(i.mask, "mask", i.image)
        m = i.mask.to(device=i.image.device, dtype=i.image.dtype)
        return {"image": i.image * m + i.original.to(i.image) * (1 - m)}


def outpaint_mask(height: int, width: int, top: int, right: int, bottom: int, left: int, feathering: int):
    """ComfyUI's ``ImagePadForOutpaint`` mask, vectorized: 1 over the new border; inside the
    original, towards each padded side, ``((feathering − d) / feathering)²`` for a pixel ``d``
    pixels from that side (0 from ``feathering`` on), so the seam is repainted softly."""
    import torch

    mask = torch.ones(height + top + bottom, width + left + right)
    inner = torch.zeros(height, width)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        rows = torch.arange(height).view(-1, 1).expand(height, width)
        cols = torch.arange(width).view(1, -1).expand(height, width)
        far_h, far_w = torch.full_like(rows, height), torch.full_like(cols, width)
        d = torch.stack([rows if top else far_h, height - rows if bottom else far_h,
                         cols if left else far_w, width - cols if right else far_w]).amin(0)
        v = (feathering - d).clamp_min(0).double() / feathering  # in double, then stored: ComfyUI's Python floats
        inner = (v * v).float()
    mask[top : top + height, left : left + width] = inner
    return mask


class PadImage(Node, name="PadImage", category="mask"):
    """Outpainting's start: the picture with new border on the chosen sides, filled mid-grey, and
    the mask over the new border, feathered into the picture's edge (ComfyUI's
    ``ImagePadForOutpaint``). Inpaint the result to extend the picture; the padded size must be a
    multiple of the VAE's factor (8) for the latents."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        left: int = Field(0, ge=0, le=4096, description="pixels added on the left")
        top: int = Field(0, ge=0, le=4096, description="pixels added on top")
        right: int = Field(0, ge=0, le=4096, description="pixels added on the right")
        bottom: int = Field(0, ge=0, le=4096, description="pixels added at the bottom")
        feathering: int = Field(8, ge=0, le=4096, description="how far into the picture the mask fades out (0: a hard edge)")

    class Out(Outputs):
        image: Image = Field(description="the padded picture, grey in the new border")
        mask: Mask = Field(description="1 over the new border, fading into the picture")

    def run(self, i: In, ctx: Context) -> dict:
        import torch.nn.functional as F

        if not (i.left or i.top or i.right or i.bottom):
            raise ValueError("left, top, right, bottom: all are 0, so there is nothing to outpaint; pad at least one side")
        b, _, h, w = i.image.shape
        image = F.pad(i.image, (i.left, i.right, i.top, i.bottom), value=0.5)
        mask = outpaint_mask(h, w, i.top, i.right, i.bottom, i.left, i.feathering)
        return {"image": image, "mask": mask.to(i.image)[None, None].expand(b, 1, -1, -1).contiguous()}
