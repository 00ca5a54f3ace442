"""ComfyUI's split loaders: UNETLoader (a FLUX.1 transformer file), DualCLIPLoader, TripleCLIPLoader
and VAELoader, each part a file of its own as ComfyUI's models folders hold them, assembled with
a diffusers folder's configs and tokenizers (the ``config`` param). The same prompt through
CheckpointLoaderSimple on the folder is the reference: the pictures are compared by number."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphflow import Executor, Workflow
from graphflow_nodes.comfy.translate import CLASS_TYPES, DEFAULTS, OUTPUT_NODES, TranslationError, translate
from tests.flow_original_layout import write_flux_transformer_file, write_part_files

DATA = Path(__file__).resolve().parents[1] / "data" / "comfy"


def prompt(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def split(p: dict, ckpt: str, clip: dict | None = None, vae: str | None = None, unet: dict | None = None) -> dict:
    """The prompt with CheckpointLoaderSimple ``ckpt``'s CLIP, VAE (and with ``unet`` its MODEL)
    read from split loaders (nodes 20, 21, 22) instead."""
    q = copy.deepcopy(p)
    moved = {}
    if clip is not None:
        q["20"], moved[1] = clip, ["20", 0]
    if vae is not None:
        q["21"], moved[2] = {"class_type": "VAELoader", "inputs": {"vae_name": vae}}, ["21", 0]
    if unet is not None:
        q["22"], moved[0] = unet, ["22", 0]
    for body in q.values():
        for name, v in body["inputs"].items():
            if isinstance(v, list) and v[0] == ckpt and v[1] in moved:
                body["inputs"][name] = moved[v[1]]
    if unet is not None:
        del q[ckpt]
    return q


def picture(p: dict, family: str, **params) -> tuple[torch.Tensor, dict, dict]:
    doc, defaults, _ = translate(p, family_of=lambda name: family)
    out = next(cid for cid, b in p.items() if b["class_type"] == "SaveImage")
    decoded = p[out]["inputs"]["images"][0]
    del doc["nodes"][f"n{out}"]
    doc["outputs"] = {"image": f"n{decoded}.image"}
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**defaults, **params}))
    assert r.ok, r.errors
    return r["image"], doc, defaults


@pytest.fixture(scope="module")
def flux_parts(tiny_flux, tmp_path_factory):
    out = tmp_path_factory.mktemp("flux-parts")
    return {**write_part_files(tiny_flux, out), "unet": write_flux_transformer_file(tiny_flux, out / "flux1-tiny.safetensors")}


def test_flux_split_loaders_draw_the_folders_picture_bit_for_bit(tiny_flux, flux_parts):
    p = prompt("flux")
    q = split(p, "4", clip={"class_type": "DualCLIPLoader", "inputs": {"clip_name1": str(flux_parts["t5xxl"]),  # T5 first: any order
                                                                        "clip_name2": str(flux_parts["clip_l"]), "type": "flux"}},
              vae=str(flux_parts["vae"]), unet={"class_type": "UNETLoader", "inputs": {"unet_name": str(flux_parts["unet"]), "weight_dtype": "default"}})
    size = {"width": 32, "height": 32, "steps": 2}
    want, _, _ = picture(p, "flux", checkpoint=str(tiny_flux), **size)
    got, doc, params = picture(q, "flux", config=str(tiny_flux), **size)
    assert torch.equal(got, want)  # measured: 0.0
    assert doc["nodes"]["n22"] == {"type": "LoadModel", "inputs": {"path": {"param": "unet"}, "config": {"param": "config"}}}
    assert doc["nodes"]["n20"] == {"type": "LoadTextEncoderFiles", "inputs": {"file_1": {"param": "clip_1"}, "file_2": {"param": "clip_2"},
                                                                             "config": {"param": "config"}}}
    assert doc["nodes"]["n21"] == {"type": "LoadVAEFile", "inputs": {"path": {"param": "vae"}, "config": {"param": "config"}}}
    assert "config" not in params and params["vae"] == str(flux_parts["vae"]) and "checkpoint" not in params
    # the config param left empty: refused when the workflow is validated (test_validate_refuses_...)


def test_part_files_load_with_every_weight_equal_whatever_their_layout(tiny_flux, flux_parts, tmp_path):
    """The VAE under ``first_stage_model.`` or in diffusers' own layout, a T5 under ComfyUI's
    all-in-one prefix: the same weights as the folder's."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file
    from transformers import T5EncoderModel

    from graphflow_nodes.loading.parts import PartFileRef, load_part

    vae = AutoencoderKL.from_pretrained(tiny_flux, subfolder="vae").state_dict()
    prefixed = write_part_files(tiny_flux, tmp_path, vae_prefix="first_stage_model.")["vae"]
    diffusers_layout = tmp_path / "vae-diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in vae.items()}, str(diffusers_layout))
    for path in (flux_parts["vae"], prefixed, diffusers_layout):
        got = load_part(PartFileRef("x", str(path), "vae", "flux", config=str(tiny_flux)), "cpu", "float32").state_dict()
        assert got.keys() == vae.keys() and all(torch.equal(got[k], vae[k]) for k in vae), path
    t5 = T5EncoderModel.from_pretrained(tiny_flux, subfolder="text_encoder_2").state_dict()
    wrapped = tmp_path / "t5-wrapped.safetensors"
    save_file({"text_encoders.t5xxl.transformer." + k: v.clone() for k, v in load_file(flux_parts["t5xxl"]).items()}, str(wrapped))
    got = load_part(PartFileRef("x", str(wrapped), "text_encoder_2", "flux", config=str(tiny_flux)), "cpu", "float32").state_dict()
    assert all(torch.equal(got[k], t5[k]) for k in t5)


