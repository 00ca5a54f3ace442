"""The workflows a server knows: the shipped ones by name, and every submitted document checked
once (a thousand submissions of one workflow with different seeds check the document once, as a
sweep does)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from graphflow.document.depth import depth_problem
from graphflow.document.reader import load_json_file
from graphflow.graph.bind import BoundGraph
from graphflow.graph.workflow import Workflow
from graphflow.node.limits import Limits
from graphflow.node.registry import Registry
from graphflow.problems import Problem, ValidationFailed


def shipped_folder() -> Path:
    """The shipped workflows' folder: the first installed node pack's (graphflow_nodes/workflows,
    package data, so an installed server has them without a checkout)."""
    from graphflow.node.shipped import folders

    found = folders()
    return found[0] if found else Path(__file__).resolve().parent / "no-shipped-workflows"


def params_form(wf: Workflow) -> dict[str, dict[str, Any]]:
    """A workflow's declared parameters as the page builds its form from them."""
    return {p.name: {"type": p.type, "default": p.default, "description": p.description} for p in wf.doc.params.values()}


class Catalog:
    def __init__(self, folder: str | Path | None, registry: Registry, limits: Limits, keep: int = 128,
                 read_roots: tuple[str, ...] | None = None) -> None:
        """``read_roots``: the folders a run may read (see ``Settings.read_roots``): a workflow
        naming a file outside them is refused here, at submission, naming the node and field."""
        self.folder = Path(folder) if folder is not None else None
        self.registry, self.limits, self.keep, self.read_roots = registry, limits, keep, read_roots
        self._lock = threading.Lock()
        self._memo: OrderedDict[bytes, Workflow] = OrderedDict()
        self._shipped: dict[str, dict[str, Any]] | None = None

    def shipped(self) -> dict[str, dict[str, Any]]:
        """name → the workflow's JSON, read once. A file that does not load is left out (the CLI's
        `graphflow validate` says why); names come from this listing only, never from a request,
        so no request names a path."""
        if self._shipped is None:
            found: dict[str, dict[str, Any]] = {}
            if self.folder is not None and self.folder.is_dir():
                for path in sorted(self.folder.glob("*.json")):
                    try:
                        found[path.stem] = load_json_file(path, self.limits.document)[0]
                    except (ValidationFailed, OSError):
                        continue
            self._shipped = found
        return self._shipped

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for name, data in self.shipped().items():
            try:
                wf = self.workflow(data)
            except ValidationFailed:
                continue
            out.append({"name": name, "description": wf.doc.description, "params": params_form(wf), "outputs": list(wf.doc.outputs)})
        return out

    def resolve(self, workflow: dict[str, Any] | None, name: str | None) -> tuple[dict[str, Any], str | None]:
        """The document a request names: pasted, or shipped by name (exactly one of them)."""
        if (workflow is None) == (name is None):
            raise ValidationFailed([Problem("bad_request", "give exactly one of 'workflow' (a document) or 'workflow_name'", field="workflow")])
        if name is not None:
            data = self.shipped().get(name)
            if data is None:
                known = ", ".join(self.shipped()) or "none"
                raise ValidationFailed([Problem("unknown_workflow", f"no shipped workflow named {name!r} (shipped: {known})",
                                                field="workflow_name")])
            return data, name
        return workflow, None

    def workflow(self, data: dict[str, Any]) -> Workflow:
        """The document checked once per content (raises ValidationFailed with every problem)."""
        deep = depth_problem(data, self.limits.depth)  # before hashing: orjson's writer fails past 255 levels, naming nothing
        if deep is not None:
            raise ValidationFailed([deep])
        key = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).digest()
        with self._lock:
            wf = self._memo.get(key)
            if wf is not None:
                self._memo.move_to_end(key)
                return wf
        wf = Workflow.from_dict(data, self.registry, "<request>", self.limits)
        wf.checked()  # structural problems raise here, before a parameter is looked at
        with self._lock:
            self._memo[key] = wf
            while len(self._memo) > self.keep:
                self._memo.popitem(last=False)
        return wf

    def bind(self, data: dict[str, Any], params: dict[str, Any]) -> BoundGraph:
        """Checked and bound with ``params`` within the limits: what a run will be, or every
        problem (the same list `graphflow validate` prints)."""
        wf = self.workflow(data)
        if not isinstance(params, dict):
            raise ValidationFailed([Problem("bad_request", "'params' must be an object", field="params")])
        return wf.bind(params, self.limits, self.read_roots)
