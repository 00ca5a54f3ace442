"""Live previews of a sampler's current x0: latents projected to RGB by a per-family linear map
(one 3-vector per latent channel, plus a bias), at the latents' own resolution. Costs one small
matrix product and a PNG encode, so a preview every step is affordable (bench/bench_batching.py).

The factors are ComfyUI's (``comfy/latent_formats.py``, ``latent_rgb_factors`` and
``latent_rgb_factors_bias`` of ``SD15``, ``SDXL``, ``SD3`` and ``Flux``), fitted there on each
family's VAE; they apply to the latents as the sampler holds them (scaled by the VAE's scaling
factor, and shifted for SD3/Flux), which is the space diffusers' pipelines denoise in too.
ComfyUI's ``latent_preview.py`` maps the projection from [-1, 1] to [0, 1], as here.

With a tiny autoencoder (``TinyDecoder``: a diffusers ``AutoencoderTiny`` folder, TAESD-class:
taesd/taesdxl for 4-channel latents, taesd3/taef1 for SD3's and Flux's 16), previews are that
decoder's picture of x0 instead: full size and close to the VAE's, for a few milliseconds a step
more (bench/bench_preview_decoder.py). Its latents are the sampler's, undone by the tiny
decoder's own ``scaling_factor`` and ``shift_factor`` as diffusers' pipelines undo them for
whatever VAE they hold (TAESD's are 1 and 0: it reads the sampler's latents as they are).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREVIEW_FORMATS = ("auto", "sd15", "sdxl", "sd3", "flux")

# comfy/latent_formats.py (comfyanonymous/ComfyUI): rows are latent channels, columns R, G, B
FACTORS: dict[str, tuple[list[list[float]], list[float] | None]] = {
    "sd15": ([[0.3512, 0.2297, 0.3227],
              [0.3250, 0.4974, 0.2350],
              [-0.2829, 0.1762, 0.2721],
              [-0.2120, -0.2616, -0.7177]], None),
    "sdxl": ([[0.3651, 0.4232, 0.4341],
              [-0.2533, -0.0042, 0.1068],
              [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
    "sd3": ([[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458], [0.0856, 0.0339, 0.0902],
             [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309], [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358],
             [-0.0194, 0.0020, 0.0669], [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
             [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293], [-0.1448, -0.1463, -0.1189]],
            [0.2394, 0.2135, 0.1925]),
    "flux": ([[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
              [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
              [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
              [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778]],
             [-0.0329, -0.0718, -0.0851]),
}


def unpack_square(latents: Any) -> Any:
    """Flux's packed (batch, tokens, 4·C) latents back to (batch, C, h, w), the grid of 2×2 patches
    taken as the most nearly square factorisation of the token count (a preview does not know the
    image's aspect: a wide picture may show folded; the decoded picture never is)."""
    b, n, f = latents.shape
    rows = next(r for r in range(int(math.isqrt(n)), 0, -1) if n % r == 0)
    cols = n // rows
    c = f // 4
    return latents.reshape(b, rows, cols, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * 2, cols * 2)


def family_of(latents: Any, fmt: str) -> str:
    """The factors to use: ``fmt`` unless "auto", which reads the latents' layout: packed 3-D
    latents are Flux's, 16 channels SD3's, 4 channels SD 1.x/2.x's (SDXL's workflows say "sdxl")."""
    if fmt != "auto":
        return fmt
    if latents.dim() == 3:
        return "flux"
    return "sd3" if latents.shape[1] == 16 else "sd15"


def latent_rgb(latents: Any, fmt: str = "auto") -> Any:
    """The first sample's (H, W, 3) uint8 preview of ``latents``, as a numpy array."""
    import torch

    family = family_of(latents, fmt)
    x = unpack_square(latents) if latents.dim() == 3 else latents
    factors, bias = FACTORS[family]
    w = torch.tensor(factors, dtype=torch.float32)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"a {family} preview takes {w.shape[0]}-channel latents, not {x.shape[1]}")
    rgb = x[0].detach().to("cpu", torch.float32).permute(1, 2, 0) @ w
    if bias is not None:
        rgb = rgb + torch.tensor(bias)
    return ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()


@dataclass(frozen=True)
class TinyDecoder:
    """A model reference (``Executor(preview_decoder=...)``, ``--preview-decoder``): a tiny
    autoencoder's folder, checked when named (config.json of an ``AutoencoderTiny`` and safetensors
    weights; a pickle is refused unread), loaded by the executor's model manager on the first
    preview. The operator's choice, like the cache folder, so not held to a workflow's read roots."""

    path: str

    def __post_init__(self) -> None:
        folder = Path(self.path).expanduser().resolve()
        object.__setattr__(self, "path", str(folder))
        self.config()

    def config(self) -> dict:
        from graphflow_nodes.loading.model_refs import diffusers_config

        return diffusers_config(Path(self.path), "AutoencoderTiny", "an AutoencoderTiny (TAESD) decoder",
                                hint=", e.g. madebyollin/taesd")

    def load(self, manager: Any) -> Any:
        from diffusers import AutoencoderTiny
        from graphflow_nodes.loading.model_refs import offline
        from graphflow_nodes.runtime import torch_dtype

        offline()
        model = AutoencoderTiny.from_pretrained(self.path, torch_dtype=torch_dtype(manager.dtype), use_safetensors=True,
                                                local_files_only=True)
        model = model.to(manager.device).eval()
        model.requires_grad_(False)
        return model


def check_decoder(decoder: Any, latents: Any) -> None:
    """Refuse a tiny decoder made for other latents, saying which (4 channels: SD 1.x/2.x/SDXL; 16:
    SD3/Flux): its picture would be noise, and a preview is meant to be looked at."""
    x = unpack_square(latents) if latents.dim() == 3 else latents
    want = int(decoder.config.latent_channels)
    if x.shape[1] != want:
        theirs = "SD3's or Flux's" if x.shape[1] == 16 else "SD 1.x/2.x's or SDXL's" if x.shape[1] == 4 else f"{x.shape[1]}-channel"
        mine = "taesd3 or taef1" if x.shape[1] == 16 else "taesd or taesdxl"
        raise ValueError(f"the preview decoder takes {want}-channel latents, but this model's are {x.shape[1]}-channel "
                         f"({theirs}): give the preview decoder (--preview-decoder) one made for this family ({mine}), "
                         "or none for the linear projection")


def decoded_rgb(latents: Any, decoder: Any) -> Any:
    """The first sample's (H, W, 3) uint8 picture by the tiny decoder: ``decoder.decode`` of the
    sampler's latents undone by the decoder's scaling factor and shift, [-1, 1] mapped to [0, 255]."""
    import torch

    check_decoder(decoder, latents)
    x = unpack_square(latents) if latents.dim() == 3 else latents
    p = next(decoder.parameters())
    z = x[:1].detach().to(device=p.device, dtype=p.dtype) / decoder.config.scaling_factor + decoder.config.shift_factor
    with torch.no_grad():
        image = decoder.decode(z, return_dict=False)[0][0]
    return ((image.float().cpu().permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()


def png_bytes(rgb: Any) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height) of an (H, W, 3) uint8 array; fastest compression: a preview is
    seen once."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), rgb.shape[1], rgb.shape[0]


def latent_preview(latents: Any, fmt: str = "auto", decoder: Any = None) -> tuple[bytes, int, int]:
    """What ``Context.preview`` wants: the preview's PNG, width and height; by ``decoder`` (a
    loaded tiny autoencoder) when given, else by the linear projection."""
    return png_bytes(latent_rgb(latents, fmt) if decoder is None else decoded_rgb(latents, decoder))
