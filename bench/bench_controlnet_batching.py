"""A ControlNet sweep batched, side by side in one process: 8 items (2 prompts x 4 seeds) of
workflows/controlnet.json through ``Executor(batch=8)`` (``graphflow sweep --batch 8``: one
ControlNet call and one UNet call per step for all 8) against the same sweep unbatched (a ControlNet
and a UNet call per item per step) and against diffusers' StableDiffusionControlNetPipeline called
once per item. On bench_batching.py's mid-size random model of SD 1.5's architecture with a
ControlNet made from its UNet (tests/tiny_controlnet.py's recipe: ``ControlNetModel.from_unet``, the
zero layers randomised), 128 px, Canny edges of the shipped sample as the control image.

The variants alternate over ``--rounds`` rounds after a warm-up item each (the models load), each
round with new seeds; the best round of each is printed, with the model calls it made and, per
item, the largest difference between the batched and the unbatched picture in 8-bit levels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_controlnet_batching.py [--steps N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a red circle", "a blue square"]
SEEDS = [0, 1, 2, 3]
SIZE = 128
GUIDANCE = 5.0


def counting() -> dict[str, list[int]]:
    """The batch of every ControlNet and UNet call from now on, by class (the forward, wrapped)."""
    import diffusers

    sizes: dict[str, list[int]] = {}
    for cls in (diffusers.ControlNetModel, diffusers.UNet2DConditionModel):
        def forward(self, *args, _forward=cls.forward, _name=cls.__name__, **kwargs):
            sizes.setdefault(_name, []).append((args[0] if args else kwargs["sample"]).shape[0])
            return _forward(self, *args, **kwargs)

        cls.forward = forward
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import cv2
    import numpy as np
    import torch
    from diffusers import ControlNetModel, LMSDiscreteScheduler, StableDiffusionControlNetPipeline
    from PIL import Image

    import graphflow
    from bench.bench_batching import build_mid
    from graphflow.engine.executor import Executor
    from graphflow.sweep import sweep
    from tests.tiny_controlnet import build_tiny_controlnet

    cache = Path(os.environ.get("GRAPHFLOW_BENCH_MODELS", Path(tempfile.gettempdir()) / "graphflow-bench-models"))
    model = build_mid(cache / "mid-sd15")
    net = cache / "mid-sd15-controlnet"
    if not (net / "config.json").exists():
        build_tiny_controlnet(model, net, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="graphflow-bench-controlnet-"))
    wf = graphflow.load(ROOT / "workflows" / "controlnet.json").with_params(
        model=str(model), controlnet=str(net), steps=args.steps, guidance=GUIDANCE, scheduler="lms", width=SIZE, height=SIZE)
    calls = counting()
    exs = {b: Executor(out_dir=tmp / f"unused-{b}", batch=b) for b in (1, 8)}
    for ex in exs.values():
        assert ex.run(wf.with_params(prompt="warm-up", seed=99, steps=1)).ok

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        model, controlnet=ControlNetModel.from_pretrained(net), safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    sample = np.asarray(Image.open(ROOT / "nodes" / "samples" / "red-circle-on-blue.png").convert("RGB").resize((SIZE, SIZE)))
    edges = Image.fromarray(np.stack([cv2.Canny(sample, 100, 200)] * 3, -1))
    pipe("warm-up", image=edges, num_inference_steps=1, guidance_scale=GUIDANCE, height=SIZE, width=SIZE, output_type="np")

    def graph(b: int, k: int) -> dict:
        out = tmp / f"sw-{b}-{k}"
        seeds = [s + 10 * k for s in SEEDS]  # new seeds each round: the executor's cache holds the last round's pictures
        rs = list(sweep(wf, grid={"prompt": PROMPTS, "seed": seeds}, out_dir=out, executor=exs[b]))
        assert all(r.status == "ok" for r in rs), [r.error for r in rs]
        return {r.item: r.image for r in rs}

    def loop(k: int) -> None:
        for p in PROMPTS:
            for s in SEEDS:
                pipe(p, image=edges, num_inference_steps=args.steps, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                     generator=torch.Generator().manual_seed(s + 10 * k), output_type="np")

    best: dict[str, float] = {}
    made: dict[str, dict] = {}
    pictures: dict[int, dict] = {}
    for k in range(args.rounds):
        order = ("b1", "b8", "loop") if k % 2 == 0 else ("loop", "b8", "b1")
        for v in order:
            for c in calls.values():
                c.clear()
            t0 = time.perf_counter()
            if v == "loop":
                loop(k)
            else:
                pictures[int(v[1:])] = graph(int(v[1:]), k)
            best[v] = min(best.get(v, float("inf")), time.perf_counter() - t0)
            made[v] = {name: (len(c), max(c)) for name, c in calls.items() if c}
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nControlNet sweep, 2 prompts x 4 seeds, {args.steps} LMS steps, {SIZE} px, mid-size SD 1.5 architecture "
          f"with a ControlNet from its UNet, torch threads {torch.get_num_threads()}, best of {args.rounds} rounds (warm)")
    print(f"{'':42} {'seconds':>8} {'vs loop':>8} {'ControlNet calls (max batch)':>29} {'UNet calls (max batch)':>23}")
    labels = {"loop": "diffusers ControlNet pipeline per item", "b1": "graphflow sweep (unbatched)", "b8": "graphflow sweep --batch 8"}
    for v, label in labels.items():
        cn, un = made[v].get("ControlNetModel", (0, 0)), made[v].get("UNet2DConditionModel", (0, 0))
        print(f"{label:42} {best[v]:8.2f} {best[v] / best['loop']:7.2f}x {f'{cn[0]} ({cn[1]})':>29} {f'{un[0]} ({un[1]})':>23}")
    print(f"batched vs unbatched sweep: {best['b8'] / best['b1']:.2f}x")
    diffs = [int(np.abs(pictures[8][i].astype(int) - pictures[1][i].astype(int)).max()) for i in sorted(pictures[1])]
    print(f"per item, batched vs unbatched picture, max difference in 8-bit levels: {diffs}")


if __name__ == "__main__":
    main()
