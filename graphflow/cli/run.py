"""`graphflow run`: validate, run with progress bars, print the outputs; Ctrl-C and SIGTERM stop
it at the next step."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from graphflow import options
from graphflow.cli import common
from graphflow.problems import ValidationFailed


def cmd_run(args: argparse.Namespace) -> int:
    from graphflow.views.text import PreviewFile, Progress, describe_value, profile_table

    try:
        wf, limits = common.load(args)
    except ValidationFailed as e:
        common.print_problems(e, False, args.workflow)
        return options.EXIT_INVALID
    try:
        chosen = common.threads(args)
        ex = common.executor(args, limits)
    except ValueError as e:
        print(f"graphflow run: error: {e}", file=sys.stderr)
        return options.EXIT_INVALID
    progress = Progress(not args.quiet and sys.stderr.isatty() or args.progress)
    ex.subscribe(progress, on_run_thread=True)  # bars must be closed before the results print
    if args.preview_every:
        ex.subscribe(PreviewFile(os.path.join(args.out, common.PREVIEW_FILE)))

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
        print(chosen.describe(), file=sys.stderr)
        from graphflow.engine.fingerprint import hash_stats

        print(hash_stats.describe(), file=sys.stderr)
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
        return options.EXIT_TERMINATED if signal.SIGTERM in stopped_by else options.EXIT_CANCELLED
    return options.EXIT_OK if result.ok else options.EXIT_FAILED


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="validate, then run a workflow", description="Validate, then run a workflow.")
    r.add_argument("workflow", help=common.WORKFLOW_HELP)
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a workflow parameter; repeatable")
    r.add_argument("--out", default="out", help="folder for files the workflow writes (default: out)")
    common.execution_flags(r)
    common.preview_flag(r)
    r.add_argument("--profile", action="store_true", help="print a per-node table of time and cache hits")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
    common.plugin_flags(r)
    common.limit_flag(r)
    r.set_defaults(func=cmd_run)
