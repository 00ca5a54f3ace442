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
        emb, pooled = batch(i.embeddings, "embeddings"), batch(i.pooled, "pooled")
        if i.control is not None:  # control residuals: called alone
            with torch.no_grad():
                out = transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled,
                                  return_dict=False, block_controlnet_hidden_states=list(i.control.blocks))
            return {"noise_pred": out[0]}
        return {"noise_pred": ctx.batched(flow_batch_key(transformer, x, emb, pooled), (x, t, emb, pooled),
                                          lambda ps: sd3_batch(transformer, ps))}


def flow_batch_key(transformer, *tensors, ids=()) -> tuple:
    """What must be equal for flow transformer calls to share one batch (``Context.batched``): the
    model, every per-sample shape, dtype and device, and Flux's position ids (shared by the batch,
    not per sample). Unlike the UNet's key, not the timestep: these transformers embed a timestep
    per sample, so items at different noise levels (an img2img strength sweep) batch too."""
    import torch

    shared = tuple((tuple(t.shape), t.dtype, hash(t.detach().to("cpu", torch.float64).numpy().tobytes())) for t in ids)
    return (id(transformer), *((tuple(x.shape[1:]), x.dtype, x.device) for x in tensors), *shared)


def _cat(tensors: list):
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _split(out, payloads: list) -> list:
    return [out] if len(payloads) == 1 else list(out.split([p[0].shape[0] for p in payloads]))


def sd3_batch(transformer, payloads: list) -> list:
    """One SD3 transformer call for several runs' (latents, timesteps, embeddings, pooled), each
    with its own guidance halves: concatenated along the batch, split back. The MMDiT has no
    cross-sample operation (its attention is within a sample's own text and image tokens, its
    norms per token), so each sample's velocity is its own up to float summation order."""
    import torch

    with torch.no_grad():
        out = transformer(hidden_states=_cat([p[0] for p in payloads]), timestep=_cat([p[1] for p in payloads]),
                          encoder_hidden_states=_cat([p[2] for p in payloads]),
                          pooled_projections=_cat([p[3] for p in payloads]), return_dict=False)[0]
    return _split(out, payloads)


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
        if i.control is not None:  # control residuals: called alone
            with torch.no_grad():
                out = transformer(hidden_states=x, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                                  encoder_hidden_states=emb, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
                                  **flux_control(i.control))
            return {"noise_pred": out[0]}
        # per sample: the latents, timestep, guidance (dev's embedding), pooled and T5 sequence;
        # shared by the batch: the position ids, so they are part of the key
        return {"noise_pred": ctx.batched(flow_batch_key(transformer, x, emb, pooled, ids=(txt_ids, img_ids)),
                                          (x, t, emb, pooled, guidance), lambda ps: flux_batch(transformer, txt_ids, img_ids, ps))}


def flux_batch(transformer, txt_ids, img_ids, payloads: list) -> list:
    """One Flux transformer call for several runs' (packed latents, timesteps, T5 sequence, pooled,
    guidance), split back. Flux's blocks attend within a sample's own tokens and embed its
    timestep and guidance per sample, so each velocity is its own up to float summation order."""
    import torch

    guidance = None if payloads[0][4] is None else _cat([p[4] for p in payloads])
    with torch.no_grad():
        out = transformer(hidden_states=_cat([p[0] for p in payloads]), timestep=_cat([p[1] for p in payloads]) / 1000,
                          guidance=guidance, encoder_hidden_states=_cat([p[2] for p in payloads]),
                          pooled_projections=_cat([p[3] for p in payloads]), txt_ids=txt_ids, img_ids=img_ids,
                          return_dict=False)[0]
    return _split(out, payloads)


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
