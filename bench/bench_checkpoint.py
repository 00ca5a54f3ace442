"""Peak memory of loading one component of a full-size single-file checkpoint, side by side: the
whole file read, as diffusers' ``from_single_file(path)`` and the previous graphflow did for every
component, against graphflow reading only that component's tensors (``nodes/loading/checkpoint.py``).

The checkpoint is SD 1.5-sized (UNet, VAE, CLIP ViT-L text encoder from the shipped ``sd15``
configs, float16, zeros: the weights' values do not matter here), written once in the original
layout. Each load runs in a fresh process; the figure is the growth of its peak resident memory
over the process after imports.

    .venv/bin/python bench/bench_checkpoint.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "nodes" / "configs" / "sd15"


def write_checkpoint(out: Path) -> Path:
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests import original_layout as ol

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIG, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIG, subfolder="text_encoder"))
    zeros = lambda sd: {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in sd.items()}
    state = {**ol.convert_unet(zeros(unet.state_dict()), unet.config), **ol.convert_vae(zeros(vae.state_dict()), vae.config),
             **ol.convert_text_encoder(zeros(te.state_dict()))}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out


def load_once(path: str, comp: str, how: str) -> dict:
    """In a fresh process: peak RSS growth (MiB) and seconds to load ``comp`` ``how`` (whole|component)."""
    from graphflow_nodes.loading.checkpoint import PREFIXES, CheckpointRef, load_checkpoint_component
    from graphflow_nodes.loading.model_refs import offline

    offline()
    import diffusers
    import torch
    import transformers

    # built by hand: LoadModel would hash the file's content first, reading it all (once; cached by its stat)
    ref = CheckpointRef("bench", path, comp, "sd", config=str(CONFIG), prefix=PREFIXES["sd1"][comp])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if how == "component":
        model = load_checkpoint_component(ref, "cpu", "float16")
    elif comp == "text_encoder":
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
        from safetensors.torch import load_file

        model = create_diffusers_clip_model_from_ldm(transformers.CLIPTextModel, load_file(path), subfolder=comp, config=str(CONFIG),
                                                     torch_dtype=torch.float16, local_files_only=True)
    else:
        cls = diffusers.UNet2DConditionModel if comp == "unet" else diffusers.AutoencoderKL
        model = cls.from_single_file(path, config=str(CONFIG), subfolder=comp, torch_dtype=torch.float16, local_files_only=True)
    seconds = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    return {"mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "seconds": seconds, "params": params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", nargs=3, metavar=("PATH", "COMP", "HOW"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", help="write the checkpoint here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(load_once(*args.variant)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or tmp) / "sd15-zeros-fp16.safetensors"
        if not path.exists():
            write_checkpoint(path)
        size = path.stat().st_size / 2**20
        print(f"checkpoint: SD 1.5-sized, float16, {size:.0f} MiB ({path.name})")
        print(f"{'component':<14}{'whole file read':>18}{'its tensors only':>18}{'ratio':>8}{'seconds (whole / only)':>26}")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        for comp in ("vae", "text_encoder", "unet"):
            r = {}
            for how in ("whole", "component"):
                out = subprocess.run([sys.executable, __file__, "--variant", str(path), comp, how], env=env, capture_output=True,
                                     text=True, check=True)
                r[how] = json.loads(out.stdout.strip().splitlines()[-1])
            w, c = r["whole"], r["component"]
            print(f"{comp:<14}{w['mib']:>14.0f} MiB{c['mib']:>14.0f} MiB{w['mib'] / max(c['mib'], 1):>7.1f}x"
                  f"{w['seconds']:>16.2f} / {c['seconds']:.2f}")


if __name__ == "__main__":
    main()
