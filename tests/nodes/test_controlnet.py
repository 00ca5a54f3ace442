"""ControlNet beyond the conformance cells (tests/conformance: the pictures equal diffusers' ControlNet
pipelines): the control image prepared as the pipelines prepare it, Canny through OpenCV, a
single original-layout file, and every bad input refused naming the node and the field."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graphflow
from graphflow import Executor, ValidationFailed, Workflow
from tests.tiny_controlnet import build_tiny_controlnet, write_original_controlnet

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "nodes" / "samples" / "red-circle-on-blue.png"
CONTROLNET = graphflow.load(REPO / "workflows" / "controlnet.json").doc.raw


@pytest.fixture(scope="module")
def nets(tiny_model, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("controlnets")
    folder = build_tiny_controlnet(tiny_model, d / "tiny-controlnet", seed=1)
    return {"folder": folder, "file": write_original_controlnet(folder, d / "tiny-controlnet.safetensors")}


def run(doc: dict, **params):
    return Executor().run(Workflow.from_dict(doc).with_params(**params))


def picture(model: Path, **params) -> torch.Tensor:
    r = run(CONTROLNET, model=str(model), seed=3, steps=2, guidance=5.0, **params)
    assert r.ok, r.errors
    return r["image"]


def error(r) -> tuple[str, str]:
    assert not r.ok
    (e,) = r.errors
    return e.node, e.message


def one_node(node: dict, **inputs):
    """A workflow of one node (plus LoadImage where it reads the sample)."""
    nodes = {"load": {"type": "LoadImage", "inputs": {"path": str(SAMPLE)}}, "n": {"type": node["type"], "inputs": node["inputs"] | inputs}}
    return Workflow.from_dict({"format": 1, "nodes": nodes, "outputs": {k: f"n.{k}" for k in node["outputs"]}})


def test_canny_edges_are_opencvs_on_the_8_bit_picture():
    """CannyEdges is cv2.Canny on the picture's pixels, white edges on black in all three channels."""
    import cv2

    wf = one_node({"type": "CannyEdges", "inputs": {"image": {"from": "load.image"}}, "outputs": ["image"]}, low_threshold=50, high_threshold=150)
    r = Executor().run(wf)
    assert r.ok, r.errors
    edges = cv2.Canny(np.asarray(Image.open(SAMPLE).convert("RGB")), 50, 150)
    assert 0 < (edges > 0).mean() < 0.5  # an outline, not a blank or a fill
    got = r["image"]
    assert got.shape == (1, 3, 64, 64)
    assert torch.equal(got, torch.from_numpy(edges).float().div(255).expand(1, 3, 64, 64))


def test_control_image_is_prepared_as_the_pipelines_prepare_it():
    """ControlImage equals the ControlNet pipelines' control_image_processor on the same file:
    resized with LANCZOS to the asked size, values in [0, 1], one row per picture; its size is
    the picture's (the map's own rounded down to a multiple of 8 when none is asked)."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    wf = one_node({"type": "ControlImage", "inputs": {"image": {"from": "load.image"}}, "outputs": ["control_image", "width", "height"]},
                  width=48, height=40, batch_size=2)
    r = Executor().run(wf)
    assert r.ok, r.errors
    ref = processor.preprocess(Image.open(SAMPLE), height=40, width=48)
    assert (r["width"], r["height"]) == (48, 40)
    assert r["control_image"].shape == (2, 3, 40, 48)
    assert torch.equal(r["control_image"], ref.repeat(2, 1, 1, 1))

    odd = one_node({"type": "ControlImage", "inputs": {"image": {"from": "load.image"}}, "outputs": ["width", "height"]})
    odd.doc.raw["nodes"]["load"]["inputs"] |= {"width": 70, "height": 61}
    r = Executor().run(Workflow.from_dict(odd.doc.raw))
    assert (r["width"], r["height"]) == (64, 56)


def test_a_single_original_layout_file_draws_the_folders_picture(tiny_model, nets):
    """The original layout (control_model.input_hint_block, zero_convs, middle_block_out), built
    with the folder as its config, is the same ControlNet: the same picture, bit for bit."""
    from safetensors import safe_open

    with safe_open(str(nets["file"]), "pt") as f:
        keys = set(f.keys())
    assert {"control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight", "control_model.middle_block_out.0.weight"} <= keys
    assert not any(k.startswith("controlnet_") for k in keys)
    folder = picture(tiny_model, controlnet=str(nets["folder"]))
    assert torch.equal(picture(tiny_model, controlnet=str(nets["file"]), controlnet_config=str(nets["folder"])), folder)
    # the tiny file does not fit the shipped SD 1.5 config it is given by default: refused naming both
    node, msg = error(run(CONTROLNET, model=str(tiny_model), controlnet=str(nets["file"]), steps=1))
    assert node == "apply_control"
    assert f"the ControlNet {nets['file']} does not fit the config" in msg and "controlnet-sd15" in msg


def test_an_sdxl_controlnet_file_in_the_original_layout_draws_its_folders_picture(tiny_sdxl, tmp_path):
    """SDXL ControlNets in the original layout carry their added-condition embedding as
    ``label_emb``, which diffusers' conversion leaves out (its from_single_file fails on the empty
    layer): graphflow maps it, and the file is the folder's ControlNet, bit for bit."""
    folder = build_tiny_controlnet(tiny_sdxl, tmp_path / "xl-controlnet", seed=2)
    file = write_original_controlnet(folder, tmp_path / "xl-controlnet.safetensors")
    doc = graphflow.load(REPO / "workflows" / "controlnet_sdxl.json").doc.raw
    params = dict(model=str(tiny_sdxl), seed=3, steps=2)
    a, b = run(doc, controlnet=str(folder), **params), run(doc, controlnet=str(file), controlnet_config=str(folder), **params)
    assert a.ok and b.ok, (a.errors, b.errors)
    assert torch.equal(a["image"], b["image"])


