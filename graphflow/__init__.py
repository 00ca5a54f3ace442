"""graphflow: run diffusion experiments as JSON graphs of typed nodes.

The public API, for embedding the executor::

    import graphflow
    wf = graphflow.load("workflows/txt2img.json")
    ex = graphflow.Executor(cache_dir=".graphflow-cache")
    result = ex.run(wf.with_params(seed=7))
    image = result["image"]
    for item in graphflow.sweep(wf, grid={"seed": [0, 1, 2]}, out_dir="sweep"):
        print(item.item, item.status, item.files)
"""

from graphflow.node.context import Cancelled, Context, UndeclaredContext
from graphflow.node.declaration import Inputs, Node, Outputs
from graphflow.node.kinds import ANY, OBJECT, TENSOR, FileInput, Kind, kind, list_of
from graphflow.problems import Problem, ValidationFailed
from graphflow.node.registry import Registry, default_registry
from graphflow.engine.results import NodeError, RunResult
from graphflow.graph.workflow import Workflow, load, registry

__all__ = [
    "ANY", "OBJECT", "TENSOR", "Cancelled", "Context", "Executor", "FileInput", "Inputs", "Kind", "Node", "NodeError",
    "Outputs", "Problem", "Registry", "RunHandle", "RunResult", "UndeclaredContext", "ValidationFailed", "Workflow",
    "default_registry", "kind", "list_of", "load", "registry", "sweep",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The executor (with its caches and threads) is imported on first use, so commands that only
    read workflows (``graphflow validate``) do not pay for it."""
    if name in ("Executor", "RunHandle"):
        from graphflow.engine import executor

        return getattr(executor, name)
    if name == "sweep":  # graphflow.sweep(workflow, grid=..., zip=..., ray=None): see graphflow/sweep/items.py
        from graphflow.sweep.items import sweep

        return sweep
    raise AttributeError(f"module 'graphflow' has no attribute {name!r}")
