"""A parameter sweep's items: one workflow over a grid (and zipped lists) of parameter values.

``Sweep`` binds every parameter set first (one bad value: ``ValidationFailed`` naming the item and
the parameter, nothing runs), then hands the items to its runner and yields an ``ItemResult`` as
each finishes.

The sweep (this module) owns what must be one thing wherever items run: numbering, validation,
resume, the index and the contact sheet. A runner (``local.py``, ``ray_runner.py``), chosen by the
caller, only turns item numbers into ``ItemResult``s through ``item.run_item``, so a result is the
same bytes wherever it ran.

Locally, every item runs on ONE executor, each run given its own output folder
(``Executor.run(..., out_dir=out_dir/item_NNNNN)``, on the thread iterating the sweep): the
caches and the model manager (the model loads once) are shared by construction. Only the nodes that declare the
output folder (``SaveImage``...) see the folder; every other node's fingerprint is the same from
item to item, so a prompt shared by items is encoded once.

Items are run in an order that does shared work once: sorted, stably, by the values of the
varying parameters that feed the nodes nearest the start of the graph (model, prompt) before
those fed deeper (seed, guidance). Items are numbered in the order given (the grid's cartesian
product, first axis slowest, the zipped lists as one more, last, axis).

``out_dir/index.jsonl`` gets one JSON line per finished item (append, flush, fsync: a killed
sweep leaves whole lines); ``resume=True`` skips items with an ``ok`` line. Which folder, and
whether a folder holding another sweep may be used, is ``folder.py``'s: one sweep per folder.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from graphflow.node.limits import Limits
from graphflow.problems import Problem, ValidationFailed
from graphflow.sweep.contact_sheet import label, write_contact_sheet
from graphflow.sweep.folder import FolderInUse, choose, claim
from graphflow.sweep.item import ItemResult
from graphflow.sweep.local import LocalRunner

__all__ = ["FolderInUse", "Sweep", "expand", "params_key", "read_index", "run_order", "varying"]

INDEX = "index.jsonl"


def params_key(params: dict[str, Any]) -> bytes:
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS)


def varying(items: list[dict[str, Any]]) -> list[str]:
    """The parameters whose value is not the same in every item, in the items' order."""
    return [k for k in (items[0] if items else {}) if len({params_key({k: it.get(k)}) for it in items}) > 1]


def expand(grid: dict[str, list] | None = None, zip: dict[str, list] | None = None) -> list[dict[str, Any]]:
    """Every parameter set, in the order given: the grid's cartesian product (first axis slowest),
    the zipped lists advancing together as one more, last, axis. Raises ValidationFailed for a
    non-list axis or zipped lists of different lengths."""
    grid, zip = dict(grid or {}), dict(zip or {})
    problems = []
    for flag, axes in (("grid", grid), ("zip", zip)):
        for k, v in axes.items():
            if not isinstance(v, list):
                problems.append(Problem("bad_set", f"--{flag} {k}: takes a JSON list of values, got {v!r}", field=f"params.{k}"))
    both = set(grid) & set(zip)
    for k in sorted(both):
        problems.append(Problem("bad_set", f"parameter '{k}' is both in the grid and in the zip", field=f"params.{k}"))
    if not problems and zip:
        lengths = {k: len(v) for k, v in zip.items()}
        if len(set(lengths.values())) > 1:
            problems.append(Problem("bad_set", "zipped lists must have equal lengths, got "
                                    + ", ".join(f"{k}: {n}" for k, n in lengths.items())))
    if problems:
        raise ValidationFailed(problems)
    axes: list[list[dict[str, Any]]] = [[{k: v} for v in vs] for k, vs in grid.items()]
    if zip:
        n = len(next(iter(zip.values())))
        axes.append([{k: vs[i] for k, vs in zip.items()} for i in range(n)])
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def _param_depths(checked) -> dict[str, int]:
    """Each parameter's depth: the fewest top-level steps from a graph source to a node it feeds
    (a node inside a loop counts as its outermost scope)."""
    depth: dict[str, int] = {}
    preds = checked.preds.get(None, {})
    for n in checked.order.get(None, []):
        depth[n] = 1 + max((depth.get(p, 0) for p in preds.get(n, ())), default=-1)
    out: dict[str, int] = {}
    for name, uses in checked.param_uses.items():
        ds = []
        for nid, _fld, _port in uses:
            top = nid
            chain = checked.chain.get(nid) if isinstance(checked.chain, dict) else None
            if chain:
                top = chain[0]
            ds.append(depth.get(top, 10**6))
        out[name] = min(ds, default=10**6)
    return out


