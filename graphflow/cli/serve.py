"""`graphflow serve`: reads the server's flags, builds its settings, registry and the recipe of its
worker process's executor (through ``graphflow.options``, as `run` does) and hands them to
``graphflow.server.main.serve``. A server without a token listens on this machine only: asked for
another address, it says so and binds to loopback."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from graphflow import options
from graphflow.cli import common
from graphflow.problems import ValidationFailed
from graphflow.sizes import DEFAULT_BODY_BYTES, parse_size, short_size


def cmd_serve(args: argparse.Namespace) -> int:
    from graphflow.server.main import is_loopback, serve
    from graphflow.server.settings import LOOPBACK_NAMES, Settings
    from graphflow.server.worker_process import WorkerRecipe
    from graphflow.server.workflow_catalog import shipped_folder

    try:
        limits = common.limits(args)
        registry = common.registry(args)
    except ValidationFailed as e:
        common.print_problems(e, False, "graphflow serve")
        return options.EXIT_INVALID
    if args.token is not None and not args.token.strip():
        source = "--token" if args.token_flag else "GRAPHFLOW_TOKEN"
        print(f"graphflow serve: error: {source} is empty (an unset variable?): give a token, or leave it out to serve "
              "this machine only without one", file=sys.stderr)
        return options.EXIT_INVALID
    try:
        max_body = parse_size(args.max_body)
        worker_memory = parse_size(args.worker_memory) if args.worker_memory else None
        run_options = common.executor_options(args)
        common.threads(args)  # the worker process it spawns inherits the choice through its environment
        for name in ("run_timeout", "cancel_grace"):
            value = getattr(args, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} takes a positive number of seconds, got {value:g}")
    except ValueError as e:
        print(f"graphflow serve: error: {e}", file=sys.stderr)
        return options.EXIT_INVALID
    missing = [d for d in args.allow_read or [] if not Path(d).is_dir()]
    if missing:
        print(f"graphflow serve: error: --allow-read {missing[0]}: no such folder", file=sys.stderr)
        return options.EXIT_INVALID
    uploads = Path(args.out) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    roots = options.read_roots(registry, [uploads, *(args.allow_read or [])])
    # the worker process builds these itself (it is spawned): picklable recipes, not the objects
    recipe = WorkerRecipe(make_executor=functools.partial(options.build_executor, args.out, limits, run_options, roots),
                          make_registry=functools.partial(options.build_registry, tuple(args.plugin or ())))
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
    host = args.host
    if not is_loopback(host) and not args.token:
        print(f"graphflow serve: no --token, so listening on 127.0.0.1 only, not {host}: give a token "
              "(GRAPHFLOW_TOKEN=...) to serve other machines", file=sys.stderr, flush=True)
        host = "127.0.0.1"
    out = Path(args.out)
    settings = Settings(out=out, db=Path(args.db) if args.db else out / "graphflow.db", token=args.token,
                        max_queue=args.max_queue, max_body=max_body, cors_origins=args.allow_origin or [],
                        allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None,
                        workflows=Path(args.workflows) if args.workflows else shipped_folder(),
                        keep_runs=keep_runs, keep_days=args.keep_days, run_timeout=args.run_timeout,
                        cancel_grace=args.cancel_grace, worker_memory=worker_memory, read_roots=roots)
    return serve(settings, recipe, registry, limits, host, args.port, args.log_level)


class _TokenFlag(argparse.Action):
    """Remembers that --token was given, to say which one is empty: the flag or the variable."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.token = values
        namespace.token_flag = True


def add_parser(sub) -> None:
    sp = sub.add_parser("serve", help="an HTTP server: a queue other tools drive, live progress, history, a web page",
                        description="Serve the HTTP API and the web page (see the README's Server section).")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    sp.add_argument("--port", type=int, default=8188, help="port (default: 8188; 0 picks a free one, printed on the first line)")
    sp.add_argument("--token", default=os.environ.get("GRAPHFLOW_TOKEN"), action=_TokenFlag,
                    help="require 'Authorization: Bearer TOKEN' on every API call and file (default: $GRAPHFLOW_TOKEN, "
                         "which keeps it out of the process list; none if unset, and then only this machine is served)")
    sp.add_argument("--out", default="out", help="folder for the runs' files, OUT/runs/<id>/ (default: out)")
    sp.add_argument("--db", help="the SQLite file of the queue and history (default: OUT/graphflow.db)")
    sp.add_argument("--max-queue", type=int, default=1000, help="runs that may wait; more are answered 429 (default: 1000)")
    sp.add_argument("--max-body", default=short_size(DEFAULT_BODY_BYTES),
                    help=f"largest request body; larger ones are answered 413 (default: {short_size(DEFAULT_BODY_BYTES)})")
    sp.add_argument("--allow-origin", "--cors-origin", action="append", metavar="ORIGIN", dest="allow_origin",
                    help="let web pages of this origin (e.g. http://localhost:5173) call the API, follow events and change "
                         "state; repeatable (default: only the server's own page)")
    sp.add_argument("--workflows", help="folder of the workflows offered by name (default: the shipped workflows/)")
    sp.add_argument("--keep-runs", default="10000", metavar="N",
                    help="ended runs kept in the history, with their files; older ones are deleted (default: 10000; 'all' keeps every one)")
    sp.add_argument("--keep-days", type=float, metavar="DAYS", help="also delete ended runs older than this (default: no age limit)")
    sp.add_argument("--allow-read", action="append", metavar="DIR",
                    help="a folder whose files workflows may read (pictures, masks, latents), besides OUT/uploads/ and the "
                         "models folders; repeatable (default: none)")
    sp.add_argument("--run-timeout", type=float, metavar="SECONDS",
                    help="stop and fail a run that takes longer than this (default: no limit)")
    sp.add_argument("--cancel-grace", type=float, default=10.0, metavar="SECONDS",
                    help="how long a run has to stop once cancelled or timed out before its worker process is killed "
                         "and restarted (default: 10)")
    sp.add_argument("--worker-memory", metavar="SIZE",
                    help="kill the worker process (failing its run) when it holds more than this in memory, e.g. 12G "
                         "(default: no limit)")
    sp.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default: warning; debug also logs every request)")
    common.execution_flags(sp)
    common.preview_flag(sp, 1, "send it to the run's event stream (the page shows it)")
    common.plugin_flags(sp)
    common.limit_flag(sp)
    sp.set_defaults(func=cmd_serve, token_flag=False)
