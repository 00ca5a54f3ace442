"""A tiny random-weight Stable Diffusion folder built from the real classes, with the real CLIP
tokenizer files, saved in diffusers format: what the node-library tests load through LoadModel and
compare against diffusers' own pipelines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "nodes" / "models" / "tiny-sd" / "tokenizer"

SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def tiny_vae():
    """The tiny models' VAE: 4 levels (a factor of 8, as SD's), 8 and 16 channels. Its config's
    ``force_upcast`` is diffusers' default (True), which only SDXL's pipelines act on."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=64, scaling_factor=0.5,
    )


def build_tiny_model(path: Path, seed: int = 0, prediction_type: str = "epsilon", sd2: bool = False) -> Path:
    """``prediction_type``: epsilon (SD 1.x), v_prediction (SD 2.x 768 models) or sample.
    ``sd2``: shaped like stable-diffusion-2-1 instead: a GELU text encoder (OpenCLIP's activation,
    which SD 2.x's encoder keeps), a tokenizer padding with "!" as SD 2.x's does, a UNet with
    linear projections and per-level head sizes, a DDIM scheduler."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    hidden = 40 if sd2 else 32
    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_act="gelu") if sd2 else \
        dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, **ids,
        )
    )
    heads = dict(attention_head_dim=(2, 4), use_linear_projection=True) if sd2 else dict(attention_head_dim=4)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, norm_num_groups=8, **heads,
    )
    vae = tiny_vae()
    te.save_pretrained(path / "text_encoder", safe_serialization=True)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    if (path / "tokenizer").exists():
        shutil.rmtree(path / "tokenizer")
    if sd2:
        CLIPTokenizer.from_pretrained(TOKENIZER, pad_token="!").save_pretrained(path / "tokenizer")
    else:
        shutil.copytree(TOKENIZER, path / "tokenizer")
    scheduler = "DDIMScheduler" if sd2 else "PNDMScheduler"
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**SCHEDULER_CONFIG, "_class_name": scheduler, "prediction_type": prediction_type}, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}


def build_tiny_sdxl(path: Path, seed: int = 0) -> Path:
    """A tiny random SDXL base folder (the shape of diffusers' own SDXL pipeline tests): two text
    encoders of different widths (the second with a projection), tokenizer_2 padding with "!" as
    SDXL's does, a UNet with ``addition_embed_type="text_time"``, force_zeros_for_empty_prompt."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    common = dict(vocab_size=49408, intermediate_size=37, num_attention_heads=4, max_position_embeddings=77,
                  bos_token_id=49406, eos_token_id=49407, hidden_act="gelu", layer_norm_eps=1e-5)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, num_hidden_layers=3, pad_token_id=49407, **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, num_hidden_layers=3, projection_dim=24, pad_token_id=0, **common))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 24, cross_attention_dim=32 + 48,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    te.save_pretrained(path / "text_encoder", safe_serialization=True)
    te2.save_pretrained(path / "text_encoder_2", safe_serialization=True)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        if (path / sub).exists():
            shutil.rmtree(path / sub)
    shutil.copytree(TOKENIZER, path / "tokenizer")
    CLIPTokenizer.from_pretrained(TOKENIZER, pad_token="!").save_pretrained(path / "tokenizer_2")
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


PIXEL_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "variance_type": "fixed_small",
}


def build_tiny_pixel(path: Path, seed: int = 0, num_class_embeds: int | None = None) -> Path:
    """A tiny random pixel-space DDPM folder (UNet2DModel + DDPMScheduler, as
    google/ddpm-cifar10-32 is laid out), unconditional or class-conditioned."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, num_class_embeds=num_class_embeds,
    )
    unet.save_pretrained(path / "unet", safe_serialization=True)
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(PIXEL_SCHEDULER_CONFIG, indent=2))
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1", "scheduler": ["diffusers", "DDPMScheduler"],
             "unet": ["diffusers", "UNet2DModel"]}
    if num_class_embeds:
        index["id2label"] = {str(k): f"class {k}" for k in range(num_class_embeds)}
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def build_tiny_sdxl_refiner(path: Path, base: Path | None = None, seed: int = 1) -> Path:
    """A tiny random SDXL refiner folder, laid out as stable-diffusion-xl-refiner-1.0 is: a
    StableDiffusionXLImg2ImgPipeline with ``requires_aesthetics_score``, no first tokenizer or
    text encoder (null entries), the second encoder's width alone as the UNet's cross-attention
    width, five time ids (original size, crop, aesthetic score) in its added conditions, and
    ``force_zeros_for_empty_prompt`` off. Given ``base`` (a build_tiny_sdxl folder), its second
    text encoder and VAE are copied in, as the real refiner shares the base's (the "ensemble of
    expert denoisers" hands latents from one to the other); else random ones of the same shapes."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    width, projection, per_id = 48, 24, 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=per_id,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=5 * per_id + projection, cross_attention_dim=width,
        norm_num_groups=8,
    )
    unet.save_pretrained(path / "unet", safe_serialization=True)
    for sub in ("text_encoder_2", "vae", "tokenizer_2"):
        if (path / sub).exists():
            shutil.rmtree(path / sub)
    if base is not None:
        shutil.copytree(base / "text_encoder_2", path / "text_encoder_2")
        shutil.copytree(base / "vae", path / "vae")
    else:
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, intermediate_size=37, num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
            eos_token_id=49407, hidden_act="gelu", layer_norm_eps=1e-5, hidden_size=width, num_hidden_layers=3,
            projection_dim=projection, pad_token_id=0))
        vae = tiny_vae()
        te2.save_pretrained(path / "text_encoder_2", safe_serialization=True)
        vae.save_pretrained(path / "vae", safe_serialization=True)
    CLIPTokenizer.from_pretrained(TOKENIZER, pad_token="!").save_pretrained(path / "tokenizer_2")
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": False,
        "requires_aesthetics_score": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def build_tiny_inpaint(base: Path, path: Path, seed: int = 2) -> Path:
    """A tiny random inpainting folder made from a tiny SD 1.x or SDXL one: the same components
    but a UNet of the same shape taking 9 input channels (latents, mask, masked picture's latents),
    as stable-diffusion-inpainting and sdxl-inpainting checkpoints do, under the inpainting
    pipeline's class name (how a real inpainting folder names itself)."""
    import torch
    from diffusers import UNet2DConditionModel

    shutil.copytree(base, path)
    config = dict(UNet2DConditionModel.load_config(path / "unet"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**config, "in_channels": 9})
    shutil.rmtree(path / "unet")
    unet.save_pretrained(path / "unet", safe_serialization=True)
    index = json.loads((path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLInpaintPipeline" if "XL" in index["_class_name"] else "StableDiffusionInpaintPipeline"
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
