"""Pixel upscalers: small random RRDBNets saved by the test (tests/upscaler_files.py, BasicSR's
network) in each naming layout, loaded by LoadUpscaler and run by Upscale; tiles that join
without a seam; pickles refused unread; the shipped nearest-×4 upscaler and workflows/upscale.json;
and the resize nodes of the hires fix."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow
from tests.upscaler_files import bsrgan_names, esrgan_names, random_rrdbnet, save

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "nodes" / "samples" / "red-circle-on-blue.png"


def upscale_doc(upscaler: str | Path, width: int = 24, height: int = 20, **opts) -> dict:
    f = lambda r: {"from": r}  # noqa: E731
    return {
        "format": 1,
        "nodes": {
            "image": {"type": "LoadImage", "inputs": {"path": str(IMAGE), "width": width, "height": height}},
            "upscaler": {"type": "LoadUpscaler", "inputs": {"path": str(upscaler)}},
            "upscale": {"type": "Upscale", "inputs": {"upscaler": f("upscaler.upscaler"), "image": f("image.image"), **opts}},
        },
        "outputs": {"picture": "image.image", "image": "upscale.image", "scale": "upscaler.scale"},
    }


@pytest.fixture(scope="module")
def executor():
    return Executor()


def run(executor, doc):
    r = executor.run(Workflow.from_dict(doc))
    assert r.ok, r.errors
    return r


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_an_rrdbnet_file_upscales_as_basicsr_runs_it(scale, tmp_path, executor):
    """Real-ESRGAN's ×4, and its ×2/×1 that fold 2×2 / 4×4 pixels into channels first: the scale
    is read from the file's shapes, the picture is BasicSR's forward pass."""
    net = random_rrdbnet(scale, seed=scale)
    r = run(executor, upscale_doc(save(net.state_dict(), tmp_path / f"x{scale}.safetensors"), tile=0))
    with torch.no_grad():
        ref = net(r["picture"]).clamp(0, 1)
    assert r["scale"] == scale
    assert r["image"].shape == (1, 3, 20 * scale, 24 * scale)
    assert ref.std().item() > 0.01
    assert (r["image"] - ref).abs().max().item() <= 1e-6


def test_esrgan_and_bsrgan_names_load_the_same_network(tmp_path, executor):
    """The original ESRGAN's sequential names (``model.1.sub.0.RDB1.conv1.0.weight``) and
    BSRGAN's (``RRDB_trunk``, ``HRconv``) are the same tensors: the same picture, bit for bit."""
    state = random_rrdbnet(4, seed=7).state_dict()
    files = {"basicsr": save(state, tmp_path / "a.safetensors"), "esrgan": save(esrgan_names(state), tmp_path / "b.safetensors"),
             "bsrgan": save(bsrgan_names(state), tmp_path / "c.safetensors")}
    assert "model.1.sub.0.RDB1.conv1.0.weight" in esrgan_names(state) and "model.10.weight" in esrgan_names(state)
    images = {k: run(executor, upscale_doc(p, tile=0))["image"] for k, p in files.items()}
    assert (images["esrgan"] - images["basicsr"]).abs().max().item() == 0.0
    assert (images["bsrgan"] - images["basicsr"]).abs().max().item() == 0.0


@pytest.mark.parametrize("scale, overlap", [(4, 24), (2, 40)])
def test_tiles_with_enough_overlap_join_without_a_seam(scale, overlap, tmp_path, executor):
    """3×3 tiles of 16 pixels, each read with ``overlap`` pixels of context (more than the small
    net's reach: about 19 input pixels, twice that where ×2 folds the picture first): the whole
    picture's result. Without context the tiles' borders show."""
    path = save(random_rrdbnet(scale, seed=3).state_dict(), tmp_path / "net.safetensors")
    whole = run(executor, upscale_doc(path, 48, 40, tile=0))["image"]
    tiled = run(executor, upscale_doc(path, 48, 40, tile=16, overlap=overlap))["image"]
    seams = run(executor, upscale_doc(path, 48, 40, tile=16, overlap=0))["image"]
    assert tiled.shape == whole.shape == (1, 3, 40 * scale, 48 * scale)
    assert (tiled - whole).abs().max().item() <= 1e-5
    assert (seams - whole).abs().max().item() > 1e-2


def test_odd_sides_are_padded_for_a_folding_upscaler(tmp_path, executor):
    """A ×2 Real-ESRGAN folds 2×2 pixels: a 25×21 picture is padded (reflected) to 26×22 and its
    result cut back to 50×42."""
    path = save(random_rrdbnet(2, seed=4).state_dict(), tmp_path / "x2.safetensors")
    r = run(executor, upscale_doc(path, 25, 21, tile=0))
    assert r["image"].shape == (1, 3, 42, 50)


