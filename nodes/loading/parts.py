"""A model's text encoders and VAE from files of their own, as ComfyUI's split loaders name them
(``DualCLIPLoader``'s ``clip_l.safetensors`` + ``t5xxl_fp16.safetensors``, ``TripleCLIPLoader``'s,
``VAELoader``'s ``ae.safetensors``), built with the configs and tokenizers of a diffusers folder
of the model's architecture (LoadModel's ``config``: the model's own, or a folder holding only its
``*.json`` and tokenizer files). The denoiser comes from LoadModel (a FLUX.1 transformer file
with that ``config``), so a model is assembled from its parts without a folder of weights.

Which of the folder's encoders a file is comes from its header alone: T5 or CLIP by its keys,
then the width (CLIP-L 768, bigG 1280, or a tiny model's) against each encoder's config, as
ComfyUI tells its clip files apart. Weights load when a node first uses them, as LoadModel's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.kinds import VAE, TextEncoder, Tokenizer
from graphflow_nodes.loading.checkpoint import header_shapes
from graphflow_nodes.loading.descriptions import describe_config
from graphflow_nodes.loading.families import ModelError, pipeline_family
from graphflow_nodes.loading.files import PICKLE_SUFFIXES, resolve_config_path, resolve_model_path
from graphflow_nodes.loading.model_refs import AbsentComponent, MissingComponent, ModelRef, offline
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id, digest, load_patched

ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
CLIP_EMBEDDING = "embeddings.token_embedding.weight"
#: prefixes an encoder file may keep its transformers names under (ComfyUI's own saves, HF's)
ENCODER_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.", "text_encoders.t5xxl.transformer.",
                    "transformer.", "")


def _strip(keys, marker: str) -> str | None:
    """The prefix before ``marker`` in a file's keys (``text_model.`` kept apart: it is the model's)."""
    for k in keys:
        if k.endswith(marker):
            return k[: -len(marker)].removesuffix("text_model.")
    return None


def encoder_facts(shapes: dict) -> tuple[str, int, str]:
    """(kind, width, prefix) of a text-encoder file from its header: T5 or CLIP, the hidden width."""
    prefix = _strip(shapes, T5_KEY)
    if prefix is not None:
        return "t5", shapes[prefix + T5_KEY][1], prefix
    prefix = _strip(shapes, CLIP_EMBEDDING)
    if prefix is not None:
        key = next(k for k in shapes if k.endswith(CLIP_EMBEDDING))
        return "clip", shapes[key][1], prefix
    raise ModelError("neither a CLIP nor a T5 text encoder (no token embedding or T5 attention among its keys)")


def _config_facts(folder: Path, comp: str) -> tuple[str, int] | None:
    cfg_path = folder / comp / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") == "t5" or str(cfg.get("architectures", [""])[0]).startswith("T5"):
        return "t5", cfg["d_model"]
    return "clip", cfg["hidden_size"]


def _kind(kind: str) -> str:
    return "T5" if kind == "t5" else "CLIP"


@dataclass(frozen=True)
class PartFileRef(ModelRef):
    """One component read from a file of its own, built with the config of ``config``'s
    ``component`` (a diffusers folder)."""

    config: str = field(default="", compare=False)

    def load(self, manager: Any) -> Any:
        if self.patches:
            return load_patched(manager, self.base(), self.patches)
        return load_part(self, manager.device, manager.dtype)

    def expected_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def __repr__(self) -> str:
        return f"PartFileRef({self.component} {self.source[:16]}… from {Path(self.path).name})"


def load_part(ref: PartFileRef, device: str, dtype_name: str) -> Any:
    from graphflow_nodes.runtime import torch_dtype

    offline()
    dtype = torch_dtype(dtype_name)
    model = _load_vae(ref) if ref.component == "vae" else _load_encoder(ref)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def _load_encoder(ref: PartFileRef) -> Any:
    """The encoder class the folder names, its tensors in transformers' own names (``text_model.``
    or not, the file's prefix dropped); extra tensors (CLIP's ``logit_scale``, a projection the
    folder's encoder has not) are left, a missing one refused (but a square projection, which
    SD3's CLIP-L files leave out: an identity)."""
    import transformers
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    folder = Path(ref.config) / ref.component
    cfg = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    cls = getattr(transformers, (cfg.architectures or ["T5EncoderModel" if cfg.model_type == "t5" else "CLIPTextModel"])[0])
    with init_empty_weights():
        model = cls(cfg)
    state = load_file(ref.path)
    kind, _, prefix = encoder_facts({k: tuple(v.shape) for k, v in state.items()})
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    wanted = set(model.state_dict())
    if kind == "clip":
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
        if hasattr(model, "text_model"):  # transformers before 5.6 wrap CLIP's layers in text_model
            state = {k if k.startswith("text_projection") else "text_model." + k: v for k, v in state.items()}
        if "text_projection.weight" in wanted and "text_projection.weight" not in state and cfg.hidden_size == cfg.projection_dim:
            import torch  # a CLIP-L file without its projection: an identity, as SD3's files are read (sd3_checkpoint.py)

            state["text_projection.weight"] = torch.eye(cfg.hidden_size)
    else:
        state.setdefault("shared.weight", state.get("encoder.embed_tokens.weight"))
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    missing = sorted(wanted - set(state))
    if missing:
        raise ModelError(f"{Path(ref.path).name} lacks {len(missing)} of the {ref.component} tensors {folder} configures "
                         f"(e.g. {missing[0]}): a file made for another model")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True, assign=True)
    if kind == "t5":
        model.tie_weights()
    return model


