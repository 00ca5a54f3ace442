"""T2I-Adapters and IP-Adapters beyond the conformance cells (which hold one of each against the
diffusers pipelines, SD and SDXL): two of each stacked against diffusers' own stacking, the
promise that an IP-Adapter never changes the shared UNet, scale 0 giving the plain picture, and
bad files and images refused naming the node."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import graphflow
from graphflow import Executor, ValidationFailed, Workflow
from tests.tiny_adapters import build_tiny_ip_adapter, build_tiny_t2i_adapter

REPO = Path(__file__).resolve().parents[2]
CONTROL = REPO / "nodes" / "samples" / "red-circle-on-blue.png"
REFERENCE = REPO / "nodes" / "samples" / "yellow-square-on-green.png"
PROMPT = "a red circle on a blue background"
STEPS, SEED, GUIDANCE = 3, 3, 5.0


@pytest.fixture(scope="module")
def files(tiny_model, tiny_sdxl, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    return {
        "adapter_a": build_tiny_t2i_adapter(d / "adapter-a", tiny_model, seed=1),
        "adapter_b": build_tiny_t2i_adapter(d / "adapter-b", tiny_model, seed=2),
        "adapter_xl": build_tiny_t2i_adapter(d / "adapter-xl", tiny_sdxl, seed=1),
        "ip_a": build_tiny_ip_adapter(d / "ip" / "a.safetensors", tiny_model, seed=1),
        "ip_b": build_tiny_ip_adapter(d / "ip" / "b.safetensors", tiny_model, seed=2),
        "ip_xl": build_tiny_ip_adapter(d / "ip-xl" / "xl.safetensors", tiny_sdxl, seed=1),
        "ip_plus": build_tiny_ip_adapter(d / "ip" / "plus.safetensors", tiny_model, seed=3, plus=True),
    }


def workflow(name: str) -> dict:
    doc = copy.deepcopy(graphflow.load(REPO / "workflows" / f"{name}.json").doc.raw)
    del doc["nodes"]["save"]
    doc["outputs"] = {"image": "decode.image"}
    return doc


def run(doc: dict, ex: Executor | None = None, **params) -> graphflow.RunResult:
    params = {"seed": SEED, "steps": STEPS, "guidance": GUIDANCE, "prompt": PROMPT, "scheduler": "euler_a", **params}
    return (ex or Executor()).run(Workflow.from_dict(doc).with_params(**params))


def ok(r: graphflow.RunResult) -> torch.Tensor:
    assert r.ok, r.errors
    return r["image"]


def test_adapter_scale_zero_is_the_txt2img_picture(tiny_model, files):
    """Residuals times 0 add nothing: the txt2img picture bit for bit; at 0.8 the control image
    shows (the random adapter moves the picture by more than a rounding)."""
    ex = Executor()
    plain = ok(run(workflow("txt2img"), ex, model=str(tiny_model), width=64, height=64))
    adapter = workflow("t2i_adapter")
    zero = ok(run(adapter, ex, model=str(tiny_model), adapter=str(files["adapter_a"]), adapter_scale=0.0))
    some = ok(run(adapter, ex, model=str(tiny_model), adapter=str(files["adapter_a"]), adapter_scale=0.8))
    assert torch.equal(zero, plain)
    assert (some - plain).abs().max().item() > 0.05


def test_two_t2i_adapters_sum_as_diffusers_multi_adapter(tiny_model, files):
    """AdapterResiduals chained through add_to equals StableDiffusionAdapterPipeline with a
    MultiAdapter of the two, each at its own scale."""
    from diffusers import EulerAncestralDiscreteScheduler, MultiAdapter, StableDiffusionAdapterPipeline, T2IAdapter
    from PIL import Image

    doc = workflow("t2i_adapter")
    doc["nodes"]["adapter_2"] = {"type": "LoadAdapter", "inputs": {"path": str(files["adapter_b"])}}
    doc["nodes"]["residuals_2"] = {"type": "AdapterResiduals", "inputs": {
        "adapter": {"from": "adapter_2.adapter"}, "image": {"from": "control.image"}, "scale": 0.5,
        "add_to": {"from": "residuals.residuals"}}}
    doc["nodes"]["denoise"]["body"]["unet"]["inputs"]["adapter_residuals"] = {"from": "residuals_2.residuals"}
    image = ok(run(doc, model=str(tiny_model), adapter=str(files["adapter_a"]), adapter_scale=0.8, control_image=str(CONTROL)))

    adapters = MultiAdapter([T2IAdapter.from_pretrained(files[k]) for k in ("adapter_a", "adapter_b")])
    pipe = StableDiffusionAdapterPipeline.from_pretrained(tiny_model, adapter=adapters, safety_checker=None,
                                                          requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=[Image.open(CONTROL)] * 2, height=64, width=64, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               adapter_conditioning_scale=[0.8, 0.5], generator=torch.Generator().manual_seed(SEED), output_type="np").images
    ref = torch.from_numpy(ref).permute(0, 3, 1, 2)
    assert (image - ref).abs().max().item() == 0.0


def test_sdxl_adapter_factor_acts_on_the_first_steps_as_diffusers(tiny_sdxl, files):
    """adapter_factor 0.5 of 4 steps: residuals on steps 0 and 1 only (AdapterSteps), equal to
    StableDiffusionXLAdapterPipeline's adapter_conditioning_factor; neither the whole-run nor the
    adapter-free picture."""
    from diffusers import StableDiffusionXLAdapterPipeline, T2IAdapter
    from PIL import Image

    doc, steps = workflow("t2i_adapter_sdxl"), 4
    common = dict(model=str(tiny_sdxl), adapter=str(files["adapter_xl"]), adapter_scale=0.8, steps=steps, scheduler="model")
    half = ok(run(doc, adapter_factor=0.5, **common))
    whole = ok(run(doc, adapter_factor=1.0, **common))
    none = ok(run(doc, adapter_factor=0.0, **common))
    pipe = StableDiffusionXLAdapterPipeline.from_pretrained(tiny_sdxl, adapter=T2IAdapter.from_pretrained(files["adapter_xl"]),
                                                            local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=Image.open(CONTROL), height=64, width=64, num_inference_steps=steps, guidance_scale=GUIDANCE,
               adapter_conditioning_scale=0.8, adapter_conditioning_factor=0.5, generator=torch.Generator().manual_seed(SEED),
               output_type="pt").images
    assert (half - ref).abs().max().item() == 0.0
    assert (half - whole).abs().max().item() > 1e-3 and (half - none).abs().max().item() > 1e-3


def test_an_ip_adapter_never_changes_the_shared_unet(tiny_model, files):
    """Base, IP-Adapter, base again in one model manager (fresh executors, so nothing comes from
    the result caches): the base picture comes back bit for bit, the base UNet keeps its plain
    attention and loads once; scale 0 gives the base picture too."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
    from graphflow_nodes.loading.models import LoadModel

    first = Executor()
    models = first.models
    base = ok(run(workflow("txt2img"), first, model=str(tiny_model)))
    ip = workflow("ip_adapter")
    with_ip = ok(run(ip, Executor(models=models), model=str(tiny_model), ip_adapter=str(files["ip_a"]), ip_adapter_scale=0.6,
                     reference_image=str(REFERENCE)))
    zero = ok(run(ip, Executor(models=models), model=str(tiny_model), ip_adapter=str(files["ip_a"]), ip_adapter_scale=0.0,
                  reference_image=str(REFERENCE)))
    again = ok(run(workflow("txt2img"), Executor(models=models), model=str(tiny_model)))

    assert torch.equal(base, again) and torch.equal(base, zero)
    assert (with_ip - base).abs().max().item() > 0.05
    refs = LoadModel().run(LoadModel.In(path=str(tiny_model)), graphflow.Context())
    unet = models.get(refs["unet"])
    assert models.loads[refs["unet"]] == 1
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert not any(isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)) for p in unet.attn_processors.values())


