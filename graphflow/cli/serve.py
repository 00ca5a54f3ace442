"""`graphflow serve`: reads the server's flags, builds its settings, registry and executor (through
``graphflow.options``, as `run` does) and hands them to ``graphflow.server.main.serve``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from graphflow import options
from graphflow.cli import common
from graphflow.problems import ValidationFailed
from graphflow.sizes import DEFAULT_BODY_BYTES, parse_size, short_size


def cmd_serve(args: argparse.Namespace) -> int:
    from graphflow.server.settings import LOOPBACK_NAMES, Settings
    from graphflow.server.workflow_catalog import shipped_folder
    from graphflow.server.main import is_loopback, serve

    try:
        limits = common.limits(args)
        registry = common.registry(args)
    except ValidationFailed as e:
        common.print_problems(e, False, "graphflow serve")
        return options.EXIT_INVALID
    try:
        max_body = parse_size(args.max_body)
        executor = common.executor(args, limits)
    except ValueError as e:
        print(f"graphflow serve: error: {e}", file=sys.stderr)
        return options.EXIT_INVALID
    if args.max_queue < 1:
        print("graphflow serve: error: --max-queue must be at least 1", file=sys.stderr)
        return options.EXIT_INVALID
    try:
        keep_runs = None if args.keep_runs == "all" else int(args.keep_runs)
        if keep_runs is not None and keep_runs < 1 or args.keep_days is not None and not args.keep_days > 0:
            raise ValueError
    except ValueError:
        print("graphflow serve: error: --keep-runs takes a number of runs (at least 1) or 'all'; --keep-days a positive number",
              file=sys.stderr)
        return options.EXIT_INVALID
    out = Path(args.out)
    settings = Settings(out=out, db=Path(args.db) if args.db else out / "graphflow.db", token=args.token or None,
                        max_queue=args.max_queue, max_body=max_body, cors_origins=args.cors_origin or [],
                        allowed_hosts=LOOPBACK_NAMES if is_loopback(args.host) else None,
                        workflows=Path(args.workflows) if args.workflows else shipped_folder(),
                        keep_runs=keep_runs, keep_days=args.keep_days)
    return serve(settings, executor, registry, args.host, args.port, args.log_level)


def add_parser(sub) -> None:
    sp = sub.add_parser("serve", help="an HTTP server: a queue other tools drive, live progress, history, a web page",
                        description="Serve the HTTP API and the web page (see the README's Server section).")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    sp.add_argument("--port", type=int, default=8188, help="port (default: 8188; 0 picks a free one, printed on the first line)")
    sp.add_argument("--token", default=os.environ.get("GRAPHFLOW_TOKEN"),
                    help="require 'Authorization: Bearer TOKEN' on every API call and file (default: $GRAPHFLOW_TOKEN, "
                         "which keeps it out of the process list; none if unset)")
    sp.add_argument("--out", default="out", help="folder for the runs' files, OUT/runs/<id>/ (default: out)")
    sp.add_argument("--db", help="the SQLite file of the queue and history (default: OUT/graphflow.db)")
    sp.add_argument("--max-queue", type=int, default=1000, help="runs that may wait; more are answered 429 (default: 1000)")
    sp.add_argument("--max-body", default=short_size(DEFAULT_BODY_BYTES),
                    help=f"largest request body; larger ones are answered 413 (default: {short_size(DEFAULT_BODY_BYTES)})")
    sp.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                    help="allow cross-origin calls from this origin (e.g. http://localhost:5173); repeatable (default: CORS off)")
    sp.add_argument("--workflows", help="folder of the workflows offered by name (default: the shipped workflows/)")
    sp.add_argument("--keep-runs", default="10000", metavar="N",
                    help="ended runs kept in the history, with their files; older ones are deleted (default: 10000; 'all' keeps every one)")
    sp.add_argument("--keep-days", type=float, metavar="DAYS", help="also delete ended runs older than this (default: no age limit)")
    sp.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default: warning; debug also logs every request)")
    common.execution_flags(sp)
    common.plugin_flags(sp)
    common.limit_flag(sp)
    sp.set_defaults(func=cmd_serve)
