"""``graphflow models``: what the models folders hold, with each file's family and size.

Families are read from what a file declares without loading a weight: a diffusers folder's
``model_index.json`` and text-encoder config, a safetensors file's header (key names and shapes).
Pickled files are listed as refused (graphflow never opens them).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from graphflow_nodes.loading.families import family_for_index
from graphflow_nodes.loading.files import KINDS, MODELS_ENV, search_folders

#: text-encoder width -> family (CLIP ViT-L/14: SD 1.x, OpenCLIP ViT-H: SD 2.x, both concatenated: SDXL)
WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _width_family(width: int | None) -> str:
    if width is None:
        return "?"
    return WIDTHS.get(width, f"sd1-like (text width {width})")


def _shapes(p: Path) -> dict[str, tuple] | None:
    from graphflow_nodes.loading.checkpoint import header_shapes
    from graphflow_nodes.loading.families import ModelError

    try:
        return header_shapes(p)
    except ModelError:
        return None


def folder_family(p: Path) -> str:
    try:
        index = json.loads((p / "model_index.json").read_text())
        known = family_for_index(index)
        family = known.name if known else f"unsupported ({index.get('_class_name')})"
        if family == "sd":
            te = json.loads((p / "text_encoder" / "config.json").read_text())
            family = _width_family(te.get("hidden_size"))
        return family
    except (OSError, ValueError, AttributeError):
        return "not a model folder"


def checkpoint_family(p: Path) -> str:
    from graphflow_nodes.loading.checkpoint import TEXT_KEYS, detect_family

    shapes = _shapes(p)
    if shapes is None:
        return "unreadable"
    family = detect_family(shapes)
    if family == "sd1":
        width = next(shapes[k][1] for k in TEXT_KEYS["text_encoder"] if k in shapes)
        return _width_family(width) if width != 768 else "sd1"
    return family or "not a checkpoint"


def lora_family(p: Path) -> str:
    shapes = _shapes(p)
    if shapes is None:
        return "unreadable"
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in shapes):
        return "sdxl"
    for k, s in shapes.items():  # the cross-attention key projection reads the text encoder's width
        if ("attn2" in k and "to_k" in k) and ("lora_A" in k or "lora_down" in k):
            return _width_family(s[1])
    return "?"


def embedding_family(p: Path) -> str:
    shapes = _shapes(p)
    if shapes is None:
        return "unreadable"
    if {"clip_l", "clip_g"} <= set(shapes):
        return "sdxl"
    widths = {s[-1] for s in shapes.values() if s}
    return _width_family(widths.pop()) if len(widths) == 1 else "?"


def upscaler_family(p: Path) -> str:
    from graphflow_nodes.upscale.esrgan import UpscalerError, basicsr_names, shape_of

    shapes = _shapes(p)
    if shapes is None:
        return "unreadable"
    try:
        names = basicsr_names(shapes)
        return shape_of({names[k]: v for k, v in shapes.items()}).describe()
    except UpscalerError as e:
        return f"not an upscaler graphflow runs: {e}"


def adapter_family(p: Path) -> str:
    """A T2I-Adapter folder's family from its config: SDXL's adapters are ``full_adapter_xl``."""
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return "not an adapter folder"
    if config.get("_class_name") != "T2IAdapter":
        return f"not a T2I-Adapter ({config.get('_class_name')})"
    if not (p / "diffusion_pytorch_model.safetensors").is_file():
        return "refused: a pickle (.safetensors only)" if any(p.glob("*.bin")) else "no weights"
    return "sdxl" if str(config.get("adapter_type", "")).endswith("_xl") else "sd1-like"


def ip_adapter_family(p: Path) -> str:
    """An IP-Adapter file's family: the width of the text context its attention layers read."""
    shapes = _shapes(p)
    if shapes is None:
        return "unreadable"
    widths = {s[1] for k, s in shapes.items() if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight")}
    return _width_family(widths.pop()) if len(widths) == 1 else "not an IP-Adapter"


def controlnet_family(p: Path) -> str:
    from graphflow_nodes.control.controlnet import read_controlnet
    from graphflow_nodes.loading.families import ModelError

    try:
        return f"{read_controlnet(p)[0]} ControlNet"
    except ModelError:
        return "not a ControlNet"


def describe(p: Path, kind: str) -> dict:
    from graphflow_nodes.loading.checkpoint import PICKLE_SUFFIXES

    if p.suffix.lower() in PICKLE_SUFFIXES:
        family = "refused: a pickle (.safetensors only)"
    elif kind == "checkpoints":
        family = folder_family(p) if p.is_dir() else checkpoint_family(p)
    elif kind == "adapters":
        family = adapter_family(p)
    elif kind == "controlnet":
        family = controlnet_family(p)
    elif p.suffix.lower() != ".safetensors":
        family = "not .safetensors"
    else:
        family = {"loras": lora_family, "embeddings": embedding_family, "upscalers": upscaler_family,
                  "ip_adapters": ip_adapter_family}[kind](p)
    return {"kind": kind, "name": p.name, "family": family, "bytes": _size(p), "path": str(p)}


def catalog() -> list[dict]:
    """Every entry of every models folder, in search order; the first of a name wins a lookup."""
    rows = []
    for kind in KINDS:
        seen = set()
        for folder in search_folders(kind):
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.name.startswith("."):
                    continue
                if kind == "checkpoints" and p.is_dir() and not (p / "model_index.json").is_file():
                    continue
                if kind in ("adapters", "controlnet") and p.is_dir() and not (p / "config.json").is_file():
                    continue  # T2I-Adapters and ControlNets are diffusers folders (a ControlNet may also be one file)
                if kind == "adapters" and not p.is_dir():
                    continue
                if kind not in ("checkpoints", "adapters", "controlnet") and p.is_dir():
                    continue  # (an IP-Adapter's image_encoder/ is read with it)
                row = describe(p, kind)
                row["shadowed"] = p.name in seen  # an earlier folder has a file of that name
                seen.add(p.name)
                rows.append(row)
    return rows


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_models(args) -> int:
    rows = catalog()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=1))
        return 0
    folders = ", ".join(str(f.parent) for f in search_folders("loras")[:-1]) or "none (set GRAPHFLOW_MODELS or --models-dir)"
    print(f"models folders: {folders}; then graphflow's shipped files")
    if not rows:
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        note = "  (shadowed by an earlier folder)" if r["shadowed"] else ""
        print(f"{r['kind']:<12} {r['name']:<{width}}  {r['family']:<22} {human(r['bytes']):>10}  {os.path.dirname(r['path'])}{note}")
    return 0


