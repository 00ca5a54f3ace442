"""Pictures of a workflow: Mermaid text for Markdown viewers, Graphviz DOT text, and that DOT laid
out by Graphviz's `dot` as SVG or PNG (the CLI's `graph --format svg|png`, a workflow's picture in
a notebook). Scopes (loops and maps, at any depth) are drawn as boxes around their bodies.

Where `dot` is not installed (a fresh machine, a notebook server), the SVG and PNG are drawn in
Python instead (``layered.py``: the same nodes and links, a simpler layout), so a picture is never
missing; Graphviz stays the better option."""

from __future__ import annotations

import html
import shutil

from graphflow.document.tree import Def, Document, NodeDef, ParamRef, ScopeDef, ref_links

PICTURE_FORMATS = ("svg", "png")


class RenderError(Exception):
    """The picture could not be drawn (Graphviz's `dot` refused the graph)."""


def _edges(doc: Document) -> list[tuple[str, str, str]]:
    """(source, target, label) for every link, those inside bodies included."""
    out = []
    for n in doc.all_nodes().values():
        for fld, ref in n.refs():
            out += [(link.node, n.id, f"{link.port}→{_field_label(fld)}") for link in ref_links(ref)]
    return sorted(out)


def _field_label(fld: str) -> str:
    section, _, name = fld.partition(".")
    return name if section in ("inputs", "carry") else fld.replace(".", " ")


def _param_edges(doc: Document) -> list[tuple[str, str, str]]:
    """(parameter, node, field) for every input a parameter feeds."""
    return sorted((ref.name, n.id, _field_label(fld)) for n in doc.all_nodes().values()
                  for fld, ref in n.refs() if isinstance(ref, ParamRef))


def _label(n: Def) -> str:
    return f"{n.id}: {n.type}" + (f" (every {n.when.every})" if isinstance(n, NodeDef) and n.when else "")


def mermaid(doc: Document) -> str:
    lines = ["flowchart LR"]

    def nodes(members: dict[str, Def], indent: str) -> None:
        for nid, n in members.items():
            if isinstance(n, ScopeDef):
                lines.append(f'{indent}subgraph {nid}_body["{n.type.lower()} {nid}"]')
                lines.append(f'{indent}  {nid}(["{nid}: {n.type}"])')
                nodes(n.body, indent + "  ")
                lines.append(f"{indent}end")
            else:
                lines.append(f'{indent}{nid}["{_label(n)}"]')

    nodes(doc.nodes, "  ")
    for s, t, label in _edges(doc):
        lines.append(f"  {s} -->|{label}| {t}")
    for name, link in doc.outputs.items():
        lines.append(f'  out_{name}[/"output {name}"/]')
        lines.append(f"  {link.node} --> out_{name}")
    return "\n".join(lines) + "\n"


def _html_label(n: Def) -> str:
    """A Graphviz HTML-like label: the node id in bold over its type (and its title, its 'when')."""
    extra = ""
    if isinstance(n, NodeDef) and n.when:
        w = n.when
        extra = f"every {w.every}" + (f" from {w.start}" if w.start else "") + (f" until {w.stop}" if w.stop is not None else "")
    rows = [f"<b>{html.escape(n.id)}</b>", f'<font point-size="10" color="#555555">{html.escape(n.type)}</font>']
    if n.title:
        rows.insert(1, f'<i>{html.escape(n.title)}</i>')
    if extra:
        rows.append(f'<font point-size="9" color="#996600">{html.escape(extra)}</font>')
    return "<" + "<br/>".join(rows) + ">"


