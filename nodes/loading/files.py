"""Where the files nodes read are found. These resolvers are what ``FileInput`` markers name: the
engine calls them at validation, to check every file a workflow names before anything runs, and
while fingerprinting, to find the file whose content joins the cache key; so they are
module-level functions, cheap and free of torch. A name they cannot place they report by raising
``InputNotFound`` with the folders they looked in and the names that are there (the message
suggests the nearest), or ``InputRefused`` for a name that would leave its folders: validation
turns either into a problem naming the node and the field (exit 2), before any model loads.

The models folder convention: ``GRAPHFLOW_MODELS`` (``graphflow run --models-dir DIR`` sets it)
names one or more folders (separated by ``os.pathsep``), each holding ``checkpoints/`` (diffusers
folders and single-file ``.safetensors`` checkpoints), ``loras/``, ``embeddings/``, ``upscalers/``
(ESRGAN-family ``.safetensors``), ``controlnet/``, ``adapters/`` and ``ip_adapters/``. A workflow
says a bare name (``"path": "my-model.safetensors"``) and runs on any machine that has that file
there. graphflow's own shipped files come last: ``tiny-sd``, ``tiny-sd-cross.safetensors``,
``my-shape.safetensors``. A name is looked up only inside those folders and may not leave them
(``..``, or a link pointing outside, is refused); a path written as a path (absolute, or starting
with ``./`` or ``~``) is the user's own choice and is read where it is, unless
``GRAPHFLOW_MODELS_ONLY=1`` confines every model file to the configured folders (for servers that
run other people's workflows).
"""

from __future__ import annotations

import os
from pathlib import Path

from graphflow.node_api import InputFileError, InputNotFound, InputRefused, names_in

PACKAGE_DIR = Path(__file__).parent.parent  # graphflow_nodes/, which holds models/ and configs/ beside loading/
MODELS_DIR = PACKAGE_DIR / "models"
#: the configs single-file checkpoints are built with (no weights): sd15, sd2-base, sd2-v, sdxl
CONFIGS_DIR = PACKAGE_DIR / "configs"
#: pictures shipped for the workflows that start from one (``samples/red-circle-on-blue.png``)
SAMPLES_DIR = PACKAGE_DIR / "samples"
MODELS_ENV = "GRAPHFLOW_MODELS"
MODELS_ONLY_ENV = "GRAPHFLOW_MODELS_ONLY"

#: the kinds of model file and where graphflow's own shipped files of each kind live
KINDS = ("checkpoints", "loras", "embeddings", "upscalers", "controlnet", "adapters", "ip_adapters")
SHIPPED = {
    "checkpoints": MODELS_DIR,
    "loras": MODELS_DIR / "loras",
    "embeddings": MODELS_DIR / "tiny-sd" / "textual_inversion",
    "upscalers": MODELS_DIR / "upscalers",
    "adapters": MODELS_DIR / "adapters",
    "ip_adapters": MODELS_DIR / "ip_adapters",
    "controlnet": MODELS_DIR / "controlnet",  # none shipped: the models folders' controlnet/ (LoadControlNet)
}


#: where a bare name is looked up, as a not-found message says it
WHERE_HINT = f"add a models folder with --models-dir or {MODELS_ENV}"
#: what one of each kind is called in a message
WHAT = {"checkpoints": "checkpoint", "loras": "LoRA", "embeddings": "embedding", "upscalers": "upscaler",
        "controlnet": "ControlNet", "adapters": "T2I-Adapter", "ip_adapters": "IP-Adapter"}
#: the suffixes of Python pickles, which can run code as they are read: refused unread
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class ModelPathError(InputRefused):
    """A model file name that would leave the models folders, or is no name at all."""


class ModelNotFound(InputNotFound, ModelPathError):
    """A well-formed name that no models folder holds."""


