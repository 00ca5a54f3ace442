"""A workflow's picture drawn in Python, for machines without Graphviz's `dot`.

`dot` gives the better picture (scopes as boxes around their bodies, edges routed around nodes),
but it is a system package a fresh machine lacks, and a notebook there showed no graph at all.
This draws the same nodes and links (parameters and outputs included) as SVG or PNG with what
graphflow already depends on: networkx lays the nodes out in columns by topological generation
(``nx.multipartite_layout``), left to right as `dot` does; each column is then ordered by where
its nodes' inputs sit, so links cross less; edges are straight. A scope's body nodes carry their
scope's tint and name instead of a box.

The SVG follows Graphviz's conventions where a reader looks for them: each node is a
``<g class="node">`` and each link a ``<g class="edge">`` whose ``<title>`` names it
(``save``, ``sum->message``).
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field

from graphflow.document.tree import Document, NodeDef, ScopeDef

__all__ = ["Layout", "layout", "png", "svg"]

FONT = 12  # px, node text; edge labels are smaller
COL_GAP, ROW_GAP, PAD_X, PAD_Y, MARGIN = 70, 18, 10, 6, 12
SCOPE_FILL = {"Loop": "#eef3fb", "Map": "#f4effb"}
PARAM_COLOUR, EDGE_COLOUR, LABEL_COLOUR = "#996600", "#667788", "#334455"


@dataclass
class Box:
    id: str
    lines: list[tuple[str, str]]  # (text, style: "id" | "type" | "note")
    kind: str  # node | scope | param | output
    fill: str = "#ffffff"
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0


@dataclass
class Edge:
    source: str
    target: str
    label: str
    dashed: bool = False


@dataclass
class Layout:
    boxes: dict[str, Box] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    width: int = 0
    height: int = 0


def _text_width(text: str, size: int) -> float:
    """Roughly what a sans-serif font takes: a browser draws the SVG with its own font."""
    return 0.58 * size * len(text)


def _boxes_and_edges(doc: Document, links: list[tuple[str, str, str, bool]]) -> tuple[dict[str, Box], list[Edge]]:
    boxes: dict[str, Box] = {}
    nodes = doc.all_nodes()
    for nid, n in nodes.items():
        lines = [(nid, "id")]
        if n.title:
            lines.append((n.title, "note"))
        lines.append((n.type, "type"))
        if isinstance(n, NodeDef) and n.when:
            w = n.when
            lines.append((f"every {w.every}" + (f" from {w.start}" if w.start else "")
                          + (f" until {w.stop}" if w.stop is not None else ""), "note"))
        kind = "scope" if isinstance(n, ScopeDef) else "node"
        fill = SCOPE_FILL.get(n.type, "#ffffff") if kind == "scope" else "#ffffff"
        if n.scope:  # a body node: its innermost scope's name and tint
            lines.append((f"in {nodes[n.scope].type.lower()} {n.scope}", "note"))
            fill = SCOPE_FILL.get(nodes[n.scope].type, fill)
        boxes[nid] = Box(nid, lines, kind, fill)
    edges = [Edge(s, t, label, dashed) for s, t, label, dashed in links]
    for e in edges:
        if e.source.startswith("param:") and e.source not in boxes:
            boxes[e.source] = Box(e.source, [(e.source[len("param:"):], "param")], "param", "none")
        if e.target.startswith("out:") and e.target not in boxes:
            boxes[e.target] = Box(e.target, [(f"output {e.target[len('out:'):]}", "type")], "output", "#fff8dd")
    for e in edges:  # a link to a node the document lacks (`graph` draws unchecked documents): drawn, marked
        for end in (e.source, e.target):
            boxes.setdefault(end, Box(end, [(end, "id"), ("not in the workflow", "note")], "node", "#fde8e8"))
    return boxes, edges


def _acyclic(graph, doc: Document):
    """The graph less the links that close a cycle, for layering only (they are still drawn): a
    body node feeding its own scope (``next``, ``collect``) first, then any other cycle's last link."""
    import networkx as nx

    dag = graph.copy()
    nodes = doc.all_nodes()
    for s, t in list(dag.edges):
        scope = getattr(nodes.get(s), "scope", None)
        while scope is not None:
            if scope == t:
                dag.remove_edge(s, t)
                break
            scope = nodes[scope].scope
    while True:
        try:
            cycle = nx.find_cycle(dag)
        except nx.NetworkXNoCycle:
            return dag
        dag.remove_edge(*cycle[-1][:2])


