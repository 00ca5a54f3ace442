"""The `graphflow` command. Exit codes: 0 success, 1 a node failed while running, 2 the workflow
or the command line is invalid (nothing ran), 130 cancelled with Ctrl-C, 143 stopped by SIGTERM.

Heavy imports (torch, diffusers) happen only inside node code, so `validate`, `nodes`,
`describe`, `schema` and `graph` answer quickly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from typing import Any

import orjson

from graphflow.problems import Problem, ValidationFailed

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def default_cache_dir() -> str:
    env = os.environ.get("GRAPHFLOW_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphflow")


def _registry(args: argparse.Namespace):
    from graphflow.node.registry import RegistryError, default_registry

    try:
        return default_registry(args.plugin or [])
    except RegistryError as e:
        raise ValidationFailed([Problem("bad_plugin", str(e))]) from None


def _parse_sets(pairs: list[str], declared: dict[str, Any]) -> dict[str, Any]:
    """``--set k=v``: v is read as JSON (7, 7.5, true, [1,2]) unless the parameter is declared a
    string, and falls back to the plain text (``--set prompt=a red circle``)."""
    out, problems = {}, []
    for pair in pairs:
        if "=" not in pair:
            problems.append(Problem("bad_set", f"--set takes name=value, got {pair!r}"))
            continue
        k, v = pair.split("=", 1)
        p = declared.get(k)
        if p is not None and p.type == "string":
            out[k] = v
            continue
        try:
            out[k] = orjson.loads(v)
        except orjson.JSONDecodeError:
            out[k] = v
            continue
        from graphflow.document.jsontext import silent_losses

        problems += [Problem("bad_set", f"--set {k}: {p.message}") for p in silent_losses(v)]  # {"a":1,"a":2}, 2**70
    if problems:
        raise ValidationFailed(problems)
    return out


def _limits(args: argparse.Namespace):
    """``--limit NAME=N`` on top of the default resource ceilings."""
    from graphflow.node.limits import Limits

    values, problems = {}, []
    for pair in getattr(args, "limit", None) or []:
        name, _, n = pair.partition("=")
        if not n.isdigit():
            problems.append(Problem("bad_limit", f"--limit takes NAME=N with N a whole number, got {pair!r}"))
            continue
        values[name] = int(n)
    try:
        limits = Limits().with_values(**values)
    except ValueError as e:
        problems.append(Problem("bad_limit", str(e)))
    if problems:
        raise ValidationFailed(problems)
    return limits


def _load(args: argparse.Namespace):
    from graphflow.graph.workflow import Workflow

    reg = _registry(args)
    limits = _limits(args)
    wf = Workflow.load(args.workflow, reg, limits)
    params = _parse_sets(getattr(args, "set", None) or [], wf.doc.params)
    wf = wf.with_params(**params)
    wf.bind(limits=limits)
    return wf, limits


def _print_problems(e: ValidationFailed, as_json: bool, source: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps({"ok": False, "file": source, "problems": [p.to_dict() for p in e.problems]}).decode() + "\n")
    else:
        sys.stderr.write(f"{source}: {e}\n")


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        wf, _ = _load(args)
    except ValidationFailed as e:
        _print_problems(e, args.json, args.workflow)
        return EXIT_INVALID
    from graphflow.node.file_notes import file_notes

    notes = file_notes(wf.bind(limits=_limits(args)))
    if args.json:
        extra = {"files": [n.to_dict() for n in notes]} if notes else {}
        sys.stdout.write(orjson.dumps({"ok": True, "file": args.workflow, "problems": [], **extra}).decode() + "\n")
    else:
        n = len(wf.doc.all_nodes())
        print(f"{args.workflow}: ok ({n} nodes, {len(wf.doc.params)} parameters, outputs: {', '.join(wf.doc.outputs)})")
        for note in notes:
            print(f"  node '{note.node}', {note.field} = {note.value!r}: {note.text}")
    return EXIT_OK


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The executor settings `run` and `sweep` take from their shared flags (see ``execution_flags``);
    a Ray sweep sends the same settings to each of its workers."""
    from graphflow.cache.disk import DEFAULT_MAX_BYTES, parse_size

    try:
        max_size = DEFAULT_MAX_BYTES if args.cache_max_size is None else parse_size(args.cache_max_size)
    except ValueError as e:
        raise ValueError(f"argument --cache-max-size: {e}") from None
    cache_dir = None if args.no_cache else os.path.abspath(args.cache_dir or default_cache_dir())
    return {"device": args.device, "dtype": args.dtype, "check_finite": not args.no_check_finite,
            "cache_dir": cache_dir, "cache_max_size": max_size}


