"""The flow families' model side of one step: the transformer's velocity for this timestep (SD3's
MMDiT on a two-half guidance batch with the pooled projection; Flux's on packed latents with text
and image position ids and, for dev, the guidance as an embedding) and Flux's true CFG, which
combines two separate calls. The step itself is the shared SchedulerStep (a FlowMatch scheduler),
whose ``pred_x0`` is ``x_t − σ·v`` for these models."""

from __future__ import annotations

from graphflow_nodes.kinds import ControlResiduals, Embeddings, ImageIds, Latents, NoisePred, Pooled, TextIds, Timestep, Transformer
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class PredictSD3(Node, name="PredictSD3", category="sampling", uses=("models",)):
    """The SD3 transformer's velocity for this timestep: the latents doubled for classifier-free
    guidance (unconditional half first, as CFGEmbeddings and CFGPooled stack the conditions), the
    joint text sequence and the pooled projection (StableDiffusion3Pipeline's call)."""

    class In(Inputs):
        transformer: Transformer = Field(description="from LoadModel")
        latents: Latents = Field(description="the loop's latents")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="CFGEmbeddings of JointEmbeddings (or one side's)")
        pooled: Pooled = Field(description="CFGPooled (or one side's pooled)")
        cfg: bool = Field(True, description="double the latents for classifier-free guidance")
        control: ControlResiduals | None = Field(None, description="ApplySD3ControlNet's residuals, added after the transformer's blocks")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the predicted velocity, same batch as the doubled latents (CFG halves it)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.batch_calls import per_sample
        from graphflow_nodes.runtime import placement, to_batch

        transformer = ctx.models.get(i.transformer)
        device, dtype = placement(transformer)
        if i.latents.ndim != 4:
            raise ValueError(f"PredictSD3 takes (batch, channels, height, width) latents, not {tuple(i.latents.shape)}")
        x = torch.cat([i.latents] * 2) if i.cfg else i.latents
        x = x.to(device=device, dtype=dtype)

        def batch(t, what):
            return to_batch(t.to(device=device, dtype=dtype), x.shape[0], what)

        t = i.timestep.expand(x.shape[0])
        args = {"hidden_states": x, "timestep": t, "encoder_hidden_states": batch(i.embeddings, "embeddings"),
                "pooled_projections": batch(i.pooled, "pooled")}
        if i.control is not None:
            args["block_controlnet_hidden_states"] = list(i.control.blocks)
        return {"noise_pred": per_sample(ctx, ("sd3", id(transformer)), args, lambda a: sd3_call(transformer, a))}


def sd3_call(transformer, args: dict):
    """The SD3 transformer's velocity for one item's or a group's (latents, timesteps, embeddings,
    pooled, ControlNet block residuals), each sample with its own guidance halves and timestep
    (the transformer embeds one per sample, so items at different noise levels share a call too).
    The MMDiT has no cross-sample operation (its attention is within a sample's own text and image
    tokens, its norms per token), so each sample's velocity is its own up to float summation order."""
    import torch

    with torch.no_grad():
        return transformer(**args, return_dict=False)[0]


class PredictFlux(Node, name="PredictFlux", category="sampling", uses=("models",)):
    """The Flux transformer's velocity for this timestep, on packed latents: the T5 sequence with
    its text ids, the CLIP pooled projection, the patches' image ids, the timestep as a fraction
    (t / 1000) and, for a guidance-distilled model (dev, ``guidance_embeds``), the guidance scale
    as an input of the model: one call, no CFG batch. A model without the embedding (schnell)
    ignores ``guidance``."""

    class In(Inputs):
        transformer: Transformer = Field(description="from LoadModel")
        latents: Latents = Field(description="the loop's packed latents (PackLatents)")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="the T5 sequence (EncodeT5)")
        pooled: Pooled = Field(description="the CLIP pooled embedding (EncodeHidden.pooled)")
        text_ids: TextIds = Field(description="TextIds")
        image_ids: ImageIds = Field(description="PackLatents.image_ids")
        guidance: float = Field(3.5, ge=0.0, le=100.0, description="dev's distilled guidance (FluxPipeline's guidance_scale)")
        control: ControlResiduals | None = Field(None, description="ApplyFluxControlNet's residuals, added after the transformer's blocks")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the predicted velocity, packed as the latents")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.batch_calls import per_sample, value_key
        from graphflow_nodes.runtime import placement, to_batch

        transformer = ctx.models.get(i.transformer)
        device, dtype = placement(transformer)
        if i.latents.ndim != 3:
            raise ValueError(f"PredictFlux takes packed (batch, patches, features) latents, not {tuple(i.latents.shape)}: put PackLatents before the loop")
        x = i.latents.to(device=device, dtype=dtype)
        n = x.shape[0]
        guidance = torch.full([1], i.guidance, device=device, dtype=torch.float32).expand(n) if transformer.config.guidance_embeds else None
        t = i.timestep.expand(n).to(x.dtype)
        pooled = to_batch(i.pooled.to(device=device, dtype=dtype), n, "pooled")
        emb = to_batch(i.embeddings.to(device=device, dtype=dtype), n, "embeddings")
        txt_ids, img_ids = i.text_ids.to(device), i.image_ids.to(device)
        # per sample: the latents, timestep, guidance (dev's embedding), pooled, T5 sequence and
        # ControlNet residuals; shared by the call: the position ids, so they are part of the key
        args = {"hidden_states": x, "timestep": t / 1000, "guidance": guidance, "pooled_projections": pooled,
                "encoder_hidden_states": emb, **flux_control(i.control)}
        return {"noise_pred": per_sample(ctx, ("flux", id(transformer), value_key(txt_ids), value_key(img_ids)), args,
                                         lambda a: flux_call(transformer, txt_ids, img_ids, a))}


def flux_call(transformer, txt_ids, img_ids, args: dict):
    """The Flux transformer's velocity for one item's or a group's packed latents and conditions.
    Flux's blocks attend within a sample's own tokens and embed its timestep and guidance per
    sample, so each velocity is its own up to float summation order."""
    import torch

    with torch.no_grad():
        return transformer(**args, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]


def flux_control(control) -> dict:
    """The transformer's ControlNet arguments for ApplyFluxControlNet's residuals, none without."""
    if control is None:
        return {}
    return {"controlnet_block_samples": None if control.blocks is None else list(control.blocks),
            "controlnet_single_block_samples": None if control.single_blocks is None else list(control.single_blocks),
            "controlnet_blocks_repeat": control.repeat}


class TrueCFG(Node, name="TrueCFG", category="sampling"):
    """Flux's true classifier-free guidance: two transformer calls, the prompt's and the negative
    prompt's, combined as ``negative + scale · (prompt − negative)`` (FluxPipeline's
    ``true_cfg_scale`` with a ``negative_prompt``); dev's own guidance embedding stays on both."""

    class In(Inputs):
        cond: NoisePred = Field(description="the prompt's prediction")
        uncond: NoisePred = Field(description="the negative prompt's prediction")
        scale: float = Field(4.0, ge=0.0, le=100.0, description="true_cfg_scale; 1 gives the prompt's prediction")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the guided prediction")

    def run(self, i: In, ctx: Context) -> dict:
        return {"noise_pred": i.uncond + i.scale * (i.cond - i.uncond)}