def dot(doc: Document) -> str:
    lines = ["digraph workflow {", "  rankdir=LR;", '  graph [fontname=Helvetica, fontsize=11, nodesep=0.25, ranksep=0.45];',
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname=Helvetica, fontsize=11];',
             '  edge [fontname=Helvetica, fontsize=9, color="#667788", fontcolor="#334455", arrowsize=0.6];']

    def nodes(members: dict[str, Def], indent: str) -> None:
        for nid, n in members.items():
            if isinstance(n, ScopeDef):
                fill = "#eef3fb" if n.type == "Loop" else "#f4effb"
                lines.append(f'{indent}subgraph "cluster_{nid}" {{ label="{n.type.lower()} {nid}"; style="rounded,filled"; '
                             f'fillcolor="{fill}"; color="#8899bb";')
                lines.append(f'{indent}  "{nid}" [shape=ellipse, fillcolor="#dde7f7", label={_html_label(n)}];')
                nodes(n.body, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(f'{indent}"{nid}" [label={_html_label(n)}];')

    nodes(doc.nodes, "  ")
    for s, t, label in _edges(doc):
        lines.append(f'  "{s}" -> "{t}" [label="{label}"];')
    for name in sorted({p for p, _, _ in _param_edges(doc)}):
        lines.append(f'  "param:{name}" [shape=plain, style="", fontcolor="#996600", label="{name}"];')
    for p, t, fld in _param_edges(doc):
        lines.append(f'  "param:{p}" -> "{t}" [style=dashed, color="#ccaa66", label="{fld}" fontcolor="#996600"];')
    for name, link in doc.outputs.items():
        lines.append(f'  "out:{name}" [shape=note, fillcolor="#fff8dd", label="output {name}"];')
        lines.append(f'  "{link.node}" -> "out:{name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def links(doc: Document) -> list[tuple[str, str, str, bool]]:
    """(source, target, label, dashed) for every edge of the picture: links, parameters' feeds
    (dashed, from ``param:NAME``) and outputs (to ``out:NAME``)."""
    out = [(s, t, label, False) for s, t, label in _edges(doc)]
    out += [(f"param:{p}", t, fld, True) for p, t, fld in _param_edges(doc)]
    out += [(link.node, f"out:{name}", link.port, False) for name, link in doc.outputs.items()]
    return out


INSTALL_GRAPHVIZ = "Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz"


def has_dot() -> bool:
    """Whether Graphviz's `dot` is on PATH (where the `graphviz` package looks for it)."""
    return shutil.which("dot") is not None


def picture(doc: Document, fmt: str = "svg") -> bytes:
    """The workflow's DOT laid out by Graphviz's `dot` (through the `graphviz` package), SVG text or
    PNG bytes; where `dot` is not installed, the same picture drawn in Python (``layered.py``).
    Raises RenderError when `dot` is there but fails."""
    if fmt not in PICTURE_FORMATS:
        raise ValueError(f"picture format must be one of {', '.join(PICTURE_FORMATS)}, got {fmt!r}")
    import graphviz

    try:
        return graphviz.Source(dot(doc)).pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        from graphflow.views import layered

        return (layered.svg if fmt == "svg" else layered.png)(doc, links(doc))
    except graphviz.CalledProcessError as e:
        raise RenderError(f"Graphviz's `dot` failed: {(e.stderr or b'').decode(errors='replace').strip()}") from None


def write_picture(doc: Document, fmt: str, output: str | None) -> int:
    """The CLI's `graph --format svg|png`: the picture to a file (written whole or not at all) or to
    stdout; an exit code (2 with a message when `dot` fails or PNG bytes would hit a terminal).
    Without `dot`, a note on stderr says the picture is graphflow's simpler one, and how to get
    Graphviz's."""
    import sys

    if output is None and fmt == "png" and sys.stdout.isatty():
        print("graphflow graph: error: PNG is binary; write it to a file with -o FILE", file=sys.stderr)
        return 2
    if not has_dot():
        print(f"graphflow graph: Graphviz's `dot` is not installed: drawn by graphflow's simpler layout "
              f"(for Graphviz's: {INSTALL_GRAPHVIZ})", file=sys.stderr)
    try:
        data = picture(doc, fmt)
    except RenderError as e:
        print(f"graphflow graph: error: {e}", file=sys.stderr)
        return 2
    if output:
        from graphflow.atomic import write_atomic

        write_atomic(output, data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
