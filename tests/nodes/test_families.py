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
from graphflow.engine.model_manager import ModelManager

REPO = Path(__file__).resolve().parents[2]


def load_model(path: Path) -> dict:
    from graphflow_nodes.loading.models import LoadModel

    return LoadModel().run(LoadModel.In(path=str(path)), Context())


def test_each_family_gets_its_components(tiny_model, tiny_sdxl, tiny_class_ddpm):
    from diffusers import UNet2DConditionModel, UNet2DModel
    from graphflow_nodes.loading.families import ModelError
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


def test_a_refiner_folder_is_its_own_family(tiny_sdxl_refiner, tiny_sdxl, tmp_path):
    """A StableDiffusionXLImg2ImgPipeline folder asking for aesthetic scores is an SDXL refiner:
    its second encoder, UNet and VAE load; the first tokenizer and encoder (null in its index) fail
    naming themselves. The same pipeline class without the setting is an SDXL base folder."""
    import shutil

    from diffusers import UNet2DConditionModel
    from graphflow_nodes.loading.families import ModelError
    from transformers import CLIPTextModelWithProjection

    mm = ModelManager()
    rf = load_model(tiny_sdxl_refiner)
    assert rf["family"] == "sdxl-refiner" and rf["pipeline_config"]["requires_aesthetics_score"] is True
    assert type(mm.get(rf["text_encoder_2"])) is CLIPTextModelWithProjection and mm.get(rf["tokenizer_2"]).pad_token == "!"
    unet = mm.get(rf["unet"])
    assert type(unet) is UNet2DConditionModel and unet.config.cross_attention_dim == 48
    assert unet.config.projection_class_embeddings_input_dim == 5 * unet.config.addition_time_embed_dim + 24
    for missing in ("tokenizer", "text_encoder"):
        try:
            mm.get(rf[missing])
        except ModelError as e:
            assert f"is a sdxl-refiner model: it has no {missing}" in str(e)
        else:
            raise AssertionError(f"{missing} loaded from a refiner")
    as_base = tmp_path / "img2img-base"
    shutil.copytree(tiny_sdxl, as_base)
    index = json.loads((as_base / "model_index.json").read_text())
    (as_base / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline",
                                                          "requires_aesthetics_score": False}))
    assert load_model(as_base)["family"] == "sdxl"
    from graphflow_nodes.catalog import folder_family  # `graphflow models` reads the same table

    assert (folder_family(tiny_sdxl_refiner), folder_family(as_base)) == ("sdxl-refiner", "sdxl")


def test_a_component_of_the_wrong_class_is_refused(tiny_sdxl, tmp_path):
    import shutil

    from graphflow_nodes.loading.families import ModelError

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


def test_validate_says_which_family_a_model_folder_is(tiny_model, tiny_sdxl, tiny_ddpm, tiny_sdxl_refiner, tmp_path):
    wf = str(REPO / "workflows" / "txt2img.json")
    for model, family in ((tiny_model, "sd model (StableDiffusionPipeline"), (tiny_sdxl, "sdxl model (StableDiffusionXLPipeline"),
                          (tiny_sdxl_refiner, "sdxl-refiner model (StableDiffusionXLImg2ImgPipeline: Stable Diffusion XL refiner"),
                          (tiny_ddpm, "pixel model (DDPMPipeline"), ("tiny-sd", "sd model")):
        p = _validate([wf, "--set", f"model={model}"], tmp_path)
        assert p.returncode == 0, p.stderr
        assert f"node 'model', inputs.path = '{model}': {family}" in p.stdout
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "model_index.json").write_text(json.dumps({"_class_name": "AuraFlowPipeline"}))
    p = _validate([wf, "--set", f"model={unknown}", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    (note,) = orjson.loads(p.stdout)["files"]
    assert note["node"] == "model" and note["ok"] is False
    assert "AuraFlowPipeline" in note["note"] and "not supported" in note["note"] and "sdxl (" in note["note"]
    assert "sd3 (" in note["note"] and "flux (" in note["note"] and "FluxPipeline" in note["note"]
    assert "sdxl-refiner (" in note["note"] and "requires_aesthetics_score: true" in note["note"]
