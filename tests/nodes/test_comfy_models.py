"""ComfyUI prompts for the newer checkpoints: CheckpointLoaderSimple tells the family from the
file as ComfyUI does; an SDXL prompt (CLIPTextEncodeSDXL and a plain CLIPTextEncode) runs on the
tiny SDXL model and gives ComfyUI's arithmetic written out (both encoders' penultimate states side
by side, bigG's pooled embedding, the conditioning's size conditions: a plain CLIPTextEncode's the
picture's, which comfy/samplers.py ``encode_model_conds`` fills in); the families not translated
yet are refused by node."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from graphflow import Executor, Workflow
from graphflow_nodes.comfy.samplers import ModelSampling, comfy_sigmas
from graphflow_nodes.comfy.translate import TranslationError, checkpoint_family, translate

DATA = Path(__file__).resolve().parents[1] / "data" / "comfy"
SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def prompt(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def drawn(doc: dict, params: dict, ex: Executor | None = None):
    """A translated prompt's picture: its SaveImage (n9) left out, VAEDecode's image the output."""
    del doc["nodes"]["n9"]
    doc["outputs"] = {"image": "n8.image"}
    r = (ex or Executor()).run(Workflow.from_dict(doc).with_params(**params))
    assert r.ok, r.errors
    return r


def comfy_sdxl(model: Path, pos: tuple[str, str, list], neg: tuple[str, str, list], seed: int, cfg: float, steps: int, size: int) -> torch.Tensor:
    """ComfyUI's KSampler (euler, karras) on an SDXL model: each side (CLIP-L text, bigG text,
    size conditions)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from graphflow_nodes.stages.weighting import weighted_embeddings

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    tok, te = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"), CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval()
    tok2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2")
    te2 = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2").eval()
    states, pooled, ids = [], [], []
    with torch.no_grad():
        for text_l, text_g, size_ids in (pos, neg):
            a = weighted_embeddings(tok, te, text_l, "comfy", "penultimate")[0]
            b, p = weighted_embeddings(tok2, te2, text_g, "comfy", "penultimate")
            states.append(torch.cat([a, b], dim=-1))
            pooled.append(p)
            ids.append(torch.tensor([size_ids], dtype=torch.float32))
    emb, pooled, ids = torch.cat(states), torch.cat(pooled), torch.cat(ids)
    ms = ModelSampling(SD_CONFIG)
    sigmas = torch.tensor(comfy_sigmas(SD_CONFIG, "karras", steps))
    x = torch.randn((1, 4, size // 8, size // 8), generator=torch.manual_seed(seed)) * math.sqrt(1 + float(sigmas[0]) ** 2)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        t = ms.timestep(s).float()
        with torch.no_grad():
            eps = unet(torch.cat([x / (s ** 2 + 1) ** 0.5] * 2), torch.cat([t.view(1)] * 2), encoder_hidden_states=emb,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        c, u = (torch.cat([x] * 2) - eps * s).chunk(2)
        d = u + (c - u) * cfg
        x = x + (x - d) / s * (s_next - s)
    with torch.no_grad():
        return (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)



def encode_for_inpaint(path, grow: int = 4, size: int = 32):
    """ComfyUI's VAEEncodeForInpaint on a picture with alpha, before its VAE: the mask is 1 − alpha,
    grown by ``grow`` with its off-centre box, and the masked pixels are set to grey."""
    import numpy as np
    from PIL import Image

    img = Image.open(path)
    image = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
    m = 1 - torch.from_numpy(np.asarray(img.getchannel("A"), np.float32) / 255)[None, None]
    grown = torch.clamp(torch.nn.functional.conv2d(m.round(), torch.ones(1, 1, grow, grow), padding=grow // 2), 0, 1)[:, :, :size, :size].round()
    return (image - 0.5) * (1 - m.round()) + 0.5, grown

def test_an_sdxl_prompt_is_comfyuis_sdxl_arithmetic(tiny_sdxl):
    p = prompt("sdxl")
    doc, params, id_map = translate(p, family_of=lambda name: "sdxl")  # sd_xl_base_1.0.safetensors, as a models folder would hold it
    assert id_map["6"] == ["n6_l", "n6_g", "n6", "n6_size"] and params["text_g"] == "a lighthouse on a cliff, (dramatic:1.3) sky"
    assert doc["nodes"]["n3_embeddings"]["type"] == "CFGConditions" and doc["nodes"]["n3"]["body"]["n3_unet"]["type"] == "PredictNoiseXL"
    assert doc["nodes"]["n3_schedule"]["inputs"]["translated_for"] == "sdxl"
    r = drawn(doc, {**params, "checkpoint": str(tiny_sdxl), "width": 64, "height": 64, "steps": 3})
    want = comfy_sdxl(tiny_sdxl, ("oil painting", params["text_g"], [4096, 4096, 0, 0, 1024, 1024]),
                      ("blurry, lowres", "blurry, lowres", [64, 64, 0, 0, 64, 64]), 31, 6.5, 3, 64)
    assert (r["image"] - want).abs().max() < 1e-4
    # the same prompt run on an SD 1.x checkpoint is refused by the sampler, naming what to do
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": "tiny-sd", "width": 64, "height": 64, "steps": 1}))
    assert not r.ok and "set the prompt's ckpt_name to this checkpoint (a path, or its name in the models folders' checkpoints/) and translate again" in str(r.errors)


def test_checkpoint_family_reads_the_file_as_comfyui_does(tiny_sdxl, tiny_sd3, tmp_path):
    from tests.original_layout import write_original_checkpoint

    assert checkpoint_family(str(tiny_sdxl)) == "sdxl" and checkpoint_family(str(tiny_sd3)) == "sd3"
    assert checkpoint_family(str(write_original_checkpoint(tiny_sdxl, tmp_path / "xl.safetensors", "sdxl"))) == "sdxl"
    assert checkpoint_family("tiny-sd") == "sd" and checkpoint_family("not-here.safetensors") is None
    # a checkpoint not found here: the family the prompt's own class types imply
    for name, family in (("sdxl", "sdxl"), ("sd3", "sd3"), ("flux", "flux"), ("default", "sd")):
        assert translate(prompt(name))[0]["nodes"]["n3_schedule"]["inputs"]["translated_for"] == family


def comfy_sd3(model: Path, pos: str, neg: str, seed: int, cfg: float, steps: int, size: int, shift: float, scheduler: str,
              inpaint: tuple | None = None, control=None) -> torch.Tensor:
    """ComfyUI's KSampler (euler) on an SD3 model: CLIP-L and bigG penultimate states side by side,
    padded to T5's width, then T5's states for 77 tokens; noise σ·n; x += (σ' − σ)·v; the
    transformer's timestep σ × 1000."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from graphflow_nodes.comfy.samplers import ModelSamplingFlow
    from graphflow_nodes.stages.weighting import weighted_embeddings

    tr = SD3Transformer2DModel.from_pretrained(model, subfolder="transformer").eval()
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    encoders = [(CLIPTokenizer.from_pretrained(model, subfolder=f"tokenizer{k}"),
                 CLIPTextModelWithProjection.from_pretrained(model, subfolder=f"text_encoder{k}").eval()) for k in ("", "_2")]
    tok3, te3 = T5TokenizerFast.from_pretrained(model, subfolder="tokenizer_3"), T5EncoderModel.from_pretrained(model, subfolder="text_encoder_3").eval()
    states, pooled = [], []
    with torch.no_grad():
        for text in (neg, pos):
            (a, pa), (b, pb) = (weighted_embeddings(tok, te, text, "comfy", "penultimate") for tok, te in encoders)
            t5 = te3(tok3(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids)[0]
            lg = torch.nn.functional.pad(torch.cat([a, b], dim=-1), (0, t5.shape[-1] - a.shape[-1] - b.shape[-1]))
            states.append(torch.cat([lg, t5], dim=-2))
            pooled.append(torch.cat([pa, pb], dim=-1))
    emb, pooled = torch.cat(states), torch.cat(pooled)
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": shift}
    sigmas = torch.tensor(comfy_sigmas(config, scheduler, steps))
    assert ModelSamplingFlow(shift).sigma_max == 1.0
    noise = torch.randn((1, 16, size // 8, size // 8), generator=torch.manual_seed(seed))
    latent, mask = torch.zeros_like(noise), None
    if inpaint is not None:  # (greyed picture, pixel noise mask): KSamplerX0Inpaint's blends with a flow model's noise scaling
        with torch.no_grad():
            latent = (vae.encode(inpaint[0] * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        mask = torch.nn.functional.interpolate(inpaint[1], size=latent.shape[-2:], mode="bilinear")
    x = noise * sigmas[0] + (1 - sigmas[0]) * latent
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        xm = x if mask is None else x * mask + (noise * s + (1 - s) * latent) * (1 - mask)
        extra = {} if control is None else control(torch.cat([xm] * 2), s, emb, vae)
        with torch.no_grad():
            v = tr(hidden_states=torch.cat([xm] * 2), timestep=(s * 1000).expand(2), encoder_hidden_states=emb, pooled_projections=pooled,
                   **extra).sample
        u, c = v.chunk(2)
        d = xm - s * (u + (c - u) * cfg)
        if mask is not None:
            d = d * mask + latent * (1 - mask)
        x = x + (x - d) / s * (s_next - s)
    with torch.no_grad():
        return (vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor).sample / 2 + 0.5).clamp(0, 1)


def test_an_sd3_prompt_is_comfyuis_flow_arithmetic(tiny_sd3, tmp_path):
    p = prompt("sd3")
    doc, params, id_map = translate(p, family_of=lambda name: "sd3")
    assert id_map["10"] == [] and doc["nodes"]["n3_schedule"]["inputs"]["shift"] == {"param": "shift"} and params["shift"] == 2.0
    assert doc["nodes"]["n5"]["inputs"]["channels"] == 16 and doc["nodes"]["n6_t5"]["inputs"]["max_sequence_length"] == 77
    r = drawn(doc, {**params, "checkpoint": str(tiny_sd3), "width": 32, "height": 32, "steps": 3})
    want = comfy_sd3(tiny_sd3, p["6"]["inputs"]["text"], "", 11, 4.5, 3, 32, 2.0, "sgm_uniform")
    assert (r["image"] - want).abs().max() < 1e-4
    # VAEEncodeForInpaint on SD3: ComfyUI's greyed picture, box-grown mask and blends, with a flow model's noise scaling
    import numpy as np
    from PIL import Image

    rgba = np.dstack([(np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8), np.full((32, 32), 255, np.uint8)])
    rgba[6:22, 8:26, 3] = 127  # a half-transparent ring (a soft mask) around a transparent square
    rgba[8:20, 10:24, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sd3-photo.png")
    ip = copy.deepcopy(p)
    ip.update({"12": {"class_type": "LoadImage", "inputs": {"image": "sd3-photo.png"}},
               "13": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["12", 0], "vae": ["4", 2], "mask": ["12", 1], "grow_mask_by": 4}}})
    ip["3"]["inputs"]["latent_image"] = ["13", 0]
    idoc, iparams, _ = translate(ip, family_of=lambda name: "sd3")
    assert list(idoc["nodes"]["n3"]["body"]) == ["n3_inpaint", "n3_transformer", "n3_cfg", "n3_keep", "n3_step"]
    r = drawn(idoc, {**iparams, "checkpoint": str(tiny_sd3), "image": str(tmp_path / "sd3-photo.png"), "steps": 3})
    want = comfy_sd3(tiny_sd3, p["6"]["inputs"]["text"], "", 11, 4.5, 3, 32, 2.0, "sgm_uniform",
                     inpaint=encode_for_inpaint(tmp_path / "sd3-photo.png"))
    assert (r["image"] - want).abs().max() < 1e-4
    # CLIPTextEncodeSD3 with the same text for its three encoders is CLIPTextEncode; an empty one without padding is refused
    three = copy.deepcopy(p)
    three["6"] = {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip": ["4", 1], "clip_l": p["6"]["inputs"]["text"], "clip_g": p["6"]["inputs"]["text"],
                                                               "t5xxl": p["6"]["inputs"]["text"], "empty_padding": "none"}}
    tdoc, tparams, _ = translate(three, family_of=lambda name: "sd3")
    assert {k: v for k, v in tdoc["nodes"].items() if k.startswith("n6")} == {k: v for k, v in doc["nodes"].items() if k.startswith("n6")} | {
        k: {**v, "inputs": {**v["inputs"], "text": p["6"]["inputs"]["text"]}} for k, v in doc["nodes"].items() if k in ("n6_l", "n6_g", "n6_t5")}
    three["6"]["inputs"]["t5xxl"] = ""
    with pytest.raises(TranslationError) as e:
        translate(three, family_of=lambda name: "sd3")
    assert e.value.node_errors["6"]["errors"][0]["message"] == "an empty t5xxl with empty_padding none has no translation"
    # a sampler ComfyUI runs its own rectified-flow way is refused for flow models, by name
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_sd3), "width": 32, "height": 32, "steps": 1,
                                                              "sampler_name": "euler_ancestral"}))
    assert not r.ok and "sampler_name 'euler_ancestral' on a flow model is refused" in str(r.errors) and "n3_schedule" in str(r.errors)


@pytest.mark.parametrize("strength, end", [(0.8, 1.0), (1.0, 0.3)])
def test_an_sd3_controlnet_is_comfyuis_arithmetic(tiny_sd3, tmp_path, strength, end):
    """ControlNetApplyAdvanced on SD3 as comfy/controlnet.py runs an SD3 ControlNet: the image
    through the linked VAE to its mean, times the scaling factor with no shift, the pooled
    projection zeroed, the residuals times the strength while sigma lies within the percents
    (a flow model's percent_to_sigma), on both halves."""
    import numpy as np
    from diffusers import SD3ControlNetModel
    from PIL import Image

    from tests.tiny_controlnet import build_tiny_sd3_controlnet

    net_path = build_tiny_sd3_controlnet(tiny_sd3, tmp_path / "sd3-controlnet", seed=3)
    pixels = (np.random.default_rng(9).random((32, 32, 3)) > 0.7).astype(np.uint8) * 255  # an edge-map-like picture
    Image.fromarray(pixels, "RGB").save(tmp_path / "edges.png")
    p = prompt("sd3")
    p.update({"11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": str(net_path)}},
              "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0],
                                                                        "image": ["13", 0], "strength": strength, "start_percent": 0.0,
                                                                        "end_percent": end, "vae": ["4", 2]}},
              "13": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}})
    p["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    doc, params, _ = translate(p, family_of=lambda name: "sd3")
    assert list(doc["nodes"]["n3"]["body"]) == ["n3_control_scale", "n3_control", "n3_transformer", "n3_cfg", "n3_step"]
    assert doc["nodes"]["n3_control_latents"]["inputs"]["mode"] == "mean"
    r = drawn(doc, {**params, "checkpoint": str(tiny_sd3), "image": str(tmp_path / "edges.png"), "width": 32, "height": 32, "steps": 3})
    net = SD3ControlNetModel.from_pretrained(net_path).eval()
    hint = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
    from graphflow_nodes.comfy.samplers import ModelSamplingFlow

    stop = float(ModelSamplingFlow(2.0).sigma((1 - end) * 1000)) if end < 1 else 0.0
    used = []

    def control(x, s, emb, vae):
        used.append(bool(s >= stop))
        if s < stop:
            return {}
        with torch.no_grad():
            cond = vae.encode(hint * 2 - 1).latent_dist.mean * vae.config.scaling_factor  # ComfyUI: SD3 latent format, shift 0
            blocks = net(hidden_states=x, timestep=(s * 1000).expand(2), encoder_hidden_states=emb if net.config.joint_attention_dim else None,
                         pooled_projections=torch.zeros(2, net.config.pooled_projection_dim), controlnet_cond=torch.cat([cond] * 2),
                         conditioning_scale=strength, return_dict=False)[0]
        return {"block_controlnet_hidden_states": list(blocks)}

    want = comfy_sd3(tiny_sd3, p["6"]["inputs"]["text"], "", 11, 4.5, 3, 32, 2.0, "sgm_uniform", control=control)
    assert used == ([True, True, True] if end == 1.0 else [True, False, False])
    assert (r["image"] - want).abs().max() < 1e-4
    plain = comfy_sd3(tiny_sd3, p["6"]["inputs"]["text"], "", 11, 4.5, 3, 32, 2.0, "sgm_uniform")
    assert (r["image"] - plain).abs().max() > 1e-3  # the ControlNet steered the picture
    # ControlNetApply (no VAE, which ComfyUI's SD3 ControlNets need) is refused by node
    p["12"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["11", 0], "image": ["13", 0], "strength": 1.0}}
    p["3"]["inputs"].update(positive=["12", 0], negative=["7", 0])
    with pytest.raises(TranslationError) as e:
        translate(p, family_of=lambda name: "sd3")
    assert e.value.node_errors["3"]["errors"][0]["message"].startswith("an SD3 ControlNet is translated from ControlNetApplyAdvanced with its vae")


def comfy_flux(model: Path, text: str, seed: int, guidance: float, steps: int, size: int, shift: float, scheduler: str,
               cfg: float = 1.0, neg: str = "", inpaint: tuple | None = None, control=None) -> torch.Tensor:
    """ComfyUI's KSampler (euler) on FLUX.1: CLIP-L's pooled embedding, T5 at 256 tokens, the
    conditioning's guidance, ModelSamplingFlux's sigmas, noise σ·n over 16 × size/8 latents packed
    in 2 × 2 patches, x += (σ' − σ)·v with the timestep σ; true CFG only when cfg is not 1.
    ``inpaint`` (greyed picture, pixel noise mask): KSamplerX0Inpaint's two blends, made on the
    unpacked latents as ComfyUI makes them (its Flux model packs inside)."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from graphflow_nodes.stages.weighting import weighted_embeddings

    tr = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer").eval()
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    tok, te = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"), CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval()
    tok2, te2 = T5TokenizerFast.from_pretrained(model, subfolder="tokenizer_2"), T5EncoderModel.from_pretrained(model, subfolder="text_encoder_2").eval()

    def encode(t):
        with torch.no_grad():
            return te2(tok2(t, padding="max_length", max_length=256, truncation=True, return_tensors="pt").input_ids)[0], \
                weighted_embeddings(tok, te, t, "comfy")[1]

    sides = [(*encode(text), guidance)] + ([(*encode(neg), 3.5)] if cfg != 1.0 else [])  # the negative keeps ComfyUI's default guidance
    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    sigmas = torch.tensor(comfy_sigmas(config, scheduler, steps, shift=shift, flux=True))
    h = w = size // 8
    noise = torch.randn((1, 16, h, w), generator=torch.manual_seed(seed))
    latent, mask = torch.zeros_like(noise), None
    if inpaint is not None:
        with torch.no_grad():
            latent = (vae.encode(inpaint[0] * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        mask = torch.nn.functional.interpolate(inpaint[1], size=latent.shape[-2:], mode="bilinear")
    x = noise * sigmas[0] + (1 - sigmas[0]) * latent
    pack = lambda t: FluxPipeline._pack_latents(t, 1, 16, h, w)
    unpack = lambda t: t.view(1, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        xm = x if mask is None else x * mask + (noise * s + (1 - s) * latent) * (1 - mask)
        with torch.no_grad():
            v = [tr(hidden_states=pack(xm), timestep=s.view(1), guidance=torch.tensor([g]) if tr.config.guidance_embeds else None,
                    pooled_projections=p, encoder_hidden_states=e, txt_ids=torch.zeros(e.shape[1], 3), img_ids=img_ids,
                    **({} if control is None else control(pack(xm), s, e, p, g, img_ids, vae))).sample for e, p, g in sides]
        v = unpack(v[0] if len(v) == 1 else v[1] + cfg * (v[0] - v[1]))
        d = xm - s * v
        if mask is not None:
            d = d * mask + latent * (1 - mask)
        x = x + (x - d) / s * (s_next - s)
    with torch.no_grad():
        return (vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor).sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_a_flux_prompt_is_comfyuis_flux_arithmetic(tiny_flux, cfg):
    p = prompt("flux")
    p["3"]["inputs"]["cfg"] = cfg
    doc, params, id_map = translate(p, family_of=lambda name: "flux")
    shift = (1024 * 1024 / 256) * (0.65 / 3840) + 0.5 - (0.65 / 3840) * 256  # ModelSamplingFlux at 1024 × 1024: its max_shift
    assert id_map["10"] == id_map["11"] == [] and doc["nodes"]["n3_schedule"]["inputs"]["shift"] == pytest.approx(shift) == pytest.approx(1.15)
    body = doc["nodes"]["n3"]["body"]
    assert params["guidance"] == 2.5 and ("cfg" in params) == (cfg != 1.0)
    assert [b["type"] for b in body.values()] == (["PredictFlux", "SchedulerStep"] if cfg == 1.0 else ["PredictFlux", "PredictFlux", "TrueCFG", "SchedulerStep"])
    r = drawn(doc, {**params, "checkpoint": str(tiny_flux), "width": 32, "height": 32, "steps": 3})
    want = comfy_flux(tiny_flux, p["6"]["inputs"]["text"], 21, 2.5, 3, 32, shift, "simple", cfg=cfg)
    assert (r["image"] - want).abs().max() < 1e-4


def test_flux_inpainting_is_comfyuis_arithmetic(tiny_flux, tmp_path):
    """VAEEncodeForInpaint on FLUX.1: ComfyUI's greyed picture and box-grown mask, its two blends
    with a flow model's noise scaling, on the latents the loop packs (mask, picture and noise
    packed with them)."""
    import numpy as np
    from PIL import Image

    rgba = np.dstack([(np.random.default_rng(5).random((32, 32, 3)) * 255).astype(np.uint8), np.full((32, 32), 255, np.uint8)])
    rgba[4:20, 6:28, 3] = 127  # a half-transparent ring (a soft mask) around a transparent square
    rgba[8:16, 10:24, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "flux-photo.png")
    p = prompt("flux")
    p.update({"12": {"class_type": "LoadImage", "inputs": {"image": "flux-photo.png"}},
              "13": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["12", 0], "vae": ["4", 2], "mask": ["12", 1], "grow_mask_by": 4}}})
    p["3"]["inputs"]["latent_image"] = ["13", 0]
    doc, params, _ = translate(p, family_of=lambda name: "flux")
    assert list(doc["nodes"]["n3"]["body"]) == ["n3_inpaint", "n3_cfg", "n3_keep", "n3_step"]
    assert doc["nodes"]["n3_mask"]["inputs"]["pack"] is True and doc["nodes"]["n3_pack_image"]["type"] == "PackLatents"
    r = drawn(doc, {**params, "checkpoint": str(tiny_flux), "image": str(tmp_path / "flux-photo.png"), "steps": 3})
    shift = 1.15  # ModelSamplingFlux at 1024 × 1024
    want = comfy_flux(tiny_flux, p["6"]["inputs"]["text"], 21, 2.5, 3, 32, shift, "simple", inpaint=encode_for_inpaint(tmp_path / "flux-photo.png"))
    assert (r["image"] - want).abs().max() < 1e-4


@pytest.mark.parametrize("cfg, end", [(1.0, 1.0), (2.0, 0.3)])
def test_a_flux_controlnet_is_comfyuis_arithmetic(tiny_flux, tmp_path, cfg, end):
    """ControlNetApplyAdvanced on FLUX.1 as comfy/controlnet.py runs an InstantX ControlNet: the
    image's latent mean through the linked VAE, less the shift, times the scale, packed; beside
    each side's call with that side's text, pooled embedding and guidance; the residuals times the
    strength while sigma lies within the percents (ModelSamplingFlux's percent_to_sigma)."""
    import math

    import numpy as np
    from diffusers import FluxControlNetModel, FluxPipeline
    from PIL import Image

    from tests.tiny_controlnet import build_tiny_flux_controlnet

    net_path = build_tiny_flux_controlnet(tiny_flux, tmp_path / "flux-controlnet", seed=4)
    pixels = (np.random.default_rng(11).random((32, 32, 3)) > 0.7).astype(np.uint8) * 255
    Image.fromarray(pixels, "RGB").save(tmp_path / "edges.png")
    p = prompt("flux")
    p["3"]["inputs"]["cfg"] = cfg
    p.update({"12": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": str(net_path)}},
              "13": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["11", 0], "negative": ["7", 0], "control_net": ["12", 0],
                                                                        "image": ["14", 0], "strength": 0.7, "start_percent": 0.0,
                                                                        "end_percent": end, "vae": ["4", 2]}},
              "14": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}})
    p["3"]["inputs"].update(positive=["13", 0], negative=["13", 1])
    doc, params, _ = translate(p, family_of=lambda name: "flux")
    body = list(doc["nodes"]["n3"]["body"])
    assert body == (["n3_control_scale", "n3_positive_control", "n3_cfg", "n3_step"] if cfg == 1.0 else
                    ["n3_control_scale", "n3_positive_control", "n3_transformer", "n3_negative_control", "n3_negative", "n3_cfg", "n3_step"])
    r = drawn(doc, {**params, "checkpoint": str(tiny_flux), "image": str(tmp_path / "edges.png"), "width": 32, "height": 32, "steps": 3})
    net = FluxControlNetModel.from_pretrained(net_path).eval()
    hint = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
    shift = 1.15
    stop = 0.0 if end >= 1 else math.exp(shift) / (math.exp(shift) + (1 / (1 - end) - 1))
    used = []

    def control(x, s, e, pooled, g, img_ids, vae):
        used.append(bool(s >= stop))
        if s < stop:
            return {}
        with torch.no_grad():
            z = (vae.encode(hint * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
            cond = FluxPipeline._pack_latents(z, 1, 16, z.shape[-2], z.shape[-1])
            blocks, single = net(hidden_states=x, controlnet_cond=cond, conditioning_scale=0.7, timestep=s.view(1),
                                 guidance=torch.tensor([g]) if net.config.guidance_embeds else None, pooled_projections=pooled,
                                 encoder_hidden_states=e, txt_ids=torch.zeros(e.shape[1], 3), img_ids=img_ids, return_dict=False)
        return {"controlnet_block_samples": blocks, "controlnet_single_block_samples": single}

    want = comfy_flux(tiny_flux, p["6"]["inputs"]["text"], 21, 2.5, 3, 32, shift, "simple", cfg=cfg, control=control)
    sides = 1 if cfg == 1.0 else 2
    assert used == [on for on in ([True] * 3 if end == 1.0 else [True, False, False]) for _ in range(sides)]
    assert (r["image"] - want).abs().max() < 1e-4
    plain = comfy_flux(tiny_flux, p["6"]["inputs"]["text"], 21, 2.5, 3, 32, shift, "simple", cfg=cfg)
    assert (r["image"] - plain).abs().max() > 1e-3  # the ControlNet steered the picture


def test_flow_sigmas_are_comfyuis():
    """ComfyUI's ModelSamplingDiscreteFlow at shift 3: its normal and simple schedules at 4 steps;
    ModelSamplingFlux's 10000 levels at shift 1.15."""
    from graphflow_nodes.comfy.samplers import ModelSamplingFlow

    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    ms = ModelSamplingFlow(3.0)
    assert ms.sigma_min == pytest.approx(3 * 0.001 / (1 + 2 * 0.001)) and ms.sigma_max == 1.0
    t = [1000 - k * (1000 - ms.sigma_min * 1000) / 3 for k in range(4)]
    assert comfy_sigmas(config, "normal", 4) == pytest.approx([3 * (x / 1000) / (1 + 2 * (x / 1000)) for x in t] + [0.0], abs=1e-6)
    assert comfy_sigmas(config, "simple", 4) == pytest.approx([float(ms.sigmas[-(1 + int(k * 250))]) for k in range(4)] + [0.0])
    assert comfy_sigmas(config, "normal", 4, shift=1.0)[1] == pytest.approx(0.667, abs=1e-3)
    from graphflow_nodes.comfy.samplers import ModelSamplingFluxShift

    fx = ModelSamplingFluxShift(1.15)
    assert float(fx.sigmas[4999]) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1), rel=1e-6) and fx.sigma_max == 1.0
    assert comfy_sigmas({}, "simple", 2, flux=True, shift=1.15) == pytest.approx([1.0, float(fx.sigmas[-5001]), 0.0])