def run_order(items: list[dict[str, Any]], checked=None) -> list[int]:
    """Item numbers in the order to run them: stable-sorted by the varying parameters nearest the
    start of the graph first (each value ranked by its first appearance, so the given order of
    values is kept), so items sharing a model or a prompt run together."""
    if not items:
        return []
    names = list(items[0])
    axes = varying(items)
    try:
        depths = _param_depths(checked) if checked is not None else {}
    except (AttributeError, KeyError, IndexError, TypeError):  # an ordering hint only: never a reason to fail
        depths = {}
    hint = {"model": 0, "prompt": 1, "negative_prompt": 1}
    axes.sort(key=lambda k: (depths.get(k, 10**6), hint.get(k, 2), names.index(k)))
    ranks = {k: {} for k in axes}
    for it in items:
        for k in axes:
            ranks[k].setdefault(params_key({k: it[k]}), len(ranks[k]))
    return sorted(range(len(items)), key=lambda i: tuple(ranks[k][params_key({k: items[i][k]})] for k in axes))


def read_index(out_dir: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The index's whole lines (a trailing partial line, or any unreadable one, ignored).
    ``repair``: cut a trailing partial line off the file, so the next append starts a line."""
    path = Path(out_dir) / INDEX
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    out = []
    for line in data[:end].splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class Sweep:
    """A prepared sweep: every item bound and ordered. Iterate it to run; ``cancel()`` from another
    thread (a signal handler) stops after the current node or loop step.

    ``runner`` runs the items it is handed and yields their ``ItemResult``s (``run(sweep, todo)``,
    ``cancel()``, ``close()``): a ``LocalRunner`` on an executor of this process (the default),
    or a ``RaySweep`` on Ray actors. The sweep knows neither: the caller chooses.

    The folder: ``out_dir``, else ``sweeps/<name>``, else a new ``sweeps/<workflow>-<timestamp>``
    (see folder.py). One that holds another sweep's index raises ``FolderInUse`` here, before
    anything runs, unless ``resume`` (continue it) or ``force`` (replace it, when iterated)."""

    def __init__(self, workflow, grid: dict[str, list] | None = None, zip: dict[str, list] | None = None,
                 out_dir: str | Path | None = None, resume: bool = False, limits: Limits | None = None, runner=None,
                 *, name: str | None = None, force: bool = False) -> None:
        self.workflow, self.resume, self.force = workflow, resume, force
        self.out_dir = choose(workflow, out_dir, name, resume)
        if resume and force:
            raise ValueError("resume continues the sweep in the folder and force replaces it: give one, not both")
        if not (resume or force):
            claim(self.out_dir)  # a folder holding another sweep: FolderInUse, before anything is bound or run
        self._claimed = False
        self.grid = dict(grid or {})
        self.items = expand(grid, zip)
        executor = getattr(runner, "executor", None)
        self.limits = limits or (executor.limits if executor is not None else Limits())
        self.checked = workflow.checked()  # once; raises ValidationFailed for a bad document
        problems: list[Problem] = []
        self.bound = []
        for i, params in enumerate(self.items):
            try:
                self.bound.append(workflow.bind(params, self.limits))
            except ValidationFailed as e:
                problems += [Problem(p.code, f"item {i} ({label(params)}): {p.message}", p.node, p.field, p.line, p.column)
                             for p in e.problems]
        if problems:
            raise ValidationFailed(problems)
        self.order = run_order(self.items, self.checked)
        self.varying = varying(self.items)
        self._cancel = threading.Event()
        self.results: dict[int, ItemResult] = {}
        self.runner = runner if runner is not None else LocalRunner()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __len__(self) -> int:
        return len(self.items)

    def cancel(self) -> None:
        self._cancel.set()
        self.runner.cancel()

    def __iter__(self) -> Iterator[ItemResult]:
        if not self._claimed:  # again now: another sweep may have started there since; force clears it once
            claim(self.out_dir, self.resume, self.force)
            self._claimed = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        previous = read_index(self.out_dir, repair=True) if self.resume else []
        done = {params_key(r.get("params", {})): r for r in previous if r.get("status") == "ok"}
        if not self.resume and (self.out_dir / INDEX).exists():
            read_index(self.out_dir, repair=True)  # appending to an old index: start on a whole line
        todo = []
        try:
            for i in self.order:
                params = self.items[i]
                old = done.get(params_key(params))
                if old is None:
                    todo.append(i)
                    continue
                r = ItemResult(i, params, "skipped", list(old.get("files", [])), None, float(old.get("seconds", 0.0)),
                               old.get("host", ""), worker=old.get("worker", ""))
                self.results[i] = r
                yield r
            results = self.runner.run(self, todo)
            for r in results:
                self.results[r.item] = r
                if r.status == "cancelled":
                    yield r
                    continue
                self._append(r)
                yield r
        finally:
            self.runner.close()
            self.write_contact_sheet()

    def _append(self, r: ItemResult) -> None:
        line = orjson.dumps(r.to_json()) + b"\n"
        fd = os.open(self.out_dir / INDEX, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_contact_sheet(self) -> Path | None:
        return write_contact_sheet(self.out_dir, self.items, self.grid, self.varying, self.results)
