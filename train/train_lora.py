"""Learn a LoRA that teaches the embedded tiny SD model a shape it cannot draw: a cross (a plus sign).

    HF_HUB_OFFLINE=1 .venv/bin/python train/train_lora.py --attention-only --max-minutes 17 --out /tmp/round1.safetensors
    HF_HUB_OFFLINE=1 .venv/bin/python train/train_lora.py --resume /tmp/round1.safetensors --max-minutes 18
    HF_HUB_OFFLINE=1 .venv/bin/python train/train_lora.py --eval-only

The base model never saw the word "cross" nor the shape (its captions name circles, squares and
triangles), so "a red cross on a blue background" draws a circle. The LoRA (peft, rank 8, on the
UNet's attention, feed-forward and resnet convolution layers and the text encoder's attention and
MLP layers; every base weight frozen) is trained with the model's own epsilon objective on crosses
in 24 of the 30 colour pairs, mixed half and half with the base model's own training images so
circles, squares and triangles stay as they were. The shipped file took two rounds (the first
with attention layers only; see train/REPORT.md). Saved in diffusers' LoRA format
(``StableDiffusionPipeline.save_lora_weights``, peft's keys: ``unet.…lora_A.weight``,
``text_encoder.text_model.…``) to nodes/models/loras/tiny-sd-cross.safetensors, then measured with
diffusers' own pipeline, with and without the LoRA: crosses drawn for "a {colour} cross on a
{background} background" (the 6 held-out colour pairs and 6 seen ones), and the base prompts'
accuracy with the LoRA on.
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
from train.evaluate import MODEL_DIR, RECOMMENDED_GUIDANCE, REPO, load_pipe  # noqa: E402

SHAPE = "cross"
OUT = os.path.join(REPO, "nodes", "models", "loras", "tiny-sd-cross.safetensors")
PAIRS = [(fg, bg) for fg in shapes.COLOUR_NAMES for bg in shapes.COLOUR_NAMES if fg != bg]
# colour pairs whose crosses are never trained on (one per shape colour)
HELD_OUT_PAIRS = [("red", "yellow"), ("green", "white"), ("blue", "black"), ("yellow", "blue"),
                  ("white", "red"), ("black", "green")]
TRAIN_PAIRS = [p for p in PAIRS if p not in HELD_OUT_PAIRS]
SEEN_EVAL_PAIRS = [("red", "blue"), ("green", "black"), ("blue", "white"), ("yellow", "red"),
                   ("white", "green"), ("black", "yellow")]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def cross_sample(rng, pair):
    """A cross of 30-42 px (the VAE turns smaller crosses into blobs: measured in REPORT.md)."""
    fg, bg = pair
    size = rng.randint(30, 42)
    m = 4
    cx = rng.uniform(m + size / 2, shapes.SIZE - m - size / 2)
    cy = rng.uniform(m + size / 2, shapes.SIZE - m - size / 2)
    img = shapes.render(fg, bg, SHAPE, cx, cy, size)
    return img, shapes.caption_for(fg, bg, SHAPE, rng.randrange(len(shapes.TEMPLATES)))


def dataset(n, seed):
    """n images: half crosses in the training colour pairs, half the base model's own data."""
    rng = random.Random(seed)
    imgs, caps = [], []
    for i in range(n):
        if i % 2 == 0:
            img, cap = cross_sample(rng, rng.choice(TRAIN_PAIRS))
        else:
            img, cap, _ = shapes.sample(rng=rng)
        imgs.append(img)
        caps.append(cap)
    return np.stack(imgs), caps


