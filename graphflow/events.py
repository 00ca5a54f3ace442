"""What a run tells the tools embedding it (progress bars, profilers, servers). Plain dataclasses,
delivered synchronously to each subscriber in the running thread."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunStarted:
    nodes: int  # top-level nodes this run needs (loops count once)


@dataclass(frozen=True)
class NodeStarted:
    node: str
    type: str
    iteration: int | None = None


@dataclass(frozen=True)
class NodeFinished:
    node: str
    type: str
    seconds: float
    #: "memory" or "disk" when the outputs came from a cache, "skipped" for a node a loop
    #: iteration left out, None when the node actually ran
    cached: str | None
    iteration: int | None = None


@dataclass(frozen=True)
class LoopStep:
    node: str
    index: int
    count: int


@dataclass(frozen=True)
class NodeFailedEvent:
    node: str
    type: str
    message: str


@dataclass(frozen=True)
class RunFinished:
    seconds: float
    ok: bool
    cancelled: bool


Event = RunStarted | NodeStarted | NodeFinished | LoopStep | NodeFailedEvent | RunFinished
