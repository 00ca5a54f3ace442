"""The narrow view of a run that a node receives. Nodes see nothing of the executor's internals,
so a node can be unit-tested with ``Context()`` alone.

Everything here besides cancellation and the file rules (``files``) is a *context input*: a node declares the ones it reads
(``uses=("iteration", ...)`` on the class) and they join its fingerprint. A ``Context`` built by
the executor refuses to hand out anything undeclared, so no value can reach a node unseen by the
cache. A bare ``Context()`` (unit tests) allows everything.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class Cancelled(Exception):
    """Raised between nodes or loop steps once a run was asked to stop."""


class UndeclaredContext(AttributeError):
    """A node read a context value it did not declare in ``uses``."""


_FIELDS = {
    "iteration": "iteration",
    "iterations": "iteration",
    "device": "device",
    "dtype": "dtype",
    "models": "models",
    "out_dir": "out_dir",
    "workflow": "workflow",
    "params": "workflow",
}


class Context:
    __slots__ = ("node_id", "node_type", "cancel_event", "_declared", "_values")

    def __init__(
        self,
        node_id: str = "",
        *,
        device: str = "cpu",
        dtype: str = "float32",
        out_dir: Path | str = "out",
        workflow: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        iteration: int | None = None,
        iterations: int | None = None,
        models: Any = None,
        cancel_event: threading.Event | None = None,
        declared: frozenset[str] | None = None,
        node_type: str = "",
        files: Any = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.cancel_event = cancel_event or threading.Event()
        self._declared = declared
        self._values = {
            "iteration": iteration,
            "iterations": iterations,
            "device": device,
            "dtype": dtype,
            "models": models,
            "out_dir": Path(out_dir),
            "workflow": workflow if workflow is not None else {},
            "params": params if params is not None else {},
            "files": files,
        }

    @classmethod
    def _make(cls, node_id: str, node_type: str, declared: frozenset[str], values: dict[str, Any], cancel_event: threading.Event) -> Context:
        """The executor's fast path: ``values`` is shared by every node of a run, never copied."""
        c = cls.__new__(cls)
        c.node_id, c.node_type, c.cancel_event, c._declared, c._values = node_id, node_type, cancel_event, declared, values
        return c

    def __getattr__(self, name: str) -> Any:
        need = _FIELDS.get(name)
        if need is None:
            raise AttributeError(name)
        if self._declared is not None and need not in self._declared:
            raise UndeclaredContext(
                f"node '{self.node_id}' ({self.node_type}) reads ctx.{name} without declaring it: "
                f"add uses=(..., {need!r}) to its class"
            )
        v = self._values[name]
        return Path(v) if name == "out_dir" else v

    @property
    def files(self) -> Any:
        """The rules the files this node opens are held to (a ``FileAccess``: the folders the
        executor may read, the size ceiling), for ``open_input``. Not a context input: it
        decides whether a file may be read, never what a node computes from it, so it needs no
        declaration and is not in the fingerprint. A bare ``Context()`` is unconfined."""
        from graphflow.node.file_access import UNCONFINED

        return self._values.get("files") or UNCONFINED

    def batched(self, key: Any, payload: Any, call: Any) -> Any:
        """``call([payload])[0]``, made as one call with the same-``key`` calls of the runs batched
        with this one (``graphflow/node/batching.py``); alone, at once. ``call`` maps a list of
        payloads to a list of results, each exactly what the payload alone would give (up to float
        summation order). Not a context input: it changes how a result is computed, not what."""
        from graphflow.node.batching import batched

        return batched(key, payload, call)

    def preview(self, step: int, steps: int | None, make: Any) -> None:
        """Offer a preview of the work in progress at ``step`` of ``steps``: ``make()`` returns
        (png_bytes, width, height) and is called only when the run wants a preview at this step
        (``Executor(preview_every=N)``), so a run without previews pays nothing."""
        hook = self._values.get("preview")
        if hook is not None:
            hook(self.node_id, step, steps, make)

    @property
    def preview_decoder(self) -> Any:
        """The model previews decode with (``Executor(preview_decoder=ref)``: a tiny autoencoder),
        loaded on first use; None when there is none or the run makes no previews. Not a context
        input: it changes what a preview shows, never what a node computes."""
        ref = self._values.get("preview_decoder")
        return None if ref is None else self._values["models"].get(ref)

    def check_cancelled(self) -> None:
        """Long-running nodes call this between units of work."""
        if self.cancel_event.is_set():
            raise Cancelled()