def test_two_ip_adapters_stack_each_at_its_scale_as_diffusers(tiny_model, files):
    """Two LoadIPAdapter nodes chained, two image prompts chained in the same order: equal to
    ``load_ip_adapter([a, b])`` + ``set_ip_adapter_scale([0.6, 0.3])`` with one image each."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
    from PIL import Image

    doc = workflow("ip_adapter")
    doc["nodes"]["ip_adapter_2"] = {"type": "LoadIPAdapter", "inputs": {"unet": {"from": "ip_adapter.unet"}, "path": str(files["ip_b"]),
                                                                        "scale": 0.3}}
    doc["nodes"]["reference_2"] = {"type": "LoadImage", "inputs": {"path": str(CONTROL)}}
    doc["nodes"]["image_prompt_2"] = {"type": "EncodeImagePrompt", "inputs": {
        "image_encoder": {"from": "ip_adapter_2.image_encoder"}, "image": {"from": "reference_2.image"},
        "add_to": {"from": "image_prompt.image_prompts"}}}
    body = doc["nodes"]["denoise"]["body"]["unet"]["inputs"]
    body["unet"], body["image_prompts"] = {"from": "ip_adapter_2.unet"}, {"from": "image_prompt_2.image_prompts"}
    image = ok(run(doc, model=str(tiny_model), ip_adapter=str(files["ip_a"]), ip_adapter_scale=0.6, reference_image=str(REFERENCE)))

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.load_ip_adapter(str(files["ip_a"].parent), subfolder="", weight_name=["a.safetensors", "b.safetensors"], local_files_only=True)
    pipe.set_ip_adapter_scale([0.6, 0.3])
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, ip_adapter_image=[Image.open(REFERENCE), Image.open(CONTROL)], num_inference_steps=STEPS,
               guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED), output_type="pt").images
    assert (image - ref).abs().max().item() == 0.0
    one = ok(run(workflow("ip_adapter"), model=str(tiny_model), ip_adapter=str(files["ip_a"]), ip_adapter_scale=0.6,
                 reference_image=str(REFERENCE)))
    assert (image - one).abs().max().item() > 0.01  # the second adapter counts


def test_an_ip_adapter_plus_reads_the_penultimate_hidden_states_as_diffusers(tiny_model, files):
    """A Plus adapter (a resampler over the encoder's penultimate hidden states, and a black
    picture's encoding as the unconditional half) equals the pipeline with that file loaded."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
    from PIL import Image

    image = ok(run(workflow("ip_adapter"), model=str(tiny_model), ip_adapter=str(files["ip_plus"]), ip_adapter_scale=0.7,
                   reference_image=str(REFERENCE)))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.load_ip_adapter(str(files["ip_plus"].parent), subfolder="", weight_name="plus.safetensors", local_files_only=True)
    pipe.set_ip_adapter_scale(0.7)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, ip_adapter_image=Image.open(REFERENCE), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               generator=torch.Generator().manual_seed(SEED), output_type="pt").images
    assert type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterPlusImageProjection"
    assert (image - ref).abs().max().item() == 0.0
    plain = ok(run(workflow("txt2img"), model=str(tiny_model)))
    assert (image - plain).abs().max().item() > 0.05


