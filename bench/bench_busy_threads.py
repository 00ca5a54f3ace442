"""The README's 12-item sweep (txt2img on the shipped tiny-sd, seeds 0–3 × guidance 1, 2.5, 4; 30
LMS steps, no disk cache) on this machine as it is, then with a background process burning one
core (started and stopped by the bench), each way in a new process, rounds interleaved:

- graphflow now with default settings: the thread count it chooses (``graphflow/threads.py``: the
  usable CPUs, the CPU quota, the other runnable work when it starts);
- graphflow now with each fixed count from 1 to the usable CPUs (``--threads N``);
- graphflow as it was (``--before REF``, default main, extracted with ``git archive``) with
  defaults: torch's own count (one thread per core).

Per condition: seconds per sweep (best of the rounds), and the default's ratio to the best fixed
count (the target: within 1.2× in both conditions).

    .venv/bin/python bench/bench_busy_threads.py [--rounds N] [--before REF]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDANCE = "guidance=[1.0,2.5,4.0]"
BURN = "while True:\n    pass\n"


def source_tree(ref: str, where: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    where.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    (where / "graphflow_nodes").symlink_to("nodes")
    return where


def sweep(tree: Path, out: Path, env: dict[str, str], threads: int | None, seeds: int) -> tuple[float, str]:
    grid = ["--grid", f"seed={list(range(seeds))}", "--grid", GUIDANCE]
    cmd = [sys.executable, "-m", "graphflow.cli", "sweep", "workflows/txt2img.json", *grid, "--out", str(out), "--force",
           "--no-cache", "--quiet", *(["--threads", str(threads)] if threads else [])]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env={**env, "PYTHONPATH": str(tree)}, timeout=1800)
    if p.returncode:
        raise SystemExit(f"sweep failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stderr


def chosen(env: dict[str, str]) -> str:
    code = "from graphflow import threads; print(threads.choose().describe())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", default="main")
    ap.add_argument("--seeds", type=int, default=4, help="seeds in the grid (× 3 guidance values; default 4: 12 items)")
    ap.add_argument("--conditions", default="as it is,one core burnt", help="comma-separated: 'as it is', 'one core burnt'")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_busy_"))
    before = source_tree(a.before, work / "before")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GRAPHFLOW_THREADS")}
    cpus = len(os.sched_getaffinity(0))
    variants = [("graphflow now, default", ROOT, None)] + [(f"graphflow now, --threads {n}", ROOT, n) for n in range(1, cpus + 1)]
    variants.append((f"graphflow before ({a.before}), default", before, None))
    results: dict[tuple[str, str], list[float]] = {}
    conditions = [c.strip() for c in a.conditions.split(",")]
    print(f"{3 * a.seeds}-item txt2img sweep (tiny-sd, 30 steps, --no-cache), {cpus} usable CPUs, {a.rounds} round(s); "
          f"each a new process")
    for cond in conditions:
        burner = subprocess.Popen([sys.executable, "-c", BURN]) if cond == "one core burnt" else None
        try:
            time.sleep(1.0 if burner else 0)
            with open("/proc/loadavg") as f:
                load = f.read().split()[:4]
            print(f"\n{cond}: load average {' '.join(load[:3])}, runnable {load[3]}; default: {chosen(env)}")
            for r in range(a.rounds):
                for name, tree, n in variants:
                    dt, _ = sweep(tree, work / "sweep", env, n, a.seeds)
                    results.setdefault((cond, name), []).append(dt)
                    print(f"  round {r + 1}: {name:<40} {dt:7.1f} s", flush=True)
        finally:
            if burner:
                burner.kill()
                burner.wait()
    print(f"\n{'condition':<16} {'variant':<40} {'best s':>7} {'÷ best fixed':>12}")
    for cond in conditions:
        fixed = min(min(v) for (c, name), v in results.items() if c == cond and "--threads" in name)
        for name, _, _ in variants:
            b = min(results[(cond, name)])
            print(f"{cond:<16} {name:<40} {b:7.1f} {b / fixed:11.2f}×")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
