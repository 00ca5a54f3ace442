"""A ComfyUI API-format prompt → a graphflow workflow of this library's nodes.

The prompt is ``{id: {"class_type": ..., "inputs": {name: literal | [source_id, output_index]}}}``
(what ComfyUI's ``/prompt`` takes and "Save (API)" writes). Each ComfyUI node becomes one or more
graphflow nodes whose ids start with ``n<ComfyUI id>``, so an error names the ComfyUI node; a
KSampler becomes the library's own denoising loop (ComfySchedule, ComfyNoise, then ScaleModelInput
→ PredictNoise → CFG → SchedulerStep in a Loop). The values a user varies (seed, steps, cfg,
prompts, size, denoise, checkpoint) become ``params``. Nothing is guessed: a class type, an input
or a sampler without a translation is refused, every one of them in one error, in ComfyUI's own
``node_errors`` shape so ComfyUI clients show it as they show ComfyUI's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from graphflow_nodes.comfy.samplers import FLOW_REFUSED, FLOW_SAMPLERS, REFUSED_SAMPLERS, SAMPLERS, SCHEDULERS

LINK_TYPES = ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "UPSCALE_MODEL", "CONTROL_NET")
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")
INT, FLOAT, STR, BOOL, BOOL_TEXT = "INT", "FLOAT", "STRING", "BOOLEAN", ("enable", "disable")
MASK_CHANNELS = ("alpha", "red", "green", "blue")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
#: DualCLIPLoader's types (ComfyUI's list; the ones translated: DUAL_CLIP_FAMILIES)
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5", "kandinsky5_image", "ltxv",
                   "newbie")
DUAL_CLIP_FAMILIES = {"flux": "flux", "sdxl": "sdxl"}

#: class_type -> (inputs: {name: type}, outputs). A type is a link type (an upstream node's output),
#: INT/FLOAT/STRING, or a tuple of the values allowed. Also what /object_info describes.
CLASS_TYPES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "CheckpointLoaderSimple": ({"ckpt_name": STR}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": STR, "clip": "CLIP"}, ("CONDITIONING",)),
    "CLIPSetLastLayer": ({"clip": "CLIP", "stop_at_clip_layer": INT}, ("CLIP",)),
    "EmptyLatentImage": ({"width": INT, "height": INT, "batch_size": INT}, ("LATENT",)),
    "KSampler": ({"model": "MODEL", "seed": INT, "steps": INT, "cfg": FLOAT, "sampler_name": tuple(SAMPLERS) + tuple(REFUSED_SAMPLERS),
                  "scheduler": SCHEDULERS, "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT",
                  "denoise": FLOAT}, ("LATENT",)),
    "KSamplerAdvanced": ({"model": "MODEL", "add_noise": BOOL_TEXT, "noise_seed": INT, "steps": INT, "cfg": FLOAT,
                          "sampler_name": tuple(SAMPLERS) + tuple(REFUSED_SAMPLERS), "scheduler": SCHEDULERS, "positive": "CONDITIONING",
                          "negative": "CONDITIONING", "latent_image": "LATENT", "start_at_step": INT, "end_at_step": INT,
                          "return_with_leftover_noise": BOOL_TEXT}, ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "VAEEncode": ({"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "LoadImage": ({"image": STR}, ("IMAGE", "MASK")),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": STR}, ()),
    "PreviewImage": ({"images": "IMAGE"}, ()),
    "LoraLoader": ({"model": "MODEL", "clip": "CLIP", "lora_name": STR, "strength_model": FLOAT, "strength_clip": FLOAT}, ("MODEL", "CLIP")),
    "LatentUpscale": ({"samples": "LATENT", "upscale_method": UPSCALE_METHODS + ("bislerp",), "width": INT, "height": INT,
                       "crop": ("disabled", "center")}, ("LATENT",)),
    "LatentUpscaleBy": ({"samples": "LATENT", "upscale_method": UPSCALE_METHODS + ("bislerp",), "scale_by": FLOAT}, ("LATENT",)),
    "UpscaleModelLoader": ({"model_name": STR}, ("UPSCALE_MODEL",)),
    "ImageUpscaleWithModel": ({"upscale_model": "UPSCALE_MODEL", "image": "IMAGE"}, ("IMAGE",)),
    "ImageScale": ({"image": "IMAGE", "upscale_method": UPSCALE_METHODS + ("lanczos",), "width": INT, "height": INT,
                    "crop": ("disabled", "center")}, ("IMAGE",)),
    "ImageScaleBy": ({"image": "IMAGE", "upscale_method": UPSCALE_METHODS + ("lanczos",), "scale_by": FLOAT}, ("IMAGE",)),
    "ConditioningCombine": ({"conditioning_1": "CONDITIONING", "conditioning_2": "CONDITIONING"}, ("CONDITIONING",)),
    "ConditioningSetTimestepRange": ({"conditioning": "CONDITIONING", "start": FLOAT, "end": FLOAT}, ("CONDITIONING",)),
    "LoadImageMask": ({"image": STR, "channel": MASK_CHANNELS}, ("MASK",)),
    "SetLatentNoiseMask": ({"samples": "LATENT", "mask": "MASK"}, ("LATENT",)),
    "VAEEncodeForInpaint": ({"pixels": "IMAGE", "vae": "VAE", "mask": "MASK", "grow_mask_by": INT}, ("LATENT",)),
    "InpaintModelConditioning": ({"positive": "CONDITIONING", "negative": "CONDITIONING", "vae": "VAE", "pixels": "IMAGE", "mask": "MASK",
                                  "noise_mask": BOOL}, ("CONDITIONING", "CONDITIONING", "LATENT")),
    "ControlNetLoader": ({"control_net_name": STR}, ("CONTROL_NET",)),
    "DiffControlNetLoader": ({"model": "MODEL", "control_net_name": STR}, ("CONTROL_NET",)),
    "ControlNetApply": ({"conditioning": "CONDITIONING", "control_net": "CONTROL_NET", "image": "IMAGE", "strength": FLOAT}, ("CONDITIONING",)),
    "ControlNetApplyAdvanced": ({"positive": "CONDITIONING", "negative": "CONDITIONING", "control_net": "CONTROL_NET", "image": "IMAGE",
                                 "strength": FLOAT, "start_percent": FLOAT, "end_percent": FLOAT, "vae": "VAE"},
                                ("CONDITIONING", "CONDITIONING")),
    "Canny": ({"image": "IMAGE", "low_threshold": FLOAT, "high_threshold": FLOAT}, ("IMAGE",)),
    "EmptySD3LatentImage": ({"width": INT, "height": INT, "batch_size": INT}, ("LATENT",)),
    "ModelSamplingSD3": ({"model": "MODEL", "shift": FLOAT}, ("MODEL",)),
    "ModelSamplingFlux": ({"model": "MODEL", "max_shift": FLOAT, "base_shift": FLOAT, "width": INT, "height": INT}, ("MODEL",)),
    "FluxGuidance": ({"conditioning": "CONDITIONING", "guidance": FLOAT}, ("CONDITIONING",)),
    "CLIPTextEncodeFlux": ({"clip": "CLIP", "clip_l": STR, "t5xxl": STR, "guidance": FLOAT}, ("CONDITIONING",)),
    "CLIPTextEncodeSD3": ({"clip": "CLIP", "clip_l": STR, "clip_g": STR, "t5xxl": STR, "empty_padding": ("none", "empty_prompt")},
                          ("CONDITIONING",)),
    "UNETLoader": ({"unet_name": STR, "weight_dtype": WEIGHT_DTYPES}, ("MODEL",)),
    "DualCLIPLoader": ({"clip_name1": STR, "clip_name2": STR, "type": DUAL_CLIP_TYPES, "device": ("default", "cpu")}, ("CLIP",)),
    "TripleCLIPLoader": ({"clip_name1": STR, "clip_name2": STR, "clip_name3": STR}, ("CLIP",)),
    "VAELoader": ({"vae_name": STR}, ("VAE",)),
    "CLIPTextEncodeSDXL": ({"clip": "CLIP", "width": INT, "height": INT, "crop_w": INT, "crop_h": INT, "target_width": INT, "target_height": INT,
                            "text_g": STR, "text_l": STR}, ("CONDITIONING",)),
    "CLIPTextEncodeSDXLRefiner": ({"ascore": FLOAT, "width": INT, "height": INT, "text": STR, "clip": "CLIP"}, ("CONDITIONING",)),
}
#: inputs ComfyUI lets a prompt leave out (its defaults)
DEFAULTS: dict[str, dict[str, Any]] = {
    "KSampler": {"denoise": 1.0},
    "SaveImage": {"filename_prefix": "ComfyUI"},
    "EmptyLatentImage": {"batch_size": 1},
    "EmptySD3LatentImage": {"batch_size": 1},
    "ModelSamplingSD3": {"shift": 3.0},
    "ModelSamplingFlux": {"max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024},
    "FluxGuidance": {"guidance": 3.5},
    "CLIPTextEncodeFlux": {"guidance": 3.5},
    "LoadImageMask": {"channel": "alpha"},
    "VAEEncodeForInpaint": {"grow_mask_by": 6},
    "InpaintModelConditioning": {"noise_mask": True},
    "ControlNetApply": {"strength": 1.0},
    "ControlNetApplyAdvanced": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": None},
    "CLIPTextEncodeSDXLRefiner": {"ascore": 6.0, "width": 1024, "height": 1024},  # vae: optional (an SD3 ControlNet needs it)
    "Canny": {"low_threshold": 0.4, "high_threshold": 0.8},
    "UNETLoader": {"weight_dtype": "default"},
    "DualCLIPLoader": {"device": "default"},
}
OUTPUT_NODES = ("SaveImage", "PreviewImage")


@dataclass
class NodeError:
    type: str
    message: str
    details: str = ""
    input_name: str | None = None

    def to_dict(self) -> dict:
        extra = {"input_name": self.input_name} if self.input_name else {}
        return {"type": self.type, "message": self.message, "details": self.details, "extra_info": extra}


class TranslationError(ValueError):
    """A prompt that cannot be translated. ``node_errors`` is ComfyUI's shape: ``{node_id:
    {"errors": [{type, message, details, extra_info}], "dependent_outputs": [...], "class_type"}}``;
    ``error`` is the top-level one (``/prompt`` answers ``{"error": ..., "node_errors": ...}``)."""

    def __init__(self, error: dict, node_errors: dict[str, dict]) -> None:
        self.error = error
        self.node_errors = node_errors
        lines = [f"ComfyUI node {nid} ({e['class_type']}): {x['message']}" + (f": {x['details']}" if x["details"] else "")
                 for nid, e in node_errors.items() for x in e["errors"]]
        super().__init__("; ".join(lines) if lines else f"{error['message']}: {error['details']}".rstrip(": "))

    def problems(self) -> list[tuple[str, str, str | None]]:
        """(ComfyUI node id, message, input name) for each error: what a command prints."""
        return [(nid, f"{e['class_type']}: {x['message']}" + (f": {x['details']}" if x["details"] else ""),
                 x["extra_info"].get("input_name")) for nid, e in self.node_errors.items() for x in e["errors"]]


def gid(cid: str, suffix: str = "") -> str:
    """The graphflow id of a ComfyUI node (``3`` → ``n3``; characters a graphflow id cannot hold become ``_``)."""
    return "n" + re.sub(r"[^A-Za-z0-9_-]", "_", cid) + (f"_{suffix}" if suffix else "")


def is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int) and not isinstance(v[1], bool)


@dataclass
class _State:
    prompt: dict
    nodes: dict[str, dict] = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    id_map: dict[str, list[str]] = field(default_factory=dict)
    done: dict[str, tuple] = field(default_factory=dict)
    errors: dict[str, list[NodeError]] = field(default_factory=dict)
    visiting: set[str] = field(default_factory=set)
    param_uses: dict[str, int] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    input_dir: str | None = None  # where LoadImage's names are read from (ComfyUI's input folder)
    family_of: Callable[[Any], str | None] | None = None  # a checkpoint name's family (sd, sdxl, ...); default checkpoint_family

    def fail(self, cid: str, error: NodeError) -> None:
        self.errors.setdefault(cid, []).append(error)

    def add(self, cid: str, nid: str, body: dict) -> str:
        self.nodes[nid] = body
        self.id_map.setdefault(cid, []).append(nid)
        return nid

    def param(self, cid: str, base: str, value: Any, kind: str, what: str) -> dict:
        """A parameter for a value a user varies: ``base`` when one node in the prompt has it,
        else ``base_<id>`` (decided before translating, so the names are deterministic)."""
        name = base if self.param_uses.get(base, 0) <= 1 else f"{base}_{re.sub(r'[^A-Za-z0-9_]', '_', cid)}"
        ct = self.prompt[cid]["class_type"]
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        self.params[name] = {"default": value, "type": kind, "description": f"{what} (ComfyUI node {cid}, {ct})"}
        return {"param": name}


#: class_type -> the params its values become: (input name, param base name, param type)
PARAMS = {
    "CheckpointLoaderSimple": (("ckpt_name", "checkpoint", "string"),),
    "UNETLoader": (("unet_name", "unet", "string"),),
    "VAELoader": (("vae_name", "vae", "string"),),
    "DualCLIPLoader": (("clip_name1", "clip_1", "string"), ("clip_name2", "clip_2", "string")),
    "TripleCLIPLoader": (("clip_name1", "clip_1", "string"), ("clip_name2", "clip_2", "string"), ("clip_name3", "clip_3", "string")),
    "KSampler": (("seed", "seed", "int"), ("steps", "steps", "int"), ("cfg", "cfg", "float"), ("denoise", "denoise", "float"),
                 ("sampler_name", "sampler_name", "string"), ("scheduler", "scheduler", "string")),
    "KSamplerAdvanced": (("noise_seed", "seed", "int"), ("steps", "steps", "int"), ("cfg", "cfg", "float"),
                         ("sampler_name", "sampler_name", "string"), ("scheduler", "scheduler", "string")),
    "EmptyLatentImage": (("width", "width", "int"), ("height", "height", "int"), ("batch_size", "batch_size", "int")),
    "EmptySD3LatentImage": (("width", "width", "int"), ("height", "height", "int"), ("batch_size", "batch_size", "int")),
    "ModelSamplingSD3": (("shift", "shift", "float"),),
    "FluxGuidance": (("guidance", "guidance", "float"),),
    "CLIPTextEncodeFlux": (("guidance", "guidance", "float"),),
    "LoraLoader": (("lora_name", "lora", "string"), ("strength_model", "lora_strength", "float"), ("strength_clip", "lora_clip_strength", "float")),
    "VAEEncodeForInpaint": (("grow_mask_by", "grow_mask_by", "int"),),
    "ControlNetLoader": (("control_net_name", "controlnet", "string"),),
    "DiffControlNetLoader": (("control_net_name", "controlnet", "string"),),
    "ControlNetApply": (("strength", "control_strength", "float"),),
    "ControlNetApplyAdvanced": (("strength", "control_strength", "float"), ("start_percent", "control_start", "float"),
                                ("end_percent", "control_end", "float")),
}
PARAM_WHAT = {"checkpoint": "the checkpoint file", "seed": "noise seed", "steps": "sampling steps", "cfg": "classifier-free guidance scale",
              "denoise": "how much of the schedule runs (1: all)", "sampler_name": "ComfyUI sampler", "scheduler": "ComfyUI scheduler",
              "width": "picture width", "height": "picture height", "batch_size": "pictures per run", "lora": "the LoRA file",
              "lora_strength": "the LoRA's UNet strength", "lora_clip_strength": "the LoRA's text-encoder strength",
              "prompt": "what to draw", "negative_prompt": "what to steer away from", "text": "a prompt",
              "grow_mask_by": "pixels the inpainting mask grows by", "shift": "the flow model's noise-level shift (ModelSamplingSD3)",
              "guidance": "FLUX.1-dev's distilled guidance (FluxGuidance)", "controlnet": "the ControlNet file",
              "control_strength": "how strongly the ControlNet steers", "control_start": "the fraction of the sampling where the ControlNet starts",
              "control_end": "the fraction of the sampling where the ControlNet stops", "unet": "the diffusion model file (UNETLoader)",
              "vae": "the VAE file (VAELoader)", "clip_1": "a text encoder file (any order: each fits one of the model's encoders)",
              "clip_2": "a text encoder file (any order: each fits one of the model's encoders)",
              "clip_3": "a text encoder file (any order: each fits one of the model's encoders)",
              "config": "the diffusers folder of the model's architecture the split loaders' files are built with (its configs, tokenizers "
                        "and scheduler; it need hold no weights)"}


def _val(st: _State, cid: str, name: str) -> Any:
    inputs = st.prompt[cid]["inputs"]
    return inputs[name] if name in inputs else DEFAULTS.get(st.prompt[cid]["class_type"], {})[name]


def _pval(st: _State, cid: str, name: str) -> Any:
    """An input's value as the workflow writes it: a param reference where the class has one for it."""
    ct = st.prompt[cid]["class_type"]
    for inp, base, kind in PARAMS.get(ct, ()):
        if inp == name:
            return st.param(cid, base, _val(st, cid, name), kind, PARAM_WHAT[base])
    return _val(st, cid, name)


