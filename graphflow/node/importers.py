"""Translators from other tools' workflow formats, found in the installed node packs: a pack whose
``graphflow.nodes`` entry-point module has ``IMPORTERS = {"comfy": "package.module"}`` offers that
module as the ``comfy`` translator (a ``translate(prompt)`` function, and maybe ``object_info()``).

The same convention as ``shipped.WORKFLOWS``: the module is named, not imported, until a request
needs it, and a new convention needs no new entry point, so environments installed before it keep
working. The engine and the server stay ignorant of any particular format's node library: the
server asks for "comfy" and gets whatever module a pack names."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from types import ModuleType

from graphflow.node.registry import ENTRY_POINT_GROUP

#: the attribute of a pack's entry-point module that names its translators
ATTRIBUTE = "IMPORTERS"


@functools.cache
def importer(name: str) -> ModuleType | None:
    """The first installed pack's (entry-point name order) translator called ``name``, imported;
    None when no pack offers one, or the one offered does not import (the caller says which is
    missing)."""
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            module = importlib.import_module(ep.module)
        except Exception:  # noqa: BLE001 - reported by the registry, not here
            continue
        target = (getattr(module, ATTRIBUTE, None) or {}).get(name)
        if target is None:
            continue
        try:
            return importlib.import_module(target)
        except ImportError:
            return None
    return None
