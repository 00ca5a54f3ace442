"""Evaluate the embedded tiny SD model with diffusers' own StableDiffusionPipeline.

    HF_HUB_OFFLINE=1 .venv/bin/python train/evaluate.py                    # guidance 1.0, 2.5 (recommended), 7.5
    HF_HUB_OFFLINE=1 .venv/bin/python train/evaluate.py --guidance 1 2 3 4 5 7.5 --seeds 2

Prompts: every held-out (colour, background, shape) triple of train.shapes plus as many
training triples, in the canonical wording "a {colour} {shape} on a {background} background",
several seeds each, 64x64, 30 steps. Each image is scored with train.shapes.measure.
Reports the rates of matching shape colour, background colour and shape (all / held-out /
seen-in-training), and the time of one 30-step 64px image at the recommended guidance.
"""
import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import shapes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "nodes", "models", "tiny-sd")
RECOMMENDED_GUIDANCE = 2.5


def load_pipe(model_dir=MODEL_DIR, scheduler="lms"):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LMSDiscreteScheduler, StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    cls = {"lms": LMSDiscreteScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}.get(scheduler)
    if cls is not None:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def eval_triples(n_train, seed=0):
    rng = random.Random(seed)
    train = rng.sample(shapes.TRAIN_TRIPLES, n_train)
    return [(t, True) for t in shapes.HELD_OUT] + [(t, False) for t in train]


def generate(pipe, triples, seeds, guidance, steps=30, batch=24):
    jobs = [(t, s) for t in triples for s in seeds]
    out = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        prompts = [shapes.caption_for(*t) for t, _ in chunk]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        with torch.no_grad():
            ims = pipe(prompts, height=64, width=64, num_inference_steps=steps,
                       guidance_scale=guidance, generator=gens, output_type="np").images
        out.extend(ims)
    return jobs, out


def rates(rows):
    a = np.array(rows, dtype=float).reshape(-1, 3)
    return {"colour": a[:, 0].mean(), "background": a[:, 1].mean(), "shape": a[:, 2].mean(),
            "all_three": a.all(1).mean(), "n": len(a)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=MODEL_DIR)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, RECOMMENDED_GUIDANCE, 7.5])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-base", type=int, default=1000, help="first generator seed (sweeps used 2000)")
    ap.add_argument("--n-train", type=int, default=18, help="training triples evaluated besides the held-out ones")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--scheduler", default="lms", choices=["lms", "ddim", "euler", "pndm"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recommended", type=float, default=RECOMMENDED_GUIDANCE)
    ap.add_argument("--save", default="/tmp/tinysd/eval", help="folder for sample grids and eval.json")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipe(args.model, args.scheduler)
    tr = eval_triples(args.n_train)
    triples = [t for t, _ in tr]
    held = {t for t, h in tr if h}
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    os.makedirs(args.save, exist_ok=True)
    results = {}
    print(f"{len(triples)} prompts ({len(held)} held-out) x {len(seeds)} seeds, {args.steps} steps, "
          f"{args.scheduler}", flush=True)
    for g in args.guidance:
        t0 = time.time()
        jobs, ims = generate(pipe, triples, seeds, g, args.steps)
        rows_all, rows_held, rows_seen = [], [], []
        for (t, s), im in zip(jobs, ims):
            r = shapes.score(im, *t)
            rows_all.append(r)
            (rows_held if t in held else rows_seen).append(r)
        res = {"all": rates(rows_all), "held_out": rates(rows_held), "seen": rates(rows_seen),
               "seconds": time.time() - t0}
        results[str(g)] = res
        # grid: one row per prompt (first 36 prompts), seeds across
        from PIL import Image
        k = len(seeds)
        rows = [np.concatenate(ims[i * k:(i + 1) * k], 1) for i in range(min(len(triples), 36))]
        Image.fromarray((np.concatenate(rows, 0) * 255).round().astype(np.uint8)).save(
            os.path.join(args.save, f"grid_g{g}.png"))
        line = " | ".join(f"{name}: colour {v['colour']:.0%} bg {v['background']:.0%} shape {v['shape']:.0%} "
                          f"all3 {v['all_three']:.0%} (n={v['n']})" for name, v in
                          (("ALL", res["all"]), ("HELD-OUT", res["held_out"]), ("SEEN", res["seen"])))
        print(f"guidance {g:>4}: {line}  [{res['seconds']:.0f}s]", flush=True)
    if not args.no_timing:
        p = shapes.caption_for("red", "blue", "circle")
        pipe(p, height=64, width=64, num_inference_steps=args.steps, guidance_scale=args.recommended)
        ts = []
        for i in range(3):
            t0 = time.time()
            pipe(p, height=64, width=64, num_inference_steps=args.steps, guidance_scale=args.recommended,
                 generator=torch.Generator().manual_seed(i))
            ts.append(time.time() - t0)
        results["time_one_image_s"] = float(np.median(ts))
        print(f"one 30-step 64px image at guidance {args.recommended}: {np.median(ts):.2f}s "
              f"(median of 3; {', '.join(f'{t:.2f}' for t in ts)}) on {args.threads} threads")
    json.dump(results, open(os.path.join(args.save, "eval.json"), "w"), indent=1, default=float)


if __name__ == "__main__":
    main()