def test_scale_zero_or_a_window_outside_the_schedule_gives_the_plain_picture(tiny_model, nets):
    """At scale 0, or acting only on steps the schedule does not reach, the ControlNet adds nothing:
    txt2img.json's picture bit for bit; at scale 1 the picture moves."""
    plain = run(graphflow.load(REPO / "workflows" / "txt2img.json").doc.raw, model=str(tiny_model), seed=3, steps=2, guidance=5.0)
    assert plain.ok, plain.errors
    assert torch.equal(picture(tiny_model, controlnet=str(nets["folder"]), scale=0.0), plain["image"])
    # 2 steps: step 0 spans [0, 0.5], step 1 [0.5, 1]; a window of [0, 0.4] holds neither
    assert torch.equal(picture(tiny_model, controlnet=str(nets["folder"]), end=0.4), plain["image"])
    assert (picture(tiny_model, controlnet=str(nets["folder"])) - plain["image"]).abs().max() > 0.05


def test_a_controlnet_of_another_family_is_refused_naming_it(tiny_sdxl, nets):
    """An SD 1.x ControlNet on an SDXL model: refused at the ControlNet naming the family and the
    text widths, not a matrix-shape error inside an attention layer."""
    doc = graphflow.load(REPO / "workflows" / "controlnet_sdxl.json").doc.raw
    node, msg = error(run(doc, model=str(tiny_sdxl), controlnet=str(nets["folder"]), steps=1))
    assert node == "apply_control"
    assert "controlnet: this is an sd ControlNet (text width 32); the embeddings are 80 wide: wire a ControlNet made for" in msg


def test_controlnets_of_the_other_kind_are_refused_naming_them(tiny_model, tiny_sd3, tiny_flux, nets, tmp_path):
    """An SD 1.x ControlNet in the SD3 and Flux workflows, an SD3 ControlNet in the SD 1.x one:
    refused at the first node that runs it, naming both kinds."""
    from tests.tiny_controlnet import build_tiny_sd3_controlnet

    sd3_net = build_tiny_sd3_controlnet(tiny_sd3, tmp_path / "sd3-controlnet", seed=1)
    doc = graphflow.load(REPO / "workflows" / "controlnet_sd3.json").doc.raw
    node, msg = error(run(doc, model=str(tiny_sd3), controlnet=str(nets["folder"]), steps=1))
    assert node == "control_latents"
    assert "controlnet: this is a ControlNetModel (sd family); an SD3 model takes an SD3ControlNetModel" in msg
    doc = graphflow.load(REPO / "workflows" / "controlnet_flux.json").doc.raw
    node, msg = error(run(doc, model=str(tiny_flux), controlnet=str(nets["folder"]), steps=1))
    assert node == "control_latents"
    assert "controlnet: this is a ControlNetModel (sd family); a Flux model takes a FluxControlNetModel" in msg
    node, msg = error(run(CONTROLNET, model=str(tiny_model), controlnet=str(sd3_net), steps=1))
    assert node == "apply_control"
    assert "controlnet: this is an sd3 ControlNet; ApplyControlNet runs SD 1.x, 2.x and SDXL ones (ApplySD3ControlNet runs SD3's, ApplyFluxControlNet Flux's)" in msg


def test_a_control_image_of_another_size_is_refused_naming_it(tiny_model, nets):
    doc = copy.deepcopy(CONTROLNET)
    doc["nodes"]["noise"]["inputs"] |= {"width": 64, "height": 64}
    node, msg = error(run(doc, model=str(tiny_model), controlnet=str(nets["folder"]), steps=1, width=32, height=48))
    assert node == "apply_control"
    assert "control_image: is 32x48 pixels but the picture is 64x64" in msg


