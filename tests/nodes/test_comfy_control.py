"""ComfyUI's inpainting and ControlNet class types, translated: the prompts (tests/data/comfy, in
ComfyUI's API format) run on the tiny models and give the picture of ComfyUI's own arithmetic
written out here (comfy/samplers.py ``KSamplerX0Inpaint``'s two blends, ``reshape_mask``'s
bilinear latent mask, nodes.py ``VAEEncodeForInpaint``'s greyed picture and box-grown mask,
``InpaintModelConditioning``'s concat for a 9-channel UNet, ControlNets steering both guidance
halves or the positive one alone, within their start and end percents as noise levels)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graphflow import Executor, Workflow
from graphflow_nodes.comfy.nodes import active
from graphflow_nodes.comfy.samplers import ModelSampling, comfy_sigmas
from graphflow_nodes.comfy.translate import CLASS_TYPES, TranslationError, translate
from tests.tiny_controlnet import build_tiny_controlnet

DATA = Path(__file__).resolve().parents[1] / "data" / "comfy"
SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SIZE, STEPS = 64, 3


def prompt(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 64×64 picture whose alpha has a transparent square with a half-transparent ring (a soft
    ComfyUI mask), a mask picture whose red channel differs from its grey level, and a picture
    with edges for Canny."""
    d = tmp_path_factory.mktemp("comfy-pictures")
    rng = np.random.default_rng(0)
    rgb = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[14:46, 18:50] = 100
    alpha[18:42, 22:46] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(d / "photo.png")
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[20:44, 10:40, 0] = 255  # red: repaint
    mask[:, :, 1] = 200  # green everywhere: the grey level is not the red channel
    Image.fromarray(mask, "RGB").save(d / "mask.png")
    yy, xx = np.mgrid[:SIZE, :SIZE]
    edges = np.where(((yy - 30) ** 2 + (xx - 34) ** 2) < 300, 230, 20).astype(np.uint8)
    Image.fromarray(np.dstack([edges, edges // 2, 255 - edges]), "RGB").save(d / "edges.png")
    return {"photo": d / "photo.png", "mask": d / "mask.png", "edges": d / "edges.png"}


@pytest.fixture(scope="module")
def controlnet(tiny_model, tmp_path_factory) -> Path:
    return build_tiny_controlnet(tiny_model, tmp_path_factory.mktemp("controlnets") / "tiny-controlnet", seed=1)


class Comfy:
    """ComfyUI's KSampler (euler) written out on a diffusers folder's parts."""

    def __init__(self, model: Path) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval()
        self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
        self.tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        self.te = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval()
        self.ms = ModelSampling(SD_CONFIG)

    def encode_text(self, pos: str, neg: str) -> torch.Tensor:
        from graphflow_nodes.stages.weighting import weighted_embeddings

        with torch.no_grad():
            return torch.cat([weighted_embeddings(self.tok, self.te, pos, "comfy")[0], weighted_embeddings(self.tok, self.te, neg, "comfy")[0]])

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode(image * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    def sample(self, emb, seed, cfg, latent, mask=None, concat=None, control=None) -> torch.Tensor:
        sigmas = torch.tensor(comfy_sigmas(SD_CONFIG, "normal", STEPS))
        noise = torch.randn(latent.shape, generator=torch.manual_seed(seed))
        x = noise * math.sqrt(1 + float(sigmas[0]) ** 2) + latent
        for i in range(STEPS):
            s, s_next = sigmas[i], sigmas[i + 1]
            xm = x if mask is None else x * mask + (latent + noise * s) * (1 - mask)
            inp = xm / (s ** 2 + 1) ** 0.5
            t = self.ms.timestep(s).float()
            unet_in = torch.cat([inp] * 2)
            if concat is not None:
                unet_in = torch.cat([unet_in, torch.cat([concat[0]] * 2), torch.cat([concat[1]] * 2)], dim=1)
            extra = control(inp, t, emb, float(s)) if control else {}
            with torch.no_grad():
                eps = self.unet(unet_in, torch.cat([t.view(1)] * 2), encoder_hidden_states=emb, **extra).sample
            c, u = (torch.cat([xm] * 2) - eps * s).chunk(2)
            d = u + (c - u) * cfg
            if mask is not None:
                d = d * mask + latent * (1 - mask)
            x = x + (x - d) / s * (s_next - s)
        with torch.no_grad():
            return (self.vae.decode(x / self.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def comfy(tiny_model) -> Comfy:
    return Comfy(tiny_model)


def run(p: dict, decode: str, save: str, **params) -> torch.Tensor:
    doc, defaults, _ = translate(p)
    del doc["nodes"][save]
    doc["outputs"] = {"image": f"{decode}.image"}
    r = Executor().run(Workflow.from_dict(doc).with_params(**{**defaults, **params}))
    assert r.ok, r.errors
    return r["image"]


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's LoadImage: the RGB picture and its MASK, 1 − alpha."""
    img = Image.open(path)
    rgb = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
    return rgb, 1 - torch.from_numpy(np.asarray(img.getchannel("A"), np.float32) / 255)[None, None]


def test_vae_encode_for_inpaint_is_comfyuis_greyed_picture_grown_mask_and_blends(tiny_model, comfy, files):
    p = prompt("inpaint_encode")
    got = run(p, "n11", "n12", checkpoint=str(tiny_model), image=str(files["photo"]), steps=STEPS, seed=5)
    image, mask = load(files["photo"])
    keep = 1 - mask.round()
    grey = (image - 0.5) * keep + 0.5
    g = 6  # grow_mask_by: a 6-wide box, padding 3, rounded before and after
    grown = torch.clamp(torch.nn.functional.conv2d(mask.round(), torch.ones(1, 1, g, g), padding=3), 0, 1)[:, :, :SIZE, :SIZE].round()
    latent = comfy.encode(grey)
    m = torch.nn.functional.interpolate(grown, size=latent.shape[-2:], mode="bilinear")
    assert 0 < int(((m > 0) & (m < 1)).sum())  # ComfyUI's latent mask has a soft edge
    want = comfy.sample(comfy.encode_text(p["6"]["inputs"]["text"], p["7"]["inputs"]["text"]), 5, 8.0, latent, mask=m)
    assert (got - want).abs().max() < 1e-4
    # a centred grow (graphflow's GrowMask, diffusers' way) is another mask: the box is ComfyUI's own
    centred = torch.nn.functional.max_pool2d(mask.round(), 7, stride=1, padding=3)
    assert int((centred != torch.clamp(torch.nn.functional.conv2d(mask.round(), torch.ones(1, 1, g, g), padding=3), 0, 1)[:, :, :SIZE, :SIZE]).sum()) > 0


def test_set_latent_noise_mask_keeps_the_unmasked_picture(tiny_model, comfy, files):
    """img2img with a noise mask: the kept region ends as the picture's latents exactly."""
    p = prompt("inpaint_encode")
    p["3"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}}
    p["4"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["3", 0], "mask": ["2", 1]}}
    p["10"]["inputs"]["latent_image"] = ["4", 0]
    doc, _, id_map = translate(p)
    assert id_map["4"] == [] and doc["nodes"]["n2_mask"]["inputs"] == {"path": {"param": "image"}, "source": "alpha", "threshold": None}
    got = run(p, "n11", "n12", checkpoint=str(tiny_model), image=str(files["photo"]), steps=STEPS, seed=5)
    image, mask = load(files["photo"])
    latent = comfy.encode(image)
    m = torch.nn.functional.interpolate(mask, size=latent.shape[-2:], mode="bilinear")
    want = comfy.sample(comfy.encode_text(p["6"]["inputs"]["text"], p["7"]["inputs"]["text"]), 5, 8.0, latent, mask=m)
    assert (got - want).abs().max() < 1e-4


def test_inpaint_model_conditioning_feeds_a_9_channel_unet(tiny_inpaint, files):
    p = prompt("inpaint_conditioning")
    p["10"]["inputs"]["sampler_name"], p["10"]["inputs"]["scheduler"] = "euler", "normal"
    got = run(p, "n11", "n12", checkpoint=str(tiny_inpaint), image_2=str(files["photo"]), image_3=str(files["mask"]), steps=STEPS, seed=9)
    comfy = Comfy(tiny_inpaint)
    image, _ = load(files["photo"])
    mask = torch.from_numpy(np.asarray(Image.open(files["mask"]).convert("RGBA"), np.float32)[..., 0] / 255)[None, None]  # channel red
    grey = (image - 0.5) * (1 - mask.round()) + 0.5
    latent, masked = comfy.encode(image), comfy.encode(grey)
    m = torch.nn.functional.interpolate(mask, size=latent.shape[-2:], mode="bilinear")
    want = comfy.sample(comfy.encode_text("a red armchair", "lowres"), 9, 7.0, latent, mask=m, concat=(m.round(), masked))
    assert (got - want).abs().max() < 1e-4
    # without InpaintModelConditioning's noise mask the whole picture is repainted from its latents
    p["4"]["inputs"]["noise_mask"] = False
    assert "n10_inpaint" not in translate(p)[0]["nodes"]["n10"]["body"] and "n10_channels" in translate(p)[0]["nodes"]["n10"]["body"]


def canny(path: Path) -> torch.Tensor:
    import cv2

    e = cv2.Canny(np.asarray(Image.open(path).convert("RGB")), 102, 204)
    return torch.from_numpy(np.repeat(e[:, :, None], 3, axis=2).astype(np.float32) / 255).permute(2, 0, 1)[None]


def control_fn(net, hint, strength, start, end, halves):
    ms = ModelSampling(SD_CONFIG)

    def f(inp, t, emb, sigma):
        if not active(ms, sigma, start, end):
            return {}
        x, e = (torch.cat([inp] * 2), emb) if halves == "both" else (inp, emb[:1])
        with torch.no_grad():
            down, mid = net(x, t, encoder_hidden_states=e, controlnet_cond=torch.cat([hint] * x.shape[0]), conditioning_scale=strength,
                            return_dict=False)
        if halves == "positive":  # the reference batch is [positive, negative]
            down, mid = [torch.cat([d, torch.zeros_like(d)]) for d in down], torch.cat([mid, torch.zeros_like(mid)])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return f


@pytest.mark.parametrize("name, strength, start, end", [("controlnet_advanced", 0.8, 0.0, 0.3), ("controlnet_apply", 1.0, 0.0, 1.0)])
def test_controlnets_steer_both_halves_or_the_positive_one_within_comfyuis_percents(tiny_model, comfy, controlnet, files, name, strength, start, end):
    from diffusers import ControlNetModel

    p = prompt(name)
    params = {"checkpoint": str(tiny_model), "controlnet": str(controlnet), "image": str(files["edges"]), "width": SIZE, "height": SIZE,
              "steps": STEPS, "control_strength": strength}
    if name == "controlnet_advanced":
        params["control_end"] = end
    got = run(p, "n8", "n9", **params)
    pos, neg = p["6"]["inputs"]["text"], p["7"]["inputs"]["text"]
    net = ControlNetModel.from_pretrained(controlnet).eval()
    halves = "both" if name == "controlnet_advanced" else "positive"
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    seed, cfg = p["3"]["inputs"]["seed"], float(p["3"]["inputs"]["cfg"])
    want = comfy.sample(comfy.encode_text(pos, neg), seed, cfg, latent, control=control_fn(net, canny(files["edges"]), strength, start, end, halves))
    assert (got - want).abs().max() < 1e-4
    plain = comfy.sample(comfy.encode_text(pos, neg), seed, cfg, latent)
    assert (got - plain).abs().max() > 1e-3  # the ControlNet steered the picture
    if name == "controlnet_advanced":  # ComfyUI's percents are noise levels: at 3 steps 0..0.3 holds the first sigma only,
        from graphflow_nodes.control.controlnet import active as diffusers_active  # where diffusers' step fractions hold none

        ms = ModelSampling(SD_CONFIG)
        assert [active(ms, s, start, end) for s in comfy_sigmas(SD_CONFIG, "normal", STEPS)[:-1]] == [True, False, False]
        assert [diffusers_active(k, STEPS, start, end) for k in range(STEPS)] == [False, False, False]


def test_different_controlnets_on_the_positive_and_negative_conditionings_steer_each_its_own_half(tiny_model, comfy, controlnet, files):
    """ControlNetApplyAdvanced with one ControlNet feeding the sampler's positive conditioning and
    another its negative: ComfyUI adds each conditioning's own ControlNet to its own prediction,
    so the prompt's half gets the first's residuals and the unconditional half the second's
    (the old translation refused this)."""
    from diffusers import ControlNetModel

    other = build_tiny_controlnet(tiny_model, controlnet.parent / "tiny-controlnet-2", seed=2)
    p = prompt("controlnet_advanced")
    p["16"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "other.safetensors"}}
    p["15"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["16", 0],
                                                                   "image": ["13", 0], "strength": 0.6, "start_percent": 0.0, "end_percent": 1.0}}
    p["3"]["inputs"]["negative"] = ["15", 1]
    doc, _, _ = translate(p)
    body = doc["nodes"]["n3"]["body"]
    assert (body["n3_control0"]["inputs"]["uncond"], body["n3_control1"]["inputs"]["cond"]) == (False, False)
    got = run(p, "n8", "n9", checkpoint=str(tiny_model), controlnet_11=str(controlnet), controlnet_16=str(other), image=str(files["edges"]),
              width=SIZE, height=SIZE, steps=STEPS, control_end_12=0.3)
    pos, neg = p["6"]["inputs"]["text"], p["7"]["inputs"]["text"]
    a, b = ControlNetModel.from_pretrained(controlnet).eval(), ControlNetModel.from_pretrained(other).eval()
    hint = canny(files["edges"])
    fa, fb = control_fn(a, hint, 0.8, 0.0, 0.3, "positive"), control_fn(b, hint, 0.6, 0.0, 1.0, "positive")

    def each_its_own(inp, t, emb, sigma):  # the reference batch is [positive, negative]: A's residuals on the first row, B's on the second
        ra, rb = fa(inp, t, emb, sigma), fb(inp, t, emb.flip(0), sigma)  # B run on the negative's text: its row first, then flipped
        down, mid = "down_block_additional_residuals", "mid_block_additional_residual"
        rb = {down: [d.flip(0) for d in rb[down]], mid: rb[mid].flip(0)}
        if not ra:  # A stops after the first sigma (end 0.3)
            return rb
        return {down: [x + y for x, y in zip(ra[down], rb[down])], mid: ra[mid] + rb[mid]}

    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    seed, cfg = p["3"]["inputs"]["seed"], float(p["3"]["inputs"]["cfg"])
    want = comfy.sample(comfy.encode_text(pos, neg), seed, cfg, latent, control=each_its_own)
    assert (got - want).abs().max() < 1e-4  # measured: 7.7e-7 / 8.2e-8 (max / mean)
    same = comfy.sample(comfy.encode_text(pos, neg), seed, cfg, latent, control=control_fn(a, hint, 0.8, 0.0, 0.3, "positive"))
    assert (got - same).abs().max() > 1e-3  # the negative's own ControlNet changed the picture


def test_controlnet_translation_refusals_name_the_node():
    p = prompt("controlnet_advanced")
    p["12"]["inputs"]["strength"] = "strong"
    with pytest.raises(TranslationError) as e:
        translate(p)
    assert e.value.node_errors["12"]["errors"][0]["message"] == "input strength is a number"
    p = prompt("inpaint_conditioning")
    p["4"]["inputs"]["noise_mask"] = "yes"
    with pytest.raises(TranslationError) as e:
        translate(p)
    assert e.value.node_errors["4"]["errors"][0]["message"] == "input noise_mask is a boolean"


def test_the_new_class_types_are_listed():
    for ct in ("VAEEncodeForInpaint", "SetLatentNoiseMask", "InpaintModelConditioning", "LoadImageMask", "ControlNetLoader", "ControlNetApply",
               "ControlNetApplyAdvanced", "Canny"):
        assert ct in CLASS_TYPES
    assert CLASS_TYPES["LoadImage"][1] == ("IMAGE", "MASK")


def test_object_info_lists_the_new_types_and_their_optional_inputs():
    from graphflow.server.routes.comfy import described
    from graphflow_nodes.comfy.translate import DEFAULTS, OUTPUT_NODES

    info = described(CLASS_TYPES, DEFAULTS, OUTPUT_NODES)
    adv = info["ControlNetApplyAdvanced"]
    assert adv["input"]["optional"] == {"vae": ["VAE", {}]} and "vae" not in adv["input"]["required"]
    assert adv["output"] == ["CONDITIONING", "CONDITIONING"] and adv["input"]["required"]["end_percent"] == ["FLOAT", {"default": 1.0}]
    assert info["VAEEncodeForInpaint"]["input"]["required"]["grow_mask_by"] == ["INT", {"default": 6}]
    assert info["LoadImageMask"]["input"]["required"]["channel"] == [["alpha", "red", "green", "blue"], {"default": "alpha"}]
    assert info["InpaintModelConditioning"]["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