def test_sdxl_dual_clip_and_vae_loaders_draw_the_folders_picture(tiny_sdxl, tmp_path):
    parts = write_part_files(tiny_sdxl, tmp_path)
    p = prompt("sdxl")
    q = split(p, "4", clip={"class_type": "DualCLIPLoader", "inputs": {"clip_name1": str(parts["clip_g"]), "clip_name2": str(parts["clip_l"]),
                                                                        "type": "sdxl"}}, vae=str(parts["vae"]))
    size = {"checkpoint": str(tiny_sdxl), "width": 64, "height": 64, "steps": 2}
    want, _, _ = picture(p, "sdxl", **size)
    got, _, _ = picture(q, "sdxl", config=str(tiny_sdxl), **size)
    assert (got - want).abs().max() < 1e-5  # measured 0.0


def test_sd3_triple_clip_loader_draws_the_folders_picture(tiny_sd3, tmp_path):
    parts = write_part_files(tiny_sd3, tmp_path)
    p = prompt("sd3")
    q = split(p, "4", clip={"class_type": "TripleCLIPLoader", "inputs": {
        "clip_name1": str(parts["t5xxl"]), "clip_name2": str(parts["clip_g"]), "clip_name3": str(parts["clip_l"])}})
    size = {"checkpoint": str(tiny_sd3), "width": 32, "height": 32, "steps": 2}
    want, _, _ = picture(p, "sd3", **size)
    got, doc, _ = picture(q, "sd3", config=str(tiny_sd3), **size)
    assert "transformer" not in doc["nodes"]["n6_t5"]["inputs"]  # T5 is there: no zeros to size
    assert (got - want).abs().max() < 1e-5  # measured 0.0


def test_a_file_that_fits_no_encoder_is_refused_naming_the_widths(tiny_flux, tiny_sd3, flux_parts, tmp_path):
    sd3_clip_g = write_part_files(tiny_sd3, tmp_path)["clip_g"]
    q = split(prompt("flux"), "4", clip={"class_type": "DualCLIPLoader", "inputs": {
        "clip_name1": str(flux_parts["t5xxl"]), "clip_name2": str(sd3_clip_g), "type": "flux"}})
    doc, params, _ = translate(q, family_of=lambda name: "flux")
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_flux), "config": str(tiny_flux)}))
    assert not r.ok
    assert "clip_g.safetensors (a CLIP encoder of width 48) fits none of the flux encoders" in str(r.errors)
    assert "text_encoder CLIP width 32, text_encoder_2 T5 width 32" in str(r.errors)


