"""`graphflow nodes`, `describe`, `schema` and `graph`: what the node types and a workflow are, without
running anything."""

from __future__ import annotations

import argparse
import textwrap
import sys

import orjson

from graphflow import options
from graphflow.cli import common
from graphflow.problems import ValidationFailed


def cmd_nodes(args: argparse.Namespace) -> int:
    reg = common.registry(args)
    if args.markdown:
        print(nodes_markdown(reg), end="")
        return options.EXIT_OK
    if args.json:
        data = [{"type": n.type_name, "category": n.category, "version": n.version, "doc": n.summary()} for n in reg]
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return options.EXIT_OK
    current = None
    for n in reg:
        if n.category != current:
            current = n.category
            print(f"\n{current}:" if current else "")
        print(f"  {n.type_name:<22} {n.summary()}")
    return options.EXIT_OK


def nodes_markdown(reg) -> str:
    """The README's node table, generated so that it cannot drift from the code."""
    lines = ["| node | category | inputs | outputs | what it does |", "|---|---|---|---|---|"]
    for n in reg:
        ins = ", ".join(f"`{p.name}`" + ("" if p.required else "?") for p in n.inputs.values())
        outs = ", ".join(f"`{p.name}`" for p in n.outputs.values())
        lines.append(f"| `{n.type_name}` | {n.category} | {ins} | {outs} | {n.summary()} |")
    return "\n".join(lines) + "\n"


def port_line(p, inputs: bool) -> str:
    """One port as `describe` prints it, from the same description `/api/nodes` serves."""
    from graphflow.node.describe import BOUNDS, describe_port

    d = describe_port(p, inputs)
    bits = [f"{d['name']}: {d['kind']}"]
    if inputs:
        bits.append("required" if d["required"] else f"default {d['default']!r}")
        if "choices" in d:
            bits.append("one of " + ", ".join(repr(c) for c in d["choices"]))
        bits += [f"{sym} {d[attr]}" for attr, sym in BOUNDS.items() if attr in d]
        if "limit" in d:
            bits.append(f"ceiling {d['limit']} (--limit)")
        if d["link_only"]:
            bits.append("link only")
    head = "  " + ", ".join(bits)
    return head + (f"\n      {d['description']}" if d["description"] else "")


#: what each scope is, in the words of the README's Loops and Scopes sections
SCOPES = {
    "Loop": ("runs its body once per element of 'over', in order, and passes values from one element to the next: each "
             "'carry' value starts as given and takes its 'next' value after each element (the denoising loop is one)",
             "workflows/hello.json (a Loop adding numbers), workflows/txt2img.json (the denoising loop)"),
    "Map": ("runs its body once per element of 'over', the elements independent of each other (no 'carry', no 'next'), and "
            "gathers one value per element with 'collect', in element order",
            "workflows/map_seeds.json (a Map over seeds, a denoising Loop inside it)"),
}


def describe_scope(name: str) -> str:
    """`describe Loop` and `describe Map`: a scope is no registered node type but a part of the
    format, so what it is and the keys it takes come from the format's own model, which the
    reader checks documents against."""
    from graphflow.document.format import ScopeModel

    what, examples = SCOPES[name]
    lines = [f"{name} (a scope: written among a workflow's nodes, but a body of nodes rather than a node type)",
             textwrap.indent(textwrap.fill(f"A {name} {what}. Scopes nest to any depth: a body may hold a Loop or a Map, whose "
                                           f"nodes read every enclosing scope's values.", 96), "  "),
             "keys:"]
    for key, f in ScopeModel.model_fields.items():
        if key in ("type", "title") or (name == "Map" and key in ("carry", "next")):
            continue
        need = "required" if f.is_required() else ("default 'item'" if key == "item" else "optional")
        lines.append(f"  {key}: {need}\n      {(f.description or '').removeprefix('Loop only: ')}")
    inside = "<id>.item (the element, under the name 'item' gives), <id>.index, <id>.count"
    lines.append(f"inside the body, as {{\"from\": ...}}: {inside}" + (", each carried value <id>.<name>" if name == "Loop" else ""))
    lines.append("after it: " + ("each carried value's last value and " if name == "Loop" else "")
                 + "each collected list, as {\"from\": \"<id>.<name>\"}")
    lines.append(f"examples: {examples}; the README's Loops and Scopes sections")
    return "\n".join(lines)


