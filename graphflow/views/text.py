"""What `graphflow run` shows on a terminal: progress bars, a value in one line, the profile."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """tqdm bars on stderr: one for the workflow's nodes, one for the current loop's steps.
    ``bar``: another tqdm class (``tqdm.auto.tqdm`` draws notebook widgets in Jupyter)."""

    def __init__(self, enabled: bool, bar=None) -> None:
        from tqdm import tqdm

        self.tqdm = bar or tqdm
        self.enabled = enabled
        self.nodes = None
        self.loop = None

    def __call__(self, e) -> None:
        if not self.enabled:
            return
        from graphflow.engine import events as ev

        if isinstance(e, ev.RunStarted):
            self.nodes = self.tqdm(total=e.nodes, desc="nodes", unit="node", leave=False, file=sys.stderr)
        elif isinstance(e, ev.NodeStarted) and e.iteration is None and self.nodes is not None:
            self.nodes.set_postfix_str(e.node)
        elif isinstance(e, ev.LoopStep):
            if self.loop is None:
                self.loop = self.tqdm(total=e.count, desc=f"loop {e.node}", unit="step", leave=False, file=sys.stderr)
            elif e.index:
                self.loop.update(1)  # step e.index begins, so the one before it is done
        elif isinstance(e, ev.NodeFinished) and e.iteration is None:
            if self.loop is not None:
                self.loop.update(self.loop.total - self.loop.n)
                self.loop.close()
                self.loop = None
            if self.nodes is not None:
                self.nodes.update(1)
        elif isinstance(e, ev.RunFinished):
            self.close()

    def close(self) -> None:
        for bar in (self.loop, self.nodes):
            if bar is not None:
                bar.close()
        self.loop = self.nodes = None


def _number(x: Any, short: bool = True) -> str:
    """A number as a notebook shows it (6 significant digits) or, not ``short``, as Python writes it
    (a terminal line and a JSON result keep ``24.0`` a float)."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.6g}" if short else repr(x)
    return str(x)


def value_text(v: Any, limit: int = 300, stats: bool = True) -> str:
    """A value that is not a picture, in one line, the same on a terminal, in a notebook and in the
    server's results: numbers, text, lists of them, tensors by shape (and, with ``stats``, their
    min, mean and max, and numbers to 6 digits: a notebook shows them so; a terminal line and a JSON
    result stay short and keep each number as Python writes it)."""
    if hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "detach"):
        if v.ndim == 0 or v.numel() == 1:
            return _number(v.detach().cpu().reshape(-1)[0].item(), stats)
        head = f"tensor {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
        if not stats:
            return head
        f = v.detach()
        f = (f if str(f.dtype) == "torch.float32" else f.float()).cpu().numpy()  # numpy: see graphflow/pixels.py
        return f"{head} (min {f.min():.4g}, mean {f.mean():.4g}, max {f.max():.4g})"
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        if all(isinstance(x, (int, float, bool)) or (hasattr(x, "numel") and x.numel() == 1) for x in v):
            parts = [value_text(x, stats=stats) for x in v]
        elif all(isinstance(x, str) for x in v):
            parts = list(v)
        else:
            parts = [value_text(x, 60, stats) for x in v[:8]] + ([f"… {len(v) - 8} more"] if len(v) > 8 else [])
        text = f"{len(v)} values: " + ", ".join(parts) if len(v) > 3 else ", ".join(parts)
    elif isinstance(v, dict):
        text = "{" + ", ".join(f"{k}: {value_text(x, 60, stats)}" for k, x in v.items()) + "}"
    else:
        text = _number(v, stats) if isinstance(v, (int, float, bool)) or v is None else str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_value(v: Any) -> str:
    """A result on a terminal line or in the server's JSON: ``value_text`` without statistics."""
    return value_text(v, 100, stats=False)


PROFILE_COLUMNS = ("node", "type", "runs", "hits", "seconds", "status")


def profile_rows(result) -> list[tuple[str, str, str, str, str, str]]:
    """Per node touched, slowest first: how often its code ran, cache hits, seconds, status (the
    rows of the terminal's ``--profile`` table and of the notebook's)."""
    rows = sorted(result.stats.items(), key=lambda kv: -kv[1].seconds)
    return [(n, s.type, str(s.runs), str(s.hits), f"{s.seconds:.3f}", s.status) for n, s in rows]


def profile_table(result) -> str:
    rows = [PROFILE_COLUMNS, *profile_rows(result)]
    widths = [max(len(r[k]) for r in rows) for k in range(len(PROFILE_COLUMNS))]
    widths[2], widths[3], widths[4] = max(widths[2], 5), max(widths[3], 5), max(widths[4], 8)
    lines = ["  ".join(c.rjust(w) if k in (2, 3, 4) else c.ljust(w) if k < 5 else c for k, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.append(f"run wall time {result.seconds:.3f} s")
    return "\n".join(lines)


class PreviewFile:
    """Writes each ``Preview`` event's picture to ``path`` (``--preview-every``), whole or not at
    all (a viewer that reloads the file never shows half a PNG); the newest replaces the last."""

    def __init__(self, path) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.written = 0

    def __call__(self, e) -> None:
        from graphflow.atomic import write_atomic
        from graphflow.engine import events as ev

        if isinstance(e, ev.Preview):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, e.png)
            self.written += 1
