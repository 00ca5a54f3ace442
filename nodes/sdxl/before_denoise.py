"""SDXL's added conditions, prepared before the loop: the picture's size and crop (a base model)
or an aesthetic score (a refiner), and the guidance batch that stacks both sides of each for one
UNet call. SDXL's UNet was trained told these, so they are fixed once per picture, before the
loop, as diffusers' SDXL pipelines prepare them."""

from __future__ import annotations

from graphflow_nodes.kinds import VAE, GuidanceBatch, Latents, Pooled, TextEmbeddings, TimeIds, UNet
from graphflow_nodes.stages.vae import vae_scale_factor
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs

Size = int | None


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

        from graphflow_nodes.stages.encoders import common_length

        neg_ids = i.time_ids if i.uncond_time_ids is None else i.uncond_time_ids
        return {
            "embeddings": torch.cat(common_length(i.uncond, i.cond)),
            "pooled": torch.cat([i.uncond_pooled, i.cond_pooled]),
            "time_ids": torch.cat([neg_ids, i.time_ids]),
        }