#: the checkpoint families a translated prompt runs, and what the others are called in a refusal
TRANSLATED_FAMILIES = ("sd", "sdxl", "sdxl-refiner", "sd3", "flux")
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner", "sd3": "SD3/SD3.5", "flux": "FLUX.1", "pixel": "pixel-space DDPM"}


def checkpoint_family(name: Any) -> str | None:
    """The family of the checkpoint CheckpointLoaderSimple names, as ComfyUI tells it from the
    file: a single file's keys (its header, nothing else read) or a diffusers folder's index,
    found as LoadModel finds it (the models folders' checkpoints/, or a path); None for a name
    not found (``prompt_family`` then decides)."""
    from graphflow_nodes.loading.files import resolve_model_path

    try:
        path = resolve_model_path(str(name))
        if not path.exists():
            return None
        if path.is_dir():
            from graphflow_nodes.loading.families import family_of

            return family_of(path).name
        if not path.is_file() or path.suffix.lower() != ".safetensors":
            return "sd"
        from graphflow_nodes.loading.checkpoint import REF_FAMILY, detect_family, header_shapes
        from graphflow_nodes.loading.flow_checkpoint import detect_flux
        from graphflow_nodes.loading.sd3_checkpoint import detect_sd3

        shapes = header_shapes(path)
        if detect_flux(shapes):
            return "flux"
        if detect_sd3(shapes):
            return "sd3"
        return REF_FAMILY.get(detect_family(shapes) or "sd1", "sd")
    except Exception:  # an unreadable or missing file is LoadModel's to refuse, by name, when it runs
        return None


#: class types only prompts for one family use: what a checkpoint not found here is taken for
FAMILY_HINTS = (("flux", ("FluxGuidance", "ModelSamplingFlux", "CLIPTextEncodeFlux")), ("sd3", ("ModelSamplingSD3",)),
                ("sdxl", ("CLIPTextEncodeSDXL",)))


def prompt_family(prompt: dict) -> str:
    """The family a prompt's own class types imply (FluxGuidance: FLUX.1, ModelSamplingSD3: SD3,
    CLIPTextEncodeSDXL: SDXL), else SD 1.x/2.x, ComfyUI's default graph's: what a checkpoint name
    not found here is taken for. The sampler refuses at run time a checkpoint of another family
    than the prompt was translated for."""
    types = {b.get("class_type") for b in prompt.values() if isinstance(b, dict)}
    return next((family for family, hints in FAMILY_HINTS if types & set(hints)), "sd")


def _t_checkpoint(st: _State, cid: str, up: dict) -> tuple:
    family = (st.family_of or checkpoint_family)(_val(st, cid, "ckpt_name")) or prompt_family(st.prompt)
    if family not in TRANSLATED_FAMILIES:
        raise _Refuse(NodeError("value_not_valid", f"ckpt_name is a {FAMILY_NAMES.get(family, family)} checkpoint, which translated prompts do not run yet",
                                f"translated: {', '.join(FAMILY_NAMES[f] for f in TRANSLATED_FAMILIES)}", "ckpt_name"))
    n = st.add(cid, gid(cid), {"type": "LoadModel", "inputs": {"path": _pval(st, cid, "ckpt_name")}})
    clip = {"tokenizer": f"{n}.tokenizer", "text_encoder": f"{n}.text_encoder", "clip_skip": 0, "family": family}
    if family == "sdxl-refiner":  # bigG alone
        clip = {"tokenizer_2": f"{n}.tokenizer_2", "text_encoder_2": f"{n}.text_encoder_2", "clip_skip": 0, "family": family}
    if family in ("sdxl", "sd3", "flux"):
        clip.update(tokenizer_2=f"{n}.tokenizer_2", text_encoder_2=f"{n}.text_encoder_2")
    if family == "sd3":
        clip.update(tokenizer_3=f"{n}.tokenizer_3", text_encoder_3=f"{n}.text_encoder_3", transformer=f"{n}.transformer")
    return ({"unet": f"{n}.transformer" if family in ("sd3", "flux") else f"{n}.unet", "scheduler_config": f"{n}.scheduler_config",
             "family": f"{n}.family", "translated_for": family}, clip, {"vae": f"{n}.vae"})


def _config(st: _State, cid: str) -> dict:
    """The one ``config`` param every split loader of the prompt shares: the diffusers folder
    (configs and tokenizers, no weights needed) their files are built with."""
    if "config" not in st.params:  # no default: validation names each loader's config until one is set (--set config=FOLDER)
        st.params["config"] = {"type": "string", "description": f"{PARAM_WHAT['config']} (ComfyUI's split loaders; no default: set it)"}
    return {"param": "config"}


def _t_unet_loader(st: _State, cid: str, up: dict) -> tuple:
    if _val(st, cid, "weight_dtype") != "default":
        raise _Refuse(NodeError("value_not_valid", f"weight_dtype {_val(st, cid, 'weight_dtype')} has no translation",
                                "graphflow keeps the weights in its own --dtype: use default", "weight_dtype"))
    family = (st.family_of or checkpoint_family)(_val(st, cid, "unet_name"))
    if family is not None and family != "flux":
        name = FAMILY_NAMES.get(family, family)
        raise _Refuse(NodeError("value_not_valid", f"unet_name is {'an' if name.startswith('SD') else 'a'} {name} file; UNETLoader is translated for "
                                "FLUX.1 transformer files", "load an SD3 all-in-one file or a diffusers folder with CheckpointLoaderSimple",
                                "unet_name"))
    n = st.add(cid, gid(cid), {"type": "LoadModel", "inputs": {"path": _pval(st, cid, "unet_name"), "config": _config(st, cid)}})
    return ({"unet": f"{n}.transformer", "scheduler_config": f"{n}.scheduler_config", "family": f"{n}.family", "translated_for": "flux"},)


