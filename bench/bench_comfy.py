"""How far a translated ComfyUI workflow's picture is from ComfyUI's own, per sampler × scheduler.

ComfyUI is not a dependency: point ``--comfyui`` at a ComfyUI checkout (its ``comfy`` package is
imported from there). What it measures: the sampling ComfyUI does, from ComfyUI's own code — ``comfy.samplers``'
  scheduler functions for the sigmas, ``comfy.k_diffusion.sampling``'s sampler functions,
  ``comfy.model_sampling.ModelSamplingDiscrete`` for the noise scaling and the UNet's input,
  timestep and denoised output, ``comfy/sample.py``'s ``prepare_noise`` rule for the starting noise
  (a CPU generator seeded with the seed), CFG on the denoised predictions as comfy/samplers.py's
  ``cfg_function`` — around the same UNet, text embeddings and VAE graphflow uses, against
  ``graphflow run`` of the default ComfyUI graph (tests/data/comfy/default.json) translated. What
  differs is then only the translation: sigmas, timesteps, noise, the sampler's update.

ComfyUI itself end to end (its executor, checkpoint loader, CLIP, samplers and VAE on a random-weight
SD 1.5 single file) against ``graphflow run``: bench/bench_comfy_real.py.

Figures are max and mean absolute differences of the decoded pictures (0..1) and of the final
latents. ::

    .venv/bin/python bench/bench_comfy.py --comfyui ~/ComfyUI [--steps 4] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [("euler", "normal"), ("euler", "karras"), ("euler_ancestral", "normal"), ("heun", "normal"), ("lms", "normal"),
         ("dpmpp_2m", "karras"), ("dpmpp_2m", "normal"), ("ddim", "ddim_uniform"), ("euler", "simple"), ("euler", "sgm_uniform"),
         ("euler", "exponential"), ("euler", "beta")]
SAMPLER_FUNCTIONS = {"ddim": "euler"}  # ComfyUI's ddim is ksampler("euler")
PROMPT = json.loads((ROOT / "tests" / "data" / "comfy" / "default.json").read_text())


def graphflow_run(model: str, sampler: str, scheduler: str, steps: int, size: int, seed: int, cfg: float):
    """The default ComfyUI graph, translated and run in this process: (image, latents)."""
    from graphflow import Executor, Workflow
    from graphflow_nodes.comfy.translate import translate

    doc, params, _ = translate(PROMPT)
    doc["nodes"].pop("n9")  # no files written
    doc["outputs"] = {"image": "n8.image", "latents": "n3.latents"}
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": model, "sampler_name": sampler, "scheduler": scheduler,
                                                             "steps": steps, "width": size, "height": size, "seed": seed, "cfg": cfg}))
    assert r.ok, r.errors
    return r["image"], r["latents"]


def comfy_core(comfyui: Path, model_dir: Path, sampler: str, scheduler: str, steps: int, size: int, seed: int, cfg: float):
    """ComfyUI's sampling code around the same diffusers UNet, embeddings and VAE: (image, latents)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(comfyui))
    import comfy.k_diffusion.sampling as ks
    import comfy.model_sampling
    import comfy.samplers

    from graphflow_nodes.stages.weighting import weighted_embeddings

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").eval()
    tok = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").eval()
    with torch.no_grad():
        cond = weighted_embeddings(tok, te, PROMPT["6"]["inputs"]["text"], "comfy")[0]
        uncond = weighted_embeddings(tok, te, PROMPT["7"]["inputs"]["text"], "comfy")[0]
    ms = comfy.model_sampling.ModelSamplingDiscrete()
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, steps).float()

    class Denoiser:  # comfy's BaseModel.apply_model + CFGGuider, EPS prediction
        def __init__(self):
            self.inner_model = type("Inner", (), {"inner_model": type("M", (), {"model_sampling": ms})()})()

        def __call__(self, x, sigma, **extra):
            x_in = ms.calculate_input(sigma, x)
            t = ms.timestep(sigma).float()
            with torch.no_grad():
                eps = unet(torch.cat([x_in] * 2), torch.cat([t] * 2), encoder_hidden_states=torch.cat([cond, uncond])).sample
            c, u = ms.calculate_denoised(torch.cat([sigma] * 2), eps, torch.cat([x] * 2)).chunk(2)
            return u + (c - u) * cfg

    latent = torch.zeros((1, 4, size // 8, size // 8))
    noise = torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout, generator=torch.manual_seed(seed), device="cpu")
    sigma_max = float(ms.sigma_max)
    max_denoise = abs(float(sigmas[0]) - sigma_max) <= 1e-5 * sigma_max or float(sigmas[0]) > sigma_max
    x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)
    fn = getattr(ks, f"sample_{SAMPLER_FUNCTIONS.get(sampler, sampler)}")
    out = fn(Denoiser(), x, sigmas, extra_args={"seed": seed}, disable=True)
    with torch.no_grad():
        image = (vae.decode(out / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return image, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_DIR"), help="a ComfyUI checkout (or $COMFYUI_DIR)")
    ap.add_argument("--model", type=Path, default=ROOT / "nodes" / "models" / "tiny-sd", help="core: a diffusers SD 1.x folder")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=8566257)
    ap.add_argument("--cfg", type=float, default=8.0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    if a.comfyui is None or not (a.comfyui / "comfy").is_dir():
        print("bench_comfy: no ComfyUI checkout (give --comfyui DIR or set COMFYUI_DIR); nothing measured", file=sys.stderr)
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    for sampler, scheduler in PAIRS:
        args = (sampler, scheduler, a.steps, a.size, a.seed, a.cfg)
        ours, ours_lat = graphflow_run(str(a.model), *args)
        theirs, theirs_lat = comfy_core(a.comfyui, a.model, *args)
        d, dl = (ours - theirs).abs(), (ours_lat - theirs_lat).abs()
        rows.append({"sampler": sampler, "scheduler": scheduler, "image_max": float(d.max()), "image_mean": float(d.mean()),
                     "latents_max": float(dl.max()), "latents_mean": float(dl.mean())})
        print(f"{sampler:16} {scheduler:13} picture max {rows[-1]['image_max']:.2e} mean {rows[-1]['image_mean']:.2e}   "
              f"latents max {rows[-1]['latents_max']:.2e} mean {rows[-1]['latents_mean']:.2e}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"mode": "core", "steps": a.steps, "size": a.size, "seed": a.seed, "cfg": a.cfg,
                                      "torch": torch.__version__, "pairs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
