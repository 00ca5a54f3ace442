"""Parameter sweeps: one workflow run over a grid (and zipped lists) of parameter values.

``sweep(workflow, grid={"seed": [0, 1]}, zip={...}, out_dir="sweep")`` binds every parameter set
first (one bad value: ``ValidationFailed`` naming the item and the parameter, nothing runs), then
runs the items on ONE executor, yielding an ``ItemResult`` as each finishes.

Why one executor whose ``out_dir`` is set per item (and not one executor per item sharing the
model manager and the memory cache): ``Executor._execute`` reads ``self.out_dir`` when a run
starts, to build that run's ``RunOptions``, and ``Executor.run`` waits for its run, so setting
``executor.out_dir`` before each ``run`` puts each item's files in ``out_dir/item_NNNNN/`` while
the caches, the model manager (the model loads once) and the worker thread are shared by
construction, with nothing to keep in step. The caller's ``out_dir`` is restored at the end.
Only the nodes that declare the output folder (``SaveImage``...) see the change; every other
node's fingerprint is the same from item to item, so a prompt shared by items is encoded once.

Items are run in an order that does shared work once: sorted, stably, by the values of the
varying parameters that feed the nodes nearest the start of the graph (model, prompt) before
those fed deeper (seed, guidance). Items are numbered in the order given (the grid's cartesian
product, first axis slowest, the zipped lists as one more, last, axis).

Items and results are plain data (a dict of parameters in, an ``ItemResult`` of paths, status,
error and seconds out), so another runner (Ray) can take the items and feed the same index.

``out_dir/index.jsonl`` gets one JSON line per finished item (append, flush, fsync: a killed
sweep leaves whole lines); ``resume=True`` skips items with an ``ok`` line. ``contact_sheet.png``
tiles each item's first image, labelled; ``contact_sheet.json`` gives each tile's box.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from graphflow.limits import Limits
from graphflow.problems import Problem, ValidationFailed

__all__ = ["ItemResult", "Sweep", "expand", "params_key", "read_index", "run_order", "sweep"]

INDEX = "index.jsonl"
SHEET = "contact_sheet.png"
SHEET_LAYOUT = "contact_sheet.json"
LABEL_H = 14  # pixels of a label band (PIL's default bitmap font is about 11 high)
PAD = 2


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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("image")
        d.pop("runs")
        return d


def params_key(params: dict[str, Any]) -> bytes:
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS)


def _label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


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
    varying = [k for k in names if len({params_key({k: it.get(k)}) for it in items}) > 1]
    try:
        depths = _param_depths(checked) if checked is not None else {}
    except (AttributeError, KeyError, IndexError, TypeError):  # an ordering hint only: never a reason to fail
        depths = {}
    hint = {"model": 0, "prompt": 1, "negative_prompt": 1}
    varying.sort(key=lambda k: (depths.get(k, 10**6), hint.get(k, 2), names.index(k)))
    ranks = {k: {} for k in varying}
    for it in items:
        for k in varying:
            ranks[k].setdefault(params_key({k: it[k]}), len(ranks[k]))
    return sorted(range(len(items)), key=lambda i: tuple(ranks[k][params_key({k: items[i][k]})] for k in varying))


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
    return (v[:1].detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()[0] * 255).round().astype("uint8")


class Sweep:
    """A prepared sweep: every item bound and ordered. Iterate it to run; ``cancel()`` from another
    thread (a signal handler) stops after the current node or loop step."""

    def __init__(self, workflow, grid: dict[str, list] | None = None, zip: dict[str, list] | None = None,
                 out_dir: str | Path = "sweep", executor=None, resume: bool = False, limits: Limits | None = None) -> None:
        self.workflow, self.out_dir, self.resume = workflow, Path(out_dir), resume
        self.grid = dict(grid or {})
        self.items = expand(grid, zip)
        self.limits = limits or (executor.limits if executor is not None else Limits())
        checked = workflow.checked()  # once; raises ValidationFailed for a bad document
        problems: list[Problem] = []
        self.bound = []
        for i, params in enumerate(self.items):
            try:
                self.bound.append(workflow.bind(params, self.limits))
            except ValidationFailed as e:
                problems += [Problem(p.code, f"item {i} ({_label(params)}): {p.message}", p.node, p.field, p.line, p.column)
                             for p in e.problems]
        if problems:
            raise ValidationFailed(problems)
        self.order = run_order(self.items, checked)
        self._executor = executor
        self._cancel = threading.Event()
        self.host = socket.gethostname()
        self.results: dict[int, ItemResult] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _repr_html_(self) -> str:  # Jupyter: the contact sheet and the items (graphflow/display.py)
        from graphflow.display import sweep_html

        return sweep_html(self)

    def cancel(self) -> None:
        self._cancel.set()
        if self._executor is not None:
            self._executor.cancel()

    @property
    def executor(self):
        if self._executor is None:
            from graphflow.executor import Executor

            self._executor = Executor(out_dir=self.out_dir, limits=self.limits)
        return self._executor

    def done_keys(self) -> set[bytes]:
        return {params_key(r.get("params", {})) for r in read_index(self.out_dir) if r.get("status") == "ok"}

    def __iter__(self) -> Iterator[ItemResult]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        previous = read_index(self.out_dir, repair=True) if self.resume else []
        done = {params_key(r.get("params", {})): r for r in previous if r.get("status") == "ok"}
        if not self.resume and (self.out_dir / INDEX).exists():
            read_index(self.out_dir, repair=True)  # appending to an old index: start on a whole line
        ex = self.executor
        saved_out = ex.out_dir
        try:
            for i in self.order:
                params = self.items[i]
                old = done.get(params_key(params))
                if old is not None:
                    r = ItemResult(i, params, "skipped", list(old.get("files", [])), None, float(old.get("seconds", 0.0)), old.get("host", ""))
                    self.results[i] = r
                    yield r
                    continue
                if self._cancel.is_set():
                    return
                r = self._run_item(ex, i)
                if r.status == "cancelled":
                    self.results[i] = r
                    yield r
                    return
                self._append(r)
                self.results[i] = r
                yield r
        finally:
            ex.out_dir = saved_out
            self.write_contact_sheet()

    def _run_item(self, ex, i: int) -> ItemResult:
        params = self.items[i]
        folder = self.out_dir / f"item_{i:05d}"
        before = set(_files(folder))
        ex.out_dir = folder
        t0 = time.perf_counter()
        result = ex.run(self.bound[i])
        seconds = time.perf_counter() - t0
        files = sorted(str(p.relative_to(self.out_dir)) for p in set(_files(folder)) - before)
        runs = {n: s.runs for n, s in result.stats.items()}
        if result.cancelled:
            return ItemResult(i, params, "cancelled", files, None, seconds, self.host, runs)
        error = None
        if result.errors:
            e = result.errors[0]
            error = {"node": e.node, "type": e.type, "message": e.message}
        elif result.missing:
            name, why = next(iter(result.missing.items()))
            error = {"node": None, "type": None, "message": f"output '{name}' not produced: {why}"}
        image = _first_image(result.outputs) if error is None else None
        return ItemResult(i, params, "ok" if error is None else "failed", files, error, round(seconds, 4), self.host, runs, image)

    def _append(self, r: ItemResult) -> None:
        line = orjson.dumps(r.to_json()) + b"\n"
        fd = os.open(self.out_dir / INDEX, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- the contact sheet ---------------------------------------------------------------------

    def _tile(self, r: ItemResult):
        if r.image is not None:
            return r.image
        for f in r.files:  # an item done by an earlier sweep: its saved picture
            if f.lower().endswith(".png") and (self.out_dir / f).exists():
                import numpy as np
                from PIL import Image

                with Image.open(self.out_dir / f) as im:
                    return np.asarray(im.convert("RGB"))
        return None

    def write_contact_sheet(self) -> Path | None:
        """Tile every finished item's first image; None when there is none. Two grid axes (and no
        zip): an XY plot, rows the first axis's values, columns the second's. Otherwise one tile per
        item, in item order, ceil(sqrt(n)) columns, each labelled with the varying parameters."""
        tiles = {i: t for i, r in sorted(self.results.items()) if r.status in ("ok", "skipped") and (t := self._tile(r)) is not None}
        if not tiles:
            return None
        from PIL import Image, ImageDraw

        th = max(t.shape[0] for t in tiles.values())
        tw = max(t.shape[1] for t in tiles.values())
        varying = [k for k in self.items[0] if len({params_key({k: it[k]}) for it in self.items}) > 1]
        xy = len(self.grid) == 2 and len(self.items[0]) == 2 and len(self.items) > 1
        boxes: dict[int, tuple[int, int]] = {}
        if xy:
            (rk, rv), (ck, cv) = self.grid.items()
            rows, cols = len(rv), len(cv)
            left = max(60, 7 * max(len(f"{rk}={v}") for v in rv)) + PAD
            top = LABEL_H + PAD
            W, H = left + cols * (tw + PAD), top + rows * (th + PAD)
            sheet = Image.new("RGB", (W, H), "white")
            draw = ImageDraw.Draw(sheet)
            for c, v in enumerate(cv):
                draw.text((left + c * (tw + PAD) + 1, 1), f"{ck}={v}", fill="black")
            for r_, v in enumerate(rv):
                draw.text((1, top + r_ * (th + PAD) + th // 2 - 5), f"{rk}={v}", fill="black")
            for i in tiles:
                r_, c = divmod(i, cols)
                boxes[i] = (left + c * (tw + PAD), top + r_ * (th + PAD))
        else:
            n = len(self.items)
            cols = max(1, math.ceil(math.sqrt(n)))
            rows = math.ceil(n / cols)
            W, H = cols * (tw + PAD), rows * (th + LABEL_H + PAD)
            sheet = Image.new("RGB", (W, H), "white")
            draw = ImageDraw.Draw(sheet)
            for i in tiles:
                r_, c = divmod(i, cols)
                x, y = c * (tw + PAD), r_ * (th + LABEL_H + PAD)
                boxes[i] = (x, y)
                label = _label({k: self.items[i][k] for k in varying}) or f"item {i}"
                draw.text((x + 1, y + th + 1), label, fill="black")
        for i, t in tiles.items():
            sheet.paste(Image.fromarray(t), boxes[i])
        import io

        from graphflow.atomic import write_atomic

        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        path = write_atomic(self.out_dir / SHEET, buf.getvalue())
        layout = {"rows": rows, "cols": cols, "tile": [tw, th], "xy": xy,
                  "boxes": {str(i): [x, y, tiles[i].shape[1], tiles[i].shape[0]] for i, (x, y) in boxes.items()}}
        write_atomic(self.out_dir / SHEET_LAYOUT, orjson.dumps(layout, option=orjson.OPT_INDENT_2))
        return path


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


def sweep(workflow, grid: dict[str, list] | None = None, zip: dict[str, list] | None = None,
          out_dir: str | Path = "sweep", executor=None, resume: bool = False,
          limits: Limits | None = None) -> Iterator[ItemResult]:
    """Bind every item now (raises ValidationFailed, nothing run), then a lazy iterator that runs
    them and yields each ``ItemResult`` as it finishes. See the module's doc."""
    s = Sweep(workflow, grid, zip, out_dir, executor, resume, limits)
    return iter(s)