def _clip_files(st: _State, cid: str, names: tuple[str, ...], family: str) -> tuple:
    files = {f"file_{k + 1}": _pval(st, cid, name) for k, name in enumerate(names)}
    n = st.add(cid, gid(cid), {"type": "LoadTextEncoderFiles", "inputs": {**files, "config": _config(st, cid)}})
    clip = {"tokenizer": f"{n}.tokenizer", "text_encoder": f"{n}.text_encoder", "tokenizer_2": f"{n}.tokenizer_2",
            "text_encoder_2": f"{n}.text_encoder_2", "clip_skip": 0, "family": family}
    if family == "sd3":
        clip.update(tokenizer_3=f"{n}.tokenizer_3", text_encoder_3=f"{n}.text_encoder_3", transformer=None)
    return (clip,)


def _t_dual_clip(st: _State, cid: str, up: dict) -> tuple:
    kind = _val(st, cid, "type")
    if kind not in DUAL_CLIP_FAMILIES:
        why = "SD3 without T5: use TripleCLIPLoader" if kind == "sd3" else "a model family graphflow does not run"
        raise _Refuse(NodeError("value_not_valid", f"DualCLIPLoader type {kind} has no translation", why, "type"))
    return _clip_files(st, cid, ("clip_name1", "clip_name2"), DUAL_CLIP_FAMILIES[kind])


def _t_triple_clip(st: _State, cid: str, up: dict) -> tuple:
    return _clip_files(st, cid, ("clip_name1", "clip_name2", "clip_name3"), "sd3")


#: VAELoader's built-in names (ComfyUI's tiny autoencoders, and no VAE at all), not files
VAE_BUILTINS = ("taesd", "taesdxl", "taesd3", "taef1", "taehv", "lighttaew2_2", "lighttaew2_1", "lighttaehy1_5", "pixel_space")


def _t_vae_loader(st: _State, cid: str, up: dict) -> tuple:
    if _val(st, cid, "vae_name") in VAE_BUILTINS:
        raise _Refuse(NodeError("value_not_valid", f"vae_name {_val(st, cid, 'vae_name')} (one of ComfyUI's built-in tiny or pixel-space VAEs) "
                                "has no translation", "name a VAE file", "vae_name"))
    n = st.add(cid, gid(cid), {"type": "LoadVAEFile", "inputs": {"path": _pval(st, cid, "vae_name"), "config": _config(st, cid)}})
    return ({"vae": f"{n}.vae"},)


def _t_set_last_layer(st: _State, cid: str, up: dict) -> tuple:
    stop = _val(st, cid, "stop_at_clip_layer")
    if not isinstance(stop, int) or stop > -1 or stop < -24:
        raise _Refuse(NodeError("value_not_valid", "stop_at_clip_layer is -1 (the last layer) to -24", str(stop), "stop_at_clip_layer"))
    if up["clip"].get("family") in ("sdxl", "sdxl-refiner", "sd3"):
        raise _Refuse(NodeError("value_not_valid", f"CLIPSetLastLayer on an {FAMILY_NAMES[up['clip']['family']]} checkpoint has no translation",
                                "its CLIP encoders already use their penultimate layer", "clip"))
    st.id_map.setdefault(cid, [])  # folded into each CLIPTextEncode it feeds, as clip_skip
    return ({**up["clip"], "clip_skip": up["clip"]["clip_skip"] + (-1 - stop)},)


def _encode_xl(st: _State, cid: str, clip: dict, text_l: Any, text_g: Any, sizes: dict | None) -> tuple:
    """SDXL's conditioning as ComfyUI makes it: both encoders' penultimate hidden states (its
    prompt weights), side by side; the second encoder's pooled embedding; and the size
    conditions the conditioning carries (CLIPTextEncodeSDXL's; a plain CLIPTextEncode's none:
    ``time_ids`` None, the sampler gives it the picture's size, ``_sized``)."""
    enc = lambda suffix, tok, te, text: st.add(cid, gid(cid, suffix), {"type": "EncodeWeighted", "inputs": {
        "tokenizer": {"from": clip[tok]}, "text_encoder": {"from": clip[te]}, "text": text, "mode": "comfy", "layer": "penultimate"}})
    a, b = enc("l", "tokenizer", "text_encoder", text_l), enc("g", "tokenizer_2", "text_encoder_2", text_g)
    n = st.add(cid, gid(cid), {"type": "ConcatEmbeddings", "inputs": {"a": {"from": f"{a}.text_embeddings"}, "b": {"from": f"{b}.text_embeddings"}}})
    size = None if sizes is None else f"""{st.add(cid, gid(cid, "size"), {"type": "ComfySizeConditions", "inputs": sizes})}.time_ids"""
    return ([{"embeddings": f"{n}.text_embeddings", "pooled": f"{b}.pooled", "time_ids": size, "start": 0.0, "end": 1.0}],)


def _encode_refiner(st: _State, cid: str, clip: dict, text: Any, sizes: dict | None) -> tuple:
    """An SDXL refiner's conditioning as ComfyUI makes it (``SDXLRefinerClipModel``): bigG's
    penultimate states and pooled embedding, and the aesthetic-score conditions it carries
    (CLIPTextEncodeSDXLRefiner's; a plain CLIPTextEncode's none, filled in by the sampler)."""
    n = st.add(cid, gid(cid), {"type": "EncodeWeighted", "inputs": {
        "tokenizer": {"from": clip["tokenizer_2"]}, "text_encoder": {"from": clip["text_encoder_2"]}, "text": text, "mode": "comfy",
        "layer": "penultimate"}})
    size = None if sizes is None else f"""{st.add(cid, gid(cid, "size"), {"type": "ComfySizeConditions", "inputs": sizes})}.time_ids"""
    return ([{"embeddings": f"{n}.text_embeddings", "pooled": f"{n}.pooled", "time_ids": size, "refiner": True, "start": 0.0, "end": 1.0}],)


def _t_text_encode_refiner(st: _State, cid: str, up: dict) -> tuple:
    if up["clip"].get("family") != "sdxl-refiner":
        raise _Refuse(NodeError("value_not_valid", "CLIPTextEncodeSDXLRefiner takes an SDXL refiner checkpoint's CLIP", "use CLIPTextEncode", "clip"))
    w, h = _val(st, cid, "width"), _val(st, cid, "height")
    return _encode_refiner(st, cid, up["clip"], st.param(cid, "refiner_text", _val(st, cid, "text"), "string", "the refiner's prompt"),
                           {"width": w, "height": h, "target_width": w, "target_height": h, "aesthetic_score": float(_val(st, cid, "ascore"))})


def _sized(st: _State, cid: str, side: str, conds: list, latent: dict) -> list:
    """SDXL conditionings that carry no size (a plain CLIPTextEncode's) given the picture's, from
    the sampler's latents, as comfy/samplers.py ``encode_model_conds`` gives them; on a refiner
    with the aesthetic score of the side they are used on (6 positive, 2.5 negative)."""
    out = []
    for k, c in enumerate(conds):
        if "time_ids" in c and c["time_ids"] is None:
            n = st.add(cid, gid(cid, f"{side}_size{k}"), {"type": "ComfySizeConditions", "inputs": {
                "latents": {"from": latent["latents"]}, **({"aesthetic_score": 2.5 if side == "negative" else 6.0} if c.get("refiner") else {})}})
            c = {**c, "time_ids": f"{n}.time_ids"}
        out.append(c)
    return out


def _encode_sd3(st: _State, cid: str, clip: dict, text: Any, text_g: Any = None, text_t5: Any = None) -> tuple:
    """SD3's conditioning as ComfyUI makes it: both CLIP encoders' penultimate states (its prompt
    weights) side by side, padded to T5's width, then T5's states for 77 tokens (ComfyUI's T5
    tokenizer pads to 77; diffusers' pipeline to 256), one sequence; both pooled embeddings."""
    enc = lambda suffix, tok, te, t: st.add(cid, gid(cid, suffix), {"type": "EncodeWeighted", "inputs": {
        "tokenizer": {"from": clip[tok]}, "text_encoder": {"from": clip[te]}, "text": t, "mode": "comfy", "layer": "penultimate"}})
    a, b = enc("l", "tokenizer", "text_encoder", text), enc("g", "tokenizer_2", "text_encoder_2", text if text_g is None else text_g)
    t5 = st.add(cid, gid(cid, "t5"), {"type": "EncodeT5", "inputs": {"tokenizer": {"from": clip["tokenizer_3"]}, "text_encoder": {"from": clip["text_encoder_3"]},
                                                                   "text": text if text_t5 is None else text_t5, "max_sequence_length": 77,
                                                                   **({"transformer": {"from": clip["transformer"]}} if clip.get("transformer") else {})}})
    n = st.add(cid, gid(cid), {"type": "JointEmbeddings", "inputs": {
        "clip_l": {"from": f"{a}.text_embeddings"}, "clip_g": {"from": f"{b}.text_embeddings"}, "t5": {"from": f"{t5}.hidden_states"},
        "pooled_l": {"from": f"{a}.pooled"}, "pooled_g": {"from": f"{b}.pooled"}}})
    return ([{"embeddings": f"{n}.embeddings", "pooled": f"{n}.pooled", "flow": True, "start": 0.0, "end": 1.0}],)


def _encode_flux(st: _State, cid: str, clip: dict, text_l: Any, text_t5: Any, guidance: Any) -> tuple:
    """FLUX.1's conditioning as ComfyUI makes it: CLIP-L's pooled embedding (its prompt weights),
    T5's states for 256 tokens (ComfyUI's Flux T5 tokenizer pads to 256), and the distilled
    guidance the conditioning carries (ComfyUI's default 3.5; FluxGuidance sets it)."""
    a = st.add(cid, gid(cid, "l"), {"type": "EncodeWeighted", "inputs": {
        "tokenizer": {"from": clip["tokenizer"]}, "text_encoder": {"from": clip["text_encoder"]}, "text": text_l, "mode": "comfy"}})
    n = st.add(cid, gid(cid), {"type": "EncodeT5", "inputs": {"tokenizer": {"from": clip["tokenizer_2"]}, "text_encoder": {"from": clip["text_encoder_2"]},
                                                              "text": text_t5, "max_sequence_length": 256}})
    ids = st.add(cid, gid(cid, "ids"), {"type": "TextIds", "inputs": {"embeddings": {"from": f"{n}.hidden_states"}}})
    return ([{"embeddings": f"{n}.hidden_states", "pooled": f"{a}.pooled", "text_ids": f"{ids}.text_ids", "guidance": guidance,
              "flux": True, "start": 0.0, "end": 1.0}],)


def _t_text_encode_sd3(st: _State, cid: str, up: dict) -> tuple:
    if up["clip"].get("family") != "sd3":
        raise _Refuse(NodeError("value_not_valid", "CLIPTextEncodeSD3 takes an SD3/SD3.5 checkpoint's CLIP", "use CLIPTextEncode", "clip"))
    texts = {k: _val(st, cid, k) for k in ("clip_l", "clip_g", "t5xxl")}
    empty = [k for k, v in texts.items() if not v]
    if empty and _val(st, cid, "empty_padding") == "none":  # ComfyUI then leaves that encoder out of the sequence altogether
        raise _Refuse(NodeError("value_not_valid", f"an empty {empty[0]} with empty_padding none has no translation",
                                "use empty_padding empty_prompt (the empty prompt encoded), or give the text", "empty_padding"))
    return _encode_sd3(st, cid, up["clip"], texts["clip_l"], texts["clip_g"], texts["t5xxl"])


