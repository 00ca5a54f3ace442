"""A sweep's contact sheet: every finished item's first image in one labelled picture.

Its own module because it is the one part of a sweep that draws: the sweep runners (local or Ray)
only produce ``ItemResult``s, and the sheet is made from those plus the sweep's axes, wherever the
items ran. ``contact_sheet.json`` gives each tile's box, each label's text and box, and the legend,
so a reader (a test, a notebook) can find an item's picture in the sheet without guessing the layout.

Labels fit their column. Tiles are small (64 px on the embedded model) and values long (prompts),
so ``k=v, k=v`` on one line ran into the next columns. Each varying parameter gets a line of its
own, written the first way that fits every one of its values in the column, measured with the
font that draws it: ``prompt=a red circle``; else a short name (``g=7.5``, the legend saying
``g = guidance``); else a numbered value (``prompt#1``, then ``p#1``, the legend giving
``prompt#1 = a red circle``); else cut with an ellipsis. The legend, under the tiles, holds every
full value an abbreviation hides, wrapped to the sheet's width.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import orjson

__all__ = ["SHEET", "SHEET_LAYOUT", "label", "write_contact_sheet"]

SHEET = "contact_sheet.png"
SHEET_LAYOUT = "contact_sheet.json"
PAD = 2  # pixels between tiles
MARGIN = 1  # pixels kept clear on each side of a label, inside its column
LEGEND_MIN_WIDTH = 192  # a sheet with a legend is at least this wide, so its lines are not a word each
ROW_LABEL_MAX = 2  # row labels (XY plot) may take this many tile widths (at least ROW_LABEL_MIN px)
ROW_LABEL_MIN = 64


def label(params: dict[str, Any]) -> str:
    """``k=v, k=v``: how a sweep names an item, on its tile and in its errors."""
    return ", ".join(f"{k}={v}" for k, v in params.items())


class _Text:
    """Measuring and drawing with one font: PIL's default (FreeType when Pillow has it, else its
    bitmap font); every width here is the drawn ink's, not a guess per character."""

    def __init__(self) -> None:
        from PIL import ImageFont

        self.font = ImageFont.load_default()
        _l, top, _r, bottom = self.font.getbbox("Ag|")
        self.line = bottom + 3  # one line's height, a little air included

    def width(self, text: str) -> int:
        left, _t, right, _b = self.font.getbbox(text)
        return right - min(left, 0)

    def fits(self, text: str, width: int) -> bool:
        return self.width(text) <= width - 2 * MARGIN

    def cut(self, text: str, width: int) -> str:
        """``text``, or its longest start that fits with an ellipsis."""
        if self.fits(text, width):
            return text
        lo, hi = 0, len(text)
        while lo < hi:  # the longest k with text[:k] + "…" fitting
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.fits(text[:mid] + "…", width) else (lo, mid - 1)
        return text[:lo] + "…" if lo else ""

    def wrap(self, text: str, width: int) -> list[str]:
        """``text`` in lines that fit ``width``: at spaces, and inside a word too long for a line."""
        lines: list[str] = []
        line = ""
        for word in text.split(" "):
            trial = f"{line} {word}" if line else word
            if self.fits(trial, width):
                line = trial
                continue
            if line:
                lines.append(line)
            while not self.fits(word, width) and len(word) > 1:
                k = max(1, len(self.cut(word, width)) - 1)  # cut() adds "…": its length less one is what fits bare
                lines.append(word[:k])
                word = word[k:]
            line = word
        lines.append(line)
        return lines

    def draw(self, draw, x: int, y: int, text: str, out: list, what: str) -> None:
        """``text`` with its ink starting ``MARGIN`` px right of ``x``; its box recorded in ``out``."""
        if not text:  # a column too narrow for even an ellipsis
            return
        left = min(self.font.getbbox(text)[0], 0)
        at = (x + MARGIN - left, y)
        draw.text(at, text, fill="black", font=self.font)
        out.append({"for": what, "text": text, "box": list(draw.textbbox(at, text, font=self.font))})


def _short_names(names: list[str]) -> dict[str, str]:
    """Each name's shortest start that no other name starts with (the name itself if none)."""
    out = {}
    for k in names:
        others = [o for o in names if o != k]
        out[k] = next((k[:n] for n in range(1, len(k)) if not any(o.startswith(k[:n]) for o in others)), k)
    return out


class _Labels:
    """How each parameter's values are written in a column ``width`` wide, and the legend lines
    the abbreviations need."""

    def __init__(self, text: _Text, items: list[dict[str, Any]], names: list[str], width: int,
                 all_names: list[str] | None = None) -> None:
        self.text, self.width = text, width
        self.values: dict[str, list[str]] = {k: [] for k in names}
        for it in items:
            for k in names:
                v = str(it[k])
                if v not in self.values[k]:
                    self.values[k].append(v)
        short = _short_names(all_names or names)  # unique among every parameter the sheet names
        self.form: dict[str, tuple[str, str]] = {}  # name -> (how: "value" or "number", the name written)
        for k in names:
            n = len(self.values[k])
            tries = [("value", k), ("value", short[k]), ("number", k), ("number", short[k])]
            self.form[k] = next((t for t in tries if all(text.fits(self._write(k, t, i), width) for i in range(n))), tries[-1])

    def _write(self, k: str, form: tuple[str, str], i: int) -> str:
        how, name = form
        return f"{name}={self.values[k][i]}" if how == "value" else f"{name}#{i + 1}"

    def __call__(self, k: str, value: Any) -> str:
        return self.text.cut(self._write(k, self.form[k], self.values[k].index(str(value))), self.width)

    def legend(self) -> list[tuple[str, str]]:
        """(key, meaning) for every abbreviation: a short name's parameter, a number's value."""
        out = []
        for k, (how, name) in self.form.items():
            if name != k:
                out.append((name, k))
            if how == "number":
                out += [(f"{name}#{n}", v) for n, v in enumerate(self.values[k], 1)]
        return out


