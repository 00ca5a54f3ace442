"""The engine's own cost per node, measured with trivial built-in nodes (Math, Value, Range) and a
registry that holds only the built-ins, so nothing but the engine is timed.

Cases:
  chain N     N Math nodes, each adding 1 to the previous; the first reads the parameter x0
  fan-out     one Value (reading the parameter x0) feeding 10,000 Math nodes, every one of them
              named as a workflow output (no gathering node); 10,001 nodes
  loop 100²   a Loop over Range(100) whose body is a Loop over Range(100) whose body is one Math
              node adding the item to a carried sum: 10,000 body executions. The "first node" is a
              Value (reading x0) that gives the outer loop's initial sum. Its document has 5 nodes,
              so its check and bind+plan columns are that cost divided by 10,000 body executions.

Columns, µs per node (best of N, time.perf_counter, or with ``--cpu`` the thread's CPU time, the gc
left as the engine sets it; a ``gc.collect()`` before each timed call, so each starts with the
processor's caches cold: a fully cached run of the 100-node chain takes ~45 µs warm, ~140 µs so):
  check      Workflow.checked() on a fresh Workflow object (checked() is memoised per document)
  bind+plan  wf.bind() and graphflow.engine.plan.plan(Fingerprints(bound, RunOptions(), token), RunCaches(empty memory
             cache, no disk)), as Executor._execute wires them (inside fewer_gc_passes), with no
             fingerprints remembered from an earlier run
  cold       the whole call Executor().run(wf) on a fresh executor (the document already checked,
             no fingerprints remembered)
  cached     the same executor again: everything in its memory cache
  changed    the same executor with wf.with_params(x0=<a value not seen before>): every node
             downstream of the first one runs again

Then `graphflow validate workflows/txt2img.json` as a whole process (best of 5 wall times), and a
sweep of 1,000 seeds over workflows/txt2img.json (wf.with_params(seed=i).bind(), counting the calls
of graphflow.graph.check.check). The targets are printed next to the numbers.

``BENCH_ENGINE_TREE=DIR`` measures the graphflow of another checkout (DIR) with this file.

`python bench/bench_engine.py --against REF` measures the 10,000-node chain and ``graphflow validate
workflows/txt2img.json`` with this tree and with the commit REF (its tree extracted with ``git
archive``, both trees byte-compiled first), each in fresh processes, alternating for ``--rounds``
rounds, and prints the two side by side with their ratio (best of all rounds).

``--cpu`` measures CPU time instead of wall time (``time.thread_time`` for the engine, which runs on
the calling thread; the child's user+system time for ``validate``): on a machine shared with other
work, wall time mostly measures the others.

`python bench/bench_engine.py --profile` prints cProfile tables (top 15 by tottime) of the cold run
and of the fully cached re-run of the 10,000-node chain instead. ``Executor.run`` executes on the
calling thread, the one cProfile sees.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the tree whose graphflow is measured: this one, or (--against's children) the other one, measured
# by this file's code so that both are timed alike
TREE = Path(os.environ.get("BENCH_ENGINE_TREE") or ROOT)
sys.path.insert(0, str(TREE))

import graphflow  # noqa: E402
import graphflow.node.builtin  # noqa: E402
import graphflow.graph.check  # noqa: E402
from graphflow import Executor, Workflow  # noqa: E402
from graphflow.cache.memory import MemoryCache  # noqa: E402
from graphflow.cache.run_caches import RunCaches  # noqa: E402
from graphflow.engine.plan import Fingerprints, RunOptions, plan  # noqa: E402
from graphflow.gc_tuning import fewer_gc_passes  # noqa: E402
from graphflow.node.registry import Registry  # noqa: E402

TXT2IMG = ROOT / "workflows" / "txt2img.json"
PARAMS = {"x0": {"default": 0, "type": "float", "description": "the first node's value"}}

# targets (the brief's): µs/node, ratio, seconds, count
COLD_TARGET_US = 5.0        # cold run of the 10,000 chain (issue 29; 10 before it)
CACHED_TARGET_US = 2.0      # fully cached re-run
SCALING_TARGET = 1.5        # per-node cost at 100,000 ÷ per-node cost at 1,000
VALIDATE_TARGET_S = 0.25    # `graphflow validate workflows/txt2img.json`, whole process (issue 29)
SWEEP_SEEDS = 1_000


def builtin_registry() -> Registry:
    reg = Registry()
    reg.register_module(graphflow.node.builtin)
    return reg


# --- the documents ------------------------------------------------------------------------------

def chain(n: int) -> dict:
    nodes = {"n0": {"type": "Math", "inputs": {"a": {"param": "x0"}, "b": 1}}}
    for i in range(1, n):
        nodes[f"n{i}"] = {"type": "Math", "inputs": {"a": {"from": f"n{i - 1}.result"}, "b": 1}}
    return {"format": 1, "params": PARAMS, "nodes": nodes, "outputs": {"x": f"n{n - 1}.result"}}


def fan_out(n: int) -> dict:
    nodes: dict[str, Any] = {"v": {"type": "Value", "inputs": {"value": {"param": "x0"}}}}
    for i in range(n):
        nodes[f"m{i}"] = {"type": "Math", "inputs": {"a": {"from": "v.value"}, "b": 1}}
    return {"format": 1, "params": PARAMS, "nodes": nodes, "outputs": {f"o{i}": f"m{i}.result" for i in range(n)}}


def nested_loop(n: int) -> dict:
    return {
        "format": 1,
        "params": PARAMS,
        "nodes": {
            "start": {"type": "Value", "inputs": {"value": {"param": "x0"}}},
            "numbers": {"type": "Range", "inputs": {"stop": n}},
            "outer": {
                "type": "Loop", "over": {"from": "numbers.values"}, "item": "row",
                "carry": {"total": {"from": "start.value"}},
                "body": {
                    "inner": {
                        "type": "Loop", "over": {"from": "numbers.values"}, "item": "col",
                        "carry": {"total": {"from": "outer.total"}},
                        "body": {"add": {"type": "Math", "inputs": {"a": {"from": "inner.total"}, "b": {"from": "inner.col"}}}},
                        "next": {"total": {"from": "add.result"}},
                    },
                },
                "next": {"total": {"from": "inner.total"}},
            },
        },
        "outputs": {"total": "outer.total"},
    }


class Case:
    """``make`` builds the document when the case is measured, not before: the process then holds
    no other case's big document, whose objects every ``gc.collect()`` would walk (through the
    processor's caches) before a timed call of a small case."""

    def __init__(self, name: str, make: Callable[[], dict], count: int, repeat: int, check: Callable[[Any, float], None]) -> None:
        self.name, self.make, self.count, self.repeat, self.check = name, make, count, repeat, check


