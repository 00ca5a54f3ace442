"""What several commands share: their common flags, ``--set`` values, loading a workflow with them,
and reporting problems. Heavy imports (torch, diffusers) happen only inside node code, so
`validate`, `nodes`, `describe`, `schema` and `graph` answer quickly."""

from __future__ import annotations

import argparse
import functools
import sys
from importlib.metadata import entry_points
from typing import Any

import orjson

from graphflow import options
from graphflow.problems import Problem, ValidationFailed
from graphflow.sizes import DEFAULT_CACHE_BYTES, short_size


FLAGS_GROUP = "graphflow.flags"


@functools.cache
def contributed_flags() -> tuple:
    """Flags node libraries add to every command (``graphflow.flags`` entry points: objects with
    ``add(parser)`` and ``apply(args)``, which raises ValueError for a bad value: exit 2 with its
    message; the shipped library adds ``--models-dir``)."""
    return tuple(ep.load() for ep in sorted(entry_points(group=FLAGS_GROUP), key=lambda e: e.name))


def plugin_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--plugin", action="append", metavar="MODULE", help="extra node module (dotted path or .py file); repeatable")
    library_flags(sp)


def library_flags(sp: argparse.ArgumentParser) -> None:
    for flag in contributed_flags():
        flag.add(sp)


def limit_flag(sp: argparse.ArgumentParser) -> None:
    from graphflow.node.limits import Limits

    d = Limits()
    sp.add_argument("--limit", action="append", metavar="NAME=N",
                    help="raise or lower a resource ceiling; repeatable (" + ", ".join(f"{n} {getattr(d, n)}" for n in d.names()) + ")")


def device_flags(sp: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: `validate` takes them too, to check them against this torch."""
    sp.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"],
                    help="where models run (default: cpu); checked against the installed torch before anything loads")
    sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="model precision (default: float32; the CPU computes in all three)")


def execution_flags(sp: argparse.ArgumentParser) -> None:
    """What `run`, `sweep` and `serve` share: where models run, the disk cache, the NaN check."""
    device_flags(sp)
    sp.add_argument("--cache-dir", help="on-disk cache folder (default: $GRAPHFLOW_CACHE_DIR or ~/.cache/graphflow)")
    sp.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk cache")
    sp.add_argument("--cache-max-size", metavar="SIZE",
                    help=f"disk cache limit, least recently used out first (500M; default {short_size(DEFAULT_CACHE_BYTES)})")
    sp.add_argument("--no-check-finite", action="store_true", help="do not fail a node whose output holds NaN or Inf")
    sp.add_argument("--threads", type=int, metavar="N",
                    help="torch's CPU threads (default: $GRAPHFLOW_THREADS, else chosen from the usable CPUs, the CPU quota "
                         "and the other work running now; --profile says what was chosen)")


#: what every command's workflow argument takes
WORKFLOW_HELP = "a workflow file (.json, or a .png graphflow saved: it holds its workflow and parameters), or a shipped workflow's name (txt2img)"


def registry(args: argparse.Namespace):
    return options.build_registry(args.plugin or [])


def limits(args: argparse.Namespace):
    return options.build_limits(getattr(args, "limit", None) or [])


def executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The executor's settings; the device is checked here unless a sweep's Ray workers run on a
    cluster elsewhere (``--ray ADDRESS``), whose torch is theirs to check."""
    opts = options.executor_options(args.device, args.dtype, args.cache_dir, args.no_cache, args.cache_max_size,
                                    not args.no_check_finite, check_device=getattr(args, "ray", None) in (None, "local"))
    batch, every = getattr(args, "batch", 1), getattr(args, "preview_every", 0)
    if batch < 1:
        raise ValueError(f"argument --batch: takes a number of items, at least 1, not {batch}")
    if every < 0:
        raise ValueError(f"argument --preview-every: takes a number of steps, at least 1 (0: no previews), not {every}")
    if batch > 1:
        opts["batch"] = batch
    if every:
        opts["preview_every"] = every
    decoder = getattr(args, "preview_decoder", None)
    if decoder is not None:
        from graphflow_nodes.stages.preview import TinyDecoder

        try:
            opts["preview_decoder"] = TinyDecoder(decoder)
        except ValueError as e:
            raise ValueError(f"argument --preview-decoder: {e}") from None
    return opts


def preview_flag(sp: argparse.ArgumentParser, default: int = 0,
                 where: str = f"write it to OUT/{'preview.png'} (replaced atomically)") -> None:
    sp.add_argument("--preview-every", type=int, default=default, metavar="N",
                    help=f"every N sampler steps, make a small preview of the current picture and {where} "
                         f"(default {default}{': none' if not default else ''}; 0: none)")
    sp.add_argument("--preview-decoder", metavar="FOLDER",
                    help="make previews with this tiny autoencoder (a diffusers AutoencoderTiny folder, TAESD-class: "
                         "taesd/taesdxl for SD 1.x/2.x/SDXL, taesd3/taef1 for SD3/Flux) instead of the linear projection")


#: the file ``--preview-every`` writes in the output folder
PREVIEW_FILE = "preview.png"


def threads(args: argparse.Namespace, workers: int = 1):
    """Choose and apply torch's thread count (``graphflow/threads.py``) before any torch work;
    raises ValueError naming ``--threads`` or ``GRAPHFLOW_THREADS`` for a count below 1."""
    from graphflow import threads as th

    return th.configure(getattr(args, "threads", None), workers)


def executor(args: argparse.Namespace, limits):
    return options.build_executor(args.out, limits, executor_options(args))


def parse_sets(pairs: list[str], declared: dict[str, Any]) -> dict[str, Any]:
    """``--set k=v``: v is read as JSON (7, 7.5, true, [1,2]) unless the parameter is declared a
    string, and falls back to the plain text (``--set prompt=a red circle``)."""
    out, problems = {}, []
    for pair in pairs:
        if "=" not in pair:
            problems.append(Problem("bad_set", f"--set takes NAME=VALUE as one argument, got {pair!r}: write --set "
                                               f"{pair or 'NAME'}=VALUE, and quote a value that has spaces, as in --set prompt='a red square'"))
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


def load(args: argparse.Namespace):
    """The workflow the command names, its ``--set`` values applied and bound (so every problem is
    raised here, before anything runs), and the ceilings it was bound within."""
    from graphflow.graph.workflow import Workflow

    reg = registry(args)
    lim = limits(args)
    wf = Workflow.load(args.workflow, reg, lim)
    wf = wf.with_params(**parse_sets(getattr(args, "set", None) or [], wf.doc.params))
    wf.bind(limits=lim)
    return wf, lim


def print_problems(e: ValidationFailed, as_json: bool, source: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps({"ok": False, "file": source, "problems": [p.to_dict() for p in e.problems]}).decode() + "\n")
    else:
        sys.stderr.write(f"{source}: {e}\n")
