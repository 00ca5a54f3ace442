"""Single-file checkpoints: tiny-sd written out in the original Stable Diffusion layout loads
through LoadModel and draws the folder's pictures bit for bit; the family comes from the keys;
pickles are refused unread; the shipped SD 1.5 configs have SD 1.5's sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Context, Executor
from tests.original_layout import write_original_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_SD = REPO / "nodes" / "models" / "tiny-sd"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_original_checkpoint(TINY_SD, tmp_path_factory.mktemp("ckpt") / "tiny-sd.safetensors")


def txt2img(model: str, **params):
    wf = graphflow.load(REPO / "workflows" / "txt2img.json")
    wf.doc.outputs.pop("files", None)
    return wf.with_params(model=model, steps=8, **params)


def test_the_checkpoint_holds_the_original_layout(tiny_ckpt):
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys and "model.diffusion_model.out.2.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys and "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "down_blocks")) for k in keys)


def test_a_single_file_checkpoint_draws_the_folders_picture_bit_for_bit(tiny_ckpt):
    from graphflow_nodes.checkpoint import CheckpointRef
    from graphflow_nodes.models import LoadModel

    refs = LoadModel().run(LoadModel.In(path=str(tiny_ckpt)), Context())
    assert {type(refs[c]) for c in ("unet", "vae", "text_encoder")} == {CheckpointRef} and refs["unet"].family == "sd"
    folder = LoadModel().run(LoadModel.In(path="tiny-sd"), Context())
    assert refs["tokenizer"] == folder["tokenizer"]  # the same tokenizer files: one tokenizer in memory
    assert refs["scheduler_config"] == folder["scheduler_config"]

    ex = Executor()
    a = ex.run(txt2img("tiny-sd", prompt="a yellow square on a black background", seed=4))
    b = ex.run(txt2img(str(tiny_ckpt), prompt="a yellow square on a black background", seed=4))
    assert a.ok and b.ok, (a.errors, b.errors)
    assert torch.equal(a["image"], b["image"])
    assert a["image"].std().item() > 0.05
    for c in ("unet", "vae", "text_encoder"):  # converted weights are the folder's, exactly
        x, y = ex.models.get(refs[c]).state_dict(), ex.models.get(folder[c]).state_dict()
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_lora_patches_a_checkpoint_like_a_folder(tiny_ckpt):
    ex = Executor()
    runs = []
    for model in ("tiny-sd", str(tiny_ckpt)):
        wf = graphflow.load(REPO / "workflows" / "lora.json")
        wf.doc.outputs.pop("files", None)
        r = ex.run(wf.with_params(model=model, steps=8, seed=2))
        assert r.ok, r.errors
        runs.append(r["image"])
    assert torch.equal(*runs)


def _load_error(path: Path) -> str:
    doc = {"format": 1, "nodes": {"m": {"type": "LoadModel", "inputs": {"path": str(path)}}}, "outputs": ["m"]}
    r = Executor().run(graphflow.Workflow.from_dict(doc))
    assert not r.ok and r.errors[0].node == "m"
    return r.errors[0].message


def test_pickled_checkpoints_are_refused_unread(tmp_path):
    marker = tmp_path / "ran"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    for name in ("model.ckpt", "model.pt", "model.bin"):
        (tmp_path / name).write_bytes(payload)
        msg = _load_error(tmp_path / name)
        assert "pickle" in msg and ".safetensors" in msg
    assert not marker.exists()


def test_the_family_comes_from_the_keys(tmp_path):
    from graphflow_nodes.checkpoint import detect_family
    from safetensors.torch import save_file

    unet = "model.diffusion_model.input_blocks.0.0.weight"
    assert detect_family([unet, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]) == "sd1"
    assert detect_family([unet, "cond_stage_model.model.token_embedding.weight"]) == "sd2"
    assert detect_family([unet, "conditioner.embedders.1.model.positional_embedding"]) == "sdxl"
    assert detect_family(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]) is None

    z = torch.zeros(1)
    save_file({unet: torch.zeros(320, 4, 3, 3), "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": z},
              tmp_path / "xl.safetensors")
    msg = _load_error(tmp_path / "xl.safetensors")
    assert "sdxl checkpoint" in msg and "not supported yet" in msg
    save_file({"weight": z}, tmp_path / "other.safetensors")
    assert "not a Stable Diffusion checkpoint" in _load_error(tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 32)
    assert "not a readable safetensors file" in _load_error(tmp_path / "broken.safetensors")


def test_a_checkpoint_whose_shapes_match_no_config_is_refused_naming_them(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file, save_file

    sd = load_file(tiny_ckpt)
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(49408, 96)
    save_file(sd, tmp_path / "odd.safetensors")
    msg = _load_error(tmp_path / "odd.safetensors")
    assert "text width 96" in msg and "match no shipped config" in msg


def test_the_shipped_sd15_configs_build_sd15_sized_models():
    """Built on the meta device (no memory): the parameter counts of SD 1.5's UNet, VAE and CLIP
    ViT-L/14 text encoder, so a real v1-5 checkpoint converts into the right shapes."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    d = REPO / "nodes" / "configs" / "sd15"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(d, subfolder="text_encoder"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(te)) == (859_520_964, 83_653_863, 123_060_480)
    assert json.loads((d / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