def fails(doc: dict, **params):
    r = run(doc, **params)
    assert not r.ok
    return r.errors[0]


def test_pickles_are_refused_unread(tiny_model, files, tmp_path):
    """A pickled IP-Adapter, T2I-Adapter or image encoder is never opened: refused by name, and
    the code a pickle would run (touching a file) never runs."""
    import shutil

    marker = tmp_path / "ran"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (tmp_path / "ip.bin").write_bytes(evil)
    err = fails(workflow("ip_adapter"), model=str(tiny_model), ip_adapter=str(tmp_path / "ip.bin"))
    assert err.node == "ip_adapter" and "only .safetensors IP-Adapter files are read" in err.message

    adapter = tmp_path / "pickled-adapter"
    shutil.copytree(files["adapter_a"], adapter)
    (adapter / "diffusion_pytorch_model.safetensors").unlink()
    (adapter / "diffusion_pytorch_model.bin").write_bytes(evil)
    err = fails(workflow("t2i_adapter"), model=str(tiny_model), adapter=str(adapter))
    assert err.node == "adapter" and "diffusion_pytorch_model.bin, a pickle, which graphflow never opens" in err.message

    encoder = tmp_path / "encoder"
    shutil.copytree(files["ip_a"].parent / "image_encoder", encoder)
    (encoder / "model.safetensors").unlink()
    (encoder / "pytorch_model.bin").write_bytes(evil)
    err = fails(workflow("ip_adapter"), model=str(tiny_model), ip_adapter=str(files["ip_a"]), image_encoder=str(encoder))
    assert err.node == "ip_adapter" and "pytorch_model.bin, a pickle" in err.message
    assert not marker.exists()


def test_adapters_made_for_another_family_are_refused_by_name(tiny_model, files):
    err = fails(workflow("ip_adapter"), model=str(tiny_model), ip_adapter=str(files["ip_xl"]))
    assert err.node == "ip_adapter"
    assert err.message == ("IPAdapterError: xl.safetensors does not fit this UNet: its attention layers read 80-wide context, the UNet's text "
                           "context is 32 wide (an IP-Adapter made for another model family)")
    err = fails(workflow("t2i_adapter"), model=str(tiny_model), adapter=str(files["adapter_xl"]))
    assert err.node == "unet"
    assert err.message.startswith("ValueError: adapter_residuals: the T2I-Adapter's feature maps (16×4×4, 32×4×4) do not fit this UNet's down "
                                  "blocks (channels (16, 32)): an adapter made for another model family, or a control image of "
                                  "another size than the picture")


