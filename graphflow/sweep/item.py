"""One sweep item: the one function that runs it on an executor (``run_item``, whichever runner
called it, so a result is the same bytes wherever it ran), what it gives back (``ItemResult``)
and the folder its files go to."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graphflow.pixels import to_uint8

__all__ = ["ItemResult", "item_error", "item_folder", "item_result", "run_item", "run_items"]


def item_error(message: str, node: str | None = None, node_type: str | None = None) -> dict[str, Any]:
    """A failed item's record in the index: the node that failed and its type where one did, else
    None (an output not produced, a worker that died)."""
    return {"node": node, "type": node_type, "message": message}


def item_folder(i: int) -> str:
    """The folder of item ``i``'s files, relative to the sweep's out_dir."""
    return f"item_{i:05d}"


@dataclass
class ItemResult:
    """One finished item: plain data (JSON-ready except ``image``, kept for the contact sheet)."""

    item: int
    params: dict[str, Any]
    status: str  # ok | failed | cancelled | skipped (already ok in the index)
    files: list[str] = field(default_factory=list)  # relative to the sweep's out_dir
    error: dict[str, Any] | None = None
    seconds: float = 0.0
    host: str = ""
    runs: dict[str, int] = field(default_factory=dict)  # node id -> times its code ran
    image: Any = field(default=None, repr=False)  # (H, W, 3) uint8 array of the first image, or None
    worker: str = ""  # "host:pid" of the process that ran it
    attempts: int = 1  # > 1: its worker died and it was run again elsewhere
    loads: int = 0  # model loads its worker had done when it finished (constant after the first item)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("image", "runs", "loads"):
            d.pop(k)
        return d


def _first_image(outputs: dict[str, Any]):
    """The first image output as an (H, W, 3) uint8 array, rounded as SaveImage rounds."""
    def is_image(v):
        shape = getattr(v, "shape", None)
        return shape is not None and len(shape) == 4 and shape[1] == 3 and hasattr(v, "detach")
    v = outputs.get("image")
    if not is_image(v):
        v = next((x for x in outputs.values() if is_image(x)), None)
    if v is None:
        return None
    return to_uint8(v[:1])[0]


def run_item(ex, bound, item: int, params: dict[str, Any], folder: Path, prefix: str = "") -> ItemResult:
    """Run one item on ``ex``, its files going to ``folder`` (named ``prefix`` + their name in the
    result). The one place an item runs, whichever runner called it."""
    before = set(_files(folder))
    t0 = time.perf_counter()
    result = ex.run(bound, out_dir=folder)
    return item_result(ex, result, item, params, folder, prefix, before, time.perf_counter() - t0)


def run_items(ex, bounds: list, items: list[int], params: list[dict[str, Any]], folders: list[Path],
              prefixes: list[str]) -> list[ItemResult]:
    """Run items together on ``ex`` (``Executor.run_many``: up to its ``batch`` at a time, their
    model calls batched); each item's result is what ``run_item`` would give it."""
    befores = [set(_files(f)) for f in folders]
    results = ex.run_many(bounds, folders)
    return [item_result(ex, r, i, p, f, pre, b, r.seconds)
            for r, i, p, f, pre, b in zip(results, items, params, folders, prefixes, befores)]


def item_result(ex, result, item: int, params: dict[str, Any], folder: Path, prefix: str, before: set,
                seconds: float) -> ItemResult:
    """An item's ``ItemResult`` from its run's ``RunResult`` (``before``: the folder's files before it ran)."""
    files = sorted(prefix + str(p.relative_to(folder)) for p in set(_files(folder)) - before)
    host = socket.gethostname()
    common = {"host": host, "worker": f"{host}:{os.getpid()}", "runs": {n: s.runs for n, s in result.stats.items()},
              "loads": sum(ex.models.loads.values())}
    if result.cancelled:
        return ItemResult(item, params, "cancelled", files, None, seconds, **common)
    error = None
    if result.errors:
        e = result.errors[0]
        error = item_error(e.message, e.node, e.type)
    elif result.missing:
        name, why = next(iter(result.missing.items()))
        error = item_error(f"output '{name}' not produced: {why}")
    image = _first_image(result.outputs) if error is None else None
    return ItemResult(item, params, "ok" if error is None else "failed", files, error, round(seconds, 4), image=image, **common)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