def models_dirs() -> list[Path]:
    """The configured models folders, in search order (``GRAPHFLOW_MODELS``)."""
    raw = os.environ.get(MODELS_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def search_folders(kind: str) -> list[Path]:
    """Where a bare name of this kind is looked up: each models folder's ``kind/``, then the
    shipped files."""
    return [d / kind for d in models_dirs()] + [SHIPPED[kind]]


def library_read_roots() -> list[Path]:
    """The folders this library's nodes read by its own conventions, which a confined executor
    (a server) allows whatever it is told (``Registry.add_read_roots``): the configured models
    folders, and the shipped models, configs and samples."""
    return [*models_dirs(), MODELS_DIR, CONFIGS_DIR, SAMPLES_DIR]


def _near(rel: Path, folders: list[Path]) -> list[str]:
    """The names beside where ``rel`` was looked for in each folder: what a typo is compared with."""
    sub = rel.parent
    return [str(sub / n) if str(sub) != "." else n for f in folders for n in names_in(f / sub)]


def _is_explicit_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "~", "." + os.sep)) or name in (".", "~")


def _through_link(folder: Path, rel: Path) -> bool:
    """Is any part of ``rel`` under ``folder`` a link? Only then can it lead out (``..`` is
    refused before): a stat per part, where following every link costs one per part of the whole path."""
    here = str(folder)
    for part in rel.parts:
        here = os.path.join(here, part)
        if os.path.islink(here):
            return True
    return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def locate(name: str, kind: str) -> Path:
    """The file or folder a workflow's model name means, or a ModelPathError saying why not
    (ModelNotFound: where it looked, and the nearest name there)."""
    if not name or "\0" in name:
        raise ModelPathError(f"empty or invalid {WHAT[kind]} name {name!r}")
    strict = os.environ.get(MODELS_ONLY_ENV, "") not in ("", "0")
    if not _is_explicit_path(name):
        rel = Path(name)
        if ".." in rel.parts:
            raise ModelPathError(f"{name!r}: a model name may not contain '..' (it must stay inside the models folders)")
        for folder in search_folders(kind):
            p = folder / rel
            if p.exists():
                if _through_link(folder, rel) and not _inside(p, folder):
                    raise ModelPathError(f"{name!r} in {folder} points outside that folder (a link); refused")
                return p
        if not strict and Path(name).exists():  # a relative path from the working folder, as before
            return Path(name)
        folders = search_folders(kind)
        raise ModelNotFound(name, folders, _near(rel, folders), what=WHAT[kind], hint=WHERE_HINT)
    p = Path(name).expanduser()
    if strict and not any(_inside(p, d) for d in models_dirs()):
        raise ModelPathError(f"{name!r} is outside the models folders ({MODELS_ONLY_ENV} is set)")
    if not p.exists():
        raise ModelNotFound(name, [p.parent], [os.path.join(os.path.dirname(name), n) for n in names_in(p.parent)], what=WHAT[kind])
    return p


#: the folders ComfyUI keeps a model's separate parts in (UNETLoader, DualCLIPLoader, VAELoader),
#: where a models folder laid out as ComfyUI's has them: looked in after ``checkpoints/``
PART_FOLDERS = ("diffusion_models", "unet", "text_encoders", "clip", "vae")


def resolve_model_path(name_or_path: str) -> Path:
    """A model folder or single-file checkpoint: a name in the models folders' ``checkpoints/``
    (``tiny-sd`` is shipped), else in their ComfyUI part folders (``PART_FOLDERS``), or a path."""
    if not name_or_path.strip():
        raise InputFileError("no model folder given: set the workflow's model parameter (--set model=PATH)", code="missing_file")
    try:
        return locate(name_or_path, "checkpoints")
    except ModelNotFound:
        rel = Path(name_or_path)
        if not _is_explicit_path(name_or_path):
            for folder in (d / sub for d in models_dirs() for sub in PART_FOLDERS):
                p = folder / rel
                if p.is_file() and not (_through_link(folder, rel) and not _inside(p, folder)):
                    return p
        raise


