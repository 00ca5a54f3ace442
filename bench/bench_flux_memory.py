"""Peak resident memory of one Flux text-to-image run on a mid-size random Flux folder: diffusers'
``FluxPipeline`` (every component loaded up front, held to the end), graphflow's
``workflows/txt2img_flux.json`` with the default model budget (8 GiB: everything fits, everything
stays), and the same workflow under a budget of the largest component plus a little, where the
text encoders leave once the prompt is encoded, before the transformer loads
(``ModelManager.unpin``, ``ModelRef.expected_bytes``).

The folder is built with the real classes (tests/tiny_flow_models.py's layout) at mid size: a
T5 encoder of width 1024 × 12 layers (the largest part, as T5-XXL is at full size), a CLIP
encoder of width 512, a Flux transformer of width 512 with 2 double and 4 single blocks, the
16-channel VAE. Each variant runs in a fresh process; the figure is the peak RSS over the process
after imports (``VmHWM``), CPU float32, 256×256, 4 steps.

    .venv/bin/python bench/bench_flux_memory.py [--keep DIR]
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

SIZE, STEPS, SEED, PROMPT = 256, 4, 7, "a red circle on a blue background"


def build(path: Path) -> Path:
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from tests import tiny_flow_models as tf

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
                                         num_attention_heads=8, joint_attention_dim=1024, pooled_projection_dim=512,
                                         guidance_embeds=True, axes_dims_rope=(16, 24, 24))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                                        num_attention_heads=8, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=49407, hidden_act="quick_gelu"))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tf.t5_vocab()), d_model=1024, d_kv=64, d_ff=2816, num_layers=12, num_heads=16,
                                 relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                 is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1))
    parts = {"transformer": transformer, "vae": tf.tiny_flow_vae(1), "text_encoder": clip, "text_encoder_2": t5,
             "tokenizer": tf._clip_tokenizer, "tokenizer_2": tf.build_t5_tokenizer}
    index = {
        "_class_name": "FluxPipeline", "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    return tf._save(path, parts, index, tf.FLUX_DEV_SCHEDULER)


def component_mib(path: Path) -> dict[str, float]:
    return {c: sum(f.stat().st_size for f in (path / c).glob("*.safetensors")) / 2**20
            for c in ("text_encoder", "text_encoder_2", "transformer", "vae")}


def peak_mib() -> float:
    """The process's peak resident memory (VmHWM: unlike ``ru_maxrss``, not inherited across
    exec from the parent that built the folder)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(path: str, how: str, budget: int) -> dict:
    """In a fresh process: the peak RSS growth (MiB) and seconds of one run ``how`` (pipeline|graph)."""
    import torch

    import graphflow
    from graphflow import Executor

    torch.set_num_threads(1)
    base = peak_mib()
    t = time.perf_counter()
    if how == "pipeline":
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=3.5, height=SIZE, width=SIZE, max_sequence_length=128,
             generator=torch.Generator().manual_seed(SEED), output_type="pt")
    else:
        wf = graphflow.load(ROOT / "workflows" / "txt2img_flux.json").with_params(
            model=path, prompt=PROMPT, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, max_sequence_length=128)
        r = Executor(model_budget=budget).run(wf)
        assert r.ok, r.errors
    return {"mib": peak_mib() - base, "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", nargs=3, metavar=("PATH", "HOW", "BUDGET"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", help="build the folder here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_once(args.variant[0], args.variant[1], int(args.variant[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or tmp) / "flux-mid-random"
        if not (path / "model_index.json").exists():
            build(path)
        sizes = component_mib(path)
        print("components (MiB on disk, float32): " + ", ".join(f"{c} {m:.0f}" for c, m in sizes.items())
              + f"; all {sum(sizes.values()):.0f}")
        small = int((max(sizes.values()) + 16) * 2**20)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        print(f"{'variant':<44}{'peak RSS growth':>16}{'seconds':>10}")
        for label, how, budget in (("FluxPipeline", "pipeline", 0), ("txt2img_flux, default budget (8 GiB)", "graph", 8 << 30),
                                   (f"txt2img_flux, budget {small / 2**20:.0f} MiB", "graph", small)):
            out = subprocess.run([sys.executable, __file__, "--variant", str(path), how, str(budget)], env=env, capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label:<44}{r['mib']:>12.0f} MiB{r['seconds']:>10.1f}")


if __name__ == "__main__":
    main()