def test_what_has_no_translation_is_refused_by_node_all_at_once():
    q = split(prompt("flux"), "4", clip={"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b", "type": "hunyuan_video"}},
              unet={"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "fp8_e4m3fn"}})
    q["23"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "v1-5.safetensors"}}
    q["24"] = {"class_type": "SaveImage", "inputs": {"images": ["25", 0]}}
    q["25"] = {"class_type": "VAEDecode", "inputs": {"samples": ["26", 0], "vae": ["21", 0]}}
    q["26"] = {"class_type": "KSampler", "inputs": {**q["3"]["inputs"], "model": ["23", 0]}}
    q["21"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taef1"}}
    q["8"]["inputs"]["vae"] = ["21", 0]
    with pytest.raises(TranslationError) as e:
        translate(q, family_of=lambda name: "sd" if name.startswith("v1") else None)
    errors = {nid: x["errors"][0]["message"] for nid, x in e.value.node_errors.items()}
    assert errors == {"20": "DualCLIPLoader type hunyuan_video has no translation", "22": "weight_dtype fp8_e4m3fn has no translation",
                      "23": "unet_name is an SD 1.x/2.x file; UNETLoader is translated for FLUX.1 transformer files",
                      "21": "vae_name taef1 (one of ComfyUI's built-in tiny or pixel-space VAEs) has no translation"}


def test_object_info_describes_the_split_loaders():
    from graphflow.server.routes.comfy import described

    info = described(CLASS_TYPES, DEFAULTS, OUTPUT_NODES)
    assert info["UNETLoader"]["input"]["required"]["weight_dtype"] == [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {"default": "default"}]
    assert info["DualCLIPLoader"]["output"] == ["CLIP"] and info["VAELoader"]["output"] == ["VAE"]
    assert list(info["TripleCLIPLoader"]["input"]["required"]) == ["clip_name1", "clip_name2", "clip_name3"]


def test_part_names_are_found_in_a_comfyui_models_folder(tmp_path, monkeypatch):
    from graphflow_nodes.loading.files import resolve_model_path

    for sub in ("clip", "vae", "diffusion_models", "checkpoints"):
        (tmp_path / sub).mkdir()
    (tmp_path / "clip" / "t5xxl_fp16.safetensors").write_bytes(b"x")
    (tmp_path / "vae" / "ae.safetensors").write_bytes(b"x")
    (tmp_path / "diffusion_models" / "flux1-dev.safetensors").write_bytes(b"x")
    monkeypatch.setenv("GRAPHFLOW_MODELS", str(tmp_path))
    for sub, name in (("clip", "t5xxl_fp16.safetensors"), ("vae", "ae.safetensors"), ("diffusion_models", "flux1-dev.safetensors")):
        assert resolve_model_path(name) == tmp_path / sub / name
    with pytest.raises(Exception, match="missing.safetensors"):
        resolve_model_path("missing.safetensors")


def test_diff_controlnet_loader_is_controlnet_loader_and_a_difference_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from graphflow_nodes.control.controlnet import read_controlnet
    from graphflow_nodes.loading.families import ModelError

    p = prompt("controlnet_apply")
    want, want_params, _ = translate(p)
    p["11"] = {"class_type": "DiffControlNetLoader", "inputs": {"model": ["4", 0], "control_net_name": "control_sd15_canny.pth"}}
    got, params, _ = translate(p)
    assert got["nodes"] == want["nodes"] and params == want_params
    flux = prompt("flux")
    flux["30"] = {"class_type": "DiffControlNetLoader", "inputs": {"model": ["4", 0], "control_net_name": "flux-controlnet.safetensors"}}
    flux["31"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["30", 0], "image": ["32", 0]}}
    flux["32"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
    flux["11"]["inputs"]["conditioning"] = ["31", 0]
    with pytest.raises(TranslationError) as e:  # ComfyUI itself needs ControlNetApplyAdvanced's VAE for a FLUX.1 ControlNet
        translate(flux, family_of=lambda name: "flux")
    assert e.value.node_errors["3"]["errors"][0]["message"] == ("a FLUX.1 ControlNet is translated from ControlNetApplyAdvanced with its vae "
                                                                "linked, on both conditionings")
    diff = tmp_path / "diff_control_sd15_canny.safetensors"
    save_file({"zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1), "difference": torch.zeros(1)}, str(diff))
    with pytest.raises(ModelError, match="diff_control_sd15_canny.safetensors is a weight-difference ControlNet"):
        read_controlnet(diff)


def validate(path: Path, *args: str) -> subprocess.CompletedProcess:
    """``graphflow validate`` as a process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "graphflow.cli", "validate", str(path), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_validate_refuses_split_loaders_without_config_and_pickled_parts_before_anything_runs(tiny_flux, flux_parts, tmp_path):
    """The old translation gave ``config`` an empty default, which validation passed and the
    loaders refused only when the workflow ran; now each split loader's ``config`` is named at
    validation (exit 2), set or not, and so is a part file that is a pickle."""
    q = split(prompt("flux"), "4", clip={"class_type": "DualCLIPLoader", "inputs": {"clip_name1": str(flux_parts["t5xxl"]),
                                                                                      "clip_name2": str(flux_parts["clip_l"]), "type": "flux"}},
              vae=str(flux_parts["vae"]), unet={"class_type": "UNETLoader", "inputs": {"unet_name": str(flux_parts["unet"]), "weight_dtype": "default"}})
    path = tmp_path / "split.json"
    path.write_text(json.dumps(q))
    r = validate(path)
    assert r.returncode == 2, r.stdout + r.stderr
    for node in ("n20", "n21", "n22"):  # ComfyUI nodes 20 (DualCLIPLoader), 21 (VAELoader), 22 (UNETLoader)
        assert f"[missing_param] node '{node}', field 'inputs.config': parameter 'config' has no default; set it" in r.stderr
    r = validate(path, "--set", "config=")
    assert r.returncode == 2
    for node in ("n20", "n21"):
        assert (f"[refused_file] node '{node}', field 'inputs.config': no diffusers folder given: the part files are built with the "
                "configs and tokenizers of a diffusers folder of the model's architecture") in r.stderr
    r = validate(path, "--set", f"config={tiny_flux}")
    assert r.returncode == 0, r.stderr
    assert "split.json: ok (19 nodes" in r.stdout
    pickle = tmp_path / "t5xxl.pt"
    pickle.write_bytes(b"not read")
    r = validate(path, "--set", f"config={tiny_flux}", "--set", f"clip_1={pickle}")
    assert r.returncode == 2
    assert ("[refused_file] node 'n20', field 'inputs.file_1': t5xxl.pt: .pt files are Python pickles, which can run code when loaded; "
            "graphflow reads .safetensors only") in r.stderr
