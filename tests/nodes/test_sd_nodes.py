"""Node-library behaviour beyond numerical equality: safe loading, clear errors, files written,
every shipped workflow running end to end."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, ValidationFailed, Workflow

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


class _Payload:
    """Unpickling this would create a marker file: the textual-inversion loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def ti_workflow(path: str, model: Path) -> Workflow:
    return Workflow.from_dict({
        "format": 1,
        "nodes": {"ti": {"type": "LoadTextualInversion", "inputs": {"path": path, "token": "<x>"}}},
        "outputs": {"vector": "ti.vector"},
    })


def test_textual_inversion_pickle_payload_is_refused_and_never_runs(tmp_path, tiny_model):
    marker = tmp_path / "pwned"
    evil = tmp_path / "learned_embeds.bin"
    evil.write_bytes(pickle.dumps({"<x>": _Payload(str(marker))}))
    r = Executor().run(ti_workflow(str(evil), tiny_model))
    assert not r.ok
    err = r.errors[0]
    assert err.node == "ti" and err.type == "LoadTextualInversion"
    assert "refused" in err.message
    assert not marker.exists()


def test_textual_inversion_plain_bin_and_safetensors_load(tmp_path, tiny_model):
    from safetensors.torch import save_file

    vec = torch.arange(32, dtype=torch.float32)
    torch.save({"<x>": vec}, tmp_path / "learned_embeds.bin")
    save_file({"emb_params": vec.reshape(1, 32)}, tmp_path / "x.safetensors")
    for name in ("learned_embeds.bin", "x.safetensors"):
        r = Executor().run(ti_workflow(str(tmp_path / name), tiny_model))
        assert r.ok, r.errors
        assert torch.equal(r["vector"], vec.reshape(1, 32))


def loader(path: str) -> Workflow:
    return Workflow.from_dict({"format": 1, "nodes": {"m": {"type": "LoadModel", "inputs": {"path": path}}}, "outputs": ["m"]})


def test_loader_errors_name_the_path_and_what_was_expected(tmp_path, tiny_model):
    (tmp_path / "nope2").mkdir()
    with pytest.raises(ValidationFailed) as e:  # a folder that is not there: refused before anything runs
        Executor().run(loader(str(tmp_path / "nope")))
    assert [(p.code, p.node, p.field, p.message) for p in e.value.problems] == [
        ("missing_file", "m", "inputs.path", f"no checkpoint named '{tmp_path / 'nope'}' (looked in {tmp_path}); did you mean '{tmp_path / 'nope2'}'?")]
    (tmp_path / "empty").mkdir()
    r = Executor().run(loader(str(tmp_path / "empty")))
    assert "not a diffusers model folder" in r.errors[0].message and "model_index.json" in r.errors[0].message
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]
    (bad / "model_index.json").write_text(json.dumps(index))
    r = Executor().run(loader(str(bad)))
    assert r.errors[0].node == "m"
    assert "component 'unet'" in r.errors[0].message and "UNet2DConditionModel" in r.errors[0].message


def test_components_are_loaded_once_per_executor_and_shared(tiny_model, tmp_path):
    refs = Executor().run(loader(str(tiny_model)))["m"]  # references only: nothing loads here
    components = ("tokenizer", "text_encoder", "unet", "vae")
    assert all(refs[c].component == c for c in components)
    txt2img = graphflow.load(REPO / "workflows" / "txt2img.json").with_params(model=str(tiny_model), steps=2)
    img2img = graphflow.load(REPO / "workflows" / "img2img.json").with_params(model=str(tiny_model), steps=4, start_step=2)
    ex = Executor(out_dir=tmp_path)
    for wf in (txt2img, img2img):  # two different workflows on one model
        r = ex.run(wf)
        assert r.ok, r.errors
    assert all(ex.models.loads[refs[c]] == 1 for c in components), ex.models.loads
    other = Executor(out_dir=tmp_path)
    assert other.run(txt2img).ok
    assert all(other.models.loads[refs[c]] == 1 for c in components)  # each executor holds its own weights
    assert other.models.get(refs["unet"]) is not ex.models.get(refs["unet"])


