"""The workflows installed node packs ship, found by name, so ``graphflow run txt2img`` works from
any folder after a plain ``pip install`` (no checkout, no ``workflows/`` beside the user).

A pack ships workflows by naming their folder in ``WORKFLOWS`` in the module its ``graphflow.nodes``
entry point points into (the shipped library: ``graphflow_nodes.library.WORKFLOWS``). That module
is imported, not the node types: the module is the pack's cheap front door, and a new convention
needs no new entry point, so environments installed before it keep working. The engine stays
ignorant of any particular library.

Only a miss costs anything: a path that names a file is read as it is, and the entry points are
read once, when a name (or a mistyped path) needs them."""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points
from pathlib import Path

from graphflow.node.registry import ENTRY_POINT_GROUP
from graphflow.problems import Problem, ValidationFailed

#: the attribute of a pack's entry-point module that names its folder of shipped workflows
ATTRIBUTE = "WORKFLOWS"
SUFFIX = ".json"


@functools.cache
def folders() -> tuple[Path, ...]:
    """Each installed pack's workflow folder, in entry-point name order (the first pack's name wins
    where two ship the same). A pack that fails to import is left out here: building the registry
    reports it (``bad_plugin``), naming the pack."""
    found: list[Path] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            module = importlib.import_module(ep.module)
        except Exception:  # noqa: BLE001 - reported by the registry, not here
            continue
        folder = getattr(module, ATTRIBUTE, None)
        if folder is not None and Path(folder).is_dir() and Path(folder).resolve() not in [f.resolve() for f in found]:
            found.append(Path(folder))
    return tuple(found)


def workflows() -> dict[str, Path]:
    """name (the file's stem: ``txt2img``) → the shipped file."""
    named: dict[str, Path] = {}
    for folder in folders():
        for path in sorted(folder.glob("*" + SUFFIX)):
            named.setdefault(path.stem, path)
    return named


def find(name: str | os.PathLike) -> Path | None:
    """The shipped workflow a bare name means (``txt2img`` or ``txt2img.json``), else None. A name
    with a folder in it is a path, never a shipped name."""
    text = os.fspath(name)
    if not text or os.sep in text or (os.altsep and os.altsep in text):
        return None
    return workflows().get(text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text)


def workflow_file(path: str | os.PathLike) -> Path:
    """The file a workflow argument names: a file as given, else a shipped workflow of that name.
    A path that names nothing raises ``unreadable_file`` with what was probably meant: the
    nearest existing path (``workflows/txt2img.json`` for ``workflow/txt2img.json``), the nearest
    shipped names, or the list of shipped names."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        return p
    shipped = find(path)
    if shipped is not None:
        return shipped
    if p.exists():  # a folder: the reader says so
        return p
    raise ValidationFailed([Problem("unreadable_file", f"cannot read {os.fspath(path)}: No such file or directory; {_hint(p)}")])


def _hint(p: Path) -> str:
    import difflib

    guesses = []
    near = _nearest_existing(p)
    if near is not None:
        guesses.append(str(near))
    names = sorted(workflows())
    stem = p.name[: -len(SUFFIX)] if p.name.endswith(SUFFIX) else p.stem or p.name
    close = [stem] if stem in names else difflib.get_close_matches(stem, names, n=3, cutoff=0.6)
    if close:
        guesses.append(("the shipped workflow " if len(close) == 1 else "a shipped workflow: ") + ", ".join(map(repr, close)))
    if guesses:
        return "did you mean " + ", or ".join(guesses) + "?"
    if names:
        return "shipped workflows, loaded by name: " + ", ".join(names)
    return "no installed node pack ships workflows"


def _nearest_existing(p: Path, limit: int = 2000) -> Path | None:
    """``p`` with each missing part replaced by the closest name in its folder, when that names a
    file: a typo in a folder or file name, corrected one part at a time."""
    import difflib

    parts = p.parts
    if not parts:
        return None
    start = 1 if p.is_absolute() else 0
    here = Path(parts[0]) if start else Path()
    changed = False
    for part in parts[start:]:
        if part in (".", "..") or (here / part).exists():
            here = here / part
            continue
        try:
            with os.scandir(here) as it:
                names = [e.name for _, e in zip(range(limit), it)]
        except OSError:
            return None
        match = difflib.get_close_matches(part, names, n=1, cutoff=0.75)
        if not match:
            return None
        here, changed = here / match[0], True
    return here if changed and here.is_file() else None