def _tile(out_dir: Path, r):
    if r.image is not None:
        return r.image
    for f in r.files:  # an item done by an earlier sweep: its saved picture
        if f.lower().endswith(".png") and (out_dir / f).exists():
            import numpy as np
            from PIL import Image

            with Image.open(out_dir / f) as im:
                return np.asarray(im.convert("RGB"))
    return None


def write_contact_sheet(out_dir: str | Path, items: list[dict[str, Any]], grid: dict[str, list], varying: list[str],
                        results: dict[int, Any]) -> Path | None:
    """Tile every finished item's first image; None when there is none. Two grid axes (and no
    zip): an XY plot, rows the first axis's values, columns the second's. Otherwise one tile per
    item, in item order, ceil(sqrt(n)) columns, each labelled with the varying parameters, one a
    line. Abbreviated values are spelled out in a legend under the tiles."""
    out_dir = Path(out_dir)
    tiles = {i: t for i, r in sorted(results.items()) if r.status in ("ok", "skipped") and (t := _tile(out_dir, r)) is not None}
    if not tiles:
        return None
    from PIL import Image, ImageDraw

    from graphflow.atomic import write_atomic

    text = _Text()
    th = max(t.shape[0] for t in tiles.values())
    tw = max(t.shape[1] for t in tiles.values())
    xy = len(grid) == 2 and len(items[0]) == 2 and len(items) > 1
    boxes: dict[int, tuple[int, int]] = {}
    drawn: list[dict[str, Any]] = []
    if xy:
        (rk, rv), (ck, cv) = grid.items()
        rows, cols = len(rv), len(cv)
        col_labels = _Labels(text, items, [ck], tw, [rk, ck])
        row_labels = _Labels(text, items, [rk], max(ROW_LABEL_MAX * tw, ROW_LABEL_MIN), [rk, ck])
        left = max(16, max(text.width(row_labels(rk, v)) for v in rv) + 2 * MARGIN)  # as wide as its widest label
        legend = row_labels.legend() + col_labels.legend()
        x0, y0, step_x, step_y = left + PAD, text.line + PAD, tw + PAD, th + PAD
    else:
        cols = max(1, math.ceil(math.sqrt(len(items))))
        rows = math.ceil(len(items) / cols)
        item_labels = _Labels(text, items, varying, tw)
        legend = item_labels.legend()
        x0, y0, step_x, step_y = 0, 0, tw + PAD, th + text.line * max(1, len(varying)) + PAD
    grid_w, grid_h = x0 + cols * step_x, y0 + rows * step_y

    def place(r_: int, c: int) -> tuple[int, int]:
        return x0 + c * step_x, y0 + r_ * step_y
    width = max(grid_w, LEGEND_MIN_WIDTH) if legend else grid_w
    legend_lines = [line for key, meaning in legend for line in text.wrap(f"{key} = {meaning}", width)]
    height = grid_h + (PAD + len(legend_lines) * text.line if legend else 0)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i in tiles:
        boxes[i] = place(*divmod(i, cols))
    if xy:
        for c, v in enumerate(cv):
            draw_at = place(0, c)
            text.draw(draw, draw_at[0], 0, col_labels(ck, v), drawn, f"column {c}")
        for r_, v in enumerate(rv):
            text.draw(draw, 0, place(r_, 0)[1] + (th - text.line) // 2, row_labels(rk, v), drawn, f"row {r_}")
    else:
        for i in tiles:
            x, y = boxes[i]
            lines = [item_labels(k, items[i][k]) for k in varying] or [text.cut(f"item {i}", tw)]
            for n, line in enumerate(lines):
                text.draw(draw, x, y + th + 1 + n * text.line, line, drawn, f"item {i}")
    for n, line in enumerate(legend_lines):
        text.draw(draw, 0, grid_h + PAD + n * text.line, line, drawn, "legend")
    for i, t in tiles.items():
        sheet.paste(Image.fromarray(t), boxes[i])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    path = write_atomic(out_dir / SHEET, buf.getvalue())
    layout = {"rows": rows, "cols": cols, "tile": [tw, th], "xy": xy,
              "boxes": {str(i): [x, y, tiles[i].shape[1], tiles[i].shape[0]] for i, (x, y) in boxes.items()},
              "labels": drawn, "legend": [[k, v] for k, v in legend]}
    write_atomic(out_dir / SHEET_LAYOUT, orjson.dumps(layout, option=orjson.OPT_INDENT_2))
    return path
