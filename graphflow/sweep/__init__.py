"""Parameter sweeps: items bound and ordered, their index and contact sheet (``items``), one item's
run (``item``), and the runners the caller chooses between: here (``local``) or on Ray actors
(``ray_runner``).

``sweep(workflow, grid={"seed": [0, 1]}, zip={...}, ray=None)`` is the one call that chooses:
``ray=None`` runs here, ``ray=True`` (or "local") starts a Ray instance on this machine,
``ray="auto"`` or ``"HOST:PORT"`` joins a cluster. Each sweep gets a folder of its own
(``sweeps/<workflow>-<timestamp>``, or ``sweeps/<name>``, or ``out_dir``; see ``folder``)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graphflow.node.limits import Limits
from graphflow.sweep.folder import FolderInUse
from graphflow.sweep.item import ItemResult
from graphflow.sweep.items import Sweep
from graphflow.sweep.local import LocalRunner

__all__ = ["FolderInUse", "ItemResult", "LocalRunner", "Sweep", "runner", "sweep"]


def runner(executor=None, ray: bool | str | None = None, **ray_options: Any):
    """The runner for ``ray``: a ``LocalRunner`` on ``executor`` (None: one made for the sweep), or
    a ``RaySweep`` (``ray_options``: workers, cpus_per_worker, gpus_per_worker, max_attempts,
    executor_options and plugins for the workers)."""
    if ray is None or ray is False:
        return LocalRunner(executor)
    from graphflow.sweep.ray_runner import RaySweep

    return RaySweep(address=ray, **ray_options)


def sweep(workflow, grid: dict[str, list] | None = None, zip: dict[str, list] | None = None,
          out_dir: str | Path | None = None, executor=None, resume: bool = False,
          limits: Limits | None = None, ray: bool | str | None = None, *, name: str | None = None,
          force: bool = False, **ray_options: Any) -> Iterator[ItemResult]:
    """Bind every item now (raises ValidationFailed, nothing run; FolderInUse for a folder holding
    another sweep, unless ``resume`` or ``force``), then a lazy iterator that runs them and yields
    each ``ItemResult`` as it finishes."""
    return iter(Sweep(workflow, grid, zip, out_dir, resume, limits, runner(executor, ray, **ray_options),
                      name=name, force=force))


class _CallableModule(types.ModuleType):
    """``graphflow.sweep`` names this package as soon as anything imports it (Python sets a
    package's submodules as its attributes), which would hide the ``graphflow.sweep(...)`` function
    after its first use. Calling the package calls ``sweep``, so both spellings keep working."""

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[ItemResult]:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
