"""A sweep of 4 prompts x 4 seeds of txt2img on the embedded model, measured side by side in one
run: graphflow locally (one process), graphflow on a local Ray with 2 one-CPU actors, and a plain
diffusers script calling StableDiffusionPipeline in a loop over the same 16. For each: items per
second, text-encoder calls and model loads. Then Ray's own per-call overhead (a no-op actor method),
the number the README's projection to 100,000 items on 50 GPU workers rests on.

Each variant runs in a fresh process of its own (this script with --variant), as a user would run
it: variants sharing a process would measure each other (loaded models, warm caches, and torch's
per-thread OpenMP teams: the diffusers loop runs torch on the main thread, and a process whose
torch work is spread over two threads runs about 2x slower on this machine, see
bench/bench_threads.py).

    .venv/bin/python bench/bench_sweep.py [--steps N] [--no-ray]
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

import graphflow
from graphflow.sweep import Sweep, runner

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
SEEDS = [0, 1, 2, 3]
TXT2IMG = ROOT / "workflows" / "txt2img.json"


def graphflow_sweep(steps: int, out: Path, ray: bool) -> dict:
    wf = graphflow.load(TXT2IMG).with_params(steps=steps)
    opts = {"workers": 2, "cpus_per_worker": 1} if ray else None
    sw = Sweep(wf, grid={"prompt": PROMPTS, "seed": SEEDS}, out_dir=out, runner=runner(ray="local" if ray else None, **(opts or {})))
    t0 = time.perf_counter()
    results = list(sw)
    seconds = time.perf_counter() - t0
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.status != "ok"]
    encodes = sum(r.runs.get("cond", 0) + r.runs.get("uncond", 0) for r in results)
    loads = sum(max(r.loads for r in results if r.worker == w) for w in {r.worker for r in results})
    workers = {r.worker for r in results}
    steady = sorted(r.seconds for r in results)[:-len(workers)]  # each worker's slowest (its first, with the loads) left out
    return {"seconds": seconds, "items": len(results), "encodes": encodes, "loads": loads,
            "steady": sum(steady) / len(steady) / len(workers)}


def diffusers_loop(steps: int) -> dict:
    import torch
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline
    from graphflow_nodes.loading.files import MODELS_DIR

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(MODELS_DIR / "tiny-sd", safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    calls = [0]
    pipe.text_encoder.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    times = []
    for p in PROMPTS:
        for s in SEEDS:
            t1 = time.perf_counter()
            pipe(p, num_inference_steps=steps, guidance_scale=2.5, generator=torch.Generator().manual_seed(s), output_type="pil")
            times.append(time.perf_counter() - t1)
    components = sum(1 for k, v in pipe.components.items() if v is not None and k in ("tokenizer", "text_encoder", "unet", "vae"))
    steady = sorted(times)[:-1]
    return {"seconds": time.perf_counter() - t0, "items": 16, "encodes": calls[0], "loads": components,
            "steady": sum(steady) / len(steady)}


def ray_call_overhead(n: int = 300) -> float:
    import ray

    @ray.remote(num_cpus=0)
    class Noop:
        def call(self, x):
            return x

    a = Noop.remote()
    ray.get(a.call.remote(0))
    t0 = time.perf_counter()
    for i in range(n):
        ray.get(a.call.remote(i))
    per = (time.perf_counter() - t0) / n
    ray.kill(a)
    return per


def driver_cost(n: int = 10_000, workers: int = 50) -> dict:
    """What the driver spends per item before anything runs: binding, fingerprints, dealing."""
    from graphflow.sweep.ray_runner import affinity_keys, deal

    wf = graphflow.load(TXT2IMG)
    t0 = time.perf_counter()
    sw = Sweep(wf, grid={"prompt": [f"prompt {k}" for k in range(n // 100)], "seed": list(range(100))}, out_dir="unused")
    t1 = time.perf_counter()
    keys = affinity_keys(sw, sw.order)
    t2 = time.perf_counter()
    deal(sw.order, keys, workers)
    t3 = time.perf_counter()
    return {"bind": (t1 - t0) / n, "fingerprints": (t2 - t1) / n, "deal": (t3 - t2) / n}


def variant(name: str, steps: int) -> dict:
    # imports are paid before the clock starts, in every variant alike: diffusers and transformers
    # import their model classes (and scipy, through the LMS scheduler) lazily, on first use
    import graphflow_nodes  # noqa: F401
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    tmp = Path(tempfile.mkdtemp(prefix="graphflow-bench-sweep-"))
    try:
        if name == "diffusers":
            return diffusers_loop(steps)
        if name == "local":
            return graphflow_sweep(steps, tmp / "local", ray=False)
        import ray

        from graphflow.sweep.ray_runner import local_token

        with local_token():  # not ~/.ray/auth_token, which a later `ray start --head` would pick up
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
            try:
                return {**graphflow_sweep(steps, tmp / "ray", ray=True), "overhead": ray_call_overhead()}
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--variant", choices=["diffusers", "local", "ray"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.variant:
        print("RESULT " + json.dumps(variant(args.variant, args.steps)))
        return
    rows = {}
    names = {"diffusers": "diffusers loop", "local": "graphflow, local", "ray": "graphflow, Ray, 2 actors"}
    for v in ("diffusers", "local") + (() if args.no_ray else ("ray",)):
        p = subprocess.run([sys.executable, __file__, "--variant", v, "--steps", str(args.steps)], capture_output=True, text=True,
                           timeout=1800)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"variant {v} failed:\n{p.stderr[-3000:]}")
        rows[names[v]] = json.loads(line[7:])
    overhead = rows.get(names["ray"], {}).get("overhead", 0.0)
    base = rows["diffusers loop"]["seconds"]
    print(f"4 prompts x 4 seeds, txt2img, {args.steps} steps, embedded tiny-sd, 2 CPU cores; each variant a fresh process "
          "(wall clock includes model loads, and for Ray starting Ray and its actors; not imports)")
    print(f"{'':28} {'seconds':>8} {'items/s':>8} {'vs diffusers':>13} {'s/item, warm':>13} {'text encodes':>13} "
          f"{'model loads':>12}  (components: tokenizer, text encoder, UNet, VAE)")
    for name, r in rows.items():
        print(f"{name:28} {r['seconds']:8.2f} {r['items'] / r['seconds']:8.2f} {base / r['seconds']:12.2f}x {r['steady']:13.3f} "
              f"{r['encodes']:13d} {r['loads']:12d}")
    if not args.no_ray:
        print(f"Ray actor call round trip (no-op): {overhead * 1e3:.2f} ms")
    d = driver_cost()
    print("driver, per item, for 10,000 items dealt to 50 workers: "
          + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in d.items()))


if __name__ == "__main__":
    main()
