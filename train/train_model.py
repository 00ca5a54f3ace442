"""Rebuild the embedded tiny text-to-image model (SD 1.x classes) from a seed.

    HF_HUB_OFFLINE=1 .venv/bin/python train/train_model.py            # all stages, then install
    HF_HUB_OFFLINE=1 .venv/bin/python train/train_model.py --stage vae
    HF_HUB_OFFLINE=1 .venv/bin/python train/train_model.py --stage unet
    HF_HUB_OFFLINE=1 .venv/bin/python train/train_model.py --stage unet2
    HF_HUB_OFFLINE=1 .venv/bin/python train/train_model.py --stage install

Stages:
  vae     - train AutoencoderKL (64px RGB -> 8x8x4 latents) on procedural shapes, measure
            its PSNR and the accuracy of train.shapes.measure on its reconstructions,
            measure scaling_factor = 1/std(latents); checkpoint in /tmp/tinysd/vae
  unet    - encode a fixed set of training images once, then train UNet2DConditionModel and
            CLIPTextModel jointly (epsilon objective, min-SNR-5 weighting, 10% empty captions,
            EMA); checkpoint in /tmp/tinysd/{unet,text_encoder}
  unet2   - phase 2: copy that checkpoint to /tmp/tinysd/phase1 and continue training from it
            (new EMA, lower peak lr, new data order); checkpoint in /tmp/tinysd/{unet,text_encoder}
  install - write the StableDiffusionPipeline folder (fp16 safetensors) to
            nodes/models/tiny-sd (the tokenizer already there is kept as is).
Nothing here is imported by the graphflow engine.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import shapes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "nodes", "models", "tiny-sd")
TOKENIZER_DIR = os.path.join(MODEL_DIR, "tokenizer")
CKPT = os.environ.get("TINYSD_CKPT", "/tmp/tinysd")

TEXT_HIDDEN = 64

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 128], layers_per_block=1, norm_num_groups=4,
    sample_size=64,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4,
    block_out_channels=[64, 128, 160], layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D"] * 3, up_block_types=["CrossAttnUpBlock2D"] * 3,
    cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=32,
)
TEXT_CONFIG = dict(
    vocab_size=49408, max_position_embeddings=77, hidden_size=TEXT_HIDDEN, intermediate_size=256,
    num_hidden_layers=2, num_attention_heads=4, projection_dim=TEXT_HIDDEN,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
    prediction_type="epsilon", trained_betas=None,
)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def to_tensor(imgs_uint8):
    return torch.from_numpy(imgs_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def lr_at(step, total, peak, warmup=50, hold=0.3, floor=0.05):
    if step < warmup:
        return peak * (step + 1) / warmup
    h = int(total * hold)
    if step < h:
        return peak
    p = (step - h) / max(1, total - h)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------
def edge_weight(x):
    """1 on pixels within 1px of a colour edge of the ground-truth image, else 0."""
    g = torch.zeros_like(x[:, :1])
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum(1, keepdim=True) > 0.05
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum(1, keepdim=True) > 0.05
    g[:, :, :, 1:] += dx; g[:, :, :, :-1] += dx
    g[:, :, 1:, :] += dy; g[:, :, :-1, :] += dy
    g = F.max_pool2d((g > 0).float(), 3, 1, 1)
    return g


def vae_eval(vae, n=600, seed=999):
    imgs, caps, trips = shapes.make_batch(n, seed, train_only=False)
    x = to_tensor(imgs)
    recs, lat = [], []
    with torch.no_grad():
        for i in range(0, n, 100):
            post = vae.encode(x[i:i + 100]).latent_dist
            lat.append(post.mean)
            recs.append(vae.decode(post.mean).sample)
    rec = torch.cat(recs)
    mse = ((rec.clamp(-1, 1) - x) / 2).pow(2).mean().item()
    psnr = 10 * math.log10(1 / mse)
    r8 = to_uint8(rec)
    ok = np.array([shapes.score(r, *t) for r, t in zip(r8, trips)], dtype=float)
    return psnr, ok.mean(0), torch.cat(lat)


def finalize_vae(args, vae=None, seconds=None):
    """Make the posterior (near-)deterministic and measure scaling_factor = 1/std(latents).

    The VAE is trained on the posterior mode (an autoencoder with a very light KL term), so
    its log-variance head is untrained; it is set to a constant tiny variance (std e^-6 in raw
    latent units) so that latent_dist.sample() == mode() up to negligible noise."""
    from diffusers import AutoencoderKL
    if vae is None:
        vae = AutoencoderKL.from_pretrained(os.path.join(CKPT, "vae")).eval()
    with torch.no_grad():
        c = vae.config.latent_channels
        vae.quant_conv.weight[c:] = 0.0
        vae.quant_conv.bias[c:] = -12.0
        imgs, _, _ = shapes.make_batch(1000, 4242, train_only=True)
        post = vae.encode(to_tensor(imgs)).latent_dist
        z = post.sample(generator=torch.Generator().manual_seed(0))
    sf = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=round(sf, 5))
    psnr, acc, _ = vae_eval(vae, n=1000)
    log(f"VAE: PSNR {psnr:.2f} dB, round-trip measured colour/bg/shape {acc.round(4)}, "
        f"latent std {z.std():.4f} mean {z.mean():.4f} -> scaling_factor {sf:.5f}")
    vae.save_pretrained(os.path.join(CKPT, "vae"))
    st = dict(psnr=psnr, acc=acc.tolist(), scaling_factor=sf)
    if seconds is not None:
        st["seconds"] = seconds
    json.dump(st, open(os.path.join(CKPT, "vae_stats.json"), "w"))
    return vae


def train_vae(args):
    from diffusers import AutoencoderKL
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    log(f"VAE params {sum(p.numel() for p in vae.parameters())/1e6:.2f} M")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    t0 = time.time()
    steps, bs = args.vae_steps, args.vae_batch
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.vae_lr, warmup=50, hold=0.2)
        imgs, _, _ = shapes.make_batch(bs, args.seed * 1_000_003 + step, train_only=True)
        x = to_tensor(imgs)
        post = vae.encode(x).latent_dist
        # deterministic (mode) latents for the first part of training: much faster to learn
        z = post.mode() if step < args.vae_det_steps else post.sample()
        y = vae.decode(z).sample
        w = 1.0 + args.edge_weight * edge_weight(x)
        err = y - x
        rec = (w * (err.pow(2) + 0.5 * err.abs())).mean()
        gx = (y[..., 1:] - y[..., :-1]) - (x[..., 1:] - x[..., :-1])
        gy = (y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
        grad = gx.abs().mean() + gy.abs().mean()
        kl = post.kl().mean()
        loss = rec + args.grad_weight * grad + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"vae step {step}/{steps} loss {loss.item():.4f} rec {rec.item():.4f} "
                f"grad {grad.item():.4f} kl {kl.item():.1f} | {el:.0f}s, eta {el/(step+1)*(steps-step-1):.0f}s")
        if (step + 1) % args.vae_eval_every == 0 and step + 1 < steps:
            vae.eval()
            psnr, acc, _ = vae_eval(vae, n=200)
            vae.train()
            log(f"  eval: PSNR {psnr:.2f} dB, round-trip measured colour/bg/shape {acc.round(3)}")
            vae.save_pretrained(os.path.join(CKPT, "vae_partial"))
    vae.eval()
    os.makedirs(CKPT, exist_ok=True)
    vae.save_pretrained(os.path.join(CKPT, "vae"))
    finalize_vae(args, vae, seconds=time.time() - t0)
    return vae


def encode_dataset(vae, n, seed):
    imgs, caps, trips = shapes.make_batch(n, seed, train_only=True)
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, n, 250):
            post = vae.encode(to_tensor(imgs[i:i + 250])).latent_dist
            means.append(post.mean); stds.append(post.std)
    return torch.cat(means), torch.cat(stds), caps


def train_unet(args):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(os.path.join(CKPT, "vae")).eval()
    sf = vae.config.scaling_factor
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    t0 = time.time()
    lat_mean, lat_std, caps = encode_dataset(vae, args.n_images, args.seed + 7)
    log(f"encoded {len(caps)} training images in {time.time()-t0:.0f}s")
    # tokenize all captions once; the empty caption is index -1
    uniq = sorted(set(caps)) + [""]
    cap_index = {c: i for i, c in enumerate(uniq)}
    ids_all = tok(uniq, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    cap_idx = torch.tensor([cap_index[c] for c in caps])

    torch.manual_seed(args.seed)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    if args.resume:
        # phase 2: continue from the (EMA) weights of the previous phase, new schedule and data order
        src = args.resume
        text = CLIPTextModel.from_pretrained(os.path.join(src, "text_encoder")).float().train()
        unet = UNet2DConditionModel.from_pretrained(os.path.join(src, "unet")).float().train()
        log(f"continuing from {src}")
    log(f"UNet params {sum(p.numel() for p in unet.parameters())/1e6:.2f} M, text encoder "
        f"{sum(p.numel() for p in text.parameters())/1e6:.2f} M")
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                             if k not in ("skip_prk_steps", "steps_offset", "set_alpha_to_one")})
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_u, ema_t = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    for p in list(ema_u.parameters()) + list(ema_t.parameters()):
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed + 1 + (1000 if args.resume else 0))
    steps, bs = args.steps, args.batch
    t0 = time.time()
    run_loss = None
    for step in range(steps):
        lr = lr_at(step, steps, args.lr, warmup=100, hold=args.hold)
        for gr in opt.param_groups:
            gr["lr"] = lr
        idx = torch.randint(0, len(caps), (bs,), generator=g)
        z0 = lat_mean[idx] * sf  # posterior std is ~e^-6 (see finalize_vae): use the mean
        ci = cap_idx[idx].clone()
        drop = torch.rand(bs, generator=g) < args.p_uncond
        ci[drop] = len(uniq) - 1
        ids = ids_all[ci]
        t = torch.randint(0, 1000, (bs,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        zt = sched.add_noise(z0, noise, t)
        cond = text(ids).last_hidden_state
        pred = unet(zt, t, cond).sample
        w = torch.clamp(snr[t], max=args.min_snr) / snr[t]  # min-SNR-gamma for epsilon
        loss = (w * (pred - noise).pow(2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # EMA (starts after warm-up)
        decay = 0.0 if step < args.ema_start else min(args.ema, (1 + step - args.ema_start) / (10 + step - args.ema_start))
        with torch.no_grad():
            for em, m in ((ema_u, unet), (ema_t, text)):
                for pe, p in zip(em.parameters(), m.parameters()):
                    pe.lerp_(p, 1 - decay)
        run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"unet step {step}/{steps} loss {loss.item():.4f} (avg {run_loss:.4f}) lr {lr:.2e} | "
                f"{el:.0f}s, {el/(step+1):.2f}s/step, eta {el/(step+1)*(steps-step-1):.0f}s")
        if (step + 1) % args.ckpt_every == 0 or step == steps - 1:
            ema_u.save_pretrained(os.path.join(CKPT, "unet"))
            ema_t.save_pretrained(os.path.join(CKPT, "text_encoder"))
            log(f"  checkpoint (EMA) at step {step+1} -> {CKPT}")
    log(f"UNet+text encoder training done in {time.time()-t0:.0f}s")
    json.dump(dict(steps=steps, seconds=time.time() - t0, final_loss=run_loss),
              open(os.path.join(CKPT, "unet_stats.json"), "w"))


# ----------------------------------------------------------------------------------------------
# install
# ----------------------------------------------------------------------------------------------
def install(args):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    out = args.out
    if os.path.abspath(out) != os.path.abspath(MODEL_DIR):
        shutil.rmtree(os.path.join(out, "tokenizer"), ignore_errors=True)
        shutil.copytree(TOKENIZER_DIR, os.path.join(out, "tokenizer"))
    for sub in ("vae", "unet", "text_encoder", "scheduler"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    AutoencoderKL.from_pretrained(os.path.join(CKPT, "vae")).to(torch.float16).save_pretrained(
        os.path.join(out, "vae"), safe_serialization=True)
    UNet2DConditionModel.from_pretrained(os.path.join(CKPT, "unet")).to(torch.float16).save_pretrained(
        os.path.join(out, "unet"), safe_serialization=True)
    CLIPTextModel.from_pretrained(os.path.join(CKPT, "text_encoder")).to(torch.float16).save_pretrained(
        os.path.join(out, "text_encoder"), safe_serialization=True)
    PNDMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "clip_sample"}).save_pretrained(
        os.path.join(out, "scheduler"))
    # like SD v1's scheduler_config.json, record clip_sample=false (PNDM ignores it; DDIM & co.
    # would otherwise default to clipping x0 to [-1, 1], which is wrong for latents)
    sc_path = os.path.join(out, "scheduler", "scheduler_config.json")
    sc = json.load(open(sc_path))
    sc["clip_sample"] = False
    json.dump(sc, open(sc_path, "w"), indent=2, sort_keys=True)
    mi = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    json.dump(mi, open(os.path.join(out, "model_index.json"), "w"), indent=2)
    # weights are stored in float16; make the text encoder's config say float32 so that
    # transformers' default dtype="auto" loads it as float32 like the diffusers components
    tc_path = os.path.join(out, "text_encoder", "config.json")
    tc = json.load(open(tc_path))
    tc["dtype"] = "float32"
    json.dump(tc, open(tc_path, "w"), indent=2, sort_keys=True)
    for root, _, files in os.walk(out):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    total = 0
    for root, _, files in os.walk(out):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
            assert not f.endswith((".bin", ".pt", ".ckpt")), f
    log(f"installed to {out}: {total/1e6:.2f} MB ({total/2**20:.2f} MiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["all", "vae", "vae-finalize", "unet", "unet2", "install"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=MODEL_DIR, help="install stage: where to write the pipeline folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-steps", type=int, default=700)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--edge-weight", type=float, default=2.0)
    ap.add_argument("--grad-weight", type=float, default=0.25)
    ap.add_argument("--vae-det-steps", type=int, default=700)
    ap.add_argument("--vae-eval-every", type=int, default=250)
    ap.add_argument("--kl-weight", type=float, default=2e-7)
    ap.add_argument("--n-images", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hold", type=float, default=0.4, help="fraction of steps at peak lr before cosine decay")
    ap.add_argument("--resume", default="", help="unet stage: continue from this folder's unet/ and text_encoder/")
    ap.add_argument("--steps2", type=int, default=1200, help="phase-2 steps (0: no phase 2)")
    ap.add_argument("--lr2", type=float, default=5e-4)
    ap.add_argument("--hold2", type=float, default=0.3)
    ap.add_argument("--ema-start2", type=int, default=100)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--ema-start", type=int, default=200)
    ap.add_argument("--ckpt-every", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.stage in ("all", "vae"):
        train_vae(args)
    if args.stage == "vae-finalize":
        finalize_vae(args)
    if args.stage in ("all", "unet"):
        train_unet(args)
    if args.stage in ("all", "unet2") and args.steps2 > 0:
        # phase 2: continue from phase 1's EMA weights with a lower, decaying learning rate
        p1 = os.path.join(CKPT, "phase1")
        shutil.rmtree(p1, ignore_errors=True)
        os.makedirs(p1)
        for sub in ("unet", "text_encoder"):
            shutil.copytree(os.path.join(CKPT, sub), os.path.join(p1, sub))
        a2 = argparse.Namespace(**vars(args))
        a2.steps, a2.lr, a2.hold, a2.ema_start, a2.resume = (args.steps2, args.lr2, args.hold2,
                                                            args.ema_start2, p1)
        train_unet(a2)
    if args.stage in ("all", "install"):
        install(args)
    log(f"total wall time {time.time()-t0:.0f}s ({(time.time()-t0)/60:.1f} min)")


if __name__ == "__main__":
    main()