def _t_text_encode_flux(st: _State, cid: str, up: dict) -> tuple:
    if up["clip"].get("family") != "flux":
        raise _Refuse(NodeError("value_not_valid", "CLIPTextEncodeFlux takes a FLUX.1 checkpoint's CLIP", "use CLIPTextEncode", "clip"))
    return _encode_flux(st, cid, up["clip"], st.param(cid, "clip_l", _val(st, cid, "clip_l"), "string", "the CLIP-L prompt"),
                        st.param(cid, "t5xxl", _val(st, cid, "t5xxl"), "string", "the T5 prompt"), _pval(st, cid, "guidance"))


def _t_flux_guidance(st: _State, cid: str, up: dict) -> tuple:
    if not all(c.get("flux") and "text_ids" in c for c in up["conditioning"]):
        raise _Refuse(NodeError("value_not_valid", "FluxGuidance takes a FLUX.1 conditioning", "", "conditioning"))
    st.id_map.setdefault(cid, [])  # folded into the samplers it feeds (PredictFlux's guidance)
    return ([{**c, "guidance": _pval(st, cid, "guidance")} for c in up["conditioning"]],)


def _t_model_sampling_flux(st: _State, cid: str, up: dict) -> tuple:
    if up["model"].get("translated_for") != "flux":
        raise _Refuse(NodeError("value_not_valid", "ModelSamplingFlux takes a FLUX.1 checkpoint's model", "", "model"))
    # ComfyUI's line through (256 patches, base_shift) and (4096 patches, max_shift), at this size's patch count
    mx, base, w, h = (float(_val(st, cid, k)) for k in ("max_shift", "base_shift", "width", "height"))
    m = (mx - base) / (4096 - 256)
    st.id_map.setdefault(cid, [])
    return ({**up["model"], "shift": (w * h / (8 * 8 * 2 * 2)) * m + base - m * 256},)


def _t_empty_sd3_latent(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "EmptyLatents", "inputs": {
        "width": _pval(st, cid, "width"), "height": _pval(st, cid, "height"), "batch_size": _pval(st, cid, "batch_size"), "channels": 16}})
    return ({"latents": f"{n}.latents"},)


def _t_model_sampling_sd3(st: _State, cid: str, up: dict) -> tuple:
    if up["model"].get("translated_for") != "sd3":
        raise _Refuse(NodeError("value_not_valid", "ModelSamplingSD3 takes an SD3/SD3.5 checkpoint's model", "", "model"))
    st.id_map.setdefault(cid, [])  # folded into the samplers it feeds (ComfySchedule's shift)
    return ({**up["model"], "shift": _pval(st, cid, "shift")},)


def _t_text_encode_sdxl(st: _State, cid: str, up: dict) -> tuple:
    if up["clip"].get("family") != "sdxl":
        raise _Refuse(NodeError("value_not_valid", "CLIPTextEncodeSDXL takes an SDXL checkpoint's CLIP", "use CLIPTextEncode", "clip"))
    sizes = {k: _val(st, cid, k) for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")}
    return _encode_xl(st, cid, up["clip"], st.param(cid, "text_l", _val(st, cid, "text_l"), "string", "the CLIP-L prompt"),
                      st.param(cid, "text_g", _val(st, cid, "text_g"), "string", "the OpenCLIP bigG prompt"), sizes)


def _t_text_encode(st: _State, cid: str, up: dict) -> tuple:
    clip = up["clip"]
    role = st.roles.get(cid, "text")
    text = st.param(cid, role, _val(st, cid, "text"), "string", PARAM_WHAT[role])
    if clip.get("family") == "sdxl":
        return _encode_xl(st, cid, clip, text, text, None)
    if clip.get("family") == "sdxl-refiner":
        return _encode_refiner(st, cid, clip, text, None)
    if clip.get("family") == "sd3":
        return _encode_sd3(st, cid, clip, text)
    if clip.get("family") == "flux":
        return _encode_flux(st, cid, clip, text, text, 3.5)
    n = st.add(cid, gid(cid), {"type": "EncodeWeighted", "inputs": {
        "tokenizer": {"from": clip["tokenizer"]}, "text_encoder": {"from": clip["text_encoder"]}, "text": text, "mode": "comfy",
        "clip_skip": clip["clip_skip"]}})
    return ([{"embeddings": f"{n}.text_embeddings", "start": 0.0, "end": 1.0}],)


def _t_combine(st: _State, cid: str, up: dict) -> tuple:
    st.id_map.setdefault(cid, [])  # folded into the samplers it feeds (PredictConditioned's lists)
    return (up["conditioning_1"] + up["conditioning_2"],)


def _t_timestep_range(st: _State, cid: str, up: dict) -> tuple:
    start, end = float(_val(st, cid, "start")), float(_val(st, cid, "end"))
    for name, v in (("start", start), ("end", end)):
        if not 0.0 <= v <= 1.0:
            raise _Refuse(NodeError("value_not_valid", f"{name} is a fraction of the sampling, 0 to 1", str(v), name))
    st.id_map.setdefault(cid, [])
    return ([{**c, "start": start, "end": end} for c in up["conditioning"]],)


def _t_empty_latent(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "EmptyLatents", "inputs": {
        "width": _pval(st, cid, "width"), "height": _pval(st, cid, "height"), "batch_size": _pval(st, cid, "batch_size")}})
    return ({"latents": f"{n}.latents"},)


def _sampler(st: _State, cid: str, up: dict, schedule_inputs: dict, seed: Any, add_noise: bool, leftover_noise: bool = False) -> tuple:
    for name in ("sampler_name",):
        v = _val(st, cid, name)
        if v in REFUSED_SAMPLERS:
            raise _Refuse(NodeError("value_not_valid", f"sampler_name {v} has no translation", REFUSED_SAMPLERS[v], name))
    model, latent = up["model"], up["latent_image"]
    if model.get("translated_for") in ("sd3", "flux") and _val(st, cid, "sampler_name") not in FLOW_SAMPLERS:
        # refused here, before anything runs (ComfySchedule refuses one set later, by --set, when it runs)
        raise _Refuse(NodeError("value_not_valid", f"sampler_name {_val(st, cid, 'sampler_name')} on a flow model "
                                f"({FAMILY_NAMES[model['translated_for']]}) has no translation",
                                f"{FLOW_REFUSED}; translatable: {', '.join(FLOW_SAMPLERS)}", "sampler_name"))
    loop = gid(cid)
    sched = st.add(cid, gid(cid, "schedule"), {"type": "ComfySchedule", "inputs": {
        "scheduler_config": {"from": model["scheduler_config"]}, "family": {"from": model["family"]}, "sampler_name": _pval(st, cid, "sampler_name"),
        "scheduler": _pval(st, cid, "scheduler"), "steps": _pval(st, cid, "steps"), "translated_for": model.get("translated_for", "sd"),
        **({"shift": model["shift"]} if "shift" in model else {}), **schedule_inputs}})
    noise = st.add(cid, gid(cid, "noise"), {"type": "ComfyNoise", "inputs": {
        "latents": {"from": latent["latents"]}, "seed": seed, "noise_scale": {"from": f"{sched}.noise_scale"},
        "latent_scale": {"from": f"{sched}.latent_scale"}, "add_noise": add_noise}})
    pos, neg = _sized(st, cid, "positive", up["positive"], latent), _sized(st, cid, "negative", up["negative"], latent)
    plain = all(len(c) == 1 and (c[0]["start"], c[0]["end"]) == (0.0, 1.0) for c in (pos, neg))
    if model.get("translated_for") in ("sd3", "flux"):
        return _flow_loop(st, cid, loop, model, latent, pos, neg, sched, noise)
    inpaint = _inpaint_parts(st, cid, loop, model, latent, pos, noise)
    model_latents = f"{loop}_inpaint.latents" if "input" in inpaint else f"{loop}.latents"
    scale = {f"{loop}_scale": {"type": "ScaleModelInput", "inputs": {"scheduler": {"from": f"{loop}.scheduler"}, "latents": {"from": model_latents},
                                                                    "timestep": {"from": f"{loop}.timestep"}, **({} if plain else {"cfg": False})}}}
    unet_input = f"{loop}_scale.model_input"
    if "channels" in inpaint:
        unet_input = f"{loop}_channels.model_input"
    xl = "pooled" in pos[0]
    if plain and xl:  # SDXL: the hidden states, pooled embeddings and size conditions of both sides in one guidance batch
        emb = st.add(cid, gid(cid, "embeddings"), {"type": "CFGConditions", "inputs": {
            "uncond": {"from": neg[0]["embeddings"]}, "cond": {"from": pos[0]["embeddings"]}, "uncond_pooled": {"from": neg[0]["pooled"]},
            "cond_pooled": {"from": pos[0]["pooled"]}, "time_ids": {"from": pos[0]["time_ids"]}, "uncond_time_ids": {"from": neg[0]["time_ids"]}}})
        added = {"pooled": {"from": f"{emb}.pooled"}, "time_ids": {"from": f"{emb}.time_ids"}}
    elif plain:  # one full-range conditioning a side: the library's own guidance batch
        emb = st.add(cid, gid(cid, "embeddings"), {"type": "CFGEmbeddings", "inputs": {
            "uncond": {"from": neg[0]["embeddings"]}, "cond": {"from": pos[0]["embeddings"]}}})
        added = {}
    if plain:
        control = _control_nodes(st, cid, loop, pos[0].get("controls", []), neg[0].get("controls", []), emb, added)
        predict = {
            **control,
            f"{loop}_unet": {"type": "PredictNoiseXL" if xl else "PredictNoise", "inputs": {
                "unet": {"from": model["unet"]}, "model_input": {"from": unet_input}, "timestep": {"from": f"{loop}.timestep"},
                "embeddings": {"from": f"{emb}.embeddings"}, **added,
                **({"control": {"from": f"{list(control)[-1]}.residuals"}} if control else {})}},
            f"{loop}_cfg": {"type": "CFG", "inputs": {"noise_pred": {"from": f"{loop}_unet.noise_pred"}, "guidance_scale": _pval(st, cid, "cfg")}},
        }
    else:  # combined or time-ranged conditionings: ComfyUI's averaging of the active ones, then CFG
        if any(c.get("controls") for c in pos + neg):
            raise _Refuse(NodeError("value_not_valid", "a ControlNet on combined or time-ranged conditionings has no translation",
                                    "apply ControlNets to one conditioning a side", "positive"))
        predict = {f"{loop}_cfg": {"type": "PredictConditioned", "inputs": {
            "unet": {"from": model["unet"]}, "model_input": {"from": unet_input}, **_conditioned(st, cid, loop, pos, neg, xl)}}}
    prediction = f"{loop}_cfg.noise_pred"
    if "prediction" in inpaint:
        prediction = f"{loop}_keep.noise_pred"
    st.add(cid, loop, {
        "type": "Loop", "over": {"from": f"{sched}.timesteps"}, "item": "timestep",
        "carry": {"latents": {"from": f"{noise}.latents"}, "scheduler": {"from": f"{sched}.scheduler"}, "rng": {"from": f"{noise}.rng"}},
        "body": {
            **inpaint.get("input", {}),
            **scale,
            **inpaint.get("channels", {}),
            **predict,
            **inpaint.get("prediction", {}),
            f"{loop}_step": {"type": "SchedulerStep", "inputs": {"scheduler": {"from": f"{loop}.scheduler"}, "noise_pred": {"from": prediction},
                                                                 "timestep": {"from": f"{loop}.timestep"}, "latents": {"from": f"{loop}.latents"},
                                                                 "rng": {"from": f"{loop}.rng"}}},
        },
        "next": {"latents": {"from": f"{loop}_step.latents"}, "scheduler": {"from": f"{loop}_step.scheduler"}, "rng": {"from": f"{loop}_step.rng"}},
    })
    if leftover_noise:  # KSamplerAdvanced handing on a noisy latent: in ComfyUI's scale whatever the scheduler's
        out = st.add(cid, gid(cid, "out"), {"type": "ScaleLatents", "inputs": {"latents": {"from": f"{loop}.latents"},
                                                                              "factor": {"from": f"{sched}.end_scale"}}})
        return ({"latents": f"{out}.latents"},)
    return ({"latents": f"{loop}.latents"},)


