"""The contact sheet's labels fit their columns at 64 px tiles (graphflow/sweep/contact_sheet.py),
measured in the rendered PNG: no ink between columns, every mark outside the tiles inside a label
box that PIL's textbbox gives for that label's text, no box reaching into a neighbour; and the
labels with the legend spell out every item's parameters exactly."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from PIL import Image, ImageDraw, ImageFont

from graphflow.sweep.contact_sheet import write_contact_sheet
from graphflow.sweep.item import ItemResult
from graphflow.sweep.items import expand, varying

TILE = 64
PROMPTS = ["a red circle on a blue background", "a blue square",
           "a green triangle standing in deep snow at dusk, with long shadows and a pale violet sky behind it"]


def sheet(tmp_path, grid, zip=None, size=TILE):
    """Write the sheet of a sweep whose every item finished with a light solid tile; returns the
    items, the sheet as an array and its layout."""
    items = expand(grid, zip)
    colours = np.random.default_rng(0).integers(150, 256, (len(items), 3))  # lighter than any ink
    results = {i: ItemResult(i, p, "ok", image=np.full((size, size, 3), colours[i], np.uint8)) for i, p in enumerate(items)}
    write_contact_sheet(tmp_path, items, grid, varying(items), results)
    png = np.asarray(Image.open(tmp_path / "contact_sheet.png").convert("RGB")).astype(int)
    return items, png, orjson.loads((tmp_path / "contact_sheet.json").read_bytes())


def ink(png) -> np.ndarray:
    return png.max(axis=2) < 128  # black text, antialiased: its dark core


def outside_tiles(png, layout) -> np.ndarray:
    mask = np.ones(png.shape[:2], bool)
    for x, y, w, h in layout["boxes"].values():
        mask[y:y + h, x:x + w] = False
    return mask


def check_boxes_and_pixels(png, layout):
    """Each recorded label box is what textbbox gives for its text (same font, same size), holds
    ink, overlaps no other box; every dark pixel outside the tiles lies in one of them."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = ImageFont.load_default()
    boxes = [lab["box"] for lab in layout["labels"]]
    for lab in layout["labels"]:
        x0, y0, x1, y1 = lab["box"]
        l, t, r, b = draw.textbbox((0, 0), lab["text"], font=font)
        assert (x1 - x0, y1 - y0) == (r - l, b - t), lab
        assert 0 <= x0 and x1 <= png.shape[1] and 0 <= y0 and y1 <= png.shape[0], lab
        assert ink(png)[y0:y1, x0:x1].any(), lab
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (layout["labels"][a], layout["labels"][b])
    covered = np.zeros(png.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        covered[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
    stray = ink(png) & outside_tiles(png, layout) & ~covered
    assert not stray.any(), np.argwhere(stray)[:5]


def decode(text: str, legend: dict[str, str]) -> tuple[str, str]:
    """A label line back to (parameter, value), through the legend where it abbreviates."""
    if "=" in text:
        name, value = text.split("=", 1)
        return legend.get(name, name), value
    name = text.split("#")[0]
    return legend.get(name, name), legend[text]


def check_legend_is_drawn(layout, width):
    drawn = [lab for lab in layout["labels"] if lab["for"] == "legend"]
    assert all(lab["box"][2] <= width for lab in drawn)
    flat = "".join(lab["text"] for lab in drawn).replace(" ", "")
    assert flat == "".join(f"{k}={m}" for k, m in layout["legend"]).replace(" ", "")


def test_zipped_prompts_at_64_px_fit_their_columns_and_the_legend_spells_them_out(tmp_path):
    items, png, layout = sheet(tmp_path, {"guidance": [1.0, 7.5]}, {"prompt": PROMPTS, "seed": [0, 1, 2]})
    cols, tiles = layout["cols"], layout["boxes"]
    assert cols == 3 and layout["tile"] == [TILE, TILE]
    # no ink in the gaps between columns, above the legend (the old one-line labels ran across them)
    legend_top = min((lab["box"][1] for lab in layout.get("labels", []) if lab["for"] == "legend"), default=png.shape[0])
    assert legend_top > max(y + h for _, y, _, h in tiles.values())
    for c in range(cols - 1):
        gap = ink(png)[:legend_top, tiles[str(c)][0] + TILE:tiles[str(c + 1)][0]]
        assert gap.shape[1] == 2 and not gap.any(), f"ink between columns {c} and {c + 1}"
    check_boxes_and_pixels(png, layout)
    legend = dict(layout["legend"])
    for i, params in enumerate(items):
        x, y, w, h = tiles[str(i)]
        mine = [lab for lab in layout["labels"] if lab["for"] == f"item {i}"]
        assert len(mine) == 3  # one line per varying parameter: guidance, prompt, seed
        for lab in mine:
            x0, y0, x1, y1 = lab["box"]
            assert x <= x0 and x1 <= x + w and y + h <= y0, lab  # under its own tile, inside its column
        assert {decode(lab["text"], legend) for lab in mine} == {(k, str(v)) for k, v in params.items()}
    assert sorted(v for k, v in layout["legend"] if "#" in k) == sorted(PROMPTS)  # the full prompts, once each
    check_legend_is_drawn(layout, png.shape[1])


def test_an_xy_plot_at_64_px_labels_columns_and_rows_within_their_cells(tmp_path):
    items, png, layout = sheet(tmp_path, {"prompt": PROMPTS, "guidance": [1.0, 2.5, 7.5]})
    assert layout["xy"] and (layout["rows"], layout["cols"]) == (3, 3)
    check_boxes_and_pixels(png, layout)
    legend, tiles = dict(layout["legend"]), layout["boxes"]
    first_x = min(x for x, _, _, _ in tiles.values())
    for lab in layout["labels"]:
        what, _, n = lab["for"].partition(" ")
        x0, y0, x1, y1 = lab["box"]
        if what == "column":
            x, y = tiles[n][:2]  # the tile of row 0, column n
            assert x <= x0 and x1 <= x + TILE and y1 <= y
            assert decode(lab["text"], legend) == ("guidance", str([1.0, 2.5, 7.5][int(n)]))
        elif what == "row":
            y = tiles[str(int(n) * 3)][1]
            assert x1 <= first_x and y <= y0 and y1 <= y + TILE
            assert decode(lab["text"], legend) == ("prompt", PROMPTS[int(n)])
    assert sum(lab["for"].startswith("column") for lab in layout["labels"]) == 3
    assert sum(lab["for"].startswith("row") for lab in layout["labels"]) == 3
    check_legend_is_drawn(layout, png.shape[1])


@pytest.mark.parametrize("size", [16, 64, 256])
def test_long_names_and_short_values_at_any_tile_size(tmp_path, size):
    grid = {"negative_prompt": ["blurry, low quality, jpeg artifacts", ""], "num_inference_steps": [10, 25]}
    items, png, layout = sheet(tmp_path, grid, {"seed": [1], "prompt": [PROMPTS[0]]}, size)
    check_boxes_and_pixels(png, layout)
    legend = dict(layout["legend"])
    for i, params in enumerate(items):
        x, _, w, _ = layout["boxes"][str(i)]
        mine = [lab for lab in layout["labels"] if lab["for"] == f"item {i}"]
        assert all(x <= lab["box"][0] and lab["box"][2] <= x + w for lab in mine)
        if size >= 64:  # 16 px columns cut labels short ("…"); 64 px and up spell every one out
            assert {decode(lab["text"], legend) for lab in mine} == {(k, str(params[k])) for k in varying(items)}
    if size == 256:  # everything fits: no abbreviation, no legend
        assert layout["legend"] == [] and png.shape[1] == 2 * (256 + 2)
