"""Batched sweeps with control inputs: a ControlNet (SD 1.x, SDXL, SD3, Flux) is called once per step
for a group's items, and so is the model it steers (its residuals are per-sample rows like the
latents), as are the UNet's calls with T2I-Adapter maps; each item's picture stays its unbatched
one up to float summation order."""

from __future__ import annotations

from pathlib import Path

import diffusers
import pytest

from graphflow.graph.workflow import Workflow
from tests.sweep.test_batching_flow import assert_same_pictures, pictures
from tests.tiny_controlnet import build_tiny_controlnet, build_tiny_flux_controlnet, build_tiny_sd3_controlnet

ROOT = Path(__file__).resolve().parents[2]
MODELS = (diffusers.ControlNetModel, diffusers.SD3ControlNetModel, diffusers.FluxControlNetModel, diffusers.UNet2DConditionModel,
          diffusers.SD3Transformer2DModel, diffusers.FluxTransformer2DModel)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def calls(monkeypatch) -> dict[str, list[int]]:
    """The batch of every ControlNet, UNet and transformer call from now on, by class: the real
    forward, wrapped (these models take their input by keyword too, which torch's global forward
    hooks do not see)."""
    sizes: dict[str, list[int]] = {}
    for cls in MODELS:
        def forward(self, *args, _forward=cls.forward, _name=cls.__name__, **kwargs):
            x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            sizes.setdefault(_name, []).append(x.shape[0])
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)
    return sizes


def workflow(name: str, **params) -> Workflow:
    return Workflow.load(str(ROOT / "workflows" / f"{name}.json")).with_params(**params)


def test_a_seed_sweep_makes_one_controlnet_call_per_step_for_its_items(tmp_path, tiny_model, calls):
    """Four items (two seeds × two conditioning scales, one in guess mode) through controlnet.json:
    unbatched, a ControlNet and a UNet call per item per step; batched, one of each per step. The
    scale is applied per item after the call, so items of other scales share it; guess mode's
    item brings only its prompt half (one row) and gets its depth-scaled residuals back."""
    net = build_tiny_controlnet(tiny_model, tmp_path / "controlnet", seed=1)
    wf = workflow("controlnet", model=str(tiny_model), controlnet=str(net), steps=2, guidance=5.0)
    axes = {"zip": {"seed": [0, 1, 0, 1], "scale": [1.0, 1.0, 0.5, 0.8], "guess_mode": [False, False, False, True]}}
    alone, _ = pictures(wf, tmp_path / "one", 1, **axes)
    assert calls == {"ControlNetModel": [2, 2, 2, 2, 2, 2, 1, 1], "UNet2DConditionModel": [2] * 8}
    calls.clear()
    batched, ex = pictures(wf, tmp_path / "four", 4, **axes)
    assert calls == {"ControlNetModel": [7, 7], "UNet2DConditionModel": [8, 8]}
    assert_same_pictures(batched, alone)
    # a window that ends early: that item's second step has no residuals, so its UNet call is its own
    calls.clear()
    pictures(wf, tmp_path / "window", 3, zip={"seed": [0, 1, 2], "end": [1.0, 1.0, 0.5]})
    assert calls["ControlNetModel"] == [6, 4] and sorted(calls["UNet2DConditionModel"]) == [2, 4, 6]


def test_sdxl_controlnet_and_unet_batch(tmp_path, tiny_sdxl, calls):
    net = build_tiny_controlnet(tiny_sdxl, tmp_path / "xl-controlnet", seed=2)
    wf = workflow("controlnet_sdxl", model=str(tiny_sdxl), controlnet=str(net), steps=2)
    axes = {"grid": {"seed": [0, 1, 2]}}
    alone, _ = pictures(wf, tmp_path / "one", 1, **axes)
    assert calls == {"ControlNetModel": [2] * 6, "UNet2DConditionModel": [2] * 6}
    calls.clear()
    batched, _ = pictures(wf, tmp_path / "three", 3, **axes)
    assert calls == {"ControlNetModel": [6, 6], "UNet2DConditionModel": [6, 6]}
    assert_same_pictures(batched, alone)


def test_sd3_and_flux_controlnets_batch_with_their_transformers(tmp_path, tiny_sd3, tiny_flux, calls):
    sd3 = workflow("controlnet_sd3", model=str(tiny_sd3), controlnet=str(build_tiny_sd3_controlnet(tiny_sd3, tmp_path / "sd3-net", seed=1)),
                   steps=2, width=64, height=64, max_sequence_length=16)
    flux = workflow("controlnet_flux", model=str(tiny_flux), controlnet=str(build_tiny_flux_controlnet(tiny_flux, tmp_path / "flux-net", seed=1)),
                    steps=2, width=64, height=64, max_sequence_length=16)
    axes = {"zip": {"seed": [0, 1, 2], "scale": [1.0, 0.5, 1.0]}}
    for name, wf, net, model, rows in (("sd3", sd3, "SD3ControlNetModel", "SD3Transformer2DModel", 2),
                                       ("flux", flux, "FluxControlNetModel", "FluxTransformer2DModel", 1)):
        calls.clear()
        alone, _ = pictures(wf, tmp_path / f"{name}-one", 1, **axes)
        assert calls == {net: [rows] * 6, model: [rows] * 6}, name
        calls.clear()
        batched, _ = pictures(wf, tmp_path / f"{name}-three", 3, **axes)
        assert calls == {net: [3 * rows] * 2, model: [3 * rows] * 2}, name
        assert_same_pictures(batched, alone)


def test_t2i_and_ip_adapter_inputs_batch_with_the_unet(tmp_path, tiny_model, calls):
    """The adapter's feature maps and the IP-Adapter's image prompts are per-sample rows of the
    UNet's call like the latents: one call per step for the group (the adapters themselves run
    once, on the shared control or reference image, and are cached)."""
    from tests.tiny_adapters import build_tiny_ip_adapter, build_tiny_t2i_adapter

    t2i = workflow("t2i_adapter", model=str(tiny_model), adapter=str(build_tiny_t2i_adapter(tmp_path / "adapter", tiny_model, seed=1)),
                   steps=2, width=64, height=64)
    ip = workflow("ip_adapter", model=str(tiny_model), ip_adapter=str(build_tiny_ip_adapter(tmp_path / "ip" / "a.safetensors", tiny_model, seed=1)),
                  ip_adapter_scale=0.6, reference_image=str(ROOT / "nodes" / "samples" / "yellow-square-on-green.png"), steps=2)
    axes = {"grid": {"seed": [0, 1, 2]}}
    for name, wf in (("t2i", t2i), ("ip", ip)):
        calls.clear()
        alone, _ = pictures(wf, tmp_path / f"{name}-one", 1, **axes)
        assert calls["UNet2DConditionModel"] == [2] * 6, name
        calls.clear()
        batched, _ = pictures(wf, tmp_path / f"{name}-three", 3, **axes)
        assert calls["UNet2DConditionModel"] == [6, 6], name
        assert_same_pictures(batched, alone)