def resolve_config_path(name_or_path: str) -> Path | None:
    """LoadModel's ``config``: a shipped config's name (``configs/``), else a diffusers folder as
    ``resolve_model_path`` finds it; None when empty (chosen from the checkpoint's keys)."""
    if not name_or_path.strip():
        return None
    if "/" not in name_or_path and (CONFIGS_DIR / name_or_path / "model_index.json").is_file():
        return CONFIGS_DIR / name_or_path
    try:
        return locate(name_or_path, "checkpoints")
    except ModelNotFound as e:  # the shipped configs are names too
        shipped = [p.name for p in CONFIGS_DIR.iterdir() if p.is_dir()]
        raise ModelNotFound(name_or_path, [*e.looked_in, CONFIGS_DIR], [*_near(Path(name_or_path), search_folders("checkpoints")), *shipped],
                            what="config", hint=WHERE_HINT) from None


def resolve_controlnet_path(name_or_path: str) -> Path:
    """A ControlNet: a diffusers folder or a single ``.safetensors`` file, a name in the models
    folders' ``controlnet/``, or a path."""
    if not name_or_path.strip():
        raise InputFileError("no ControlNet given: set the workflow's controlnet parameter (--set controlnet=PATH)", code="missing_file")
    return locate(name_or_path, "controlnet")


def resolve_lora_path(name_or_path: str) -> Path:
    """A LoRA file: a name in the models folders' ``loras/``, or a path."""
    return locate(name_or_path, "loras")


def resolve_upscaler_path(name_or_path: str) -> Path:
    """An upscaler file (ESRGAN and its kin): a name in the models folders' ``upscalers/``, or a
    path. Most upscalers are shared as ``.pth`` pickles, which can run code as they are read: the
    name alone refuses one, before anything opens it."""
    if name_or_path.lower().endswith(PICKLE_SUFFIXES):
        raise InputRefused(f"{name_or_path!r} is a Python pickle ({Path(name_or_path).suffix}), which can run code when read: "
                           "refused unread; graphflow reads upscalers as .safetensors only (convert it with a tool you trust)")
    return locate(name_or_path, "upscalers")


def resolve_adapter_path(name_or_path: str) -> Path:
    """A T2I-Adapter folder (diffusers' layout): a name in the models folders' ``adapters/``, or a path."""
    return locate(name_or_path, "adapters")


def resolve_ip_adapter_path(name_or_path: str) -> Path:
    """An IP-Adapter ``.safetensors`` file: a name in the models folders' ``ip_adapters/``, or a path."""
    return locate(name_or_path, "ip_adapters")


def resolve_image_encoder_path(name_or_path: str) -> Path | None:
    """An IP-Adapter's CLIP vision encoder folder, looked up as IP-Adapter files are; None when
    empty (the ``image_encoder/`` folder beside the IP-Adapter file, h94/IP-Adapter's layout)."""
    if not name_or_path.strip():
        return None
    return locate(name_or_path, "ip_adapters")


def locate_embedding(name: str) -> Path:
    """A textual-inversion embedding: a name in the models folders' ``embeddings/``, else a file
    as ``resolve_input_file`` finds it (the shipped workflows name it by its path in the package).
    A name that would leave the folders is refused, not looked up elsewhere."""
    try:
        return locate(name, "embeddings")
    except ModelNotFound as e:
        try:
            return resolve_input_file(name)
        except InputNotFound as also:
            raise ModelNotFound(name, [*e.looked_in, *also.looked_in], [*_near(Path(name), search_folders("embeddings")),
                                *input_candidates(name)], what="embedding", hint=WHERE_HINT) from None


resolve_embedding_path = locate_embedding


def input_candidates(name: str) -> list[str]:
    """The names beside where ``resolve_input_file`` looked for ``name``, and the shipped samples."""
    return [*_near(Path(name), [Path.cwd()]), *(f"samples/{n}" for n in names_in(SAMPLES_DIR))]


def resolve_input_file(name: str) -> Path:
    """A path as given (relative to the working folder), else a file shipped inside the node
    library (``samples/red-circle.png``), so shipped workflows run from any folder."""
    p = Path(name).expanduser()
    if p.exists() or p.is_absolute():
        return p
    q = PACKAGE_DIR / name
    if q.exists():
        return q
    if not name:
        raise InputFileError("no file given", code="missing_file")
    raise InputNotFound(name, [Path.cwd() / p.parent if str(p.parent) != "." else Path.cwd(), PACKAGE_DIR / p.parent],
                        input_candidates(name))
