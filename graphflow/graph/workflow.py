"""The Python face of a workflow file: load, set parameters, check, bind, run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

import graphflow.graph.check as _check
from graphflow.document.depth import depth_problem
from graphflow.document.reader import load_json_file, read_document
from graphflow.document.tree import Document
from graphflow.gc_tuning import fewer_gc_passes
from graphflow.graph.bind import DEFAULT_LIMITS, BoundGraph, bind, params_not_an_object
from graphflow.graph.check import CheckedGraph
from graphflow.node.limits import Limits
from graphflow.node.registry import Registry, default_registry
from graphflow.node.shipped import workflow_file
from graphflow.problems import Problem, ValidationFailed

_DEFAULT_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process's default registry (built-ins and installed node packs), built on first use."""
    global _DEFAULT_REGISTRY
    if _DEFAULT_REGISTRY is None:
        _DEFAULT_REGISTRY = default_registry()
    return _DEFAULT_REGISTRY


_process_registry = registry  # inside Workflow, ``registry`` names the instance's attribute


class Workflow:
    """An immutable workflow document plus parameter values. ``with_params`` returns a new one
    that shares the document's check, so a sweep of a thousand seeds checks the document once."""

    def __init__(self, doc: Document, registry: Registry, params: dict[str, Any] | None = None,
                 _memo: dict[str, Any] | None = None) -> None:
        self.doc = doc
        self.registry = registry
        self.params = dict(params or {})
        self._memo = _memo if _memo is not None else {}

    @classmethod
    def from_dict(cls, data: dict[str, Any], registry: Registry | None = None, source: str = "<dict>",
                  limits: Limits | None = None) -> Workflow:
        """A workflow from a document already parsed (a server request, a dict built in Python),
        nested no deeper than ``limits.depth``."""
        depth = (limits or DEFAULT_LIMITS).depth
        deep = depth_problem(data, depth)  # before the copy: orjson's writer fails past 255 levels, naming nothing
        if deep is not None:
            raise ValidationFailed([deep])
        # a private copy (orjson round trip: fast, and proves the value is plain JSON)
        try:
            data = orjson.loads(orjson.dumps(data))
        except TypeError as e:
            raise ValidationFailed([Problem("invalid_document", f"not plain JSON data: {e}")]) from None
        return cls._from_json(data, registry, source, max_depth=None)

    @classmethod
    def _from_json(cls, data: dict[str, Any], registry: Registry | None, source: str, params: dict[str, Any] | None = None,
                   max_depth: int | None = DEFAULT_LIMITS.depth) -> Workflow:
        with fewer_gc_passes():
            doc, problems = read_document(data, source, max_depth)
        if problems or doc is None:
            raise ValidationFailed(problems)
        return cls(doc, registry if registry is not None else _process_registry(), params)

    @classmethod
    def load(cls, path: str | Path, registry: Registry | None = None, limits: Limits | None = None) -> Workflow:
        """A workflow file (.json), or a picture graphflow made (.png): its embedded workflow and
        parameters, read as untrusted text like any document (no larger than ``limits.document``).
        A name that is no file but a shipped workflow's (``txt2img``) loads that one."""
        limits = limits or DEFAULT_LIMITS
        registry = registry if registry is not None else _process_registry()
        data, params = load_json_file(workflow_file(path), limits.document, registry.readers())
        return cls._from_json(data, registry, str(path), params, limits.depth)

    def with_params(self, **params: Any) -> Workflow:
        return Workflow(self.doc, self.registry, {**self.params, **params}, self._memo)

    def checked(self) -> CheckedGraph:
        """The document checked (structure, kinds, scopes), once for every parameter set."""
        hit = self._memo.get("checked")
        if hit is None:
            with fewer_gc_passes():
                checked, problems = _check.check(self.doc, self.registry)
            hit = self._memo["checked"] = checked if checked is not None and not problems else problems
        if isinstance(hit, list):  # remembered problems: a fresh exception each time (no traceback piles up)
            raise ValidationFailed(hit)
        return hit

    def bind(self, params: dict[str, Any] | None = None, limits: Limits | None = None, read_roots=None) -> BoundGraph:
        """Checked graph + this workflow's parameters (and ``params`` on top), within the
        resource ceilings, every file it names checked (inside ``read_roots``, the folders a run
        may read, unless None): ready to plan. ``params`` is a dict of parameter values (or None)."""
        if params is not None and not isinstance(params, dict):
            raise ValidationFailed([params_not_an_object(params)])
        return bind(self.checked(), {**self.params, **(params or {})}, limits, read_roots)

    def check(self, params: dict[str, Any] | None = None, limits: Limits | None = None, read_roots=None) -> BoundGraph:
        """Everything that can be known wrong before running: raises ValidationFailed."""
        return self.bind(params, limits, read_roots)

    def problems(self, params: dict[str, Any] | None = None, limits: Limits | None = None, read_roots=None) -> list[Problem]:
        try:
            self.bind(params, limits, read_roots)
        except ValidationFailed as e:
            return e.problems
        return []


def load(path: str | Path, registry: Registry | None = None, limits: Limits | None = None) -> Workflow:
    return Workflow.load(path, registry, limits)
