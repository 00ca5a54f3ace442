"""Batched sweeps of the flow families (SD3, Flux): one transformer call per step for a group's
items, each item's picture its unbatched one up to float summation order."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest

from graphflow.engine.executor import Executor
from graphflow.graph.workflow import Workflow
from graphflow.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.chdir(tmp_path)


def transformer_batches(monkeypatch) -> list[int]:
    """The batch of every SD3/Flux transformer call from now on (the real forward, counted: these
    models take keyword arguments, which torch's global forward hooks do not see)."""
    sizes: list[int] = []
    for cls in (diffusers.SD3Transformer2DModel, diffusers.FluxTransformer2DModel):
        def forward(self, *args, _forward=cls.forward, **kwargs):
            sizes.append(kwargs["hidden_states"].shape[0])
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)
    return sizes


def pictures(wf: Workflow, out: Path, batch: int, **axes) -> tuple[dict, Executor]:
    ex = Executor(out_dir=out / "unused", batch=batch)
    results = list(sweep(wf, out_dir=out / "sw", executor=ex, **axes))
    assert [r.status for r in results] == ["ok"] * len(results), [r.error for r in results]
    return {r.item: r.image for r in results}, ex


def assert_same_pictures(batched: dict, alone: dict) -> None:
    """Float summation order only: at most one 8-bit level, nearly every pixel equal."""
    assert sorted(batched) == sorted(alone)
    for k, img in batched.items():
        d = np.abs(img.astype(int) - alone[k].astype(int))
        assert d.max() <= 1, (k, d.max())
        assert (d == 0).mean() > 0.999, (k, (d == 0).mean())


def test_sd3_sweep_makes_one_transformer_call_per_step_for_its_items(tmp_path, tiny_sd3, monkeypatch):
    wf = Workflow.load(str(ROOT / "workflows" / "txt2img_sd3.json")).with_params(model=str(tiny_sd3), steps=2)
    grid = {"prompt": ["a red circle", "a cat"], "seed": [0, 1, 2]}
    calls = transformer_batches(monkeypatch)
    alone, _ = pictures(wf, tmp_path / "one", 1, grid=grid)
    assert calls == [2] * 12  # 6 items × 2 steps, each its own CFG pair
    calls.clear()
    batched, ex = pictures(wf, tmp_path / "four", 4, grid=grid)
    assert calls == [8, 8, 4, 4]  # chunks of 4 and 2 items, 2 steps each, CFG doubling each item
    # the first chunk's six encoder calls (three encoders, each for the negative prompt and the
    # prompts), two steps and the VAE decode (the shared Decode); the second chunk's prompts are cached
    assert ex.batch_sizes == [4] * 9 + [2, 2, 2]
    assert_same_pictures(batched, alone)


def test_flux_items_with_other_guidance_and_steps_batch_together(tmp_path, tiny_flux, monkeypatch):
    """Flux embeds the guidance and the timestep per sample: items that differ in either (here:
    2 against 3 steps, so different timesteps at every step) still share one call per step."""
    wf = Workflow.load(str(ROOT / "workflows" / "txt2img_flux.json")).with_params(
        model=str(tiny_flux), width=64, height=64, max_sequence_length=16)
    axes = {"zip": {"seed": [0, 1, 2], "guidance": [2.0, 3.5, 5.0], "steps": [2, 3, 2]}}
    calls = transformer_batches(monkeypatch)
    alone, _ = pictures(wf, tmp_path / "one", 1, **axes)
    assert calls == [1] * 7
    calls.clear()
    batched, ex = pictures(wf, tmp_path / "three", 3, **axes)
    assert calls == [3, 3, 1]  # the 3-step item's last step alone
    assert_same_pictures(batched, alone)
    # a different size: other position ids, its own call; the others still batch
    calls.clear()
    sized, _ = pictures(wf.with_params(steps=1), tmp_path / "sizes", 3, zip={"seed": [0, 1, 2], "width": [64, 64, 32]})
    assert sorted(calls) == [1, 2] and [sized[k].shape[:2] for k in range(3)] == [(64, 64), (64, 64), (64, 32)]