def test_save_image_numbers_files_and_embeds_the_workflow(tmp_path, tiny_model):
    from PIL import Image

    wf = graphflow.load(REPO / "workflows" / "txt2img.json").with_params(model=str(tiny_model), steps=2, seed=9)
    ex = Executor(out_dir=tmp_path)
    first = ex.run(wf)["files"]
    second = ex.run(wf)["files"]  # the picture is cached, but saving is a side effect: a new file
    assert [Path(p).name for p in first + second] == ["txt2img_00001.png", "txt2img_00002.png"]
    img = Image.open(second[0])
    assert json.loads(img.text["graphflow_workflow"])["nodes"]["denoise"]["type"] == "Loop"
    assert json.loads(img.text["graphflow_params"])["seed"] == 9
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def workflow_params(path: Path, tiny_model: Path, tmp_path: Path, models: dict | None = None) -> list[str]:
    """``models``: the tiny model of another family for workflows named after it (sdxl, ddpm,
    class_conditioned; the first key the name holds wins); a ``refiner`` param gets ``models["refiner"]``."""
    doc = json.loads(path.read_text())
    sets = []
    family_model = next((m for key, m in (models or {}).items() if key in path.stem), None)
    if "model" in doc["params"]:
        sets.append(f"model={family_model or tiny_model}")
    if "refiner" in doc["params"]:  # base then refiner: the model param is the base
        sets = [f"model={models['sdxl']}", f"refiner={models['refiner']}"]
    if "switch" in doc["params"]:
        sets.append("switch=0.5")
    if "label" in doc["params"]:
        sets.append("label=1")
    if "steps" in doc["params"]:
        sets.append("steps=6")
    if "start_step" in doc["params"]:
        sets.append("start_step=2")
    if "flux" in path.stem and "width" in doc["params"]:  # FluxPipeline's default is 1024 × 1024
        sets += ["width=64", "height=64"]
    if "embedding" in doc["params"]:
        from safetensors.torch import save_file

        save_file({"<my-shape>": torch.randn(32)}, tmp_path / "ti.safetensors")
        sets.append(f"embedding={tmp_path / 'ti.safetensors'}")
    if "lora" in doc["params"]:  # the shipped LoRA fits tiny-sd, not the random model: one made for it
        from tests.lora_files import lora_tensors, write_lora

        sets.append(f"lora={write_lora(tmp_path / 'lora.safetensors', *lora_tensors(tiny_model, seed=0))}")
    if "adapter" in doc["params"]:  # tiny random control models made for the workflow's model
        from tests.tiny_adapters import build_tiny_t2i_adapter

        sets.append(f"adapter={build_tiny_t2i_adapter(tmp_path / 'adapter', family_model or tiny_model)}")
    if "ip_adapter" in doc["params"]:
        from tests.tiny_adapters import build_tiny_ip_adapter

        sets.append(f"ip_adapter={build_tiny_ip_adapter(tmp_path / 'ip' / 'ip.safetensors', family_model or tiny_model)}")
    if "controlnet" in doc["params"]:  # a tiny random ControlNet made from the workflow's model
        from tests import tiny_controlnet as tc

        model = family_model or tiny_model
        build = tc.build_tiny_sd3_controlnet if "sd3" in path.stem else tc.build_tiny_flux_controlnet if "flux" in path.stem \
            else tc.build_tiny_controlnet
        sets.append(f"controlnet={build(model, tmp_path / 'controlnet')}")
    return sets


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_shipped_workflow_validates_and_runs(path, tiny_model, tiny_sdxl, tiny_sdxl_refiner, tiny_ddpm, tiny_class_ddpm, tiny_sd3,
                                                  tiny_flux, tmp_path, capsys):
    from graphflow.cli import main

    models = {"refiner": tiny_sdxl_refiner, "sdxl": tiny_sdxl, "ddpm": tiny_ddpm, "class_conditioned": tiny_class_ddpm,
              "sd3": tiny_sd3, "flux": tiny_flux}
    sets = [a for s in workflow_params(path, tiny_model, tmp_path, models) for a in ("--set", s)]
    assert main(["validate", str(path), *sets]) == 0
    # with a disk cache, as `graphflow run` has by default: every result must be storable
    code = main(["run", str(path), *sets, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "cannot write entry" not in out.err
    written = list((tmp_path / "out").iterdir())
    assert written, "every workflow writes its result"
    assert all(p.stat().st_size > 0 for p in written)


@pytest.mark.slow
def test_loop_result_is_reused_from_disk_by_a_second_process(tiny_model, tmp_path):
    cmd = [sys.executable, "-m", "graphflow.cli", "run", str(REPO / "workflows" / "txt2img.json"), "--set", f"model={tiny_model}",
           "--set", "steps=4", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--profile", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    table = [line.split() for line in second.stderr.splitlines() if line.strip()]
    rows = {r[0]: r for r in table if len(r) == 6}
    assert rows["decode"][-1] == "disk" and rows["save"][-1] == "ran"
    # the decoded image came from disk, so nothing behind it ran or was even loaded
    assert not {"denoise", "unet", "model", "cond"} & rows.keys()
    # a new guidance scale: the loop runs again, on text embeddings and noise read from disk (the
    # prompt is not re-encoded); the scheduler, an in-memory object, is rebuilt
    third = subprocess.run([*cmd, "--set", "guidance=3.5"], capture_output=True, text=True, timeout=300)
    rows = {r[0]: r for r in (line.split() for line in third.stderr.splitlines() if line.strip()) if len(r) == 6}
    assert rows["embeddings"][-1] == "disk" and rows["noise"][-1] == "disk" and rows["schedule"][-1] == "ran"
    assert not {"cond", "uncond"} & rows.keys()
    assert rows["denoise"][-1] == "ran" and rows["unet"][2] == "4"


def test_an_edited_input_file_is_read_again(tmp_path):
    from PIL import Image

    path = tmp_path / "in.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    wf = Workflow.from_dict({"format": 1, "nodes": {"img": {"type": "LoadImage", "inputs": {"path": str(path)}},
                                                    "mean": {"type": "ImageChannels", "inputs": {"image": {"from": "img.image"}}}},
                             "outputs": {"red": "mean.red", "blue": "mean.blue"}})
    ex = Executor()
    assert ex.run(wf)["red"] == 1.0
    assert ex.run(wf).runs("img") == 0  # unchanged file: cached
    Image.new("RGB", (8, 8), (0, 0, 255)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    r = ex.run(wf)
    assert r.runs("img") == 1 and r["red"] == 0.0 and r["blue"] == 1.0


def test_lms_coefficients_are_integrated_once_per_process_and_equal_diffusers_own(monkeypatch):
    """Every item of a sweep integrated the same LMS coefficients (scipy's quad, 2 ms a step):
    the Scheduler node's LMS shares them. Each is diffusers' own value; a copy, a pickle and a
    scheduler of other sigmas behave as diffusers' does."""
    from diffusers import LMSDiscreteScheduler
    from graphflow_nodes.stages import scheduling
    from graphflow_nodes.stages.scheduler_state import clone

    integrals = []
    real = scheduling._sharing(LMSDiscreteScheduler).__mro__[1].get_lms_coefficient
    monkeypatch.setattr(LMSDiscreteScheduler, "get_lms_coefficient", lambda *a: integrals.append(a[1:]) or real(*a))
    monkeypatch.setattr(scheduling, "_LMS_COEFFICIENTS", {})

    def sample(s, steps=6):
        s.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 8, 8, generator=g)
        for t in s.timesteps:
            x = s.step(torch.randn(1, 4, 8, 8, generator=g), t, s.scale_model_input(x, t)).prev_sample
        return x

    plain = sample(LMSDiscreteScheduler())
    assert len(integrals) == 1 + 2 + 3 + 4 * 3  # order 4: one coefficient per order reached
    integrals.clear()
    shared = scheduling.with_shared_coefficients(LMSDiscreteScheduler())
    assert type(shared).__name__ == "LMSDiscreteScheduler"
    assert torch.equal(sample(shared), plain) and len(integrals) == 18
    integrals.clear()
    for again in (scheduling.with_shared_coefficients(LMSDiscreteScheduler()), clone(shared), pickle.loads(pickle.dumps(shared))):
        assert type(again) is type(shared)
        assert torch.equal(sample(again), plain)
    assert integrals == []  # the same sigmas: nothing integrated again
    sample(shared, steps=7)
    assert len(integrals) == 18 + 4  # other sigmas: their own coefficients


def test_scheduler_by_name_with_options_and_a_clear_error_for_a_wrong_option(tiny_model):
    def run(options):
        return Executor().run(Workflow.from_dict({
            "format": 1,
            "nodes": {"m": {"type": "LoadModel", "inputs": {"path": str(tiny_model)}},
                      "s": {"type": "Scheduler", "inputs": {"scheduler_config": {"from": "m.scheduler_config"}, "name": "dpm",
                                                            "steps": 10, "start_step": 4, "options": options}}},
            "outputs": {"t": "s.timesteps", "sched": "s.scheduler"}}))

    r = run({"use_karras_sigmas": True})
    assert r.ok, r.errors
    assert type(r["sched"]).__name__ == "DPMSolverMultistepScheduler" and r["sched"].config.use_karras_sigmas
    assert len(r["t"]) == 6 and r["sched"].begin_index == 4  # sliced from step 4, as diffusers' img2img does
    bad = run({"use_karras_sigma": True})
    assert bad.errors[0].node == "s" and "has no option 'use_karras_sigma'" in bad.errors[0].message