def _conditioned(st: _State, cid: str, loop: str, pos: list, neg: list, pooled: bool, time_ids: bool = True) -> dict:
    """PredictConditioned's inputs for combined or time-ranged conditionings: each side's
    embeddings, percent ranges and (SDXL, SD3) pooled embeddings and (SDXL) size conditions."""
    links = lambda c, key: [{"from": e[key]} for e in c]
    extra = {}
    if pooled:
        extra.update(positive_pooled=links(pos, "pooled"), negative_pooled=links(neg, "pooled"))
        if time_ids:
            extra.update(positive_time_ids=links(pos, "time_ids"), negative_time_ids=links(neg, "time_ids"))
    return {"timestep": {"from": f"{loop}.timestep"}, "scheduler": {"from": f"{loop}.scheduler"},
            "positive": links(pos, "embeddings"), "positive_ranges": [[e["start"], e["end"]] for e in pos],
            "negative": links(neg, "embeddings"), "negative_ranges": [[e["start"], e["end"]] for e in neg], **extra,
            "guidance_scale": _pval(st, cid, "cfg")}


def _guidances(st: _State, cid: str, conds: list, side: str) -> Any:
    """Each FLUX.1 conditioning's distilled guidance as one list input: the values as written, or
    where one is a parameter (FluxGuidance's) a Value node per conditioning, their outputs gathered."""
    if not any(isinstance(c["guidance"], dict) for c in conds):
        return [float(c["guidance"]) for c in conds]
    return [{"from": f"{st.add(cid, gid(cid, f'{side}_guidance{k}'), {'type': 'Value', 'inputs': {'value': c['guidance']}})}.value"}
            for k, c in enumerate(conds)]


def _flow_loop(st: _State, cid: str, loop: str, model: dict, latent: dict, pos: list, neg: list, sched: str, noise: str) -> tuple:
    """The loop for an SD3 model: its transformer's velocity on the joint sequence and pooled
    embeddings (unconditional half first), CFG, FlowMatch Euler on ComfyUI's sigmas. Combined or
    time-ranged conditionings: PredictConditioned on the transformer (ComfyUI's averaging)."""
    plain = all(len(c) == 1 and (c[0]["start"], c[0]["end"]) == (0.0, 1.0) for c in (pos, neg))
    flux = model.get("translated_for") == "flux"
    if not plain and any(c.get("controls") for c in pos + neg):
        raise _Refuse(NodeError("value_not_valid", "a ControlNet on combined or time-ranged conditionings has no translation",
                                "apply ControlNets to one conditioning a side", "positive"))
    controls = pos[0].get("controls", [])
    if any(c.get("controls") for c in pos + neg) and (neg[0].get("controls", []) != controls or any(c.get("vae") is None for c in controls)):
        what = "a FLUX.1" if flux else "an SD3"
        raise _Refuse(NodeError("value_not_valid", f"{what} ControlNet is translated from ControlNetApplyAdvanced with its vae linked, on both "
                                "conditionings", f"ComfyUI encodes {what} ControlNet's image with that VAE (ControlNetApply has none)", "positive"))
    inpaint = _inpaint_parts(st, cid, loop, model, latent, [], noise, channels=False, packed=flux) if latent.get("noise_mask") else {}
    start = f"{noise}.latents"
    if model.get("translated_for") == "flux":
        pack = st.add(cid, gid(cid, "pack"), {"type": "PackLatents", "inputs": {"latents": {"from": f"{noise}.latents"}}})
        start = f"{pack}.latents"
        latents = f"{loop}_inpaint.latents" if inpaint else f"{loop}.latents"
        predict = _flux_predict(st, cid, loop, model, pos[0], neg[0], pack, latents, controls) if plain else \
            {f"{loop}_cfg": {"type": "PredictConditioned", "inputs": {
                "transformer": {"from": model["unet"]}, "latents": {"from": latents}, **_conditioned(st, cid, loop, pos, neg, True, False),
                "flux": True, "scheduler_config": {"from": model["scheduler_config"]}, "image_ids": {"from": f"{pack}.image_ids"},
                "positive_text_ids": [{"from": e["text_ids"]} for e in pos], "negative_text_ids": [{"from": e["text_ids"]} for e in neg],
                "positive_guidance": _guidances(st, cid, pos, "positive"), "negative_guidance": _guidances(st, cid, neg, "negative"),
                **({"shift": model["shift"]} if "shift" in model else {})}}}
        body = {**inpaint.get("input", {}), **predict, **inpaint.get("prediction", {})}
    elif not plain:
        latents = f"{loop}_inpaint.latents" if inpaint else f"{loop}.latents"
        body = {
            **inpaint.get("input", {}),
            f"{loop}_cfg": {"type": "PredictConditioned", "inputs": {
                "transformer": {"from": model["unet"]}, "latents": {"from": latents}, **_conditioned(st, cid, loop, pos, neg, True, False),
                **({"shift": model["shift"]} if "shift" in model else {})}},
            **inpaint.get("prediction", {}),
        }
    else:
        emb = st.add(cid, gid(cid, "embeddings"), {"type": "CFGEmbeddings", "inputs": {
            "uncond": {"from": neg[0]["embeddings"]}, "cond": {"from": pos[0]["embeddings"]}}})
        pooled = st.add(cid, gid(cid, "pooled"), {"type": "CFGPooled", "inputs": {"uncond": {"from": neg[0]["pooled"]}, "cond": {"from": pos[0]["pooled"]}}})
        latents = f"{loop}_inpaint.latents" if inpaint else f"{loop}.latents"
        control = _sd3_control_nodes(st, cid, loop, model, controls, latents, emb, pooled)
        body = {
            **inpaint.get("input", {}),
            **control,
            f"{loop}_transformer": {"type": "PredictSD3", "inputs": {
                "transformer": {"from": model["unet"]}, "latents": {"from": latents},
                "timestep": {"from": f"{loop}.timestep"}, "embeddings": {"from": f"{emb}.embeddings"}, "pooled": {"from": f"{pooled}.pooled"},
                **({"control": {"from": f"{list(control)[-1]}.residuals"}} if control else {})}},
            f"{loop}_cfg": {"type": "CFG", "inputs": {"noise_pred": {"from": f"{loop}_transformer.noise_pred"}, "guidance_scale": _pval(st, cid, "cfg")}},
            **inpaint.get("prediction", {}),
        }
    st.add(cid, loop, {
        "type": "Loop", "over": {"from": f"{sched}.timesteps"}, "item": "timestep",
        "carry": {"latents": {"from": start}, "scheduler": {"from": f"{sched}.scheduler"}, "rng": {"from": f"{noise}.rng"}},
        "body": {
            **body,
            f"{loop}_step": {"type": "SchedulerStep", "inputs": {"scheduler": {"from": f"{loop}.scheduler"},
                                                                 "noise_pred": {"from": f"{loop}_keep.noise_pred" if inpaint else f"{loop}_cfg.noise_pred"},
                                                                 "timestep": {"from": f"{loop}.timestep"}, "latents": {"from": f"{loop}.latents"},
                                                                 "rng": {"from": f"{loop}.rng"}}},
        },
        "next": {"latents": {"from": f"{loop}_step.latents"}, "scheduler": {"from": f"{loop}_step.scheduler"}, "rng": {"from": f"{loop}_step.rng"}},
    })
    if model.get("translated_for") == "flux":
        out = st.add(cid, gid(cid, "unpack"), {"type": "UnpackLatents", "inputs": {"latents": {"from": f"{loop}.latents"},
                                                                                 "image_ids": {"from": f"{pack}.image_ids"}}})
        return ({"latents": f"{out}.latents"},)
    return ({"latents": f"{loop}.latents"},)


def _sd3_control_nodes(st: _State, cid: str, loop: str, model: dict, controls: list[dict], latents: str, emb: str, pooled: str) -> dict[str, dict]:
    """SD3 ControlNets as ComfyUI runs them (comfy/controlnet.py ``load_controlnet_mmdit``): the
    image encoded by the linked VAE to its latent distribution's mean, times the scaling factor
    with no shift (ComfyUI's "SD3 controlnet weirdness"), the pooled projection zeroed, the
    residuals times the strength while the step's sigma lies in the percents' range
    (``percent_to_sigma`` of a flow model), on both halves of the guidance batch; chained (summed)."""
    nodes: dict[str, dict] = {}
    prev = None
    for k, c in enumerate(controls):
        name = f"{loop}_control{k}" if len(controls) > 1 else f"{loop}_control"
        cl = st.add(cid, gid(cid, f"control_latents{k}" if len(controls) > 1 else "control_latents"), {"type": "SD3ControlLatents", "inputs": {
            "vae": {"from": c["vae"]}, "controlnet": {"from": c["controlnet"]}, "control_image": {"from": c["image"]}, "mode": "mean"}})
        nodes[f"{name}_scale"] = {"type": "ComfyControlScale", "inputs": {
            "scheduler": {"from": f"{loop}.scheduler"}, "timestep": {"from": f"{loop}.timestep"}, "strength": c["strength"],
            "start": c["range"][0], "end": c["range"][1], **({"shift": model["shift"]} if "shift" in model else {})}}
        nodes[name] = {"type": "ApplySD3ControlNet", "inputs": {
            "controlnet": {"from": c["controlnet"]}, "latents": {"from": latents}, "timestep": {"from": f"{loop}.timestep"},
            "embeddings": {"from": f"{emb}.embeddings"}, "pooled": {"from": f"{pooled}.pooled"}, "control_latents": {"from": f"{cl}.latents"},
            "step": {"from": f"{loop}.index"}, "steps": {"from": f"{loop}.count"}, "scale": {"from": f"{name}_scale.scale"},
            **({"residuals": {"from": f"{prev}.residuals"}} if prev else {})}}
        prev = name
    return nodes


