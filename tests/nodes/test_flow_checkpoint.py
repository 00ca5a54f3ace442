"""Single-file FLUX.1 transformers (the original layout, as flux1-dev.safetensors ships): loaded
with a Flux folder's VAE and encoders (LoadModel's config), the picture equal to the folder's bit
for bit; the shipped configs chosen by the file's shapes; what validate says; refusals by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, Workflow
from tests.flow_original_layout import flux_to_original, write_flux_transformer_file

REPO = Path(__file__).resolve().parents[2]


def picture(model: str, config: str = "", **params) -> torch.Tensor:
    doc = graphflow.load(REPO / "workflows" / "txt2img_flux.json").doc.raw
    doc["nodes"]["model"]["inputs"]["config"] = config
    r = Executor().run(Workflow.from_dict(doc).with_params(model=model, steps=2, width=32, height=32, seed=4, **params))
    assert r.ok, r.errors
    return r.outputs["image"]


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_a_flux_transformer_file_draws_its_folders_picture_bit_for_bit(tiny_flux, tmp_path, prefix):
    path = write_flux_transformer_file(tiny_flux, tmp_path / "flux1-tiny.safetensors", prefix)
    assert torch.equal(picture(str(path), str(tiny_flux)), picture(str(tiny_flux)))


def test_the_conversion_round_trips_every_tensor(tiny_flux):
    from diffusers import FluxTransformer2DModel
    from graphflow_nodes.loading.flow_checkpoint import flux_to_diffusers

    state = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer").state_dict()
    back = flux_to_diffusers(flux_to_original(state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_the_shipped_configs_fit_the_released_shapes():
    """FLUX.1 dev's and schnell's shapes (an empty model of the shipped config, mapped to the
    original keys) pick their own shipped config; the header is all that is read."""
    from diffusers import FluxTransformer2DModel
    from graphflow_nodes.loading.flow_checkpoint import _facts_of_config, _facts_of_file, _transformer_config
    from graphflow_nodes.loading.files import CONFIGS_DIR

    for name, guidance in (("flux-dev", True), ("flux-schnell", False)):
        cfg = _transformer_config(CONFIGS_DIR / name)
        with torch.device("meta"):
            model = FluxTransformer2DModel.from_config(cfg)
        shapes = {k: tuple(v.shape) for k, v in flux_to_original(model.state_dict()).items()}
        facts = _facts_of_file(shapes)
        assert facts == _facts_of_config(cfg) and facts["guidance"] is guidance
        assert (facts["width"], facts["double blocks"], facts["single blocks"], facts["text width"]) == (3072, 19, 38, 4096)


def test_a_flux_file_without_a_folder_is_refused_naming_config(tiny_flux, tmp_path):
    path = write_flux_transformer_file(tiny_flux, tmp_path / "flux1-alone.safetensors")
    doc = graphflow.load(REPO / "workflows" / "txt2img_flux.json").doc.raw
    r = Executor().run(Workflow.from_dict(doc).with_params(model=str(path), steps=1, width=32, height=32))
    assert not r.ok
    msg = str(r.errors[0])
    assert "node 'model' (LoadModel)" in msg and "flux1-alone.safetensors is a Flux transformer alone" in msg
    assert "set LoadModel's config to a Flux diffusers folder" in msg


def test_validate_says_a_flux_or_sd3_file_is_one(tiny_flux, tiny_sd3, tmp_path):
    from graphflow_nodes.loading.descriptions import describe_model_folder

    from tests.flow_original_layout import write_sd3_all_in_one

    path = write_flux_transformer_file(tiny_flux, tmp_path / "flux1-v.safetensors")
    assert describe_model_folder(str(path)).startswith("flux model (a single FLUX.1 transformer file in the original layout")
    path = write_sd3_all_in_one(tiny_sd3, tmp_path / "sd3-v.safetensors")
    assert describe_model_folder(str(path)).startswith("sd3 model (a single-file SD3/SD3.5 checkpoint with its VAE, clip_l, clip_g, t5xxl")


def test_a_flux_file_that_fits_neither_folder_nor_shipped_configs_is_refused(tiny_flux, tiny_flux_schnell, tmp_path):
    """The dev-shaped file (guidance embedding) with the schnell-shaped folder's encoders: its
    transformer config fits neither the folder's nor FLUX.1's full size."""
    path = write_flux_transformer_file(tiny_flux, tmp_path / "flux1-dev-tiny.safetensors")
    with pytest.raises(Exception, match=r"flux1-dev-tiny.safetensors \(a Flux transformer: width 32.*guidance True\) fits neither"):
        from graphflow_nodes.loading.checkpoint import checkpoint_refs

        checkpoint_refs(path, str(tiny_flux_schnell))


# --- SD3 / SD3.5 all-in-one files ----------------------------------------------------------------

def sd3_picture(model: str, config: str = "") -> torch.Tensor:
    doc = graphflow.load(REPO / "workflows" / "txt2img_sd3.json").doc.raw
    doc["nodes"]["model"]["inputs"]["config"] = config
    r = Executor().run(Workflow.from_dict(doc).with_params(model=model, steps=2, width=32, height=32, seed=4))
    assert r.ok, r.errors
    return r.outputs["image"]


@pytest.fixture(scope="module")
def sd3_folder_picture(tiny_sd3):
    return sd3_picture(str(tiny_sd3))


@pytest.mark.parametrize("encoders", [True, False], ids=["all-in-one", "transformer-and-vae"])
def test_an_sd3_single_file_draws_its_folders_picture_bit_for_bit(tiny_sd3, sd3_folder_picture, tmp_path, encoders):
    """With its CLIP and T5 encoders in the file (ComfyUI's names), or without them (then the
    config folder's are used)."""
    from tests.flow_original_layout import write_sd3_all_in_one

    path = write_sd3_all_in_one(tiny_sd3, tmp_path / "sd3.5-tiny.safetensors", encoders=encoders)
    assert torch.equal(sd3_picture(str(path), str(tiny_sd3)), sd3_folder_picture)


def test_an_sd3_file_without_config_that_fits_no_shipped_config_is_refused(tiny_sd3, tmp_path):
    from graphflow_nodes.loading.checkpoint import checkpoint_refs
    from graphflow_nodes.loading.families import ModelError

    from tests.flow_original_layout import write_sd3_all_in_one

    path = write_sd3_all_in_one(tiny_sd3, tmp_path / "sd3-odd.safetensors", encoders=False)
    with pytest.raises(ModelError, match=r"sd3-odd.safetensors \(an SD3 transformer: width 32, blocks 2.*fits not a shipped config "
                                         r"\(sd3.5-large, sd3.5-medium\); LoadModel's config must name an SD3 diffusers folder"):
        checkpoint_refs(path)
    with pytest.raises(ModelError, match=r"sd3-odd.safetensors \(an SD3 transformer: width 32.*fits not the transformer of .*sd3.5-large"):
        checkpoint_refs(path, "sd3.5-large")  # a shipped config named: held to the file's shapes


def test_the_shipped_sd3_configs_fit_the_released_shapes():
    """SD3.5 Large and Medium (an empty model of each shipped config, in the original keys) pick
    their own config from the header's shapes."""
    from diffusers import SD3Transformer2DModel
    from graphflow_nodes.loading.files import CONFIGS_DIR
    from graphflow_nodes.loading.sd3_checkpoint import _facts_of_config, _facts_of_file

    from tests.flow_original_layout import sd3_to_original

    for name, blocks, dual in (("sd3.5-large", 38, 0), ("sd3.5-medium", 24, 13)):
        with torch.device("meta"):  # shapes only (the position table is not even computed)
            model = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(CONFIGS_DIR / name, subfolder="transformer"))
        shapes = {k: tuple(v.shape) for k, v in sd3_to_original(model.state_dict()).items()}
        facts = _facts_of_file(shapes)
        assert facts == _facts_of_config(CONFIGS_DIR / name)
        assert (facts["blocks"], facts["dual attention blocks"], facts["qk norm"]) == (blocks, dual, True)


def test_a_pickled_flow_checkpoint_is_refused_unread(tmp_path):
    from graphflow_nodes.loading.checkpoint import checkpoint_refs
    from graphflow_nodes.loading.families import ModelError

    bad = tmp_path / "flux1-dev.ckpt"
    bad.write_bytes(b"not read")
    with pytest.raises(ModelError, match=r"flux1-dev.ckpt: .ckpt checkpoints are Python pickles"):
        checkpoint_refs(bad)