def layout(doc: Document, links: list[tuple[str, str, str, bool]]) -> Layout:
    """Every node's box, in columns by topological generation, left to right. ``links``: (source,
    target, label, dashed) for every edge, parameters' (from ``param:NAME``) and outputs' (to
    ``out:NAME``) included, as ``diagram.links`` lists them."""
    import networkx as nx

    boxes, edges = _boxes_and_edges(doc, links)
    graph = nx.DiGraph()
    graph.add_nodes_from(boxes)
    graph.add_edges_from((e.source, e.target) for e in edges)
    dag = _acyclic(graph, doc)
    for layer, members in enumerate(nx.topological_generations(dag)):
        for nid in members:
            dag.nodes[nid]["layer"] = layer
    for nid in boxes:  # a source (a parameter) sits just before its first reader, as `dot` puts it
        after = [dag.nodes[t]["layer"] for t in dag.successors(nid)]
        if not any(True for _ in dag.predecessors(nid)) and after:
            dag.nodes[nid]["layer"] = max(0, min(after) - 1)
    pos = nx.multipartite_layout(dag, subset_key="layer", align="vertical")
    columns: dict[int, list[str]] = {}
    for nid in boxes:
        columns.setdefault(dag.nodes[nid]["layer"], []).append(nid)
    for b in boxes.values():
        widths = [_text_width(t, FONT if style != "note" else FONT - 2) for t, style in b.lines]
        b.w = max(widths) + 2 * PAD_X
        b.h = len(b.lines) * (FONT + 4) + 2 * PAD_Y
    x = MARGIN
    rank: dict[str, float] = {}
    for layer in sorted(columns):
        members = columns[layer]
        # networkx's order in the column, then by the mean row of the node's inputs (fewer crossings)
        members.sort(key=lambda n: -pos[n][1])
        first = {n: k for k, n in enumerate(members)}
        preds = {n: [rank[p] for p in graph.predecessors(n) if p in rank] for n in members}
        members.sort(key=lambda n: sum(preds[n]) / len(preds[n]) if preds[n] else first[n])
        y = MARGIN
        col_w = max(boxes[n].w for n in members)
        for k, n in enumerate(members):
            b = boxes[n]
            b.x, b.y = x + (col_w - b.w) / 2, y
            y += b.h + ROW_GAP
            rank[n] = k
        x += col_w + COL_GAP
    out = Layout(boxes, edges)
    out.width = int(max(b.x + b.w for b in boxes.values()) + MARGIN) if boxes else 2 * MARGIN
    out.height = int(max(b.y + b.h for b in boxes.values()) + MARGIN) if boxes else 2 * MARGIN
    return out


def _ends(a: Box, b: Box) -> tuple[float, float, float, float]:
    """From ``a``'s right side to ``b``'s left side (or between their centres' nearest sides when
    ``b`` is not to the right: a link closing a loop)."""
    if b.x >= a.x + a.w:
        return a.x + a.w, a.y + a.h / 2, b.x, b.y + b.h / 2
    return a.x + a.w / 2, a.y + (a.h if b.y > a.y else 0), b.x + b.w / 2, b.y + (0 if b.y > a.y else b.h)


