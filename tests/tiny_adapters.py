"""Tiny random-weight control models, saved in the formats graphflow reads: a T2I-Adapter folder
(diffusers' ``T2IAdapter``), a CLIP vision encoder folder (``CLIPVisionModelWithProjection``) and
an IP-Adapter ``.safetensors`` file in the layout diffusers' ``load_ip_adapter`` reads
(``image_proj.…`` and ``ip_adapter.N.to_k_ip.weight`` keys), shaped to fit the tiny UNets of
tests/tiny_model.py."""

from __future__ import annotations

import json
from pathlib import Path


def build_tiny_t2i_adapter(path: Path, unet: Path, seed: int = 0) -> Path:
    """A T2I-Adapter whose residuals fit the UNet's down blocks: one feature map per block, with
    that block's channels and size. SD's first block takes its residual before downsampling (a
    ``full_adapter`` with a downscale factor of 8, the VAE's), SDXL's, whose first block has no
    attention, after it (a ``full_adapter_xl`` with a factor of 16, as the real SDXL adapters)."""
    import torch
    from diffusers import T2IAdapter

    config = json.loads((unet / "unet" / "config.json").read_text())
    torch.manual_seed(seed)
    xl = config["down_block_types"][0] == "DownBlock2D"
    adapter = T2IAdapter(in_channels=3, channels=list(config["block_out_channels"]), num_res_blocks=1, downscale_factor=16 if xl else 8,
                         adapter_type="full_adapter_xl" if xl else "full_adapter")
    adapter.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_image_encoder(path: Path, projection_dim: int = 32, seed: int = 0) -> Path:
    """A CLIP vision encoder with projection, 32-pixel images in 4-pixel patches."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=4,
        intermediate_size=37, layer_norm_eps=1e-5))
    model.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_ip_adapter(path: Path, unet: Path, image_embed_dim: int = 32, tokens: int = 4, seed: int = 0,
                          encoder_seed: int = 0, plus: bool = False) -> Path:
    """An IP-Adapter file for the UNet: the image projection (``ImageProjection``: the image
    embedding to ``tokens`` extra context tokens) and, for every cross-attention layer in the
    order of ``attn_processors``, its ``to_k_ip``/``to_v_ip`` weights, numbered 1, 3, 5, … as the
    original IP-Adapter files are. The encoder to use with it is saved beside it, in
    ``image_encoder/`` (the layout of h94/IP-Adapter), unless one is there already: several
    adapters of a folder share it, as diffusers' ``load_ip_adapter`` loads one encoder for all.
    ``plus``: an IP-Adapter Plus, whose projection (a resampler) reads the encoder's penultimate
    hidden states (32 wide) into ``tokens`` context tokens."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file

    model = UNet2DConditionModel.from_pretrained(unet, subfolder="unet")
    cross = model.config.cross_attention_dim
    torch.manual_seed(seed)
    tensors = {}
    key_id = 1
    modules = dict(model.named_modules())
    for name in model.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = modules[name.removesuffix(".processor")].to_q.out_features
        for part in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross) * cross**-0.5
        key_id += 2
    if plus:
        tensors |= {"image_proj." + k: v for k, v in plus_projection(cross, tokens).items()}
    else:
        proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=image_embed_dim, num_image_text_embeds=tokens).state_dict()
        tensors |= {"image_proj.proj.weight": proj["image_embeds.weight"], "image_proj.proj.bias": proj["image_embeds.bias"],
                    "image_proj.norm.weight": proj["norm.weight"], "image_proj.norm.bias": proj["norm.bias"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    if not (path.parent / "image_encoder").exists():
        build_tiny_image_encoder(path.parent / "image_encoder", image_embed_dim, encoder_seed)
    return path


def plus_projection(cross: int, tokens: int, width: int = 32) -> dict:
    """A random IP-Adapter Plus resampler in the original file layout (``layers.N.0.to_kv``,
    ``layers.N.1.1`` …): diffusers' own module, randomly initialised, with its names mapped back
    (keys and value projections joined into one ``to_kv``), so the file exercises the conversion
    ``load_ip_adapter`` makes. Four layers of one 64-wide head, as diffusers' loader assumes."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    module = IPAdapterPlusImageProjection(embed_dims=width, output_dims=cross, hidden_dims=width, heads=1, num_queries=tokens)
    state = module.state_dict()
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        _, n, rest = key.split(".", 2)
        renamed = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out", "ff.0": "1.0",
                   "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
        if rest.startswith("attn.to_k"):
            out[f"layers.{n}.0.to_kv.weight"] = torch.cat([value, state[key.replace("to_k", "to_v")]])
        elif rest.startswith("attn.to_v"):
            continue
        else:
            head, _, tail = rest.rpartition(".")
            out[f"layers.{n}.{renamed[head]}.{tail}"] = value
    return out
