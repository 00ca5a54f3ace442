"""Stable Diffusion XL, taken apart as the SD 1.x nodes take SD 1.x apart: each text encoder's
chosen hidden state and pooled embedding, the two encoders' states joined, the unconditional side
(a negative prompt, or zeros as ``force_zeros_for_empty_prompt`` asks), the size conditions
(original size, crop, target size) or a refiner's aesthetic-score conditions, and a UNet call that
takes those added conditions. The scheduler, noise, loop, VAE and guidance nodes are the SD 1.x
ones: SDXL changes only the conditioning. A refiner is the same graph with the second encoder's
states alone and ``AestheticConditions`` in place of ``SizeConditions``."""

from __future__ import annotations

from typing import Any, Literal

from graphflow_nodes.kinds import (
    VAE,
    Embeddings,
    Latents,
    GuidanceBatch,
    ModelInput,
    NoisePred,
    Pooled,
    TextEmbeddings,
    TextEncoder,
    TimeIds,
    Timestep,
    Tokenizer,
    UNet,
)
from graphflow_nodes.latents import vae_scale_factor
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs

Size = int | None


class EncodeHidden(Node, name="EncodeHidden", category="text", uses=("models",)):
    """Text → one hidden state of a CLIP text encoder and its pooled embedding. ``last`` is the
    final hidden state after the final layer norm (SD 1.x); ``penultimate`` is the state before
    the last layer, without that norm (SDXL, and "clip skip"); ``skip`` counts more layers back.
    The pooled embedding is the projected one when the encoder has a projection (SDXL's second
    encoder), else the end token's state."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel (tokenizer or tokenizer_2)")
        text_encoder: TextEncoder = Field(description="the matching text encoder")
        text: str = Field("", description="the prompt")
        fallback: str = Field("", description="encoded when text is empty (SDXL's prompt_2: empty means the same as prompt)")
        layer: Literal["last", "penultimate"] = Field("penultimate", description="which hidden state")
        skip: int = Field(0, ge=0, le=48, description="with 'penultimate': this many more layers back (diffusers' clip_skip)")

    class Out(Outputs):
        hidden_states: TextEmbeddings = Field(description="(1, 77, hidden)")
        pooled: Pooled = Field(description="(1, projection or hidden): the pooled/projected embedding")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.text import table_device, tokenize

        te = ctx.models.get(i.text_encoder)
        ids, _ = tokenize(ctx.models.get(i.tokenizer), i.text or i.fallback)
        with torch.no_grad():
            out = te(ids.to(table_device(te)), output_hidden_states=True)
        hidden = out[0] if i.layer == "last" else out.hidden_states[-(i.skip + 2)]
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return {"hidden_states": hidden, "pooled": pooled}


class ConcatEmbeddings(Node, name="ConcatEmbeddings", category="text"):
    """Two encoders' hidden states side by side along the feature axis: SDXL's UNet attends to
    the first encoder's 768 features followed by the second's 1280."""

    class In(Inputs):
        a: Embeddings = Field(description="first encoder's states, (batch, 77, h1)")
        b: Embeddings = Field(description="second encoder's states, (batch, 77, h2)")

    class Out(Outputs):
        text_embeddings: TextEmbeddings = Field(description="(batch, 77, h1 + h2)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        return {"text_embeddings": torch.cat([i.a, i.b.to(i.a)], dim=-1)}


class UncondXL(Node, name="UncondXL", category="text"):
    """The unconditional side of SDXL's guidance batch: the negative prompt's embeddings, or
    zeros shaped like them when no negative prompt is given and the model asks for zeros
    (``force_zeros_for_empty_prompt`` in model_index.json, as StableDiffusionXLPipeline does).
    A second negative prompt alone counts as a negative prompt: zeros would throw it away."""

    class In(Inputs):
        hidden_states: TextEmbeddings = Field(description="the negative prompt's concatenated hidden states")
        pooled: Pooled = Field(description="the negative prompt's pooled embedding")
        negative_prompt: str = Field("", description="the negative prompt the embeddings came from; empty means none")
        negative_prompt_2: str = Field("", description="the second encoder's own negative prompt, if any")
        zeros: bool | None = Field(None, description="use zeros for an empty negative prompt; default: the model's force_zeros_for_empty_prompt")
        pipeline_config: dict[str, Any] = Field(default_factory=dict, description="LoadModel.pipeline_config (gives the model's default)")

    class Out(Outputs):
        hidden_states: TextEmbeddings = Field(description="unconditional hidden states")
        pooled: Pooled = Field(description="unconditional pooled embedding")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        zeros = i.zeros if i.zeros is not None else bool(i.pipeline_config.get("force_zeros_for_empty_prompt", False))
        if zeros and not (i.negative_prompt or i.negative_prompt_2):
            return {"hidden_states": torch.zeros_like(i.hidden_states), "pooled": torch.zeros_like(i.pooled)}
        return {"hidden_states": i.hidden_states, "pooled": i.pooled}


class PictureInputs(Inputs):
    """The picture's size and crop, which SDXL's added conditions (base and refiner) describe."""

    unet: UNet = Field(description="gives the default size")
    vae: VAE = Field(description="gives the latent factor")
    latents: Latents | None = Field(None, description="the starting latents: their size × the VAE's factor is the default size")
    width: Size = Field(None, ge=8, le=8192, description="the picture's width; default: the model's")
    height: Size = Field(None, ge=8, le=8192, description="the picture's height; default: the model's")
    original_width: Size = Field(None, ge=1, le=16384, description="default: width")
    original_height: Size = Field(None, ge=1, le=16384, description="default: height")
    crop_top: int = Field(0, ge=0, le=16384, description="crop coordinate, top")
    crop_left: int = Field(0, ge=0, le=16384, description="crop coordinate, left")


class SizeConditions(Node, name="SizeConditions", category="sampling", uses=("models",)):
    """SDXL's added time conditions: original size, crop top-left and target size, (height,
    width) pairs in pixels, as one (1, 6) tensor. Sizes default to the picture's: width and
    height, else the latents' size × the VAE's factor, else the UNet's sample size × that factor
    (what StableDiffusionXLPipeline and its img2img pipeline use)."""

    class In(PictureInputs):
        target_width: Size = Field(None, ge=1, le=16384, description="default: width")
        target_height: Size = Field(None, ge=1, le=16384, description="default: height")

    class Out(Outputs):
        time_ids: TimeIds = Field(description="(1, 6): original (h, w), crop (top, left), target (h, w)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        h, w = picture_size(ctx, i)
        ids = [i.original_height or h, i.original_width or w, i.crop_top, i.crop_left, i.target_height or h, i.target_width or w]
        return {"time_ids": torch.tensor([ids], dtype=torch.float32)}


def picture_size(ctx: Context, i: PictureInputs) -> tuple[int, int]:
    """(height, width) in pixels: the inputs' own, else the latents' size × the VAE's factor, else
    the UNet's sample size × that factor."""
    unet = ctx.models.get(i.unet)
    f = vae_scale_factor(ctx.models.get(i.vae))
    lh, lw = (i.latents.shape[-2], i.latents.shape[-1]) if i.latents is not None else (unet.config.sample_size,) * 2
    return i.height or lh * f, i.width or lw * f


