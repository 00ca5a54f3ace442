"""Images in and out: loading, numbered PNGs that remember the workflow that made them, grids,
animations of per-step frames, and a picture of a latent's channels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
from graphflow_nodes.kinds import Image, ImageList, Latents
from graphflow_nodes.loading.files import resolve_input_file
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Limit, Node, Outputs, open_input, to_uint8, write_new

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def to_pil(image) -> list:
    """(batch, 3, H, W) in [0, 1] → PIL images, rounded as everything graphflow shows (graphflow/pixels.py)."""
    from PIL import Image as PILImage

    return [PILImage.fromarray(a) for a in to_uint8(image)]


def from_pil(img) -> Any:
    import numpy as np
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def _save_new(img, folder: Path, name: str, numbered: bool = False, **kw) -> Path:
    """A picture as a new file (never replacing one), written whole or not at all."""
    fmt = kw.pop("format", None) or name.rsplit(".", 1)[-1].upper()
    return write_new(folder, name, lambda f: img.save(f, format=fmt, **kw), numbered=numbered)


class LoadImage(Node, name="LoadImage", category="image", uses=("device",)):
    """An image file as a (1, 3, H, W) tensor in [0, 1], resized if asked."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_input_file)] = Field(
            description="an image file, or the name of a sample shipped with graphflow (samples/...)"
        )
        width: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, description="resize to this width")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, description="resize to this height")

    class Out(Outputs):
        image: Image = Field(description="(1, 3, H, W) in [0, 1]")

    def run(self, i: In, ctx: Context) -> dict:
        from PIL import Image as PILImage

        with open_input(ctx, resolve_input_file(i.path)) as f:
            img = PILImage.open(f).convert("RGB")
        if i.width or i.height:
            img = img.resize((i.width or img.width, i.height or img.height), PILImage.Resampling.LANCZOS)
        return {"image": from_pil(img).to(ctx.device)}


