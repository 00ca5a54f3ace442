"""Every node type of the library: the ``graphflow.nodes`` entry point names ``register``, which
registers each node module's own node classes, so the package's ``__init__`` stays empty and a
command that needs only the library's flags or ``graphflow models`` imports no node type.
``WORKFLOWS`` is the folder of the workflows the library ships, which graphflow finds through the
same entry point (``graphflow run txt2img`` from any folder; see graphflow/node/shipped.py)."""

from __future__ import annotations

import re
from pathlib import Path

#: package data, installed with the library: every workflow here runs by its name
WORKFLOWS = Path(__file__).with_name("workflows")
#: translators from other tools' formats, by name (graphflow/node/importers.py): the server's
#: ComfyUI routes translate the prompts they are sent with the "comfy" one
IMPORTERS = {"comfy": "graphflow_nodes.comfy.translate"}

NODE_MODULES = (
    "images", "masks", "loading.lora", "loading.freeu", "loading.models", "loading.parts",
    "stages.encoders", "stages.weighting", "stages.tokens", "stages.before_denoise", "stages.scheduling", "stages.denoise", "stages.decoders",
    "stages.inpaint",
    "sdxl.encoders", "sdxl.before_denoise", "sdxl.denoise",
    "pixel.before_denoise", "pixel.denoise", "pixel.decoders",
    "flow.encoders", "flow.before_denoise", "flow.denoise", "flow.decoders",
    "upscale.resize", "upscale.upscalers", "comfy.nodes", "comfy.inpaint",
    "control.t2i_adapter", "control.ip_adapter",
    "control.preprocessors", "control.controlnet", "control.sd3", "control.flux",
)


#: a node class statement with its type name (``class X(Node, name="X", …)``)
_DECLARED = re.compile(r'^class\s+\w+\s*\((?:[^()]|\([^()]*\))*?\bname\s*=\s*"([^"]+)"', re.M)


def declared_types() -> dict[str, str]:
    """Each node type's module, read from the modules' source without importing them: a hint for
    the registry's lazy loading (a type it misses or misplaces only makes every module load)."""
    here = Path(__file__).parent
    found: dict[str, str] = {}
    for name in NODE_MODULES:
        source = (here / (name.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        found.update(dict.fromkeys(_DECLARED.findall(source), f"graphflow_nodes.{name}"))
    return found


def register(registry) -> None:
    """Each node module's types, imported when a workflow first names one of them (building ~100
    node types' pydantic models was most of ``graphflow validate``), and the folders the library
    reads by its own conventions (the models folders, the shipped models, configs and samples),
    which a confined executor allows."""
    from graphflow_nodes.loading.files import library_read_roots

    registry.register_lazy([f"graphflow_nodes.{name}" for name in NODE_MODULES], declared_types(), "graphflow_nodes")
    registry.add_read_roots(library_read_roots)
    from graphflow_nodes.comfy.document import read as read_comfy

    registry.add_reader(read_comfy)  # run/validate take ComfyUI prompts and pictures, translated first
