"""What a run gives back: its outputs, structured errors and per-node statistics."""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass, field
from typing import Any


class NodeError(Exception):
    """A node failed while running. Structured, so tools need not parse a message: the node id
    and type, the exception's type and message, the loop iteration, and the traceback's text."""

    def __init__(self, node: str, type_name: str, message: str, iteration: int | None = None, *,
                 exc_type: str = "", traceback: str = "") -> None:
        self.node, self.type, self.message, self.iteration = node, type_name, message, iteration
        self.exc_type, self.traceback = exc_type, traceback
        at = f" at iteration {iteration}" if iteration is not None else ""
        super().__init__(f"node '{node}' ({type_name}){at} failed: {message}")

    @classmethod
    def wrap(cls, node: str, type_name: str, e: BaseException, iteration: int | None) -> NodeError:
        text = "".join(tb.format_exception(type(e), e, e.__traceback__))
        return cls(node, type_name, f"{type(e).__name__}: {e}", iteration, exc_type=type(e).__name__, traceback=text)

    def to_dict(self, traceback: bool = False) -> dict[str, Any]:
        d = {"node": self.node, "type": self.type, "exc_type": self.exc_type, "message": self.message, "iteration": self.iteration}
        if traceback:
            d["traceback"] = self.traceback
        return d


@dataclass(slots=True)
class NodeStat:
    """One node's counts in a run: one per node of a run, so kept small (slots, no ``__dict__``)."""

    type: str
    runs: int = 0
    hits: int = 0
    seconds: float = 0.0
    status: str = "pending"  # ran | memory | disk | failed | skipped


@dataclass
class RunResult:
    outputs: dict[str, Any]
    errors: list[NodeError]
    stats: dict[str, NodeStat]
    cancelled: bool
    seconds: float
    missing: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    #: damaged disk-cache entries this run found, deleted and recomputed
    cache_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.cancelled

    @property
    def status(self) -> str:
        """``done``, ``failed`` or ``cancelled``: what a run handle, the server's history and a
        notebook's summary call it."""
        return "cancelled" if self.cancelled else ("done" if self.ok else "failed")

    def __getitem__(self, name: str) -> Any:
        if name in self.outputs:
            return self.outputs[name]
        raise KeyError(f"output '{name}' was not produced: {self.missing.get(name, 'unknown output')}")

    def runs(self, node: str) -> int:
        """How many times a node's code actually ran in this run (cache hits excluded)."""
        s = self.stats.get(node)
        return s.runs if s else 0
