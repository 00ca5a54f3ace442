"""Random LoRA files for the tiny random model, written the way real ones are: diffusers' own
``save_lora_weights`` (peft keys, ``unet.…lora_A.weight``), and kohya's layout (``lora_unet_…``,
``lora_te_…``, ``.lora_down``/``.lora_up``/``.alpha``) converted from it."""

from __future__ import annotations

from pathlib import Path

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linear_layers(model, targets):
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(targets)}


def lora_tensors(model_dir: Path, seed: int, rank: int = 4, scale: float = 0.3) -> tuple[dict, dict]:
    """(unet layers, text-encoder layers) in peft's key layout, random A and B (a trained LoRA's
    B is not zero), sized from the model's own Linear layers."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True)
    te = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", local_files_only=True)
    return _random_layers(unet, UNET_TARGETS, g, rank, scale), _random_layers(te, TEXT_TARGETS, g, rank, scale)


def _random_layers(model, targets, g, rank: int, scale: float) -> dict:
    """Random A and B for each targeted Linear layer of ``model``, keyed as diffusers' files key
    them (a text encoder's layers under ``text_model.``, whether or not the class nests them)."""
    import torch

    prefix = "text_model." if targets == TEXT_TARGETS and not hasattr(model, "text_model") else ""
    layers = {}
    for name, lin in _linear_layers(model, targets).items():
        layers[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) * scale / lin.in_features**0.5
        layers[f"{prefix}{name}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * scale
    return layers


def sdxl_lora_tensors(model_dir: Path, seed: int, rank: int = 4, scale: float = 0.3) -> tuple[dict, dict, dict]:
    """(unet, text_encoder, text_encoder_2 layers) for an SDXL folder, as ``lora_tensors``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True)
    te = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", local_files_only=True)
    te2 = CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder_2", local_files_only=True)
    return (_random_layers(unet, UNET_TARGETS, g, rank, scale), _random_layers(te, TEXT_TARGETS, g, rank, scale),
            _random_layers(te2, TEXT_TARGETS, g, rank, scale))


def write_lora(path: Path, unet_layers: dict | None, te_layers: dict | None) -> Path:
    """A LoRA file as diffusers writes one (``StableDiffusionPipeline.save_lora_weights``)."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                              weight_name=path.name, safe_serialization=True)
    return path


def write_sdxl_lora(path: Path, unet_layers: dict, te_layers: dict, te2_layers: dict) -> Path:
    """An SDXL LoRA file as diffusers writes one (``StableDiffusionXLPipeline.save_lora_weights``)."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline.save_lora_weights(path.parent, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                                text_encoder_2_lora_layers=te2_layers, weight_name=path.name, safe_serialization=True)
    return path


def write_kohya(path: Path, unet_layers: dict, te_layers: dict, alpha: float, te2_layers: dict | None = None) -> Path:
    """The same LoRA in kohya's layout with network alpha ``alpha``: kohya scales by alpha/rank,
    so each up matrix is multiplied by rank/alpha to keep the same weights change. With
    ``te2_layers`` (SDXL) the encoders are ``lora_te1_`` and ``lora_te2_``."""
    import torch
    from safetensors.torch import save_file

    parts = [("lora_unet_", unet_layers), ("lora_te_", te_layers)]
    if te2_layers is not None:
        parts = [("lora_unet_", unet_layers), ("lora_te1_", te_layers), ("lora_te2_", te2_layers)]
    out = {}
    for prefix, layers in parts:
        for key, value in layers.items():
            if not key.endswith("lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            up = layers[f"{module}.lora_B.weight"]
            rank = value.shape[0]
            if prefix.startswith("lora_te") and not module.startswith("text_model."):
                module = "text_model." + module
            name = prefix + module.replace(".", "_")
            out[f"{name}.lora_down.weight"] = value.contiguous()
            out[f"{name}.lora_up.weight"] = (up * (rank / alpha)).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(out, str(path))
    return path


def write_kohya_original_blocks(path: Path, model_dir: Path, unet_layers: dict, te_layers: dict, alpha: float) -> Path:
    """kohya's layout with the UNet's blocks named as in the original checkpoints
    (``lora_unet_input_blocks_1_1_…``), as A1111-era trainers write them."""
    import json

    from safetensors.torch import load_file, save_file

    from tests.original_layout import unet_prefixes

    write_kohya(path, unet_layers, te_layers, alpha)
    cfg = json.loads((model_dir / "unet" / "config.json").read_text())
    renames = [(hf.replace(".", "_"), sd.replace(".", "_")) for sd, hf in unet_prefixes(cfg) if "blocks" in hf or "mid_block" in hf]
    out = {}
    for key, value in load_file(path).items():
        if key.startswith("lora_unet_"):
            rest = key[len("lora_unet_"):]
            for hf, sd in renames:
                if rest.startswith(hf):
                    rest = sd + rest[len(hf):]
                    break
            key = "lora_unet_" + rest
        out[key] = value
    save_file(out, str(path))
    return path