def _chain_ok(n: int) -> Callable[[Any, float], None]:
    def ok(r: Any, x0: float) -> None:
        assert r.ok and r["x"] == x0 + n, (r.errors, r.outputs)
    return ok


def _fan_ok(n: int) -> Callable[[Any, float], None]:
    def ok(r: Any, x0: float) -> None:
        assert r.ok and len(r.outputs) == n and r["o0"] == x0 + 1 and r[f"o{n - 1}"] == x0 + 1, r.errors
    return ok


def _loop_ok(rows: int, cols: int) -> Callable[[Any, float], None]:
    def ok(r: Any, x0: float) -> None:
        assert r.ok and r["total"] == x0 + rows * cols * (cols - 1) / 2, (r.errors, r.outputs)
    return ok


def cases(quick: bool) -> list[Case]:
    out = [Case(f"chain {n:,}", lambda n=n: chain(n), n, rep, _chain_ok(n))
           for n, rep in ((100, 99), (1_000, 19), (10_000, 5), (100_000, 2))]
    out.append(Case("fan-out 10,000", lambda: fan_out(10_000), 10_001, 5, _fan_ok(10_000)))
    out.append(Case("loop 100×100", lambda: nested_loop(100), 10_000, 5, _loop_ok(100, 100)))
    if quick:
        out = [c for c in out if c.count <= 10_001]
    return out


