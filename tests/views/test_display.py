"""What a notebook shows, measured: the HTML and PNG that graphflow/views/html.py makes for run results,
workflows and sweeps (decoded pictures, their sizes and pixel colours, counts of <img> tags, table
cells), and the interrupt: a KeyboardInterrupt while waiting for a run stops the run."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field

from graphflow import Context, Executor, Inputs, Node, Outputs, Registry, Workflow
from graphflow import notebook as gn
from graphflow.engine import events as ev
from graphflow.engine.results import RunResult
from graphflow.node.kinds import ANY
from graphflow.sweep import LocalRunner, Sweep
from graphflow.views.html import result_html, result_png, sweep_html, workflow_svg
from tests.toy_nodes import link, make

ROOT = Path(__file__).resolve().parents[2]
IMG = re.compile(r'<img src="data:(image/\w+);base64,([^"]+)" width="(\d+)" height="(\d+)"')


def images(markup: str) -> list[tuple[str, Image.Image, int, int]]:
    """Every embedded picture: its MIME type, the decoded image, and the width and height it is shown at."""
    out = []
    for mime, data, w, h in IMG.findall(markup):
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        im.load()
        out.append((mime, im, int(w), int(h)))
    return out


class Cells(HTMLParser):
    """The text of every table cell, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table(markup: str) -> list[list[str]]:
    p = Cells()
    p.feed(markup)
    return p.rows


def solid(rgb, size=8, batch=1) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(batch, 3, size, size).clone()


@pytest.fixture(scope="module")
def ipython():
    """A real IPython shell with graphflow's displays registered, as a notebook's kernel has them."""
    from IPython.core.interactiveshell import InteractiveShell

    from graphflow.views.jupyter import register

    shell = InteractiveShell.instance()
    register(shell)
    return shell


def displayed(shell, obj, mime: str = "text/html"):
    """What IPython shows for ``obj`` as ``mime``."""
    data, _ = shell.display_formatter.format(obj)
    return data.get(mime)


def result(outputs, **kw) -> RunResult:
    return RunResult(outputs, kw.pop("errors", []), kw.pop("stats", {}), kw.pop("cancelled", False), 0.5, **kw)


# --- run results ------------------------------------------------------------------------------