class AestheticConditions(Node, name="AestheticConditions", category="sampling", uses=("models",)):
    """An SDXL refiner's added time conditions (``requires_aesthetics_score``): original size,
    crop top-left and an aesthetic score instead of the target size, one (1, 5) tensor for each
    side of the guidance batch. The refiner was trained on scored pictures: the prompt's side asks
    for a high score, the unconditional side for a low one (diffusers' defaults 6.0 and 2.5), so
    guidance pushes towards the better-rated look. Sizes default as in ``SizeConditions``."""

    class In(PictureInputs):
        aesthetic_score: float = Field(6.0, ge=0, le=10, description="the score the prompt's side asks for")
        negative_aesthetic_score: float = Field(2.5, ge=0, le=10, description="the score the unconditional side asks for")
        negative_original_width: Size = Field(None, ge=1, le=16384, description="the unconditional side's; default: original_width")
        negative_original_height: Size = Field(None, ge=1, le=16384, description="the unconditional side's; default: original_height")

    class Out(Outputs):
        time_ids: TimeIds = Field(description="(1, 5): original (h, w), crop (top, left), aesthetic_score")
        uncond_time_ids: TimeIds = Field(description="(1, 5): the same with negative_aesthetic_score (CFGConditions.uncond_time_ids)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        h, w = picture_size(ctx, i)
        oh, ow = i.original_height or h, i.original_width or w
        ids = [oh, ow, i.crop_top, i.crop_left, i.aesthetic_score]
        neg = [i.negative_original_height or oh, i.negative_original_width or ow, i.crop_top, i.crop_left, i.negative_aesthetic_score]
        return {"time_ids": torch.tensor([ids], dtype=torch.float32), "uncond_time_ids": torch.tensor([neg], dtype=torch.float32)}


class CFGConditions(Node, name="CFGConditions", category="sampling"):
    """SDXL's guidance batch: unconditional then conditional hidden states, pooled embeddings and
    size conditions, each stacked for one UNet call (CFGEmbeddings does the first for SD 1.x)."""

    class In(Inputs):
        uncond: TextEmbeddings = Field(description="unconditional hidden states (UncondXL)")
        cond: TextEmbeddings = Field(description="the prompt's concatenated hidden states")
        uncond_pooled: Pooled = Field(description="unconditional pooled embedding")
        cond_pooled: Pooled = Field(description="the prompt's pooled embedding")
        time_ids: TimeIds = Field(description="size conditions of the prompt's side")
        uncond_time_ids: TimeIds | None = Field(None, description="size conditions of the unconditional side; default: the same")

    class Out(Outputs):
        embeddings: GuidanceBatch = Field(description="(2, 77, hidden)")
        pooled: Pooled = Field(description="(2, projection)")
        time_ids: TimeIds = Field(description="(2, 6), or (2, 5) for a refiner")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        neg_ids = i.time_ids if i.uncond_time_ids is None else i.uncond_time_ids
        return {
            "embeddings": torch.cat([i.uncond, i.cond]),
            "pooled": torch.cat([i.uncond_pooled, i.cond_pooled]),
            "time_ids": torch.cat([neg_ids, i.time_ids]),
        }


class PredictNoiseXL(Node, name="PredictNoiseXL", category="sampling", uses=("models",)):
    """The SDXL UNet's prediction for this timestep, with its added conditions: the pooled text
    embedding and the size conditions (``added_cond_kwargs``), both halves of a guidance batch
    in one call."""

    class In(Inputs):
        unet: UNet = Field(description="from LoadModel")
        model_input: ModelInput = Field(description="from ScaleModelInput")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="CFGConditions.embeddings (or one side's hidden states)")
        pooled: Pooled = Field(description="CFGConditions.pooled")
        time_ids: TimeIds = Field(description="CFGConditions.time_ids")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the model output, same batch as model_input")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import placement, to_batch

        unet = ctx.models.get(i.unet)
        device, dtype = placement(unet)
        x = i.model_input.to(dtype=dtype)

        def batch(t, what):
            return to_batch(t.to(device=device, dtype=dtype), x.shape[0], what)

        check_added_conditions(unet, i.pooled, i.time_ids)
        cond = {"text_embeds": batch(i.pooled, "pooled"), "time_ids": batch(i.time_ids, "time_ids")}
        with torch.no_grad():
            out = unet(x, i.timestep, encoder_hidden_states=batch(i.embeddings, "embeddings"), added_cond_kwargs=cond, return_dict=False)
        return {"noise_pred": out[0]}


def check_added_conditions(unet: Any, pooled: Any, time_ids: Any) -> None:
    """A base UNet takes six time ids, a refiner's five: the wrong conditions node is named here,
    as diffusers' ``_get_add_time_ids`` does, instead of a matrix-shape error inside the UNet."""
    per_id = getattr(unet.config, "addition_time_embed_dim", None)
    expected = getattr(unet.config, "projection_class_embeddings_input_dim", None)
    if unet.config.addition_embed_type != "text_time" or not per_id or not expected:
        return
    given = pooled.shape[-1] + time_ids.shape[-1] * per_id
    if given == expected:
        return
    wants = (expected - pooled.shape[-1]) / per_id
    hint = {5: "a refiner's: original size, crop and aesthetic score (AestheticConditions)",
            6: "a base model's: original size, crop and target size (SizeConditions)"}.get(wants)
    raise ValueError(f"this UNet's added conditions take {wants:g} time ids{f', ' + hint if hint else ''}; "
                     f"given {time_ids.shape[-1]} with a pooled embedding of {pooled.shape[-1]}")
