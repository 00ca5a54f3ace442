"""`graphflow serve`: builds the executor and the app from the command line, then runs uvicorn on
a socket it binds itself, so ``--port 0`` works and the first line on stdout is the real address
(tests and scripts read it)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from graphflow.problems import ValidationFailed


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from graphflow.cli import EXIT_INVALID, EXIT_OK, _executor, _limits, _print_problems, _registry
    from graphflow.cache.disk import parse_size
    from graphflow.server.app import LOOPBACK_NAMES, Settings, create_app
    from graphflow.server.catalog import shipped_folder

    try:
        limits = _limits(args)
        registry = _registry(args)
    except ValidationFailed as e:
        _print_problems(e, False, "graphflow serve")
        return EXIT_INVALID
    try:
        max_body = parse_size(args.max_body)
        executor = _executor(args, limits)
    except ValueError as e:
        print(f"graphflow serve: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.max_queue < 1:
        print("graphflow serve: error: --max-queue must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    try:
        keep_runs = None if args.keep_runs == "all" else int(args.keep_runs)
        if keep_runs is not None and keep_runs < 1 or args.keep_days is not None and not args.keep_days > 0:
            raise ValueError
    except ValueError:
        print("graphflow serve: error: --keep-runs takes a number of runs (at least 1) or 'all'; --keep-days a positive number",
              file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.out)
    settings = Settings(out=out, db=Path(args.db) if args.db else out / "graphflow.db", token=args.token or None,
                        max_queue=args.max_queue, max_body=max_body, cors_origins=args.cors_origin or [],
                        allowed_hosts=LOOPBACK_NAMES if is_loopback(args.host) else None,
                        workflows=Path(args.workflows) if args.workflows else shipped_folder(),
                        keep_runs=keep_runs, keep_days=args.keep_days)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # before the address is printed: a client that reads it may connect at once
    except OSError as e:
        print(f"graphflow serve: error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return EXIT_INVALID
    host, port = sock.getsockname()[:2]
    app = create_app(settings, executor, registry)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug", timeout_graceful_shutdown=5)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"graphflow serve: {url}  (queue and history: {settings.db}, files: {out / 'runs'})", flush=True)
    if not is_loopback(host) and not settings.token:
        print("graphflow serve: warning: listening beyond this machine without --token: anyone who reaches it can run workflows",
              file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The flags of `graphflow serve` beyond those it shares with `run` (see cli.build_parser)."""
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    sp.add_argument("--port", type=int, default=8188, help="port (default: 8188; 0 picks a free one, printed on the first line)")
    sp.add_argument("--token", default=os.environ.get("GRAPHFLOW_TOKEN"),
                    help="require 'Authorization: Bearer TOKEN' on every API call and file (default: $GRAPHFLOW_TOKEN, "
                         "which keeps it out of the process list; none if unset)")
    sp.add_argument("--out", default="out", help="folder for the runs' files, OUT/runs/<id>/ (default: out)")
    sp.add_argument("--db", help="the SQLite file of the queue and history (default: OUT/graphflow.db)")
    sp.add_argument("--max-queue", type=int, default=1000, help="runs that may wait; more are answered 429 (default: 1000)")
    sp.add_argument("--max-body", default="16M", help="largest request body; larger ones are answered 413 (default: 16M)")
    sp.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                    help="allow cross-origin calls from this origin (e.g. http://localhost:5173); repeatable (default: CORS off)")
    sp.add_argument("--workflows", help="folder of the workflows offered by name (default: the shipped workflows/)")
    sp.add_argument("--keep-runs", default="10000", metavar="N",
                    help="ended runs kept in the history, with their files; older ones are deleted (default: 10000; 'all' keeps every one)")
    sp.add_argument("--keep-days", type=float, metavar="DAYS", help="also delete ended runs older than this (default: no age limit)")
    sp.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default: warning; debug also logs every request)")
