"""SDXL's UNet call in the loop: the shared scheduler, guidance and VAE stages around it stay the
SD 1.x ones, only the call takes the added conditions."""

from __future__ import annotations

from typing import Any

from graphflow_nodes.kinds import (
    AdapterResiduals,
    ControlResiduals,
    Embeddings,
    ImagePrompts,
    ModelInput,
    NoisePred,
    Pooled,
    TimeIds,
    Timestep,
    UNet,
)
from graphflow_nodes.stages.denoise import control_kwargs, controlnet_kwargs, unet_call
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


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
        adapter_residuals: AdapterResiduals | None = Field(None, description="AdapterResiduals: T2I-Adapter feature maps added in the down blocks")
        image_prompts: ImagePrompts | None = Field(None, description="EncodeImagePrompt: image prompts for the UNet's IP-Adapters")
        control: ControlResiduals | None = Field(None, description="ApplyControlNet's residuals, added to the UNet's down and middle blocks")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the model output, same batch as model_input")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.batch_calls import per_sample, timestep_key
        from graphflow_nodes.runtime import placement, to_batch

        unet = ctx.models.get(i.unet)
        device, dtype = placement(unet)
        x = i.model_input.to(dtype=dtype)

        def batch(t, what):
            return to_batch(t.to(device=device, dtype=dtype), x.shape[0], what)

        check_added_conditions(unet, i.pooled, i.time_ids)
        cond = {"text_embeds": batch(i.pooled, "pooled"), "time_ids": batch(i.time_ids, "time_ids")}
        extra = control_kwargs(unet, i.adapter_residuals, i.image_prompts, x.shape[0], device, dtype) | controlnet_kwargs(i.control)
        extra["added_cond_kwargs"] = cond | extra.get("added_cond_kwargs", {})
        # the added conditions are per-sample rows too: a sweep's items share one call per step
        return {"noise_pred": per_sample(ctx, ("unet", id(unet), timestep_key(i.timestep)), (x, batch(i.embeddings, "embeddings"), extra),
                                         lambda a: unet_call(unet, i.timestep, i.adapter_residuals, *a))}


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
