"""The Python face of a workflow file: load, set parameters, validate, run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from graphflow.document import Document, load_json_file, read_document
from graphflow.gc_tuning import fewer_gc_passes
from graphflow.problems import Problem, ValidationFailed
from graphflow.registry import Registry, default_registry
from graphflow.validate import Checked, check

_DEFAULT_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process's default registry (built-ins and installed node packs), built on first use."""
    global _DEFAULT_REGISTRY
    if _DEFAULT_REGISTRY is None:
        _DEFAULT_REGISTRY = default_registry()
    return _DEFAULT_REGISTRY


class Workflow:
    """An immutable workflow document plus parameter values. ``with_params`` returns a new one,
    so the same object can be run again and again with other settings."""

    def __init__(self, doc: Document, registry: Registry, params: dict[str, Any] | None = None) -> None:
        self.doc = doc
        self.registry = registry
        self.params = dict(params or {})
        self._checked: dict[bytes, Checked] = {}

    @classmethod
    def from_dict(cls, data: dict[str, Any], registry: Registry | None = None, source: str = "<dict>") -> Workflow:
        # a private copy (orjson round trip: fast, and proves the value is plain JSON)
        try:
            data = orjson.loads(orjson.dumps(data))
        except TypeError as e:
            raise ValidationFailed([Problem("invalid_document", f"not plain JSON data: {e}")]) from None
        return cls._from_json(data, registry, source)

    @classmethod
    def _from_json(cls, data: dict[str, Any], registry: Registry | None, source: str) -> Workflow:
        with fewer_gc_passes():
            doc, problems = read_document(data, source)
        if problems or doc is None:
            raise ValidationFailed(problems)
        return cls(doc, registry or globals()["registry"]())

    @classmethod
    def load(cls, path: str | Path, registry: Registry | None = None) -> Workflow:
        return cls._from_json(load_json_file(path), registry, str(path))

    def with_params(self, **params: Any) -> Workflow:
        w = Workflow(self.doc, self.registry, {**self.params, **params})
        w._checked = self._checked  # results of checking depend only on params, which key the memo
        return w

    def problems(self, params: dict[str, Any] | None = None) -> list[Problem]:
        try:
            self.check(params)
        except ValidationFailed as e:
            return e.problems
        return []

    def check(self, params: dict[str, Any] | None = None) -> Checked:
        merged = {**self.params, **(params or {})}
        try:
            key = orjson.dumps(merged, option=orjson.OPT_SORT_KEYS, default=repr)
        except TypeError:  # an int beyond 64 bits
            key = repr(sorted(merged.items(), key=lambda kv: kv[0])).encode()
        hit = self._checked.get(key)
        if hit is not None:
            return hit
        with fewer_gc_passes():
            checked, problems = check(self.doc, self.registry, merged)
        if problems or checked is None:
            raise ValidationFailed(problems)
        if len(self._checked) > 64:  # a long-lived process sweeping parameters
            self._checked.clear()
        self._checked[key] = checked
        return checked



def load(path: str | Path, registry: Registry | None = None) -> Workflow:
    return Workflow.load(path, registry)
