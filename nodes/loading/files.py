"""Where the files nodes read are found. These resolvers are what ``FileInput`` markers name: the
engine calls them while fingerprinting to find the file whose content joins the cache key, so
they must be module-level functions, cheap, free of torch, and never raise: a name they cannot
place resolves to a path that does not exist, and the node's ``run`` reports why (``locate``).

The models folder convention: ``GRAPHFLOW_MODELS`` (``graphflow run --models-dir DIR`` sets it)
names one or more folders (separated by ``os.pathsep``), each holding ``checkpoints/`` (diffusers
folders and single-file ``.safetensors`` checkpoints), ``loras/`` and ``embeddings/``. A workflow
says a bare name (``"path": "my-model.safetensors"``) and runs on any machine that has that file
there. graphflow's own shipped files come last: ``tiny-sd``, ``tiny-sd-cross.safetensors``,
``my-shape.safetensors``. A name is looked up only inside those folders and may not leave them
(``..``, or a link pointing outside, is refused); a path written as a path (absolute, or starting
with ``./`` or ``~``) is the user's own choice and is read where it is, unless
``GRAPHFLOW_MODELS_ONLY=1`` confines every model file to the configured folders (for servers that
run other people's workflows).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent.parent  # graphflow_nodes/, which holds models/ and configs/ beside loading/
MODELS_DIR = PACKAGE_DIR / "models"
#: the configs single-file checkpoints are built with (no weights): sd15, sd2-base, sd2-v, sdxl
CONFIGS_DIR = PACKAGE_DIR / "configs"
MODELS_ENV = "GRAPHFLOW_MODELS"
MODELS_ONLY_ENV = "GRAPHFLOW_MODELS_ONLY"

#: the kinds of model file and where graphflow's own shipped files of each kind live
KINDS = ("checkpoints", "loras", "embeddings")
SHIPPED = {
    "checkpoints": MODELS_DIR,
    "loras": MODELS_DIR / "loras",
    "embeddings": MODELS_DIR / "tiny-sd" / "textual_inversion",
}


class ModelPathError(ValueError):
    """A model file name that cannot be placed, or that would leave the models folders."""


class ModelNotFound(ModelPathError):
    """A well-formed name that no models folder holds."""


def models_dirs() -> list[Path]:
    """The configured models folders, in search order (``GRAPHFLOW_MODELS``)."""
    raw = os.environ.get(MODELS_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def search_folders(kind: str) -> list[Path]:
    """Where a bare name of this kind is looked up: each models folder's ``kind/``, then the
    shipped files."""
    return [d / kind for d in models_dirs()] + [SHIPPED[kind]]


def _is_explicit_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "~", "." + os.sep)) or name in (".", "~")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def locate(name: str, kind: str) -> Path:
    """The file or folder a workflow's model name means, or a ModelPathError saying why not."""
    if not name or "\0" in name:
        raise ModelPathError(f"empty or invalid {kind[:-1]} name {name!r}")
    strict = os.environ.get(MODELS_ONLY_ENV, "") not in ("", "0")
    if not _is_explicit_path(name):
        rel = Path(name)
        if ".." in rel.parts:
            raise ModelPathError(f"{name!r}: a model name may not contain '..' (it must stay inside the models folders)")
        for folder in search_folders(kind):
            p = folder / rel
            if p.exists():
                if not _inside(p, folder):
                    raise ModelPathError(f"{name!r} in {folder} points outside that folder (a link); refused")
                return p
        if not strict and Path(name).exists():  # a relative path from the working folder, as before
            return Path(name)
        where = ", ".join(str(f) for f in search_folders(kind))
        raise ModelNotFound(f"no {kind[:-1]} named {name!r} (looked in {where}; set {MODELS_ENV} or --models-dir)")
    p = Path(name).expanduser()
    if strict and not any(_inside(p, d) for d in models_dirs()):
        raise ModelPathError(f"{name!r} is outside the models folders ({MODELS_ONLY_ENV} is set)")
    if not p.exists():
        raise ModelNotFound(f"{p} does not exist")
    return p


def _resolve(name: str, kind: str) -> Path:
    try:
        return locate(name, kind)
    except ModelPathError:
        # a path that never exists, one per name: fingerprinted as missing, and run() says why
        return MODELS_DIR / ".missing" / kind / hashlib.blake2b(name.encode("utf-8", "replace"), digest_size=16).hexdigest()


def resolve_model_path(name_or_path: str) -> Path:
    """A model folder or single-file checkpoint: a name in the models folders' ``checkpoints/``
    (``tiny-sd`` is shipped), or a path."""
    return _resolve(name_or_path, "checkpoints")


def resolve_config_path(name_or_path: str) -> Path:
    """LoadModel's ``config``: a shipped config's name (``configs/``), else a diffusers folder as
    ``resolve_model_path`` finds it."""
    if name_or_path and "/" not in name_or_path and (CONFIGS_DIR / name_or_path / "model_index.json").is_file():
        return CONFIGS_DIR / name_or_path
    return _resolve(name_or_path, "checkpoints")


def resolve_lora_path(name_or_path: str) -> Path:
    """A LoRA file: a name in the models folders' ``loras/``, or a path."""
    return _resolve(name_or_path, "loras")


def locate_embedding(name: str) -> Path:
    """A textual-inversion embedding: a name in the models folders' ``embeddings/``, else a file
    as ``resolve_input_file`` finds it (the shipped workflows name it by its path in the package).
    A name that would leave the folders is refused, not looked up elsewhere."""
    try:
        return locate(name, "embeddings")
    except ModelNotFound:
        return resolve_input_file(name)


def resolve_embedding_path(name_or_path: str) -> Path:
    try:
        return locate_embedding(name_or_path)
    except ModelPathError:
        return _resolve(name_or_path, "embeddings")


def resolve_input_file(name: str) -> Path:
    """A path as given (relative to the working folder), else a file shipped inside the node
    library (``samples/red-circle.png``), so shipped workflows run from any folder."""
    p = Path(name).expanduser()
    if p.exists() or p.is_absolute():
        return p
    q = PACKAGE_DIR / name
    return q if q.exists() else p
