"""Model families: LoadModel reads each folder's family from model_index.json, hands out the
components that family has (and, for those it lacks, references that fail naming them), and
`graphflow validate` says which family a workflow's model folder is, without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson

from graphflow import Context
from graphflow.models import ModelManager

REPO = Path(__file__).resolve().parents[1]


def load_model(path: Path) -> dict:
    from graphflow_nodes.models import LoadModel

    return LoadModel().run(LoadModel.In(path=str(path)), Context())


def test_each_family_gets_its_components(tiny_model, tiny_sdxl, tiny_class_ddpm):
    from diffusers import UNet2DConditionModel, UNet2DModel
    from graphflow_nodes.families import ModelError
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    mm = ModelManager()
    sd, xl, px = load_model(tiny_model), load_model(tiny_sdxl), load_model(tiny_class_ddpm)
    assert (sd["family"], xl["family"], px["family"]) == ("sd", "sdxl", "pixel")
    assert type(mm.get(xl["text_encoder"])) is CLIPTextModel
    assert type(mm.get(xl["text_encoder_2"])) is CLIPTextModelWithProjection
    assert mm.get(xl["tokenizer_2"]).pad_token == "!" and mm.get(xl["tokenizer"]).pad_token == "<|endoftext|>"
    assert xl["pipeline_config"]["force_zeros_for_empty_prompt"] is True
    assert type(mm.get(px["unet"])) is UNet2DModel and type(mm.get(sd["unet"])) is UNet2DConditionModel
    assert px["pipeline_config"]["id2label"]["3"] == "class 3"
    for refs, missing in ((sd, "text_encoder_2"), (px, "vae"), (px, "tokenizer")):
        try:
            mm.get(refs[missing])
        except ModelError as e:
            assert missing in str(e) and f"is a {refs['family']} model" in str(e)
        else:
            raise AssertionError(f"{missing} loaded from a {refs['family']} model")


def test_a_component_of_the_wrong_class_is_refused(tiny_sdxl, tmp_path):
    import shutil

    from graphflow_nodes.families import ModelError

    bad = tmp_path / "bad"
    shutil.copytree(tiny_sdxl, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["text_encoder_2"] = ["transformers", "CLIPTextModel"]
    (bad / "model_index.json").write_text(json.dumps(index))
    try:
        load_model(bad)
    except ModelError as e:
        assert "text_encoder_2" in str(e) and "CLIPTextModelWithProjection" in str(e)
    else:
        raise AssertionError("accepted")


def _validate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from graphflow.cli import main\n"
        f"rc = main({['validate', *args]!r})\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_validate_says_which_family_a_model_folder_is(tiny_model, tiny_sdxl, tiny_ddpm, tmp_path):
    wf = str(REPO / "workflows" / "txt2img.json")
    for model, family in ((tiny_model, "sd model (StableDiffusionPipeline"), (tiny_sdxl, "sdxl model (StableDiffusionXLPipeline"),
                          (tiny_ddpm, "pixel model (DDPMPipeline"), ("tiny-sd", "sd model")):
        p = _validate([wf, "--set", f"model={model}"], tmp_path)
        assert p.returncode == 0, p.stderr
        assert f"node 'model', inputs.path = '{model}': {family}" in p.stdout
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    p = _validate([wf, "--set", f"model={sd3}", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    (note,) = orjson.loads(p.stdout)["files"]
    assert note["node"] == "model" and note["ok"] is False
    assert "FluxPipeline" in note["note"] and "not supported" in note["note"] and "sdxl (" in note["note"]
