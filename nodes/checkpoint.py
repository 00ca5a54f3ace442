"""Single-file checkpoints: one ``.safetensors`` in the original Stable Diffusion (LDM) layout, as
model sites ship them, turned into the same model references a diffusers folder gives.

The family is read from the file's keys (its header only: nothing loads to tell), the shapes pick
the configs shipped inside graphflow (``configs/sd15`` for SD 1.x, ``models/tiny-sd`` for the
embedded model), and each component is converted when a node first needs it by diffusers' own
single-file loaders (``from_single_file(config=…)`` for the UNet and VAE,
``create_diffusers_clip_model_from_ldm`` for the text encoder), offline: the config is a folder
inside graphflow, never a hub repository. Pickled checkpoints (``.ckpt``, ``.pt``, ``.bin``) are
refused, never unpickled: loading one can run any code.

SD 2.x and SDXL checkpoints are recognised and refused by name until graphflow drives those
families (their configs then go in ``configs/`` and their rows in ``VARIANTS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphflow_nodes.files import MODELS_DIR, PACKAGE_DIR
from graphflow_nodes.models import ModelError, ModelRef

from graphflow.fingerprint import content_id, digest
from graphflow.models import load_patched

CONFIGS_DIR = PACKAGE_DIR / "configs"
#: the CLIP tokenizer SD 1.x uses (openai/clip-vit-large-patch14's), shipped once, with tiny-sd
CLIP_TOKENIZER = MODELS_DIR / "tiny-sd"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
VAE_KEY = "first_stage_model.encoder.conv_in.weight"
CLIP_KEYS = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
             "cond_stage_model.transformer.embeddings.token_embedding.weight")
OPEN_CLIP_KEY = "cond_stage_model.model.token_embedding.weight"


@dataclass(frozen=True)
class Variant:
    """A config folder a checkpoint of ``family`` can be built into, and the shapes that say so."""

    name: str
    family: str  # the checkpoint family: sd1, sd2, sdxl
    ref_family: str  # the family LoadModel's references carry ("sd": SD 1.x and 2.x)
    config: Path  # a diffusers-layout folder of configs (model_index.json, unet/, vae/, text_encoder/, scheduler/)
    tokenizer: Path  # a folder holding tokenizer/


VARIANTS = (
    Variant("tiny-sd", "sd1", "sd", MODELS_DIR / "tiny-sd", CLIP_TOKENIZER),
    Variant("sd15", "sd1", "sd", CONFIGS_DIR / "sd15", CLIP_TOKENIZER),
)


def header_shapes(path: Path) -> dict[str, tuple]:
    """Every tensor's name and shape, from the safetensors header alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path} is not a readable safetensors file: {e}") from None


def detect_family(keys) -> str | None:
    """The checkpoint family from its keys: sd1, sd2, sdxl, or None when it is no SD checkpoint."""
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if UNET_KEY not in keys:
        return None
    if OPEN_CLIP_KEY in keys:
        return "sd2"
    if any(k in keys for k in CLIP_KEYS):
        return "sd1"
    return None