def _flux_predict(st: _State, cid: str, loop: str, model: dict, pos: dict, neg: dict, pack: str, latents: str,
                  controls: list[dict] = ()) -> dict[str, dict]:
    """FLUX.1's prediction in the loop, on packed latents with each conditioning's own guidance.
    ComfyUI skips the negative prompt at cfg 1 (what Flux-dev prompts use), so a prompt whose cfg
    is 1 translates to the one call (and no cfg param); any other cfg is ComfyUI's true CFG over
    two calls (TrueCFG, the cfg param). ControlNets (InstantX-style, as comfy/controlnet.py
    ``load_controlnet_flux_instantx`` runs them: the image's latent mean through the linked VAE,
    less the shift, times the scale, packed; the residuals times the strength while the step's
    sigma lies within the percents, ModelSamplingFlux's ``percent_to_sigma``) run beside each call,
    with that side's text, pooled embedding and guidance."""
    nodes: dict[str, dict] = {}
    control_latents = []
    for k, c in enumerate(controls):
        suffix = f"control_latents{k}" if len(controls) > 1 else "control_latents"
        control_latents.append(st.add(cid, gid(cid, suffix), {"type": "FluxControlLatents", "inputs": {
            "vae": {"from": c["vae"]}, "controlnet": {"from": c["controlnet"]}, "control_image": {"from": c["image"]}, "mode": "mean"}}))
        nodes[f"{loop}_{suffix.replace('latents', 'scale')}"] = {"type": "ComfyControlScale", "inputs": {
            "scheduler": {"from": f"{loop}.scheduler"}, "timestep": {"from": f"{loop}.timestep"}, "strength": c["strength"],
            "start": c["range"][0], "end": c["range"][1], "flux": True, "scheduler_config": {"from": model["scheduler_config"]},
            **({"shift": model["shift"]} if "shift" in model else {})}}

    def call(name: str, side: str, c: dict) -> None:
        prev = None
        for k, ctl in enumerate(controls):
            suffix = f"{k}" if len(controls) > 1 else ""
            node = f"{loop}_{side}_control{suffix}"
            nodes[node] = {"type": "ApplyFluxControlNet", "inputs": {
                "controlnet": {"from": ctl["controlnet"]}, "latents": {"from": latents}, "timestep": {"from": f"{loop}.timestep"},
                "embeddings": {"from": c["embeddings"]}, "pooled": {"from": c["pooled"]}, "text_ids": {"from": c["text_ids"]},
                "image_ids": {"from": f"{pack}.image_ids"}, "control_latents": {"from": f"{control_latents[k]}.latents"}, "guidance": c["guidance"],
                "step": {"from": f"{loop}.index"}, "steps": {"from": f"{loop}.count"}, "scale": {"from": f"{loop}_control_scale{suffix}.scale"},
                **({"residuals": {"from": f"{prev}.residuals"}} if prev else {})}}
            prev = node
        nodes[name] = {"type": "PredictFlux", "inputs": {
            "transformer": {"from": model["unet"]}, "latents": {"from": latents}, "timestep": {"from": f"{loop}.timestep"},
            "embeddings": {"from": c["embeddings"]}, "pooled": {"from": c["pooled"]}, "text_ids": {"from": c["text_ids"]},
            "image_ids": {"from": f"{pack}.image_ids"}, "guidance": c["guidance"], **({"control": {"from": f"{prev}.residuals"}} if prev else {})}}
    if float(_val(st, cid, "cfg")) == 1.0:
        call(f"{loop}_cfg", "positive", pos)
        return nodes
    call(f"{loop}_transformer", "positive", pos)
    call(f"{loop}_negative", "negative", neg)
    nodes[f"{loop}_cfg"] = {"type": "TrueCFG", "inputs": {"cond": {"from": f"{loop}_transformer.noise_pred"},
                                                          "uncond": {"from": f"{loop}_negative.noise_pred"}, "scale": _pval(st, cid, "cfg")}}
    return nodes


def _inpaint_parts(st: _State, cid: str, loop: str, model: dict, latent: dict, pos: list, noise: str,
                   channels: bool = True, packed: bool = False) -> dict[str, dict]:
    """The loop nodes a masked latent (SetLatentNoiseMask, VAEEncodeForInpaint,
    InpaintModelConditioning) adds, keyed by where they go: ``input`` (ComfyUI's blend of the
    model's input), ``prediction`` (its blend of the denoised estimate), ``channels`` (a
    9-channel inpainting UNet's mask and masked picture, from the conditioning's concat when
    InpaintModelConditioning gave one, else from the latent, as comfy/model_base.py
    ``concat_cond`` chooses; a 4-channel UNet passes through it). ``packed``: FLUX.1's loop runs on
    packed latents, so the picture's latents, the noise and the mask (as wide as the latents) are
    packed too; packing only moves values, so the blends are ComfyUI's, which it makes unpacked."""
    parts: dict[str, dict] = {}
    mask = latent.get("noise_mask")
    if mask is not None:
        lm = st.add(cid, gid(cid, "mask"), {"type": "ComfyLatentMask", "inputs": {"mask": {"from": mask}, "latents": {"from": latent["latents"]},
                                                                                   **({"pack": True} if packed else {})}})
        image, unit_noise, latent_mask = latent["latents"], f"{noise}.noise", f"{lm}.mask"
        if packed:
            pack = lambda suffix, src: f"""{st.add(cid, gid(cid, suffix), {"type": "PackLatents", "inputs": {"latents": {"from": src}}})}.latents"""
            image, unit_noise = pack("pack_image", image), pack("pack_noise", unit_noise)
        common = {"scheduler": {"from": f"{loop}.scheduler"}, "timestep": {"from": f"{loop}.timestep"},
                  "image_latents": {"from": image}, "mask": {"from": latent_mask}}
        parts["input"] = {f"{loop}_inpaint": {"type": "ComfyInpaintInput", "inputs": {
            **common, "latents": {"from": f"{loop}.latents"}, "noise": {"from": unit_noise}}}}
        parts["prediction"] = {f"{loop}_keep": {"type": "ComfyInpaintPrediction", "inputs": {
            **common, "latents": {"from": f"{loop}.latents"}, "model_latents": {"from": f"{loop}_inpaint.latents"},
            "noise_pred": {"from": f"{loop}_cfg.noise_pred"}}}}
    concat = next((c["concat"] for c in pos if c.get("concat")), None)
    if not channels:  # a transformer has no inpainting channels
        return parts
    if concat is None and mask is not None:
        concat = {"latents": latent["latents"], "mask": mask}
    if concat is not None:
        cm = st.add(cid, gid(cid, "concat_mask"), {"type": "ComfyLatentMask", "inputs": {
            "mask": {"from": concat["mask"]}, "latents": {"from": latent["latents"]}, "round": True}})
        parts["channels"] = {f"{loop}_channels": {"type": "InpaintChannels", "inputs": {
            "unet": {"from": model["unet"]}, "model_input": {"from": f"{loop}_scale.model_input"}, "mask": {"from": f"{cm}.mask"},
            "masked_latents": {"from": concat["latents"]}}}}
    return parts


def _control_nodes(st: _State, cid: str, loop: str, pos: list[dict], neg: list[dict], emb: str, added: dict) -> dict[str, dict]:
    """ApplyControlNet nodes for the ControlNets on the two conditionings, chained (summed), as
    ComfyUI chains a conditioning's ControlNets. One on both sides (ControlNetApplyAdvanced) runs
    on both halves of the guidance batch, as ComfyUI batches conditionings that share their
    control; one on the positive side alone (ControlNetApply, or ControlNetApplyAdvanced fed
    another negative) steers the prompt's half (``uncond`` false), one on the negative side alone
    the unconditional half (``cond`` false): each side's prediction gets its own chain's sum."""
    unmatched = list(neg)
    both, pos_only = [], []
    for c in pos:
        if c in unmatched:
            unmatched.remove(c)
            both.append(c)
        else:
            pos_only.append(c)
    chain = [(c, {}) for c in both] + [(c, {"uncond": False}) for c in pos_only] + [(c, {"cond": False}) for c in unmatched]
    nodes: dict[str, dict] = {}
    prev = None
    for k, (c, halves) in enumerate(chain):
        name = f"{loop}_control{k}" if len(chain) > 1 else f"{loop}_control"
        scale = c["strength"]
        if c.get("range") is not None:
            nodes[f"{name}_scale"] = {"type": "ComfyControlScale", "inputs": {
                "scheduler": {"from": f"{loop}.scheduler"}, "timestep": {"from": f"{loop}.timestep"}, "strength": c["strength"],
                "start": c["range"][0], "end": c["range"][1]}}
            scale = {"from": f"{name}_scale.scale"}
        nodes[name] = {"type": "ApplyControlNet", "inputs": {
            "controlnet": {"from": c["controlnet"]}, "model_input": {"from": f"{loop}_scale.model_input"}, "timestep": {"from": f"{loop}.timestep"},
            "embeddings": {"from": f"{emb}.embeddings"}, "control_image": {"from": c["image"]}, "step": {"from": f"{loop}.index"},
            "steps": {"from": f"{loop}.count"}, "scale": scale, **halves, **added,
            **({"residuals": {"from": f"{prev}.residuals"}} if prev else {})}}
        prev = name
    return nodes


def _t_ksampler(st: _State, cid: str, up: dict) -> tuple:
    return _sampler(st, cid, up, {"denoise": _pval(st, cid, "denoise")}, _pval(st, cid, "seed"), True)


def _t_ksampler_advanced(st: _State, cid: str, up: dict) -> tuple:
    return _sampler(st, cid, up, {"start_step": _val(st, cid, "start_at_step"), "end_step": _val(st, cid, "end_at_step"),
                                  "force_full_denoise": _val(st, cid, "return_with_leftover_noise") == "disable"},
                    _pval(st, cid, "noise_seed"), _val(st, cid, "add_noise") == "enable",
                    _val(st, cid, "return_with_leftover_noise") == "enable")


def _t_vae_decode(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "Decode", "inputs": {"vae": {"from": up["vae"]["vae"]}, "latents": {"from": up["samples"]["latents"]}}})
    return ({"image": f"{n}.image"},)


def _t_vae_encode(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "VAEEncode", "inputs": {"vae": {"from": up["vae"]["vae"]}, "image": {"from": up["pixels"]["image"]},
                                                               "mode": "mean"}})
    return ({"latents": f"{n}.latents"},)


def _in_input_dir(st: _State, value: Any) -> Any:
    """LoadImage's ``image`` as ComfyUI reads it: a name in its input folder (``name.png``,
    ``subfolder/name.png``, maybe annotated `` [input]``), here ``input_dir`` when one is given
    (the server's uploads folder, where /upload/image puts pictures). Anything else stays as
    given, and the confined reading checks it as any path."""
    if st.input_dir is None or not isinstance(value, str):
        return value
    name = value[: -len(" [input]")] if value.endswith(" [input]") else value
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return value
    return f"{st.input_dir.rstrip('/')}/{name}"


def _uses_output(st: _State, cid: str, index: int) -> bool:
    return any(is_link(v) and str(v[0]) == cid and v[1] == index
               for body in st.prompt.values() if isinstance(body, dict) for v in body.get("inputs", {}).values())


def _t_load_image(st: _State, cid: str, up: dict) -> tuple:
    name = st.param(cid, "image", _in_input_dir(st, _val(st, cid, "image")), "string", "the picture to load")
    n = st.add(cid, gid(cid), {"type": "LoadImage", "inputs": {"path": name}})
    mask = None
    if _uses_output(st, cid, 1):  # ComfyUI's MASK: 1 − alpha, its grey levels kept
        m = st.add(cid, gid(cid, "mask"), {"type": "LoadMask", "inputs": {"path": name, "source": "alpha", "threshold": None}})
        mask = f"{m}.mask"
    return ({"image": f"{n}.image"}, mask)