def _load_vae(ref: PartFileRef) -> Any:
    """A VAE file in the original layout (``encoder.down.0…``: Black Forest Labs' ``ae.safetensors``,
    Stability's VAEs; under ``first_stage_model.`` or not) converted by diffusers' single-file
    loader, or in diffusers' own layout (``encoder.down_blocks.0…``) loaded as it is."""
    import diffusers.utils.logging as dlog
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    state = load_file(ref.path)
    if any(k.startswith("encoder.down_blocks.") for k in state):
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = AutoencoderKL.from_config(AutoencoderKL.load_config(ref.config, subfolder="vae", local_files_only=True))
        missing = sorted(set(model.state_dict()) - set(state))
        if missing:
            raise ModelError(f"{Path(ref.path).name} lacks {len(missing)} of the VAE's tensors (e.g. {missing[0]})")
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True, assign=True)
        return model
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        return AutoencoderKL.from_single_file(state, config=ref.config, subfolder="vae", local_files_only=True)
    finally:
        dlog.set_verbosity(level)


def _config_folder(ctx: Context, config: str, what: str) -> Path:
    if not config.strip():
        raise ModelError(f"config: {what} takes its configs and tokenizers from a diffusers folder of the model's architecture "
                         "(the model's own, or one holding only its *.json and tokenizer files); none given")
    folder = resolve_config_path(config.strip())
    checked_input(ctx, folder, folder=True)
    if folder is None or not (folder / "model_index.json").is_file():
        raise ModelError(f"config {config!r} is not a diffusers model folder (no model_index.json)")
    return folder


def _part_file(ctx: Context, name: str, what: str) -> Path:
    path = checked_input(ctx, resolve_model_path(name), folder=True)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{what} {path.name}: {path.suffix} files are Python pickles, which can run code when loaded; "
                         "graphflow reads .safetensors only")
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        raise ModelError(f"{what} {name!r} is not a .safetensors file")
    return path


def describe_part_file(value: str) -> str | None:
    """One line for ``graphflow validate``: what a part file is, from its header."""
    if not value.strip():
        return None
    path = resolve_model_path(value)
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return None
    shapes = header_shapes(path)
    if any(k.startswith(("encoder.", "first_stage_model.encoder.")) and ".block." not in k for k in shapes) and \
            any(".down" in k for k in shapes):
        return "a VAE file"
    kind, width, _ = encoder_facts(shapes)
    return f"a {_kind(kind)} text encoder file (width {width})"


