"""Tiny random-weight SD3 and Flux.1 folders built from the real classes (the shapes of diffusers'
own pipeline tests, with the real families' 16 latent channels and VAE shift), saved in diffusers
format: what the flow-matching tests load through LoadModel and compare against diffusers' own
pipelines. Nothing comes from a hub: the CLIP tokenizers are the vocabulary shipped with tiny-sd,
and the T5 tokenizer is a small Unigram model written here with ``tokenizers``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.tiny_model import TOKENIZER

#: the scheduler configs the real checkpoints ship (stable-diffusion-3-medium / 3.5: a fixed shift
#: of 3; FLUX.1-dev: dynamic shifting from the image's sequence length; FLUX.1-schnell: shift 1,
#: no dynamic shifting), written out by hand from their documented values
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
    "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}
FLUX_SCHNELL_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
    "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}

#: a small SentencePiece-style vocabulary: T5's special tokens at T5's ids (pad 0, eos 1, unk 2),
#: then pieces for words and letters, word-initial ones marked with "▁" as SentencePiece does
_WORDS = ("a", "an", "the", "on", "of", "in", "with", "and", "red", "blue", "green", "yellow", "circle", "square",
          "background", "photo", "cat", "dog", "picture", "blurry", "ugly", "bright")


def t5_vocab() -> list[tuple[str, float]]:
    import string

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{w}", -2.0 - i * 0.01) for i, w in enumerate(_WORDS)]
    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    vocab += [("▁", -3.0)] + [(f"▁{c}", -5.0) for c in chars] + [(c, -6.0) for c in chars + string.ascii_uppercase]
    seen: set[str] = set()
    return [(piece, score) for piece, score in vocab if not (piece in seen or seen.add(piece))]


def build_t5_tokenizer(path: Path) -> Path:
    """A T5TokenizerFast folder: a Unigram model over ``t5_vocab()`` with T5's normalisation and
    Metaspace pre-tokenizer, and "</s>" appended to every sequence, as T5's tokenizer.json does."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(Unigram(t5_vocab(), unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "extra_ids": 0, "additional_special_tokens": [], "model_max_length": 512, "clean_up_tokenization_spaces": True,
    }, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, indent=2))
    return path


def tiny_t5(seed: int, d_model: int = 32):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=len(t5_vocab()), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
    ))


def tiny_flow_vae(seed: int):
    """SD3's and Flux's VAE in small: 16 latent channels, no quant convolutions, a shift and a
    scale (``(z - shift_factor) * scaling_factor``), a factor of 8 as theirs."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=64, scaling_factor=1.5035, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
    )


def _clip(seed: int, hidden: int, projection: int, with_projection: bool):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                         max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                         hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=projection)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _save(path: Path, parts: dict, index: dict, scheduler: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        if (path / name).exists():
            shutil.rmtree(path / name)
        if name.startswith("tokenizer"):
            part(path / name)
        else:
            part.save_pretrained(path / name, safe_serialization=True)
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    (path / "model_index.json").write_text(json.dumps({"_diffusers_version": "0.42.1", **index}, indent=2))
    return path


def _clip_tokenizer(dest: Path) -> None:
    shutil.copytree(TOKENIZER, dest)


def build_tiny_sd3(path: Path, seed: int = 0, t5: bool = True) -> Path:
    """A tiny StableDiffusion3Pipeline folder: two CLIP encoders with projections (widths 32 and
    48; pooled 16 + 16 = the transformer's pooled_projection_dim), a T5 encoder as wide as the
    transformer's joint attention (96, wider than both CLIPs together, as T5-XXL's 4096 is), an
    MMDiT with patch size 2 over 16 latent channels. ``t5=False``: ``text_encoder_3`` and
    ``tokenizer_3`` null, as a folder saved without T5 has them."""
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=16,
    )
    parts = {
        "transformer": transformer, "vae": tiny_flow_vae(seed + 1),
        "text_encoder": _clip(seed + 2, 32, 16, True), "text_encoder_2": _clip(seed + 3, 48, 16, True),
        "tokenizer": _clip_tokenizer, "tokenizer_2": _clip_tokenizer,
    }
    if t5:
        parts |= {"text_encoder_3": tiny_t5(seed + 4, 96), "tokenizer_3": build_t5_tokenizer}
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"] if t5 else [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"] if t5 else [None, None],
        "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    return _save(path, parts, index, SD3_SCHEDULER)


def build_tiny_flux(path: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A tiny FluxPipeline folder: a CLIP encoder (its pooled output is the transformer's pooled
    projection), a T5 encoder (the sequence), a Flux transformer over packed 2×2 patches of 16
    latent channels (64 inputs), rotary axes summing to the head size. ``guidance_embeds``: dev's
    distilled guidance embedding (with dev's dynamically shifted schedule); without it the folder
    is schnell-shaped (shift 1, no dynamic shifting)."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
    )
    parts = {
        "transformer": transformer, "vae": tiny_flow_vae(seed + 1), "text_encoder": _clip(seed + 2, 32, 32, False),
        "text_encoder_2": tiny_t5(seed + 3, 32), "tokenizer": _clip_tokenizer, "tokenizer_2": build_t5_tokenizer,
    }
    index = {
        "_class_name": "FluxPipeline",
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    return _save(path, parts, index, FLUX_DEV_SCHEDULER if guidance_embeds else FLUX_SCHNELL_SCHEDULER)
