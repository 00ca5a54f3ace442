"""Masks, inpainting and outpainting: masks read from real picture files (grey levels, alpha, a
threshold), bad masks refused naming the node and the field, grow/feather/pad against their
formulas, the final paste against diffusers' ``apply_overlay``, 9-channel inpainting models loaded
from folders and single-file checkpoints, and the shipped inpaint/outpaint workflows on the
shipped tiny model. Equality with diffusers' inpainting pipelines is in the conformance matrix
(tests/conformance/test_conformance.py, the ``inpaint`` cells)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graphflow
from graphflow import Context, Executor
from tests.original_layout import write_original_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY_SD = REPO / "nodes" / "models" / "tiny-sd"


def run_node(cls, **inputs):
    return cls().run(cls.make_inputs(inputs), Context())


def workflow(name: str, **params):
    wf = graphflow.load(REPO / "workflows" / f"{name}.json")
    wf.doc.outputs.pop("files", None)
    return wf.with_params(**params)


def save_png(path: Path, array: np.ndarray, mode: str) -> Path:
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


# --- masks ----------------------------------------------------------------------------------------

def test_a_mask_is_read_from_grey_levels_or_alpha_with_a_threshold(tmp_path):
    from graphflow_nodes.masks import LoadMask

    grey = np.zeros((16, 24), np.uint8)
    grey[4:8, 2:10] = 255
    grey[10, 20] = 127  # below one half: kept when binarized, 127/255 without a threshold
    grey_png = save_png(tmp_path / "grey.png", grey, "L")
    m = run_node(LoadMask, path=str(grey_png))["mask"]
    assert m.shape == (1, 1, 16, 24) and m.sum().item() == 32 and m[0, 0, 4, 2].item() == 1.0 and m[0, 0, 10, 20].item() == 0.0
    soft = run_node(LoadMask, path=str(grey_png), threshold=None)["mask"]
    assert soft[0, 0, 10, 20].item() == pytest.approx(127 / 255)
    inv = run_node(LoadMask, path=str(grey_png), invert=True)["mask"]
    assert inv.sum().item() == 16 * 24 - 32

    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: the alpha decides, transparent repaints
    rgba[..., 3] = 255
    rgba[0:3, 0:5, 3] = 0
    alpha_png = save_png(tmp_path / "alpha.png", rgba, "RGBA")
    a = run_node(LoadMask, path=str(alpha_png))["mask"]  # auto: the alpha channel
    assert a.sum().item() == 15 and a[0, 0, 0, 0].item() == 1.0
    assert run_node(LoadMask, path=str(alpha_png), source="grey")["mask"].sum().item() == 16 * 24
    resized = run_node(LoadMask, path=str(grey_png), width=48, height=32)["mask"]
    assert resized.shape == (1, 1, 32, 48) and resized.sum().item() == 4 * 32


def test_grow_shrink_feather_and_invert():
    from graphflow_nodes.masks import FeatherMask, GrowMask, InvertMask

    m = torch.zeros(1, 1, 11, 11)
    m[0, 0, 5, 5] = 1
    grown = run_node(GrowMask, mask=m, pixels=2)["mask"]
    assert grown.sum().item() == 25 and grown[0, 0, 3:8, 3:8].min().item() == 1.0
    assert torch.equal(run_node(GrowMask, mask=grown, pixels=-2)["mask"], m)
    assert torch.equal(run_node(InvertMask, mask=m)["mask"], 1 - m)
    block = torch.zeros(1, 1, 32, 32)
    block[..., 8:24, 8:24] = 1
    soft = run_node(FeatherMask, mask=block, radius=4)["mask"]
    assert soft.sum().item() == pytest.approx(block.sum().item(), rel=1e-5)  # a blur moves the mask's mass, never adds any
    assert soft[0, 0, 16, 16].item() == pytest.approx(1.0) and soft[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert 0.3 < soft[0, 0, 16, 8].item() < 0.7  # the edge is half-way


def comfyui_outpaint_mask(h: int, w: int, top: int, right: int, bottom: int, left: int, feathering: int) -> torch.Tensor:
    """ComfyUI's ``ImagePadForOutpaint.expand_image`` mask, as its nodes.py writes it (loops)."""
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    t = torch.zeros((h, w), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                dt = i if top != 0 else h
                db = h - i if bottom != 0 else h
                dl = j if left != 0 else w
                dr = w - j if right != 0 else w
                d = min(dt, db, dl, dr)
                if d >= feathering:
                    continue
                v = (feathering - d) / feathering
                t[i, j] = v * v
    mask[top : top + h, left : left + w] = t
    return mask


@pytest.mark.parametrize("sides,feathering", [((0, 16, 0, 8), 6), ((8, 0, 24, 0), 0), ((4, 4, 4, 4), 10), ((0, 0, 8, 0), 40)])
def test_pad_image_gives_comfyuis_outpaint_mask(sides, feathering):
    from graphflow_nodes.masks import PadImage

    top, right, bottom, left = sides
    image = torch.rand(1, 3, 40, 48)
    out = run_node(PadImage, image=image, top=top, right=right, bottom=bottom, left=left, feathering=feathering)
    assert out["image"].shape == (1, 3, 40 + top + bottom, 48 + left + right)
    assert torch.equal(out["image"][..., top : top + 40, left : left + 48], image)
    assert (out["image"][..., :top, :] == 0.5).all() and (out["image"][..., :, out["image"].shape[-1] - right :] == 0.5).all()
    assert torch.equal(out["mask"][0, 0], comfyui_outpaint_mask(40, 48, top, right, bottom, left, feathering))


def test_the_final_paste_is_diffusers_apply_overlay(tmp_path):
    """PasteUnmasked on a soft mask against VaeImageProcessor.apply_overlay (PIL's alpha
    composite, in 8 bits): within one level of 255."""
    from diffusers.image_processor import VaeImageProcessor
    from graphflow_nodes.images import from_pil
    from graphflow_nodes.masks import PasteUnmasked

    g = torch.Generator().manual_seed(0)
    original, result = torch.rand(1, 3, 24, 32, generator=g), torch.rand(1, 3, 24, 32, generator=g)
    mask = torch.rand(1, 1, 24, 32, generator=g)
    to_img = lambda t: Image.fromarray((t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))  # noqa: E731
    mask_img = Image.fromarray((mask[0, 0].numpy() * 255).round().astype(np.uint8), "L")
    ref = VaeImageProcessor().apply_overlay(mask_img, to_img(original), to_img(result))
    q = lambda t: (t * 255).round() / 255  # noqa: E731  the 8-bit inputs apply_overlay saw
    ours = run_node(PasteUnmasked, image=q(result), original=q(original), mask=q(mask))["image"]
    diff = ((ours * 255).round() - from_pil(ref) * 255).abs().max().item()
    assert diff <= 1.0
    assert torch.equal(run_node(PasteUnmasked, image=result, original=original, mask=mask, enabled=False)["image"], result)


def _failure(wf) -> tuple[str, str]:
    r = Executor().run(wf)
    assert not r.ok
    (err,) = r.errors
    assert err.exc_type == "ValueError" or err.exc_type.endswith("ModelError"), err.exc_type
    return err.node, err.message.split(": ", 1)[1] if err.message.startswith(err.exc_type + ": ") else err.message


def test_bad_masks_are_refused_naming_the_node_and_the_field(tmp_path):
    small = save_png(tmp_path / "small.png", np.full((32, 32), 255, np.uint8), "L")
    node, msg = _failure(workflow("inpaint", mask=str(small), steps=1))
    assert node == "masked" and msg == ("mask: the mask is 32×32 pixels but the image is 64×64; give a mask of the picture's "
                                        "size (LoadMask's width and height resize it)")
    empty = save_png(tmp_path / "empty.png", np.zeros((64, 64), np.uint8), "L")
    node, msg = _failure(workflow("inpaint", mask=str(empty), steps=1))
    assert node == "load_mask" and msg.startswith("path: the mask is empty (no pixel is marked to repaint)")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    node, msg = _failure(workflow("inpaint", mask=str(text), steps=1))
    assert node == "load_mask" and msg.startswith("path: notes.png is not a picture")
    wf = workflow("inpaint", steps=1)
    wf.doc.raw["nodes"]["load_mask"]["inputs"]["source"] = "alpha"
    node, msg = _failure(graphflow.Workflow.from_dict(wf.doc.raw))
    assert node == "load_mask" and msg.startswith("source: circle-mask.png has no alpha channel")


def test_a_mask_cannot_be_wired_where_an_image_or_a_latent_mask_goes():
    """Masks are a kind of their own: the validator refuses a mask on an image port, or a
    picture-sized mask where the latents' size is wanted, before anything runs."""
    wf = workflow("inpaint")
    wf.doc.raw["nodes"]["masked"]["inputs"]["image"] = {"from": "mask.mask"}
    wf.doc.raw["nodes"]["denoise"]["body"]["channels"]["inputs"]["mask"] = {"from": "mask.mask"}
    problems = sorted((p.code, p.node, p.field, p.message) for p in graphflow.Workflow.from_dict(wf.doc.raw).problems())
    assert problems == [
        ("type_mismatch", "channels", "inputs.mask", "'mask.mask' is a mask, but input 'mask' takes a latent_mask"),
        ("type_mismatch", "masked", "inputs.image", "'mask.mask' is a mask, but input 'image' takes a image"),
    ]


def test_a_picture_off_the_vaes_grid_and_a_missing_model_are_refused():
    wf = workflow("inpaint", steps=1)
    for node in ("image", "load_mask"):
        wf.doc.raw["nodes"][node]["inputs"] |= {"width": 60, "height": 60}
    node, msg = _failure(graphflow.Workflow.from_dict(wf.doc.raw))
    assert node == "inpaint_latents" and msg.startswith("image: 60×60 pixels is not a multiple of the VAE's factor 8")
    wf = workflow("inpaint", steps=1)
    del wf.doc.raw["nodes"]["inpaint_latents"]["inputs"]["unet"]
    node, msg = _failure(graphflow.Workflow.from_dict(wf.doc.raw))
    assert node == "inpaint_latents" and msg == "unet, transformer: give one, the UNet (SD 1.x, SDXL) or the transformer (SD3, Flux)"


# --- inpainting models ------------------------------------------------------------------------

def test_a_9_channel_inpainting_folder_loads(tiny_inpaint):
    from graphflow_nodes.loading.models import LoadModel

    refs = LoadModel().run(LoadModel.In(path=str(tiny_inpaint)), Context())
    ex = Executor()
    assert refs["family"] == "sd" and ex.models.get(refs["unet"]).config.in_channels == 9


def test_a_single_file_inpainting_checkpoint_draws_the_folders_picture(tmp_path):
    """A 9-channel single-file checkpoint (as sd-v1-5-inpainting ships) is built with the shipped
    config's UNet given 9 input channels; its inpainting equals the diffusers folder's bit for bit."""
    from graphflow_nodes.loading.models import LoadModel
    from tests.tiny_model import build_tiny_inpaint

    folder = build_tiny_inpaint(TINY_SD, tmp_path / "tiny-sd-inpaint")
    ckpt = write_original_checkpoint(folder, tmp_path / "tiny-sd-inpaint.safetensors")
    ex = Executor()
    refs = LoadModel().run(LoadModel.In(path=str(ckpt)), Context())
    assert ex.models.get(refs["unet"]).config.in_channels == 9
    a = ex.run(workflow("inpaint", model=str(folder), steps=3, seed=1))
    b = ex.run(workflow("inpaint", model=str(ckpt), steps=3, seed=1))
    assert a.ok and b.ok, (a.errors, b.errors)
    assert torch.equal(a["image"], b["image"]) and a["image"].std().item() > 0.05


def test_a_checkpoint_with_another_channel_count_is_refused_naming_it(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = write_original_checkpoint(TINY_SD, tmp_path / "tiny.safetensors")
    sd = load_file(ckpt)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 8, *sd[key].shape[2:])
    save_file(sd, tmp_path / "pix2pix.safetensors")
    doc = {"format": 1, "nodes": {"m": {"type": "LoadModel", "inputs": {"path": str(tmp_path / "pix2pix.safetensors")}}}, "outputs": ["m"]}
    node, msg = _failure(graphflow.Workflow.from_dict(doc))
    assert node == "m" and "its UNet takes 8 input channels" in msg and "inpainting (9 channels)" in msg


# --- the shipped workflows on the shipped tiny model ---------------------------------------------

def test_inpaint_repaints_the_masked_part_and_paste_keeps_the_rest():
    from graphflow_nodes.images import from_pil

    ex = Executor()
    plain = ex.run(workflow("inpaint", steps=4))
    pasted = ex.run(workflow("inpaint", steps=4, paste=True))
    assert plain.ok and pasted.ok, (plain.errors, pasted.errors)
    original = from_pil(Image.open(REPO / "nodes" / "samples" / "red-circle-on-blue.png"))
    keep = from_pil(Image.open(REPO / "nodes" / "samples" / "circle-mask.png"))[:, :1] < 0.5
    keep3 = keep.expand(-1, 3, -1, -1)
    assert torch.equal(pasted["image"][keep3], original[keep3])  # the kept pixels, exactly
    assert (plain["image"][keep3] - original[keep3]).abs().max().item() > 0  # without the paste, the VAE's round trip
    assert (plain["image"][~keep3] - original[~keep3]).abs().mean().item() > 0.1  # the masked part is repainted
    assert torch.equal(pasted["image"][~keep3], plain["image"][~keep3])


def test_outpaint_extends_the_picture_and_keeps_it():
    from graphflow_nodes.images import from_pil

    r = Executor().run(workflow("outpaint", steps=4, left=16, right=16, feathering=0))
    assert r.ok, r.errors
    original = from_pil(Image.open(REPO / "nodes" / "samples" / "red-circle-on-blue.png"))
    assert r["image"].shape == (1, 3, 64, 96)
    assert torch.equal(r["image"][..., 16:80], original)
    border = torch.cat([r["image"][..., :16], r["image"][..., 80:]], dim=-1)
    assert (border - 0.5).abs().mean().item() > 0.1  # painted, not left grey