def test_checkpoints_of_families_not_translated_and_sdxl_only_types_are_refused_by_node(tiny_flux):
    assert checkpoint_family(str(tiny_flux)) == "flux"
    p = prompt("default")
    with pytest.raises(TranslationError) as e:
        translate(p, family_of=lambda name: "pixel")
    err = e.value.node_errors["4"]["errors"][0]
    assert (err["message"], err["details"]) == ("ckpt_name is a pixel-space DDPM checkpoint, which translated prompts do not run yet",
                                                "translated: SD 1.x/2.x, SDXL, SDXL refiner, SD3/SD3.5, FLUX.1")
    p = prompt("sdxl")
    with pytest.raises(TranslationError) as e:
        translate(p, family_of=lambda name: "sd")
    assert e.value.node_errors["6"]["errors"][0]["message"] == "CLIPTextEncodeSDXL takes an SDXL checkpoint's CLIP"
    p = prompt("sdxl")
    p["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}}
    p["7"]["inputs"]["clip"] = ["10", 0]
    with pytest.raises(TranslationError) as e:
        translate(p, family_of=lambda name: "sdxl")
    assert e.value.node_errors["10"]["errors"][0]["message"] == "CLIPSetLastLayer on an SDXL checkpoint has no translation"


def test_sdxl_inpainting_keeps_the_picture_and_an_sdxl_controlnet_steers(tiny_sdxl, tmp_path):
    """SetLatentNoiseMask and ControlNetApplyAdvanced on SDXL: where ComfyUI's latent mask is 0 the
    sampled latents are the picture's own (its denoised blend), and the ControlNet (fed SDXL's
    pooled embedding and size conditions) changes the picture at strength 1 and not at 0."""
    import numpy as np
    from PIL import Image

    from tests.tiny_controlnet import build_tiny_controlnet

    net = build_tiny_controlnet(tiny_sdxl, tmp_path / "xl-controlnet", seed=2)
    rgba = np.dstack([(np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8), np.full((64, 64), 255, np.uint8)])
    rgba[16:40, 16:40, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    p = prompt("sdxl")
    p.update({"10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
              "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
              "12": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}},
              "13": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "xl-canny.safetensors"}},
              "14": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["13", 0],
                                                                         "image": ["10", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}})
    p["3"]["inputs"].update(latent_image=["12", 0], positive=["14", 0], negative=["14", 1])
    doc, params, _ = translate(p, family_of=lambda name: "sdxl")
    assert doc["nodes"]["n3"]["body"]["n3_control"]["inputs"]["pooled"] == {"from": "n3_embeddings.pooled"}
    del doc["nodes"]["n9"]
    doc["outputs"] = {"latents": "n3.latents", "known": "n11.latents", "mask": "n3_mask.mask", "image": "n8.image"}
    ex = Executor()

    def run(strength):
        r = ex.run(Workflow.from_dict(doc).with_params(**{**params, "checkpoint": str(tiny_sdxl), "image": str(tmp_path / "photo.png"),
                                                          "controlnet": str(net), "control_strength": strength, "steps": 3}))
        assert r.ok, r.errors
        return r

    on, off = run(1.0), run(0.0)
    kept = on["mask"].expand_as(on["latents"]) == 0
    assert 0 < int(kept.sum()) < kept.numel()
    assert (on["latents"] - on["known"]).abs()[kept].max() < 1e-5
    assert (on["image"] - off["image"]).abs().max() > 1e-3
    plain = copy.deepcopy(p)
    plain["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    del plain["13"], plain["14"]
    pdoc, pparams, _ = translate(plain, family_of=lambda name: "sdxl")
    r = drawn(pdoc, {**pparams, "checkpoint": str(tiny_sdxl), "image": str(tmp_path / "photo.png"), "steps": 3}, ex)
    assert (r["image"] - off["image"]).abs().max() < 1e-6  # strength 0: the ControlNet adds nothing


def ranged(p: dict, extra_text: str, split: float) -> dict:
    """The prompt with its positive conditioning (node 6) for the first ``split`` of the sampling
    and ``extra_text`` (node 12) after it (ConditioningSetTimestepRange, ConditioningCombine),
    plus the negative (node 7) combined with itself (an average of two equal predictions)."""
    q = copy.deepcopy(p)
    q.update({"12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": extra_text}},
              "13": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["6", 0], "start": 0.0, "end": split}},
              "14": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["12", 0], "start": split, "end": 1.0}},
              "15": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["13", 0], "conditioning_2": ["14", 0]}},
              "16": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["7", 0], "conditioning_2": ["7", 0]}}})
    q["3"]["inputs"].update(positive=["15", 0], negative=["16", 0])
    return q


