"""The server's cost, measured side by side in one run (`make bench`, or this file alone).

1. Request latency under load: a `graphflow serve` process on a free loopback port, 20 client
   threads submitting 10 runs each of workflows/hello.json (a cheap workflow: the server, not the
   work, is measured) and reading each run's status right after; p50 and p99 of each request as
   the Python client sees it (a new connection per request, JSON both ways).
2. Overhead: txt2img on the embedded model through the server (submit, then wait on the event
   stream) against the same run through the Python API in this process, both warm (model loaded,
   prompt encoded), a new seed each time so the denoising always runs, the two interleaved. The
   server's CPU time includes its worker process's.
3. The worker process itself: hello.json run through ``WorkerProcess`` (pickled over a pipe, events
   relayed) against the same executor work on a thread of this process, as the server ran it before
   runs moved to a process; and what starting (or, after a kill, restarting) the process costs.
Threads: torch's default in each process; the machine's other load shows in the wall times, less
in the CPU times.
"""

from __future__ import annotations

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

from graphflow.client import Client  # noqa: E402

CLIENTS, PER_CLIENT, ROUNDS = 20, 10, int(os.environ.get("BENCH_SERVER_ROUNDS", "4"))


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def start_server(out: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "graphflow.cli", "serve", "--port", "0", "--out", str(out), "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if not line.startswith("graphflow serve: http"):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split()[2]


def load(url: str) -> None:
    submit_ms: list[float] = []
    status_ms: list[float] = []
    ids: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        c = Client(url, timeout=60)
        for i in range(PER_CLIENT):
            t0 = time.perf_counter()
            rid = c.submit("hello", {"n": (k * PER_CLIENT + i) % 50 + 1})
            t1 = time.perf_counter()
            c.run(rid)
            t2 = time.perf_counter()
            with lock:
                submit_ms.append((t1 - t0) * 1e3)
                status_ms.append((t2 - t1) * 1e3)
                ids.append(rid)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = Client(url, timeout=120)
    runs = [c.wait(rid, timeout=300) for rid in ids]
    wall = time.perf_counter() - t0
    assert len(set(ids)) == CLIENTS * PER_CLIENT and all(r["status"] == "done" for r in runs)
    print(f"{CLIENTS} clients × {PER_CLIENT} submissions of hello.json: all {len(runs)} done in {wall:.2f} s "
          f"({len(runs) / wall:.0f} runs/s, submitted to finished)")
    print("| request | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for name, xs in (("POST /api/runs (submit)", submit_ms), ("GET /api/runs/{id} (status)", status_ms)):
        print(f"| {name} | {percentile(xs, 50):.1f} | {percentile(xs, 99):.1f} | {max(xs):.1f} |")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children so far (Linux /proc): the
    server's and its worker process's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except OSError:
                pass
    return total


def overhead(url: str, out: Path, server_pid: int) -> None:
    import torch

    import graphflow

    torch.manual_seed(0)
    c = Client(url, timeout=600)
    ex = graphflow.Executor(out_dir=out / "api")
    wf = graphflow.load(ROOT / "workflows" / "txt2img.json")

    cpu = {"server": [], "api": []}

    def via_server(seed: int) -> tuple[float, float]:
        c0, s0, t0 = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
        run = c.wait(c.submit("txt2img", {"seed": seed}), timeout=600)
        assert run["status"] == "done", run
        wall = time.perf_counter() - t0
        cpu["server"].append(time.process_time() - c0 + cpu_seconds(server_pid) - s0)  # the server's and the client's
        return wall, run["seconds"]

    def via_api(seed: int) -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        r = ex.run(wf.with_params(seed=seed))
        assert r.ok, r.errors
        wall = time.perf_counter() - t0
        cpu["api"].append(time.process_time() - c0)
        return wall, r.seconds

    via_server(1000), via_api(1000)  # warm: model loaded, prompts encoded, in both processes
    cpu["server"].clear(), cpu["api"].clear()
    server, api = [], []
    for i in range(ROUNDS):
        if i % 2:
            api.append(via_api(i))
            server.append(via_server(i))
        else:
            server.append(via_server(i))
            api.append(via_api(i))
    ms, ma = statistics.median(w for w, _ in server), statistics.median(w for w, _ in api)
    pairs = statistics.median(s[0] / a[0] for s, a in zip(server, api))
    beyond_s = statistics.median((w - e) * 1e3 for w, e in server)
    beyond_a = statistics.median((w - e) * 1e3 for w, e in api)
    print(f"\ntxt2img, tiny-sd, 30 LMS steps, warm, {ROUNDS} runs each, interleaved (medians):")
    print("| path | seconds | ÷ Python API | ms beyond the run's own time |")
    print("|---|---|---|---|")
    print(f"| Python API (`Executor.run`) | {ma:.3f} | 1.000 | {beyond_a:.1f} |")
    print(f"| server (`Client.submit` + `wait`: HTTP, SQLite, event stream) | {ms:.3f} | {ms / ma:.3f} "
          f"(pairwise {pairs:.3f}) | {beyond_s:.1f} |")
    cs, ca = statistics.median(cpu["server"]), statistics.median(cpu["api"])
    print(f"| CPU seconds (less sensitive to other load): server process + client | {cs:.3f} | {cs / ca:.3f} | |")
    print(f"| CPU seconds: Python API process | {ca:.3f} | 1.000 | |")
    print(f"all runs (wall s), server: {', '.join(f'{w:.2f}' for w, _ in server)}; API: {', '.join(f'{w:.2f}' for w, _ in api)}")


def worker_process(out: Path, n: int = 200) -> None:
    import functools

    from graphflow.engine.executor import Executor
    from graphflow.graph.workflow import Workflow
    from graphflow.node.registry import default_registry
    from graphflow.options import build_executor, build_registry
    from graphflow.server.run_events import event_dict
    from graphflow.server.worker_process import WorkerProcess, WorkerRecipe

    import orjson

    doc = orjson.loads((ROOT / "workflows" / "hello.json").read_bytes())
    recipe = WorkerRecipe(make_executor=functools.partial(build_executor, str(out), None, {"check_finite": True}),
                          make_registry=functools.partial(build_registry, ()))
    proc = WorkerProcess(recipe)
    t0 = time.perf_counter()
    proc.ensure()
    start = time.perf_counter() - t0

    def via_process(k: int) -> float:
        t = time.perf_counter()
        proc.send(("run", f"r{k}", doc, {"n": k % 50 + 1}, str(out / "p")))
        while True:
            msg = proc.receive(10.0)
            if msg is not None and msg[0] != "event":
                assert msg[0] == "result" and msg[2] == "done", msg
                return time.perf_counter() - t

    registry = default_registry([])
    ex = Executor(out_dir=out, check_finite=True)

    def in_thread(k: int) -> float:
        t = time.perf_counter()
        bound = Workflow.from_dict(doc, registry, "<request>").bind({"n": k % 50 + 1}, ex.limits)
        h = ex.submit(bound, out_dir=out / "t")
        for e in h.events():
            event_dict(e)
        assert h.result().ok
        return time.perf_counter() - t

    for k in range(20):  # warm both
        via_process(k), in_thread(k)
    p, t = [], []
    for k in range(n):
        (p.append(via_process(k)), t.append(in_thread(k))) if k % 2 else (t.append(in_thread(k)), p.append(via_process(k)))
    mp, mt = statistics.median(p) * 1e3, statistics.median(t) * 1e3
    t0 = time.perf_counter()
    proc.kill()
    proc.ensure()
    restart = time.perf_counter() - t0
    proc.close()
    ex.close()
    print(f"\nhello.json (a loop of 1-50 additions and a file), {n} runs each, interleaved (medians):")
    print("| path | ms per run | ÷ thread |")
    print("|---|---|---|")
    print(f"| executor on a thread of the server (before) | {mt:.2f} | 1.00 |")
    print(f"| worker process: pickled over a pipe, events relayed (now) | {mp:.2f} | {mp / mt:.2f} |")
    print(f"per-run overhead of the process: {mp - mt:.2f} ms; starting it: {start:.2f} s; killing and restarting it: {restart:.2f} s "
          "(models then load again on their first use)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "server")
        try:
            load(url)
            overhead(url, Path(tmp), proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        worker_process(Path(tmp) / "worker")


if __name__ == "__main__":
    main()
