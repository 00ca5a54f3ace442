"""The models folder convention: GRAPHFLOW_MODELS / --models-dir with checkpoints/, loras/ and
embeddings/; bare names found there (and only there), names that would leave the folders
refused, `graphflow models` listing family and size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphflow import Context
from graphflow.cli import main
from graphflow.node_api import InputNotFound

REPO = Path(__file__).resolve().parents[2]
TINY_SD = REPO / "nodes" / "models" / "tiny-sd"
MY_SHAPE = TINY_SD / "textual_inversion" / "my-shape.safetensors"


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    for kind in ("checkpoints", "loras", "embeddings"):
        (root / kind).mkdir(parents=True)
    shutil.copytree(TINY_SD, root / "checkpoints" / "my-model")
    shutil.copy(MY_SHAPE, root / "embeddings" / "shape.safetensors")
    monkeypatch.setenv("GRAPHFLOW_MODELS", str(root))
    monkeypatch.delenv("GRAPHFLOW_MODELS_ONLY", raising=False)
    return root


def test_bare_names_are_found_in_the_models_folders_then_in_the_shipped_files(models, tmp_path, monkeypatch):
    from graphflow_nodes.loading.files import MODELS_DIR, locate, resolve_lora_path, resolve_model_path

    assert locate("my-model", "checkpoints") == models / "checkpoints" / "my-model"
    assert resolve_model_path("my-model") == models / "checkpoints" / "my-model"
    assert locate("tiny-sd", "checkpoints") == MODELS_DIR / "tiny-sd"  # shipped, after the user's folders
    assert locate("shape.safetensors", "embeddings") == models / "embeddings" / "shape.safetensors"
    (models / "loras" / "sub").mkdir()
    (models / "loras" / "sub" / "x.safetensors").write_bytes(b"x")
    assert locate("sub/x.safetensors", "loras") == models / "loras" / "sub" / "x.safetensors"
    # a second folder is searched after the first
    other = tmp_path / "more"
    (other / "loras").mkdir(parents=True)
    (other / "loras" / "y.safetensors").write_bytes(b"y")
    monkeypatch.setenv("GRAPHFLOW_MODELS", os.pathsep.join([str(models), str(other)]))
    assert locate("y.safetensors", "loras") == other / "loras" / "y.safetensors"
    # a name nobody has: the resolver says where it looked and what is near, for validation's message
    with pytest.raises(InputNotFound, match=r"no LoRA named 'nope.safetensors' \(looked in .*more/loras") as e:
        resolve_lora_path("nope.safetensors")
    assert e.value.code == "missing_file" and e.value.looked_in == tuple(map(str, [models / "loras", other / "loras", MODELS_DIR / "loras"]))
    with pytest.raises(InputNotFound, match=r"did you mean 'y.safetensors'\?$"):
        locate("y.safetensor", "loras")


def test_names_that_would_leave_the_models_folders_are_refused(models, tmp_path, monkeypatch):
    from graphflow_nodes.loading.files import locate

    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"s")
    with pytest.raises(ValueError, match="may not contain '..'"):
        locate("../../secret.safetensors", "loras")
    (models / "loras" / "link.safetensors").symlink_to(secret)
    with pytest.raises(ValueError, match="points outside that folder"):
        locate("link.safetensors", "loras")
    # a path written as a path is the user's own choice, unless the folders are made the only ones
    assert locate(str(secret), "loras") == secret
    monkeypatch.setenv("GRAPHFLOW_MODELS_ONLY", "1")
    with pytest.raises(ValueError, match="outside the models folders"):
        locate(str(secret), "loras")
    assert locate("shape.safetensors", "embeddings").is_file()


def test_a_workflow_names_a_model_by_its_bare_name_and_its_content_makes_the_key(models, tmp_path):
    from graphflow_nodes.loading.models import LoadModel

    refs = LoadModel().run(LoadModel.In(path="my-model"), Context())
    shipped = LoadModel().run(LoadModel.In(path="tiny-sd"), Context())
    assert refs["unet"] == shipped["unet"]  # the same bytes: the same model
    out = tmp_path / "out"
    doc = {"format": 1, "nodes": {"m": {"type": "LoadModel", "inputs": {"path": "../checkpoints/my-model"}}}, "outputs": ["m"]}
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    assert main(["run", str(tmp_path / "wf.json"), "--no-cache", "--quiet", "--out", str(out)]) == 2  # refused before running


def test_models_dir_flag_and_the_listing(models, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.delenv("GRAPHFLOW_MODELS")
    tensors = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": load_file(MY_SHAPE)["<my-shape>"].repeat(4, 12)}
    save_file(tensors, models / "loras" / "wide.safetensors")  # a to_k LoRA reading a 768-wide text encoder: SD 1.x
    (models / "checkpoints" / "old.ckpt").write_bytes(b"not read")
    assert main(["models", "--models-dir", str(models), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["my-model"]["kind"] == "checkpoints" and rows["my-model"]["bytes"] > 30_000_000
    assert rows["wide.safetensors"]["family"] == "sd1"
    assert rows["shape.safetensors"]["kind"] == "embeddings" and rows["shape.safetensors"]["bytes"] == 336
    assert rows["old.ckpt"]["family"].startswith("refused")
    assert "tiny-sd" in rows  # the shipped files come last
    assert main(["models", "--models-dir", str(models)]) == 0
    text = capsys.readouterr().out
    assert f"models folders: {models}" in text and "my-model" in text and "MiB" in text


@pytest.mark.slow
def test_run_with_models_dir_finds_a_bare_name(models, tmp_path):
    """The CLI flag reaches the node library's resolvers (a subprocess: the flag sets the
    environment of the run's own process)."""
    doc = {"format": 1, "nodes": {
        "m": {"type": "LoadModel", "inputs": {"path": "my-model"}},
        "tok": {"type": "Tokenize", "inputs": {"tokenizer": {"from": "m.tokenizer"}, "text": "a red circle"}},
        "save": {"type": "SaveText", "inputs": {"text": "ok", "filename": "done"}}}, "outputs": ["tok", "save"]}
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items() if k != "GRAPHFLOW_MODELS"}
    run = lambda *extra: subprocess.run([sys.executable, "-m", "graphflow.cli", "run", str(tmp_path / "wf.json"), "--no-cache",  # noqa: E731
                                         "--quiet", "--out", str(tmp_path / "out"), *extra], env=env, capture_output=True, text=True, timeout=120)
    bad = run()
    assert bad.returncode == 2 and "no checkpoint named 'my-model'" in bad.stderr  # refused at validation
    good = run("--models-dir", str(models))
    assert good.returncode == 0, good.stderr
