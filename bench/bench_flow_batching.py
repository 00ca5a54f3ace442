"""Batched sweeps of the flow families (SD3, Flux), side by side in one process: 8 items through
``Executor(batch=8)`` (``graphflow sweep --batch 8``) against the same sweep unbatched, on random
models a step above the test fixtures (tests/tiny_flow_models.py's encoders and VAE, with a
larger transformer: Flux 4 double + 8 single blocks, SD3 8 joint blocks, both 256 wide), 128 px.

The Flux items differ in seed, guidance (dev's embedding, per sample) and steps (4 or 6: other
schedules, so the two halves sit at other timesteps at every step and still share each call; the
6-step items' last two steps are theirs alone), the SD3 items in seed and prompt. Prints the wall time of each (after a warm-up item that loads the
model), the transformer calls, and per item the largest difference between the batched and the
unbatched picture in 8-bit levels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_flow_batching.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(kind: str, path: Path) -> Path:
    if (path / "model_index.json").exists():
        return path
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from tests.tiny_flow_models import build_tiny_flux, build_tiny_sd3

    if kind == "flux":
        build_tiny_flux(path)
        torch.manual_seed(5)
        t = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
                                   num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
                                   guidance_embeds=True, axes_dims_rope=(16, 24, 24))
    else:
        build_tiny_sd3(path)
        torch.manual_seed(5)
        t = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=8,
                                  attention_head_dim=64, num_attention_heads=4, joint_attention_dim=96,
                                  caption_projection_dim=256, pooled_projection_dim=32, pos_embed_max_size=32)
    shutil.rmtree(path / "transformer")
    t.save_pretrained(path / "transformer", safe_serialization=True)
    return path


def run(kind: str, model: Path, out: Path) -> None:
    import diffusers
    import numpy as np

    from graphflow.engine.executor import Executor
    from graphflow.graph.workflow import Workflow
    from graphflow.sweep import sweep

    calls: list[int] = []
    for cls in (diffusers.SD3Transformer2DModel, diffusers.FluxTransformer2DModel):
        def forward(self, *a, _f=cls.forward, **k):
            calls.append(k["hidden_states"].shape[0])
            return _f(self, *a, **k)
        cls.forward = forward
    if kind == "flux":
        wf = Workflow.load(str(ROOT / "workflows" / "txt2img_flux.json")).with_params(
            model=str(model), width=128, height=128, max_sequence_length=32)
        axes = {"zip": {"seed": list(range(8)), "guidance": [2.0, 3.0, 4.0, 5.0] * 2, "steps": [4] * 4 + [6] * 4}}
    else:
        wf = Workflow.load(str(ROOT / "workflows" / "txt2img_sd3.json")).with_params(
            model=str(model), width=128, height=128, steps=5, max_sequence_length=32)
        axes = {"grid": {"prompt": ["a red circle", "a blue square"], "seed": [0, 1, 2, 3]}}
    pictures, seconds, ncalls = {}, {}, {}
    for b in (1, 8):
        ex = Executor(out_dir=out / f"unused{b}", batch=b)
        list(sweep(wf.with_params(steps=1), grid={"seed": [99]}, out_dir=out / f"warm{b}", executor=ex))
        calls.clear()
        t0 = time.perf_counter()
        results = list(sweep(wf, out_dir=out / f"sweep{b}", executor=ex, **axes))
        seconds[b], ncalls[b] = time.perf_counter() - t0, len(calls)
        assert all(r.status == "ok" for r in results), [r.error for r in results]
        pictures[b] = {r.item: r.image for r in results}
    levels = [int(np.abs(pictures[1][k].astype(int) - pictures[8][k].astype(int)).max()) for k in sorted(pictures[1])]
    equal = min(float((pictures[1][k] == pictures[8][k]).mean()) for k in pictures[1])
    print(f"\n{kind}: 8 items, 128 px, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"  unbatched   {seconds[1]:7.2f} s  {ncalls[1]:3d} transformer calls")
    print(f"  --batch 8   {seconds[8]:7.2f} s  {ncalls[8]:3d} transformer calls  ({seconds[8] / seconds[1]:.2f}x)")
    print(f"  per item, batched vs unbatched, max 8-bit levels: {levels}; pixels equal: at least {100 * equal:.2f} %")


def main() -> None:
    cache = Path(os.environ.get("GRAPHFLOW_BENCH_MODELS", Path(tempfile.gettempdir()) / "graphflow-bench-models"))
    out = Path(tempfile.mkdtemp(prefix="graphflow-bench-flow-batching-"))
    try:
        for kind in ("sd3", "flux"):
            run(kind, build(kind, cache / f"mid-{kind}"), out / kind)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
