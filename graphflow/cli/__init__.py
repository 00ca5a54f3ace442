"""The `graphflow` command: one module per command family, each adding its own sub-parser.
Exit codes (``graphflow.options``): 0 success, 1 a node failed while running, 2 the workflow or the
command line is invalid (nothing ran), 130 cancelled with Ctrl-C, 143 stopped by SIGTERM.

Node libraries add commands and flags through the ``graphflow.commands`` and ``graphflow.flags``
entry point groups (the shipped one adds `graphflow models` and ``--models-dir``), as they add node
types, so the CLI imports no node library and knows none of its conventions."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from graphflow import __version__, options
from graphflow.cli import cache, common, inspect, run, serve, sweep, usage, validate
from graphflow.problems import ValidationFailed

COMMANDS_GROUP = "graphflow.commands"


#: the built-in commands, each family with the names it adds, in the order ``graphflow`` lists them
_FAMILIES = (
    (("run",), run.add_parser), (("sweep",), sweep.add_parser), (("validate",), validate.add_parser),
    (("nodes", "describe", "schema", "graph"), inspect.add_parsers), (("cache",), cache.add_parser),
    (("serve",), serve.add_parser),
)
BUILT_IN = frozenset(name for names, _ in _FAMILIES for name in names)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (a built-in command's name), only that command's
    family: its flags are all that will be parsed, and building every command's parser, the node
    libraries' commands included, was a sixth of `graphflow validate`."""
    p = argparse.ArgumentParser(prog="graphflow", description="Run diffusion workflows written as JSON graphs of typed nodes.")
    p.add_argument("--version", action="version", version=f"graphflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p.set_defaults(commands=sub)
    for names, add in _FAMILIES:
        if command is None or command in names:
            add(sub)
    if command is None:
        for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
            sp = ep.load()(sub)
            common.plugin_flags(sp)
            sp.set_defaults(load_plugins=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in BUILT_IN else None)
    if not argv:  # as `git` does: the commands, one line each, and a usage exit code
        print(usage.command_list(parser, parser.get_default("commands")))
        return options.EXIT_INVALID
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = usage.pair_hint(argv, extra) or usage.generic_pair_hint(argv)
        if hint is None:
            parser.parse_args(argv)  # argparse's own message and exit
        prog = parser.get_default("commands").choices[args.command].prog
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)}\n{hint}", file=sys.stderr)
        return options.EXIT_INVALID
    prog = parser.get_default("commands").choices[args.command].prog
    try:
        for flag in common.contributed_flags():
            flag.apply(args)  # a bad value raises ValueError
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return options.EXIT_INVALID
    try:
        if getattr(args, "load_plugins", False) and args.plugin:  # a command that reads no node types: a broken plugin is still exit 2
            common.registry(args)
        return args.func(args)
    except ValidationFailed as e:
        common.print_problems(e, getattr(args, "json", False), getattr(args, "workflow", "graphflow"))
        return options.EXIT_INVALID
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return options.EXIT_CANCELLED
    except BrokenPipeError:  # `graphflow nodes | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return options.EXIT_OK
    except Exception as e:  # never a raw traceback for a user; GRAPHFLOW_DEBUG=1 shows it
        if os.environ.get("GRAPHFLOW_DEBUG"):
            raise
        print(f"graphflow: internal error: {type(e).__name__}: {e} (set GRAPHFLOW_DEBUG=1 for a traceback)", file=sys.stderr)
        return options.EXIT_FAILED
