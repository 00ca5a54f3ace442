"""Tiled VAE: ``VAEEncode``/``Decode`` with ``tiled`` against diffusers' own tiling
(``vae.enable_tiling()`` with the same tile size and overlap) on the tiny random model, for a
picture larger than a tile and not a multiple of one; and the tiles really change the numbers (a
tiled decode is not the whole-picture decode), so the equality is not that of two untiled runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphflow import Executor, Workflow

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "nodes" / "samples" / "red-circle-on-blue.png"
W, H = 160, 96  # 2.5 × 1.5 tiles of the tiny VAE's 64-pixel default


def vae_doc(model: Path, mode: str = "mean", **tiling) -> dict:
    f = lambda r: {"from": r}  # noqa: E731
    return {
        "format": 1,
        "nodes": {
            "model": {"type": "LoadModel", "inputs": {"path": str(model)}},
            "image": {"type": "LoadImage", "inputs": {"path": str(IMAGE), "width": W, "height": H}},
            "encode": {"type": "VAEEncode", "inputs": {"vae": f("model.vae"), "image": f("image.image"), "mode": mode, "seed": 5, **tiling}},
            "decode": {"type": "Decode", "inputs": {"vae": f("model.vae"), "latents": f("encode.latents"), **tiling}},
        },
        "outputs": {"picture": "image.image", "latents": "encode.latents", "image": "decode.image"},
    }


def diffusers_vae(model: Path, size: int | None, overlap: float | None):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    if size is not None:
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = size, size // 8
    if overlap is not None:
        vae.tile_overlap_factor = overlap
    return vae


@pytest.fixture(scope="module")
def executor():
    return Executor()


@pytest.mark.parametrize("model, size, overlap", [("tiny_model", None, None), ("tiny_model", 32, 0.5), ("tiny_model", 96, 0.25),
                                                  ("tiny_flux", None, None)],
                         ids=["sd-default-64-0.25", "sd-32-0.5", "sd-96-0.25", "flux-default-64-0.25"])
def test_tiled_encode_and_decode_equal_diffusers_enable_tiling(request, executor, model, size, overlap):
    """SD's VAE (with its quant convolutions) and Flux's (16 channels, a shift, no quant convolutions)."""
    model = request.getfixturevalue(model)
    tiling = {"tiled": True} | ({"tile_size": size} if size else {}) | ({"tile_overlap": overlap} if overlap is not None else {})
    r = executor.run(Workflow.from_dict(vae_doc(model, **tiling)))
    assert r.ok, r.errors
    vae = diffusers_vae(model, size or 64, overlap)
    sf, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    with torch.no_grad():
        x = (r["picture"] * 2 - 1).contiguous(memory_format=torch.channels_last)
        latents = (vae.encode(x).latent_dist.mode() - shift) * sf
        image = (vae.decode(r["latents"] / sf + shift).sample / 2 + 0.5).clamp(0, 1)
    assert r["latents"].shape == (1, vae.config.latent_channels, H // 8, W // 8) and r["image"].shape == (1, 3, H, W)
    assert (r["latents"] - latents).abs().max().item() <= 1e-5
    assert (r["image"] - image).abs().max().item() <= 1e-5
    # the tiles matter: the untiled graph gives other numbers for the same picture
    whole = executor.run(Workflow.from_dict(vae_doc(model)))
    assert (whole["latents"] - r["latents"]).abs().max().item() > 1e-3
    with torch.no_grad():
        untiled = (diffusers_vae(model, None, None).decode(r["latents"] / sf + shift).sample / 2 + 0.5).clamp(0, 1)
    assert (untiled - image).abs().max().item() > 1e-3


def test_a_tiled_sample_draws_as_diffusers_does(tiny_model, executor):
    """``mode: sample`` from the tiled moments with the seeded generator: diffusers' img2img draw."""
    r = executor.run(Workflow.from_dict(vae_doc(tiny_model, "sample", tiled=True)))
    assert r.ok, r.errors
    vae = diffusers_vae(tiny_model, 64, None)
    with torch.no_grad():
        x = (r["picture"] * 2 - 1).contiguous(memory_format=torch.channels_last)
        ref = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(5)) * vae.config.scaling_factor
    assert (r["latents"] - ref).abs().max().item() <= 1e-5


def test_a_picture_within_one_tile_is_coded_whole(tiny_model, executor):
    """As diffusers: tiling starts only above the tile size, so a 64-pixel picture is unchanged."""
    doc = vae_doc(tiny_model, tiled=True)
    doc["nodes"]["image"]["inputs"] |= {"width": 64, "height": 64}
    plain = vae_doc(tiny_model)
    plain["nodes"]["image"]["inputs"] |= {"width": 64, "height": 64}
    a, b = executor.run(Workflow.from_dict(doc)), executor.run(Workflow.from_dict(plain))
    assert (a["latents"] - b["latents"]).abs().max().item() == 0.0 and (a["image"] - b["image"]).abs().max().item() == 0.0


def test_a_tile_size_off_the_vae_grid_is_refused_naming_node_and_field(tiny_model, executor):
    r = executor.run(Workflow.from_dict(vae_doc(tiny_model, tiled=True, tile_size=60)))
    assert not r.ok
    (err,) = r.errors
    assert err.node == "encode"
    assert "tile_size must be a multiple of the VAE's factor 8 and at least 16, not 60" in err.message


def test_tiles_whose_kept_parts_do_not_add_up_are_refused(tiny_model, executor):
    """diffusers' tiling with 48-pixel tiles at 0.25 encodes a 96-pixel side into 13 latent rows,
    not 12 (its step and its kept part round differently): refused, with a size that works."""
    from diffusers import AutoencoderKL

    vae = diffusers_vae(tiny_model, 48, 0.25)
    assert isinstance(vae, AutoencoderKL)
    with torch.no_grad():
        assert vae.encode(torch.zeros(1, 3, H, W)).latent_dist.mode().shape[-2:] == (13, 22)
    r = executor.run(Workflow.from_dict(vae_doc(tiny_model, tiled=True, tile_size=48)))
    (err,) = r.errors
    assert err.node == "encode"
    assert err.message.endswith("tile_size: 48-pixel tiles overlapping by 0.25 do not add up to the picture "
                                "(diffusers' tiling would change its size); 64 does")
