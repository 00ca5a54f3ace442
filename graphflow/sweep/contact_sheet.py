"""A sweep's contact sheet: every finished item's first image in one labelled picture.

Its own module because it is the one part of a sweep that draws: the sweep runners (local or Ray)
only produce ``ItemResult``s, and the sheet is made from those plus the sweep's axes, wherever the
items ran. ``contact_sheet.json`` gives each tile's box, so a reader (a test, a notebook) can find
an item's picture in the sheet without guessing the layout.
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
LABEL_H = 14  # pixels of a label band (PIL's default bitmap font is about 11 high)
PAD = 2


def label(params: dict[str, Any]) -> str:
    """``k=v, k=v``: how a sweep names an item, on its tile and in its errors."""
    return ", ".join(f"{k}={v}" for k, v in params.items())


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
    item, in item order, ceil(sqrt(n)) columns, each labelled with the varying parameters."""
    out_dir = Path(out_dir)
    tiles = {i: t for i, r in sorted(results.items()) if r.status in ("ok", "skipped") and (t := _tile(out_dir, r)) is not None}
    if not tiles:
        return None
    from PIL import Image, ImageDraw

    from graphflow.atomic import write_atomic

    th = max(t.shape[0] for t in tiles.values())
    tw = max(t.shape[1] for t in tiles.values())
    xy = len(grid) == 2 and len(items[0]) == 2 and len(items) > 1
    boxes: dict[int, tuple[int, int]] = {}
    if xy:
        (rk, rv), (ck, cv) = grid.items()
        rows, cols = len(rv), len(cv)
        left = max(60, 7 * max(len(f"{rk}={v}") for v in rv)) + PAD
        top = LABEL_H + PAD
        sheet = Image.new("RGB", (left + cols * (tw + PAD), top + rows * (th + PAD)), "white")
        draw = ImageDraw.Draw(sheet)
        for c, v in enumerate(cv):
            draw.text((left + c * (tw + PAD) + 1, 1), f"{ck}={v}", fill="black")
        for r_, v in enumerate(rv):
            draw.text((1, top + r_ * (th + PAD) + th // 2 - 5), f"{rk}={v}", fill="black")
        for i in tiles:
            r_, c = divmod(i, cols)
            boxes[i] = (left + c * (tw + PAD), top + r_ * (th + PAD))
    else:
        cols = max(1, math.ceil(math.sqrt(len(items))))
        rows = math.ceil(len(items) / cols)
        sheet = Image.new("RGB", (cols * (tw + PAD), rows * (th + LABEL_H + PAD)), "white")
        draw = ImageDraw.Draw(sheet)
        for i in tiles:
            r_, c = divmod(i, cols)
            x, y = c * (tw + PAD), r_ * (th + LABEL_H + PAD)
            boxes[i] = (x, y)
            draw.text((x + 1, y + th + 1), label({k: items[i][k] for k in varying}) or f"item {i}", fill="black")
    for i, t in tiles.items():
        sheet.paste(Image.fromarray(t), boxes[i])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    path = write_atomic(out_dir / SHEET, buf.getvalue())
    layout = {"rows": rows, "cols": cols, "tile": [tw, th], "xy": xy,
              "boxes": {str(i): [x, y, tiles[i].shape[1], tiles[i].shape[0]] for i, (x, y) in boxes.items()}}
    write_atomic(out_dir / SHEET_LAYOUT, orjson.dumps(layout, option=orjson.OPT_INDENT_2))
    return path
