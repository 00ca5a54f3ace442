"""Hostile inputs beyond a malformed document: a pickle that would run code, output names that
try to leave the output folder, symlinks planted in it, saves that fail half-way, and node types
that name Python modules. Nothing here may run foreign code, write outside the output folder, or
leave a file behind."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import orjson
import pytest

import graphflow
from graphflow import Executor, Workflow
from graphflow.cli import main

SAMPLE = "samples/red-circle-on-blue.png"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def write(path: Path, doc: dict) -> str:
    path.write_bytes(orjson.dumps(doc))
    return str(path)


# --- a pickle that would run code ------------------------------------------------------------------


class _Payload:
    """Unpickling this would run ``touch MARKER``: the textual-inversion loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def ti_doc(path: str) -> dict:
    return {"format": 1, "nodes": {"ti": {"type": "LoadTextualInversion", "inputs": {"path": path, "token": "<x>"}}},
            "outputs": {"vector": "ti.vector"}}


@pytest.mark.parametrize("layout", ["raw pickle", "torch.save zip"])
def test_textual_inversion_pickle_that_would_create_a_file_is_refused_and_never_runs(tmp_path, capsys, layout):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "learned_embeds.bin"
    if layout == "raw pickle":
        evil.write_bytes(pickle.dumps({"<x>": _Payload(str(marker))}))
    else:
        torch.save({"<x>": _Payload(str(marker))}, evil)
    assert not marker.exists()
    # the Python API: the node fails, naming itself; the payload never ran
    r = Executor(out_dir=tmp_path / "out").run(Workflow.from_dict(ti_doc(str(evil))))
    assert not r.ok and not marker.exists()
    (err,) = r.errors
    assert (err.node, err.type) == ("ti", "LoadTextualInversion") and "refused" in err.message
    # the command: exit 1 (a node failed while running), the node named, nothing created
    wf = write(tmp_path / "ti.json", ti_doc(str(evil)))
    assert main(["run", wf, "--out", str(tmp_path / "out"), "--no-cache"]) == 1
    assert "node 'ti' (LoadTextualInversion) failed" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # and the payload is real: an unsafe load would have run it
    if layout == "raw pickle":
        pickle.loads(evil.read_bytes())
    else:
        torch.load(evil, weights_only=False)
    assert marker.exists()


# --- output names cannot leave the output folder -----------------------------------------------------


def save_text(filename) -> dict:
    return {"format": 1, "nodes": {"s": {"type": "SaveText", "inputs": {"text": "hi", "filename": filename}}}, "outputs": {"p": "s.path"}}


def save_image(prefix) -> dict:
    return {"format": 1, "nodes": {"img": {"type": "LoadImage", "inputs": {"path": SAMPLE}},
                                   "s": {"type": "SaveImage", "inputs": {"image": {"from": "img.image"}, "prefix": prefix}}},
            "outputs": {"p": "s.paths"}}


def save_animation(filename) -> dict:
    return {"format": 1, "nodes": {"img": {"type": "LoadImage", "inputs": {"path": SAMPLE}},
                                   "s": {"type": "SaveAnimation", "inputs": {"frames": [{"from": "img.image"}], "filename": filename}}},
            "outputs": {"p": "s.path"}}


SAVES = {"SaveText": (save_text, "filename", "{}.txt"), "SaveImage": (save_image, "prefix", "{}"),
         "SaveAnimation": (save_animation, "filename", "{}.gif")}


def escapes(shape: str) -> list[str]:
    """Names that would leave the output folder, hide, or could not be written."""
    too_long = shape.format("x" * (101 - len(shape.format(""))))
    assert len(too_long) == 101
    return ["..", ".", "", "\x00", shape.format("../escaped"), shape.format("../../escaped"), shape.format("/tmp/escaped"),
            shape.format("sub/escaped"), shape.format("..\\escaped"), shape.format("a\x00b"), shape.format(".hidden"),
            shape.format(" x"), shape.format("x\ny"), shape.format("x") + "\n", shape.format("é"), too_long, "x" * 300]