def test_a_batch_shows_as_a_row_of_pictures_at_their_own_size_and_colour():
    batch = torch.cat([solid((1, 0, 0)), solid((0, 0, 1)), solid((0, 1, 0))])
    html = result_html(result({"image": batch}))
    pics = images(html)
    assert len(pics) == 3 and html.count("<img") == 3
    assert [p[1].size for p in pics] == [(8, 8)] * 3
    assert [p[1].convert("RGB").getpixel((4, 4)) for p in pics] == [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    assert all(p[0] == "image/png" and (p[2], p[3]) == (32, 32) for p in pics)  # 8 px enlarged 4x by the browser
    assert images(result_html(result({"image": solid((0, 0, 0), size=64)})))[0][2:] == (192, 192)  # one 64 px picture: 3x
    assert images(result_html(result({"image": solid((0, 0, 0), size=64, batch=2)})))[0][2:] == (128, 128)  # in a row: 2x
    assert "display:flex" in html and "batch of 3" in html


def test_a_big_picture_is_not_enlarged_and_a_huge_batch_is_cut():
    big = solid((0.5, 0.5, 0.5), size=256)
    (_mime, im, w, h), = images(result_html(result({"image": big})))
    assert im.size == (256, 256) and (w, h) == (256, 256)
    many = solid((0, 0, 0), size=4, batch=70)
    html = result_html(result({"image": many}))
    assert html.count("<img") == 64 and "batch of 70 (first 64 shown)" in html


def test_a_list_of_frames_shows_as_one_looping_animation():
    levels = list(range(0, 250, 25))
    frames = [solid((v / 255, v / 255, v / 255)) for v in levels]
    html = result_html(result({"x0": frames}))
    (mime, gif, _w, _h), = images(html)
    assert mime == "image/gif" and gif.size == (8, 8) and gif.n_frames == 10
    seen, durations = [], []
    for k in range(gif.n_frames):
        gif.seek(k)
        seen.append(gif.convert("RGB").getpixel((3, 3)))
        durations.append(gif.info["duration"])
    assert seen == [(v, v, v) for v in levels]
    assert durations == [120] * 9 + [1000] and gif.info["loop"] == 0
    assert "x0 · 10 frames" in html


def test_a_short_list_of_pictures_is_a_row_not_an_animation():
    html = result_html(result({"images": [solid((1, 0, 0)), solid((0, 1, 0)), solid((0, 0, 1))]}))
    pics = images(html)
    assert [p[0] for p in pics] == ["image/png"] * 3
    assert [p[1].convert("RGB").getpixel((1, 1)) for p in pics] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert "images · 8×8 · list of 3" in html and html.count("<figure") == 1


def test_numbers_and_text_show_in_a_table_escaped():
    html = result_html(result({"total": 42, "ratio": 1 / 3, "name": "<script>alert(1)</script>",
                               "losses": [0.5, 0.25, 0.125, 0.0625], "latents": torch.zeros(1, 4, 8, 8),
                               "loss": torch.tensor(2.5), "files": ["out/a_00001.png"]}))
    assert "<script>" not in html and "&lt;script&gt;" in html
    rows = {r[0]: r[1] for r in table(html)[1:]}
    assert rows == {"total": "42", "ratio": "0.333333", "name": "<script>alert(1)</script>",
                    "losses": "4 values: 0.5, 0.25, 0.125, 0.0625",
                    "latents": "tensor (1, 4, 8, 8) float32 (min 0, mean 0, max 0)", "loss": "2.5", "files": "out/a_00001.png"}
    assert "<img" not in html  # a saved file's path is text, not a second copy of the picture


class Boom(Node, name="Boom", category="test"):
    """Fails with a message holding markup."""

    class In(Inputs):
        x: float = Field(0.0, description="anything")

    class Out(Outputs):
        y: float = Field(description="never")

    def run(self, i, ctx):
        raise ValueError("bad <value> & worse")


class Swatch(Node, name="Swatch", category="test"):
    """A solid-colour 8×8 picture, red and blue from the inputs."""

    class In(Inputs):
        red: float = Field(0.0, ge=0, le=1, description="red")
        blue: float = Field(0.0, ge=0, le=1, description="blue")

    class Out(Outputs):
        image: ANY = Field(description="(1, 3, 8, 8)")

    def run(self, i, ctx):
        return {"image": solid((i.red, 0.0, i.blue))}


class Slow(Node, name="Slow", category="test", uses=("iteration",)):
    """Sleeps a little per loop step, so a run lasts long enough to be interrupted."""

    class In(Inputs):
        x: float = Field(0.0, description="anything")

    class Out(Outputs):
        y: float = Field(description="the iteration")

    def run(self, i, ctx: Context):
        time.sleep(0.02)
        return {"y": float(ctx.iteration)}


def test_a_failed_run_names_the_node_its_type_and_the_message():
    from tests.toy_nodes import toy_registry

    reg = Registry([*toy_registry(), Boom])
    wf = Workflow.from_dict({"format": 1, "nodes": {"a": {"type": "Num", "inputs": {"value": 2}},
                                                   "bad": {"type": "Boom", "inputs": {"x": {"from": "a.value"}}}},
                             "outputs": {"a": "a.value", "y": "bad.y"}}, reg)
    r = Executor().run(wf)
    html = result_html(r)
    assert "node <b>bad</b> (Boom) failed: ValueError: bad &lt;value&gt; &amp; worse" in html
    assert "output <b>y</b> not produced" in html
    assert "run failed" in html and table(html)[1] == ["a", "2"]


def test_the_profile_counts_runs_and_cache_hits_per_node():
    wf = make({"a": {"type": "Num", "inputs": {"value": 2}},
               "b": {"type": "Add", "inputs": {"a": link("a.value"), "b": {"param": "k"}}}},
              {"sum": "b.sum"}, {"k": {"default": 1}})
    ex = Executor()
    ex.run(wf)
    second = ex.run(wf.with_params(k=5))  # a is a cache hit, b runs again
    rows = {r[0]: r for r in table(gn.profile(second)._repr_html_())[1:]}
    assert rows["a"][1:4] == ["Num", "0", "1"] and rows["a"][5] == "memory"
    assert rows["b"][1:4] == ["Add", "1", "0"] and rows["b"][5] == "ran"
    shown = gn.show(second, profile=True)._repr_html_()
    assert "1 node ran, 1 from the cache" in shown and "<summary" in shown
    assert "profile" not in result_html(second) and "<summary" not in result_html(second)  # only on request
    assert "runs" in repr(gn.profile(second))  # the terminal table for a plain console


def test_the_png_of_a_result_is_its_pictures_in_a_labelled_row():
    red, blue, black, green = (solid(c, size=32) for c in ((1, 0, 0), (0, 0, 1), (0, 0, 0), (0, 1, 0)))
    png = result_png(result({"image": torch.cat([red, blue]), "frames": [black] * 9 + [green], "n": 3}))
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.size == (128 * 3 + 6 * 2, 128 + 16)  # 32 px enlarged 4x, 6 px apart, a 16 px label band
    assert [im.getpixel((64 + k * 134, 64)) for k in range(3)] == [(255, 0, 0), (0, 0, 255), (0, 255, 0)]  # the last frame
    band = im.crop((0, 128, 128, 144))
    assert int(np.asarray(band).min()) < 100  # the label is drawn
    assert result_png(result({"n": 3})) is None


def test_notebook_run_takes_a_path_and_parameters(tmp_path, ipython):
    r = gn.run(str(ROOT / "workflows" / "hello.json"), n=4, executor=Executor(out_dir=tmp_path), progress=False)
    assert r.ok and r["partial_sums"] == [0, 1, 3, 6]
    assert table(displayed(ipython, r))[1:] == [["file", str(tmp_path / "sum.txt")], ["partial_sums", "4 values: 0, 1, 3, 6"]]


def test_a_run_result_displays_itself_in_jupyter(ipython):
    r = result({"image": solid((1, 1, 0))})
    assert displayed(ipython, r) == result_html(r)


# --- workflows --------------------------------------------------------------------------------

def test_a_workflow_displays_as_a_graphviz_picture_with_its_scopes(ipython):
    wf = Workflow.load(ROOT / "workflows" / "nested_loop.json")
    svg = displayed(ipython, wf, "image/svg+xml")
    assert svg == workflow_svg(wf) and svg.lstrip().startswith("<?xml") and "<svg" in svg
    clusters = re.findall(r'<g id="clust\d+" class="cluster">\s*<title>cluster_(\w+)</title>', svg)
    assert clusters == ["table", "line"]
    for nid in ("table", "line", "product", "save"):
        assert f"<title>{nid}</title>" in svg
    assert "<title>param:n&#45;&gt;rows</title>" in svg or "param:n" in svg


def test_graph_png_and_svg_from_the_command_line(tmp_path, capsys):
    from graphflow.cli import main

    out = tmp_path / "txt2img.png"
    assert main(["graph", str(ROOT / "workflows" / "txt2img.json"), "--format", "png", "-o", str(out)]) == 0
    im = Image.open(out)
    assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 200
    assert main(["graph", str(ROOT / "workflows" / "hello.json"), "--format", "svg"]) == 0
    svg = capsys.readouterr().out
    assert "<svg" in svg and "<title>cluster_sum</title>" in svg
    assert [p.name for p in tmp_path.iterdir()] == ["txt2img.png"]  # no temporary left behind


def test_without_dot_a_notebook_still_shows_the_graph(tmp_path, ipython, monkeypatch):
    """No Graphviz (a fresh machine): the workflow's picture is graphflow's own SVG, not nothing
    (tests/views/test_diagram_fallback.py measures that picture)."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    wf = Workflow.load(ROOT / "workflows" / "hello.json")
    svg = displayed(ipython, wf, "image/svg+xml")
    assert svg == workflow_svg(wf) and "drawn by graphflow without Graphviz" in svg
    assert all(f"<title>{nid}</title>" in svg for nid in ("numbers", "sum", "add", "message", "save"))
    assert gn.show(wf)._repr_html_() == svg  # gn.show(wf) too


# --- sweeps -----------------------------------------------------------------------------------

def test_a_sweep_displays_its_labelled_contact_sheet_and_its_items(tmp_path, ipython):
    wf = Workflow.from_dict({"format": 1, "params": {"red": {"default": 0.0}, "blue": {"default": 0.0}},
                             "nodes": {"s": {"type": "Swatch", "inputs": {"red": {"param": "red"}, "blue": {"param": "blue"}}}},
                             "outputs": {"image": "s.image"}}, Registry([Swatch]))
    sw = gn.sweep(wf, grid={"red": [0.0, 1.0], "blue": [0.0, 1.0]}, out_dir=tmp_path / "sw", executor=Executor(), progress=False)
    html = displayed(ipython, sw)
    assert html == sweep_html(sw)
    (_mime, sheet, w, h), = images(html)
    assert sheet.tobytes() == Image.open(tmp_path / "sw" / "contact_sheet.png").tobytes()  # the sheet sweep.py drew
    k = max(1, min(4, 384 // max(sheet.size)))
    assert k > 1 and (w, h) == (sheet.width * k, sheet.height * k)  # small tiles: enlarged on screen, towards 384 px
    import orjson

    boxes = orjson.loads((tmp_path / "sw" / "contact_sheet.json").read_bytes())["boxes"]
    colours = {i: sheet.convert("RGB").getpixel((x + 4, y + 4)) for i, (x, y, _, _) in boxes.items()}
    assert colours == {"0": (0, 0, 0), "1": (0, 0, 255), "2": (255, 0, 0), "3": (255, 0, 255)}
    rows = table(html)
    assert rows[0] == ["item", "red", "blue", "status", "seconds", "error"]
    assert [r[:4] for r in rows[1:]] == [["0", "0", "0", "ok"], ["1", "0", "1", "ok"], ["2", "1", "0", "ok"], ["3", "1", "1", "ok"]]
    assert "sweep of 4 items (4 ok) over red, blue" in html


def test_a_sweep_not_yet_run_lists_its_items_and_a_failed_item_names_its_node(tmp_path, ipython):
    reg = Registry([Swatch, Boom])
    wf = Workflow.from_dict({"format": 1, "params": {"x": {"default": 0.0}},
                             "nodes": {"b": {"type": "Boom", "inputs": {"x": {"param": "x"}}}}, "outputs": {"y": "b.y"}}, reg)
    sw = Sweep(wf, grid={"x": [1.0, 2.0]}, out_dir=tmp_path / "sw", runner=LocalRunner(Executor()))
    assert [r[-3] for r in table(displayed(ipython, sw))[1:]] == ["pending", "pending"] and "not run yet" in displayed(ipython, sw)
    list(sw)
    html = displayed(ipython, sw)
    assert "<img" not in html  # nothing to tile
    assert [r[-1] for r in table(html)[1:]] == ["node 'b' (Boom): ValueError: bad <value> & worse"] * 2


# --- interrupting ------------------------------------------------------------------------------

def slow_loop(n: int) -> Workflow:
    from tests.toy_nodes import toy_registry

    reg = Registry([*toy_registry(), Slow])
    return Workflow.from_dict({"format": 1, "params": {"n": {"default": n, "type": "int"}}, "nodes": {
        "r": {"type": "Range", "inputs": {"stop": {"param": "n"}}},
        "loop": {"type": "Loop", "over": {"from": "r.values"}, "carry": {"acc": 0.0},
                 "body": {"s": {"type": "Slow", "inputs": {"x": {"from": "loop.acc"}}}},
                 "next": {"acc": {"from": "s.y"}}}}, "outputs": {"acc": "loop.acc"}}, reg)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt during the test even in a process started with SIGINT
    ignored (a shell's background job passes that on, and Python then keeps it ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def interrupt_at_step(ex: Executor, k: int) -> list[int]:
    """Sends this process a real SIGINT (what Ctrl-C and Jupyter's interrupt send) when step k begins."""
    steps: list[int] = []

    def hook(e):
        if isinstance(e, ev.LoopStep):
            steps.append(e.index)
            if e.index == k:
                os.kill(os.getpid(), signal.SIGINT)
    ex.subscribe(hook, on_run_thread=True)
    return steps


@pytest.mark.parametrize("how", ["Executor.run", "notebook.run"])
def test_an_interrupt_while_waiting_stops_the_run_at_its_next_step(how, sigint_raises):
    assert threading.current_thread() is threading.main_thread()
    ex = Executor()
    wf = slow_loop(500)
    steps = interrupt_at_step(ex, 3)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        if how == "Executor.run":
            ex.run(wf)
        else:
            gn.run(wf, executor=ex, progress=False)
    assert time.perf_counter() - t0 < 5  # 500 steps would take 10 s
    stopped_at = len(steps)
    time.sleep(0.3)
    assert 4 <= stopped_at < 50 and len(steps) == stopped_at  # stopped soon after the interrupt, nothing ran on after it returned
    assert ex._current is None
    assert ex.run(slow_loop(3))["acc"] == 2.0  # the executor goes on with the next run


def test_an_interrupted_notebook_sweep_stops_its_item_and_keeps_the_executor_usable(tmp_path, sigint_raises):
    ex = Executor(out_dir=tmp_path / "mine")
    steps = interrupt_at_step(ex, 3)
    with pytest.raises(KeyboardInterrupt):
        gn.sweep(slow_loop(3), grid={"n": [200, 201]}, out_dir=tmp_path / "sw", executor=ex, progress=False)
    stopped_at = len(steps)
    time.sleep(0.3)
    assert 4 <= stopped_at < 50 and len(steps) == stopped_at  # the first item stopped soon; the second never started
    assert ex.out_dir == tmp_path / "mine" and ex._current is None
    assert not (tmp_path / "sw" / "index.jsonl").exists() or (tmp_path / "sw" / "index.jsonl").read_text() == ""
