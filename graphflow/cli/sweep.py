"""`graphflow sweep`: a workflow over a grid of parameter values, here or on Ray."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import orjson

from graphflow import options
from graphflow.cli import common
from graphflow.problems import Problem, ValidationFailed


def sweep_axes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--grid`` and ``--zip`` as {"grid": {name: values}, "zip": {...}}; every malformed pair at
    once as problems."""
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
    return axes


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a workflow over a grid (and zipped lists) of parameter values; see graphflow/sweep/items.py
    (and graphflow/sweep/ray_runner.py for --ray)."""
    from graphflow.sweep.folder import FolderInUse
    from graphflow.sweep.ray_runner import RayUnavailable

    try:
        wf, limits = common.load(args)
        axes = sweep_axes(args)
        from graphflow.sweep import Sweep, runner
        from graphflow.sweep.folder import choose, claim

        try:  # the folder first: one holding another sweep is refused before Ray or a model starts
            out = choose(wf, args.out, args.name, args.resume)
            if not (args.resume or args.force):
                claim(out)
        except FolderInUse as e:
            print(f"graphflow sweep: error: {e.folder}{os.sep} already holds a sweep ({e.lines} item{'s' * (e.lines != 1)} "
                  "in its index.jsonl): --resume continues it, --force replaces it, or --name/--out another folder",
                  file=sys.stderr)
            return options.EXIT_INVALID
        except ValueError as e:  # no earlier sweep to resume
            print(f"graphflow sweep: error: {e}", file=sys.stderr)
            return options.EXIT_INVALID

        try:
            common.threads(args)  # here: checks --threads; with --ray the actors get it (else their CPUs)
            if args.ray is None:
                ex = options.build_executor(str(out), limits, common.executor_options(args))
                if args.preview_every:
                    from graphflow.views.text import PreviewFile

                    ex.subscribe(PreviewFile(out / common.PREVIEW_FILE))
                items = runner(ex)
            else:
                items = runner(ray=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                               gpus_per_worker=args.gpus_per_worker, executor_options=common.executor_options(args),
                               plugins=args.plugin or [], threads=args.threads)
        except ValueError as e:
            print(f"graphflow sweep: error: {e}", file=sys.stderr)
            return options.EXIT_INVALID
        sw = Sweep(wf, axes["grid"], axes["zip"], out, args.resume, limits, items, force=args.force)
        if args.ray is not None:
            sw.runner.connect()  # now: a cluster that cannot be joined is reported before the folder is made
    except ValidationFailed as e:
        common.print_problems(e, False, args.workflow)
        return options.EXIT_INVALID
    except RayUnavailable as e:  # --ray without Ray installed
        print(f"graphflow sweep: error: {e}", file=sys.stderr)
        return options.EXIT_INVALID
    from tqdm import tqdm

    bar = tqdm(total=len(sw), desc="sweep", unit="item", file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())
    stopped: list[int] = []

    def on_signal(signum, frame):
        stopped.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        sys.stderr.write(f"\n{name}: stopping after the current step; the index keeps every finished item "
                         f"(--resume --out {sw.out_dir} goes on)\n")
        sw.cancel()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    if not args.quiet:
        print(f"sweep of {len(sw)} item{'s' * (len(sw) != 1)} into {sw.out_dir}{os.sep}", file=sys.stderr)
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
    except (RayUnavailable, FolderInUse) as e:  # the cluster could not be joined; another sweep took the folder meanwhile
        print(f"graphflow sweep: error: {e}", file=sys.stderr)
        return options.EXIT_INVALID
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
    done = sum(1 for r in sw.results.values() if r.status in ("ok", "skipped"))
    if not args.quiet:
        print(f"{done} of {len(sw)} items ok, {failed} failed; index: {sw.out_dir / 'index.jsonl'}", file=sys.stderr)
    if stopped or cancelled:
        print("cancelled", file=sys.stderr)
        return options.EXIT_TERMINATED if signal.SIGTERM in stopped else options.EXIT_CANCELLED
    return options.EXIT_FAILED if failed else options.EXIT_OK


def add_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="run a workflow over a grid of parameter values",
                        description="Run a workflow over a grid (cartesian product) and zipped lists of parameter values; "
                                    "files in OUT/item_NNNNN/, one line per item in OUT/index.jsonl, OUT/contact_sheet.png. "
                                    "OUT is sweeps/WORKFLOW-YYYYMMDD-HHMMSS/ unless --name or --out says otherwise; a folder "
                                    "holding another sweep is refused unless --resume or --force.")
    sw.add_argument("workflow", help=common.WORKFLOW_HELP)
    sw.add_argument("--grid", action="append", metavar="NAME=JSON_LIST", help="an axis of the grid, e.g. 'seed=[0,1,2]'; repeatable")
    sw.add_argument("--zip", action="append", metavar="NAME=JSON_LIST", help="lists of equal length advancing together (one more axis); repeatable")
    sw.add_argument("--set", action="append", metavar="NAME=VALUE", help="a parameter for every item; repeatable")
    where = sw.add_mutually_exclusive_group()
    where.add_argument("--name", metavar="NAME",
                       help="the sweep's folder is sweeps/NAME/ (default: sweeps/WORKFLOW-YYYYMMDD-HHMMSS/)")
    where.add_argument("--out", metavar="DIR", help="the sweep's folder, anywhere")
    again = sw.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the sweep in the folder: run only the items its index does not record as ok "
                            "(without --name/--out: the newest sweeps/WORKFLOW-… folder)")
    again.add_argument("--force", action="store_true",
                       help="replace the sweep in the folder: its index, contact sheet and item folders are removed first")
    sw.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run the items on Ray actors: alone, a Ray started here for the sweep; 'auto' or HOST:PORT joins "
                         "a cluster started with `ray start --head` (needs pip install 'graphflow-diffusion[ray]')")
    sw.add_argument("--workers", type=int, metavar="N", help="with --ray: actors to start (default: the cluster's CPUs / --cpus-per-worker)")
    sw.add_argument("--cpus-per-worker", type=float, default=1, metavar="N", help="with --ray: CPUs (and torch threads) per actor (default 1)")
    sw.add_argument("--gpus-per-worker", type=float, default=0, metavar="N", help="with --ray: GPUs per actor (default 0)")
    common.execution_flags(sw)
    sw.add_argument("--batch", type=int, default=1, metavar="N",
                    help="advance up to N items together, their model calls made as one batch per step (default 1); "
                         "each item's picture, files, index line and failure stay its own")
    common.preview_flag(sw)
    sw.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    common.plugin_flags(sw)
    common.limit_flag(sw)
    sw.set_defaults(func=cmd_sweep)