def svg(doc: Document, links: list[tuple[str, str, str, bool]]) -> bytes:
    lay = layout(doc, links)
    esc = html.escape
    out = ['<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
           "<!-- drawn by graphflow without Graphviz (install Graphviz for a better layout) -->",
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}pt" height="{lay.height}pt" '
           f'viewBox="0 0 {lay.width} {lay.height}" font-family="Helvetica,Arial,sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE_COLOUR}"/></marker></defs>',
           f'<g id="graph0" class="graph"><title>workflow</title><rect width="{lay.width}" height="{lay.height}" fill="white"/>']
    for k, e in enumerate(lay.edges):
        x1, y1, x2, y2 = _ends(lay.boxes[e.source], lay.boxes[e.target])
        colour = "#ccaa66" if e.dashed else EDGE_COLOUR
        dash = ' stroke-dasharray="5,3"' if e.dashed else ""
        out.append(f'<g id="edge{k + 1}" class="edge"><title>{esc(e.source)}-&gt;{esc(e.target)}</title>'
                   f'<path d="M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}" fill="none" stroke="{colour}"{dash} '
                   'marker-end="url(#arrow)"/>'
                   f'<text x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 3:.1f}" text-anchor="middle" font-size="{FONT - 3}" '
                   f'fill="{PARAM_COLOUR if e.dashed else LABEL_COLOUR}">{esc(e.label)}</text></g>')
    for k, b in enumerate(lay.boxes.values()):
        shape = ""
        if b.kind != "param":
            rx = b.h / 2 if b.kind == "scope" else 6
            shape = (f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" rx="{rx:.1f}" '
                     f'fill="{b.fill}" stroke="{"#8899bb" if b.kind == "scope" else "#333333"}"/>')
        texts = []
        for n, (t, style) in enumerate(b.lines):
            size = FONT - 2 if style == "note" else FONT
            attrs = {"id": ' font-weight="bold"', "type": ' fill="#555555"', "note": ' font-style="italic" fill="#777777"',
                     "param": f' fill="{PARAM_COLOUR}"'}[style]
            texts.append(f'<text x="{b.x + b.w / 2:.1f}" y="{b.y + PAD_Y + (n + 1) * (FONT + 4) - 4:.1f}" '
                         f'text-anchor="middle" font-size="{size}"{attrs}>{esc(t)}</text>')
        out.append(f'<g id="node{k + 1}" class="node"><title>{esc(b.id)}</title>{shape}{"".join(texts)}</g>')
    out += ["</g>", "</svg>", ""]
    return "\n".join(out).encode()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)  # FreeType (Pillow >= 10.1 built with it): any size
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def png(doc: Document, links: list[tuple[str, str, str, bool]]) -> bytes:
    """The same layout drawn by PIL: boxes, straight arrows, labels."""
    import math

    from PIL import Image, ImageDraw

    lay = layout(doc, links)
    scale = 2  # the layout's units are points; a PNG twice as many pixels reads like Graphviz's
    im = Image.new("RGB", (lay.width * scale, lay.height * scale), "white")
    draw = ImageDraw.Draw(im)
    font, small = _font(FONT * scale), _font((FONT - 3) * scale)
    for e in lay.edges:
        x1, y1, x2, y2 = (v * scale for v in _ends(lay.boxes[e.source], lay.boxes[e.target]))
        colour = "#ccaa66" if e.dashed else EDGE_COLOUR
        draw.line((x1, y1, x2, y2), fill=colour, width=scale)
        a = math.atan2(y2 - y1, x2 - x1)
        tip = [(x2, y2), (x2 - 7 * scale * math.cos(a - 0.4), y2 - 7 * scale * math.sin(a - 0.4)),
               (x2 - 7 * scale * math.cos(a + 0.4), y2 - 7 * scale * math.sin(a + 0.4))]
        draw.polygon(tip, fill=colour)
        draw.text(((x1 + x2) / 2, (y1 + y2) / 2 - 3 * scale), e.label.replace("→", "->"),  # PIL's font lacks "→"
                  fill=PARAM_COLOUR if e.dashed else LABEL_COLOUR, font=small, anchor="ms")
    for b in lay.boxes.values():
        box = (b.x * scale, b.y * scale, (b.x + b.w) * scale, (b.y + b.h) * scale)
        if b.kind != "param":
            draw.rounded_rectangle(box, radius=(b.h / 2 if b.kind == "scope" else 6) * scale, fill=b.fill,
                                   outline="#8899bb" if b.kind == "scope" else "#333333", width=scale)
        for n, (t, style) in enumerate(b.lines):
            colour = {"id": "black", "type": "#555555", "note": "#777777", "param": PARAM_COLOUR}[style]
            draw.text(((b.x + b.w / 2) * scale, (b.y + PAD_Y + (n + 1) * (FONT + 4) - 4) * scale), t, fill=colour,
                      font=font if style != "note" else small, anchor="ms")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