def type_suggestion(name: str, names: list[str]) -> str:
    """The node types a mistyped name may have meant: the same name in another case, else the
    nearest spellings (EncodePromt: EncodePrompt), else those containing it."""
    import difflib

    low = name.lower()
    near = [t for t in names if t.lower() == low]
    if not near and len(name) <= 100:
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.8) or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    near = near or [t for t in names if low in t.lower()][:5]
    return f" (did you mean {', '.join(near)}?)" if near else " (`graphflow nodes` lists them)"


def cmd_describe(args: argparse.Namespace) -> int:
    from graphflow.document.format import SCOPE_TYPES

    if args.node in SCOPE_TYPES:
        print(describe_scope(args.node))
        return options.EXIT_OK
    reg = common.registry(args)
    n = reg.get(args.node)
    if n is None:
        hint = type_suggestion(args.node, [*reg.names(), *SCOPE_TYPES])
        print(f"unknown node type '{args.node}'{hint}", file=sys.stderr)
        return options.EXIT_INVALID
    flags = [] if n.pure else ["side effects: always runs, never cached"]
    print(f"{n.type_name} (version {n.version}, category {n.category}{', ' + flags[0] if flags else ''})")
    print(textwrap.indent(n.doc(), "  "))
    print("inputs:")
    for p in n.inputs.values():
        print(port_line(p, True))
    print("outputs:")
    for p in n.outputs.values():
        print(port_line(p, False))
    return options.EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from graphflow.node.schema import workflow_schema

    data = orjson.dumps(workflow_schema(common.registry(args)), option=orjson.OPT_INDENT_2)
    if args.output:
        from graphflow.atomic import write_atomic

        write_atomic(args.output, data + b"\n")
    else:
        sys.stdout.write(data.decode() + "\n")
    return options.EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from graphflow.document.reader import load_json_file, read_document
    from graphflow.node.shipped import workflow_file
    from graphflow.views.diagram import dot, mermaid

    doc, problems = read_document(load_json_file(workflow_file(args.workflow))[0], args.workflow)
    if doc is None:
        raise ValidationFailed(problems)
    if args.format in ("svg", "png"):
        from graphflow.views.diagram import write_picture

        return write_picture(doc, args.format, args.output)
    text = mermaid(doc) if args.format == "mermaid" else dot(doc)
    if args.output:
        from graphflow.atomic import write_atomic

        write_atomic(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return options.EXIT_OK


def add_parsers(sub) -> None:
    n = sub.add_parser("nodes", help="list the node types, grouped by category")
    n.add_argument("--json", action="store_true", help="machine-readable list")
    n.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    common.plugin_flags(n)
    n.set_defaults(func=cmd_nodes)

    d = sub.add_parser("describe", help="a node type's inputs, outputs, types, defaults and docs")
    d.add_argument("node")
    common.plugin_flags(d)
    d.set_defaults(func=cmd_describe)

    s = sub.add_parser("schema", help="JSON Schema of the workflow format, for editors")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    common.plugin_flags(s)
    s.set_defaults(func=cmd_schema)

    g = sub.add_parser("graph", help="the workflow as Mermaid or Graphviz DOT text, or a picture (SVG, PNG)")
    g.add_argument("workflow", help=common.WORKFLOW_HELP)
    g.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid",
                   help="svg and png are drawn by Graphviz's `dot` program, or by graphflow's simpler layout where it is missing")
    g.add_argument("-o", "--output", metavar="FILE", help="write to this file instead of stdout")
    common.plugin_flags(g)
    g.set_defaults(func=cmd_graph, load_plugins=True)
