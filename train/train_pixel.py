"""Trains tiny-shapes-ddpm: the class-conditioned pixel-space model graphflow ships for the book's
first chapters (a `UNet2DModel` with `num_class_embeds`, no text, no VAE), on the procedural shapes
of train/shapes.py drawn at 32x32. A class is a (shape colour, shape) pair: 6 colours x 3 shapes =
18 classes, the background any other colour. The folder it writes loads with diffusers'
`UNet2DModel.from_pretrained(path, subfolder="unet")` and `DDPMScheduler.from_pretrained(path,
subfolder="scheduler")`, and with graphflow's LoadModel (family `pixel`).

    .venv/bin/python train/train_pixel.py --stage train --out /tmp/tinyshapes/phase1            # 1,300 steps
    .venv/bin/python train/train_pixel.py --stage train --resume /tmp/tinyshapes/phase1 \
        --steps 600 --lr 1e-3 --ema-start 50 --out /tmp/tinyshapes/phase2
    .venv/bin/python train/train_pixel.py --stage train --resume /tmp/tinyshapes/phase2 \
        --steps 600 --lr 5e-4 --ema-start 50                                                     # installs
    .venv/bin/python train/train_pixel.py --stage eval    # only the measurement of the installed model

Recipe and numbers: train/REPORT.md (section "tiny-shapes-ddpm")."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from train import shapes  # noqa: E402

OUT = REPO / "nodes" / "models" / "tiny-shapes-ddpm"
SIZE = 32
CLASSES = [(c, s) for c in shapes.COLOUR_NAMES for s in shapes.SHAPES]  # class id = colour * 3 + shape
LABELS = {str(k): f"{c} {s}" for k, (c, s) in enumerate(CLASSES)}
SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "variance_type": "fixed_small",
}
UNET = dict(
    sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 96),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    num_class_embeds=len(CLASSES), norm_num_groups=8, attention_head_dim=32,
)


def sample32(rng: random.Random) -> tuple[np.ndarray, int]:
    """One 32x32 picture of a random class: drawn at 64x64 by shapes.render and box-filtered down,
    so edges are anti-aliased as a camera would see them."""
    k = rng.randrange(len(CLASSES))
    fg, shape = CLASSES[k]
    bg = rng.choice([c for c in shapes.COLOUR_NAMES if c != fg])
    size = rng.randint(22, 42)
    m = 6
    cx = rng.uniform(m + size / 2, 64 - m - size / 2)
    cy = rng.uniform(m + size / 2, 64 - m - size / 2)
    img = shapes.render(fg, bg, shape, cx, cy, size)
    return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BOX)), k


def dataset(n: int, seed: int):
    rng = random.Random(seed)
    imgs, labels = zip(*(sample32(rng) for _ in range(n)))
    return np.stack(imgs), np.array(labels)


def measure32(image) -> dict:
    """shapes.measure on the picture enlarged to the 64x64 it was calibrated for (nearest
    neighbour: no new colours)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return shapes.measure(np.asarray(Image.fromarray(a).resize((64, 64), Image.NEAREST)))


def train(args) -> None:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    imgs, labels = dataset(args.images, seed=0)
    x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    y_all = torch.from_numpy(labels).long()
    if args.resume:  # phase 2: continue from a saved model (its float16 weights, in float32)
        unet = UNet2DModel.from_pretrained(args.resume, subfolder="unet", torch_dtype=torch.float32)
        torch.manual_seed(1)
    else:
        unet = UNet2DModel(**UNET)
    unet.train()
    ema = UNet2DModel(**UNET)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = DDPMScheduler.from_config(SCHEDULER)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    warm = 20 if args.resume else 50

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        p = (step - warm) / max(1, args.steps - warm)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    g = torch.Generator().manual_seed(1 if args.resume else 0)
    t0 = time.time()
    print(f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters; {args.steps} steps of batch {args.batch}", flush=True)
    for step in range(args.steps):
        idx = torch.randint(0, len(x_all), (args.batch,), generator=g)
        x0, y = x_all[idx], y_all[idx]
        flip = torch.rand(args.batch, generator=g) < 0.5  # shapes are left-right symmetric
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=y).sample, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = 0.0 if step < args.ema_start else args.ema
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} lr {lr_at(step):.2e} {time.time() - t0:.0f}s", flush=True)
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    install(ema, Path(args.out))


def install(unet, out: Path) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    cfg = json.loads((out / "unet" / "config.json").read_text())
    (out / "unet" / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
        "id2label": LABELS,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    print(f"installed {out}", flush=True)


def evaluate(args) -> None:
    """Per class, `per_class` pictures from seeds 1000.., with diffusers' own scheduler loop (the
    graph gives the same pictures: tests/test_pixel_equality.py), measured with shapes.measure."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    torch.set_num_threads(args.threads)
    unet = UNet2DModel.from_pretrained(args.out, subfolder="unet", torch_dtype=torch.float32).eval()
    truth = dataset(540, seed=99)
    gt = [measure32(im) for im in truth[0]]
    ok_c = np.mean([m["colour"] == CLASSES[k][0] for m, k in zip(gt, truth[1])])
    ok_s = np.mean([m["shape"] == CLASSES[k][1] for m, k in zip(gt, truth[1])])
    print(f"measurement on 540 ground-truth 32x32 pictures: colour {ok_c:.1%} shape {ok_s:.1%}", flush=True)
    for name, cls, steps in (("ddim", DDIMScheduler, 50), ("ddpm", DDPMScheduler, 1000)):
        if name not in args.schedulers:
            continue
        sched = cls.from_pretrained(args.out, subfolder="scheduler")
        labels = torch.arange(len(CLASSES)).repeat_interleave(args.per_class)
        g = torch.Generator().manual_seed(1000)
        x = torch.randn((len(labels), 3, SIZE, SIZE), generator=g)
        sched.set_timesteps(steps)
        t0 = time.time()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t, class_labels=labels).sample, t, x, generator=g).prev_sample
        images = ((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        ms = [measure32(im) for im in images]
        col = [m["colour"] == CLASSES[k][0] for m, k in zip(ms, labels.tolist())]
        shp = [m["shape"] == CLASSES[k][1] for m, k in zip(ms, labels.tolist())]
        both = [a and b for a, b in zip(col, shp)]
        print(f"{name} {steps} steps, {len(labels)} pictures ({time.time() - t0:.0f} s): colour {np.mean(col):.1%} "
              f"shape {np.mean(shp):.1%} class (both) {np.mean(both):.1%}", flush=True)
        for s in shapes.SHAPES:
            sel = [b for b, k in zip(both, labels.tolist()) if CLASSES[k][1] == s]
            print(f"  {s}: {np.mean(sel):.1%}", flush=True)
        grid = images.reshape(len(CLASSES), args.per_class, SIZE, SIZE, 3).transpose(0, 2, 1, 3, 4).reshape(len(CLASSES) * SIZE, -1, 3)
        Image.fromarray(grid).save(Path(args.scratch) / f"samples_{name}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("all", "train", "eval"), default="all")
    ap.add_argument("--steps", type=int, default=1300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--ema-start", type=int, default=200)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--schedulers", nargs="+", default=["ddim", "ddpm"])
    ap.add_argument("--resume", default=None, help="continue from this model folder (phase 2)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--scratch", default="/tmp/tinyshapes")
    args = ap.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "train"):
        train(args)
    if args.stage in ("all", "eval"):
        evaluate(args)


if __name__ == "__main__":
    main()
