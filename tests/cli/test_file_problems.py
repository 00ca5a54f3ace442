"""`graphflow validate` and `graphflow run` refuse a workflow whose files a run could not open,
before anything runs (exit 2): the node, the field, the name as typed, where it was looked for
and the nearest existing name; the same problem in `--json`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from graphflow.cli import main

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = str(ROOT / "workflows" / "txt2img.json")
IMG2IMG = str(ROOT / "workflows" / "img2img.json")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("GRAPHFLOW_MODELS", raising=False)
    monkeypatch.delenv("GRAPHFLOW_MODELS_ONLY", raising=False)
    monkeypatch.chdir(tmp_path)


def test_a_mistyped_model_is_refused_with_where_it_looked_and_the_nearest_name(capsys):
    from graphflow_nodes.loading.files import MODELS_DIR

    message = (f"no checkpoint named 'tiny-sdd' (looked in {MODELS_DIR}); add a models folder with --models-dir or GRAPHFLOW_MODELS; "
               "did you mean 'tiny-sd'?")
    assert main(["validate", TXT2IMG, "--set", "model=tiny-sdd"]) == 2
    assert capsys.readouterr().err == f"{TXT2IMG}: 1 problem found:\n  [missing_file] node 'model', field 'inputs.path': {message}\n"
    assert main(["validate", TXT2IMG, "--set", "model=tiny-sdd", "--json"]) == 2
    assert orjson.loads(capsys.readouterr().out) == {"ok": False, "file": TXT2IMG, "problems": [
        {"code": "missing_file", "message": message, "node": "model", "field": "inputs.path"}]}
    assert main(["run", TXT2IMG, "--set", "model=tiny-sdd", "--no-cache", "--quiet"]) == 2  # nothing loaded, nothing ran
    assert f"[missing_file] node 'model', field 'inputs.path': {message}" in capsys.readouterr().err


def test_a_picture_named_bare_that_is_nowhere_says_where_it_was_looked_for(tmp_path, capsys):
    from graphflow_nodes.loading.files import PACKAGE_DIR

    assert main(["validate", IMG2IMG, "--set", "image=circle.png"]) == 2
    assert capsys.readouterr().err == (f"{IMG2IMG}: 1 problem found:\n  [missing_file] node 'image', field 'inputs.path': "
                                       f"no file named 'circle.png' (looked in {tmp_path}, {PACKAGE_DIR})\n")
    assert main(["validate", IMG2IMG, "--set", "image=red-circle-on-blue.png"]) == 2
    assert capsys.readouterr().err.endswith("; did you mean 'samples/red-circle-on-blue.png'?\n")
    (tmp_path / "red-circle-on-blue.png").write_bytes((PACKAGE_DIR / "samples" / "red-circle-on-blue.png").read_bytes())
    assert main(["validate", IMG2IMG, "--set", "image=red-circle-on-blue.png"]) == 0  # found in the working folder


def test_limit_input_bytes_is_a_ceiling_on_the_files_a_workflow_reads(tmp_path, capsys):
    wf = tmp_path / "load.json"
    wf.write_bytes(orjson.dumps({"format": 1, "nodes": {"image": {"type": "LoadImage", "inputs": {"path": "samples/red-circle-on-blue.png"}}},
                                 "outputs": {"image": "image.image"}}))
    assert main(["validate", str(wf), "--limit", "input_bytes=260"]) == 2
    assert capsys.readouterr().err == (
        f"{wf}: 1 problem found:\n  [refused_file] node 'image', field 'inputs.path': 'samples/red-circle-on-blue.png' "
        "is 261 bytes, over the limit of 260 for 'input_bytes' (raise it with --limit input_bytes=N)\n")
    assert main(["validate", str(wf), "--limit", "input_bytes=261"]) == 0


def test_a_device_named_as_a_picture_is_refused(capsys):
    assert main(["validate", IMG2IMG, "--set", "image=/dev/zero"]) == 2
    assert capsys.readouterr().err.endswith(
        "[refused_file] node 'image', field 'inputs.path': '/dev/zero' is a character device, not a regular file; refused\n")
