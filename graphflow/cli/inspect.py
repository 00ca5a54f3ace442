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


def cmd_describe(args: argparse.Namespace) -> int:
    reg = common.registry(args)
    n = reg.get(args.node)
    if n is None:
        near = [t for t in reg.names() if args.node.lower() in t.lower()]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
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
    from graphflow.views.diagram import dot, mermaid

    doc, problems = read_document(load_json_file(args.workflow)[0], args.workflow)
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
    g.add_argument("workflow")
    g.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid",
                   help="svg and png are drawn by Graphviz's `dot` program, or by graphflow's simpler layout where it is missing")
    g.add_argument("-o", "--output", metavar="FILE", help="write to this file instead of stdout")
    g.set_defaults(func=cmd_graph)