def _executor(args: argparse.Namespace, limits):
    from graphflow.engine.executor import Executor

    return Executor(out_dir=args.out, limits=limits, **_executor_options(args))


def cmd_run(args: argparse.Namespace) -> int:
    from graphflow.views.text import Progress, describe_value, profile_table

    try:
        wf, limits = _load(args)
    except ValidationFailed as e:
        _print_problems(e, False, args.workflow)
        return EXIT_INVALID
    try:
        ex = _executor(args, limits)
    except ValueError as e:
        print(f"graphflow run: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    progress = Progress(not args.quiet and sys.stderr.isatty() or args.progress)
    ex.subscribe(progress, on_run_thread=True)  # bars must be closed before the results print

    stopped_by: list[int] = []

    def on_signal(signum, frame):  # Ctrl-C or SIGTERM: stop cleanly at the next node or loop step
        stopped_by.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        sys.stderr.write(f"\n{name}: cancelling after the current step; finished steps stay cached, nothing is half-written"
                         + (" (Ctrl-C again to abort)\n" if signum == signal.SIGINT else "\n"))
        ex.cancel()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        handle = ex.submit(wf)
        result = handle.result()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if args.profile:
        print(profile_table(result), file=sys.stderr)
    for name, value in result.outputs.items():
        print(f"{name}: {describe_value(value)}")
    for err in result.errors:
        print(f"error: {err}", file=sys.stderr)
        if os.environ.get("GRAPHFLOW_DEBUG"):
            print(err.traceback, file=sys.stderr)
    for name, why in result.missing.items():
        print(f"output '{name}' not produced: {why}", file=sys.stderr)
    for msg in result.cache_errors:
        print(f"cache: {msg}", file=sys.stderr)
    if result.cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_TERMINATED if signal.SIGTERM in stopped_by else EXIT_CANCELLED
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a workflow over a grid (and zipped lists) of parameter values; see graphflow/sweep/items.py
    (and graphflow/sweep/ray_runner.py for --ray)."""
    from graphflow.sweep.ray_runner import RayUnavailable

    try:
        wf, limits = _load(args)
        axes: dict[str, dict[str, Any]] = {"grid": {}, "zip": {}}
        problems = []
        for flag, found in axes.items():
            for pair in getattr(args, flag) or []:
                k, eq, v = pair.partition("=")
                try:
                    value = orjson.loads(v) if eq and k else None
                except orjson.JSONDecodeError:
                    value = None
                if not isinstance(value, list):
                    problems.append(Problem("bad_set", f"--{flag} takes NAME=JSON_LIST (e.g. 'seed=[0,1,2]'), got {pair!r}"))
                elif k in found:
                    problems.append(Problem("bad_set", f"--{flag} {k} given twice"))
                else:
                    found[k] = value
        if not (args.grid or args.zip):
            problems.append(Problem("bad_set", "sweep needs at least one --grid or --zip"))
        if problems:
            raise ValidationFailed(problems)
        from graphflow.sweep.items import Sweep

        try:
            if args.ray is None:
                ex, ray_options = _executor(args, limits), None
            else:
                ex = None
                ray_options = {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                               "gpus_per_worker": args.gpus_per_worker, "executor_options": _executor_options(args),
                               "plugins": args.plugin or []}
        except ValueError as e:
            print(f"graphflow sweep: error: {e}", file=sys.stderr)
            return EXIT_INVALID
        sw = Sweep(wf, axes["grid"], axes["zip"], args.out, ex, args.resume, limits, args.ray, ray_options)
    except ValidationFailed as e:
        _print_problems(e, False, args.workflow)
        return EXIT_INVALID
    except RayUnavailable as e:  # --ray without Ray installed
        print(f"graphflow sweep: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    from tqdm import tqdm

    bar = tqdm(total=len(sw), desc="sweep", unit="item", file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())
    stopped: list[int] = []

    def on_signal(signum, frame):
        stopped.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        sys.stderr.write(f"\n{name}: stopping after the current step; the index keeps every finished item (--resume goes on)\n")
        sw.cancel()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = cancelled = 0
    try:
        for r in sw:
            if r.status == "cancelled":
                cancelled += 1
                continue
            if r.status == "failed":
                failed += 1
                err = r.error or {}
                tqdm.write(f"item {r.item} failed: node '{err.get('node')}' ({err.get('type')}): {err.get('message')}", file=sys.stderr)
            bar.update(1)
            bar.set_postfix_str(f"failed {failed}")
    except RayUnavailable as e:  # the cluster could not be reached
        print(f"graphflow sweep: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
    done = sum(1 for r in sw.results.values() if r.status in ("ok", "skipped"))
    if not args.quiet:
        print(f"{done} of {len(sw)} items ok, {failed} failed; index: {os.path.join(args.out, 'index.jsonl')}", file=sys.stderr)
    if stopped or cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_TERMINATED if signal.SIGTERM in stopped else EXIT_CANCELLED
    return EXIT_FAILED if failed else EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.markdown:
        print(nodes_markdown(reg), end="")
        return EXIT_OK
    if args.json:
        data = [{"type": n.type_name, "category": n.category, "version": n.version, "doc": n.summary()} for n in reg]
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    current = None
    for n in reg:
        if n.category != current:
            current = n.category
            print(f"\n{current}:" if current else "")
        print(f"  {n.type_name:<22} {n.summary()}")
    return EXIT_OK


def nodes_markdown(reg) -> str:
    """The README's node table, generated so that it cannot drift from the code."""
    lines = ["| node | category | inputs | outputs | what it does |", "|---|---|---|---|---|"]
    for n in reg:
        ins = ", ".join(f"`{p.name}`" + ("" if p.required else "?") for p in n.inputs.values())
        outs = ", ".join(f"`{p.name}`" for p in n.outputs.values())
        lines.append(f"| `{n.type_name}` | {n.category} | {ins} | {outs} | {n.summary()} |")
    return "\n".join(lines) + "\n"


def _port_line(p, inputs: bool) -> str:
    bits = [f"{p.name}: {p.kind}"]
    if inputs:
        if p.required:
            bits.append("required")
        else:
            bits.append(f"default {p.default!r}")
        if p.choices:
            bits.append("one of " + ", ".join(repr(c) for c in p.choices))
        for m in p.metadata:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(m, attr, None) is not None:
                    bits.append(f"{sym} {getattr(m, attr)}")
        if not p.kind.literal:
            bits.append("link only")
    head = "  " + ", ".join(bits)
    return head + (f"\n      {p.description}" if p.description else "")


def cmd_describe(args: argparse.Namespace) -> int:
    reg = _registry(args)
    n = reg.get(args.node)
    if n is None:
        near = [t for t in reg.names() if args.node.lower() in t.lower()]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        print(f"unknown node type '{args.node}'{hint}", file=sys.stderr)
        return EXIT_INVALID
    flags = [] if n.pure else ["side effects: always runs, never cached"]
    print(f"{n.type_name} (version {n.version}, category {n.category}{', ' + flags[0] if flags else ''})")
    print(textwrap.indent(n.doc(), "  "))
    print("inputs:")
    for p in n.inputs.values():
        print(_port_line(p, True))
    print("outputs:")
    for p in n.outputs.values():
        print(_port_line(p, False))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from graphflow.node.schema import workflow_schema

    data = orjson.dumps(workflow_schema(_registry(args)), option=orjson.OPT_INDENT_2)
    if args.output:
        from graphflow.atomic import write_atomic

        write_atomic(args.output, data + b"\n")
    else:
        sys.stdout.write(data.decode() + "\n")
    return EXIT_OK


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
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    from graphflow.cache.disk import DEFAULT_MAX_BYTES, DiskCache, format_size, parse_size

    disk = DiskCache(args.cache_dir or default_cache_dir(), max_bytes=None)
    if args.max_size is not None and not args.prune:
        print("graphflow cache: error: --max-size goes with --prune", file=sys.stderr)
        return EXIT_INVALID
    if args.clear:
        print(f"{disk.root}: removed {disk.clear()} entries")
        return EXIT_OK
    if args.prune:
        try:
            limit = DEFAULT_MAX_BYTES if args.max_size is None else parse_size(args.max_size)
        except ValueError as e:
            print(f"graphflow cache: error: argument --max-size: {e}", file=sys.stderr)
            return EXIT_INVALID
        r = disk.prune(limit)
        tmp = f" and {r.temporaries} stray temporary file{'s' * (r.temporaries != 1)}" if r.temporaries else ""
        print(f"{disk.root}: removed {r.removed} least recently used entries ({format_size(r.freed)}){tmp}; "
              f"{r.entries} entries, {r.size / 2**20:.1f} MiB left (limit {format_size(limit)})")
        return EXIT_OK
    n, size = disk.usage()
    print(f"{disk.root}: {n} entries, {size / 2**20:.1f} MiB")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from graphflow.server.main import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphflow", description="Run diffusion workflows written as JSON graphs of typed nodes.")
    p.add_argument("--version", action="version", version="graphflow 0.1.0")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--plugin", action="append", metavar="MODULE", help="extra node module (dotted path or .py file); repeatable")
        models_dir(sp)

    def models_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--models-dir", metavar="DIR", action="append",
                        help="a models folder (checkpoints/, loras/, embeddings/) where workflows' bare file names are "
                             "looked up; repeatable; default $GRAPHFLOW_MODELS")

    def limit(sp: argparse.ArgumentParser) -> None:
        from graphflow.node.limits import Limits

        d = Limits()
        sp.add_argument("--limit", action="append", metavar="NAME=N",
                        help="raise or lower a resource ceiling; repeatable ("
                        + ", ".join(f"{n} {getattr(d, n)}" for n in d.names()) + ")")

    def execution_flags(sp: argparse.ArgumentParser) -> None:
        """What `run` and `sweep` share: where models run, the disk cache, the NaN check."""
        sp.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="where models run (default: cpu)")
        sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="model precision")
        sp.add_argument("--cache-dir", help="on-disk cache folder (default: $GRAPHFLOW_CACHE_DIR or ~/.cache/graphflow)")
        sp.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk cache")
        sp.add_argument("--cache-max-size", metavar="SIZE", help="disk cache limit, least recently used out first (500M; default 4G)")
        sp.add_argument("--no-check-finite", action="store_true", help="do not fail a node whose output holds NaN or Inf")

    r = sub.add_parser("run", help="validate, then run a workflow", description="Validate, then run a workflow.")
    r.add_argument("workflow", help="workflow JSON file")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a workflow parameter; repeatable")
    r.add_argument("--out", default="out", help="folder for files the workflow writes (default: out)")
    execution_flags(r)
    r.add_argument("--profile", action="store_true", help="print a per-node table of time and cache hits")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
    common(r)
    limit(r)
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run a workflow over a grid of parameter values",
                        description="Run a workflow over a grid (cartesian product) and zipped lists of parameter values; "
                                    "files in OUT/item_NNNNN/, one line per item in OUT/index.jsonl, OUT/contact_sheet.png.")
    sw.add_argument("workflow", help="workflow JSON file")
    sw.add_argument("--grid", action="append", metavar="NAME=JSON_LIST", help="an axis of the grid, e.g. 'seed=[0,1,2]'; repeatable")
    sw.add_argument("--zip", action="append", metavar="NAME=JSON_LIST", help="lists of equal length advancing together (one more axis); repeatable")
    sw.add_argument("--set", action="append", metavar="NAME=VALUE", help="a parameter for every item; repeatable")
    sw.add_argument("--out", default="sweep", help="the sweep's folder (default: sweep)")
    sw.add_argument("--resume", action="store_true", help="skip items the index already records as ok")
    sw.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run the items on Ray actors: alone, a Ray started here for the sweep; 'auto' or HOST:PORT joins "
                         "a cluster started with `ray start --head` (needs pip install 'graphflow[ray]')")
    sw.add_argument("--workers", type=int, metavar="N", help="with --ray: actors to start (default: the cluster's CPUs / --cpus-per-worker)")
    sw.add_argument("--cpus-per-worker", type=float, default=1, metavar="N", help="with --ray: CPUs (and torch threads) per actor (default 1)")
    sw.add_argument("--gpus-per-worker", type=float, default=0, metavar="N", help="with --ray: GPUs per actor (default 0)")
    execution_flags(sw)
    sw.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    common(sw)
    limit(sw)
    sw.set_defaults(func=cmd_sweep)

    v = sub.add_parser("validate", help="check a workflow without running it", description="Check a workflow without running anything.")
    v.add_argument("workflow")
    v.add_argument("--set", action="append", metavar="NAME=VALUE", help="check with this parameter value")
    v.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    common(v)
    limit(v)
    v.set_defaults(func=cmd_validate)

    n = sub.add_parser("nodes", help="list the node types, grouped by category")
    n.add_argument("--json", action="store_true", help="machine-readable list")
    n.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    common(n)
    n.set_defaults(func=cmd_nodes)

    d = sub.add_parser("describe", help="a node type's inputs, outputs, types, defaults and docs")
    d.add_argument("node")
    common(d)
    d.set_defaults(func=cmd_describe)

    s = sub.add_parser("schema", help="JSON Schema of the workflow format, for editors")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    common(s)
    s.set_defaults(func=cmd_schema)

    c = sub.add_parser("cache", help="size of the on-disk cache; --prune to shrink it, --clear to empty it",
                       description="Size of the on-disk cache; --prune evicts least-recently-used entries, --clear empties it.")
    c.add_argument("--cache-dir", help="the cache folder (default: $GRAPHFLOW_CACHE_DIR or ~/.cache/graphflow)")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--clear", action="store_true", help="delete every entry")
    what.add_argument("--prune", action="store_true",
                      help="delete least-recently-used entries until the cache holds at most --max-size, and temporary "
                           "files that killed processes left over an hour ago")
    c.add_argument("--max-size", metavar="SIZE", help="the size --prune shrinks the cache to: 500M, 4G or bytes (default: 4G)")
    c.set_defaults(func=cmd_cache)

    from graphflow.server.main import add_arguments as serve_arguments

    sv = sub.add_parser("serve", help="an HTTP server: a queue other tools drive, live progress, history, a web page",
                        description="Serve the HTTP API and the web page (see the README's Server section).")
    serve_arguments(sv)
    execution_flags(sv)
    common(sv)
    limit(sv)
    sv.set_defaults(func=cmd_serve)

    g = sub.add_parser("graph", help="the workflow as Mermaid or Graphviz DOT text, or a picture (SVG, PNG)")
    g.add_argument("workflow")
    g.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid",
                   help="svg and png are drawn by Graphviz's `dot` program")
    g.add_argument("-o", "--output", metavar="FILE", help="write to this file instead of stdout")
    g.set_defaults(func=cmd_graph)

    mo = sub.add_parser("models", help="what the models folders hold: checkpoints, LoRAs, embeddings, with family and size")
    mo.add_argument("--json", action="store_true", help="machine-readable list")
    models_dir(mo)
    mo.set_defaults(func=cmd_models)
    return p


def cmd_models(args: argparse.Namespace) -> int:
    from graphflow_nodes.catalog import cmd_models as run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "models_dir", None):  # read by the node library's file resolvers, in this process and its workers
        os.environ["GRAPHFLOW_MODELS"] = os.pathsep.join(os.path.abspath(d) for d in args.models_dir)
    try:
        return args.func(args)
    except ValidationFailed as e:
        _print_problems(e, getattr(args, "json", False), getattr(args, "workflow", "graphflow"))
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # `graphflow nodes | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # never a raw traceback for a user; GRAPHFLOW_DEBUG=1 shows it
        if os.environ.get("GRAPHFLOW_DEBUG"):
            raise
        print(f"graphflow: internal error: {type(e).__name__}: {e} (set GRAPHFLOW_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
