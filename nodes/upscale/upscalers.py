"""Learned pixel upscalers: ``LoadUpscaler`` reads an ESRGAN-family ``.safetensors`` file (a
pickle is refused by its name, before it is opened) and hands out a reference the model manager
loads once; ``Upscale`` runs it over a picture in tiles, so a large picture needs the memory of
one tile. Each tile is read with ``overlap`` pixels of its neighbours around it and only its
middle is kept: with an overlap at least as wide as the network's reach, tiles join without a
seam, and the picture is the one the whole-picture run gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.kinds import Image, Upscaler
from graphflow_nodes.loading.files import resolve_upscaler_path
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id


def read_shapes(path: Path) -> tuple[dict[str, str], Any]:
    """(file name → BasicSR name, the network's Shape) from the header alone."""
    from graphflow_nodes.loading.checkpoint import header_shapes
    from graphflow_nodes.loading.families import ModelError
    from graphflow_nodes.upscale.esrgan import UpscalerError, basicsr_names, shape_of

    try:
        shapes = header_shapes(path)
    except ModelError as e:
        raise UpscalerError(str(e)) from None
    names = basicsr_names(shapes)
    return names, shape_of({names[k]: v for k, v in shapes.items()})


@dataclass(frozen=True)
class UpscalerRef:
    """An upscaler file, named by its content (the same bytes at two paths load once)."""

    source: str
    path: str = field(compare=False)

    def load(self, manager: Any) -> Any:
        from graphflow_nodes.runtime import torch_dtype
        from graphflow_nodes.upscale.esrgan import load
        from safetensors.torch import load_file

        return load(load_file(self.path)).to(device=manager.device, dtype=torch_dtype(manager.dtype))

    def __repr__(self) -> str:
        return f"UpscalerRef({self.source[:16]}… at {self.path})"


class LoadUpscaler(Node, name="LoadUpscaler", category="model", disk_cache=False):
    """An ESRGAN-family upscaler from a .safetensors file: ESRGAN, Real-ESRGAN (×4, and its ×2/×1
    that fold the picture first), BSRGAN/RealSR, any RRDBNet size; the file's shapes say which."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_upscaler_path)] = Field(
            description="a .safetensors upscaler: a name in the models folders' upscalers/, or a path (.pth pickles are refused)"
        )

    class Out(Outputs):
        upscaler: Upscaler = Field(description="the upscaler (a reference; it loads when Upscale first runs it)")
        scale: int = Field(description="how many times larger it makes a picture, on each side")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.upscale.esrgan import UpscalerError

        path = checked_input(ctx, resolve_upscaler_path(i.path))
        try:
            _, shape = read_shapes(path)
        except UpscalerError as e:
            raise UpscalerError(f"path: {path.name}: {e}") from None
        return {"upscaler": UpscalerRef(content_id(path), str(path)), "scale": shape.scale}


def tiles(size: int, tile: int) -> list[tuple[int, int]]:
    return [(a, min(a + tile, size)) for a in range(0, size, tile)] if tile else [(0, size)]


class Upscale(Node, name="Upscale", category="image", uses=("models",)):
    """A picture enlarged by a learned upscaler (its own factor: ×4 for most ESRGANs), in tiles.
    Follow it with ResizeImage for another size."""

    class In(Inputs):
        upscaler: Upscaler = Field(description="from LoadUpscaler")
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        tile: int = Field(256, ge=0, le=4096, description="tile side in input pixels (0: the whole picture at once)")
        overlap: int = Field(32, ge=0, le=512, description="pixels of context read around each tile and cut away after: "
                                                             "at least the network's reach (about 20 for a small RRDBNet) joins tiles seamlessly")

    class Out(Outputs):
        image: Image = Field(description="(batch, 3, H × scale, W × scale) in [0, 1]")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        import torch.nn.functional as F  # noqa: N812
        from graphflow_nodes.runtime import placement

        model = ctx.models.get(i.upscaler)
        device, dtype = placement(model)
        s, fold = model.shape.scale, model.shape.unshuffle
        x = i.image.to(device=device, dtype=dtype)
        h, w = x.shape[-2:]
        # Real-ESRGAN's ×2/×1 fold 2×2 or 4×4 pixels into channels: sides (and tiles) a multiple of that
        if h % fold or w % fold:
            x = F.pad(x, (0, -w % fold, 0, -h % fold), mode="reflect")
        tile, overlap = -(-i.tile // fold) * fold, -(-i.overlap // fold) * fold
        H, W = x.shape[-2:]  # noqa: N806
        out = torch.zeros(x.shape[0], model.shape.out_channels, H * s, W * s, device=device, dtype=dtype)
        with torch.no_grad():
            for y0, y1 in tiles(H, tile):
                for x0, x1 in tiles(W, tile):
                    ctx.check_cancelled()
                    top, left = max(0, y0 - overlap), max(0, x0 - overlap)
                    part = model(x[:, :, top:min(H, y1 + overlap), left:min(W, x1 + overlap)])
                    out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = part[:, :, (y0 - top) * s:(y1 - top) * s, (x0 - left) * s:(x1 - left) * s]
        return {"image": out[:, :, :h * s, :w * s].float().clamp(0, 1)}
