"""Stable Diffusion model folders (diffusers format, local disk only) as model references.

``LoadModel`` reads nothing but the folder's ``model_index.json`` and hands out one ``ModelRef``
per component: a small frozen value naming the weights by content. The weights load when a node
first asks the executor's model manager for them (``ctx.models.get(ref)``), once per executor,
shared by every node and run that uses them. A workflow whose results are all cached, or that only
passes a model on, loads no weights at all; and a reference can be fingerprinted, pickled and
patched (``with_patch``) without touching a tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.files import locate, resolve_model_path
from graphflow_nodes.kinds import VAE, SchedulerConfig, TextEncoder, Tokenizer, UNet
from pydantic import Field

from graphflow import Context, Inputs, Node, Outputs
from graphflow.fingerprint import content_id
from graphflow.models import load_patched
from graphflow.ports import FileInput

#: component -> the class names graphflow's nodes can drive
EXPECTED = {
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "text_encoder": ("CLIPTextModel",),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "scheduler": None,  # any diffusers scheduler; the Scheduler node picks the class
}
COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae")
#: model_index.json's _class_name -> the family graphflow's nodes know how to drive
FAMILIES = {"StableDiffusionPipeline": "sd"}
FAMILY_NOTES = {"sd": "Stable Diffusion 1.x and 2.x, _class_name StableDiffusionPipeline"}

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


def supported_families() -> str:
    return "; ".join(f"{fam} ({note})" for fam, note in FAMILY_NOTES.items())


def read_model_index(path: Path) -> str:
    """Checks a model folder before anything loads, and returns its family. Refusing an SDXL or
    other pipeline here gives one clear message instead of a shape error deep inside a UNet."""
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist (give a local diffusers folder, or '{DEFAULT_MODEL}')")
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{path} is not a diffusers model folder: it has no model_index.json")
    try:
        data = json.loads(index.read_text())
    except ValueError as e:
        raise ModelError(f"{index} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{index} is not a diffusers model index (a JSON object)")
    pipeline = data.get("_class_name")
    family = FAMILIES.get(pipeline)
    if family is None:
        raise ModelError(
            f"{path} is a {pipeline or 'model without a _class_name'}: that model family is not supported; "
            f"supported families: {supported_families()}"
        )
    for comp, classes in EXPECTED.items():
        entry = data.get(comp)
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ModelError(f"{index} has no '{comp}' component; a Stable Diffusion model needs {', '.join(EXPECTED)}")
        if classes and entry[1] not in classes:
            raise ModelError(f"component '{comp}' of {path} is a {entry[1]}; expected {' or '.join(classes)}")
        if not (path / comp).is_dir():
            raise ModelError(f"{path} lists '{comp}' but has no {comp}/ folder")
    return family


def load_component(path: Path, comp: str, device: str, dtype_name: str) -> Any:
    """One component from disk, in inference mode on the manager's device and dtype."""
    _offline()
    from graphflow_nodes.runtime import torch_dtype

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
    model = cls.from_pretrained(path, subfolder=comp, torch_dtype=torch_dtype(dtype_name), local_files_only=True)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class ModelRef:
    """One component of a model folder, named by that component's content (two fine-tunes that ship
    the same VAE bytes share one VAE in memory). Equality and hashing leave
    out ``path``: the same bytes at another path are the same model, loaded once and sharing cache
    entries. ``patches`` (frozen objects with ``apply(model)``) make a different model that loads
    as a copy of the unpatched one, which stays untouched in memory."""

    source: str  # content_id of the component's subfolder
    path: str = field(compare=False)  # where the bytes were found, for loading
    component: str
    family: str
    patches: tuple = ()

    def __post_init__(self) -> None:
        for p in self.patches:
            if not callable(getattr(p, "apply", None)):
                raise TypeError(f"a patch needs apply(model); got {type(p).__name__}")
        hash(self.patches)  # a patch must be hashable: it is part of the model's identity

    def base(self) -> ModelRef:
        return replace(self, patches=())

    def with_patch(self, patch: Any) -> ModelRef:
        return replace(self, patches=(*self.patches, patch))

    def load(self, manager: Any) -> Any:
        if self.patches:
            return load_patched(manager, self.base(), self.patches)
        return load_component(Path(self.path), self.component, manager.device, manager.dtype)

    def __repr__(self) -> str:
        extra = f", {len(self.patches)} patches" if self.patches else ""
        return f"ModelRef({self.family} {self.component} {self.source[:16]}… at {self.path}{extra})"


class LoadModel(Node, name="LoadModel", category="model", disk_cache=False):
    """Loads a Stable Diffusion 1.x-style model from local disk: a diffusers folder, or a single-file
    ``.safetensors`` checkpoint in the original layout. ``tiny-sd``, the default, is the small model
    shipped inside graphflow; a bare name is looked up in the models folders' ``checkpoints/``.
    Only the index (or the file's header) is read here: each component's weights load when a node
    first uses them, once per executor."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_model_path)] = Field(
            DEFAULT_MODEL, description="a diffusers model folder or a .safetensors checkpoint: a name in the models folders' checkpoints/, or a path"
        )

    class Out(Outputs):
        tokenizer: Tokenizer = Field(description="the CLIP tokenizer")
        text_encoder: TextEncoder = Field(description="the CLIP text encoder")
        unet: UNet = Field(description="the denoising UNet")
        vae: VAE = Field(description="the autoencoder")
        scheduler_config: SchedulerConfig = Field(description="the model's scheduler configuration")

    def run(self, i: In, ctx: Context) -> dict:
        path = locate(i.path, "checkpoints")
        if path.is_file():  # a single-file checkpoint (original SD layout)
            from graphflow_nodes.checkpoint import checkpoint_refs

            return checkpoint_refs(path)
        family = read_model_index(path)
        where = str(path.resolve())
        out: dict[str, Any] = {c: ModelRef(content_id(path / c), where, c, family) for c in COMPONENTS}
        out["scheduler_config"] = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        return out
