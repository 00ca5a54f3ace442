"""Shipped workflows by name: ``graphflow run txt2img`` from a folder with no workflows/ beside it,
in every command that reads a workflow (and ``graphflow.load``), a file of the same name taking
precedence, and a path that names nothing answered with what was probably meant."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import graphflow
from graphflow.cli import main
from graphflow.node import shipped
from graphflow.problems import ValidationFailed

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_WORKFLOWS = ROOT / "nodes" / "workflows"
NAMES = sorted(p.stem for p in LIBRARY_WORKFLOWS.glob("*.json"))


@pytest.fixture(autouse=True)
def _empty_folder(tmp_path, monkeypatch):
    """An empty working folder: nothing in it names a workflow."""
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_the_library_ships_its_workflows_and_the_checkout_links_them():
    assert [f.resolve() for f in shipped.folders()] == [LIBRARY_WORKFLOWS.resolve()]
    assert sorted(shipped.workflows()) == NAMES and len(NAMES) >= 21
    assert (ROOT / "workflows").resolve() == LIBRARY_WORKFLOWS.resolve()  # one copy: the old path is a link


def test_run_by_name_from_an_empty_folder(tmp_path, capsys):
    assert main(["run", "hello", "--set", "n=4", "--quiet"]) == 0
    assert (tmp_path / "out" / "sum.txt").read_text() == "the sum is 6.0\n"
    assert capsys.readouterr().out.splitlines()[0] == "file: out/sum.txt"


@pytest.mark.parametrize("name", ["txt2img", "txt2img.json"])
def test_validate_by_name_with_or_without_json(name, capsys):
    assert main(["validate", name]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{name}: ok (13 nodes, 11 parameters, outputs: image, files)"


def test_graph_and_sweep_by_name(tmp_path, capsys):
    assert main(["graph", "nested_loop", "--format", "dot"]) == 0
    by_name = capsys.readouterr().out
    assert main(["graph", str(LIBRARY_WORKFLOWS / "nested_loop.json"), "--format", "dot"]) == 0
    assert capsys.readouterr().out == by_name and by_name.startswith("digraph")
    assert main(["sweep", "hello", "--grid", "n=[2,3]", "--out", "s", "--quiet"]) == 0
    assert sorted(p.read_text() for p in (tmp_path / "s").rglob("sum.txt")) == ["the sum is 1.0\n", "the sum is 3.0\n"]


def test_a_file_of_that_name_wins_over_the_shipped_workflow(tmp_path, capsys):
    doc = orjson.loads((LIBRARY_WORKFLOWS / "hello.json").read_bytes())
    del doc["nodes"]["save"], doc["outputs"]["file"]
    (tmp_path / "hello").write_bytes(orjson.dumps(doc))
    assert main(["validate", "hello"]) == 0
    assert capsys.readouterr().out == "hello: ok (4 nodes, 1 parameters, outputs: partial_sums)\n"
    assert main(["validate", "hello.json"]) == 0  # no such file here: the shipped one, 5 nodes
    assert capsys.readouterr().out == "hello.json: ok (5 nodes, 1 parameters, outputs: file, partial_sums)\n"


def test_a_path_is_never_taken_for_a_name(capsys):
    assert main(["validate", "./txt2img"]) == 2
    assert capsys.readouterr().err == ("./txt2img: 1 problem found:\n  [unreadable_file] cannot read ./txt2img: "
                                       "No such file or directory; did you mean the shipped workflow 'txt2img'?\n")


def test_a_mistyped_folder_gets_the_path_that_exists_and_the_name(tmp_path, capsys):
    (tmp_path / "workflows").symlink_to(ROOT / "workflows")  # as in a checkout
    assert main(["run", "workflow/txt2img.json"]) == 2
    assert capsys.readouterr().err == (
        "workflow/txt2img.json: 1 problem found:\n  [unreadable_file] cannot read workflow/txt2img.json: "
        "No such file or directory; did you mean workflows/txt2img.json, or the shipped workflow 'txt2img'?\n")
    assert main(["validate", "workflows/txt2im.json", "--json"]) == 2
    (problem,) = orjson.loads(capsys.readouterr().out)["problems"]
    assert problem == {"code": "unreadable_file", "message": "cannot read workflows/txt2im.json: No such file or directory; "
                       "did you mean workflows/txt2img.json, or a shipped workflow: 'txt2img', 'txt2img_sd3', 'txt2img_sdxl'?"}


def test_a_name_nothing_is_close_to_gets_the_shipped_names(capsys):
    assert main(["run", "nope.json"]) == 2
    assert capsys.readouterr().err == ("nope.json: 1 problem found:\n  [unreadable_file] cannot read nope.json: "
                                       "No such file or directory; shipped workflows, loaded by name: " + ", ".join(NAMES) + "\n")
    assert main(["graph", "txt2imgg"]) == 2
    assert "did you mean a shipped workflow: 'txt2img', 'txt2img_sd3', 'txt2img_sdxl'?" in capsys.readouterr().err


def test_python_api_loads_by_name():
    assert graphflow.load("txt2img").doc.raw == graphflow.load(LIBRARY_WORKFLOWS / "txt2img.json").doc.raw
    with pytest.raises(ValidationFailed) as e:
        graphflow.load("txt2im")
    assert [p.code for p in e.value.problems] == ["unreadable_file"]
    assert e.value.problems[0].message.endswith("did you mean a shipped workflow: 'txt2img', 'txt2img_sd3', 'txt2img_sdxl'?")


def test_the_server_offers_the_library_workflows():
    from graphflow.server.workflow_catalog import shipped_folder

    assert shipped_folder().resolve() == LIBRARY_WORKFLOWS.resolve()
