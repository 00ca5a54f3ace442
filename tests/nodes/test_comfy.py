"""ComfyUI API prompts translated into the library's nodes: the translation itself (deterministic,
ids and params, every refusal in ComfyUI's node_errors shape), ComfyUI's sigmas (the numbers its
own comfy/samplers.py gives), the pictures against ComfyUI's sampling arithmetic written out here
(k-diffusion's Euler ancestral and DPM++ 2M over its sigmas, its CPU noise, CFG on the denoised
prediction), and the CLI: `graphflow import comfy`, and run/validate taking ComfyUI JSON and PNGs.
bench/bench_comfy.py measures the same against ComfyUI's own code."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from graphflow import Executor, Workflow
from graphflow.cli import main
from graphflow_nodes.comfy.samplers import ModelSampling, comfy_sigmas
from graphflow_nodes.comfy.translate import TranslationError, translate

DATA = Path(__file__).resolve().parents[1] / "data" / "comfy"
SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def prompt(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def test_the_default_graph_translates_to_named_nodes_and_params():
    doc, params, id_map = translate(prompt("default"))
    assert params == {"checkpoint": "v1-5-pruned-emaonly.safetensors", "prompt": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
                      "negative_prompt": "text, watermark", "width": 512, "height": 512, "batch_size": 1, "denoise": 1.0, "seed": 8566257,
                      "sampler_name": "euler", "scheduler": "normal", "steps": 20, "cfg": 8.0}
    assert id_map == {"3": ["n3_schedule", "n3_noise", "n3_embeddings", "n3"], "4": ["n4"], "5": ["n5"], "6": ["n6"], "7": ["n7"],
                      "8": ["n8"], "9": ["n9"]}
    assert {k: v["type"] for k, v in doc["nodes"].items()} == {
        "n4": "LoadModel", "n6": "EncodeWeighted", "n7": "EncodeWeighted", "n5": "EmptyLatents", "n3_schedule": "ComfySchedule",
        "n3_noise": "ComfyNoise", "n3_embeddings": "CFGEmbeddings", "n3": "Loop", "n8": "Decode", "n9": "SaveImage"}
    assert list(doc["nodes"]["n3"]["body"]) == ["n3_scale", "n3_unet", "n3_cfg", "n3_step"]
    assert doc["outputs"] == {"images_9": "n9.paths", "image_9": "n8.image"}
    assert doc["params"]["seed"]["description"] == "noise seed (ComfyUI node 3, KSampler)"
    shuffled = dict(reversed(list(prompt("default").items())))  # the same prompt, its keys in another order
    assert json.dumps(translate(shuffled)[0]) == json.dumps(doc)
    Workflow.from_dict(doc).checked()  # a valid workflow of the library's nodes


def test_set_last_layer_becomes_clip_skip_and_two_samplers_get_their_own_params():
    doc, params, id_map = translate(prompt("img2img_lora_upscale"))
    assert doc["nodes"]["n4"]["inputs"]["clip_skip"] == 1 and doc["nodes"]["n4"]["inputs"]["mode"] == "comfy"
    assert doc["nodes"]["n4"]["inputs"]["text_encoder"] == {"from": "n2.text_encoder"}  # the LoRA's encoder
    assert id_map["3"] == [] and "folded" in doc["description"]
    assert doc["nodes"]["n8_schedule"]["inputs"]["denoise"] == {"param": "denoise"} and params["denoise"] == 0.6
    assert doc["nodes"]["n7"]["inputs"]["mode"] == "mean"
    two, params2, _ = translate(prompt("two_pass_advanced"))
    assert {k for k in params2 if k.startswith("steps")} == {"steps_10", "steps_11"}
    assert two["nodes"]["n10_schedule"]["inputs"]["end_step"] == 2 and two["nodes"]["n10_schedule"]["inputs"]["force_full_denoise"] is False
    assert two["nodes"]["n11_noise"]["inputs"]["add_noise"] is False and two["nodes"]["n11_schedule"]["inputs"]["force_full_denoise"] is True
    assert two["nodes"]["n11_noise"]["inputs"]["latents"] == {"from": "n10_out.latents"}


def errors(p: dict) -> dict:
    with pytest.raises(TranslationError) as e:
        translate(p)
    assert e.value.error["type"] in ("prompt_outputs_failed_validation", "prompt_no_outputs", "invalid_prompt")
    return e.value.node_errors


def test_every_untranslatable_node_is_named_in_comfyuis_error_shape():
    ne = errors(prompt("untranslatable"))
    assert list(ne) == ["11", "12", "13"]
    assert [ne[k]["class_type"] for k in ne] == ["CLIPVisionLoader", "unCLIPConditioning", "CLIPVisionEncode"]
    first = ne["11"]["errors"][0]
    assert set(first) == {"type", "message", "details", "extra_info"} and first["type"] == "missing_node_type"
    assert first["message"] == "Node 'CLIPVisionLoader' has no graphflow translation"
    assert ne["11"]["dependent_outputs"] == ["9"]


@pytest.mark.parametrize("change, node, kind, text", [
    (lambda p: p["3"]["inputs"].update(model=["40", 0]), "3", "bad_linked_input", "input model links to node 40, which the prompt does not have"),
    (lambda p: p["8"]["inputs"].update(vae=["4", 5]), "8", "bad_linked_input", "input vae links to output 5 of node 4 (CheckpointLoaderSimple), which has 3 outputs"),
    (lambda p: p["8"]["inputs"].update(vae=["4", 1]), "8", "return_type_mismatch", "input vae takes a VAE, node 4 output 1 is a CLIP"),
    (lambda p: p["3"]["inputs"].update(stepz=3), "3", "unknown_input", "input stepz is not an input of KSampler"),
    (lambda p: p["3"]["inputs"].update(steps="20"), "3", "invalid_input_type", "input steps is an integer"),
    (lambda p: p["3"]["inputs"].update(sampler_name="euler_b"), "3", "value_not_in_list", "sampler_name: 'euler_b' not in list"),
    (lambda p: p["3"]["inputs"].pop("seed"), "3", "required_input_missing", "Required input is missing"),
    (lambda p: p["3"]["inputs"].update(sampler_name="dpmpp_2m_sde"), "3", "value_not_valid", "sampler_name dpmpp_2m_sde has no translation"),
])
def test_malformed_prompts_are_refused_naming_node_and_input(change, node, kind, text):
    p = prompt("default")
    change(p)
    ne = errors(p)
    assert list(ne) == [node]
    assert (ne[node]["errors"][0]["type"], ne[node]["errors"][0]["message"]) == (kind, text)


def test_a_cycle_and_a_prompt_without_outputs_are_refused():
    p = prompt("default")
    p["6"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["6", 0], "stop_at_clip_layer": -1}}
    p["3"]["inputs"]["positive"] = ["7", 0]
    p["7"]["inputs"]["clip"] = ["6", 0]
    ne = errors(p)
    assert ne["6"]["errors"][0]["type"] == "dependency_cycle"
    p = prompt("default")
    del p["9"]
    with pytest.raises(TranslationError) as e:
        translate(p)
    assert e.value.error["type"] == "prompt_no_outputs"


def test_sigmas_are_comfyuis():
    """The numbers ComfyUI's own scheduler functions give for an SD 1.x model at 5 steps."""
    comfy = {
        "normal": [14.61464, 4.086081, 1.61558, 0.69515, 0.029167, 0.0],
        "karras": [14.614643, 4.796535, 1.274101, 0.24795, 0.029167, 0.0],
        "exponential": [14.61464, 3.088976, 0.652892, 0.137996, 0.029167, 0.0],
        "sgm_uniform": [14.61464, 5.092408, 2.279731, 1.162865, 0.571189, 0.0],
        "simple": [14.614641, 5.087763, 2.276463, 1.160578, 0.569285, 0.0],
        "ddim_uniform": [5.134431, 2.292854, 1.168216, 0.57405, 0.041314, 0.0],
        "beta": [14.614641, 7.371844, 2.615236, 1.027329, 0.39551, 0.0],
    }
    for name, want in comfy.items():
        assert comfy_sigmas(SD_CONFIG, name, 5) == pytest.approx(want, abs=2e-6), name
    # KSampler's denoise 0.5 runs the last 5 of 10; KSamplerAdvanced 1..3 of 5 stops at sigma 0 when forced
    assert comfy_sigmas(SD_CONFIG, "normal", 5, denoise=0.5) == pytest.approx(comfy_sigmas(SD_CONFIG, "normal", 10)[-6:])
    assert comfy_sigmas(SD_CONFIG, "normal", 5, start_step=1, end_step=3, force_full_denoise=True) == pytest.approx(comfy["normal"][1:3] + [0.0], abs=2e-6)


