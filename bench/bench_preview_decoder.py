"""What a preview at every step costs: a 30-step txt2img with no previews, with the linear
latent-to-RGB projection (``preview_every=1``) and with a tiny autoencoder decoding each preview
(``preview_decoder=TinyDecoder(...)``, ``--preview-decoder``), alternated in one process, best of
``--rounds`` each; and one preview alone, best of 20, as a share of the run without previews
(the same figure, less exposed to a shared machine's noise).

The tiny autoencoder is TAESD's architecture (diffusers' ``AutoencoderTiny()`` defaults: 64
channels, the decoder's 3 upsamplings) with random weights, built here: its cost is the real one's
(the weights' values do not change the work); no TAESD download is needed. On the shipped tiny-sd
(64 px) and on bench_batching.py's mid-size random SD 1.5 architecture (128 px by default).

Threads: OMP_NUM_THREADS=1 unless --threads says otherwise (this is a shared machine).

    .venv/bin/python bench/bench_preview_decoder.py [--models shipped,mid] [--size-mid 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_taesd(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(latent_channels=4).save_pretrained(folder, safe_serialization=True)
    return folder


def costs(model: Path, size: int, taesd: Path, steps: int, rounds: int) -> dict[str, float]:
    import graphflow
    from graphflow.engine import events as ev
    from graphflow.engine.executor import Executor
    from graphflow_nodes.stages.preview import TinyDecoder

    wf = graphflow.load(ROOT / "workflows" / "txt2img.json").with_params(
        model=str(model), steps=steps, width=size, height=size, scheduler="euler")
    out = tempfile.mkdtemp(prefix="graphflow-bench-preview-decoder-")
    exs = {"none": Executor(out_dir=out), "linear": Executor(out_dir=out, preview_every=1),
           "taesd": Executor(out_dir=out, preview_every=1, preview_decoder=TinyDecoder(str(taesd)))}
    counts: dict[str, int] = {}
    for name, ex in exs.items():
        seen: list = []
        ex.subscribe(lambda e, seen=seen: seen.append(e) if isinstance(e, ev.Preview) else None, on_run_thread=True)
        assert ex.run(wf).ok  # warm: models (and the decoder) loaded, the prompt cached
        ex.flush()
        counts[name] = len(seen)
    times: dict[str, list[float]] = {n: [] for n in exs}
    order = list(exs)
    for k in range(rounds):
        for name in order if k % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            r = exs[name].run(wf.with_params(seed=100 + k))  # a new seed: the loop runs again
            times[name].append(time.perf_counter() - t0)
            assert r.ok, r.errors
    # one preview alone, best of many: the same figure with less of the machine's noise in it
    import torch
    from graphflow_nodes.stages.preview import latent_preview

    x0 = torch.randn(1, 4, size // 8, size // 8)
    decoder = exs["taesd"].models.get(TinyDecoder(str(taesd)))
    each = {}
    for name, dec in (("linear", None), ("taesd", decoder)):
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            latent_preview(x0, "auto", dec)
            ts.append(time.perf_counter() - t0)
        each[f"{name}_each"] = min(ts)
    return {**{n: min(t) for n, t in times.items()}, **{f"{n}_previews": c for n, c in counts.items()}, **each}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="shipped,mid")
    ap.add_argument("--size-mid", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("GRAPHFLOW_BENCH_MODELS", Path(tempfile.gettempdir()) / "graphflow-bench-models"))
    taesd = build_taesd(cache / "taesd-architecture-random")
    for key in args.models.split(","):
        if key == "mid":
            from bench.bench_batching import build_mid

            model, size = build_mid(cache / "mid-sd15"), args.size_mid
        else:
            model, size = ROOT / "nodes" / "models" / "tiny-sd", 64
        c = costs(model, size, taesd, args.steps, args.rounds)
        print(f"\n{key} model ({model.name}, {size} px), {args.steps} Euler steps, best of {args.rounds}, "
              f"{args.threads} torch thread(s), one process")
        for name, label in (("none", "no previews"), ("linear", "linear projection, every step"),
                            ("taesd", "TAESD-architecture decoder, every step")):
            extra = "" if name == "none" else (f"  {c[f'{name}_previews']} previews, {100 * (c[name] / c['none'] - 1):+.1f} %; "
                                               f"one preview alone {1000 * c[f'{name}_each']:.1f} ms = "
                                               f"{100 * args.steps * c[f'{name}_each'] / c['none']:.1f} % of the run")
            print(f"{label:42} {c[name]:8.3f} s{extra}")


if __name__ == "__main__":
    main()
