"""What the command line and the server both build from their settings: the node registry, the
resource ceilings, the executor and its disk cache, and the exit codes they answer with. One place,
so ``graphflow serve`` receives built objects and imports neither the CLI nor argparse."""

from __future__ import annotations

import os
from typing import Any

from graphflow.problems import Problem, ValidationFailed

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def default_cache_dir() -> str:
    """$GRAPHFLOW_CACHE_DIR, else the platform's cache folder (~/.cache/graphflow)."""
    env = os.environ.get("GRAPHFLOW_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphflow")


def build_registry(plugins: list[str] | tuple = ()):
    """The built-in nodes, every installed node pack and the ``--plugin`` modules; a plugin that
    cannot be loaded is a validation problem (exit 2), not a traceback."""
    from graphflow.node.registry import RegistryError, default_registry

    try:
        return default_registry(plugins or [])
    except RegistryError as e:
        raise ValidationFailed([Problem("bad_plugin", str(e))]) from None


def build_limits(pairs: list[str] | tuple = ()):
    """``NAME=N`` pairs (``--limit``) on top of the default resource ceilings."""
    from graphflow.node.limits import Limits

    values, problems = {}, []
    for pair in pairs or []:
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


def executor_options(device: str = "cpu", dtype: str = "float32", cache_dir: str | None = None, no_cache: bool = False,
                     cache_max_size: str | None = None, check_finite: bool = True, check_device: bool = True) -> dict[str, Any]:
    """Executor keyword arguments from settings as a user writes them (a size as ``500M``); a Ray
    sweep sends the same dict to each of its workers. Raises ValueError naming the bad setting:
    a device or dtype this torch cannot compute in is one, before a workflow loads a model
    (``check_device=False`` for workers on other machines, whose torch may differ: each checks its own)."""
    from graphflow.sizes import DEFAULT_CACHE_BYTES, parse_size

    if check_device:
        from graphflow.engine.devices import check_device as check

        check(device, dtype)

    try:
        max_size = DEFAULT_CACHE_BYTES if cache_max_size is None else parse_size(cache_max_size)
    except ValueError as e:
        raise ValueError(f"argument --cache-max-size: {e}") from None
    folder = None if no_cache else os.path.abspath(cache_dir or default_cache_dir())
    return {"device": device, "dtype": dtype, "check_finite": check_finite, "cache_dir": folder, "cache_max_size": max_size}


def read_roots(registry, folders: list[str] | tuple = ()) -> tuple[str, ...]:
    """The folders a confined executor may read files from (a server's: its uploads folder and
    each ``--allow-read`` folder as ``folders``), with every folder the node packs contribute
    through the registry (the shipped library's: the models folders of ``GRAPHFLOW_MODELS`` /
    ``--models-dir``, its shipped models, configs and samples), as real paths. For
    ``build_executor(read_roots=...)`` and ``Workflow.bind(read_roots=...)``; what `graphflow run`
    passes is None: the user's own machine, unconfined."""
    from graphflow.node.file_access import FileAccess

    return FileAccess.of([*folders, *registry.read_roots()]).roots


def build_executor(out_dir: str, limits, options: dict[str, Any], read_roots: tuple[str, ...] | None = None):
    """``read_roots``: see ``read_roots`` above; None (the CLI's) reads anywhere."""
    from graphflow.engine.executor import Executor

    return Executor(out_dir=out_dir, limits=limits, read_roots=read_roots, **options)
