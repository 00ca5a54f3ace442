"""Learn a textual-inversion token `<my-shape>` on the embedded tiny SD model.

    HF_HUB_OFFLINE=1 .venv/bin/python train/train_textual_inversion.py [--shape triangle]

Only the new token's embedding row is trained (everything else frozen), with the model's
own epsilon objective, on procedural images of one shape (default: triangle) in varied
colours captioned "a {colour} <my-shape> on a {background} background" (+ wording variants).
The new token's embedding starts from the generic word "shape", so it carries no shape
name. Saved in diffusers' load_textual_inversion format (a single tensor keyed by the token)
to nodes/models/tiny-sd/textual_inversion/my-shape.safetensors, then evaluated: how often
"a {colour} <my-shape> on a {background} background" draws that shape.
"""
import argparse
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import shapes  # noqa: E402
from train.evaluate import MODEL_DIR, RECOMMENDED_GUIDANCE, load_pipe  # noqa: E402

TOKEN = "<my-shape>"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="triangle", choices=shapes.SHAPES)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-seeds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    pipe = load_pipe(MODEL_DIR, "lms")
    tok, text, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    from diffusers import DDPMScheduler
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    tok.add_tokens([TOKEN])
    new_id = tok.convert_tokens_to_ids(TOKEN)
    text.resize_token_embeddings(len(tok))
    emb = text.get_input_embeddings().weight
    init_id = tok("shape", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        emb[new_id] = emb[init_id]
    for m in (unet, vae, text):
        m.requires_grad_(False)
        m.eval()
    emb.requires_grad_(True)
    orig = emb.detach().clone()
    opt = torch.optim.AdamW([emb], lr=args.lr, weight_decay=0.0)
    sf = vae.config.scaling_factor

    rng = random.Random(args.seed)
    triples = [t for t in shapes.ALL_TRIPLES if t[2] == args.shape]
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        batch = [shapes.sample(rng=rng, triple=rng.choice(triples)) for _ in range(args.batch)]
        imgs = np.stack([b[0] for b in batch])
        caps = [b[1].replace(args.shape, TOKEN) for b in batch]
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.sample(generator=g) * sf
        ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (len(caps),), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        zt = sched.add_noise(z0, noise, t)
        pred = unet(zt, t, text(ids).last_hidden_state).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # only the new row may change
            keep = torch.ones(emb.shape[0], dtype=torch.bool)
            keep[new_id] = False
            emb[keep] = orig[keep]
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} |emb| {emb[new_id].norm():.3f} "
                  f"{time.time()-t_start:.0f}s", flush=True)

    from safetensors.torch import save_file
    out_dir = os.path.join(MODEL_DIR, "textual_inversion")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "my-shape.safetensors")
    save_file({TOKEN: emb[new_id].detach().to(torch.float32).reshape(1, -1).clone().contiguous()}, path)
    os.chmod(path, 0o644)
    print(f"saved {path}; training took {time.time()-t_start:.0f}s")

    # evaluate with a fresh pipeline + diffusers' own loader
    pipe = load_pipe(MODEL_DIR, "lms")
    pipe.load_textual_inversion(path)
    tests = [("red", "blue")] + [(f, b) for f, b in [("yellow", "black"), ("white", "green"),
                                                     ("blue", "yellow"), ("green", "red"), ("black", "white")]]
    counts = {}
    rows = []
    for fg, bg in tests:
        prompt = f"a {fg} {TOKEN} on a {bg} background"
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(args.eval_seeds)]
        with torch.no_grad():
            ims = pipe([prompt] * args.eval_seeds, height=64, width=64, num_inference_steps=30,
                       guidance_scale=RECOMMENDED_GUIDANCE, generator=gens, output_type="np").images
        ms = [shapes.measure(im) for im in ims]
        sh = [m["shape"] for m in ms]
        r = dict(shape=np.mean([s == args.shape for s in sh]), colour=np.mean([m["colour"] == fg for m in ms]),
                 background=np.mean([m["background"] == bg for m in ms]),
                 dist={s: sh.count(s) for s in set(sh)})
        counts[prompt] = r
        rows.append(r)
        print(f"{prompt!r}: {args.shape} {r['shape']:.0%}, colour {r['colour']:.0%}, bg {r['background']:.0%}, "
              f"shapes drawn {r['dist']}", flush=True)
    print(f"overall: {args.shape} drawn in {np.mean([r['shape'] for r in rows]):.0%} of "
          f"{len(rows)*args.eval_seeds} images (guidance {RECOMMENDED_GUIDANCE})")


if __name__ == "__main__":
    main()
