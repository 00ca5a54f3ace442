"""The first picture from a large model, each way in a new process: imports, loading, one step.

The model is a random-weight folder of SD 1.5's full architecture (the shipped ``nodes/configs/sd15``
configs, float16 safetensors, about 2 GB, the CLIP tokenizer of the shipped tiny-sd), written once
into ``--folder`` and kept there (never in the repository or the tests). txt2img at 64 px, 1 LMS
step, guidance 2.5, every variant in a new process, rounds interleaved so the machine's drift hits
them alike:

- diffusers' ``StableDiffusionPipeline`` (from_pretrained in float32, as graphflow computes on the CPU
  by default: both convert the float16 weights; LMS, the same prompt and size);
- graphflow as it was (``--before REF``, default ``main``: that commit's tree, extracted with
  ``git archive``), with a fresh disk cache, then in a second process on that cache (a new seed,
  so the UNet runs again);
- graphflow now, the same two. The fresh process hashes every byte of the folder (its files'
  content ids: BLAKE3 now, blake2b before the first-picture work); the second finds the ids in
  the disk cache's ``content-ids.json`` (by device, inode, size and mtime) and hashes nothing.

Every process gets the same torch thread count (``--threads``, default 1: on a shared machine more
threads measure the neighbours). Seconds are whole-process wall times, and CPU seconds (user +
system) beside them, which a shared machine disturbs far less; each round starts with another of
the three (diffusers, the before pair, the now pair), so that none is always first. ``--profile`` lines of the
graphflow runs (content ids hashed / remembered) are printed under the table.

    .venv/bin/python bench/bench_first_picture.py [--rounds N] [--folder DIR] [--before REF]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "nodes" / "configs" / "sd15"
TOKENIZER = ROOT / "nodes" / "models" / "tiny-sd" / "tokenizer"
PROMPT = "a red circle on a blue background"


def build_folder(out: Path) -> Path:
    """SD 1.5's architecture with random weights, float16, as a diffusers folder (once)."""
    if (out / "model_index.json").exists():
        return out
    import torch
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(0)
    t = time.perf_counter()
    for name, make in (("unet", lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIG, subfolder="unet"))),
                       ("vae", lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG, subfolder="vae"))),
                       ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIG, subfolder="text_encoder")))):
        m = make().to(torch.float16)
        m.save_pretrained(tmp / name, safe_serialization=True)
        del m
    LMSDiscreteScheduler.from_pretrained(CONFIG, subfolder="scheduler").save_pretrained(tmp / "scheduler")
    shutil.copytree(TOKENIZER, tmp / "tokenizer")
    shutil.copy(CONFIG / "model_index.json", tmp / "model_index.json")
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    return out


DIFFUSERS = """
import sys, torch
from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, requires_safety_checker=False,
                                               local_files_only=True, torch_dtype=torch.float32)
pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
img = pipe(sys.argv[2], height=64, width=64, num_inference_steps=1, guidance_scale=2.5,
           generator=torch.Generator().manual_seed(int(sys.argv[3]))).images[0]
assert img.size == (64, 64)
"""


def source_tree(ref: str, where: Path) -> Path:
    """The repository's tree at ``ref`` (``git archive``), with the node library importable."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    where.mkdir(parents=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    (where / "graphflow_nodes").symlink_to("nodes")
    return where


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, the process and its threads) and stderr. On a
    shared machine the CPU seconds vary far less than the wall time: they count this process's own
    work, not the time it waited for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed ({p.returncode}):\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "graphflow-bench-sd15-random"),
                    help="where the 2 GB model folder is written once and kept")
    ap.add_argument("--before", default="main", help="the commit graphflow 'before' is (default: main)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every process (default 1)")
    a = ap.parse_args()
    folder = build_folder(Path(a.folder).resolve())
    work = Path(tempfile.mkdtemp(prefix="bench_first_"))
    before = source_tree(a.before, work / "before")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("GRAPHFLOW_THREADS", None)

    def graphflow(tree: Path, cache: Path, seed: int) -> list[str]:
        return [sys.executable, "-m", "graphflow.cli", "run", "txt2img", "--set", f"model={folder}", "--set", "width=64",
                "--set", "height=64", "--set", "steps=1", "--set", f"seed={seed}", "--set", f"prompt={PROMPT}",
                "--cache-dir", str(cache), "--out", str(work / "out"), "--profile"]

    names = ["diffusers StableDiffusionPipeline", "graphflow before, fresh disk cache", "graphflow before, second process",
             "graphflow now, fresh disk cache", "graphflow now, second process"]
    times: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    notes: dict[str, list[str]] = {}
    print(f"txt2img 64 px, 1 LMS step, SD 1.5 architecture (random, float16, {folder}); {a.threads} torch thread(s); "
          f"{a.rounds} round(s), each variant a new process; before = {a.before}")

    def diffusers(r: int) -> None:
        dt, cpu, _ = run([sys.executable, "-c", DIFFUSERS, str(folder), PROMPT, str(r)], env, ROOT)
        times[names[0]].append(dt)
        cpus[names[0]].append(cpu)

    def pair(r: int, k: int, tree: Path, label: str) -> None:
        """A fresh disk cache, then a second process on it (the pair stays in this order)."""
        cache = work / f"cache-{label}-{r}"
        benv = {**env, "PYTHONPATH": str(tree)}
        for j, seed in enumerate((10 * r, 10 * r + 1)):
            dt, cpu, err = run(graphflow(tree, cache, seed), benv, tree)
            name = names[1 + 2 * k + j]
            times[name].append(dt)
            cpus[name].append(cpu)
            line = next((x for x in err.splitlines() if x.startswith("content ids:")), None)
            if line:
                notes.setdefault(name, [])
                notes[name].append(line)

    units = [diffusers, lambda r: pair(r, 0, before, "before"), lambda r: pair(r, 1, ROOT, "now")]
    for r in range(a.rounds):
        for u in units[r % 3:] + units[:r % 3]:  # each round starts with another: no variant is always first
            u(r)
        print(f"  round {r + 1}: " + ", ".join(f"{times[n][-1]:.1f} s ({cpus[n][-1]:.1f} CPU s)" for n in names), flush=True)
    base, cbase = min(times[names[0]]), min(cpus[names[0]])
    mbase, mcbase = statistics.median(times[names[0]]), statistics.median(cpus[names[0]])
    print(f"\n{'variant':<38} {'best s':>7} {'÷ diff.':>8} {'median s':>9} {'÷ diff.':>8} {'best CPU s':>11} {'÷ diff.':>8} "
          f"{'median CPU s':>13} {'÷ diff.':>8}")
    for n in names:
        t, c = times[n], cpus[n]
        print(f"{n:<38} {min(t):7.2f} {min(t) / base:7.2f}× {statistics.median(t):9.2f} {statistics.median(t) / mbase:7.2f}× "
              f"{min(c):11.2f} {min(c) / cbase:7.2f}× {statistics.median(c):13.2f} {statistics.median(c) / mcbase:7.2f}×")
    for n, lines in notes.items():
        for line in lines:
            print(f"  {n}: {line}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
