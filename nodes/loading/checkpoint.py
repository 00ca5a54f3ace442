"""Single-file checkpoints: one ``.safetensors`` in the original Stable Diffusion layout (CompVis'
for SD 1.x and 2.x, Stability's generative-models for SDXL), as model sites ship them, turned
into the same model references a diffusers folder gives.

The family is read from the file's keys (its header only: nothing loads to tell), the shapes pick
a config folder shipped inside graphflow (``configs/``: SD 1.5, SD 2.x base and 768-v, SDXL base
and refiner;
``models/tiny-sd`` for the embedded model), and each component is converted when a node first
needs it by diffusers' own single-file loaders (``from_single_file(config=…)`` for the UNet and
VAE, ``create_diffusers_clip_model_from_ldm`` for the text encoders), offline: the config is a
folder, never a hub repository. Each loader is handed only its component's tensors (memory-mapped,
as the whole file would be: bench/bench_checkpoint.py measures the small difference). Pickled checkpoints (``.ckpt``, ``.pt``, ``.bin``)
are refused, never unpickled: loading one can run any code.

SD 2.x base (512, predicts the noise) and 768-v (predicts v) checkpoints have the same keys and
shapes; like diffusers and InvokeAI, graphflow builds an SD 2.x file as 768-v unless LoadModel's
``config`` says ``sd2-base``. ``config`` may also name any diffusers folder of the same
architecture (a fine-tune's own configs, or a tiny test model's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphflow_nodes.loading.families import ModelError, component_class, pipeline_family, pipeline_settings
from graphflow_nodes.loading.files import CONFIGS_DIR, MODELS_DIR, PICKLE_SUFFIXES, locate, resolve_config_path
from graphflow_nodes.loading.model_refs import ModelRef, PaddedTokenizerRef, offline

from graphflow.node_api import content_id, digest, load_patched

#: the CLIP BPE vocabulary every family's tokenizers share (openai/clip-vit-large-patch14's), shipped once, with tiny-sd
CLIP_TOKENIZER = MODELS_DIR / "tiny-sd" / "tokenizer"

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
VAE_KEY = "first_stage_model.encoder.conv_in.weight"
#: where each family keeps each component's tensors in the file
PREFIXES = {
    "sd1": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "conditioner.embedders.0.",
             "text_encoder_2": "conditioner.embedders.1."},
    "sdxl-refiner": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder_2": "conditioner.embedders.0."},
}
#: the graphflow family (loading/families.py) each checkpoint family's references carry
REF_FAMILY = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner"}
#: the token-embedding table of each text encoder (its second dimension is the encoder's width)
TEXT_KEYS = {
    "text_encoder": ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",  # CLIP (SD 1.x)
                     "cond_stage_model.transformer.embeddings.token_embedding.weight",
                     "cond_stage_model.model.token_embedding.weight",  # OpenCLIP ViT-H (SD 2.x)
                     "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"),  # SDXL's CLIP
    "text_encoder_2": ("conditioner.embedders.1.model.token_embedding.weight",  # SDXL's OpenCLIP ViT-bigG
                       "conditioner.embedders.0.model.token_embedding.weight"),  # the refiner's, its only encoder
}
#: tokenizers that pad with "!" rather than the end token (the OpenCLIP encoders'), when the config folder has none
PADS = {"sd1": {}, "sd2": {"tokenizer": "!"}, "sdxl": {"tokenizer_2": "!"}, "sdxl-refiner": {"tokenizer_2": "!"}}


class NoShippedConfig(ModelError):
    """A checkpoint of a known family whose shapes fit none of the shipped configs: LoadModel's
    ``config`` must name a folder of its architecture."""


@dataclass(frozen=True)
class Variant:
    """A config folder a checkpoint of ``family`` can be built into. Where several fit the same
    shapes (SD 2.x base and 768-v), the ``default`` one is built unless LoadModel's ``config``
    names another."""

    name: str
    family: str  # the checkpoint family: sd1, sd2, sdxl, sdxl-refiner
    config: Path  # a diffusers-layout folder of configs (model_index.json, unet/, vae/, text_encoder/, scheduler/)
    note: str
    default: bool = True


VARIANTS = (
    Variant("tiny-sd", "sd1", MODELS_DIR / "tiny-sd", "graphflow's embedded tiny model"),
    Variant("sd15", "sd1", CONFIGS_DIR / "sd15", "Stable Diffusion 1.x"),
    Variant("sd2-v", "sd2", CONFIGS_DIR / "sd2-v", "Stable Diffusion 2.x 768-v, predicting v"),
    Variant("sd2-base", "sd2", CONFIGS_DIR / "sd2-base", "Stable Diffusion 2.x base (512), predicting the noise", default=False),
    Variant("sdxl", "sdxl", CONFIGS_DIR / "sdxl", "Stable Diffusion XL base"),
    Variant("sdxl-refiner", "sdxl-refiner", CONFIGS_DIR / "sdxl-refiner", "Stable Diffusion XL refiner"),
)


def header_shapes(path: Path) -> dict[str, tuple]:
    """Every tensor's name and shape, from the safetensors header alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:  # numpy: reading shapes must not import torch (graphflow validate)
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path} is not a readable safetensors file: {e}") from None


