"""Loading a diffusers-format Stable Diffusion folder from local disk, never from a hub.

Each component is loaded once per process, per device and dtype, and shared by every node and
every run that asks for it (``ctx.shared``): re-running a workflow or sweeping a parameter does
not reload weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from graphflow_nodes.files import file_identity, resolve_model_path
from graphflow_nodes.kinds import VAE, SchedulerConfig, TextEncoder, Tokenizer, UNet
from pydantic import Field

from graphflow import Context, Inputs, Node, Outputs

#: component -> the class names graphflow's nodes can drive
EXPECTED = {
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "text_encoder": ("CLIPTextModel",),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "scheduler": None,  # any diffusers scheduler; the Scheduler node picks the class
}

DEFAULT_MODEL = "tiny-sd"


class ModelError(Exception):
    pass


def _offline() -> None:
    """No hub: loading must never reach for the network. Also quiets the loaders' own progress
    bars, which would tangle with graphflow's."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


def read_model_index(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist (give a local diffusers folder, or '{DEFAULT_MODEL}')")
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{path} is not a diffusers model folder: it has no model_index.json")
    try:
        data = json.loads(index.read_text())
    except ValueError as e:
        raise ModelError(f"{index} is not valid JSON: {e}") from None
    for comp, classes in EXPECTED.items():
        entry = data.get(comp)
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ModelError(f"{index} has no '{comp}' component; a Stable Diffusion model needs {', '.join(EXPECTED)}")
        if classes and entry[1] not in classes:
            raise ModelError(f"component '{comp}' of {path} is a {entry[1]}; expected {' or '.join(classes)}")
        if not (path / comp).is_dir():
            raise ModelError(f"{path} lists '{comp}' but has no {comp}/ folder")
    return data


def load_component(path: Path, comp: str, device: str, dtype_name: str) -> Any:
    """One component, loaded once per process for (folder, device, dtype)."""
    from graphflow.context import shared

    def build() -> Any:
        _offline()
        from graphflow_nodes.runtime import torch_dtype

        dtype = torch_dtype(dtype_name)
        if comp == "tokenizer":
            from transformers import CLIPTokenizer

            return CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        if comp == "text_encoder":
            from transformers import CLIPTextModel as cls
        elif comp == "unet":
            from diffusers import UNet2DConditionModel as cls
        elif comp == "vae":
            from diffusers import AutoencoderKL as cls
        else:
            raise ModelError(f"unknown component {comp}")
        model = cls.from_pretrained(path, subfolder=comp, torch_dtype=dtype, local_files_only=True)
        model = model.to(device).eval()
        model.requires_grad_(False)
        return model

    return shared(("sd-component", str(path.resolve()), comp, device, dtype_name), build)


class LoadModel(Node, name="LoadModel", category="model", disk_cache=False):
    """Loads a Stable Diffusion 1.x-style model folder (diffusers format) from local disk.
    ``tiny-sd``, the default, is the small model shipped inside graphflow; point ``path`` at a
    real SD folder to run the same workflow on it."""

    class In(Inputs):
        path: str = Field(DEFAULT_MODEL, description="a diffusers model folder, or the name of a model shipped with graphflow")

    class Out(Outputs):
        tokenizer: Tokenizer = Field(description="the CLIP tokenizer")
        text_encoder: TextEncoder = Field(description="the CLIP text encoder")
        unet: UNet = Field(description="the denoising UNet")
        vae: VAE = Field(description="the autoencoder")
        scheduler_config: SchedulerConfig = Field(description="the model's scheduler configuration")

    @classmethod
    def identity(cls, literals: dict[str, Any]) -> Any:
        p = resolve_model_path(literals.get("path", DEFAULT_MODEL))
        return file_identity(p) if p.exists() else None

    def run(self, i: In, ctx: Context) -> dict:
        path = resolve_model_path(i.path)
        read_model_index(path)
        out = {c: load_component(path, c, ctx.device, ctx.dtype) for c in ("tokenizer", "text_encoder", "unet", "vae")}
        out["scheduler_config"] = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        return out
