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

from graphflow_nodes.families import (
    ModelError,
    component_class,
    describe_config,
    describe_model_folder,
    family_of,
    pipeline_settings,
)
from graphflow_nodes.files import locate, resolve_config_path, resolve_model_path
from graphflow_nodes.kinds import VAE, SchedulerConfig, TextEncoder, Tokenizer, UNet
from pydantic import Field

from graphflow import Context, Inputs, Node, Outputs
from graphflow.engine.fingerprint import content_id
from graphflow.engine.model_manager import load_patched
from graphflow.node.kinds import FileInput

DEFAULT_MODEL = "tiny-sd"


def _offline() -> None:
    """No hub: loading must never reach for the network. Also quiets the loaders' own progress
    bars, which would tangle with graphflow's."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


def read_model_index(path: Path) -> str:
    """Checks a model folder before anything loads, and returns its family (nodes/families.py)."""
    return family_of(path).name


def load_component(path: Path, comp: str, device: str, dtype_name: str) -> Any:
    """One component from disk, in inference mode on the manager's device and dtype; its class is
    the one model_index.json names, among those the folder's family allows."""
    _offline()
    import diffusers
    import transformers
    from graphflow_nodes.runtime import torch_dtype

    allowed = family_of(path).components.get(comp, ())
    name = component_class(path, comp)
    if comp not in COMPONENT_KINDS or (allowed and name not in allowed):
        raise ModelError(f"component {comp!r} ({name}) of {path} is not one graphflow loads")
    if comp.startswith("tokenizer"):
        return transformers.CLIPTokenizer.from_pretrained(path / comp, local_files_only=True)
    cls = getattr(transformers, name, None) or getattr(diffusers, name)
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


@dataclass(frozen=True)
class MissingComponent:
    """What LoadModel hands out for a component the folder's family does not have (an SD model's
    second text encoder, a pixel model's VAE): a node that asks for it fails naming the component
    and the family, instead of an AttributeError on None."""

    component: str
    family: str
    path: str = field(compare=False)

    def load(self, manager: Any) -> Any:
        raise ModelError(f"the model at {self.path} is a {self.family} model: it has no {self.component} "
                         f"(wire this node to a model of a family that has one)")


#: LoadModel's component outputs, in order
COMPONENT_KINDS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae")


class LoadModel(Node, name="LoadModel", category="model", disk_cache=False):
    """Loads a model from local disk: a diffusers folder of Stable Diffusion 1.x/2.x, SDXL (base
    or refiner) or a pixel-space DDPM (the ``family`` output says which; any other pipeline is refused by name), or
    a single-file ``.safetensors`` checkpoint in the original SD layout. ``tiny-sd``, the default,
    is the small model shipped inside graphflow; a bare name is looked up in the models folders'
    ``checkpoints/``. Only the index (or the file's header) is read here: each component's weights
    load when a node first uses them, once per executor."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_model_path, describe=describe_model_folder)] = Field(
            DEFAULT_MODEL, description="a diffusers model folder or a .safetensors checkpoint: a name in the models folders' checkpoints/, or a path"
        )
        config: Annotated[str, FileInput(resolve=resolve_config_path, describe=describe_config)] = Field(
            "", description="single-file checkpoints only: the configs to build it with, a shipped name (sd15, sd2-v, sd2-base, sdxl) "
            "or a diffusers folder of its architecture; empty: chosen from the file's keys and shapes (SD 2.x: sd2-v)"
        )

    class Out(Outputs):
        tokenizer: Tokenizer = Field(description="the CLIP tokenizer")
        text_encoder: TextEncoder = Field(description="the CLIP text encoder")
        unet: UNet = Field(description="the denoising UNet")
        vae: VAE = Field(description="the autoencoder")
        scheduler_config: SchedulerConfig = Field(description="the model's scheduler configuration")
        tokenizer_2: Tokenizer = Field(description="SDXL: the second tokenizer")
        text_encoder_2: TextEncoder = Field(description="SDXL: the second text encoder (with projection)")
        family: str = Field(description="sd, sdxl, sdxl-refiner or pixel")
        pipeline_config: dict = Field(description="model_index.json's settings (force_zeros_for_empty_prompt, id2label, ...)")

    def run(self, i: In, ctx: Context) -> dict:
        if not i.path.strip():
            raise ModelError("no model folder given: set the workflow's model parameter (--set model=PATH)")
        path = locate(i.path, "checkpoints")
        if path.is_file():  # a single-file checkpoint (original SD layout)
            from graphflow_nodes.checkpoint import checkpoint_refs

            out = checkpoint_refs(path, i.config.strip())
            for c in COMPONENT_KINDS:
                out.setdefault(c, MissingComponent(c, out["family"], str(path.resolve())))
            return out
        if i.config.strip():
            raise ModelError(f"config applies to single-file checkpoints; {path} is a diffusers folder, which carries its own configs")
        family = family_of(path)
        where = str(path.resolve())
        out: dict[str, Any] = {
            c: ModelRef(content_id(path / c), where, c, family.name) if c in family.components else MissingComponent(c, family.name, where)
            for c in COMPONENT_KINDS
        }
        out["scheduler_config"] = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        out["family"] = family.name
        out["pipeline_config"] = pipeline_settings(path)
        return out
