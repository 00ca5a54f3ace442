"""Single-file Flux.1 transformers: the ``flux1-dev.safetensors`` / ``flux1-schnell.safetensors``
that Black Forest Labs and model sites ship (the transformer alone, in the original layout:
``double_blocks.…``, ``single_blocks.…``, optionally under ``model.diffusion_model.``), loaded with
the VAE, text encoders, tokenizers and scheduler of a Flux diffusers folder named by LoadModel's
``config`` (the model's own folder, or any folder of the same architecture), or with a shipped
config (``configs/flux-dev``, ``configs/flux-schnell``: configs only) when the file's shapes are
the released models' and the folder gives the rest.

The conversion to diffusers' layout is graphflow's own (``flux_to_diffusers``): diffusers'
``convert_flux_transformer_checkpoint_to_diffusers`` splits each single block's fused
``linear1`` at FLUX.1's full widths (3072 × 3 + 12288) whatever the file's, so it cannot read a
smaller model of the same design; here the widths are read from the tensors. Header-only family
detection as for SD checkpoints (``detect_flux``); pickles are refused unread (checkpoint.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphflow_nodes.loading.families import ModelError, pipeline_family, pipeline_settings
from graphflow_nodes.loading.files import CONFIGS_DIR
from graphflow_nodes.loading.model_refs import ModelRef, offline

from graphflow.node_api import content_id, digest, load_patched

PREFIX = "model.diffusion_model."
DOUBLE_KEY = "double_blocks.0.img_attn.qkv.weight"
#: simple renames, original -> diffusers (``{i}``: the block index)
RENAMES = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1", "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1", "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
    "double_blocks.{i}.img_mod.lin": "transformer_blocks.{i}.norm1.linear",
    "double_blocks.{i}.txt_mod.lin": "transformer_blocks.{i}.norm1_context.linear",
    "double_blocks.{i}.img_attn.norm.query_norm.scale": "transformer_blocks.{i}.attn.norm_q.weight",
    "double_blocks.{i}.img_attn.norm.key_norm.scale": "transformer_blocks.{i}.attn.norm_k.weight",
    "double_blocks.{i}.txt_attn.norm.query_norm.scale": "transformer_blocks.{i}.attn.norm_added_q.weight",
    "double_blocks.{i}.txt_attn.norm.key_norm.scale": "transformer_blocks.{i}.attn.norm_added_k.weight",
    "double_blocks.{i}.img_mlp.0": "transformer_blocks.{i}.ff.net.0.proj",
    "double_blocks.{i}.img_mlp.2": "transformer_blocks.{i}.ff.net.2",
    "double_blocks.{i}.txt_mlp.0": "transformer_blocks.{i}.ff_context.net.0.proj",
    "double_blocks.{i}.txt_mlp.2": "transformer_blocks.{i}.ff_context.net.2",
    "double_blocks.{i}.img_attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "double_blocks.{i}.txt_attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "single_blocks.{i}.modulation.lin": "single_transformer_blocks.{i}.norm.linear",
    "single_blocks.{i}.norm.query_norm.scale": "single_transformer_blocks.{i}.attn.norm_q.weight",
    "single_blocks.{i}.norm.key_norm.scale": "single_transformer_blocks.{i}.attn.norm_k.weight",
    "single_blocks.{i}.linear2": "single_transformer_blocks.{i}.proj_out",
}
#: fused tensors, original -> the diffusers tensors they are split into, in order
SPLITS = {
    "double_blocks.{i}.img_attn.qkv": ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                       "transformer_blocks.{i}.attn.to_v"),
    "double_blocks.{i}.txt_attn.qkv": ("transformer_blocks.{i}.attn.add_q_proj", "transformer_blocks.{i}.attn.add_k_proj",
                                       "transformer_blocks.{i}.attn.add_v_proj"),
    "single_blocks.{i}.linear1": ("single_transformer_blocks.{i}.attn.to_q", "single_transformer_blocks.{i}.attn.to_k",
                                  "single_transformer_blocks.{i}.attn.to_v", "single_transformer_blocks.{i}.proj_mlp"),
}
#: original AdaLayerNormContinuous keeps (shift, scale); diffusers' (scale, shift)
SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + r"(\.weight|\.bias)?$")


_COMPILED = [(_pattern(o), d, "rename") for o, d in RENAMES.items()] + [(_pattern(o), d, "split") for o, d in SPLITS.items()] + \
            [(_pattern(o), d, "swap") for o, d in SWAPPED.items()]


def detect_flux(keys) -> bool:
    """Is this (from its keys alone) a Flux transformer in the original layout?"""
    keys = set(keys)
    return DOUBLE_KEY in keys or PREFIX + DOUBLE_KEY in keys


def flux_to_diffusers(state: dict) -> dict:
    """An original-layout Flux transformer's tensors in diffusers' ``FluxTransformer2DModel``
    layout; widths read from the tensors (each single block's ``linear2`` takes the attention's
    width plus the MLP's and gives the attention's). Refuses a key it does not know."""
    import torch

    out: dict = {}
    for key, value in state.items():
        k = key.removeprefix(PREFIX)
        for pat, target, how in _COMPILED:
            m = pat.fullmatch(k)
            if not m:
                continue
            index = m.group(1) if pat.groups == 2 else None
            suffix = m.groups()[-1] or ""
            fill = (lambda t: t.replace("{i}", index)) if index is not None else (lambda t: t)
            if how == "rename":
                out[fill(target) + suffix] = value
            elif how == "swap":
                shift, scale = value.chunk(2, dim=0)
                out[fill(target) + suffix] = torch.cat([scale, shift], dim=0)
            else:
                names = [fill(t) for t in target]
                if len(names) == 3:
                    parts = value.chunk(3, dim=0)
                else:  # linear1: q, k, v at the attention's width, then the MLP's input
                    inner = state[key.rsplit(".", 1)[0].removesuffix("linear1") + "linear2.weight"].shape[0]
                    parts = torch.split(value, (inner, inner, inner, value.shape[0] - 3 * inner), dim=0)
                for n, p in zip(names, parts):
                    out[n + suffix] = p
            break
        else:
            raise ModelError(f"unknown tensor {key!r} in a Flux transformer file (not the original FLUX.1 layout)")
    return out


def _transformer_config(folder: Path) -> dict:
    return json.loads((folder / "transformer" / "config.json").read_text())


def _facts_of_file(shapes: dict) -> dict:
    s = {k.removeprefix(PREFIX): v for k, v in shapes.items()}
    doubles = {int(k.split(".")[1]) for k in s if k.startswith("double_blocks.")}
    singles = {int(k.split(".")[1]) for k in s if k.startswith("single_blocks.")}
    return {"width": s["img_in.weight"][0], "in_channels": s["img_in.weight"][1], "text width": s["txt_in.weight"][1],
            "pooled width": s["vector_in.in_layer.weight"][1], "double blocks": len(doubles), "single blocks": len(singles),
            "guidance": "guidance_in.in_layer.weight" in s}


def _facts_of_config(cfg: dict) -> dict:
    return {"width": cfg["num_attention_heads"] * cfg["attention_head_dim"], "in_channels": cfg["in_channels"],
            "text width": cfg["joint_attention_dim"], "pooled width": cfg["pooled_projection_dim"],
            "double blocks": cfg["num_layers"], "single blocks": cfg["num_single_layers"], "guidance": bool(cfg.get("guidance_embeds"))}


#: the shipped Flux transformer configs (FLUX.1 dev and schnell), chosen by the file's shapes
SHIPPED = ("flux-dev", "flux-schnell")


@dataclass(frozen=True)
class FluxFileRef(ModelRef):
    """A Flux transformer read from a single original-layout file, built with ``config`` (a
    folder holding ``transformer/config.json``)."""

    config: str = ""

    def load(self, manager: Any) -> Any:
        if self.patches:
            return load_patched(manager, self.base(), self.patches)
        return load_flux_file(self.path, self.config, manager.device, manager.dtype)

    def expected_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def __repr__(self) -> str:
        return f"FluxFileRef({self.source[:16]}… from {Path(self.path).name})"


def load_flux_file(path: str, config: str, device: str, dtype_name: str) -> Any:
    from diffusers import FluxTransformer2DModel
    from graphflow_nodes.runtime import torch_dtype
    from safetensors.torch import load_file

    offline()
    cfg = FluxTransformer2DModel.load_config(config, subfolder="transformer", local_files_only=True)
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(cfg)
    state = flux_to_diffusers(load_file(path))
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ModelError(f"{Path(path).name} lacks {len(missing)} of the transformer's tensors (e.g. {sorted(missing)[0]})")
    model.load_state_dict(state, strict=True, assign=True)
    dtype = torch_dtype(dtype_name)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def flux_file_refs(path: Path, shapes: dict, config: str, folder: Path | None) -> dict[str, Any]:
    """LoadModel's outputs for a Flux transformer file: the transformer from the file, everything
    else from ``folder`` (a Flux diffusers folder: LoadModel's ``config``). The transformer's
    config is the folder's when its shapes fit, else the shipped one that does."""
    facts = _facts_of_file(shapes)
    if folder is None:
        raise ModelError(f"{path.name} is a Flux transformer alone (no VAE or text encoders): set LoadModel's config to a Flux "
                         "diffusers folder (the model's own, or any of its architecture) for the VAE, text encoders and tokenizers")
    if pipeline_family(folder).name != "flux":
        raise ModelError(f"{path.name} is a Flux transformer; config {config!r} is a {pipeline_family(folder).name} folder, not a Flux one")
    candidates = [folder] + [CONFIGS_DIR / n for n in SHIPPED]
    fits = [c for c in candidates if (c / "transformer" / "config.json").is_file() and _facts_of_config(_transformer_config(c)) == facts]
    if not fits:
        described = ", ".join(f"{k} {v}" for k, v in facts.items())
        raise ModelError(f"{path.name} (a Flux transformer: {described}) fits neither the transformer of {folder} nor a shipped "
                         f"config ({', '.join(SHIPPED)})")
    where = str(folder.resolve())
    out: dict[str, Any] = {c: ModelRef(content_id(folder / c), where, c, "flux")
                           for c in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae")}
    out["transformer"] = FluxFileRef(digest([content_id(path), content_id(fits[0] / "transformer" / "config.json"), "transformer"]),
                                     str(path.resolve()), "transformer", "flux", config=str(fits[0]))
    out["scheduler_config"] = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    out["family"] = "flux"
    out["pipeline_config"] = pipeline_settings(folder)
    return out