def train(args):
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(args.seed)
    pipe = load_pipe(MODEL_DIR, "lms")
    tok, text, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    for m in (unet, vae, text):
        m.requires_grad_(False)
    sf = vae.config.scaling_factor
    t0 = time.time()
    imgs, caps = dataset(args.n_images, args.seed + 7)
    with torch.no_grad():
        lat = torch.cat([vae.encode(torch.from_numpy(imgs[i:i + 250]).permute(0, 3, 1, 2).float().div(127.5).sub(1))
                         .latent_dist.mean for i in range(0, len(imgs), 250)]) * sf
    uniq = sorted(set(caps)) + [""]
    ids_all = tok(uniq, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    cap_idx = torch.tensor([uniq.index(c) for c in caps])
    print(f"encoded {len(caps)} images in {time.time() - t0:.0f}s", flush=True)

    # peft adapters: diffusers' add_adapter for the UNet; peft's own inject_adapter_in_model for
    # the text encoder (transformers' add_adapter asks for peft >= 0.22, the registry has 0.21.2)
    targets = UNET_TARGETS[:4] if args.attention_only else UNET_TARGETS
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=targets))
    text = inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                              target_modules=TEXT_TARGETS), text)
    if args.resume:  # continue from a saved LoRA (its file, in the layout save_lora_weights wrote)
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        saved = load_file(args.resume)
        for model, prefix in ((unet, "unet."), (text, "text_encoder.")):
            part = {k.removeprefix(prefix).removeprefix("text_model."): v for k, v in saved.items() if k.startswith(prefix)}
            part = convert_unet_state_dict_to_peft(part) if prefix == "unet." else convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
            res = set_peft_model_state_dict(model, part)  # layers the saved LoRA lacks start at B = 0
            assert not res.unexpected_keys, res.unexpected_keys[:3]
        print(f"resumed from {args.resume}", flush=True)
    params = [p for m in (unet, text) for n, p in m.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    unet.train()
    text.train()
    print(f"LoRA parameters: {sum(p.numel() for p in params) / 1e3:.1f} k", flush=True)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1 + (1000 if args.resume else 0))
    t0 = time.time()
    avg = None
    step = 0
    for step in range(args.steps):
        # cosine decay over steps or over the time budget, whichever runs out first
        done = max(step / args.steps, (time.time() - t0) / (args.max_minutes * 60))
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(done, 1.0))))
        for gr in opt.param_groups:
            gr["lr"] = lr
        idx = torch.randint(0, len(caps), (args.batch,), generator=g)
        ci = cap_idx[idx].clone()
        ci[torch.rand(args.batch, generator=g) < 0.1] = len(uniq) - 1  # empty captions for guidance
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        noise = torch.randn(lat[idx].shape, generator=g)
        zt = sched.add_noise(lat[idx], noise, t)
        pred = unet(zt, t, text(ids_all[ci]).last_hidden_state).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (w * (pred - noise).pow(2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        el = time.time() - t0
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} (avg {avg:.4f}) lr {lr:.1e} {el:.0f}s", flush=True)
        if el > args.max_minutes * 60:
            print(f"time limit reached at step {step}", flush=True)
            break
    seconds = time.time() - t0
    out = args.out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        os.path.dirname(out),
        # peft's own key layout throughout (unet.…lora_A.weight). diffusers' training scripts pass
        # these through convert_state_dict_to_diffusers, which renames only the attention layers
        # (…to_q.lora.down.weight); diffusers' loader then looks at the first key alone to decide
        # the layout, and a file mixing both loses one of them (measured: the attention weights)
        unet_lora_layers=get_peft_model_state_dict(unet),
        # the keys other tools expect (text_encoder.text_model.encoder…): transformers 5 flattened
        # CLIPTextModel, whose own names start at encoder.…; diffusers' loader accepts both
        text_encoder_lora_layers={("text_model." + k if not k.startswith("text_model.") else k): v for k, v in
                                  get_peft_model_state_dict(text).items()},
        weight_name=os.path.basename(out),
        safe_serialization=True,
    )
    os.chmod(out, 0o644)
    print(f"saved {out} ({os.path.getsize(out)} bytes); {step + 1} steps in {seconds:.0f}s", flush=True)
    return {"steps": step + 1, "seconds": seconds, "final_loss": avg}