def test_bad_files_and_settings_are_refused_before_anything_loads(tiny_model, nets, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.pth").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    node, msg = error(run(CONTROLNET, model=str(tiny_model), controlnet=str(tmp_path / "evil.pth"), steps=1))
    assert node == "controlnet" and "only .safetensors ControlNets are read" in msg and not marker.exists()

    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    node, msg = error(run(CONTROLNET, model=str(tiny_model), controlnet=str(tmp_path / "other.safetensors"), steps=1))
    assert node == "controlnet" and "is not a ControlNet" in msg

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    node, msg = error(run(CONTROLNET, model=str(tiny_model), controlnet=str(tmp_path / "unet"), steps=1))
    assert node == "controlnet" and msg.endswith("holds a UNet2DConditionModel, not a ControlNet (ControlNetModel, SD3ControlNetModel, FluxControlNetModel)")

    for params, field, message in (
        ({"controlnet": str(tmp_path / "nope")}, "inputs.path", f"no ControlNet named '{tmp_path / 'nope'}' (looked in {tmp_path})"),
        ({"controlnet": ""}, "inputs.path", "no ControlNet given: set the workflow's controlnet parameter (--set controlnet=PATH)"),
    ):
        with pytest.raises(ValidationFailed) as e:
            run(CONTROLNET, model=str(tiny_model), steps=1, **params)
        assert [(p.node, p.field, p.message) for p in e.value.problems] == [("controlnet", field, message)]

    node, msg = error(run(CONTROLNET, model=str(tiny_model), controlnet=str(nets["folder"]), steps=1, start=0.8, end=0.5))
    assert node == "apply_control" and "start (0.8) is after end (0.5): the ControlNet would never act" in msg


def test_validate_checks_the_controlnet_workflow_without_loading_torch(tiny_model, nets, tmp_path):
    """``graphflow validate`` reads the ControlNet's config, not its weights: no torch, exit 0; a
    missing ControlNet is exit 2 naming the node and the field."""
    def validate(*sets: str) -> subprocess.CompletedProcess:
        code = ("import sys\nfrom graphflow.cli import main\n"
                f"rc = main(['validate', {str(REPO / 'workflows' / 'controlnet.json')!r}, '--set', 'model={tiny_model}', *{list(sets)!r}])\n"
                "assert 'torch' not in sys.modules\nsys.exit(rc)\n")
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=120)

    ok = validate("--set", f"controlnet={nets['folder']}")
    assert ok.returncode == 0, ok.stderr
    assert f"sd ControlNet (ControlNetModel folder, text width 32) at {nets['folder']}" in ok.stdout + ok.stderr
    bad = validate("--set", f"controlnet={tmp_path / 'nope'}")
    assert bad.returncode == 2
    assert "controlnet" in bad.stderr + bad.stdout and "inputs.path" in bad.stderr + bad.stdout


def test_a_preprocessor_is_a_process_method(tmp_path):
    """A plugin's preprocessor: subclass Preprocessor, give ``process``; the base class does the
    tensors and the batch, and refuses a map of the wrong size naming the class."""
    from graphflow_nodes.control.preprocessors import Preprocessor

    from graphflow import Context

    class Invert(Preprocessor, name="InvertMap"):
        def process(self, pixels, i):
            return 255 - pixels

    class Broken(Preprocessor, name="BrokenMap"):
        def process(self, pixels, i):
            return pixels[::2]

    image = torch.tensor([0.0, 1.0]).repeat(3).reshape(1, 3, 1, 2)
    assert Invert().run(Invert.In(image=image), Context())["image"].flatten().tolist() == [1.0, 0.0] * 3
    with pytest.raises(ValueError, match=r"Broken.process gave a uint8 array of shape \(1, 2, 3\); expected uint8 of shape \(2, 2\)"):
        Broken().run(Broken.In(image=image.expand(1, 3, 2, 2)), Context())


def test_graphflow_models_lists_the_controlnets(nets, tmp_path, monkeypatch):
    """The models folders' controlnet/ is listed with each entry's family, read without a weight;
    a pickle is listed as refused."""
    import shutil

    from graphflow_nodes.catalog import catalog

    (tmp_path / "controlnet").mkdir()
    shutil.copytree(nets["folder"], tmp_path / "controlnet" / "canny")
    shutil.copy(nets["file"], tmp_path / "controlnet" / "canny.safetensors")
    (tmp_path / "controlnet" / "old.pth").write_bytes(b"not read")
    monkeypatch.setenv("GRAPHFLOW_MODELS", str(tmp_path))
    rows = [(r["name"], r["family"]) for r in catalog() if r["kind"] == "controlnet"]
    assert rows == [("canny", "sd ControlNet"), ("canny.safetensors", "sd ControlNet"), ("old.pth", "refused: a pickle (.safetensors only)")]
