"""The registry imports a node pack's modules when a workflow names one of their types: what each
command then imports, that a stale hint never gives a wrong answer, and that duplicate names are
still refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graphflow import Registry
from graphflow.node.registry import RegistryError

ROOT = Path(__file__).resolve().parents[2]


def test_the_library_hint_names_every_type_in_its_module():
    """The source scan finds each node type where importing its module registers it: a miss would
    only cost time, so this is what keeps validate fast."""
    from graphflow_nodes import library

    eager = Registry()
    for name in library.NODE_MODULES:
        eager.register_module(f"graphflow_nodes.{name}", "graphflow_nodes")
    assert library.declared_types() == {n.type_name: n.__module__ for n in eager}
    assert len(library.declared_types()) > 90


def test_validating_a_workflow_imports_only_the_modules_it_names():
    code = ("import sys; from graphflow.cli import main\n"
            "try:\n    main(['validate', 'workflows/txt2img.json'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('graphflow_nodes.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    wf = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    from graphflow_nodes import library

    hint = library.declared_types()
    needed = {hint[t] for t in types_in(wf) if t in hint}
    assert needed <= loaded
    other_families = {m for m in loaded if m.split(".")[1] in ("sdxl", "pixel", "flow", "comfy", "control", "upscale")}
    assert other_families <= {"graphflow_nodes.comfy", "graphflow_nodes.comfy.document"}, other_families  # the ComfyUI reader
    node_modules = {f"graphflow_nodes.{m}" for m in library.NODE_MODULES}
    assert len(loaded & node_modules) <= len(needed) + 1, sorted(loaded & node_modules)


def types_in(doc) -> set[str]:
    """Every node type a workflow names, its scopes' bodies included."""
    found = set()
    for node in doc.get("nodes", {}).values():
        found.add(node["type"])
        found |= types_in(node)
    return found


def test_a_stale_hint_costs_time_never_a_wrong_answer():
    reg = Registry()
    # wrong module for one type, no entry for another: both are still found, every module loaded once
    from graphflow_nodes import library

    modules = [f"graphflow_nodes.{m}" for m in library.NODE_MODULES]
    reg = Registry()
    hint = library.declared_types()
    moved = dict(hint, LoadModel="graphflow_nodes.images")
    reg.register_lazy(modules, moved, "graphflow_nodes")
    assert reg.get("LoadModel").__module__ == "graphflow_nodes.loading.models"
    assert reg.get("NoSuchNode") is None and "NoSuchNode" not in reg
    assert len(reg) == len(hint)
    reg = Registry()
    reg.register_lazy(modules, {}, "graphflow_nodes")  # no hint at all
    assert reg.get("LoadModel").__module__ == "graphflow_nodes.loading.models"


def test_a_second_type_of_a_declared_name_is_refused_as_before():
    from graphflow_nodes import library

    from graphflow import Inputs, Node, Outputs

    reg = Registry()
    reg.register_lazy([f"graphflow_nodes.{m}" for m in library.NODE_MODULES], library.declared_types(), "graphflow_nodes")

    class Mine(Node, name="LoadModel"):
        class In(Inputs):
            pass

        class Out(Outputs):
            value: int

        def run(self, i, ctx):
            return {"value": 1}

    with pytest.raises(RegistryError, match="node type 'LoadModel' from .* is already registered by graphflow_nodes"):
        reg.register(Mine, "a plugin")
