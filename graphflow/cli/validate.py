"""`graphflow validate`: every problem at once, and what each file the workflow names is."""

from __future__ import annotations

import argparse
import sys

import orjson

from graphflow import options
from graphflow.cli import common
from graphflow.problems import Problem, ValidationFailed


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        wf, _ = common.load(args)
    except ValidationFailed as e:
        common.print_problems(e, args.json, args.workflow)
        return options.EXIT_INVALID
    from graphflow.engine.devices import device_problem

    problem = device_problem(args.device, args.dtype)
    if problem is not None:
        common.print_problems(ValidationFailed([Problem("unsupported_device", problem, field="device")]), args.json, args.workflow)
        return options.EXIT_INVALID
    from graphflow.node.file_notes import file_notes

    notes = file_notes(wf.bind(limits=common.limits(args)))
    if args.json:
        extra = {"files": [n.to_dict() for n in notes]} if notes else {}
        sys.stdout.write(orjson.dumps({"ok": True, "file": args.workflow, "problems": [], **extra}).decode() + "\n")
    else:
        n = len(wf.doc.all_nodes())
        print(f"{args.workflow}: ok ({n} nodes, {len(wf.doc.params)} parameters, outputs: {', '.join(wf.doc.outputs)})")
        for note in notes:
            print(f"  node '{note.node}', {note.field} = {note.value!r}: {note.text}")
    return options.EXIT_OK


def add_parser(sub) -> None:
    v = sub.add_parser("validate", help="check a workflow without running it", description="Check a workflow without running anything.")
    v.add_argument("workflow", help=common.WORKFLOW_HELP)
    v.add_argument("--set", action="append", metavar="NAME=VALUE", help="check with this parameter value")
    v.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    common.device_flags(v)
    common.plugin_flags(v)
    common.limit_flag(v)
    v.set_defaults(func=cmd_validate)
