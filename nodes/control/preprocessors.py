"""Control images: the preprocessors that turn a picture into a ControlNet's condition (Canny
edges through OpenCV, or the user's own map as it is), and ``ControlImage``, which sizes and
batches a condition as diffusers' ControlNet pipelines prepare theirs.

A preprocessor is a ``Preprocessor`` subclass with one method, ``process``: one picture in, as
an (H, W, 3) uint8 array, and its map out, (H, W, 3) or (H, W) uint8. The base class does the
rest (tensors to pixels and back, each picture of a batch). A plugin's preprocessor is the same
few lines (README, "Control")."""

from __future__ import annotations

from typing import Annotated, Any

from graphflow_nodes.kinds import ControlImage as ControlImageKind
from graphflow_nodes.kinds import Image
from pydantic import Field

from graphflow.node_api import Context, Inputs, Limit, Node, Outputs, to_uint8


class Preprocessor(Node, abstract=True):
    """Base of the nodes that make a control map from a picture: subclasses give ``process``."""

    class In(Inputs):
        image: Image = Field(description="(batch, 3, H, W) in [0, 1], e.g. from LoadImage")

    class Out(Outputs):
        image: Image = Field(description="the control map, (batch, 3, H, W) in [0, 1]: wire it into ControlImage")

    def process(self, pixels: Any, i: Any) -> Any:
        """One picture, (H, W, 3) uint8, to its map, (H, W, 3) or (H, W) uint8; ``i`` holds the node's inputs."""
        raise NotImplementedError

    def run(self, i: Any, ctx: Context) -> dict:
        import numpy as np
        import torch

        maps = []
        for pixels in to_uint8(i.image):
            m = np.asarray(self.process(pixels, i))
            if m.dtype != np.uint8 or m.ndim not in (2, 3) or m.shape[:2] != pixels.shape[:2]:
                raise ValueError(f"{type(self).__name__}.process gave a {m.dtype} array of shape {m.shape}; "
                                 f"expected uint8 of shape {pixels.shape[:2]} (+ 3 channels)")
            maps.append(np.repeat(m[:, :, None], 3, axis=2) if m.ndim == 2 else m)
        out = torch.from_numpy(np.stack(maps).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
        return {"image": out.to(i.image.device)}


class CannyEdges(Preprocessor, name="CannyEdges", category="control"):
    """Canny's edge map (OpenCV's ``cv2.Canny`` on the 8-bit picture): white edges on black,
    the condition Canny ControlNets were trained on. Hysteresis thresholds as in diffusers' docs."""

    class In(Preprocessor.In):
        low_threshold: int = Field(100, ge=0, le=1000, description="gradient below this: never an edge")
        high_threshold: int = Field(200, ge=0, le=1000, description="gradient above this: surely an edge")

    def process(self, pixels: Any, i: In) -> Any:
        import cv2

        if i.low_threshold > i.high_threshold:
            raise ValueError(f"low_threshold {i.low_threshold} is above high_threshold {i.high_threshold}")
        return cv2.Canny(pixels, i.low_threshold, i.high_threshold)


class ControlMap(Preprocessor, name="ControlMap", category="control"):
    """The identity: the user's own map (a depth map, a pose drawing, edges made elsewhere), used
    as it is. Its 8-bit pixels are the map, as a pipeline given that file would read them."""

    def process(self, pixels: Any, i: Any) -> Any:
        return pixels


class ControlImage(Node, name="ControlImage", category="control", uses=("device",)):
    """A control map made into a ControlNet's condition as diffusers' ControlNet pipelines make
    it (``prepare_image``): resized to the picture's size (LANCZOS on 8-bit pixels, as the pipeline
    resizes an image file), values in [0, 1], one row per picture. Its ``width`` and ``height``
    are the picture's: wire them into RandomLatents, as the pipeline takes its size from the
    control image. Both halves of a guidance batch get the same rows (ApplyControlNet repeats them)."""

    class In(Inputs):
        image: Image = Field(description="the control map (CannyEdges, ControlMap, or any image)")
        width: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, multiple_of=8,
                                                            description="the picture's width; default: the map's, rounded down to a multiple of 8")
        height: Annotated[int, Limit("size")] | None = Field(None, ge=8, le=4096, multiple_of=8,
                                                             description="the picture's height; default: the map's, rounded down to a multiple of 8")
        batch_size: Annotated[int, Limit("batch")] = Field(1, ge=1, le=64, description="pictures per prompt (RandomLatents.batch_size)")

    class Out(Outputs):
        control_image: ControlImageKind = Field(description="(batch_size, 3, height, width) in [0, 1]")
        width: int = Field(description="the picture's width")
        height: int = Field(description="the picture's height")

    def run(self, i: In, ctx: Context) -> dict:
        image = i.image
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image: a control map has 3 channels, (batch, 3, H, W); got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        width, height = i.width or w - w % 8, i.height or h - h % 8
        if (height, width) != (h, w):
            import torch
            from graphflow_nodes.images import from_pil, to_pil
            from PIL import Image as PILImage

            image = torch.cat([from_pil(p.resize((width, height), PILImage.Resampling.LANCZOS)) for p in to_pil(image)])
        if image.shape[0] not in (1, i.batch_size):
            raise ValueError(f"image: {image.shape[0]} maps for a batch of {i.batch_size}; give one map, or one per picture")
        image = image.repeat_interleave(i.batch_size // image.shape[0], dim=0)
        return {"control_image": image.to(ctx.device), "width": width, "height": height}