@pytest.mark.parametrize(("node", "value"), [(node, v) for node, (_, _, shape) in sorted(SAVES.items()) for v in escapes(shape)], ids=repr)
def test_output_names_that_could_escape_or_cannot_be_written_are_refused_at_validation(node, value):
    make, field, _ = SAVES[node]
    problems = Workflow.from_dict(make(value)).problems()
    assert [(p.code, p.node, p.field) for p in problems] == [("bad_literal", "s", f"inputs.{field}")], problems


@pytest.mark.parametrize("node", sorted(SAVES))
def test_good_output_names_up_to_100_characters_pass(node):
    make, _, shape = SAVES[node]
    for value in (shape.format("x0_frames"), shape.format("Run-2.v1"), shape.format("a" * 90)):
        assert Workflow.from_dict(make(value)).problems() == [], value
    longest = shape.format("a" * 100)[-100:] if node != "SaveImage" else "a" * 100
    assert len(longest) == 100 and Workflow.from_dict(make(longest)).problems() == []


@pytest.mark.parametrize("node", sorted(SAVES))
def test_an_escaping_name_given_as_a_parameter_is_refused_before_anything_runs(node, tmp_path, capsys):
    make, field, shape = SAVES[node]
    doc = make({"param": "name"})
    doc["params"] = {"name": {"type": "string", "default": shape.format("fine")}}
    wf = write(tmp_path / "wf.json", doc)
    before = tree(tmp_path)
    assert main(["run", wf, "--out", str(tmp_path / "out"), "--no-cache", "--set", f"name={shape.format('../escaped')}"]) == 2
    err = capsys.readouterr().err
    assert f"[bad_param] node 's', field 'inputs.{field}'" in err
    assert main(["validate", wf, "--json", "--set", "name=/abs/escaped"]) == 2
    (p,) = orjson.loads(capsys.readouterr().out)["problems"]
    assert (p["code"], p["node"], p["field"]) == ("bad_param", "s", f"inputs.{field}")
    assert tree(tmp_path) == before


