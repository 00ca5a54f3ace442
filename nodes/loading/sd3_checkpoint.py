"""Single-file SD3 / SD3.5 checkpoints: Stability's all-in-one ``.safetensors``
(``sd3.5_large.safetensors``, ``sd3_medium_incl_clips_t5xxlfp16.safetensors``): the MMDiT under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, and, when the file carries them,
the text encoders as ComfyUI saves them (``text_encoders.clip_l.transformer.…``,
``text_encoders.clip_g.transformer.…``, ``text_encoders.t5xxl.transformer.…``).

The configs come from LoadModel's ``config`` (an SD3 diffusers folder: the model's own, or any of
its architecture, whose tokenizers and missing encoders are used too) or from the shipped
``configs/sd3.5-large`` and ``configs/sd3.5-medium`` (configs only) picked by the file's shapes.
The transformer and VAE are converted by diffusers' single-file loaders, given only their own
tensors; the encoders' tensors are transformers' own names under a prefix, loaded as they are
(diffusers' CLIP loader replaces CLIP-L's projection with an identity, which only fits models
whose projection is as wide as the encoder). Pickles are refused unread (checkpoint.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphflow_nodes.loading.families import ModelError, pipeline_family, pipeline_settings
from graphflow_nodes.loading.files import CONFIGS_DIR, MODELS_DIR
from graphflow_nodes.loading.model_refs import AbsentComponent, ModelRef, PaddedTokenizerRef, offline

from graphflow.node_api import content_id, digest, load_patched

MMDIT_KEY = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
#: where each component's tensors sit in an all-in-one file
PREFIXES = {"transformer": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "text_encoders.clip_l.transformer.",
            "text_encoder_2": "text_encoders.clip_g.transformer.", "text_encoder_3": "text_encoders.t5xxl.transformer."}
SHIPPED = ("sd3.5-large", "sd3.5-medium")
CLIP_TOKENIZER = MODELS_DIR / "tiny-sd" / "tokenizer"


def detect_sd3(keys) -> bool:
    return MMDIT_KEY in set(keys)


def _facts_of_file(shapes: dict) -> dict:
    p = PREFIXES["transformer"]
    blocks = {int(k[len(p):].split(".")[1]) for k in shapes if k.startswith(p + "joint_blocks.")}
    dual = {int(k[len(p):].split(".")[1]) for k in shapes if k.startswith(p + "joint_blocks.") and ".attn2." in k}
    return {"width": shapes[p + "x_embedder.proj.weight"][0], "blocks": len(blocks), "caption width": shapes[p + "context_embedder.weight"][0],
            "text width": shapes[p + "context_embedder.weight"][1], "pooled width": shapes[p + "y_embedder.mlp.0.weight"][1],
            "positions": shapes[p + "pos_embed"][1], "qk norm": any(k.startswith(p) and ".ln_q." in k for k in shapes),
            "dual attention blocks": len(dual)}


def _facts_of_config(folder: Path) -> dict:
    c = json.loads((folder / "transformer" / "config.json").read_text())
    return {"width": c["num_attention_heads"] * c["attention_head_dim"], "blocks": c["num_layers"],
            "caption width": c["caption_projection_dim"], "text width": c["joint_attention_dim"],
            "pooled width": c["pooled_projection_dim"], "positions": c["pos_embed_max_size"] ** 2,
            "qk norm": bool(c.get("qk_norm")), "dual attention blocks": len(c.get("dual_attention_layers") or ())}


def _describe(facts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in facts.items())


@dataclass(frozen=True)
class SD3FileRef(ModelRef):
    """One component of an SD3 all-in-one file, built with the configs in ``config``."""

    config: str = field(default="", compare=False)

    def load(self, manager: Any) -> Any:
        if self.patches:
            return load_patched(manager, self.base(), self.patches)
        return load_sd3_component(self, manager.device, manager.dtype)

    def expected_bytes(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"SD3FileRef({self.component} {self.source[:16]}… from {Path(self.path).name})"


def _read(path: str, prefix: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_sd3_component(ref: SD3FileRef, device: str, dtype_name: str) -> Any:
    import diffusers.utils.logging as dlog
    from graphflow_nodes.runtime import torch_dtype

    offline()
    dtype = torch_dtype(dtype_name)
    prefix = PREFIXES[ref.component]
    if ref.component in ("transformer", "vae"):
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from safetensors import safe_open

        with safe_open(ref.path, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        cls = SD3Transformer2DModel if ref.component == "transformer" else AutoencoderKL
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()
        try:
            model = cls.from_single_file(tensors, config=ref.config, subfolder=ref.component, torch_dtype=dtype, local_files_only=True)
        finally:
            dlog.set_verbosity(level)
    else:
        model = _load_encoder(ref, _read(ref.path, prefix))
        model = model.to(dtype)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def _load_encoder(ref: SD3FileRef, state: dict) -> Any:
    """A text encoder from transformers' own names: CLIP-L without a projection in the file gets
    an identity (the SD3 files' convention, as diffusers reads them), when it is square."""
    import torch
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    folder = Path(ref.config) / ref.component
    if ref.component == "text_encoder_3":
        with init_empty_weights():
            model = T5EncoderModel(T5Config.from_pretrained(folder, local_files_only=True))
        state.setdefault("shared.weight", state.get("encoder.embed_tokens.weight"))
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    else:
        with init_empty_weights():
            model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder, local_files_only=True))
        wrapped = hasattr(model, "text_model")
        state = {k.removeprefix("text_model."): v for k, v in state.items()}  # transformers 5.6 flattened CLIPTextModel
        if wrapped:
            state = {k if k.startswith("text_projection") else "text_model." + k: v for k, v in state.items()}
        if "text_projection.weight" not in state:
            width, proj = model.config.hidden_size, model.config.projection_dim
            if width != proj:
                raise ModelError(f"{Path(ref.path).name} has no projection for its {ref.component} and the config's is not square "
                                 f"({width} → {proj})")
            state["text_projection.weight"] = torch.eye(width)
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(state))
    if missing:
        raise ModelError(f"{Path(ref.path).name}: its {ref.component} lacks {len(missing)} tensors of the config's encoder "
                         f"(e.g. {missing[0]}): a file made for another model")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True, assign=True)
    if ref.component == "text_encoder_3":
        model.tie_weights()
    return model


