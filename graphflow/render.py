"""Text pictures of a workflow (Mermaid for Markdown viewers, Graphviz DOT for `dot -Tsvg`),
with loops drawn as boxes around their bodies."""

from __future__ import annotations

from graphflow.document import Document, Link, LinkList, LoopDef, NodeDef


def _edges(doc: Document) -> list[tuple[str, str, str]]:
    """(source, target, label) for every link, loop-internal ones included."""
    out = []

    def add(ref, target: str, label: str) -> None:
        if isinstance(ref, LinkList):
            for link in ref.links:
                add(link, target, label)
        elif isinstance(ref, Link):
            out.append((ref.node, target, f"{ref.port}→{label}"))

    for nid, n in doc.nodes.items():
        if isinstance(n, NodeDef):
            for k, r in n.inputs.items():
                add(r, nid, k)
            continue
        add(n.over, nid, "over")
        for k, r in n.carry.items():
            add(r, nid, k)
        for b in n.body.values():
            for k, r in b.inputs.items():
                add(r, b.id, k)
        for k, r in n.next.items():
            add(r, nid, f"next {k}")
        for k, r in n.collect.items():
            add(r, nid, f"collect {k}")
    return out


def _label(n: NodeDef | LoopDef) -> str:
    return f"{n.id}: {n.type}" + (f" (every {n.when.every})" if isinstance(n, NodeDef) and n.when else "")


def mermaid(doc: Document) -> str:
    lines = ["flowchart LR"]
    for nid, n in doc.nodes.items():
        if isinstance(n, LoopDef):
            lines.append(f'  subgraph {nid}_body["loop {nid}"]')
            lines.append(f'    {nid}(["{nid}: Loop"])')
            for b in n.body.values():
                lines.append(f'    {b.id}["{_label(b)}"]')
            lines.append("  end")
        else:
            lines.append(f'  {nid}["{_label(n)}"]')
    for s, t, label in _edges(doc):
        lines.append(f"  {s} -->|{label}| {t}")
    for name, link in doc.outputs.items():
        lines.append(f'  out_{name}[/"output {name}"/]')
        lines.append(f"  {link.node} --> out_{name}")
    return "\n".join(lines) + "\n"


def dot(doc: Document) -> str:
    lines = ["digraph workflow {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
    for nid, n in doc.nodes.items():
        if isinstance(n, LoopDef):
            lines.append(f'  subgraph "cluster_{nid}" {{ label="loop {nid}"; style=rounded;')
            lines.append(f'    "{nid}" [shape=ellipse, label="{nid}: Loop"];')
            for b in n.body.values():
                lines.append(f'    "{b.id}" [label="{_label(b)}"];')
            lines.append("  }")
        else:
            lines.append(f'  "{nid}" [label="{_label(n)}"];')
    for s, t, label in _edges(doc):
        lines.append(f'  "{s}" -> "{t}" [label="{label}"];')
    for name, link in doc.outputs.items():
        lines.append(f'  "out:{name}" [shape=note, label="output {name}"];')
        lines.append(f'  "{link.node}" -> "out:{name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
