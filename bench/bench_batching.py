"""Batched sweeps and live previews, side by side in one run.

Batching: 16 items (4 prompts x 4 seeds) of txt2img through a graphflow sweep with ``--batch 8``
(``Executor(batch=8)``) and unbatched, against diffusers' StableDiffusionPipeline called once per
item, and called once per prompt with ``num_images_per_prompt=4`` (a generator per seed: the same
16 pictures). On the shipped model (nodes/models/tiny-sd, 64 px) and on a mid-size random model of
SD 1.5's architecture (4 UNet levels, 2 layers each, cross-attention at 3 levels, a 768-wide CLIP
text encoder; channels a fifth of SD 1.5's; 128 px). Each variant runs in a fresh process of its
own (this script with --variant), timing model loads and the 16 pictures, not imports ("warm":
the 16 pictures alone, after a 1-step warm-up picture that loads the models). The
per-item difference between the batched and unbatched sweeps' pictures (8-bit levels) is printed.

The UNet alone at 2 rows (the loop's call) and 16 (the batched sweep's), in a process of its own:
how much cheaper a row is in a big call on this machine, the floor of what batching can save.

Previews: the same txt2img, 30 steps, with ``preview_every=1`` against none, alternated in one
process (best of 3 each): the linear latent-to-RGB projection and a PNG encode per step.

Threads: every variant runs with OMP_NUM_THREADS=1 unless --threads says otherwise: this is a
machine other work shares (see bench/bench_threads.py for what torch's default does there).

    .venv/bin/python bench/bench_batching.py [--steps N] [--models shipped,mid] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
SEEDS = [0, 1, 2, 3]
GUIDANCE = 2.5


def build_mid(path: Path) -> Path:
    """A random-weight model of SD 1.5's architecture at a fifth of its channels, saved in
    diffusers format (reused when already there)."""
    if (path / "model_index.json").exists():
        return path
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_model import SCHEDULER_CONFIG, TOKENIZER

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=6,
                                      num_attention_heads=12, max_position_embeddings=77, bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(64, 128, 256, 256), attention_head_dim=8, cross_attention_dim=768,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128, 128),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=128, scaling_factor=0.18215)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    te.save_pretrained(tmp / "text_encoder")
    unet.save_pretrained(tmp / "unet")
    vae.save_pretrained(tmp / "vae")
    shutil.copytree(TOKENIZER, tmp / "tokenizer")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps({**SCHEDULER_CONFIG, "_class_name": "LMSDiscreteScheduler"}))
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "feature_extractor": [None, None],
        "requires_safety_checker": False, "safety_checker": [None, None], "scheduler": ["diffusers", "LMSDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    tmp.rename(path)
    return path


def workflow(model: Path, steps: int, size: int):
    import graphflow

    return graphflow.load(ROOT / "workflows" / "txt2img.json").with_params(
        model=str(model), steps=steps, guidance=GUIDANCE, scheduler="lms", width=size, height=size)


def graphflow_sweep(model: Path, steps: int, size: int, batch: int, out: Path) -> dict:
    from graphflow.engine.executor import Executor
    from graphflow.sweep import Sweep, runner

    warm_up, wf = workflow(model, 1, size).with_params(prompt="warm-up", seed=99), workflow(model, steps, size)
    warm_up.checked()  # read and checked: the node types' modules imported, as the pipeline's class was
    t0 = time.perf_counter()
    ex = Executor(out_dir=out / "unused", batch=batch)
    assert ex.run(warm_up).ok  # the models load
    import torch

    calls = [0]

    def count(module, args):
        if type(module).__name__ == "UNet2DConditionModel":
            calls[0] += 1

    torch.nn.modules.module.register_module_forward_pre_hook(count)
    t1 = time.perf_counter()
    sw = Sweep(wf, grid={"prompt": PROMPTS, "seed": SEEDS}, out_dir=out, runner=runner(ex))
    results = list(sw)
    seconds = time.perf_counter() - t0
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.status != "ok"]
    return {"seconds": seconds, "warm": time.perf_counter() - t1, "calls": calls[0],
            "files": {str(r.item): str(out / r.files[0]) for r in results}}


def diffusers_pipe(model: Path):
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def diffusers_loop(model: Path, steps: int, size: int, per_prompt: bool) -> dict:
    import torch

    t0 = time.perf_counter()
    pipe = diffusers_pipe(model)
    pipe("warm-up", num_inference_steps=1, guidance_scale=GUIDANCE, height=size, width=size,
         generator=torch.Generator().manual_seed(99), output_type="np")
    t1 = time.perf_counter()
    calls = [0]
    pipe.unet.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    for p in PROMPTS:
        if per_prompt:
            pipe(p, num_inference_steps=steps, guidance_scale=GUIDANCE, num_images_per_prompt=len(SEEDS), height=size, width=size,
                 generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="np")
        else:
            for s in SEEDS:
                pipe(p, num_inference_steps=steps, guidance_scale=GUIDANCE, height=size, width=size,
                     generator=torch.Generator().manual_seed(s), output_type="np")
    return {"seconds": time.perf_counter() - t0, "warm": time.perf_counter() - t1, "calls": calls[0]}


def preview_cost(model: Path, size: int, steps: int = 30, rounds: int = 3) -> dict:
    from graphflow.engine import events as ev
    from graphflow.engine.executor import Executor

    wf = workflow(model, steps, size)
    times: dict[int, list[float]] = {0: [], 1: []}
    counts = []
    exs = {n: Executor(out_dir=tempfile.mkdtemp(prefix="graphflow-bench-preview-"), preview_every=n) for n in (0, 1)}
    seen: list = []
    exs[1].subscribe(lambda e: seen.append(1) if isinstance(e, ev.Preview) else None, on_run_thread=True)
    for n, ex in exs.items():  # warm: model loaded, caches filled for the text side
        assert ex.run(wf).ok
    for k in range(rounds):
        for n in (0, 1) if k % 2 == 0 else (1, 0):
            seen.clear()
            wf_k = wf.with_params(seed=100 + k)  # a new seed: the loop runs, the prompt stays cached
            t0 = time.perf_counter()
            r = exs[n].run(wf_k)
            times[n].append(time.perf_counter() - t0)
            assert r.ok
            if n:
                exs[n].flush()
                counts.append(len(seen))
    return {"off": min(times[0]), "on": min(times[1]), "previews": counts[-1]}


def unet_rows(model: Path, size: int, rounds: int = 3) -> dict:
    """The UNet alone, best of ``rounds`` calls at the per-item loop's 2 rows (CFG) and the batched
    sweep's 16 (8 items): how much cheaper a row is in a big call on this machine, which bounds
    what any batching of these items can save (the picture's other work does not batch away)."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", local_files_only=True).eval()
    side = size // 8
    out = {}
    with torch.no_grad():
        for rows in (2, 16):
            x, e = torch.randn(rows, unet.config.in_channels, side, side), torch.randn(rows, 77, unet.config.cross_attention_dim)
            best = float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                unet(x, 500, encoder_hidden_states=e)
                best = min(best, time.perf_counter() - t0)
            out[rows] = best
    return {"2": out[2], "16": out[16]}


def variant(name: str, model: Path, steps: int, size: int, out: Path) -> dict:
    import graphflow_nodes  # noqa: F401
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    if name == "loop":
        return diffusers_loop(model, steps, size, per_prompt=False)
    if name == "nipp":
        return diffusers_loop(model, steps, size, per_prompt=True)
    if name == "preview":
        return preview_cost(model, size)
    if name == "unet":
        return unet_rows(model, size)
    return graphflow_sweep(model, steps, size, int(name[1:]), out)


def max_levels(a: str, b: str) -> int:
    import numpy as np
    from PIL import Image

    return int(np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", default="shipped,mid")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(variant(args.variant, Path(args.model), args.steps, args.size, Path(args.out))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    tmp = Path(tempfile.mkdtemp(prefix="graphflow-bench-batching-"))
    cache = Path(os.environ.get("GRAPHFLOW_BENCH_MODELS", Path(tempfile.gettempdir()) / "graphflow-bench-models"))
    models = {"shipped": (ROOT / "nodes" / "models" / "tiny-sd", 64), "mid": (cache / "mid-sd15", 128)}
    try:
        for key in args.models.split(","):
            model, size = models[key]
            if key == "mid":
                build_mid(model)
            rows = {}
            for v in ("loop", "nipp", "b1", "b8", "preview", "unet"):
                p = subprocess.run([sys.executable, __file__, "--variant", v, "--model", str(model), "--steps", str(args.steps),
                                    "--size", str(size), "--out", str(tmp / f"{key}-{v}")],
                                   capture_output=True, text=True, timeout=3600, env=env)
                line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"variant {v} failed:\n{p.stderr[-3000:]}")
                rows[v] = json.loads(line[7:])
            base = rows["loop"]["seconds"]
            print(f"\n{key} model ({model.name}, {size} px), 4 prompts x 4 seeds, {args.steps} LMS steps, "
                  f"OMP_NUM_THREADS={args.threads}, each variant a fresh process (model loads included, imports not)")
            print(f"{'':40} {'seconds':>8} {'vs loop':>8} {'warm s':>8} {'vs loop':>8} {'UNet calls':>11}")
            names = {"loop": "diffusers, pipeline per item", "nipp": "diffusers, num_images_per_prompt=4",
                     "b1": "graphflow sweep (unbatched)", "b8": "graphflow sweep --batch 8"}
            for v, label in names.items():
                r = rows[v]
                print(f"{label:40} {r['seconds']:8.2f} {r['seconds'] / base:7.2f}x {r['warm']:8.2f} "
                      f"{r['warm'] / rows['loop']['warm']:7.2f}x {r['calls']:11d}")
            print(f"batched vs num_images_per_prompt: {rows['b8']['seconds'] / rows['nipp']['seconds']:.2f}x, "
                  f"warm {rows['b8']['warm'] / rows['nipp']['warm']:.2f}x")
            u = rows["unet"]
            per_row = (u["16"] / 16) / (u["2"] / 2)
            print(f"the UNet alone: {u['2'] * 1e3:.0f} ms for 2 rows, {u['16'] * 1e3:.0f} ms for 16: a row of a 16-row call costs "
                  f"{per_row:.2f}x a row of a 2-row call on this machine (the floor of the batched UNet work against the loop's)")
            diffs = [max_levels(rows["b1"]["files"][i], rows["b8"]["files"][i]) for i in sorted(rows["b1"]["files"], key=int)]
            print(f"per item, batched vs unbatched picture, max difference in 8-bit levels: {diffs}")
            pv = rows["preview"]
            print(f"previews, 30 steps: none {pv['off']:.3f} s, every step ({pv['previews']} previews) {pv['on']:.3f} s: "
                  f"cost {100 * (pv['on'] / pv['off'] - 1):+.1f} %")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
