"""Which thread runs torch, measured side by side in one run: txt2img on the shipped tiny-sd,
each way in a fresh process of its own, before and after the main thread has done some torch
work (as a notebook cell, a script or a picture conversion does):

- ``submit().result()``: the run executes on the executor's worker thread (what ``Executor.run``
  did before it ran on the caller's thread);
- ``Executor.run``: the run executes on the calling (main) thread;
- the worker again with libgomp told never to spin (``OMP_WAIT_POLICY=PASSIVE``), and with one
  torch thread (``OMP_NUM_THREADS=1``), to tell the cause apart.

Per row: seconds a run (best and median: another process on a shared machine slows some runs a
lot, the best is closest to the run's own cost), CPU seconds over wall seconds (how many cores the run kept
busy), voluntary context switches a run (a thread going to sleep in the kernel: libgomp's idle
team members once they stop spinning), and the CPU burnt meanwhile by the helper thread(s) that
the main thread's torch work started (its OpenMP team).

    .venv/bin/python bench/bench_threads.py [--runs N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TXT2IMG = ROOT / "workflows" / "txt2img.json"
CLK = os.sysconf("SC_CLK_TCK")


def switches() -> int:
    """Voluntary context switches of all this process's threads so far."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    n += int(line.split()[1])
        except OSError:
            continue
    return n


def cpu_by_thread() -> dict[int, float]:
    """CPU seconds (user + system) of every OS thread of this process, by thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK
    return out


def main_thread_torch_work() -> None:
    """What a cell does between runs: a few convolutions and sums, large enough for torch to run
    them on its thread team (OpenMP starts a team for the calling thread on first use)."""
    import torch

    x = torch.randn(1, 4, 64, 64)
    w = torch.randn(64, 4, 3, 3)
    for _ in range(20):
        y = torch.nn.functional.conv2d(x, w, padding=1)
        (y * 2 + 1).sum()


def measure(via: str, runs: int, steps: int) -> dict:
    """In this process: a first run (it loads the model), ``runs`` timed runs, torch work on the
    main thread, ``runs`` timed runs; ``via`` "worker" also times runs on the main thread last."""
    import graphflow
    from graphflow.engine import events as ev
    from graphflow.engine.executor import Executor

    wf = graphflow.load(TXT2IMG).with_params(steps=steps)
    ex = Executor(out_dir=tempfile.mkdtemp(prefix="bench_threads_"))
    where: list[int] = []
    ex.subscribe(lambda e: where.append(threading.get_native_id()) if isinstance(e, ev.RunStarted) else None,
                 on_run_thread=True)
    main_tid = threading.get_native_id()
    seed = iter(range(10_000))

    def on_worker() -> None:
        r = ex.submit(wf.with_params(seed=next(seed))).result()
        assert r.ok, r.errors
        assert where[-1] != main_tid

    def on_caller() -> None:
        r = ex.run(wf.with_params(seed=next(seed)))
        assert r.ok, r.errors
        assert where[-1] == main_tid, "Executor.run did not run on the calling thread"

    def phase(run) -> dict:
        c0, s0, t0 = cpu_by_thread(), switches(), time.perf_counter()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        wall, c1, s1 = time.perf_counter() - t0, cpu_by_thread(), switches()
        cpu = {t: c1[t] - c0.get(t, 0.0) for t in c1}
        return {"median": statistics.median(times), "best": min(times), "cpu_per_wall": sum(cpu.values()) / wall,
                "switches": (s1 - s0) / runs, "cpu": cpu}

    first = on_worker if via == "worker" else on_caller
    first()  # loads the model: the first torch work of the process
    tids0 = set(cpu_by_thread())
    rows = {"before torch on main": phase(first)}
    main_thread_torch_work()
    helpers = set(cpu_by_thread()) - tids0  # started by that work: the main thread's OpenMP team
    rows["after torch on main"] = phase(first)
    if via == "worker":
        rows["then on the main thread (Executor.run)"] = phase(on_caller)
    import torch

    for r in rows.values():
        r["helpers_cpu"] = sum(r.pop("cpu").get(t, 0.0) for t in helpers) / runs
    return {"threads": torch.get_num_threads(), "new_threads": len(helpers), "rows": rows}


VARIANTS = [
    ("submit(): on the worker thread", "worker", {}),
    ("Executor.run: on the calling thread", "caller", {}),
    ("submit(), OMP_WAIT_POLICY=PASSIVE", "worker", {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("submit(), OMP_NUM_THREADS=1", "worker", {"OMP_NUM_THREADS": "1"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per row")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.runs, a.steps)))
        return
    print(f"txt2img, tiny-sd, {a.steps} LMS steps, {a.runs} runs a row; each variant in a fresh process, rows in the order run")
    print(f"{'variant':<38} {'row':<40} {'best s':>6} {'÷ 1st row':>9} {'median s':>8} {'CPU/wall':>8} {'switches/run':>12} {'main team CPU/run':>17}")
    for label, via, env in VARIANTS:
        p = subprocess.run([sys.executable, __file__, "--child", via, "--runs", str(a.runs), "--steps", str(a.steps)],
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
        if p.returncode:
            print(f"{label}: failed\n{p.stderr[-2000:]}")
            continue
        res = json.loads(p.stdout.strip().splitlines()[-1])
        base = res["rows"]["before torch on main"]["best"]
        for k, (name, r) in enumerate(res["rows"].items()):
            print(f"{label if k == 0 else '':<38} {name:<40} {r['best']:6.3f} {r['best'] / base:8.2f}× {r['median']:8.3f} "
                  f"{r['cpu_per_wall']:8.2f} {r['switches']:12.0f} {r['helpers_cpu']:17.2f}")
        print(f"{'':<38} ({res['threads']} torch threads; the main thread's torch work started {res['new_threads']} thread(s))")


if __name__ == "__main__":
    main()