# --- timing -------------------------------------------------------------------------------------

#: what ``best`` reads: wall time, or with --cpu (BENCH_ENGINE_CPU=1 for the --against children)
#: the calling thread's CPU time
CPU = os.environ.get("BENCH_ENGINE_CPU") == "1"


def clock() -> float:
    return time.thread_time() if CPU else time.perf_counter()


def best(f: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> float:
    """Best time (wall, or CPU with --cpu) of ``repeat`` calls of f(setup()); setup and a
    gc.collect() run untimed."""
    times = []
    for _ in range(repeat):
        arg = setup() if setup else None
        gc.collect()
        t = clock()
        f(arg) if setup else f()
        times.append(clock() - t)
        del arg
    return min(times)


_fresh_value = iter(range(1, 1 << 30))


def measure(case: Case, reg: Registry) -> dict[str, float]:
    """Seconds per node for each column."""
    doc, rep, n = case.make(), case.repeat, case.count
    out: dict[str, float] = {}

    out["check"] = best(lambda wf: wf.checked(), rep, setup=lambda: Workflow.from_dict(doc, reg)) / n

    wf = Workflow.from_dict(doc, reg)
    wf.checked()

    def forget() -> None:
        """Fingerprints are remembered per document and parameter set: start without them, as a
        new process would."""
        wf.checked().memo.fingerprints.clear()

    def bind_plan(_: Any) -> None:
        with fewer_gc_passes():
            bound = wf.bind()
            plan(Fingerprints(bound, RunOptions(), "bench"), RunCaches(MemoryCache(), None))

    out["bind+plan"] = best(bind_plan, rep, setup=forget) / n

    def cold(ex: Executor) -> None:
        case.check(ex.run(wf), 0)

    def fresh_executor() -> Executor:
        forget()
        return Executor()

    out["cold"] = best(cold, rep, setup=fresh_executor)
    out["cold"] /= n

    ex = fresh_executor()
    ex.run(wf)

    def cached() -> None:
        r = ex.run(wf)
        case.check(r, 0)
        assert not any(s.runs for s in r.stats.values()), "a fully cached re-run ran a node"

    out["cached"] = best(cached, rep) / n

    def changed(x0: float) -> None:
        case.check(ex.run(wf.with_params(x0=x0)), x0)

    out["changed"] = best(changed, rep, setup=lambda: float(next(_fresh_value))) / n
    ex.memory.clear()
    fresh_executor()
    return out


def validate_seconds(repeat: int = 5, root: Path = TREE, script: bool = True) -> float:
    """Best of ``repeat`` whole-process times of `graphflow validate` on txt2img, with the tree
    ``root`` first on the path: wall time, or with --cpu the child's user+system CPU time.
    ``script``: through the installed ``graphflow`` command where there is one (else, and for a
    side-by-side comparison of two trees, ``python -m graphflow.cli``)."""
    exe = Path(sys.executable).with_name("graphflow")
    cmd = [str(exe)] if exe.exists() and script and root == ROOT else [sys.executable, "-m", "graphflow.cli"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        p = subprocess.run([*cmd, "validate", str(root / "workflows" / "txt2img.json")], capture_output=True, text=True,
                           cwd=root, env=env)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        times.append(cpu if CPU else wall)
        assert p.returncode == 0, p.stdout + p.stderr
    return min(times)


def seed_sweep(repeat: int = 3) -> tuple[float, list[int]]:
    """Best seconds for SWEEP_SEEDS binds of a freshly loaded txt2img, and how many times the
    document was checked in each sweep."""
    real = graphflow.graph.check.check
    calls = [0]

    def counting(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return real(*a, **k)

    graphflow.graph.check.check = counting
    counts, times = [], []
    try:
        for _ in range(repeat):
            wf = graphflow.load(TXT2IMG)
            calls[0] = 0
            gc.collect()
            t = time.perf_counter()
            for i in range(SWEEP_SEEDS):
                b = wf.with_params(seed=i).bind()
                assert b.params["seed"] == i
            times.append(time.perf_counter() - t)
            counts.append(calls[0])
    finally:
        graphflow.graph.check.check = real
    return min(times), counts


# --- report ---------------------------------------------------------------------------------------

COLUMNS = ("check", "bind+plan", "cold", "cached", "changed")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(quick: bool = False) -> None:
    reg = builtin_registry()
    t_all = time.perf_counter()
    print(f"engine cost per node, µs of {'CPU (thread) time' if CPU else 'wall time'} (best of N; python "
          f"{sys.version.split()[0]}, gc thresholds {gc.get_threshold()})")
    head = f"{'case':<16} {'nodes':>7} {'N':>2} " + " ".join(f"{c:>9}" for c in COLUMNS) + f" {'cold total':>11}"
    print(head)
    print("-" * len(head))
    results: dict[str, dict[str, float]] = {}
    for case in cases(quick):
        r = results[case.name] = measure(case, reg)
        print(f"{case.name:<16} {case.count:>7,} {case.repeat:>2} " + " ".join(f"{r[c] * 1e6:>9.2f}" for c in COLUMNS)
              + f" {r['cold'] * case.count * 1e3:>9.0f}ms", flush=True)
    if "chain 100,000" in results:
        big, small = results["chain 100,000"], results["chain 1,000"]
        print(f"{'100k ÷ 1k':<16} {'':>7} {'':>2} " + " ".join(f"{big[c] / small[c]:>8.2f}×" for c in COLUMNS))
    print("  (loop 100×100: per body execution; its check and bind+plan are of a 5-node document)")

    v = validate_seconds()
    sweep_s, counts = seed_sweep()
    print(f"\ngraphflow validate workflows/txt2img.json (whole process, best of 5, {'CPU' if CPU else 'wall'}): {v:.3f} s")
    print(f"seed sweep, {SWEEP_SEEDS:,} × wf.with_params(seed=i).bind() on txt2img: {sweep_s * 1e3:.1f} ms "
          f"({sweep_s / SWEEP_SEEDS * 1e6:.1f} µs each, best of {len(counts)}); "
          f"graphflow.graph.check.check ran {counts} times per sweep")

    print(f"\n{'target':<52} {'measured':>12}  verdict")
    cold10 = results["chain 10,000"]["cold"] * 1e6
    rows = [(f"cold run ≤ {COLD_TARGET_US:g} µs/node (chain 10,000)", f"{cold10:.2f} µs", cold10 <= COLD_TARGET_US)]
    for name, r in results.items():
        us = r["cached"] * 1e6
        rows.append((f"fully cached ≤ {CACHED_TARGET_US:g} µs/node ({name})", f"{us:.2f} µs", us <= CACHED_TARGET_US))
    if "chain 100,000" in results:
        for c in COLUMNS:
            ratio = results["chain 100,000"][c] / results["chain 1,000"][c]
            rows.append((f"{c}: per node at 100,000 ≤ {SCALING_TARGET:g}× at 1,000", f"{ratio:.2f}×",
                         ratio <= SCALING_TARGET))
    rows.append((f"validate txt2img ≤ {VALIDATE_TARGET_S:g} s", f"{v:.3f} s", v <= VALIDATE_TARGET_S))
    rows.append((f"checks per {SWEEP_SEEDS:,}-seed sweep = 1", f"{max(counts)}", all(c == 1 for c in counts)))
    for name, measured, ok in rows:
        print(f"{name:<52} {measured:>12}  {verdict(ok)}")
    print(f"\n(benchmark took {time.perf_counter() - t_all:.0f} s)")


# --- profiles -------------------------------------------------------------------------------------

def profile(n: int = 10_000, top: int = 15) -> None:
    reg = builtin_registry()
    wf = Workflow.from_dict(chain(n), reg)
    wf.checked()
    Executor().run(wf)  # warm imports and code_version

    def show(title: str, f: Callable[[], Any]) -> None:
        gc.collect()
        pr = cProfile.Profile()
        t = time.perf_counter()
        pr.enable()
        f()
        pr.disable()
        dt = time.perf_counter() - t
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
        text = s.getvalue()
        text = (text[text.index("   ncalls"):] if "   ncalls" in text else text).rstrip()
        print(f"\n== {title}: {dt * 1e3:.0f} ms under cProfile ({dt / n * 1e6:.1f} µs/node)\n{text}")

    ex = Executor()
    wf.checked().memo.fingerprints.clear()
    show(f"cold run, chain {n:,}", lambda: _chain_ok(n)(ex.run(wf), 0))
    show(f"fully cached re-run, chain {n:,}", lambda: _chain_ok(n)(ex.run(wf), 0))


# --- before and after -----------------------------------------------------------------------------

_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_engine", sys.argv[1])
b = importlib.util.module_from_spec(spec)
spec.loader.exec_module(b)
case = [c for c in b.cases(True) if c.name == "chain 10,000"][0]
print(json.dumps(b.measure(case, b.builtin_registry())))
"""


def against(ref: str, rounds: int) -> None:
    import json
    import shutil
    import tarfile
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(work, filter="data")
    if not (work / "graphflow_nodes").exists():
        (work / "graphflow_nodes").symlink_to("nodes")  # as a checkout's, so its own library is imported
    trees = {ref: work, "this tree": ROOT}
    for tree in trees.values():  # imports read byte code in both, as an installed package's do
        subprocess.run([sys.executable, "-m", "compileall", "-q", "graphflow", "nodes"], cwd=tree, capture_output=True)
    got: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_ENGINE_CPU": "1" if CPU else "0"}
    for _ in range(rounds):
        for name, tree in trees.items():
            p = subprocess.run([sys.executable, "-c", _CHILD, __file__], capture_output=True, text=True, cwd=tree,
                               env={**env, "PYTHONPATH": str(tree), "BENCH_ENGINE_TREE": str(tree)}, timeout=900)
            assert p.returncode == 0, p.stderr
            got[name].append({**json.loads(p.stdout.strip().splitlines()[-1]), "validate": validate_seconds(3, tree, script=False)})
    shutil.rmtree(work, ignore_errors=True)
    print(f"chain 10,000, µs per node of {'CPU' if CPU else 'wall'} time, and graphflow validate txt2img, s; "
          f"best of {rounds} fresh processes each, alternating")
    print(f"{'column':<10} {ref:>12} {'this tree':>12} {'after ÷ before':>15}")
    for c in (*COLUMNS, "validate"):
        scale = 1 if c == "validate" else 1e6
        b, a = (min(r[c] for r in got[k]) * scale for k in trees)
        print(f"{c:<10} {b:12.3f} {a:12.3f} {a / b:14.2f}×")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", metavar="REF", help="compare the 10,000 chain with the commit REF, side by side")
    ap.add_argument("--rounds", type=int, default=3, help="with --against: fresh processes per tree")
    ap.add_argument("--profile", action="store_true", help="cProfile the cold and cached runs of the 10,000 chain")
    ap.add_argument("--quick", action="store_true", help="leave out the 100,000 chain")
    ap.add_argument("--cpu", action="store_true", help="CPU time instead of wall time (a shared machine)")
    args = ap.parse_args()
    CPU = CPU or args.cpu
    if args.against:
        against(args.against, args.rounds)
    else:
        profile() if args.profile else main(args.quick)
