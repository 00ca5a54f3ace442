"""graphflow: run diffusion experiments as JSON graphs of typed nodes.

The public API, for embedding the executor::

    import graphflow
    wf = graphflow.load("workflows/txt2img.json")
    ex = graphflow.Executor(cache_dir=".graphflow-cache")
    result = ex.run(wf.with_params(seed=7))
    image = result["image"]
    for item in graphflow.sweep(wf, grid={"seed": [0, 1, 2]}, name="seeds"):   # into sweeps/seeds/
        print(item.item, item.status, item.files)
"""

import sys

from graphflow.engine.results import NodeError, RunResult
from graphflow.graph.workflow import Workflow, load, registry
from graphflow.node.context import Cancelled, Context, UndeclaredContext
from graphflow.node.declaration import Inputs, Node, Outputs
from graphflow.node.kinds import ANY, OBJECT, TENSOR, FileInput, Kind, kind, list_of
from graphflow.node.limits import Limits
from graphflow.node.registry import Registry, default_registry
from graphflow.problems import Problem, ValidationFailed
from graphflow.version import __version__

__all__ = [
    "ANY", "OBJECT", "TENSOR", "Cancelled", "Context", "Executor", "FileInput", "Inputs", "Kind", "Limits", "Node", "NodeError",
    "Outputs", "Problem", "Registry", "RunHandle", "RunResult", "UndeclaredContext", "ValidationFailed", "Workflow",
    "__version__", "default_registry", "kind", "list_of", "load", "registry", "sweep",
]


def _show_in_ipython() -> None:
    """Inside IPython (a notebook's kernel, a console), register how runs, workflows and sweeps
    look there (graphflow/views/jupyter.py); elsewhere nothing of presentation is imported."""
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    if shell is not None:
        from graphflow.views.jupyter import register

        register(shell)


_show_in_ipython()


def __getattr__(name: str):
    """The executor (with its caches and threads) is imported on first use, so commands that only
    read workflows (``graphflow validate``) do not pay for it."""
    if name in ("Executor", "RunHandle"):
        from graphflow.engine import executor

        return getattr(executor, name)
    if name == "sweep":  # graphflow.sweep(workflow, grid=..., zip=..., ray=None): see graphflow/sweep/__init__.py
        from graphflow.sweep import sweep

        return sweep
    raise AttributeError(f"module 'graphflow' has no attribute {name!r}")