def _t_load_image_mask(st: _State, cid: str, up: dict) -> tuple:
    name = st.param(cid, "image", _in_input_dir(st, _val(st, cid, "image")), "string", "the mask picture to load")
    n = st.add(cid, gid(cid), {"type": "LoadMask", "inputs": {"path": name, "source": _val(st, cid, "channel"), "threshold": None}})
    return (f"{n}.mask",)


def _t_set_noise_mask(st: _State, cid: str, up: dict) -> tuple:
    st.id_map.setdefault(cid, [])  # folded into the samplers it feeds
    return ({**up["samples"], "noise_mask": up["mask"]},)


def _t_encode_for_inpaint(st: _State, cid: str, up: dict) -> tuple:
    pic = st.add(cid, gid(cid, "picture"), {"type": "ComfyInpaintPicture", "inputs": {
        "image": {"from": up["pixels"]["image"]}, "mask": {"from": up["mask"]}, "grow_mask_by": _pval(st, cid, "grow_mask_by")}})
    n = st.add(cid, gid(cid), {"type": "VAEEncode", "inputs": {"vae": {"from": up["vae"]["vae"]}, "image": {"from": f"{pic}.image"}, "mode": "mean"}})
    return ({"latents": f"{n}.latents", "noise_mask": f"{pic}.mask"},)


def _t_inpaint_conditioning(st: _State, cid: str, up: dict) -> tuple:
    pic = st.add(cid, gid(cid, "picture"), {"type": "ComfyInpaintPicture", "inputs": {
        "image": {"from": up["pixels"]["image"]}, "mask": {"from": up["mask"]}}})
    masked = st.add(cid, gid(cid, "masked"), {"type": "VAEEncode", "inputs": {"vae": {"from": up["vae"]["vae"]}, "image": {"from": f"{pic}.image"},
                                                                            "mode": "mean"}})
    n = st.add(cid, gid(cid), {"type": "VAEEncode", "inputs": {"vae": {"from": up["vae"]["vae"]}, "image": {"from": up["pixels"]["image"]},
                                                               "mode": "mean"}})
    concat = {"latents": f"{masked}.latents", "mask": f"{pic}.mask"}
    latent = {"latents": f"{n}.latents", **({"noise_mask": f"{pic}.mask"} if _val(st, cid, "noise_mask") else {})}
    return ([{**c, "concat": concat} for c in up["positive"]], [{**c, "concat": concat} for c in up["negative"]], latent)


def _t_controlnet_loader(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "LoadControlNet", "inputs": {"path": _pval(st, cid, "control_net_name")}})
    return (f"{n}.controlnet",)


def _t_diff_controlnet_loader(st: _State, cid: str, up: dict) -> tuple:
    # ComfyUI reads the model only for a weight-difference file (one with a "difference" tensor), which LoadControlNet refuses
    return _t_controlnet_loader(st, cid, up)


def _control_image(st: _State, cid: str, up: dict) -> str:
    # ComfyUI resizes a hint of another size to the latents' (nearest-exact, centre crop); ApplyControlNet refuses one by name
    n = st.add(cid, gid(cid, "image"), {"type": "ControlImage", "inputs": {"image": {"from": up["image"]["image"]}}})
    return f"{n}.control_image"


def _t_controlnet_apply(st: _State, cid: str, up: dict) -> tuple:
    c = {"controlnet": up["control_net"], "image": _control_image(st, cid, up), "strength": _pval(st, cid, "strength"), "range": None}
    return ([{**e, "controls": [*e.get("controls", []), c]} for e in up["conditioning"]],)


def _t_controlnet_apply_advanced(st: _State, cid: str, up: dict) -> tuple:
    c = {"controlnet": up["control_net"], "image": _control_image(st, cid, up), "strength": _pval(st, cid, "strength"),
         "range": [_pval(st, cid, "start_percent"), _pval(st, cid, "end_percent")], "vae": up["vae"]["vae"] if "vae" in up else None}
    return tuple([{**e, "controls": [*e.get("controls", []), c]} for e in up[side]] for side in ("positive", "negative"))


def _t_canny(st: _State, cid: str, up: dict) -> tuple:
    # ComfyUI's thresholds are fractions of 1 (kornia's Canny on float pixels); OpenCV's are of 255
    low, high = (round(float(_val(st, cid, k)) * 255) for k in ("low_threshold", "high_threshold"))
    n = st.add(cid, gid(cid), {"type": "CannyEdges", "inputs": {"image": {"from": up["image"]["image"]}, "low_threshold": low,
                                                                "high_threshold": high}})
    return ({"image": f"{n}.image"},)


def _prefix(v: Any) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", str(v)).lstrip("_.-")[:100]
    return s or "ComfyUI"


def _t_save(st: _State, cid: str, up: dict) -> tuple:
    prefix = _prefix(_val(st, cid, "filename_prefix")) if st.prompt[cid]["class_type"] == "SaveImage" else "preview"
    n = st.add(cid, gid(cid), {"type": "SaveImage", "inputs": {"image": {"from": up["images"]["image"]}, "prefix": prefix}})
    st.outputs[f"images_{gid(cid)[1:]}"] = f"{n}.paths"
    st.outputs[f"image_{gid(cid)[1:]}"] = up["images"]["image"]  # the picture itself, for a caller that runs in-process
    return ()


def _t_lora(st: _State, cid: str, up: dict) -> tuple:
    if up["clip"].get("family") == "sdxl-refiner":
        raise _Refuse(NodeError("value_not_valid", "LoraLoader on an SDXL refiner checkpoint has no translation", "", "clip"))
    xl = "text_encoder_2" in up["clip"]
    n = st.add(cid, gid(cid), {"type": "LoadLoRA", "inputs": {
        "unet": {"from": up["model"]["unet"]}, "text_encoder": {"from": up["clip"]["text_encoder"]}, "path": _pval(st, cid, "lora_name"),
        "unet_strength": _pval(st, cid, "strength_model"), "text_encoder_strength": _pval(st, cid, "strength_clip"),
        **({"text_encoder_2": {"from": up["clip"]["text_encoder_2"]}} if xl else {})}})
    return ({**up["model"], "unet": f"{n}.unet"},
            {**up["clip"], "text_encoder": f"{n}.text_encoder", **({"text_encoder_2": f"{n}.text_encoder_2"} if xl else {})})


def _upscale_method(st: _State, cid: str) -> str:
    m = _val(st, cid, "upscale_method")
    if m not in UPSCALE_METHODS:
        raise _Refuse(NodeError("value_not_valid", f"upscale_method {m} has no translation", f"translatable: {', '.join(UPSCALE_METHODS)}",
                                "upscale_method"))
    return m


def _size(st: _State, cid: str) -> tuple[int, int]:
    if _val(st, cid, "crop") != "disabled":
        raise _Refuse(NodeError("value_not_valid", "crop center has no translation", "use crop disabled", "crop"))
    w, h = _val(st, cid, "width"), _val(st, cid, "height")
    if not w or not h:
        raise _Refuse(NodeError("value_not_valid", "a width or height of 0 (keep the aspect) has no translation", f"width {w}, height {h}",
                                "width" if not w else "height"))
    return w, h


def _t_upscale_loader(st: _State, cid: str, up: dict) -> tuple:
    name = st.param(cid, "upscaler", _val(st, cid, "model_name"), "string", "the upscaler file")
    n = st.add(cid, gid(cid), {"type": "LoadUpscaler", "inputs": {"path": name}})
    return ({"upscaler": f"{n}.upscaler"},)


def _t_upscale_with_model(st: _State, cid: str, up: dict) -> tuple:
    # ComfyUI runs the upscaler in 512-pixel tiles with 32 pixels of overlap
    n = st.add(cid, gid(cid), {"type": "Upscale", "inputs": {"upscaler": {"from": up["upscale_model"]["upscaler"]}, "image": {"from": up["image"]["image"]},
                                                             "tile": 512, "overlap": 32}})
    return ({"image": f"{n}.image"},)


def _t_image_scale(st: _State, cid: str, up: dict) -> tuple:
    w, h = _size(st, cid)
    n = st.add(cid, gid(cid), {"type": "ResizeImage", "inputs": {"image": {"from": up["image"]["image"]}, "mode": _upscale_method(st, cid),
                                                                 "width": w, "height": h}})
    return ({"image": f"{n}.image"},)


def _t_image_scale_by(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "ResizeImage", "inputs": {"image": {"from": up["image"]["image"]}, "mode": _upscale_method(st, cid),
                                                                 "scale": _val(st, cid, "scale_by")}})
    return ({"image": f"{n}.image"},)


def _t_latent_upscale(st: _State, cid: str, up: dict) -> tuple:
    w, h = _size(st, cid)
    n = st.add(cid, gid(cid), {"type": "UpscaleLatents", "inputs": {"latents": {"from": up["samples"]["latents"]}, "mode": _upscale_method(st, cid),
                                                                    "width": w, "height": h}})
    return ({"latents": f"{n}.latents"},)


def _t_latent_upscale_by(st: _State, cid: str, up: dict) -> tuple:
    n = st.add(cid, gid(cid), {"type": "UpscaleLatents", "inputs": {"latents": {"from": up["samples"]["latents"]}, "mode": _upscale_method(st, cid),
                                                                    "scale": _val(st, cid, "scale_by")}})
    return ({"latents": f"{n}.latents"},)


TRANSLATORS: dict[str, Callable[[_State, str, dict], tuple]] = {
    "CheckpointLoaderSimple": _t_checkpoint, "CLIPTextEncode": _t_text_encode, "CLIPSetLastLayer": _t_set_last_layer,
    "EmptyLatentImage": _t_empty_latent, "KSampler": _t_ksampler, "KSamplerAdvanced": _t_ksampler_advanced,
    "VAEDecode": _t_vae_decode, "VAEEncode": _t_vae_encode, "LoadImage": _t_load_image, "SaveImage": _t_save, "PreviewImage": _t_save,
    "LoraLoader": _t_lora, "LatentUpscale": _t_latent_upscale, "LatentUpscaleBy": _t_latent_upscale_by,
    "ConditioningCombine": _t_combine, "ConditioningSetTimestepRange": _t_timestep_range,
    "UpscaleModelLoader": _t_upscale_loader, "ImageUpscaleWithModel": _t_upscale_with_model, "ImageScale": _t_image_scale,
    "ImageScaleBy": _t_image_scale_by,
    "LoadImageMask": _t_load_image_mask, "SetLatentNoiseMask": _t_set_noise_mask, "VAEEncodeForInpaint": _t_encode_for_inpaint,
    "InpaintModelConditioning": _t_inpaint_conditioning, "ControlNetLoader": _t_controlnet_loader, "DiffControlNetLoader": _t_diff_controlnet_loader, "ControlNetApply": _t_controlnet_apply,
    "ControlNetApplyAdvanced": _t_controlnet_apply_advanced, "Canny": _t_canny, "CLIPTextEncodeSDXL": _t_text_encode_sdxl, "CLIPTextEncodeSDXLRefiner": _t_text_encode_refiner,
    "EmptySD3LatentImage": _t_empty_sd3_latent, "ModelSamplingSD3": _t_model_sampling_sd3,
    "UNETLoader": _t_unet_loader, "DualCLIPLoader": _t_dual_clip, "TripleCLIPLoader": _t_triple_clip, "VAELoader": _t_vae_loader,
    "CLIPTextEncodeFlux": _t_text_encode_flux, "CLIPTextEncodeSD3": _t_text_encode_sd3, "FluxGuidance": _t_flux_guidance, "ModelSamplingFlux": _t_model_sampling_flux,
}


