"""What a loaded model is in a graph: references to its components (``ModelRef``, named by their
content, patched without touching the base) and how one is loaded from disk, offline. Below both
LoadModel and the single-file checkpoint loader, which hand these references out."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from graphflow_nodes.loading.families import ModelError, component_class, family_of

from graphflow.node_api import load_patched, while_hashing


def offline() -> None:
    """No hub: loading must never reach for the network. Also quiets the loaders' own progress
    bars, which would tangle with graphflow's."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


def _warm_loaders() -> None:
    """What loading any component imports (torch, diffusers' and transformers' model bases, several
    seconds in a new process), with the hub kept offline first as ``load_component`` does. Run
    while a fresh process hashes a model's files (``while_hashing``), so the hash, which needs no
    GIL, costs no wall time of its own on a machine with a second core."""
    offline()
    import diffusers.models.modeling_utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401


while_hashing(_warm_loaders)


SAFE_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.ckpt", "diffusion_pytorch_model.pt")


def diffusers_config(path: Path, class_name: str, kind: str, error: type[Exception] = ValueError, hint: str = "") -> dict:
    """The config of a diffusers folder that must hold a ``class_name`` (``kind``: what the user
    named, with its article, for the messages), once its weights are known to be the safetensors
    file: a folder whose weights are only a pickle is refused naming it, unopened (loading a pickle
    can run code). Checked when the folder is named, before anything loads."""
    if not path.is_dir():
        raise error(f"{path} is not a folder: {kind} is a diffusers folder (config.json and {SAFE_WEIGHTS}){hint}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise error(f"{path} has no readable config.json ({e}): not a diffusers {class_name} folder") from None
    if config.get("_class_name") != class_name:
        raise error(f"{path} holds a {config.get('_class_name')!r}, not {kind}")
    if not (path / SAFE_WEIGHTS).is_file():
        pickled = [p for p in PICKLED_WEIGHTS if (path / p).exists()]
        why = f"it has only {pickled[0]}, a pickle, which graphflow never opens (it can run code)" if pickled else "it has none"
        raise error(f"{path}: {kind}'s weights are read from {SAFE_WEIGHTS}; {why}")
    return config


def read_model_index(path: Path) -> str:
    """Checks a model folder before anything loads, and returns its family (loading/families.py)."""
    return family_of(path).name


def load_component(path: Path, comp: str, device: str, dtype_name: str) -> Any:
    """One component from disk, in inference mode on the manager's device and dtype; its class is
    the one model_index.json names, among those the folder's family allows."""
    offline()
    import diffusers
    import transformers
    from graphflow_nodes.runtime import torch_dtype

    allowed = family_of(path).components.get(comp, ())
    name = component_class(path, comp)
    if comp not in COMPONENT_KINDS or (allowed and name not in allowed):
        raise ModelError(f"component {comp!r} ({name}) of {path} is not one graphflow loads")
    if comp.startswith("tokenizer"):
        cls = transformers.T5TokenizerFast if name.startswith("T5") else transformers.CLIPTokenizer
        return cls.from_pretrained(path / comp, local_files_only=True)
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

    def expected_bytes(self) -> int:
        """About what the component takes loaded: its weight files' size on disk (0 when it is
        not a folder of them). The model manager makes that much room under its budget before
        loading, so the encoders a run no longer needs leave before the denoiser arrives."""
        folder = Path(self.path) / self.component
        if not folder.is_dir():
            return 0
        return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))

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


@dataclass(frozen=True)
class AbsentComponent(MissingComponent):
    """An optional component the folder leaves out (SD3 without its T5 encoder): a node that can
    do without it (EncodeT5 gives zeros, as StableDiffusion3Pipeline does) checks for this."""

    def load(self, manager: Any) -> Any:
        raise ModelError(f"the {self.family} model at {self.path} was saved without its {self.component} "
                         f"(null in model_index.json); only nodes that can do without it take it")


#: LoadModel's component outputs, in order
COMPONENT_KINDS = ("tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae")


@dataclass(frozen=True)
class PaddedTokenizerRef(ModelRef):
    """The shipped CLIP vocabulary with another padding token (SD 2.x's and SDXL's second
    tokenizer pad with "!"), for configs that ship no tokenizer of their own."""

    pad_token: str = ""

    def load(self, manager: Any) -> Any:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(self.path, pad_token=self.pad_token, local_files_only=True)
