"""Tiny random ControlNets for the tiny models: ``ControlNetModel.from_unet`` on a tiny folder's
UNet (as diffusers' own tests make theirs), with the zero-initialised layers (the condition
embedding's last conv, the zero convs) given random weights, so the residuals are not zeros and a
wrong wire shows in the picture. Also written as one file in the original layout
(``control_model.…``: ``input_hint_block``, ``zero_convs``, ``middle_block_out``), the stand-in for
the single files model sites ship."""

from __future__ import annotations

from pathlib import Path

from tests.original_layout import convert_unet


def build_tiny_controlnet(model: Path, path: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet)
    with torch.no_grad():
        for m in (*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out):
            torch.nn.init.normal_(m.weight, std=0.3)
            torch.nn.init.normal_(m.bias, std=0.1)
        for p in net.parameters():  # from_unet's copy of the UNet alone would make every seed the same net
            p.add_(torch.randn_like(p) * 0.02)
    net.save_pretrained(path, safe_serialization=True)
    return path


def write_original_controlnet(folder: Path, out: Path) -> Path:
    """A diffusers ControlNet folder as one original-layout ``.safetensors`` file."""
    import json

    from safetensors.torch import load_file, save_file

    cfg = json.loads((folder / "config.json").read_text())
    sd = load_file(folder / "diffusion_pytorch_model.safetensors")
    own = {"controlnet_cond_embedding.conv_in.": "input_hint_block.0.", "controlnet_cond_embedding.conv_out.": "input_hint_block.14.",
           "controlnet_mid_block.": "middle_block_out.0."}
    new, rest = {}, {}
    for k, v in sd.items():
        for hf, orig in own.items():
            if k.startswith(hf):
                new[orig + k[len(hf):]] = v
                break
        else:
            if k.startswith("controlnet_cond_embedding.blocks."):
                idx, part = k.split(".")[2:]
                new[f"input_hint_block.{2 * (int(idx) + 1)}.{part}"] = v
            elif k.startswith("controlnet_down_blocks."):
                idx, part = k.split(".")[1:]
                new[f"zero_convs.{idx}.0.{part}"] = v
            else:
                rest[k] = v
    unet_cfg = {**cfg, "up_block_types": ["UpBlock2D"] * len(cfg["block_out_channels"])}
    new |= {k.removeprefix("model.diffusion_model."): v for k, v in convert_unet(rest, unet_cfg).items()}
    save_file({"control_model." + k: v.contiguous() for k, v in new.items()}, str(out))
    return out


def build_tiny_sd3_controlnet(model: Path, path: Path, seed: int = 0) -> Path:
    """``SD3ControlNetModel.from_transformer`` on a tiny SD3 folder's transformer: one block, no
    extra conditioning channels (a Canny ControlNet's), every weight nudged off the copy and the
    zero-initialised input embedding randomised."""
    import torch
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(model, subfolder="transformer")
    torch.manual_seed(seed)
    net = SD3ControlNetModel.from_transformer(transformer, num_layers=1, num_extra_conditioning_channels=0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_flux_controlnet(model: Path, path: Path, seed: int = 0) -> Path:
    """``FluxControlNetModel.from_transformer`` on a tiny Flux folder's transformer (InstantX-style:
    no input_hint_block, it reads packed VAE latents), one block of each kind, every weight nudged
    off the copy and the zero-initialised layers randomised."""
    import torch
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")
    torch.manual_seed(seed)
    net = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net.save_pretrained(path, safe_serialization=True)
    return path