def test_a_pickle_is_refused_unread(tmp_path):
    """A .pth upscaler (the usual way they are shared) whose unpickling would write a file: the
    CLI refuses it at validation, naming the node and the field, exit 2, and the file is never
    opened (the marker never appears)."""
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    trap = tmp_path / "4x-trap.pth"
    trap.write_bytes(pickle.dumps(Trap()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "graphflow.cli", "run", "upscale", "--set", f"upscaler={trap}", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 2, p.stderr
    assert ("[refused_file] node 'upscaler', field 'inputs.path': "
            f"'{trap}' is a Python pickle (.pth), which can run code when read: refused unread") in p.stderr + p.stdout
    assert not marker.exists()
    assert "Traceback" not in p.stderr


def test_a_safetensors_file_that_is_no_rrdbnet_is_refused_by_name(tmp_path, executor):
    lora = next((REPO / "nodes" / "models" / "loras").glob("*.safetensors"))
    r = executor.run(Workflow.from_dict(upscale_doc(lora)))
    (err,) = r.errors
    assert err.node == "upscaler"
    assert f"path: {lora.name}: not an ESRGAN (RRDBNet) model: its tensors (" in err.message


def test_the_shipped_upscaler_enlarges_by_nearest_neighbour(tmp_path):
    """workflows/upscale.json as shipped: the ×4 RRDBNet built to copy each pixel into a 4×4
    block, so its picture is torch's nearest ×4 of the sample, exactly; in 64-pixel tiles too."""
    import torch.nn.functional as F  # noqa: N812

    wf = graphflow.load(REPO / "workflows" / "upscale.json")
    whole = Executor(out_dir=tmp_path).run(wf.with_params(tile=0))
    tiled = Executor(out_dir=tmp_path).run(wf.with_params(tile=64, overlap=8))
    assert whole.ok and tiled.ok, (whole.errors, tiled.errors)
    picture = Executor().run(Workflow.from_dict({"format": 1, "nodes": {"i": {"type": "LoadImage", "inputs": {"path": str(IMAGE)}}},
                                                 "outputs": {"image": "i.image"}}))["image"]
    assert whole["scale"] == 4 and whole["image"].shape == (1, 3, 4 * picture.shape[2], 4 * picture.shape[3])
    assert (whole["image"] - F.interpolate(picture, scale_factor=4, mode="nearest")).abs().max().item() == 0.0
    assert (tiled["image"] - whole["image"]).abs().max().item() == 0.0
    assert len(whole["files"]) == 1 and Path(whole["files"][0]).is_file()


# --- the resize nodes ----------------------------------------------------------------------------

def resize_doc(node: str, port: str, value_from: str, **inputs) -> dict:
    return {"format": 1, "nodes": {
        "src": {"type": "LoadLatents" if port == "latents" else "LoadImage", "inputs": {"path": value_from}},
        "resize": {"type": node, "inputs": {port: {"from": f"src.{port}"}, **inputs}}},
        "outputs": {"out": f"resize.{port}", "src": f"src.{port}"}}


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "bilinear", "bicubic", "area"])
def test_upscale_latents_sizes_and_modes(mode, tmp_path, executor):
    """×2 by default (ComfyUI's LatentUpscaleBy rounding), or to a size in pixels; each mode is
    torch's, without corner alignment: nearest-exact doubles every cell into a 2×2 block."""
    from safetensors.torch import save_file

    latents = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 4, 3, 5)
    save_file({"latents": latents}, str(tmp_path / "l.safetensors"))
    r = run(executor, resize_doc("UpscaleLatents", "latents", str(tmp_path / "l.safetensors"), mode=mode))
    assert r["out"].shape == (2, 4, 6, 10)
    if mode.startswith("nearest"):
        assert torch.equal(r["out"], latents.repeat_interleave(2, -1).repeat_interleave(2, -2))
    sized = run(executor, resize_doc("UpscaleLatents", "latents", str(tmp_path / "l.safetensors"), mode=mode, width=64, height=48))
    assert sized["out"].shape == (2, 4, 6, 8)
    one_side = run(executor, resize_doc("UpscaleLatents", "latents", str(tmp_path / "l.safetensors"), mode=mode, width=80))
    assert one_side["out"].shape == (2, 4, 6, 10)  # the aspect ratio kept: 3 × 10/5


def test_resize_image_stays_in_range(executor):
    r = run(executor, resize_doc("ResizeImage", "image", str(IMAGE), mode="bicubic", scale=1.5))
    h, w = r["src"].shape[-2:]
    assert r["out"].shape == (1, 3, round(h * 1.5), round(w * 1.5))
    assert r["out"].min().item() >= 0.0 and r["out"].max().item() <= 1.0
    half = run(executor, resize_doc("ResizeImage", "image", str(IMAGE), mode="area", width=w // 2, height=h // 2))
    assert torch.allclose(half["out"], r["src"].unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)), atol=1e-6)


def test_an_upscaler_in_a_models_folder_runs_by_name_and_is_listed(tmp_path, monkeypatch, executor):
    """``upscalers/`` in a models folder: a bare name finds the file, and ``graphflow models``
    lists it with its factor from the header, a pickle beside it as refused."""
    from graphflow_nodes.catalog import catalog

    (tmp_path / "upscalers").mkdir()
    save(random_rrdbnet(2, seed=9).state_dict(), tmp_path / "upscalers" / "2x-test.safetensors")
    (tmp_path / "upscalers" / "4x-old.pth").write_bytes(b"not read")
    monkeypatch.setenv("GRAPHFLOW_MODELS", str(tmp_path))
    assert run(executor, upscale_doc("2x-test.safetensors", tile=0))["scale"] == 2
    rows = {r["name"]: r["family"] for r in catalog() if r["kind"] == "upscalers"}
    assert rows["2x-test.safetensors"] == "ESRGAN ×2 (RRDBNet, 1 block of 8 features)"
    assert rows["4x-old.pth"] == "refused: a pickle (.safetensors only)"
    assert rows["nearest-x4-rrdbnet.safetensors"] == "ESRGAN ×4 (RRDBNet, 1 block of 8 features)"