def reference(model: Path, sampler: str, scheduler: str, steps: int, seed: int, cfg: float, size: int, pos: str, neg: str) -> torch.Tensor:
    """ComfyUI's KSampler written out: its sigmas, noise from a CPU generator seeded with the seed,
    x0 = x - sigma * eps at the nearest training timestep, CFG on x0, then k-diffusion's update."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from graphflow_nodes.stages.weighting import weighted_embeddings

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    tok, te = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"), CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval()
    ms = ModelSampling(SD_CONFIG)
    with torch.no_grad():
        emb = torch.cat([weighted_embeddings(tok, te, pos, "comfy")[0], weighted_embeddings(tok, te, neg, "comfy")[0]])
    sigmas = torch.tensor(comfy_sigmas(SD_CONFIG, scheduler, steps))

    def denoise(x, sigma):
        t = ms.timestep(sigma).float()
        with torch.no_grad():
            eps = unet(torch.cat([x / (sigma ** 2 + 1) ** 0.5] * 2), torch.cat([t.view(1)] * 2), encoder_hidden_states=emb).sample
        c, u = (torch.cat([x] * 2) - eps * sigma).chunk(2)
        return u + (c - u) * cfg

    noise = torch.randn((1, 4, size // 8, size // 8), generator=torch.manual_seed(seed))
    x = noise * math.sqrt(1 + float(sigmas[0]) ** 2)
    step_noise = torch.Generator().manual_seed(seed + 1)
    old = None
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = denoise(x, s)
        if sampler == "euler_ancestral":
            up = min(float(s_next), float((s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5))
            down = (float(s_next) ** 2 - up ** 2) ** 0.5
            x = d if down == 0 else x + (x - d) / s * (down - s) + torch.randn(x.shape, generator=step_noise) * up
        else:  # dpmpp_2m
            t, t_next = -s.log(), -s_next.log()
            h = t_next - t
            if old is None or s_next == 0:
                x = (s_next / s) * x - (-h).expm1() * d
            else:
                r = (t + sigmas[i - 1].log()) / h
                x = (s_next / s) * x - (-h).expm1() * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
            old = d
    with torch.no_grad():
        return (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("sampler, scheduler", [("euler_ancestral", "normal"), ("dpmpp_2m", "karras")])
def test_the_picture_is_comfyuis_arithmetic(tiny_model, sampler, scheduler):
    p = prompt("default")
    doc, params, _ = translate(p)
    del doc["nodes"]["n9"]
    doc["outputs"] = {"image": "n8.image"}
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_model), "width": 64, "height": 64, "steps": 3,
                                                              "sampler_name": sampler, "scheduler": scheduler}))
    assert r.ok, r.errors
    want = reference(tiny_model, sampler, scheduler, 3, params["seed"], 8.0, 64, params["prompt"], params["negative_prompt"])
    assert (r["image"] - want).abs().max() < 1e-4
    assert (r["image"] - want).abs().mean() < 1e-5


def test_combined_and_ranged_conditionings(tiny_model):
    """A conditioning combined with itself averages to itself; a prompt switched halfway is
    neither prompt's picture."""
    def run(p):
        doc, params, _ = translate(p)
        del doc["nodes"]["n13"]
        doc["outputs"] = {"image": "n12.image"}
        r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_model), "steps": 3}))
        assert r.ok, r.errors
        return r["image"]

    switch = prompt("prompt_switch")
    red = copy.deepcopy(switch)
    red["3"]["inputs"]["positive"] = ["6", 0]
    twice = copy.deepcopy(switch)
    twice["11"]["inputs"].update(conditioning_1=["6", 0], conditioning_2=["6", 0])
    green = copy.deepcopy(switch)
    green["3"]["inputs"]["positive"] = ["7", 0]
    assert translate(twice)[0]["nodes"]["n3"]["body"]["n3_cfg"]["type"] == "PredictConditioned"
    a, b, s, g = run(red), run(twice), run(switch), run(green)
    assert (a - b).abs().max() < 1e-5
    assert (s - a).abs().max() > 5e-4 and (s - g).abs().max() > 5e-2  # the first, noisiest half decides the most


