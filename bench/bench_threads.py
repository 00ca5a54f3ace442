"""Which thread runs torch, measured side by side in one run: txt2img on the shipped tiny-sd
through the executor's worker thread (``submit().result()``) and on the calling (main) thread
(``Executor.run``), before and after the main thread has done some torch work of its own, as a
notebook cell, a script or a picture conversion does.

It also counts the CPU time that the helper threads of the *other* thread's OpenMP team burn
while a run goes on (from /proc/self/task): OpenMP keeps one thread team per calling thread, and
libgomp's idle team members spin before they sleep. Then it repeats the whole sequence in fresh
processes with libgomp told not to spin (``OMP_WAIT_POLICY=PASSIVE``), and with one torch thread,
to tell the spinning apart from other causes.

    .venv/bin/python bench/bench_threads.py [--runs N] [--steps N] [--no-children]
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


def measure(runs: int, steps: int) -> dict:
    import graphflow
    from graphflow import events as ev
    from graphflow.executor import Executor

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

    def on_caller() -> None:
        r = ex.run(wf.with_params(seed=next(seed)))
        assert r.ok, r.errors
        assert where[-1] == main_tid, "Executor.run did not run on the calling thread"

    def phase(run) -> dict:
        before = cpu_by_thread()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        after = cpu_by_thread()
        burnt = {t: after[t] - before.get(t, 0.0) for t in after}
        return {"median": statistics.median(times), "times": times, "cpu": burnt}

    on_worker()  # loads the model, on the worker: the first torch work of the process
    worker_tid = where[-1]
    tids0 = set(cpu_by_thread())
    rows = {"worker, before torch on main": phase(on_worker)}
    main_thread_torch_work()
    helpers = set(cpu_by_thread()) - tids0  # threads started by that work: the main thread's team
    rows["worker, after torch on main"] = phase(on_worker)
    rows["main thread (Executor.run)"] = phase(on_caller)
    rows["worker again"] = phase(on_worker)
    import torch

    out = {"threads": torch.get_num_threads(), "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_"))},
           "new_threads_after_main_torch": len(helpers), "rows": {}}
    for name, r in rows.items():
        cpu = r["cpu"]
        out["rows"][name] = {
            "median": r["median"],
            "main_team_helpers_cpu": sum(cpu.get(t, 0.0) for t in helpers) / runs,
            "run_thread_cpu": cpu.get(worker_tid if name.startswith("worker") else main_tid, 0.0) / runs,
            "all_cpu": sum(cpu.values()) / runs,
        }
    return out


def report(label: str, res: dict) -> None:
    base = res["rows"]["worker, before torch on main"]["median"]
    print(f"\n{label}: {res['threads']} torch threads; the main thread's torch work started "
          f"{res['new_threads_after_main_torch']} new OS thread(s)")
    print(f"  {'run on':<32} {'s/run':>7} {'÷ first':>8} {'CPU s/run: all':>15} {'run thread':>11} {'main team helpers':>18}")
    for name, r in res["rows"].items():
        print(f"  {name:<32} {r['median']:7.3f} {r['median'] / base:7.2f}× {r['all_cpu']:15.2f} "
              f"{r['run_thread_cpu']:11.2f} {r['main_team_helpers_cpu']:18.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4, help="timed runs per row (the median is shown)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-children", action="store_true", help="only this process (no OMP_WAIT_POLICY variants)")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.runs, a.steps)))
        return
    print(f"txt2img, tiny-sd, {a.steps} LMS steps, median of {a.runs} runs per row, rows in the order run")
    report("this process", measure(a.runs, a.steps))
    if a.no_children:
        return
    for label, env in [("a fresh process, OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep at once)", {"OMP_WAIT_POLICY": "PASSIVE"}),
                       ("a fresh process, OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"})]:
        p = subprocess.run([sys.executable, __file__, "--child", "--runs", str(a.runs), "--steps", str(a.steps)],
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
        if p.returncode:
            print(f"\n{label}: failed\n{p.stderr[-2000:]}")
            continue
        report(label, json.loads(p.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