#: a UNet's input channels LoadModel takes: text-to-image latents (4), or an inpainting UNet's
#: latents, mask and masked picture's latents (9: see stages/inpaint.py)
UNET_CHANNELS = (4, 9)


def detect_family(keys) -> str | None:
    """The checkpoint family from its keys: sd1, sd2, sdxl, sdxl-refiner, or None when it is no SD
    checkpoint."""
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        if not any(k.startswith("conditioner.embedders.1.") for k in keys) and any(k.startswith("conditioner.embedders.0.model.") for k in keys):
            return "sdxl-refiner"  # its only text encoder is OpenCLIP bigG, in slot 0
        return "sdxl"
    if UNET_KEY not in keys:
        return None
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k in keys for k in TEXT_KEYS["text_encoder"][:2]):
        return "sd1"
    return None


def _text_encoders(family: str) -> list[str]:
    return [c for c in PREFIXES[family] if c.startswith("text_encoder")]


def _shape_facts(shapes: dict[str, tuple], family: str) -> dict[str, int | None]:
    cross = next((s[1] for k, s in shapes.items() if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")), None)
    facts = {"unet": shapes[UNET_KEY][0], "vae": shapes[VAE_KEY][0], "cross": cross}
    for comp in _text_encoders(family):
        facts[comp] = next((shapes[k][1] for k in TEXT_KEYS[comp] if k in shapes), None)
    return facts


def _config_facts(config: Path, family: str) -> dict[str, int | None]:
    read = lambda comp: json.loads((config / comp / "config.json").read_text())  # noqa: E731
    try:
        unet, vae = read("unet"), read("vae")
        facts = {"unet": unet["block_out_channels"][0], "vae": vae["block_out_channels"][0], "cross": unet["cross_attention_dim"]}
        for comp in _text_encoders(family):
            facts[comp] = read(comp)["hidden_size"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ModelError(f"the configs in {config} cannot be read ({type(e).__name__}: {e})") from None
    return facts


def _describe_facts(facts: dict) -> str:
    names = {"unet": "UNet width", "vae": "VAE width", "cross": "cross-attention width", "text_encoder": "text width",
             "text_encoder_2": "second text width"}
    return ", ".join(f"{names[k]} {v}" for k, v in facts.items())


def _given_variant(config: str, family: str) -> Variant:
    """LoadModel's ``config``: a shipped config's name, or a diffusers folder (a name in the
    models folders' checkpoints/, or a path)."""
    shipped = {v.name: v for v in VARIANTS}
    if config in shipped:
        v = shipped[config]
        if v.family != family:
            raise ModelError(f"config {config!r} builds {v.family} checkpoints; this file is a single-file {family} checkpoint "
                             f"(shipped configs for it: {', '.join(x.name for x in VARIANTS if x.family == family)})")
        return v
    folder = locate(config, "checkpoints")
    wanted = REF_FAMILY[family]
    if not folder.is_dir() or pipeline_family(folder).name != wanted:
        raise ModelError(f"config {config!r} must be a shipped config ({', '.join(shipped)}) or a diffusers folder of an "
                         f"{wanted} model; {folder} is not")
    return Variant(str(folder), family, folder, f"the configs of {folder.name}")


def choose_variant(path: Path, config: str = "") -> Variant:
    """The config folder a checkpoint file is built with, or a ModelError saying what the file is
    and why it cannot be."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{path.name}: {path.suffix} checkpoints are Python pickles, which can run code when loaded; "
                         "graphflow reads .safetensors only (convert it with a tool you trust, or find the .safetensors release)")
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path.name}: not a .safetensors checkpoint (or a diffusers model folder)")
    return variant_for(path.name, header_shapes(path), config)


def variant_for(name: str, shapes: dict[str, tuple], config: str = "") -> Variant:
    """``choose_variant`` once the header is read: the file ``name``'s keys and shapes decide."""
    family = detect_family(shapes)
    if family is None:
        sample = ", ".join(list(shapes)[:3])
        raise ModelError(f"{name} is not a Stable Diffusion checkpoint in the original layout (keys like {sample}); "
                         "a LoRA goes to LoadLoRA, an embedding to LoadTextualInversion")
    for comp, prefix in PREFIXES[family].items():
        if not any(k.startswith(prefix) for k in shapes):
            raise ModelError(f"{name} is a single-file {family} checkpoint without its {comp} ({prefix}… weights)")
    if UNET_KEY not in shapes or shapes[UNET_KEY][1] not in UNET_CHANNELS:
        channels = shapes[UNET_KEY][1] if UNET_KEY in shapes else "?"
        raise ModelError(f"{name}: its UNet takes {channels} input channels (a special model, e.g. instruct-pix2pix's 8); "
                         "text-to-image (4 channels) and inpainting (9 channels) checkpoints are supported")
    if VAE_KEY not in shapes:
        raise ModelError(f"{name} has no VAE encoder ({VAE_KEY})")
    facts = _shape_facts(shapes, family)
    if config:
        v = _given_variant(config, family)
        if _config_facts(v.config, family) != facts:
            raise ModelError(f"{name} ({_describe_facts(facts)}) does not fit config {config!r} "
                             f"({_describe_facts(_config_facts(v.config, family))})")
        return v
    fits = [v for v in VARIANTS if v.family == family and _config_facts(v.config, family) == facts]
    if not fits:
        raise NoShippedConfig(f"{name} is a single-file {family} checkpoint whose shapes ({_describe_facts(facts)}) match no shipped config "
                         f"({', '.join(v.name for v in VARIANTS if v.family == family)}); LoadModel's config must name a diffusers folder of its architecture")
    return next((v for v in fits if v.default), fits[0])


def alternatives(v: Variant) -> list[str]:
    """The other shipped configs a checkpoint built with ``v`` would also fit."""
    facts = _config_facts(v.config, v.family)
    return [x.name for x in VARIANTS if x.family == v.family and x is not v and _config_facts(x.config, x.family) == facts]


def read_tensors(path: str, prefix: str) -> dict:
    """The tensors under one prefix (one component), memory-mapped from the file; the rest stays on disk."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_checkpoint_component(ref: CheckpointRef, device: str, dtype_name: str) -> Any:
    """One component converted from the checkpoint by diffusers' single-file loaders, offline."""
    from graphflow_nodes.runtime import torch_dtype

    offline()
    dtype = torch_dtype(dtype_name)
    tensors = read_tensors(ref.path, ref.prefix)
    if ref.component.startswith("text_encoder"):
        import transformers
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

        cls = getattr(transformers, component_class(Path(ref.config), ref.component))
        model = create_diffusers_clip_model_from_ldm(cls, tensors, subfolder=ref.component, config=ref.config,
                                                     torch_dtype=dtype, local_files_only=True)
    elif ref.component in ("unet", "vae"):
        import diffusers.utils.logging as dlog
        from diffusers import AutoencoderKL, UNet2DConditionModel

        cls = UNet2DConditionModel if ref.component == "unet" else AutoencoderKL
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # from_single_file warns about its own model.to(torch_dtype)
        try:
            extra = {"in_channels": ref.in_channels} if ref.in_channels else {}
            model = cls.from_single_file(tensors, config=ref.config, subfolder=ref.component, torch_dtype=dtype, local_files_only=True, **extra)
        finally:
            dlog.set_verbosity(level)
    else:
        raise ModelError(f"unknown component {ref.component}")
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class CheckpointRef(ModelRef):
    """A component of a single-file checkpoint: named by the file's content and the config it is
    built with (``source``); ``path`` is the file, ``config`` the config folder, ``prefix`` where
    the component's tensors sit in the file."""

    config: str = field(default="", compare=False)
    prefix: str = field(default="", compare=False)
    #: the UNet's input channels when the file's differ from the config's (an inpainting UNet's 9)
    in_channels: int = field(default=0, compare=False)

    def load(self, manager: Any) -> Any:
        if self.patches:
            return load_patched(manager, self.base(), self.patches)
        return load_checkpoint_component(self, manager.device, manager.dtype)

    def __repr__(self) -> str:
        extra = f", {len(self.patches)} patches" if self.patches else ""
        return f"CheckpointRef({self.family} {self.component} {self.source[:16]}… from {Path(self.path).name}{extra})"


def tokenizer_refs(v: Variant, ref_family: str) -> dict[str, ModelRef]:
    """The config folder's own tokenizers where it has them, else the shipped vocabulary padded as
    the family's tokenizers pad."""
    out: dict[str, ModelRef] = {}
    for comp in (enc.replace("text_encoder", "tokenizer") for enc in _text_encoders(v.family)):
        own = v.config / comp
        if own.is_dir():
            out[comp] = ModelRef(content_id(own), str(v.config.resolve()), comp, ref_family)
        elif comp in PADS[v.family]:
            pad = PADS[v.family][comp]
            out[comp] = PaddedTokenizerRef(digest([content_id(CLIP_TOKENIZER), "pad", pad]), str(CLIP_TOKENIZER), comp,
                                           ref_family, pad_token=pad)
        else:
            out[comp] = ModelRef(content_id(CLIP_TOKENIZER), str(CLIP_TOKENIZER.parent.resolve()), "tokenizer", ref_family)
    return out


def checkpoint_refs(path: Path, config: str = "") -> dict[str, Any]:
    """LoadModel's outputs for a single-file checkpoint: nothing but the header and the configs
    are read here. A FLUX.1 transformer file goes to flow_checkpoint.py (its VAE and encoders come
    from the folder ``config`` names)."""
    if path.suffix.lower() == ".safetensors":
        from graphflow_nodes.loading.flow_checkpoint import detect_flux, flux_file_refs

        shapes = header_shapes(path)
        if detect_flux(shapes):
            return flux_file_refs(path, shapes, config, resolve_config_path(config) if config else None)
        from graphflow_nodes.loading.sd3_checkpoint import detect_sd3, sd3_file_refs

        if detect_sd3(shapes):
            return sd3_file_refs(path, shapes, config, resolve_config_path(config) if config else None)
    v = choose_variant(path, config)
    ref_family = REF_FAMILY[v.family]
    where, file_id = str(path.resolve()), content_id(path)
    channels = header_shapes(path)[UNET_KEY][1]  # an inpainting checkpoint's UNet takes 9, its config says 4
    out: dict[str, Any] = {
        c: CheckpointRef(digest([file_id, content_id(v.config / c / "config.json"), c]), where, c, ref_family,
                         config=str(v.config), prefix=prefix, in_channels=channels if c == "unet" and channels != 4 else 0)
        for c, prefix in PREFIXES[v.family].items()
    }
    out.update(tokenizer_refs(v, ref_family))
    out["scheduler_config"] = json.loads((v.config / "scheduler" / "scheduler_config.json").read_text())
    out["family"] = ref_family
    out["pipeline_config"] = pipeline_settings(v.config)
    return out
