"""Kohya-style SD3 LoRAs in diffusers' layout.

sd-scripts (``networks/lora_sd3.py``) and the trainers that write for ComfyUI name an SD3 LoRA by
the original MMDiT's modules: ``lora_unet_`` + the module path with dots as underscores
(``lora_unet_joint_blocks_0_x_block_attn_qkv``, ``…_context_block_mlp_fc1``,
``lora_unet_final_layer_adaLN_modulation_1``), each with ``.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``; the CLIP encoders as ``lora_te1_`` (CLIP-L) and ``lora_te2_``
(CLIP-G). diffusers' SD3 loader reads none of it (its lora_conversion_utils converts kohya files
for SD, SDXL and Flux only), so the mapping is here, module for module the one diffusers' single-file
loader uses for the weights themselves (``convert_sd3_transformer_checkpoint_to_diffusers``):

- a fused ``qkv`` is three layers in diffusers (``to_q``/``to_k``/``to_v``, or ``add_*_proj`` on
  the text side): the up-weight's rows split in three, the down-weight shared, since
  ``[U_q; U_k; U_v] @ D`` is exactly the three products ``U_q @ D``…;
- the final layer's and the last block's text-side ``adaLN_modulation`` hold (shift, scale) where
  diffusers holds (scale, shift): the up-weight's two halves swap, as the weights' rows do;
- kohya's ``alpha / rank`` is folded into the up-weight, so the result is a plain peft state
  (rank from the shapes, scale 1) that ``load_lora_adapter`` merges like any diffusers file.
"""

from __future__ import annotations

import re
from typing import Any

#: original MMDiT module (dots as underscores, after ``joint_blocks_{i}_``) -> diffusers module(s)
#: in ``transformer_blocks.{i}``; three targets split a fused qkv
_BLOCK = {
    "x_block_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block_attn2_qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block_attn_proj": ("attn.to_out.0",),
    "context_block_attn_proj": ("attn.to_add_out",),
    "x_block_attn2_proj": ("attn2.to_out.0",),
    "x_block_mlp_fc1": ("ff.net.0.proj",),
    "x_block_mlp_fc2": ("ff.net.2",),
    "context_block_mlp_fc1": ("ff_context.net.0.proj",),
    "context_block_mlp_fc2": ("ff_context.net.2",),
    "x_block_adaLN_modulation_1": ("norm1.linear",),
    "context_block_adaLN_modulation_1": ("norm1_context.linear",),
}
#: the modules outside the joint blocks (sd-scripts trains them with ``emb_dims``)
_OUTSIDE = {
    "context_embedder": "context_embedder",
    "t_embedder_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder_mlp_0": "time_text_embed.text_embedder.linear_1",
    "y_embedder_mlp_2": "time_text_embed.text_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
_JOINT = re.compile(r"joint_blocks_(\d+)_(.+)")


class KohyaSD3Error(ValueError):
    pass


def is_kohya_sd3(keys) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in keys)


def _targets(module: str, num_layers: int) -> tuple[tuple[str, ...], bool]:
    """(diffusers modules, whether the up-weight's halves swap) for an original module name."""
    if module in _OUTSIDE:
        return (_OUTSIDE[module],), module == "final_layer_adaLN_modulation_1"
    m = _JOINT.fullmatch(module)
    if m and m.group(2) in _BLOCK:
        i, part = int(m.group(1)), m.group(2)
        swap = part == "context_block_adaLN_modulation_1" and i == num_layers - 1
        return tuple(f"transformer_blocks.{i}.{t}" for t in _BLOCK[part]), swap
    raise KohyaSD3Error(f"lora_unet_{module} is no SD3 MMDiT layer graphflow maps to diffusers' layout "
                        f"(x_embedder's convolution, or a LoRA made for another model)")


def transformer_state(tensors: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The ``lora_unet_`` part of a kohya SD3 file as diffusers/peft keys
    (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), alphas folded in."""
    import torch

    out: dict[str, Any] = {}
    for key in sorted(tensors):
        if not (key.startswith("lora_unet_") and key.endswith(".lora_down.weight")):
            continue
        name = key.removesuffix(".lora_down.weight")
        down, up = tensors[key], tensors.get(f"{name}.lora_up.weight")
        if up is None:
            raise KohyaSD3Error(f"{name} has a lora_down weight and no lora_up")
        if down.dim() != 2:
            raise KohyaSD3Error(f"{name} is a convolution LoRA, which graphflow does not map onto SD3's transformer")
        rank = down.shape[0]
        alpha = tensors.get(f"{name}.alpha")
        scale = float(alpha) / rank if alpha is not None else 1.0
        targets, swap = _targets(name.removeprefix("lora_unet_"), num_layers)
        up = up.float() * scale if scale != 1.0 else up
        if swap:
            shift, scale_rows = up.chunk(2, dim=0)
            up = torch.cat([scale_rows, shift])
        if up.shape[0] % len(targets):
            raise KohyaSD3Error(f"{name}: {up.shape[0]} output rows do not split into {len(targets)} layers")
        for target, part in zip(targets, up.chunk(len(targets), dim=0)):
            out[f"transformer.{target}.lora_A.weight"] = down.to(up.dtype).contiguous()
            out[f"transformer.{target}.lora_B.weight"] = part.contiguous()
    return out


def encoder_state(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """The ``lora_te1_``/``lora_te2_`` part (CLIP-L, CLIP-G): kohya's text-encoder names are SDXL's,
    so diffusers' SDXL loader converts them (``text_encoder.``/``text_encoder_2.`` keys, alphas
    apart, as ``load_lora_into_text_encoder`` takes them)."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    part = {k: v for k, v in tensors.items() if k.startswith(("lora_te1_", "lora_te2_"))}
    if not part:
        return {}, {}
    state, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(part)
    return state, alphas or {}


def diffusers_state(tensors: dict[str, Any], num_layers: int) -> tuple[dict[str, Any], dict[str, float] | None]:
    """A whole kohya SD3 file in diffusers' layout: (state, text-encoder alphas)."""
    te, alphas = encoder_state(tensors)
    return {**transformer_state(tensors, num_layers), **te}, alphas or None
