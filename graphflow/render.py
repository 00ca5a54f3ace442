"""Text pictures of a workflow (Mermaid for Markdown viewers, Graphviz DOT for `dot -Tsvg`),
with scopes (loops and maps, at any depth) drawn as boxes around their bodies."""

from __future__ import annotations

from graphflow.document import Def, Document, NodeDef, ScopeDef, ref_links


def _edges(doc: Document) -> list[tuple[str, str, str]]:
    """(source, target, label) for every link, those inside bodies included."""
    out = []
    for n in doc.all_nodes().values():
        for fld, ref in n.refs():
            section, _, name = fld.partition(".")
            label = name if section in ("inputs", "carry") else fld.replace(".", " ")
            out += [(link.node, n.id, f"{link.port}→{label}") for link in ref_links(ref)]
    return sorted(out)


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


def dot(doc: Document) -> str:
    lines = ["digraph workflow {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]

    def nodes(members: dict[str, Def], indent: str) -> None:
        for nid, n in members.items():
            if isinstance(n, ScopeDef):
                lines.append(f'{indent}subgraph "cluster_{nid}" {{ label="{n.type.lower()} {nid}"; style=rounded;')
                lines.append(f'{indent}  "{nid}" [shape=ellipse, label="{nid}: {n.type}"];')
                nodes(n.body, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(f'{indent}"{nid}" [label="{_label(n)}"];')

    nodes(doc.nodes, "  ")
    for s, t, label in _edges(doc):
        lines.append(f'  "{s}" -> "{t}" [label="{label}"];')
    for name, link in doc.outputs.items():
        lines.append(f'  "out:{name}" [shape=note, label="output {name}"];')
        lines.append(f'  "{link.node}" -> "out:{name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