def resolve_part_path(name_or_path: str) -> Path:
    """A part file, placed as LoadModel places a checkpoint; a pickle or any file but a
    ``.safetensors`` is refused here, when the workflow is validated (by its name alone)."""
    path = resolve_model_path(name_or_path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelError(f"{path.name}: {suffix} files are Python pickles, which can run code when loaded; graphflow reads .safetensors only")
    if path.is_file() and suffix != ".safetensors":
        raise ModelError(f"{path.name} is not a .safetensors file (a part file is one model's tensors in a .safetensors file)")
    return path


FilePath = Annotated[str, FileInput(resolve=resolve_part_path, describe=describe_part_file, folder=True)]


def resolve_optional_model_path(name_or_path: str) -> Path | None:
    """An optional file input: None when empty."""
    return resolve_part_path(name_or_path) if name_or_path.strip() else None


OptionalFilePath = Annotated[str, FileInput(resolve=resolve_optional_model_path, describe=describe_part_file, folder=True)]
def resolve_required_config_path(name_or_path: str) -> Path | None:
    """The part loaders' ``config``: required (a file alone carries no config or tokenizer), so
    an empty one is refused when the workflow is validated, naming the node and the field,
    rather than when the node runs."""
    if not name_or_path.strip():
        raise ModelError("no diffusers folder given: the part files are built with the configs and tokenizers of a diffusers folder "
                         "of the model's architecture (the model's own, or one holding only its *.json and tokenizer files); "
                         "set it (a translated ComfyUI prompt: --set config=FOLDER)")
    return resolve_config_path(name_or_path)


ConfigPath = Annotated[str, FileInput(resolve=resolve_required_config_path, describe=describe_config, folder=True)]


class LoadTextEncoderFiles(Node, name="LoadTextEncoderFiles", category="model", disk_cache=False):
    """Text encoders from files of their own (ComfyUI's DualCLIPLoader, TripleCLIPLoader): each
    file takes the place of the ``config`` folder's encoder it fits (T5 or CLIP, and the width),
    that encoder's config and tokenizer used with it. Only the headers are read here."""

    class In(Inputs):
        file_1: FilePath = Field(description="an encoder file (.safetensors: a name in the models folders' checkpoints/, or a path); "
                                 "the files in any order")
        file_2: OptionalFilePath = Field("", description="a second encoder file, or empty")
        file_3: OptionalFilePath = Field("", description="a third encoder file, or empty")
        config: ConfigPath = Field(description="a diffusers folder of the model's architecture: the encoders' configs and tokenizers")

    class Out(Outputs):
        tokenizer: Tokenizer = Field(description="the first encoder's tokenizer (the folder's)")
        text_encoder: TextEncoder = Field(description="the first encoder (Flux, SD3: CLIP-L)")
        tokenizer_2: Tokenizer = Field(description="the second encoder's tokenizer")
        text_encoder_2: TextEncoder = Field(description="the second encoder (Flux: T5; SD3: bigG)")
        tokenizer_3: Tokenizer = Field(description="the third encoder's tokenizer (SD3: T5)")
        text_encoder_3: TextEncoder = Field(description="the third encoder (SD3: T5; absent without its file: EncodeT5 gives zeros)")

    def run(self, i: In, ctx: Context) -> dict:
        folder = _config_folder(ctx, i.config, "a text encoder file")
        family = pipeline_family(folder)
        slots = {c: _config_facts(folder, c) for c in ENCODERS if c in family.components}
        slots = {c: f for c, f in slots.items() if f is not None}
        chosen: dict[str, Path] = {}
        files = [(n, v) for n, v in (("file_1", i.file_1), ("file_2", i.file_2), ("file_3", i.file_3)) if v.strip()]
        for field_name, name in files:
            path = _part_file(ctx, name, field_name)
            try:
                kind, width, _ = encoder_facts(header_shapes(path))
            except ModelError as e:
                raise ModelError(f"{path.name}: {e}") from None
            fits = [c for c, f in slots.items() if f == (kind, width) and c not in chosen]
            if not fits:
                have = ", ".join(f"{c} {_kind(k)} width {w}" for c, (k, w) in slots.items())
                raise ModelError(f"{path.name} (a {_kind(kind)} encoder of width {width}) fits none of the "
                                 f"{family.name} encoders of {folder} left to fill ({have})")
            chosen[fits[0]] = path
        where = str(folder.resolve())
        out: dict[str, Any] = {}
        for c in ENCODERS:
            tok = "tokenizer" + c.removeprefix("text_encoder")
            if c in chosen:
                p = chosen[c]
                out[c] = PartFileRef(digest([content_id(p, ctx.files.max_bytes), content_id(folder / c / "config.json"), c]),
                                     str(p.resolve()), c, family.name, config=where)
                out[tok] = ModelRef(content_id(folder / tok, ctx.files.max_bytes), where, tok, family.name)
            elif c == "text_encoder_3" and family.name == "sd3":  # SD3 runs without T5, as its pipeline does
                out[c] = out[tok] = AbsentComponent(c, family.name, where)
            elif c in slots:
                raise ModelError(f"no file for the {family.name} model's {c} ({_kind(slots[c][0])} "
                                 f"width {slots[c][1]}): {len(files)} files given, the model has {len(slots)} encoders")
            else:
                out[c] = out[tok] = MissingComponent(c, family.name, where)
        return out


class LoadVAEFile(Node, name="LoadVAEFile", category="model", disk_cache=False):
    """A VAE from a file of its own (ComfyUI's VAELoader: ``ae.safetensors``, ``sdxl_vae.safetensors``),
    original or diffusers layout, built with the ``config`` folder's VAE config. Only the header is
    read here."""

    class In(Inputs):
        path: FilePath = Field(description="the VAE file (.safetensors: a name in the models folders' checkpoints/, or a path)")
        config: ConfigPath = Field(description="a diffusers folder of the model's architecture: the VAE's config")

    class Out(Outputs):
        vae: VAE = Field(description="the autoencoder")

    def run(self, i: In, ctx: Context) -> dict:
        folder = _config_folder(ctx, i.config, "a VAE file")
        path = _part_file(ctx, i.path, "path")
        shapes = header_shapes(path)
        if not any(k.startswith(("encoder.", "first_stage_model.encoder.")) for k in shapes):
            raise ModelError(f"{path.name} is not a VAE (no encoder.… tensors)")
        if not (folder / "vae" / "config.json").is_file():
            raise ModelError(f"config {folder} has no vae/config.json")
        family = pipeline_family(folder).name
        return {"vae": PartFileRef(digest([content_id(path, ctx.files.max_bytes), content_id(folder / "vae" / "config.json"), "vae"]),
                                   str(path.resolve()), "vae", family, config=str(folder.resolve()))}
