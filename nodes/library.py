"""Every node type of the library: the ``graphflow.nodes`` entry point names ``register``, which
registers each node module's own node classes, so the package's ``__init__`` stays empty and a
command that needs only the library's flags or ``graphflow models`` imports no node type."""

from __future__ import annotations

import importlib

NODE_MODULES = (
    "images", "loading.lora", "loading.models",
    "stages.encoders", "stages.tokens", "stages.before_denoise", "stages.scheduling", "stages.denoise", "stages.decoders",
    "sdxl.encoders", "sdxl.before_denoise", "sdxl.denoise",
    "pixel.before_denoise", "pixel.denoise", "pixel.decoders",
    "flow.encoders", "flow.before_denoise", "flow.denoise", "flow.decoders",
)


def register(registry) -> None:
    for name in NODE_MODULES:
        registry.register_module(importlib.import_module(f"graphflow_nodes.{name}"), "graphflow_nodes")