class SaveImage(Node, name="SaveImage", category="image", pure=False, uses=("out_dir", "workflow")):
    """Writes numbered PNGs (prefix_00001.png, ...) into the output folder, never overwriting, each
    carrying the workflow and its parameters in its metadata so the picture can be remade."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        prefix: str = Field("image", pattern=SAFE_NAME, max_length=100,
                            description="file name prefix: up to 100 letters, digits, '_', '.' and '-', starting with a letter or digit")

    class Out(Outputs):
        paths: list[str] = Field(description="the files written")

    def run(self, i: In, ctx: Context) -> dict:
        from PIL.PngImagePlugin import PngInfo

        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("graphflow_workflow", orjson.dumps(ctx.workflow).decode())
        info.add_text("graphflow_params", orjson.dumps(ctx.params, default=str).decode())
        paths = [str(_save_new(img, ctx.out_dir, f"{i.prefix}.png", numbered=True, pnginfo=info)) for img in to_pil(i.image)]
        return {"paths": paths}


class ImageGrid(Node, name="ImageGrid", category="image"):
    """Images side by side in rows: a list of images (each possibly a batch) becomes one picture."""

    class In(Inputs):
        images: ImageList = Field(description="images to tile, e.g. [{\"from\": \"a.image\"}, {\"from\": \"b.image\"}]")
        columns: int | None = Field(None, ge=1, le=64, description="images per row; default: all in one row")
        gap: int = Field(2, ge=0, le=64, description="pixels between images")

    class Out(Outputs):
        image: Image = Field(description="the grid, (1, 3, H, W)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        tiles = [t for img in i.images for t in img.detach().float().cpu()]
        if not tiles:
            raise ValueError("no images to tile")
        h = max(t.shape[1] for t in tiles)
        w = max(t.shape[2] for t in tiles)
        cols = i.columns or len(tiles)
        rows = (len(tiles) + cols - 1) // cols
        grid = torch.ones(3, rows * h + (rows - 1) * i.gap, cols * w + (cols - 1) * i.gap)
        for k, t in enumerate(tiles):
            r, c = divmod(k, cols)
            y, x = r * (h + i.gap), c * (w + i.gap)
            grid[:, y : y + t.shape[1], x : x + t.shape[2]] = t
        return {"image": grid.unsqueeze(0)}


class SaveAnimation(Node, name="SaveAnimation", category="image", pure=False, uses=("out_dir",)):
    """An animated GIF or WebP of per-step frames, optionally with a second sequence beside the
    first (x_t on the left, the predicted x0 on the right). Never over an existing file: a taken
    name gets a number (steps_00001.gif)."""

    class In(Inputs):
        frames: ImageList = Field(description="one image per step (e.g. collected from a loop)")
        beside: ImageList | None = Field(None, description="a second sequence of the same length, shown to the right")
        filename: str = Field("steps.gif", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.(gif|webp)$", max_length=100,
                              description="file name (.gif or .webp): up to 100 letters, digits, '_', '.' and '-', starting with a letter or digit")
        frame_ms: int = Field(120, ge=10, le=10000, description="time per frame")
        scale: int = Field(1, ge=1, le=16, description="upscale small images by this factor")

    class Out(Outputs):
        path: str = Field(description="the file written")
        frames_written: int = Field(description="number of frames")

    def run(self, i: In, ctx: Context) -> dict:
        from PIL import Image as PILImage

        seqs = [i.frames] + ([i.beside] if i.beside else [])
        if i.beside and len(i.beside) != len(i.frames):
            raise ValueError(f"frames has {len(i.frames)} images, beside has {len(i.beside)}")
        if not i.frames:
            raise ValueError("no frames")
        pictures = []
        for k in range(len(i.frames)):
            parts = [to_pil(seq[k][:1])[0] for seq in seqs]
            w, h = sum(p.width for p in parts), max(p.height for p in parts)
            canvas = PILImage.new("RGB", (w, h))
            x = 0
            for p in parts:
                canvas.paste(p, (x, 0))
                x += p.width
            if i.scale > 1:
                canvas = canvas.resize((w * i.scale, h * i.scale), PILImage.Resampling.NEAREST)
            pictures.append(canvas)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        fmt = "GIF" if i.filename.endswith(".gif") else "WEBP"
        extra = {"lossless": True} if fmt == "WEBP" else {}
        path = _save_new(pictures[0], ctx.out_dir, i.filename, format=fmt, save_all=True, append_images=pictures[1:],
                         duration=i.frame_ms, loop=0, **extra)
        return {"path": str(path), "frames_written": len(pictures)}


class LatentChannels(Node, name="LatentChannels", category="image"):
    """A picture of a latent's channels side by side, each stretched to its own min..max in grey."""

    class In(Inputs):
        latents: Latents = Field(description="(batch, C, h, w); the first item is drawn")
        scale: int = Field(8, ge=1, le=64, description="upscale factor (nearest neighbour)")
        gap: int = Field(1, ge=0, le=16, description="pixels between channels (before scaling)")

    class Out(Outputs):
        image: Image = Field(description="(1, 3, h*scale, C*(w+gap)*scale)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        z = i.latents[0].detach().float().cpu()
        c, h, w = z.shape
        out = torch.ones(c * (w + i.gap) - i.gap, h).T.clone()
        for k in range(c):
            ch = z[k]
            ch = (ch - ch.min()) / (ch.max() - ch.min()).clamp_min(1e-8)
            out[:, k * (w + i.gap) : k * (w + i.gap) + w] = ch
        img = out.expand(3, -1, -1).unsqueeze(0)
        img = torch.nn.functional.interpolate(img, scale_factor=i.scale, mode="nearest")
        return {"image": img.contiguous()}


class SplitChannels(Node, name="ImageChannels", category="image"):
    """Mean of each colour channel, for quick numeric checks of a picture in a workflow's output."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")

    class Out(Outputs):
        red: float = Field(description="mean of the red channel")
        green: float = Field(description="mean of the green channel")
        blue: float = Field(description="mean of the blue channel")

    def run(self, i: In, ctx: Context) -> dict:
        m = i.image.detach().float().mean(dim=(0, 2, 3)).tolist()
        return {"red": m[0], "green": m[1], "blue": m[2]}


