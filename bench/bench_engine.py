"""The executor's own cost: validate and run chains of trivial nodes, cold and fully cached, in one
process, side by side. Prints per-node microseconds and the cached/cold ratio."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphflow import Executor, Workflow  # noqa: E402
from graphflow.builtin_nodes import Math  # noqa: E402
from graphflow.registry import Registry  # noqa: E402


def chain(n: int) -> dict:
    nodes = {"n0": {"type": "Math", "inputs": {"a": 0, "b": 1}}}
    for i in range(1, n):
        nodes[f"n{i}"] = {"type": "Math", "inputs": {"a": {"from": f"n{i - 1}.result"}, "b": 1}}
    return {"format": 1, "nodes": nodes, "outputs": {"x": f"n{n - 1}.result"}}


def best(f, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    reg = Registry([Math])
    print(f"{'nodes':>7} {'validate ms':>12} {'cold run ms':>12} {'cached ms':>10} {'µs/node (v+run)':>16} {'cached/cold':>12}")
    for n in (1_000, 5_000, 10_000):
        doc = chain(n)
        wf_holder = {}

        def validate() -> None:
            wf = Workflow.from_dict(doc, reg)
            wf.check()
            wf_holder["wf"] = wf

        v = best(validate)
        wf = wf_holder["wf"]

        def cold() -> None:
            r = Executor().run(wf)
            assert r["x"] == n

        c = best(cold)
        ex = Executor()
        ex.run(wf)
        h = best(lambda: ex.run(wf))
        print(f"{n:>7} {v * 1e3:>12.1f} {c * 1e3:>12.1f} {h * 1e3:>10.1f} {(v + c) / n * 1e6:>16.1f} {h / c:>12.3f}")


if __name__ == "__main__":
    main()
