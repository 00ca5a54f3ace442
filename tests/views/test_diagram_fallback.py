"""Pictures of a workflow without Graphviz (graphflow/views/layered.py): with `dot` off PATH,
`graphflow graph --format svg|png` and the notebook's picture are drawn in Python. The SVG is
parsed as XML and measured: one node element per graph node (named, its id written in it), one
edge element per link, boxes that do not overlap, each edge running from its source's box to its
target's."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphflow.document.reader import load_json_file, read_document
from graphflow.views.diagram import links, picture

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def document(path: Path):
    doc, problems = read_document(load_json_file(path)[0], str(path))
    assert doc is not None, problems
    return doc


def expected(doc) -> tuple[set[str], Counter]:
    """Every node the picture must hold (the document's, its parameters', its outputs') and every
    edge as "source->target", counted."""
    nodes = set(doc.all_nodes()) | {f"param:{p}" for n in doc.all_nodes().values() for _, r in n.refs()
                                    if type(r).__name__ == "ParamRef" for p in [r.name]}
    nodes |= {f"out:{name}" for name in doc.outputs}
    edges = Counter(f"{s}->{t}" for s, t, _label, _dashed in links(doc))
    return nodes, edges


def parse(svg: bytes) -> tuple[dict[str, ET.Element], list[tuple[str, ET.Element]]]:
    root = ET.fromstring(svg)
    nodes, edges = {}, []
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if g.get("class") == "node":
            assert title.text not in nodes, f"{title.text} drawn twice"
            nodes[title.text] = g
        elif g.get("class") == "edge":
            edges.append((title.text, g))
    return nodes, edges


def rect(g: ET.Element) -> tuple[float, float, float, float] | None:
    r = g.find(f"{SVG}rect")
    return None if r is None else tuple(float(r.get(k)) for k in ("x", "y", "width", "height"))


def check(svg: bytes, doc) -> None:
    want_nodes, want_edges = expected(doc)
    nodes, edges = parse(svg)
    assert set(nodes) == want_nodes
    assert Counter(title for title, _ in edges) == want_edges
    for nid in doc.all_nodes():  # each node's box says its id (and its type)
        texts = [t.text for t in nodes[nid].iter(f"{SVG}text")]
        assert texts[0] == nid and doc.all_nodes()[nid].type in texts
    boxes = {nid: rect(g) for nid, g in nodes.items() if rect(g) is not None}
    assert set(boxes) >= set(doc.all_nodes())
    for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in itertools.combinations(boxes.items(), 2):
        assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, f"{a} and {b} overlap"
    for title, g in edges:  # from the edge of its source's box to the edge of its target's
        source, target = title.split("->")
        d = g.find(f"{SVG}path").get("d")
        (x1, y1), (x2, y2) = (tuple(map(float, p.split(","))) for p in d[1:].split(" L"))
        for (x, y), end in (((x1, y1), source), ((x2, y2), target)):
            if end not in boxes:
                continue  # a parameter: text only
            bx, by, bw, bh = boxes[end]
            on_side = (abs(x - bx) < 0.2 or abs(x - bx - bw) < 0.2) and by - 0.2 <= y <= by + bh + 0.2
            on_top = (abs(y - by) < 0.2 or abs(y - by - bh) < 0.2) and bx - 0.2 <= x <= bx + bw + 0.2
            assert on_side or on_top, (title, end, (x, y), boxes[end])


@pytest.fixture
def no_dot(tmp_path, monkeypatch):
    """A PATH without Graphviz's `dot`, as on a fresh machine."""
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_shipped_workflow_is_drawn_without_dot(path, no_dot):
    doc = document(path)
    svg = picture(doc, "svg")
    assert b"drawn by graphflow without Graphviz" in svg
    check(svg, doc)


def test_graph_command_without_dot_writes_svg_and_png_and_says_graphviz_is_better(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT)}  # a PATH lacking `dot`
    nested = ROOT / "workflows" / "nested_loop.json"
    p = subprocess.run([sys.executable, "-m", "graphflow.cli", "graph", str(nested), "--format", "svg"],
                       env=env, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr.decode() == ("graphflow graph: Graphviz's `dot` is not installed: drawn by graphflow's simpler layout "
                                 "(for Graphviz's: Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)\n")
    doc = document(nested)
    check(p.stdout, doc)
    nodes, edges = parse(p.stdout)
    assert len(nodes) == 13 and len(edges) == 19  # 9 nodes, the parameter n, 3 outputs; 15 links, 1 feed, 3 outputs
    out = tmp_path / "nested.png"
    p = subprocess.run([sys.executable, "-m", "graphflow.cli", "graph", str(nested), "--format", "png", "-o", str(out)],
                       env=env, capture_output=True, timeout=120)
    assert p.returncode == 0 and b"not installed" in p.stderr, p.stderr.decode()
    im = Image.open(io.BytesIO(out.read_bytes()))
    assert im.format == "PNG" and im.width > 1000 and im.height > 300
    colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 16  # drawn: boxes, tints, text, not a blank page


def test_with_dot_graphviz_still_draws_it(tmp_path):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed here")
    svg = picture(document(ROOT / "workflows" / "hello.json"), "svg")
    assert b"drawn by graphflow" not in svg and b"<title>cluster_sum</title>" in svg
