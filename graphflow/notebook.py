"""graphflow in Jupyter: runs and sweeps with progress widgets, stopped cleanly by the notebook's
interrupt, on one executor shared by the notebook's cells (so a cell re-run recomputes only what
changed), and ``show``/``profile`` for the views a user asks for.

    from graphflow import notebook as gn
    wf = graphflow.load("../workflows/txt2img.json")
    wf                                        # a picture of the graph
    r = gn.run(wf, prompt="a blue square on a white background")
    r                                         # the picture, other outputs in a table
    gn.profile(r)                             # per node: runs, cache hits, seconds

A run executes on the cell's own thread (``Executor.run``), which also drives its progress bars
(``on_event``): a widget displayed from another thread may land in whichever cell runs at that
moment (or none), and torch work done in cells and in runs stays on one thread (see
graphflow/engine/executor.py for why that matters for speed). The cell's thread is where Jupyter's
interrupt arrives, so that is where the run is cancelled (as the CLI's Ctrl-C cancels it): the
executor stops at the next node or loop step, the finished steps stay cached, and the
KeyboardInterrupt goes on so that "Run all" stops too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from graphflow.views.html import Shown, profile_html, result_html, sweep_html, workflow_svg

__all__ = ["LivePreview", "executor", "profile", "run", "show", "sweep"]

_default = None


def executor(**options: Any):
    """The executor the notebook's cells share (made on first use: output folder ``out``, the
    in-memory cache, a live preview every step: ``preview_every=1``). With options (``out_dir=``,
    ``cache_dir=``, ``device=``...), a new one made with them becomes the shared one."""
    global _default
    if options or _default is None:
        from graphflow.engine.executor import Executor

        options.setdefault("out_dir", "out")
        options.setdefault("preview_every", 1)
        _default = Executor(**options)
    return _default


_shared = executor  # run() and sweep() take an ``executor`` argument, which hides the function's name


def _workflow(wf):
    """A Workflow as given, or loaded from a path (a .json file or a picture graphflow saved)."""
    if isinstance(wf, (str, Path)):
        from graphflow.graph.workflow import Workflow

        return Workflow.load(wf)
    return wf


def _bar():
    from tqdm.auto import tqdm

    return tqdm


class LivePreview:
    """The picture under a run's progress bar: each ``Preview`` event replaces it in place (one
    ``display`` handle updated, so a cell shows one picture, not one per step)."""

    def __init__(self) -> None:
        self.handle = None
        self.count = 0
        self.png: bytes | None = None  # the latest

    def __call__(self, e) -> None:
        from graphflow.engine import events as ev

        if not isinstance(e, ev.Preview):
            return
        self.count += 1
        self.png = e.png
        try:
            from IPython.display import Image, display
        except ImportError:  # no IPython: nothing to show it in
            return
        img = Image(data=e.png, format="png", width=max(128, e.width))
        if self.handle is None:
            self.handle = display(img, display_id=True)
        else:
            self.handle.update(img)


def run(wf, params: dict[str, Any] | None = None, *, executor=None, progress: bool = True, **values: Any):
    """Run a workflow (a Workflow or a path; parameter values as keywords) and return its RunResult, which a cell
    displays as its pictures and a table. Interrupting the cell cancels the run: it stops at the
    next node or loop step and the KeyboardInterrupt is raised once it has."""
    from graphflow.views.text import Progress

    ex = executor or _shared()
    wf = _workflow(wf)
    if values:
        wf = wf.with_params(**values)
    bars = Progress(progress, _bar())
    preview = LivePreview() if progress else None

    def on_event(e) -> None:
        bars(e)
        if preview is not None:
            preview(e)

    try:
        return ex.run(wf, params, on_event=on_event)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: the run stopped at its next step (finished steps stay cached)\n")
        raise
    finally:
        bars.close()


def sweep(wf, grid: dict[str, list] | None = None, zip: dict[str, list] | None = None, *, out_dir: str | Path | None = None,
          name: str | None = None, executor=None, resume: bool = False, force: bool = False, progress: bool = True,
          ray: bool | str | None = None, **ray_options: Any):
    """Run a parameter sweep (graphflow/sweep/items.py) with a bar over its items; returns the Sweep,
    which a cell displays as its labelled contact sheet and a table of items. Interrupting the cell
    stops the current item at its next step; finished items stay in the index (``resume=True``).
    ``ray``: run the items on Ray actors instead of the notebook's executor (see ``graphflow.sweep``).
    The folder is chosen as ``graphflow.sweep`` chooses it: a cell run again over the same folder
    says so (``resume=True`` continues that sweep, ``force=True`` replaces it)."""
    from graphflow.sweep import Sweep, runner

    ex = None if ray else (executor or _shared())
    sw = Sweep(_workflow(wf), grid, zip, out_dir, resume, runner=runner(ex, ray, **ray_options), name=name, force=force)
    bar = _bar()(total=len(sw), desc="sweep", unit="item", leave=False, disable=not progress)
    try:
        for r in sw:
            bar.update(1)
            if r.status == "failed":
                bar.set_postfix_str(f"item {r.item} failed")
    except KeyboardInterrupt:
        sw.cancel()
        sys.stderr.write("interrupted: the sweep stopped; finished items are in the index (resume=True goes on)\n")
        raise
    finally:
        bar.close()
    return sw


def show(obj, profile: bool = False) -> Shown:
    """The notebook view of a RunResult (``profile=True`` adds the per-node table), a Workflow or
    a Sweep, as an object a cell displays."""
    from graphflow.engine.results import RunResult
    from graphflow.sweep.items import Sweep
    from graphflow.graph.workflow import Workflow

    if isinstance(obj, RunResult):
        from graphflow.views.html import summary

        return Shown(result_html(obj, profile), summary(obj))
    if isinstance(obj, Workflow):
        svg = workflow_svg(obj)
        return Shown(svg if svg is not None else "<pre>the graph could not be drawn</pre>", obj.doc.description)
    if isinstance(obj, Sweep):
        return Shown(sweep_html(obj), f"sweep of {len(obj)} items")
    raise TypeError(f"graphflow.notebook.show takes a RunResult, a Workflow or a Sweep, not {type(obj).__name__}")


def profile(result) -> Shown:
    """Per-node timings and cache hits of a run: how often each node's code ran, how often its
    outputs came from a cache, its seconds, and its status."""
    from graphflow.views.text import profile_table

    return Shown(profile_html(result), profile_table(result))