def sd3_file_refs(path: Path, shapes: dict, config: str, folder: Path | None) -> dict[str, Any]:
    """LoadModel's outputs for an SD3 all-in-one file: nothing but its header and the configs are
    read here."""
    facts = _facts_of_file(shapes)
    if folder is not None and pipeline_family(folder).name != "sd3":
        raise ModelError(f"{path.name} is an SD3 checkpoint; config {config!r} is a {pipeline_family(folder).name} folder, not an SD3 one")
    candidates = [folder] if folder is not None else [CONFIGS_DIR / n for n in SHIPPED]
    fits = [c for c in candidates if _facts_of_config(c) == facts]
    if not fits:
        where = f"the transformer of {folder}" if folder is not None else f"a shipped config ({', '.join(SHIPPED)})"
        raise ModelError(f"{path.name} (an SD3 transformer: {_describe(facts)}) fits not {where}"
                         + ("" if folder is not None else "; LoadModel's config must name an SD3 diffusers folder of its architecture"))
    cfg = fits[0]
    own = folder is not None
    file_id, where = content_id(path), str(path.resolve())
    has = {c: any(k.startswith(p) for k in shapes) for c, p in PREFIXES.items()}
    if not has["vae"]:
        raise ModelError(f"{path.name} is an SD3 checkpoint without its VAE (first_stage_model.… weights)")
    out: dict[str, Any] = {}
    for comp in PREFIXES:
        if has[comp]:
            out[comp] = SD3FileRef(digest([file_id, content_id(cfg / comp / "config.json"), comp]), where, comp, "sd3", config=str(cfg))
        elif own and (cfg / comp).is_dir() and any((cfg / comp).glob("*.safetensors")):
            out[comp] = ModelRef(content_id(cfg / comp), str(cfg.resolve()), comp, "sd3")
        elif comp == "text_encoder_3":
            out[comp] = AbsentComponent(comp, "sd3", where)  # run without T5, as StableDiffusion3Pipeline does
        else:
            raise ModelError(f"{path.name} has no {comp} ({PREFIXES[comp]}… weights): set LoadModel's config to an SD3 diffusers "
                             f"folder that has one")
    for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3")):
        if (cfg / tok).is_dir():
            out[tok] = ModelRef(content_id(cfg / tok), str(cfg.resolve()), tok, "sd3")
        elif tok == "tokenizer_3":
            if isinstance(out["text_encoder_3"], AbsentComponent):
                out[tok] = AbsentComponent(tok, "sd3", where)
            else:
                raise ModelError(f"{path.name} carries a T5 encoder, and the shipped {cfg.name} configs no T5 tokenizer: set LoadModel's "
                                 "config to an SD3 diffusers folder (its tokenizer_3 is used)")
        else:
            pad = "!" if tok == "tokenizer_2" else "<|endoftext|>"
            out[tok] = PaddedTokenizerRef(digest([content_id(CLIP_TOKENIZER), "pad", pad]), str(CLIP_TOKENIZER), tok, "sd3", pad_token=pad)
    out["scheduler_config"] = json.loads((cfg / "scheduler" / "scheduler_config.json").read_text())
    out["family"] = "sd3"
    out["pipeline_config"] = pipeline_settings(cfg)
    return out