def control_doc(adapter, width: int, height: int) -> dict:
    nodes = {
        "adapter": {"type": "LoadAdapter", "inputs": {"path": str(adapter)}},
        "control": {"type": "LoadImage", "inputs": {"path": str(CONTROL), "width": width, "height": height}},
        "residuals": {"type": "AdapterResiduals", "inputs": {"adapter": {"from": "adapter.adapter"}, "image": {"from": "control.image"}}},
    }
    return {"format": 1, "nodes": nodes, "outputs": {"residuals": "residuals.residuals"}}


def test_a_control_image_of_the_wrong_size_is_refused_naming_the_field(tiny_model, files):
    r = Executor().run(Workflow.from_dict(control_doc(files["adapter_a"], 60, 64)))
    assert not r.ok and r.errors[0].node == "residuals"
    assert r.errors[0].message == ("ValueError: image: 60×64 pixels; this T2I-Adapter needs sides that are multiples of 16 "
                                   "(resize it in LoadImage to the picture's width and height)")
    # a size the adapter takes but not the picture's: named at the prediction, before any step is taken
    doc = workflow("t2i_adapter")
    doc["nodes"]["control"]["inputs"]["width"] = 96
    err = fails(doc, model=str(tiny_model), adapter=str(files["adapter_a"]))
    assert err.node == "unet" and "control image of another size than the picture" in err.message


def test_a_missing_adapter_file_is_refused_at_validation(tiny_model, tmp_path):
    for name, field, param in (("t2i_adapter", "adapter", "adapter"), ("ip_adapter", "ip_adapter", "ip_adapter")):
        with pytest.raises(ValidationFailed) as e:
            run(workflow(name), model=str(tiny_model), **{param: str(tmp_path / "nope")})
        (problem,) = e.value.problems
        assert (problem.code, problem.node, problem.field) == ("missing_file", field, "inputs.path")


def test_a_control_image_with_another_channel_count_is_refused(files):
    """An RGB adapter given a one-channel map (and the other way round) is named, not a
    convolution's shape error."""
    from graphflow.engine.model_manager import ModelManager, ModelSession
    from graphflow_nodes.control.t2i_adapter import AdapterResiduals, LoadAdapter

    ctx = graphflow.Context(models=ModelSession(ModelManager(), "test"))
    adapter = LoadAdapter().run(LoadAdapter.In(path=str(files["adapter_a"])), ctx)["adapter"]
    with pytest.raises(ValueError) as e:
        AdapterResiduals().run(AdapterResiduals.In(adapter=adapter, image=torch.rand(1, 1, 64, 64)), ctx)
    assert str(e.value) == "image: this T2I-Adapter takes 3-channel control images, given 1 channels"


def test_bare_names_are_found_in_the_models_folders_and_listed(tiny_model, files, tmp_path, monkeypatch, capsys):
    """A models folder's adapters/ and ip_adapters/ hold the control models: a workflow names them
    bare, and ``graphflow models`` lists them with their family (a pickled one as refused)."""
    import json
    import shutil

    from graphflow.cli import main

    root = tmp_path / "models"
    shutil.copytree(files["adapter_a"], root / "adapters" / "edges")
    shutil.copytree(files["ip_a"].parent, root / "ip_adapters")
    (root / "ip_adapters" / "old.bin").write_bytes(b"not read")
    monkeypatch.setenv("GRAPHFLOW_MODELS", str(root))
    ok(run(workflow("t2i_adapter"), model=str(tiny_model), adapter="edges"))
    ok(run(workflow("ip_adapter"), model=str(tiny_model), ip_adapter="a.safetensors"))
    assert main(["models", "--models-dir", str(root), "--json"]) == 0
    rows = {r["name"]: (r["kind"], r["family"]) for r in json.loads(capsys.readouterr().out)}
    assert rows["edges"] == ("adapters", "sd1-like")
    assert rows["a.safetensors"] == rows["plus.safetensors"] == ("ip_adapters", "sd1-like (text width 32)")
    assert rows["old.bin"] == ("ip_adapters", "refused: a pickle (.safetensors only)")
    assert "image_encoder" not in rows
