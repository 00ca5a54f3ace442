"""Writes a diffusers SD 1.x, SD 2.x or SDXL folder as one single-file checkpoint in the original
(LDM/CompVis, Stability's generative-models) layout: the test's stand-in for the files model sites
ship.

The key mapping is diffusers' own scripts/convert_diffusers_to_original_stable_diffusion.py,
generalised from its hard-coded SD 1.x sizes (4 levels, 2 resnets per level, no attention in the
last down block or the first up block) to any UNet2DConditionModel/AutoencoderKL config, so that
tiny-sd (3 levels, 1 resnet per level, attention everywhere) converts too. SD 2.x's text encoder
is written as OpenCLIP's (``cond_stage_model.model.``: fused q/k/v, ``resblocks``, ``ln_final``),
SDXL's two as ``conditioner.embedders.0`` (CLIP, transformers' names) and ``.1`` (OpenCLIP, with its
projection; the refiner's only one in slot 0), the inverse of diffusers' ``convert_open_clip_checkpoint``."""

from __future__ import annotations

import json
from pathlib import Path

UNET_TOP = {  # (stable-diffusion, diffusers)
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
    "label_emb.0.0.": "add_embedding.linear_1.",  # SDXL's added (text, time) conditions
    "label_emb.0.2.": "add_embedding.linear_2.",
}
UNET_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
               ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def unet_prefixes(cfg: dict) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) for every block of a UNet2DConditionModel config."""
    lpb, n = cfg["layers_per_block"], len(cfg["block_out_channels"])
    out = [(sd, hf) for sd, hf in UNET_TOP.items()]
    for i in range(n):
        down_attn = cfg["down_block_types"][i].startswith("CrossAttn")
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            out.append((f"input_blocks.{idx}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn:
                out.append((f"input_blocks.{idx}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            out.append((f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        up_attn = cfg["up_block_types"][i].startswith("CrossAttn")
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            out.append((f"output_blocks.{idx}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn:
                out.append((f"output_blocks.{idx}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            out.append((f"output_blocks.{i * (lpb + 1) + lpb}.{2 if up_attn else 1}.", f"up_blocks.{i}.upsamplers.0."))
    out.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        out.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return out


def convert_unet(sd: dict, cfg: dict) -> dict:
    prefixes = unet_prefixes(cfg)
    new = {}
    for k, v in sd.items():
        name = k
        if "resnets" in name:
            for sd_part, hf_part in UNET_RESNET:
                name = name.replace(hf_part, sd_part)
        for sd_pre, hf_pre in prefixes:
            if name.startswith(hf_pre):
                name = sd_pre + name[len(hf_pre):]
                break
        else:
            raise KeyError(f"no original name for UNet key {k}")
        new["model.diffusion_model." + name] = v
    return new


def convert_vae(sd: dict, cfg: dict) -> dict:
    lpb, n = cfg["layers_per_block"], len(cfg["block_out_channels"])
    prefixes = [("encoder.mid.attn_1.", "encoder.mid_block.attentions.0."), ("decoder.mid.attn_1.", "decoder.mid_block.attentions.0.")]
    for part in ("encoder", "decoder"):
        for j in range(2):
            prefixes.append((f"{part}.mid.block_{j + 1}.", f"{part}.mid_block.resnets.{j}."))
    for i in range(n):
        for j in range(lpb):
            prefixes.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(lpb + 1):
            prefixes.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            prefixes.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
            prefixes.append((f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    new = {}
    for k, v in sd.items():
        name = k
        for sd_pre, hf_pre in prefixes:
            if name.startswith(hf_pre):
                rest = name[len(hf_pre):]
                if "attn_1" in sd_pre:
                    for a, b in attn:
                        if rest.startswith(b):
                            rest = a + rest[len(b):]
                            if rest.endswith("weight") and v.ndim == 2:
                                v = v.reshape(*v.shape, 1, 1)  # a linear layer in diffusers, a 1x1 conv in the original
                            break
                name = sd_pre + rest.replace("conv_shortcut", "nin_shortcut")
                break
        name = name.replace("conv_norm_out", "norm_out")
        new["first_stage_model." + name] = v
    return new


def _text_model_keys(sd: dict) -> dict:
    """transformers saves CLIPTextModel with or without the ``text_model.`` level (5.6 flattened it)."""
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def convert_text_encoder(sd: dict, prefix: str = "cond_stage_model.transformer.") -> dict:
    return {prefix + "text_model." + k: v for k, v in _text_model_keys(sd).items() if k != "text_projection.weight"}


OPEN_CLIP_NAMES = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                   ("self_attn.out_proj", "attn.out_proj")]


def convert_open_clip(sd: dict, prefix: str) -> dict:
    """A transformers CLIP text model as OpenCLIP names it. SD 2.x files carry a projection their
    UNet never uses (diffusers ignores it): an identity of the model's width stands in for it."""
    import torch

    sd = _text_model_keys(sd)
    new = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": sd.pop("final_layer_norm.bias")}
    width = new[prefix + "token_embedding.weight"].shape[1]
    proj = sd.pop("text_projection.weight", None)
    new[prefix + "text_projection"] = torch.eye(width) if proj is None else proj.T.contiguous()
    for part in ("weight", "bias"):
        for layer in sorted({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")}, key=int):
            qkv = [sd.pop(f"encoder.layers.{layer}.self_attn.{x}_proj.{part}") for x in "qkv"]
            new[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{part}"] = torch.cat(qkv)
    for k, v in sd.items():
        if not k.startswith("encoder.layers."):
            continue  # position_ids and the like: buffers, not weights
        name = k.replace("encoder.layers.", "transformer.resblocks.")
        for hf, oc in OPEN_CLIP_NAMES:
            name = name.replace(hf, oc)
        new[prefix + name] = v
    return new


def write_original_checkpoint(folder: Path, out: Path, layout: str = "sd1") -> Path:
    """``layout``: sd1, sd2 (OpenCLIP text encoder), sdxl (two text encoders) or sdxl-refiner."""
    from safetensors.torch import load_file, save_file

    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    te = load_file(folder / ("text_encoder_2" if layout == "sdxl-refiner" else "text_encoder") / "model.safetensors")
    if layout == "sd1":
        text = convert_text_encoder(te)
    elif layout == "sd2":
        text = convert_open_clip(te, "cond_stage_model.model.")
    elif layout == "sdxl":
        text = {**convert_text_encoder(te, "conditioner.embedders.0.transformer."),
                **convert_open_clip(load_file(folder / "text_encoder_2" / "model.safetensors"), "conditioner.embedders.1.model.")}
    elif layout == "sdxl-refiner":  # its one encoder, OpenCLIP bigG, in slot 0
        text = convert_open_clip(te, "conditioner.embedders.0.model.")
    else:
        raise ValueError(f"unknown layout {layout}")
    state = {
        **convert_unet(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), unet_cfg),
        **convert_vae(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), vae_cfg),
        **text,
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