def comfy_side(x, s, conds, predict, to_sigma, empty):
    """ComfyUI's ``calc_cond_batch`` for one side, written out: a conditioning applies unless the
    sigma lies above its start's sigma or below its end's (``get_area_and_mult``); the denoised
    estimates of those that apply are summed and divided by their count (strength 1, full area);
    none applying gives 0 (``out_conds`` start at zeros)."""
    used = [c for c in conds if not (float(s) > to_sigma(c["start"]) or float(s) < to_sigma(c["end"]))]
    if not used:
        return empty
    return sum(predict(x, s, c) for c in used) / len(used)


def test_sdxl_combined_and_time_ranged_conditionings_are_comfyuis_arithmetic(tiny_sdxl):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from graphflow_nodes.stages.weighting import weighted_embeddings

    p = ranged(prompt("sdxl"), "a red boat at sea", 0.5)
    doc, params, _ = translate(p, family_of=lambda name: "sdxl")
    node = doc["nodes"]["n3"]["body"]["n3_cfg"]
    assert node["type"] == "PredictConditioned" and node["inputs"]["positive_time_ids"] == [{"from": "n6_size.time_ids"},
                                                                                            {"from": "n3_positive_size1.time_ids"}]
    r = drawn(doc, {**params, "checkpoint": str(tiny_sdxl), "width": 64, "height": 64, "steps": 3})

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny_sdxl, subfolder="vae").eval()
    tok, te = CLIPTokenizer.from_pretrained(tiny_sdxl, subfolder="tokenizer"), CLIPTextModel.from_pretrained(tiny_sdxl, subfolder="text_encoder").eval()
    tok2 = CLIPTokenizer.from_pretrained(tiny_sdxl, subfolder="tokenizer_2")
    te2 = CLIPTextModelWithProjection.from_pretrained(tiny_sdxl, subfolder="text_encoder_2").eval()

    def cond(text_l, text_g, ids, start, end):
        with torch.no_grad():
            a = weighted_embeddings(tok, te, text_l, "comfy", "penultimate")[0]
            b, pooled = weighted_embeddings(tok2, te2, text_g, "comfy", "penultimate")
        return {"emb": torch.cat([a, b], dim=-1), "pooled": pooled, "ids": torch.tensor([ids], dtype=torch.float32), "start": start, "end": end}

    plain = [64, 64, 0, 0, 64, 64]  # CLIPTextEncode's size conditions on SDXL: the picture's (encode_model_conds)
    pos = [cond("oil painting", params["text_g"], [4096, 4096, 0, 0, 1024, 1024], 0.0, 0.5),
           cond("a red boat at sea", "a red boat at sea", plain, 0.5, 1.0)]
    neg = [cond("blurry, lowres", "blurry, lowres", plain, 0.0, 1.0)] * 2
    ms = ModelSampling(SD_CONFIG)
    to_sigma = lambda pc: 999999999.9 if pc <= 0.0 else 0.0 if pc >= 1.0 else float(ms.sigma((1.0 - pc) * 999.0))

    def predict(x, s, c):
        with torch.no_grad():
            eps = unet(x / (s ** 2 + 1) ** 0.5, ms.timestep(s).float().view(1), encoder_hidden_states=c["emb"],
                       added_cond_kwargs={"text_embeds": c["pooled"], "time_ids": c["ids"]}).sample
        return x - eps * s

    sigmas = torch.tensor(comfy_sigmas(SD_CONFIG, "karras", 3))
    x = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(31)) * math.sqrt(1 + float(sigmas[0]) ** 2)
    switched = []
    for i in range(3):
        s, s_next = sigmas[i], sigmas[i + 1]
        c, u = (comfy_side(x, s, side, predict, to_sigma, torch.zeros_like(x)) for side in (pos, neg))
        switched.append([to_sigma(0.5) >= float(s), float(s) >= to_sigma(0.5)])
        d = u + (c - u) * 6.5
        x = x + (x - d) / s * (s_next - s)
    assert switched == [[False, True], [True, False], [True, False]]  # the first prompt for the noisiest step, the second after
    with torch.no_grad():
        want = (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert (r["image"] - want).abs().max() < 1e-4  # measured: 2.7e-6 / 2.3e-7 (max / mean)


def test_sd3_combined_and_time_ranged_conditionings_are_comfyuis_arithmetic(tiny_sd3):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from graphflow_nodes.stages.weighting import weighted_embeddings

    p = ranged(prompt("sd3"), "a red boat at sea", 0.4)
    doc, params, _ = translate(p, family_of=lambda name: "sd3")
    node = doc["nodes"]["n3"]["body"]["n3_cfg"]
    assert node["type"] == "PredictConditioned" and node["inputs"]["shift"] == {"param": "shift"}
    assert node["inputs"]["positive_pooled"] == [{"from": "n6.pooled"}, {"from": "n12.pooled"}]
    r = drawn(doc, {**params, "checkpoint": str(tiny_sd3), "width": 32, "height": 32, "steps": 3})

    tr = SD3Transformer2DModel.from_pretrained(tiny_sd3, subfolder="transformer").eval()
    vae = AutoencoderKL.from_pretrained(tiny_sd3, subfolder="vae").eval()
    encoders = [(CLIPTokenizer.from_pretrained(tiny_sd3, subfolder=f"tokenizer{k}"),
                 CLIPTextModelWithProjection.from_pretrained(tiny_sd3, subfolder=f"text_encoder{k}").eval()) for k in ("", "_2")]
    tok3, te3 = T5TokenizerFast.from_pretrained(tiny_sd3, subfolder="tokenizer_3"), T5EncoderModel.from_pretrained(tiny_sd3, subfolder="text_encoder_3").eval()

    def cond(text, start, end):
        with torch.no_grad():
            (a, pa), (b, pb) = (weighted_embeddings(tok, te, text, "comfy", "penultimate") for tok, te in encoders)
            t5 = te3(tok3(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids)[0]
        lg = torch.nn.functional.pad(torch.cat([a, b], dim=-1), (0, t5.shape[-1] - a.shape[-1] - b.shape[-1]))
        return {"emb": torch.cat([lg, t5], dim=-2), "pooled": torch.cat([pa, pb], dim=-1), "start": start, "end": end}

    pos = [cond(p["6"]["inputs"]["text"], 0.0, 0.4), cond("a red boat at sea", 0.4, 1.0)]
    neg = [cond("", 0.0, 1.0)] * 2
    shift = 2.0  # ModelSamplingSD3; percent_to_sigma is time_snr_shift(shift, 1 - percent), 1 and 0 at the ends
    to_sigma = lambda pc: 1.0 if pc <= 0.0 else 0.0 if pc >= 1.0 else shift * (1 - pc) / (1 + (shift - 1) * (1 - pc))

    def predict(x, s, c):
        with torch.no_grad():
            v = tr(hidden_states=x, timestep=(s * 1000).view(1), encoder_hidden_states=c["emb"], pooled_projections=c["pooled"]).sample
        return x - s * v

    sigmas = torch.tensor(comfy_sigmas({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": shift}, "sgm_uniform", 3))
    x = torch.randn((1, 16, 4, 4), generator=torch.manual_seed(11)) * sigmas[0]
    switched = []
    for i in range(3):
        s, s_next = sigmas[i], sigmas[i + 1]
        c, u = (comfy_side(x, s, side, predict, to_sigma, torch.zeros_like(x)) for side in (pos, neg))
        switched.append([to_sigma(0.4) >= float(s), float(s) >= to_sigma(0.4)])
        d = u + (c - u) * 4.5
        x = x + (x - d) / s * (s_next - s)
    assert [a or b for a, b in switched] == [True] * 3 and switched[0] != switched[-1]  # both prompts used, each at some step
    with torch.no_grad():
        want = (vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor).sample / 2 + 0.5).clamp(0, 1)
    assert (r["image"] - want).abs().max() < 1e-4  # measured: 1.6e-6 / 1.6e-7 (max / mean)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_flux_combined_and_time_ranged_conditionings_are_comfyuis_arithmetic(tiny_flux, cfg):
    """FLUX.1: the FluxGuidance'd prompt for the noisiest part, another prompt (ComfyUI's default
    guidance 3.5) after, the negative combined with itself; each conditioning predicted with its
    own guidance and averaged; at cfg 1 the negative is left out, as ComfyUI leaves it."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from graphflow_nodes.stages.weighting import weighted_embeddings

    p = prompt("flux")
    p["3"]["inputs"]["cfg"] = cfg
    p.update({"12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red boat at sea"}},
              "13": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["11", 0], "start": 0.0, "end": 0.5}},
              "14": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["12", 0], "start": 0.5, "end": 1.0}},
              "15": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["13", 0], "conditioning_2": ["14", 0]}},
              "16": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["7", 0], "conditioning_2": ["7", 0]}}})
    p["3"]["inputs"].update(positive=["15", 0], negative=["16", 0])
    doc, params, _ = translate(p, family_of=lambda name: "flux")
    node = doc["nodes"]["n3"]["body"]["n3_cfg"]
    assert node["type"] == "PredictConditioned" and node["inputs"]["flux"] is True
    assert node["inputs"]["positive_guidance"] == [{"from": "n3_positive_guidance0.value"}, {"from": "n3_positive_guidance1.value"}]
    assert doc["nodes"]["n3_positive_guidance0"]["inputs"]["value"] == {"param": "guidance"} and node["inputs"]["negative_guidance"] == [3.5, 3.5]
    r = drawn(doc, {**params, "checkpoint": str(tiny_flux), "width": 32, "height": 32, "steps": 3})

    tr = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer").eval()
    vae = AutoencoderKL.from_pretrained(tiny_flux, subfolder="vae").eval()
    tok, te = CLIPTokenizer.from_pretrained(tiny_flux, subfolder="tokenizer"), CLIPTextModel.from_pretrained(tiny_flux, subfolder="text_encoder").eval()
    tok2, te2 = T5TokenizerFast.from_pretrained(tiny_flux, subfolder="tokenizer_2"), T5EncoderModel.from_pretrained(tiny_flux, subfolder="text_encoder_2").eval()

    def cond(text, guidance, start, end):
        with torch.no_grad():
            emb = te2(tok2(text, padding="max_length", max_length=256, truncation=True, return_tensors="pt").input_ids)[0]
            pooled = weighted_embeddings(tok, te, text, "comfy")[1]
        return {"emb": emb, "pooled": pooled, "guidance": guidance, "start": start, "end": end}

    pos = [cond(p["6"]["inputs"]["text"], 2.5, 0.0, 0.5), cond("a red boat at sea", 3.5, 0.5, 1.0)]
    neg = [cond("", 3.5, 0.0, 1.0)] * 2
    shift = (1024 * 1024 / 256) * (0.65 / 3840) + 0.5 - (0.65 / 3840) * 256  # ModelSamplingFlux at 1024 × 1024
    to_sigma = lambda pc: 1.0 if pc <= 0.0 else 0.0 if pc >= 1.0 else math.exp(shift) / (math.exp(shift) + (1 / (1.0 - pc) - 1))
    config = json.loads((tiny_flux / "scheduler" / "scheduler_config.json").read_text())
    sigmas = torch.tensor(comfy_sigmas(config, "simple", 3, shift=shift, flux=True))
    h = w = 4
    pack = lambda t: FluxPipeline._pack_latents(t, 1, 16, h, w)
    unpack = lambda t: t.view(1, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)

    def predict(x, s, c):  # ComfyUI's denoised estimate for one conditioning (its Flux model packs inside)
        with torch.no_grad():
            v = tr(hidden_states=pack(x), timestep=s.view(1), guidance=torch.tensor([c["guidance"]]), pooled_projections=c["pooled"],
                   encoder_hidden_states=c["emb"], txt_ids=torch.zeros(c["emb"].shape[1], 3), img_ids=img_ids).sample
        return x - s * unpack(v)

    x = torch.randn((1, 16, h, w), generator=torch.manual_seed(21)) * sigmas[0]
    used = []
    for i in range(3):
        s, s_next = sigmas[i], sigmas[i + 1]
        c = comfy_side(x, s, pos, predict, to_sigma, torch.zeros_like(x))
        d = c if cfg == 1.0 else (lambda u: u + (c - u) * cfg)(comfy_side(x, s, neg, predict, to_sigma, torch.zeros_like(x)))
        used.append(float(s) >= to_sigma(0.5))
        x = x + (x - d) / s * (s_next - s)
    assert True in used and False in used  # each prompt at some step
    with torch.no_grad():
        want = (vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor).sample / 2 + 0.5).clamp(0, 1)
    assert (r["image"] - want).abs().max() < 1e-4  # measured: cfg 1 1.4e-6 / 1.2e-7, cfg 2 1.7e-6 / 1.3e-7 (max / mean)


def test_an_sdxl_refiner_prompt_is_comfyuis_refiner_arithmetic(tiny_sdxl_refiner):
    """CLIPTextEncodeSDXLRefiner (bigG alone: its penultimate states and pooled embedding; the
    aesthetic score, width and height it carries) on the positive side, a plain CLIPTextEncode on
    the negative (the picture's size and ComfyUI's negative aesthetic score 2.5, filled in by
    ``encode_model_conds`` and ``SDXLRefiner.encode_adm``). Refused before: the refiner family."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from graphflow_nodes.stages.weighting import weighted_embeddings

    assert checkpoint_family(str(tiny_sdxl_refiner)) == "sdxl-refiner"
    p = prompt("sdxl")
    p["6"] = {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {"clip": ["4", 1], "ascore": 7.0, "width": 1024, "height": 896,
                                                                     "text": "a lighthouse on a cliff, (dramatic:1.3) sky"}}
    p["4"]["inputs"]["ckpt_name"] = str(tiny_sdxl_refiner)
    doc, params, id_map = translate(p)
    assert id_map["6"] == ["n6", "n6_size"] and params["refiner_text"] == p["6"]["inputs"]["text"]
    assert doc["nodes"]["n3_negative_size0"]["inputs"] == {"latents": {"from": "n5.latents"}, "aesthetic_score": 2.5}
    r = drawn(doc, {**params, "width": 64, "height": 64, "steps": 3})

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_refiner, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny_sdxl_refiner, subfolder="vae").eval()
    tok = CLIPTokenizer.from_pretrained(tiny_sdxl_refiner, subfolder="tokenizer_2")
    te = CLIPTextModelWithProjection.from_pretrained(tiny_sdxl_refiner, subfolder="text_encoder_2").eval()
    with torch.no_grad():
        (a, pa), (b, pb) = (weighted_embeddings(tok, te, t, "comfy", "penultimate") for t in (p["6"]["inputs"]["text"], "blurry, lowres"))
    emb, pooled = torch.cat([a, b]), torch.cat([pa, pb])
    ids = torch.tensor([[896, 1024, 0, 0, 7.0], [64, 64, 0, 0, 2.5]])  # height, width, crop top, crop left, aesthetic score
    ms = ModelSampling(SD_CONFIG)
    sigmas = torch.tensor(comfy_sigmas(SD_CONFIG, "karras", 3))
    x = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(31)) * math.sqrt(1 + float(sigmas[0]) ** 2)
    for i in range(3):
        s, s_next = sigmas[i], sigmas[i + 1]
        with torch.no_grad():
            eps = unet(torch.cat([x / (s ** 2 + 1) ** 0.5] * 2), torch.cat([ms.timestep(s).float().view(1)] * 2), encoder_hidden_states=emb,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        c, u = (torch.cat([x] * 2) - eps * s).chunk(2)
        x = x + (x - (u + (c - u) * 6.5)) / s * (s_next - s)
    with torch.no_grad():
        want = (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert (r["image"] - want).abs().max() < 1e-4  # measured: 7.2e-7 / 7.9e-8 (max / mean)
    # an SDXL base's CLIP is not a refiner's
    with pytest.raises(TranslationError) as e:
        translate(p, family_of=lambda name: "sdxl")
    assert e.value.node_errors["6"]["errors"][0]["message"] == "CLIPTextEncodeSDXLRefiner takes an SDXL refiner checkpoint's CLIP"


def test_two_sdxl_encoders_get_text_params_of_their_own():
    """Two CLIPTextEncodeSDXL (a positive and a negative, as SDXL workflows have them) shared one
    text_g and text_l param before, so the positive drew the negative's text."""
    p = prompt("sdxl")
    p["7"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {**p["6"]["inputs"], "text_g": "blurry", "text_l": "lowres"}}
    doc, params, _ = translate(p, family_of=lambda name: "sdxl")
    assert {k: v for k, v in params.items() if k.startswith("text")} == {
        "text_l_6": "oil painting", "text_g_6": "a lighthouse on a cliff, (dramatic:1.3) sky", "text_l_7": "lowres", "text_g_7": "blurry"}
    assert (doc["nodes"]["n6_g"]["inputs"]["text"], doc["nodes"]["n7_g"]["inputs"]["text"]) == ({"param": "text_g_6"}, {"param": "text_g_7"})


def test_a_sampler_a_flow_model_cannot_run_is_refused_by_validate_naming_the_comfyui_node(tmp_path):
    """The old translation passed ``graphflow validate`` and refused euler_ancestral on SD3 only
    when the workflow ran; now the prompt is refused before anything runs (exit 2)."""
    import os
    import subprocess
    import sys

    p = prompt("sd3")
    p["3"]["inputs"]["sampler_name"] = "euler_ancestral"
    path = tmp_path / "sd3-ancestral.json"
    path.write_text(json.dumps(p))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-m", "graphflow.cli", "validate", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("[comfy_value_not_valid] field 'sampler_name': ComfyUI node 3 (KSampler): sampler_name euler_ancestral on a flow model "
            "(SD3/SD3.5) has no translation (ComfyUI runs its own rectified-flow variant") in r.stderr