def _shape_facts(shapes: dict[str, tuple]) -> dict[str, int]:
    text = next(shapes[k] for k in CLIP_KEYS if k in shapes)
    cross = next((s[1] for k, s in shapes.items() if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")), None)
    return {"unet": shapes[UNET_KEY][0], "in": shapes[UNET_KEY][1], "vae": shapes[VAE_KEY][0] if VAE_KEY in shapes else -1,
            "text": text[1], "cross": cross}


def _config_facts(v: Variant) -> dict[str, int]:
    unet = json.loads((v.config / "unet" / "config.json").read_text())
    vae = json.loads((v.config / "vae" / "config.json").read_text())
    te = json.loads((v.config / "text_encoder" / "config.json").read_text())
    return {"unet": unet["block_out_channels"][0], "in": unet["in_channels"], "vae": vae["block_out_channels"][0],
            "text": te["hidden_size"], "cross": unet["cross_attention_dim"]}


def choose_variant(path: Path) -> Variant:
    """The shipped config a checkpoint file fits, or a ModelError saying what it is and why not."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{path.name}: {path.suffix} checkpoints are Python pickles, which can run code when loaded; "
                         "graphflow reads .safetensors only (convert it with a tool you trust, or find the .safetensors release)")
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path.name}: not a .safetensors checkpoint (or a diffusers model folder)")
    shapes = header_shapes(path)
    family = detect_family(shapes)
    if family is None:
        sample = ", ".join(list(shapes)[:3])
        raise ModelError(f"{path.name} is not a Stable Diffusion checkpoint in the original layout (keys like {sample}); "
                         "a LoRA goes to LoadLoRA, an embedding to LoadTextualInversion")
    variants = [v for v in VARIANTS if v.family == family]
    if not variants:
        raise ModelError(f"{path.name} is a {family} checkpoint: that family is not supported yet for single files; "
                         f"supported: {', '.join(sorted({v.family for v in VARIANTS}))}")
    if VAE_KEY not in shapes:
        raise ModelError(f"{path.name} has no VAE (first_stage_model.…) weights")
    facts = _shape_facts(shapes)
    if facts["in"] != 4:
        raise ModelError(f"{path.name}: its UNet takes {facts['in']} input channels (an inpainting or other special model); "
                         "only text-to-image checkpoints (4 channels) are supported")
    for v in variants:
        if _config_facts(v) == facts:
            return v
    raise ModelError(f"{path.name} is a {family} checkpoint whose shapes (UNet width {facts['unet']}, text width {facts['text']}, "
                     f"VAE width {facts['vae']}) match no shipped config ({', '.join(v.name for v in variants)})")


def load_checkpoint_component(path: str, config: str, comp: str, device: str, dtype_name: str) -> Any:
    """One component converted from the checkpoint by diffusers' single-file loaders, offline."""
    from graphflow_nodes.models import _offline
    from graphflow_nodes.runtime import torch_dtype

    _offline()
    dtype = torch_dtype(dtype_name)
    if comp == "text_encoder":
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
        from safetensors.torch import load_file
        from transformers import CLIPTextModel

        model = create_diffusers_clip_model_from_ldm(CLIPTextModel, load_file(path), subfolder="text_encoder", config=config,
                                                     torch_dtype=dtype, local_files_only=True)
    elif comp in ("unet", "vae"):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        import diffusers.utils.logging as dlog

        cls = UNet2DConditionModel if comp == "unet" else AutoencoderKL
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # from_single_file warns about its own model.to(torch_dtype)
        try:
            model = cls.from_single_file(path, config=config, subfolder=comp, torch_dtype=dtype, local_files_only=True)
        finally:
            dlog.set_verbosity(level)
    else:
        raise ModelError(f"unknown component {comp}")
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class CheckpointRef(ModelRef):
    """A component of a single-file checkpoint: named by the file's content and the config it is
    built with (``source``); ``path`` is the file, ``config`` the config folder."""

    config: str = field(default="", compare=False)

    def load(self, manager: Any) -> Any:
        if self.patches:
            return load_patched(manager, self.base(), self.patches)
        return load_checkpoint_component(self.path, self.config, self.component, manager.device, manager.dtype)

    def __repr__(self) -> str:
        extra = f", {len(self.patches)} patches" if self.patches else ""
        return f"CheckpointRef({self.family} {self.component} {self.source[:16]}… from {Path(self.path).name}{extra})"


def checkpoint_refs(path: Path) -> dict[str, Any]:
    """LoadModel's outputs for a single-file checkpoint: nothing but the header is read here."""
    v = choose_variant(path)
    where = str(path.resolve())
    file_id = content_id(path)
    out: dict[str, Any] = {
        c: CheckpointRef(digest([file_id, content_id(v.config / c / "config.json"), c]), where, c, v.ref_family, config=str(v.config))
        for c in ("text_encoder", "unet", "vae")
    }
    out["tokenizer"] = ModelRef(content_id(v.tokenizer / "tokenizer"), str(v.tokenizer.resolve()), "tokenizer", v.ref_family)
    out["scheduler_config"] = json.loads((v.config / "scheduler" / "scheduler_config.json").read_text())
    return out
