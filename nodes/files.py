"""Where the files nodes read are found, and their cache identities: the cache must notice an
edited file. No torch here: this runs while fingerprinting."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
MODELS_DIR = PACKAGE_DIR / "models"


def file_identity(path: Path) -> list:
    """Size and modification time of a file, or of every file below a folder."""
    if path.is_dir():
        out = []
        for root, _, files in os.walk(path):
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                out.append([os.path.relpath(os.path.join(root, f), path), st.st_size, st.st_mtime_ns])
        return [str(path.resolve()), sorted(out)]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def resolve_model_path(name_or_path: str) -> Path:
    """A short name (``tiny-sd``) names a model shipped with graphflow; anything else is a path."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    if "/" not in name_or_path and (MODELS_DIR / name_or_path).is_dir():
        return MODELS_DIR / name_or_path
    return p


def resolve_input_file(name: str) -> Path:
    """A path as given (relative to the working folder), else a file shipped inside the node
    library (``samples/red-circle.png``), so shipped workflows run from any folder."""
    p = Path(name).expanduser()
    if p.exists() or p.is_absolute():
        return p
    q = PACKAGE_DIR / name
    return q if q.exists() else p


class ReadsFile:
    """Mixin for nodes whose ``path`` input names a file they read: the file's size and
    modification time join the cache key, so an edited file is read again."""

    @classmethod
    def identity(cls, literals: dict) -> list | None:
        p = resolve_input_file(literals.get("path", ""))
        return file_identity(p) if p.is_file() else None
