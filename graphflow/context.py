"""The narrow view of a run that a node receives: run options, where to write, a process-wide
store for heavy shared objects, and cancellation. Nodes see nothing of the executor's internals,
so a node can be unit-tested with ``Context()`` alone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Cancelled(Exception):
    """Raised between nodes or loop steps once a run was asked to stop."""


_SHARED: dict[Any, Any] = {}
_SHARED_LOCK = threading.Lock()
_KEY_LOCKS: dict[Any, threading.Lock] = {}


def shared(key: Any, factory: Callable[[], Any]) -> Any:
    """Build an object once per process and hand the same one to every caller (loaded models).
    Concurrent callers with the same key wait for the first build instead of loading twice."""
    try:
        return _SHARED[key]
    except KeyError:
        pass
    with _SHARED_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _SHARED:
            _SHARED[key] = factory()
        return _SHARED[key]


@dataclass
class Context:
    node_id: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    out_dir: Path = field(default_factory=lambda: Path("out"))
    #: the workflow document and its resolved parameters, for nodes that record provenance
    workflow: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    #: loop index and count when the node runs inside a loop body, else None
    iteration: int | None = None
    iterations: int | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def shared(self, key: Any, factory: Callable[[], Any]) -> Any:
        return shared(key, factory)

    def check_cancelled(self) -> None:
        """Long-running nodes call this between units of work."""
        if self.cancel_event.is_set():
            raise Cancelled()
