"""Which folder a sweep writes to, and whether it may.

A sweep's folder holds one sweep: its index, its item folders, its contact sheet. Two sweeps
sharing a folder leave one index mixing both and two sweeps' pictures in the same item folders,
with nothing to tell them apart, so the folder is chosen and claimed here, before anything runs:

- By default each sweep gets a folder of its own, ``sweeps/<workflow stem>-<YYYYMMDD-HHMMSS>``
  (``-2``, ``-3``… when two start in the same second); ``name`` picks ``sweeps/<name>``;
  ``out_dir`` any folder.
- A folder that already holds a sweep's index is refused, unless ``resume`` (continue that sweep:
  only the items without an ``ok`` line run) or ``force`` (replace it: its index, contact sheet
  and item folders are removed first; nothing else in the folder is touched).
- ``resume`` without a name or folder continues the newest default folder of the same workflow,
  so the command printed after Ctrl-C works as typed.

The CLI and the Python API both come through ``choose`` and ``claim``, so they behave alike.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

__all__ = ["SWEEPS", "FolderInUse", "NothingToResume", "choose", "claim", "holds_sweep", "stem"]

SWEEPS = "sweeps"  # the default parent of sweep folders, relative to the working directory
INDEX = "index.jsonl"
_OUTPUTS = ("index.jsonl", "contact_sheet.png", "contact_sheet.json")  # what a sweep writes, besides item_NNNNN/
_ITEM = re.compile(r"item_\d{5,}")
_STAMP = re.compile(r"-(\d{8}-\d{6})(?:-(\d+))?")


class FolderInUse(ValueError):
    """The folder already holds another sweep's index: continuing it or replacing it must be asked
    for. ``folder`` and ``lines`` (the index's lines) let a caller word the message its way."""

    def __init__(self, folder: Path, lines: int, how: str = "resume=True continues it, force=True replaces it, "
                                                           "or give another out_dir or name") -> None:
        self.folder, self.lines = folder, lines
        super().__init__(f"{folder} already holds a sweep ({INDEX}, {lines} item{'s' * (lines != 1)}): {how}")


class NothingToResume(ValueError):
    """``resume`` with no folder named, and no earlier default folder of this workflow."""


def stem(workflow) -> str:
    """The workflow file's name without its extension ("sweep" for a workflow made in memory): the
    first part of its default sweep folders' names."""
    source = getattr(getattr(workflow, "doc", None), "source", "") or ""
    if not source or source.startswith("<"):
        return "sweep"
    return re.sub(r"[^\w.-]+", "_", Path(source).stem) or "sweep"


def holds_sweep(folder: Path) -> bool:
    return (folder / INDEX).is_file()


def _newest(parent: Path, prefix: str) -> Path | None:
    """The newest ``<prefix>-<stamp>[-n]`` folder under ``parent`` holding an index."""
    found = []
    if parent.is_dir():
        for p in parent.iterdir():
            m = _STAMP.fullmatch(p.name[len(prefix):]) if p.name.startswith(prefix) else None
            if m and holds_sweep(p):
                found.append((m.group(1), int(m.group(2) or 1), p))
    return max(found)[2] if found else None


def choose(workflow, out_dir: str | Path | None = None, name: str | None = None, resume: bool = False,
           now: float | None = None) -> Path:
    """The sweep's folder: ``out_dir``, else ``sweeps/<name>``, else (``resume``) the newest default
    folder of this workflow, else a new ``sweeps/<stem>-<stamp>`` no other sweep has taken."""
    if out_dir is not None and name is not None:
        raise ValueError("give a sweep's folder (out_dir / --out) or its name (name / --name), not both")
    if out_dir is not None:
        return Path(out_dir)
    if name is not None:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"a sweep's name is one folder name under {SWEEPS}/, got {name!r}")
        return Path(SWEEPS) / name
    prefix = stem(workflow)
    if resume:
        found = _newest(Path(SWEEPS), prefix)
        if found is None:
            raise NothingToResume(f"nothing to resume: no earlier sweep of {prefix} in {SWEEPS}/ "
                                  f"(name the sweep's folder with --out or --name)")
        return found
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    folder, n = Path(SWEEPS) / base, 1
    while folder.exists():  # two sweeps started in the same second
        n += 1
        folder = Path(SWEEPS) / f"{base}-{n}"
    return folder


def claim(folder: Path, resume: bool = False, force: bool = False) -> None:
    """Raise FolderInUse when ``folder`` holds a sweep and neither ``resume`` nor ``force`` says what
    to do with it; with ``force``, remove that sweep's outputs (nothing else in the folder)."""
    if resume and force:
        raise ValueError("resume continues the sweep in the folder and force replaces it: give one, not both")
    if not holds_sweep(folder) or resume:
        return
    if not force:
        raise FolderInUse(folder, _count_lines(folder / INDEX))
    for p in folder.iterdir():
        if p.name in _OUTPUTS and p.is_file():
            p.unlink()
        elif _ITEM.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