class _Refuse(Exception):
    def __init__(self, error: NodeError) -> None:
        self.error = error


def _check_node(st: _State, cid: str) -> None:
    """Each input present, of its type; links to existing nodes and outputs of the right type."""
    body = st.prompt[cid]
    ct = body["class_type"]
    spec, _ = CLASS_TYPES[ct]
    inputs = body["inputs"]
    for name in inputs:
        if name not in spec:
            st.fail(cid, NodeError("unknown_input", f"input {name} is not an input of {ct}", f"inputs: {', '.join(spec)}", name))
    for name, kind in spec.items():
        if name not in inputs:
            if name not in DEFAULTS.get(ct, {}):
                st.fail(cid, NodeError("required_input_missing", "Required input is missing", name, name))
            continue
        v = inputs[name]
        if isinstance(kind, str) and kind in LINK_TYPES:
            if not is_link(v):
                st.fail(cid, NodeError("bad_linked_input", f"input {name} takes a link [node_id, output_index] to a {kind}", repr(v), name))
                continue
            src = str(v[0])
            if src not in st.prompt:
                st.fail(cid, NodeError("bad_linked_input", f"input {name} links to node {src}, which the prompt does not have", repr(v), name))
                continue
            src_ct = st.prompt[src].get("class_type")
            outs = CLASS_TYPES.get(src_ct, (None, None))[1]
            if outs is None:
                continue  # the source's own error says it has no translation
            if not 0 <= v[1] < len(outs):
                st.fail(cid, NodeError("bad_linked_input", f"input {name} links to output {v[1]} of node {src} ({src_ct}), which has "
                                                           f"{len(outs)} output{'s' if len(outs) != 1 else ''}", repr(v), name))
            elif outs[v[1]] != kind:
                st.fail(cid, NodeError("return_type_mismatch", f"input {name} takes a {kind}, node {src} output {v[1]} is a {outs[v[1]]}",
                                       f"{src_ct} output {v[1]}", name))
        elif is_link(v):
            st.fail(cid, NodeError("bad_linked_input", f"input {name} is a value ({kind if isinstance(kind, str) else 'one of a list'}), not a link "
                                                       "(links to value nodes such as primitives have no translation)", repr(v), name))
        elif kind == INT and not (isinstance(v, int) and not isinstance(v, bool)):
            st.fail(cid, NodeError("invalid_input_type", f"input {name} is an integer", repr(v), name))
        elif kind == FLOAT and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            st.fail(cid, NodeError("invalid_input_type", f"input {name} is a number", repr(v), name))
        elif kind == BOOL and not isinstance(v, bool):
            st.fail(cid, NodeError("invalid_input_type", f"input {name} is a boolean", repr(v), name))
        elif kind == STR and not isinstance(v, str):
            st.fail(cid, NodeError("invalid_input_type", f"input {name} is a string", repr(v), name))
        elif isinstance(kind, tuple) and v not in kind:
            st.fail(cid, NodeError("value_not_in_list", f"{name}: '{v}' not in list", f"allowed: {', '.join(kind)}", name))


def _translate_node(st: _State, cid: str) -> tuple | None:
    if cid in st.done:
        return st.done[cid]
    if cid in st.visiting:
        st.fail(cid, NodeError("dependency_cycle", "the prompt has a cycle through this node", ""))
        return None
    if cid in st.errors:
        return None
    st.visiting.add(cid)
    try:
        ct = st.prompt[cid]["class_type"]
        spec, _ = CLASS_TYPES[ct]
        up: dict[str, Any] = {}
        failed = False
        for name, kind in spec.items():  # every input, past a failed one, so each untranslatable node upstream is named
            v = st.prompt[cid]["inputs"].get(name)
            if isinstance(kind, str) and kind in LINK_TYPES and is_link(v):
                outs = _translate_node(st, str(v[0]))
                if outs is None:
                    failed = True
                    continue
                if outs[v[1]] is None:
                    src = st.prompt[str(v[0])]["class_type"]
                    st.fail(cid, NodeError("bad_linked_input", f"input {name} reads {src}'s {CLASS_TYPES[src][1][v[1]]}, which has no translation",
                                           repr(v), name))
                    failed = True
                    continue
                up[name] = outs[v[1]]
        if failed:
            return None
        try:
            outs = TRANSLATORS[ct](st, cid, up)
        except _Refuse as r:
            st.fail(cid, r.error)
            return None
        st.done[cid] = outs
        return outs
    finally:
        st.visiting.discard(cid)


#: class types that hand a conditioning on: (output index → the input it comes from)
PASS_CONDITIONING = {"ControlNetApply": {0: "conditioning"}, "ControlNetApplyAdvanced": {0: "positive", 1: "negative"},
                     "InpaintModelConditioning": {0: "positive", 1: "negative"}}


def _text_source(prompt: dict, link: Any, depth: int = 0) -> str | None:
    """The CLIPTextEncode a sampler's conditioning comes from, through ControlNet and inpainting
    nodes (which hand it on): that encoder's text is the prompt or the negative prompt."""
    if not is_link(link) or str(link[0]) not in prompt or depth > 64 or not isinstance(prompt[str(link[0])], dict):
        return None
    src = prompt[str(link[0])]
    if src.get("class_type") == "CLIPTextEncode":
        return str(link[0])
    via = PASS_CONDITIONING.get(src.get("class_type"), {}).get(link[1])
    return _text_source(prompt, src.get("inputs", {}).get(via), depth + 1) if via else None


#: the text params of the encoders with texts of their own (named for the input, numbered where several nodes have one)
TEXT_PARAMS = {"CLIPTextEncodeSDXL": ("text_l", "text_g"), "CLIPTextEncodeFlux": ("clip_l", "t5xxl"), "CLIPTextEncodeSDXLRefiner": ("refiner_text",)}


def _count_params(st: _State) -> None:
    """How many nodes give each param name, and which prompts are positive or negative (the
    names must not depend on the order the nodes are translated in)."""
    for cid, body in st.prompt.items():
        ct = body["class_type"]
        for _, base, _ in PARAMS.get(ct, ()):
            st.param_uses[base] = st.param_uses.get(base, 0) + 1
        if ct in ("KSampler", "KSamplerAdvanced"):
            for role, key in (("prompt", "positive"), ("negative_prompt", "negative")):
                src = _text_source(st.prompt, body["inputs"].get(key))
                if src is not None:
                    st.roles.setdefault(src, role)
        if ct in ("LoadImage", "LoadImageMask"):
            st.param_uses["image"] = st.param_uses.get("image", 0) + 1
        if ct == "UpscaleModelLoader":
            st.param_uses["upscaler"] = st.param_uses.get("upscaler", 0) + 1
        for base in TEXT_PARAMS.get(ct, ()):  # two CLIPTextEncodeSDXL (positive, negative): text_g_6, text_g_7, not one text_g
            st.param_uses[base] = st.param_uses.get(base, 0) + 1
    for cid, body in st.prompt.items():
        if body["class_type"] == "CLIPTextEncode":
            role = st.roles.setdefault(cid, "text")
            st.param_uses[role] = st.param_uses.get(role, 0) + 1


def _id_key(cid: str) -> tuple:
    return (0, int(cid), "") if cid.isdigit() else (1, 0, cid)


def _sorted_ids(prompt: dict) -> list[str]:
    return sorted(prompt, key=_id_key)


def translate(prompt: dict, input_dir: str | None = None,
              family_of: Callable[[Any], str | None] | None = None) -> tuple[dict, dict, dict[str, list[str]]]:
    """A ComfyUI API-format prompt → ``(workflow, params, id_map)``: the graphflow workflow (a
    format-1 document, its ``params`` holding the prompt's values as defaults), those values as
    a dict, and for each ComfyUI node id the graphflow node ids made from it (empty for a node
    folded into others, e.g. CLIPSetLastLayer into its encoders' clip_skip). Deterministic: the
    same prompt gives the same workflow. Raises TranslationError (ComfyUI's error shape) naming
    every node that cannot be translated. ``input_dir``: the folder LoadImage's names are in, as
    ComfyUI's input folder (the server's ComfyUI routes give their uploads folder); without it a
    name is a path as given. ``family_of``: a checkpoint name's family (default:
    ``checkpoint_family``, which reads the file's header, as ComfyUI tells a model from its file;
    a name not found is taken for the family the prompt's class types imply, ``prompt_family``)."""
    if not isinstance(prompt, dict) or not prompt:
        raise TranslationError({"type": "invalid_prompt", "message": "Cannot execute because the prompt is not a non-empty JSON object",
                                "details": "", "extra_info": {}}, {})
    prompt = {str(k): v for k, v in prompt.items()}
    errors: dict[str, list[NodeError]] = {}
    for cid in _sorted_ids(prompt):
        body = prompt[cid]
        if not isinstance(body, dict) or not isinstance(body.get("class_type"), str) or not isinstance(body.get("inputs", {}), dict):
            errors.setdefault(cid, []).append(NodeError("invalid_prompt", "a node is {\"class_type\": str, \"inputs\": {...}}", repr(body)[:200]))
        elif body["class_type"] not in CLASS_TYPES:
            errors.setdefault(cid, []).append(NodeError("missing_node_type", f"Node '{body['class_type']}' has no graphflow translation",
                                                        f"translatable: {', '.join(sorted(CLASS_TYPES))}"))
    st = _State({cid: ({**b, "inputs": b.get("inputs", {})} if isinstance(b, dict) else b) for cid, b in prompt.items()},
                input_dir=input_dir, family_of=family_of)
    st.errors = errors
    if not errors:
        for cid in _sorted_ids(prompt):
            _check_node(st, cid)
    outputs = [cid for cid in _sorted_ids(prompt) if isinstance(prompt[cid], dict) and prompt[cid].get("class_type") in OUTPUT_NODES]
    if not st.errors:
        _count_params(st)
        for cid in outputs:
            _translate_node(st, cid)
    if st.errors:
        node_errors = {cid: {"errors": [e.to_dict() for e in errs], "dependent_outputs": outputs,
                             "class_type": prompt[cid].get("class_type") if isinstance(prompt[cid], dict) else None}
                       for cid, errs in sorted(st.errors.items(), key=lambda kv: _id_key(kv[0]))}
        raise TranslationError({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "",
                                "extra_info": {}}, node_errors)
    if not outputs:
        raise TranslationError({"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                "details": "no SaveImage or PreviewImage node", "extra_info": {}}, {})
    params = {k: v["default"] for k, v in st.params.items() if "default" in v}  # config has none
    doc = {
        "format": 1,
        "description": "Translated from a ComfyUI API-format prompt; node n<N> (and n<N>_...) come from ComfyUI node N. "
                       + "; ".join(f"{cid} {prompt[cid]['class_type']}" + (" (folded into its users)" if not st.id_map.get(cid) else "")
                                   for cid in _sorted_ids(prompt) if cid in st.id_map),
        "params": st.params,
        "nodes": st.nodes,
        "outputs": st.outputs,
    }
    return doc, params, {cid: st.id_map[cid] for cid in _sorted_ids(prompt) if cid in st.id_map}