def test_an_escaping_name_arriving_through_a_link_fails_the_node_and_writes_nothing(tmp_path, capsys):
    doc = save_text({"from": "name.text"})
    doc["nodes"]["name"] = {"type": "Text", "inputs": {"template": "../escaped.txt"}}
    wf = write(tmp_path / "wf.json", doc)
    before = tree(tmp_path)
    assert main(["run", wf, "--out", str(tmp_path / "out"), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert "node 's' (SaveText) failed" in err and "filename" in err
    assert tree(tmp_path) == before
    assert not (tmp_path.parent / "escaped.txt").exists()


# --- symlinks planted in the output folder -------------------------------------------------------------


def plant_link(out: Path, name: str, outside: Path) -> None:
    out.mkdir(exist_ok=True)
    os.symlink(outside, out / name)


@pytest.mark.parametrize("node", ["SaveText", "SaveAnimation"])
def test_a_symlink_at_the_target_is_never_written_through_nor_replaced(node, tmp_path):
    """Outputs are never overwritten: a taken name, even by a planted link, gets a number."""
    make, _, shape = SAVES[node]
    name = shape.format("target")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    out = tmp_path / "out"
    plant_link(out, name, outside)
    r = Executor(out_dir=out).run(Workflow.from_dict(make(name)))
    assert r.ok, r.errors
    assert outside.read_bytes() == b"precious" and (out / name).is_symlink()
    stem, ext = name.rsplit(".", 1)
    written = out / f"{stem}_00001.{ext}"
    assert not written.is_symlink() and written.stat().st_size > 0
    assert tree(out) == sorted([name, written.name])


@pytest.mark.parametrize("node", ["SaveText", "SaveAnimation"])
def test_saving_twice_never_overwrites(node, tmp_path):
    make, _, shape = SAVES[node]
    name = shape.format("twice")
    ex = Executor(out_dir=tmp_path)
    wf = Workflow.from_dict(make(name))
    assert ex.run(wf).ok and ex.run(wf).ok  # a side effect: runs again, into a new file
    stem, ext = name.rsplit(".", 1)
    assert tree(tmp_path) == sorted([name, f"{stem}_00001.{ext}"])


def test_saveimage_never_writes_through_a_planted_symlink(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"precious")
    out = tmp_path / "out"
    plant_link(out, "pic_00001.png", outside)
    plant_link(out, "pic_00002.png", tmp_path / "missing.png")  # a dangling one too
    r = Executor(out_dir=out).run(Workflow.from_dict(save_image("pic")))
    assert r.ok, r.errors
    assert outside.read_bytes() == b"precious" and not (tmp_path / "missing.png").exists()
    (written,) = r["p"]
    assert Path(written) == out / "pic_00003.png" and not Path(written).is_symlink()


# --- saves that fail leave nothing behind ----------------------------------------------------------------


def test_a_failed_save_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "taken.txt").mkdir(parents=True)  # the name is taken (by a folder): a new, numbered file
    (out / "taken.gif").mkdir()
    for doc, name in ((save_text("taken.txt"), "taken_00001.txt"), (save_animation("taken.gif"), "taken_00001.gif")):
        wf = write(tmp_path / "wf.json", doc)
        before = tree(tmp_path)
        assert main(["run", wf, "--out", str(out), "--no-cache"]) == 0
        capsys.readouterr()
        assert tree(tmp_path) == sorted([*before, f"out/{name}"]), "only the new file, no temporary, was left"
    # the output folder is a file: nothing can be created in it, or beside it
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")
    for doc in (save_text("x.txt"), save_image("pic"), save_animation("x.gif")):
        wf = write(tmp_path / "wf.json", doc)
        before = tree(tmp_path)
        assert main(["run", wf, "--out", str(blocked), "--no-cache"]) == 1
        capsys.readouterr()
        assert tree(tmp_path) == before and blocked.read_bytes() == b""


def test_mismatched_animation_frames_fail_before_anything_is_written(tmp_path):
    doc = save_animation("x.gif")
    doc["nodes"]["s"]["inputs"]["beside"] = [{"from": "img.image"}, {"from": "img.image"}]
    r = Executor(out_dir=tmp_path / "out").run(Workflow.from_dict(doc))
    assert not r.ok and r.errors[0].node == "s"
    assert not (tmp_path / "out").exists()


# --- a workflow cannot name a module -----------------------------------------------------------------------


MODULE = '''
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("imported")
from graphflow import Inputs, Node, Outputs
from pydantic import Field

class Hostile(Node, name="Hostile", category="values"):
    """A node from a module that marks its own import."""
    class In(Inputs):
        x: int = Field(1)
    class Out(Outputs):
        y: int = Field()
    def run(self, i, ctx):
        return {"y": i.x}
'''


@pytest.mark.parametrize("type_name", ["os.system", "builtins.eval", "__import__", "subprocess.Popen", "hostile_mod", "hostile_mod.Hostile",
                                       "graphflow.node.builtin.Math", "Hostile"])
def test_a_node_type_that_names_a_module_is_an_unknown_type_and_nothing_is_imported(type_name, tmp_path, monkeypatch, capsys):
    (tmp_path / "hostile_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    wf = write(tmp_path / "wf.json", {"format": 1, "nodes": {"n": {"type": type_name}}, "outputs": ["n"]})
    assert main(["validate", wf, "--json"]) == 2
    (p,) = orjson.loads(capsys.readouterr().out)["problems"]
    assert (p["code"], p["node"], p["field"]) == ("unknown_node_type", "n", "type")
    assert main(["run", wf, "--out", str(tmp_path / "out"), "--no-cache"]) == 2
    capsys.readouterr()
    assert "hostile_mod" not in sys.modules and not (tmp_path / "imported.marker").exists()
    assert type_name not in graphflow.registry()


def test_node_packs_load_only_through_an_explicit_plugin(tmp_path, monkeypatch, capsys):
    (tmp_path / "hostile_mod.py").write_text(MODULE)
    wf = write(tmp_path / "wf.json", {"format": 1, "nodes": {"n": {"type": "Hostile"}}, "outputs": {"y": "n.y"}})
    assert main(["validate", wf]) == 2
    assert not (tmp_path / "imported.marker").exists()
    capsys.readouterr()
    assert main(["validate", wf, "--plugin", str(tmp_path / "hostile_mod.py")]) == 0  # asked for by name: loaded
    assert (tmp_path / "imported.marker").exists()
    sys.modules.pop("graphflow_plugin_hostile_mod", None)
