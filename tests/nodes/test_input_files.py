"""The node library's part in checking the files a workflow names: its resolvers say where a
name was looked for and the nearest existing name, its folders (models, configs, samples) are
contributed to a confined executor's read roots through the registry, and its nodes open files
through the node API's ``open_input`` / ``checked_input``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Context, Executor, ValidationFailed, Workflow, options
from graphflow.node.file_access import FileAccess
from graphflow.node.limits import Limits
from graphflow.node_api import InputRefused
from tests.file_nodes import within

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_models_env(monkeypatch):
    monkeypatch.delenv("GRAPHFLOW_MODELS", raising=False)
    monkeypatch.delenv("GRAPHFLOW_MODELS_ONLY", raising=False)


def problems(doc: dict, **kw) -> list[tuple]:
    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict({"format": 1, "outputs": ["n"], **doc}).bind(**kw)
    return [(p.code, p.node, p.field, p.message) for p in e.value.problems]


def one(node_type: str, **inputs) -> dict:
    return {"nodes": {"n": {"type": node_type, "inputs": inputs}}}


def test_a_mistyped_name_says_where_it_was_looked_for_and_the_nearest(no_models_env, tmp_path, monkeypatch):
    from graphflow_nodes.loading.files import MODELS_DIR, PACKAGE_DIR, SHIPPED

    monkeypatch.chdir(tmp_path)
    hint = "add a models folder with --models-dir or GRAPHFLOW_MODELS"
    assert problems(one("LoadModel", path="tiny-sdd")) == [(
        "missing_file", "n", "inputs.path", f"no checkpoint named 'tiny-sdd' (looked in {MODELS_DIR}); {hint}; did you mean 'tiny-sd'?")]
    assert problems(one("LoadTextualInversion", path="my-shpe.safetensors")) == [(
        "missing_file", "n", "inputs.path", f"no embedding named 'my-shpe.safetensors' (looked in {SHIPPED['embeddings']}, {tmp_path}, "
                                            f"{PACKAGE_DIR}); {hint}; did you mean 'my-shape.safetensors'?")]
    # a picture named bare: looked for in the working folder, then among the shipped files
    assert problems(one("LoadImage", path="red-circle-on-blue.png")) == [(
        "missing_file", "n", "inputs.path", f"no file named 'red-circle-on-blue.png' (looked in {tmp_path}, {PACKAGE_DIR}); "
                                            "did you mean 'samples/red-circle-on-blue.png'?")]
    (tmp_path / "photo.png").write_bytes(b"x")
    assert problems(one("LoadImage", path="fotos.png"))[0][3].endswith("did you mean 'photo.png'?")
    assert problems(one("LoadLatents", path="nothing-like-it.safetensors")) == [(
        "missing_file", "n", "inputs.path", f"no file named 'nothing-like-it.safetensors' (looked in {tmp_path}, {PACKAGE_DIR})")]


def test_lora_names_are_looked_up_in_the_loras_folders(no_models_env):
    from graphflow_nodes.loading.files import SHIPPED

    doc = {"nodes": {"m": {"type": "LoadModel"},
                     "n": {"type": "LoadLoRA", "inputs": {"unet": {"from": "m.unet"}, "text_encoder": {"from": "m.text_encoder"},
                                                          "path": "tiny-sd-crss.safetensors"}}}}
    assert problems(doc) == [("missing_file", "n", "inputs.path", f"no LoRA named 'tiny-sd-crss.safetensors' (looked in {SHIPPED['loras']}); "
                                                                  "add a models folder with --models-dir or GRAPHFLOW_MODELS; "
                                                                  "did you mean 'tiny-sd-cross.safetensors'?")]


def test_an_input_left_at_its_default_is_checked_too(no_models_env, monkeypatch):
    import graphflow_nodes.loading.files as files

    monkeypatch.setattr(files, "SHIPPED", {**files.SHIPPED, "checkpoints": files.MODELS_DIR / "nowhere"})
    assert problems({"nodes": {"n": {"type": "LoadModel"}}})[0][:3] == ("missing_file", "n", "inputs.path")  # LoadModel's 'tiny-sd'


def test_the_library_contributes_its_folders_to_a_confined_executor(no_models_env, tmp_path, monkeypatch):
    from graphflow_nodes.loading.files import CONFIGS_DIR, MODELS_DIR, SAMPLES_DIR

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("GRAPHFLOW_MODELS", str(models))  # read when the roots are gathered, not when the library registered
    uploads = tmp_path / "out" / "uploads"
    roots = options.read_roots(graphflow.registry(), [uploads])
    assert roots == tuple(os.path.realpath(p) for p in (uploads, models, MODELS_DIR, CONFIGS_DIR, SAMPLES_DIR))
    # the shipped img2img reads a shipped sample and the shipped model: allowed
    wf = graphflow.load(REPO / "workflows" / "img2img.json")
    wf.bind(read_roots=roots)
    outside = tmp_path / "photo.png"
    shutil.copy(SAMPLES_DIR / "red-circle-on-blue.png", outside)
    (p,) = problems(one("LoadImage", path=str(outside)), read_roots=roots)
    assert p[:3] == ("refused_file", "n", "inputs.path") and f"'{outside}' is outside the folders this executor may read (allowed: {roots[0]}" in p[3]
    # a name looked for outside the roots: refused as outside, listing nothing that is there
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    for doc in (one("LoadModel", path=str(tmp_path / "secret.safetensor")), one("LoadImage", path="photo.pnj")):
        monkeypatch.chdir(tmp_path)
        (p,) = problems(doc, read_roots=roots)
        assert p[0] == "refused_file" and "is outside the folders this executor may read" in p[3] and "did you mean" not in p[3]
    assert "did you mean" in problems(one("LoadModel", path=str(tmp_path / "secret.safetensor")))[0][3]  # unconfined: said
    (p,) = problems(one("LoadModel", path="tiny-sdd"), read_roots=roots)  # looked for inside the roots: said there too
    assert p[0] == "missing_file" and p[3].endswith("did you mean 'tiny-sd'?")
    (uploads / "photo.png").parent.mkdir(parents=True)
    shutil.copy(outside, uploads / "photo.png")
    r = Executor(read_roots=roots).run(Workflow.from_dict({"format": 1, **one("LoadImage", path=str(uploads / "photo.png")),
                                                           "outputs": {"image": "n.image"}}))
    assert r.ok and r["image"].shape == (1, 3, 64, 64)


def test_a_model_folder_holding_a_fifo_is_refused_at_validation(no_models_env, tmp_path):
    from graphflow_nodes.loading.files import MODELS_DIR

    model = tmp_path / "m"
    shutil.copytree(MODELS_DIR / "tiny-sd", model, copy_function=os.symlink)  # links to the shipped files, and:
    os.mkfifo(model / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert within(30, problems, one("LoadModel", path=str(model))) == [(
        "refused_file", "n", "inputs.path", f"'{model}/unet/diffusion_pytorch_model.fp16.safetensors' is a FIFO (named pipe), "
                                            "not a regular file; refused")]


def test_the_nodes_open_their_files_under_the_run_rules(tmp_path):
    from safetensors.torch import save_file

    from graphflow_nodes.images import LoadImage
    from graphflow_nodes.loading.files import SAMPLES_DIR
    from graphflow_nodes.stages.before_denoise import LoadLatents

    latents = torch.arange(24, dtype=torch.float32).reshape(1, 4, 2, 3)
    save_file({"latents": latents, "noise": latents * 2}, tmp_path / "z.safetensors")
    out = LoadLatents().run(LoadLatents.In(path=str(tmp_path / "z.safetensors"), key="noise"), Context())
    assert torch.equal(out["latents"], latents * 2)
    confined = Context(files=FileAccess.of([tmp_path / "elsewhere"]))
    with pytest.raises(InputRefused, match="is outside the folders this executor may read"):
        LoadLatents().run(LoadLatents.In(path=str(tmp_path / "z.safetensors")), confined)
    with pytest.raises(InputRefused, match="is outside the folders this executor may read"):
        LoadImage().run(LoadImage.In(path=str(SAMPLES_DIR / "red-circle-on-blue.png")), confined)
    small = Context(files=FileAccess.of(None, Limits(input_bytes=100)))
    with pytest.raises(InputRefused, match="is 261 bytes, over the limit of 100 for 'input_bytes'"):
        LoadImage().run(LoadImage.In(path="samples/red-circle-on-blue.png"), small)
