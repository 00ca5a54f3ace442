"""What a run tells the tools embedding it (progress bars, profilers, servers). Plain dataclasses,
to be treated as read-only (every listener gets the same object; not frozen, because a frozen
dataclass costs four times as much to build, twice per node); each names its run (``run_id``),
since one executor queues many runs and a server streams them all. Delivered off the run thread
(see ``Executor.subscribe``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RunStarted:
    nodes: int  # top-level nodes this run needs (a loop or map counts once)
    run_id: str = ""


@dataclass(slots=True)
class NodeStarted:
    node: str
    type: str
    iteration: int | None = None
    run_id: str = ""


@dataclass(slots=True)
class NodeFinished:
    node: str
    type: str
    seconds: float
    #: "memory" or "disk" when the outputs came from a cache, "skipped" for a node a loop
    #: iteration left out, None when the node actually ran
    cached: str | None
    iteration: int | None = None
    run_id: str = ""


@dataclass(slots=True)
class LoopStep:
    node: str
    index: int
    count: int
    run_id: str = ""


@dataclass(slots=True)
class NodeFailedEvent:
    node: str
    type: str
    message: str
    run_id: str = ""


@dataclass(slots=True)
class Preview:
    """A picture of a node's work in progress (a sampler's current x0), every ``preview_every``
    steps: ``png`` is the encoded picture, for a file, an SSE data URL or a WebSocket binary frame."""

    node: str
    step: int  # 0-based
    steps: int | None
    png: bytes
    width: int
    height: int
    run_id: str = ""


@dataclass(slots=True)
class RunFinished:
    seconds: float
    ok: bool
    cancelled: bool
    run_id: str = ""


Event = RunStarted | NodeStarted | NodeFinished | LoopStep | NodeFailedEvent | Preview | RunFinished