def test_cli_import_run_and_validate(tmp_path, capsys):
    out = tmp_path / "wf.json"
    assert main(["import", "comfy", str(DATA / "default.json"), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == translate(prompt("default"))[0]
    assert main(["import", "comfy", str(DATA / "untranslatable.json"), "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "ComfyUI node 11 (CLIPVisionLoader): Node 'CLIPVisionLoader' has no graphflow translation" in err
    assert "ComfyUI node 12 (unCLIPConditioning)" in err and "ComfyUI node 13 (CLIPVisionEncode)" in err
    assert not (tmp_path / "x.json").exists()
    # a ComfyUI PNG carries its prompt as a text chunk: validate reads it directly
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", (DATA / "default.json").read_text())
    info.add_text("workflow", "{}")
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=info)
    assert main(["validate", str(tmp_path / "comfy.png"), "--set", "checkpoint=tiny-sd"]) == 0
    assert "comfy.png: ok (14 nodes, 12 parameters, outputs: images_9, image_9)" in capsys.readouterr().out
    bare = PngInfo()
    bare.add_text("workflow", "{}")
    Image.new("RGB", (8, 8)).save(tmp_path / "no-prompt.png", pnginfo=bare)
    assert main(["validate", str(tmp_path / "no-prompt.png")]) == 2
    assert "holds a ComfyUI editor workflow but no prompt chunk" in capsys.readouterr().err
    (tmp_path / "editor.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    assert main(["validate", str(tmp_path / "editor.json")]) == 2
    assert "is a ComfyUI editor workflow (nodes and links), not the API format" in capsys.readouterr().err
    assert main(["run", str(DATA / "two_pass_advanced.json"), "--out", str(tmp_path / "out"), "--quiet", "--set", "steps_10=3",
                 "--set", "steps_11=3"]) == 0
    assert (tmp_path / "out" / "two_pass_00001.png").is_file()


def test_a_model_of_another_family_is_refused_by_the_sampler(tiny_sdxl):
    doc, params, _ = translate(prompt("default"))
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_sdxl), "width": 64, "height": 64, "steps": 2}))
    assert not r.ok
    assert ("the checkpoint is a sdxl model, but the prompt was translated for an SD 1.x/2.x checkpoint (its text encoders and conditions "
            "differ): set the prompt's ckpt_name to this checkpoint (a path, or its name in the models folders' checkpoints/) and translate again") in str(r.errors)
    assert "n3_schedule" in str(r.errors)


