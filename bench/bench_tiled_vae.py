"""Peak memory and time of decoding one picture with SD 1.5's VAE (its shipped config, random
weights: the values do not matter here), whole against tiled (the ``Decode`` node's ``tiled``,
``nodes/stages/vae.py``), each in a fresh process; the figure is the growth of the process's peak
resident memory over the process after the model is built.

    .venv/bin/python bench/bench_tiled_vae.py [--size 512] [--tile 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(size: int, tile: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from graphflow_nodes.stages.vae import Tiling, decode

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(ROOT / "nodes" / "configs" / "sd15" / "vae")).eval()
    latents = torch.randn(1, 4, size // 8, size // 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        image = decode(vae, latents, Tiling.of(vae, tile, 0.25, "tile_size") if tile else None)
    took = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"tile": tile, "shape": list(image.shape), "peak_growth_mib": round(grown / 1024, 1), "seconds": round(took, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.size, a.child)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for tile in (0, a.tile):
        out = subprocess.run([sys.executable, __file__, "--size", str(a.size), "--child", str(tile)], capture_output=True,
                             text=True, env=env, check=True).stdout
        r = json.loads(out.splitlines()[-1])
        what = "whole" if not tile else f"tiled {tile}px, overlap 0.25"
        print(f"{a.size}×{a.size} decode, {what:>24}: peak +{r['peak_growth_mib']:7.1f} MiB, {r['seconds']:6.2f} s")


if __name__ == "__main__":
    main()
