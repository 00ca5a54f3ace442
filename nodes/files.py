"""Where the files nodes read are found. These resolvers are what ``FileInput`` markers name: the
engine calls them while fingerprinting to find the file whose content joins the cache key, so
they must be module-level functions, cheap, and free of torch."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
MODELS_DIR = PACKAGE_DIR / "models"


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