def lora_pipe(path, scale):
    """diffusers' pipeline with the LoRA applied: the UNet through load_lora_weights, the text
    encoder through peft's inject_adapter_in_model (diffusers' own text-encoder path goes through
    transformers' load_adapter, which asks for peft >= 0.22)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import scale_lora_layers
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    pipe = load_pipe(MODEL_DIR, "lms")
    sd = load_file(path)
    pipe.load_lora_weights({k: v for k, v in sd.items() if k.startswith("unet.")}, adapter_name="cross")
    pipe.set_adapters(["cross"], [scale])
    te = {k.removeprefix("text_encoder.").removeprefix("text_model."): v for k, v in sd.items() if k.startswith("text_encoder.")}
    rank = next(v.shape[0] for k, v in te.items() if "lora_A" in k)
    pipe.text_encoder = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS), pipe.text_encoder)
    te = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te))  # what diffusers' loader does
    res = set_peft_model_state_dict(pipe.text_encoder, te)
    assert not res.unexpected_keys, res.unexpected_keys
    scale_lora_layers(pipe.text_encoder, scale)
    return pipe


def measure(pipe, prompts_triples, seeds, guidance=RECOMMENDED_GUIDANCE):
    from train.evaluate import generate

    jobs, ims = generate(pipe, prompts_triples, seeds, guidance)
    rows = []
    for (t, s), im in zip(jobs, ims):
        m = shapes.measure(im, shapes=shapes.ALL_SHAPES)
        rows.append({"triple": t, "seed": s, "shape": m["shape"], "colour": m["colour"], "background": m["background"]})
    return rows, ims


def evaluate(args):
    seeds = list(range(1000, 1000 + args.eval_seeds))
    cross_triples = [(fg, bg, SHAPE) for fg, bg in HELD_OUT_PAIRS + SEEN_EVAL_PAIRS]
    base_triples = [t for t, _ in __import__("train.evaluate", fromlist=["eval_triples"]).eval_triples(18)]
    results = {}
    from PIL import Image

    for name, pipe in (("without", load_pipe(MODEL_DIR, "lms")), ("with", lora_pipe(args.out, 1.0))):
        rows, ims = measure(pipe, cross_triples, seeds)
        held = [r for r in rows if (r["triple"][0], r["triple"][1]) in HELD_OUT_PAIRS]
        drawn = {s: sum(r["shape"] == s for r in rows) for s in shapes.ALL_SHAPES}
        res = {
            "cross": sum(r["shape"] == SHAPE for r in rows), "n": len(rows),
            "cross_held_out": sum(r["shape"] == SHAPE for r in held), "n_held_out": len(held),
            "colour": sum(r["colour"] == r["triple"][0] for r in rows), "background": sum(r["background"] == r["triple"][1] for r in rows),
            "shapes_drawn": drawn,
        }
        brows, _ = measure(pipe, base_triples, seeds[:1])
        res["base_prompts"] = {
            "n": len(brows),
            "shape": sum(r["shape"] == r["triple"][2] for r in brows),
            "colour": sum(r["colour"] == r["triple"][0] for r in brows),
            "background": sum(r["background"] == r["triple"][1] for r in brows),
        }
        results[name] = res
        print(f"{name} LoRA: cross drawn in {res['cross']}/{res['n']} (held-out pairs {res['cross_held_out']}/{res['n_held_out']}), "
              f"colour {res['colour']}/{res['n']}, background {res['background']}/{res['n']}, shapes {drawn}; "
              f"base prompts shape/colour/background {res['base_prompts']['shape']}/{res['base_prompts']['colour']}/"
              f"{res['base_prompts']['background']} of {res['base_prompts']['n']}", flush=True)
        k = len(seeds)
        grid = np.concatenate([np.concatenate(ims[i * k:(i + 1) * k], 1) for i in range(len(cross_triples))], 0)
        os.makedirs(args.save, exist_ok=True)
        Image.fromarray((grid * 255).round().astype(np.uint8)).save(os.path.join(args.save, f"cross_{name}_lora.png"))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--max-minutes", type=float, default=17.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--n-images", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-seeds", type=int, default=8)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--save", default="/tmp/tinysd/lora")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--resume", help="a LoRA file to continue training from")
    ap.add_argument("--attention-only", action="store_true", help="LoRA on the UNet's attention projections only (round 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stats = {} if args.eval_only else train(args)
    stats["eval"] = evaluate(args)
    os.makedirs(args.save, exist_ok=True)
    json.dump(stats, open(os.path.join(args.save, "lora.json"), "w"), indent=1, default=float)


if __name__ == "__main__":
    main()
