"""T2I-Adapters: a small network turns a control image (edges, depth, a sketch) into one feature
map per UNet down block; scaled, they are added inside the down blocks at every step
(diffusers' ``down_intrablock_additional_residuals``). The adapter runs once per picture, before
the loop, as ``StableDiffusionAdapterPipeline`` runs it, and the noise prediction takes its
residuals as an input: ``LoadAdapter`` → ``AdapterResiduals`` → ``PredictNoise.adapter_residuals``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.kinds import AdapterResiduals as AdapterResidualsKind
from graphflow_nodes.kinds import Image, T2IAdapterModel
from graphflow_nodes.loading.files import resolve_adapter_path
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id



class AdapterError(ValueError):
    pass


def check_adapter_folder(path: Path) -> dict:
    """The adapter's config, once the folder is known to be a diffusers T2I-Adapter with
    safetensors weights."""
    from graphflow_nodes.loading.model_refs import diffusers_config

    return diffusers_config(path, "T2IAdapter", "a T2I-Adapter", AdapterError)


@dataclass(frozen=True)
class AdapterRef:
    """A T2I-Adapter folder, named by its content (loaded once per executor, like a model component)."""

    source: str
    path: str = field(compare=False)

    def load(self, manager: Any) -> Any:
        from diffusers import T2IAdapter
        from graphflow_nodes.loading.model_refs import offline
        from graphflow_nodes.runtime import torch_dtype

        offline()
        check_adapter_folder(Path(self.path))
        model = T2IAdapter.from_pretrained(self.path, torch_dtype=torch_dtype(manager.dtype), use_safetensors=True,
                                           local_files_only=True)
        model = model.to(manager.device).eval()
        model.requires_grad_(False)
        return model


class LoadAdapter(Node, name="LoadAdapter", category="model", disk_cache=False):
    """A T2I-Adapter from local disk (a diffusers folder: config.json and safetensors weights;
    pickles are refused unread). Only the config is read here; the weights load when
    AdapterResiduals first runs it."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_adapter_path, folder=True)] = Field(
            description="a diffusers T2I-Adapter folder: a name in the models folders' adapters/, or a path")

    class Out(Outputs):
        adapter: T2IAdapterModel = Field(description="the adapter (a reference)")

    def run(self, i: In, ctx: Context) -> dict:
        path = checked_input(ctx, resolve_adapter_path(i.path), folder=True)
        check_adapter_folder(path)
        return {"adapter": AdapterRef(content_id(path, ctx.files.max_bytes), str(path.resolve()))}


class AdapterResiduals(Node, name="AdapterResiduals", category="conditioning", uses=("models",)):
    """The adapter's feature maps for a control image, times ``scale``, doubled for a guidance
    batch: what ``PredictNoise`` adds inside the UNet's down blocks at every step. The control
    image is taken as it is, (1, 3, H, W) in [0, 1] at the picture's size (LoadImage's width and
    height resize it as the pipeline does). Chain a second adapter through ``add_to``: their
    residuals are summed, as diffusers' ``MultiAdapter`` sums its adapters' weighted features."""

    class In(Inputs):
        adapter: T2IAdapterModel = Field(description="from LoadAdapter")
        image: Image = Field(description="the control image at the picture's size, (1, 3, H, W) in [0, 1]")
        scale: float = Field(1.0, ge=-10.0, le=10.0, description="conditioning scale (0: no effect)")
        guidance: bool = Field(True, description="repeat the maps for both halves of a classifier-free-guidance batch")
        add_to: AdapterResidualsKind | None = Field(None, description="another adapter's residuals, summed with these")

    class Out(Outputs):
        residuals: AdapterResidualsKind = Field(description="to PredictNoise.adapter_residuals")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import placement

        adapter = ctx.models.get(i.adapter)
        device, dtype = placement(adapter)
        image = i.image
        if image.ndim != 4:
            raise ValueError(f"image: expected a (batch, channels, height, width) picture, got shape {tuple(image.shape)}")
        wants, factor = adapter.config.in_channels, adapter.total_downscale_factor
        if image.shape[1] != wants:
            raise ValueError(f"image: this T2I-Adapter takes {wants}-channel control images, given {image.shape[1]} channels")
        h, w = image.shape[-2:]
        if h % factor or w % factor:
            raise ValueError(f"image: {w}×{h} pixels; this T2I-Adapter needs sides that are multiples of {factor} "
                             f"(resize it in LoadImage to the picture's width and height)")
        # channels-last, as the pipelines hand a PIL picture over (a transposed numpy array): the
        # convolutions then add in the same order, and the maps match theirs bit for bit
        image = image.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            maps = [m * i.scale for m in adapter(image)]
        if i.guidance:
            maps = [torch.cat([m] * 2, dim=0) for m in maps]
        if i.add_to is not None:
            if len(i.add_to) != len(maps) or any(a.shape != b.shape for a, b in zip(i.add_to, maps)):
                raise ValueError("add_to: the other adapter's residuals have other shapes "
                                 f"({[tuple(a.shape) for a in i.add_to]} vs {[tuple(b.shape) for b in maps]}): "
                                 "adapters for the same model, same image size and the same guidance setting sum")
            maps = [a + b for a, b in zip(i.add_to, maps)]
        return {"residuals": tuple(maps)}


class AdapterSteps(Node, name="AdapterSteps", category="conditioning"):
    """The residuals on the first steps only, none after: SDXL's ``adapter_conditioning_factor``
    (the adapter steers the composition early and leaves the details to the text). Put it in the
    loop's body between AdapterResiduals and the noise prediction, with the loop's index; it
    applies them while ``index < int(steps × factor)``, diffusers' rule."""

    class In(Inputs):
        residuals: AdapterResidualsKind = Field(description="from AdapterResiduals")
        index: int = Field(ge=0, description="the loop's index (denoise.index)")
        steps: int = Field(ge=1, description="the number of inference steps the schedule was made with")
        factor: float = Field(1.0, ge=0.0, le=1.0, description="the fraction of the steps the adapter acts on (1: all, 0: none)")

    class Out(Outputs):
        residuals: AdapterResidualsKind | None = Field(None, description="the residuals, or none after the first steps")

    def run(self, i: In, ctx: Context) -> dict:
        return {"residuals": i.residuals if i.index < int(i.steps * i.factor) else None}


def down_block_residuals(residuals: Any, batch: int) -> list:
    """The residuals as the UNet's ``down_intrablock_additional_residuals`` takes them: a fresh
    list (the UNet pops from it), each map repeated to the model input's batch."""
    from graphflow_nodes.runtime import to_batch

    return [to_batch(r, batch, "adapter_residuals").clone() for r in residuals]


def fit_message(unet: Any, residuals: Any, error: Exception) -> str:
    """What a shape error inside the UNet means when residuals were given."""
    shapes = ", ".join("×".join(map(str, r.shape[1:])) for r in residuals)
    return (f"adapter_residuals: the T2I-Adapter's feature maps ({shapes}) do not fit this UNet's down blocks "
            f"(channels {tuple(unet.config.block_out_channels)}): an adapter made for another model family, or a control "
            f"image of another size than the picture ({error})")