class ModelsDirFlag:
    """``--models-dir DIR`` on every `graphflow` command, contributed through the
    ``graphflow.flags`` entry point: the models folders are this library's convention, so the flag
    is declared here and the CLI knows nothing of it. The folders reach the file resolvers (in this
    process and in a sweep's workers) as ``GRAPHFLOW_MODELS``."""

    def add(self, parser) -> None:
        parser.add_argument("--models-dir", metavar="DIR", action="append",
                            help="a models folder (checkpoints/, loras/, embeddings/) where workflows' bare file names are "
                                 "looked up; repeatable; default $GRAPHFLOW_MODELS")

    def apply(self, args) -> None:
        """Raises ValueError (the CLI's exit 2) for a folder that is not there: a mistyped path
        would otherwise be searched in silence, and the workflow fail later with "no checkpoint
        named ..." that does not say why."""
        if not getattr(args, "models_dir", None):
            return
        wrong = [f"{d} {'is not a folder' if os.path.exists(d) else 'does not exist'}" for d in args.models_dir if not os.path.isdir(d)]
        if wrong:
            raise ValueError(f"argument --models-dir: {'; '.join(wrong)} (a models folder holds checkpoints/, loras/ and "
                             f"embeddings/)")
        os.environ[MODELS_ENV] = os.pathsep.join(os.path.abspath(d) for d in args.models_dir)


MODELS_DIR_FLAG = ModelsDirFlag()


def add_command(sub):
    """The `graphflow models` command, which this library contributes to graphflow's command line
    through the ``graphflow.commands`` entry point (the CLI adds the contributed flags to it)."""
    sp = sub.add_parser("models", help="what the models folders hold: checkpoints, LoRAs, embeddings, with family and size")
    sp.add_argument("--json", action="store_true", help="machine-readable list")
    sp.set_defaults(func=cmd_models)
    # `graphflow import comfy` comes through the same entry point: a new one is installed metadata,
    # and an environment installed before it (every worktree sharing one) would fail to start the CLI.
    from graphflow_nodes.comfy.command import add_command as add_import

    add_import(sub)
    return sp


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cmd_models(type("A", (), {"json": "--json" in sys.argv})()))