def test_advanced_samplers_split_at_a_step_give_the_one_pass_picture(tiny_model):
    """KSamplerAdvanced to step 2 with its leftover noise, then from step 2 without new noise: the
    same Euler run as one KSampler (ComfyUI's own way of splitting a run between two models)."""
    split = prompt("two_pass_advanced")
    split["13"]["inputs"]["samples"] = ["11", 0]  # no upscale
    one = copy.deepcopy(split)
    one["11"] = {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 42, "steps": 4, "cfg": 6.0, "sampler_name": "euler",
                                                      "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
                                                      "latent_image": ["5", 0], "denoise": 1.0}}
    del one["10"], one["12"], split["12"]

    def run(p):
        doc, params, _ = translate(p)
        del doc["nodes"]["n14"]
        doc["outputs"] = {"image": "n13.image"}
        r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_model)}))
        assert r.ok, r.errors
        return r["image"]

    assert (run(split) - run(one)).abs().max() < 1e-5


def test_pixel_upscaling_class_types():
    p = prompt("upscale_with_model")
    doc, params, _ = translate(p)
    assert {k: doc["nodes"][k]["type"] for k in ("n2", "n3", "n4", "n5")} == {
        "n2": "LoadUpscaler", "n3": "Upscale", "n4": "ResizeImage", "n5": "ResizeImage"}
    assert params["upscaler"] == "nearest-x4-rrdbnet.safetensors" and doc["nodes"]["n3"]["inputs"]["tile"] == 512
    r = Executor().run(Workflow.from_dict({**doc, "nodes": {k: v for k, v in doc["nodes"].items() if k not in ("n6", "n7")},
                                           "outputs": {"big": "n4.image", "sized": "n5.image"}}))
    assert r.ok, r.errors
    assert tuple(r["big"].shape) == (1, 3, 128, 128) and tuple(r["sized"].shape) == (1, 3, 80, 96)
    p["5"]["inputs"]["upscale_method"] = "lanczos"
    assert errors(p)["5"]["errors"][0]["message"] == "upscale_method lanczos has no translation"
