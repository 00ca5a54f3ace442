"""The model families graphflow's nodes can drive, read from a diffusers folder's
``model_index.json``: which pipeline class names each family, and which components (with the
classes allowed for each) its folder holds. One table, used by LoadModel to refuse anything else
by name and by ``graphflow validate`` to say what a folder is. Free of torch: validation reads it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    pipelines: tuple[str, ...]
    #: component -> class names allowed for it (None: any, the Scheduler node picks the class)
    components: dict
    note: str
    #: model_index.json settings that tell this family from another of the same pipeline class
    #: (an SDXL refiner is a StableDiffusionXLImg2ImgPipeline, as an SDXL base folder may be)
    settings: dict = field(default_factory=dict)
    #: components a folder may leave out (null in model_index.json): SD3 runs without its T5
    #: encoder, as StableDiffusion3Pipeline does with ``text_encoder_3=None``
    optional: tuple[str, ...] = ()


SCHEDULER_ANY = None
FAMILIES = (
    Family(
        "sd", ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
        {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "text_encoder": ("CLIPTextModel",),
         "unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",), "scheduler": SCHEDULER_ANY},
        "Stable Diffusion 1.x and 2.x (epsilon or v-prediction; 4-channel or 9-channel inpainting UNets)",
    ),
    Family(
        "sdxl", ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
        {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
         "text_encoder": ("CLIPTextModel",), "text_encoder_2": ("CLIPTextModelWithProjection",),
         "unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",), "scheduler": SCHEDULER_ANY},
        "Stable Diffusion XL base: two text encoders, pooled embedding and size conditions (4-channel or 9-channel inpainting UNets)",
    ),
    Family(
        "sdxl-refiner", ("StableDiffusionXLImg2ImgPipeline",),
        {"tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"), "text_encoder_2": ("CLIPTextModelWithProjection",),
         "unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",), "scheduler": SCHEDULER_ANY},
        "Stable Diffusion XL refiner: the second text encoder only, aesthetic-score conditions",
        {"requires_aesthetics_score": True},
    ),
    Family(
        "sd3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
        {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
         "tokenizer_3": ("T5TokenizerFast", "T5Tokenizer"), "text_encoder": ("CLIPTextModelWithProjection",),
         "text_encoder_2": ("CLIPTextModelWithProjection",), "text_encoder_3": ("T5EncoderModel",),
         "transformer": ("SD3Transformer2DModel",), "vae": ("AutoencoderKL",), "scheduler": SCHEDULER_ANY},
        "Stable Diffusion 3 and 3.5 (MMDiT, flow matching): two CLIP encoders and an optional T5",
        optional=("tokenizer_3", "text_encoder_3"),
    ),
    Family(
        "flux", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
        {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "tokenizer_2": ("T5TokenizerFast", "T5Tokenizer"),
         "text_encoder": ("CLIPTextModel",), "text_encoder_2": ("T5EncoderModel",),
         "transformer": ("FluxTransformer2DModel",), "vae": ("AutoencoderKL",), "scheduler": SCHEDULER_ANY},
        "FLUX.1 dev and schnell (flow matching, packed latents): CLIP pooled + T5 sequence, dev's guidance embedding",
    ),
    Family(
        "pixel", ("DDPMPipeline", "DDIMPipeline"),
        {"unet": ("UNet2DModel",), "scheduler": SCHEDULER_ANY},
        "pixel-space UNet2DModel, unconditional or class-conditioned (the book's DDPMs)",
    ),
)
BY_NAME = {f.name: f for f in FAMILIES}
#: the families with SDXL's VAE (it overflows float16: pictures go through a float32 copy, stages/vae.py)
SDXL_FAMILIES = ("sdxl", "sdxl-refiner")
#: the flow-matching families: a transformer predicts a velocity, FlowMatch schedulers step it
FLOW_FAMILIES = ("sd3", "flux")


def family_for_index(data: dict) -> Family | None:
    """The family a model_index.json names: its pipeline class, and among the families sharing a
    class, the one whose settings the index carries (most settings first: a folder that asks for
    aesthetic scores is a refiner)."""
    candidates = [f for f in FAMILIES if data.get("_class_name") in f.pipelines]
    for f in sorted(candidates, key=lambda f: -len(f.settings)):
        if all(data.get(k) == v for k, v in f.settings.items()):
            return f
    return None


class ModelError(Exception):
    pass


def supported_families() -> str:
    def settings(f: Family) -> str:
        return "".join(f" with {k}: {json.dumps(v)}" for k, v in f.settings.items())

    return "; ".join(f"{f.name} ({f.note}: {', '.join(f.pipelines)}{settings(f)})" for f in FAMILIES)


def read_index(path: Path) -> dict:
    index = path / "model_index.json"
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist (give a local diffusers folder, or the name of a shipped model)")
    if not index.is_file():
        raise ModelError(f"{path} is not a diffusers model folder: it has no model_index.json")
    try:
        data = json.loads(index.read_text())
    except ValueError as e:
        raise ModelError(f"{index} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{index} is not a diffusers model index (a JSON object)")
    return data


def pipeline_settings(path: Path) -> dict:
    """model_index.json's settings, without its component entries (force_zeros_for_empty_prompt, id2label, ...)."""
    return {k: v for k, v in read_index(path).items() if not isinstance(v, list)}


def pipeline_family(path: Path) -> Family:
    """The family a folder's model_index.json names, without asking for the components' folders
    (a folder of configs, as single-file checkpoints are built with, has no weights)."""
    data = read_index(path)
    family = family_for_index(data)
    if family is None:
        name = data.get("_class_name")
        raise ModelError(f"{path} is a {name or 'model without a _class_name'}: that model family is not supported; "
                         f"supported families: {supported_families()}")
    return family


def family_of(path: Path) -> Family:
    """The family of a model folder, its components checked before anything loads: a pipeline
    graphflow has no nodes for is refused here, by name, with the supported list, instead of a
    shape error deep inside a UNet."""
    family = pipeline_family(path)
    data = read_index(path)
    pipeline = data.get("_class_name")
    for comp, classes in family.components.items():
        entry = data.get(comp)
        if comp in family.optional and not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            continue  # left out, as the family allows
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise ModelError(f"{path / 'model_index.json'} has no '{comp}' component; a {family.name} model "
                             f"({pipeline}) needs {', '.join(family.components)}")
        if classes and entry[1] not in classes:
            raise ModelError(f"component '{comp}' of {path} is a {entry[1]}; expected {' or '.join(classes)}")
        if not (path / comp).is_dir():
            raise ModelError(f"{path} lists '{comp}' but has no {comp}/ folder")
    return family


def component_class(path: Path, comp: str) -> str:
    return read_index(path)[comp][1]


def absent_components(path: Path, family: Family) -> tuple[str, ...]:
    """The optional components a folder of ``family`` leaves out (null in its model_index.json)."""
    data = read_index(path)
    return tuple(c for c in family.optional if not (isinstance(data.get(c), list) and len(data[c]) == 2 and data[c][1]))
