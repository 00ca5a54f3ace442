"""Stable Diffusion model folders (diffusers format, local disk only) as model references.

``LoadModel`` reads nothing but the folder's ``model_index.json`` and hands out one ``ModelRef``
per component: a small frozen value naming the weights by content. The weights load when a node
first asks the executor's model manager for them (``ctx.models.get(ref)``), once per executor,
shared by every node and run that uses them. A workflow whose results are all cached, or that only
passes a model on, loads no weights at all; and a reference can be fingerprinted, pickled and
patched (``with_patch``) without touching a tensor.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from graphflow_nodes.kinds import VAE, SchedulerConfig, TextEncoder, Tokenizer, Transformer, UNet
from graphflow_nodes.loading.descriptions import describe_config, describe_model_folder
from graphflow_nodes.loading.families import ModelError, absent_components, family_of, pipeline_settings
from graphflow_nodes.loading.files import resolve_config_path, resolve_model_path
from graphflow_nodes.loading.model_refs import COMPONENT_KINDS, AbsentComponent, MissingComponent, ModelRef
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id

DEFAULT_MODEL = "tiny-sd"


class LoadModel(Node, name="LoadModel", category="model", disk_cache=False):
    """Loads a model from local disk: a diffusers folder of Stable Diffusion 1.x/2.x, SDXL (base
    or refiner), SD3/SD3.5, FLUX.1 or a pixel-space DDPM (the ``family`` output says which; any
    other pipeline is refused by name), or
    a single-file ``.safetensors`` checkpoint in the original layout (SD 1.x/2.x, SDXL, SD3/SD3.5
    all-in-one, or a FLUX.1 transformer with ``config`` naming a Flux folder for the rest). ``tiny-sd``, the default,
    is the small model shipped inside graphflow; a bare name is looked up in the models folders'
    ``checkpoints/``. Only the index (or the file's header) is read here: each component's weights
    load when a node first uses them, once per executor."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_model_path, describe=describe_model_folder, folder=True)] = Field(
            DEFAULT_MODEL, description="a diffusers model folder or a .safetensors checkpoint: a name in the models folders' checkpoints/, or a path"
        )
        config: Annotated[str, FileInput(resolve=resolve_config_path, describe=describe_config, folder=True)] = Field(
            "", description="single-file checkpoints only: the configs to build it with, a shipped name (sd15, sd2-v, sd2-base, sdxl, "
            "sd3.5-large, sd3.5-medium) or a diffusers folder of its architecture (a FLUX.1 transformer file: the Flux folder its VAE "
            "and encoders come from); empty: chosen from the file's keys and shapes (SD 2.x: sd2-v)"
        )

    class Out(Outputs):
        tokenizer: Tokenizer = Field(description="the CLIP tokenizer")
        text_encoder: TextEncoder = Field(description="the CLIP text encoder")
        unet: UNet = Field(description="the denoising UNet")
        vae: VAE = Field(description="the autoencoder")
        scheduler_config: SchedulerConfig = Field(description="the model's scheduler configuration")
        tokenizer_2: Tokenizer = Field(description="SDXL, SD3: the second CLIP tokenizer; Flux: the T5 tokenizer")
        text_encoder_2: TextEncoder = Field(description="SDXL, SD3: the second CLIP text encoder (with projection); Flux: the T5 encoder")
        tokenizer_3: Tokenizer = Field(description="SD3: the T5 tokenizer")
        text_encoder_3: TextEncoder = Field(description="SD3: the T5 encoder (absent from a folder saved without it: EncodeT5 gives zeros)")
        transformer: Transformer = Field(description="SD3, Flux: the denoising transformer (in place of a UNet)")
        family: str = Field(description="sd, sdxl, sdxl-refiner, sd3, flux or pixel")
        pipeline_config: dict = Field(description="model_index.json's settings (force_zeros_for_empty_prompt, id2label, ...)")

    def run(self, i: In, ctx: Context) -> dict:
        path = checked_input(ctx, resolve_model_path(i.path), folder=True)
        if i.config.strip():
            checked_input(ctx, resolve_config_path(i.config), folder=True)
        if path.is_file():  # a single-file checkpoint (original SD layout)
            from graphflow_nodes.loading.checkpoint import checkpoint_refs

            out = checkpoint_refs(path, i.config.strip())
            for c in COMPONENT_KINDS:
                out.setdefault(c, MissingComponent(c, out["family"], str(path.resolve())))
            return out
        if i.config.strip():
            raise ModelError(f"config applies to single-file checkpoints; {path} is a diffusers folder, which carries its own configs")
        family = family_of(path)
        where = str(path.resolve())
        absent = absent_components(path, family)
        out: dict[str, Any] = {
            c: AbsentComponent(c, family.name, where) if c in absent
            else ModelRef(content_id(path / c, ctx.files.max_bytes), where, c, family.name) if c in family.components
            else MissingComponent(c, family.name, where)
            for c in COMPONENT_KINDS
        }
        out["scheduler_config"] = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        out["family"] = family.name
        out["pipeline_config"] = pipeline_settings(path)
        return out
