"""The model side of one denoising step: the UNet's noise prediction, classifier-free guidance,
and steering the latents with a loss on the decoded image."""

from __future__ import annotations

import contextlib
from typing import Literal

from graphflow_nodes.kinds import (
    VAE,
    AdapterResiduals,
    ControlResiduals,
    Embeddings,
    ImagePrompts,
    Latents,
    ModelInput,
    NoisePred,
    Scheduler,
    Timestep,
    UNet,
)
from graphflow_nodes.stages.prediction import noise_levels, predicted_x0
from graphflow_nodes.stages.vae import decode, pixel_vae
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class PredictNoise(Node, name="PredictNoise", category="sampling", uses=("models",)):
    """The UNet's noise prediction for this timestep, conditioned on the text embeddings (both
    halves of a guidance batch in one call)."""

    class In(Inputs):
        unet: UNet = Field(description="from LoadModel")
        model_input: ModelInput = Field(description="from ScaleModelInput")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="CFGEmbeddings (batched guidance) or plain text embeddings")
        adapter_residuals: AdapterResiduals | None = Field(None, description="AdapterResiduals: T2I-Adapter feature maps added in the down blocks")
        image_prompts: ImagePrompts | None = Field(None, description="EncodeImagePrompt: image prompts for the UNet's IP-Adapters")
        control: ControlResiduals | None = Field(None, description="ApplyControlNet's residuals, added to the UNet's down and middle blocks")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the predicted noise, same batch as model_input")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.batch_calls import per_sample, timestep_key
        from graphflow_nodes.runtime import placement, to_batch

        unet = ctx.models.get(i.unet)
        device, dtype = placement(unet)
        x = i.model_input.to(dtype=dtype)
        emb = to_batch(i.embeddings.to(device=device, dtype=dtype), x.shape[0], "embeddings")
        extra = control_kwargs(unet, i.adapter_residuals, i.image_prompts, x.shape[0], device, dtype) | controlnet_kwargs(i.control)
        # a sweep's items share one call per step, control inputs included: the residuals, adapter
        # maps and image prompts are per-sample rows like the latents (batch_calls.per_sample)
        return {"noise_pred": per_sample(ctx, ("unet", id(unet), timestep_key(i.timestep)), (x, emb, extra),
                                         lambda a: unet_call(unet, i.timestep, i.adapter_residuals, *a))}


def batch_key(model, timestep, *tensors) -> tuple:
    """What must be equal for model calls to share one batch (``Context.batched``): the model, the
    timestep, and every per-sample shape and dtype; the per-sample values (the seed's latents,
    the prompt's embeddings) may differ."""
    t = float(timestep) if getattr(timestep, "numel", lambda: 1)() == 1 else tuple(timestep.flatten().tolist())
    return (id(model), t, *((tuple(x.shape[1:]), x.dtype, x.device) for x in tensors))


def unet_call(unet, timestep, adapter_residuals, x, emb, extra: dict):
    """The UNet's prediction for one item's or a group's (model input, embeddings, control
    keywords). Each sample's prediction is its own (a UNet has no cross-sample operation: its
    group norms are per sample), up to the float summation order of the larger matrix products."""
    import torch

    extra = dict(extra)
    if "down_intrablock_additional_residuals" in extra:  # the UNet pops from this list: a fresh one
        extra["down_intrablock_additional_residuals"] = list(extra["down_intrablock_additional_residuals"])
    with torch.no_grad(), adapter_errors(unet, adapter_residuals):
        return unet(x, timestep, encoder_hidden_states=emb, return_dict=False, **extra)[0]


def control_kwargs(unet, adapter_residuals, image_prompts, batch: int, device, dtype) -> dict:
    """The UNet call's keywords for the control inputs a prediction node was given (none: {})."""
    from graphflow_nodes.control.ip_adapter import image_prompt_kwargs
    from graphflow_nodes.control.t2i_adapter import down_block_residuals

    out: dict = {}
    if adapter_residuals is not None:
        out["down_intrablock_additional_residuals"] = down_block_residuals(
            [r.to(device=device, dtype=dtype) for r in adapter_residuals], batch)
    if image_prompts is not None:
        out["added_cond_kwargs"] = image_prompt_kwargs(unet, image_prompts, batch, device, dtype)
    return out


@contextlib.contextmanager
def adapter_errors(unet, adapter_residuals):
    """A shape error inside a UNet given adapter residuals names the input and the likely cause."""
    try:
        yield
    except RuntimeError as e:
        if adapter_residuals is None or "size of tensor" not in str(e):
            raise
        from graphflow_nodes.control.t2i_adapter import fit_message

        raise ValueError(fit_message(unet, adapter_residuals, e)) from None


def controlnet_kwargs(control) -> dict:
    """The UNet's residual arguments for ControlNet residuals (control/controlnet.py), none without."""
    if control is None:
        return {}
    return {"down_block_additional_residuals": list(control.down), "mid_block_additional_residual": control.mid}


class CFG(Node, name="CFG", category="sampling"):
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` on a batched prediction."""

    class In(Inputs):
        noise_pred: NoisePred = Field(description="from PredictNoise on CFGEmbeddings")
        guidance_scale: float = Field(7.5, ge=0.0, le=100.0, description="1 means no guidance")

    class Out(Outputs):
        noise_pred: NoisePred = Field(description="the guided prediction (half the batch)")

    def run(self, i: In, ctx: Context) -> dict:
        uncond, cond = i.noise_pred.chunk(2)
        return {"noise_pred": uncond + i.guidance_scale * (cond - uncond)}


CHANNELS = {"red": 0, "green": 1, "blue": 2}


class ColorGuidance(Node, name="ColorGuidance", category="sampling", uses=("models",)):
    """Moves the latents down the gradient of a colour loss on the decoded predicted image (the
    notebook's "blue loss": mean distance of one channel to a target value). Put it between CFG
    and SchedulerStep; give it a ``when`` to act every N steps."""

    class In(Inputs):
        vae: VAE = Field(description="decodes the predicted x0")
        scheduler: Scheduler = Field(description="the loop's current scheduler (gives the noise level)")
        latents: Latents = Field(description="the current latents")
        noise_pred: NoisePred = Field(description="the guided model output (noise, velocity or sample: the scheduler's prediction_type says which)")
        timestep: Timestep = Field(description="the loop's timestep")
        channel: Literal["red", "green", "blue"] = Field("blue", description="the channel the loss looks at")
        target: float = Field(0.9, ge=0.0, le=1.0, description="the value the channel is pulled towards")
        scale: float = Field(200.0, ge=0.0, le=1e5, description="loss multiplier")

    class Out(Outputs):
        latents: Latents = Field(description="the steered latents")
        loss: float = Field(description="the loss before the step")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        vae = pixel_vae(ctx, i.vae)
        latents = i.latents.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = predicted_x0(i.scheduler, i.noise_pred, i.timestep, latents)
            _, sigma_t, _ = noise_levels(i.scheduler, i.timestep, latents)
            weight = sigma_t**2  # the notebook's sigma² (1 - alpha_bar for variance-preserving schedulers)
            image = decode(vae, x0)
            loss = (image[:, CHANNELS[i.channel]] - i.target).abs().mean() * i.scale
            (grad,) = torch.autograd.grad(loss, latents)
        return {"latents": (latents - grad * weight).detach(), "loss": float(loss.detach())}
