"""What a model's output means, for every prediction type diffusers knows: the noise
(``epsilon``, SD 1.x), the velocity (``v_prediction``, SD 2.x 768 models) or the clean sample
(``sample``), or, for the flow-matching families (SD3, Flux), the velocity ``noise − x0`` along the
straight path ``x_t = (1 − σ)·x0 + σ·noise`` (``flow_prediction``). Nodes that look inside a step (the predicted x0 of a scheduler that does not report
one, colour guidance on the decoded x0) convert through here, so none of them assumes epsilon.

Two ways schedulers scale their latents: variance-exploding ones (LMS, Euler, Heun: the
latents are ``x0 + sigma * eps`` and start at ``init_noise_sigma > 1``) and variance-preserving
ones (DDIM, DDPM, PNDM, DPM-Solver: ``alpha_t * x0 + sigma_t * eps``)."""

from __future__ import annotations

from typing import Any

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


def prediction_type(scheduler: Any) -> str:
    """The scheduler's prediction type; FlowMatch schedulers name none, their models predict a velocity."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return "flow_prediction"
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not supported (supported: {', '.join(PREDICTION_TYPES)})")
    return kind


def noise_levels(scheduler: Any, timestep: Any, like: Any) -> tuple[Any, Any, bool]:
    """(alpha_t, sigma_t, exploding) at this timestep: the latents are ``alpha_t * x0 + sigma_t *
    eps`` (variance-preserving), or ``x0 + sigma_t * eps`` with alpha_t = 1 (exploding). Read the
    way the scheduler's own step reads it: its sigma at its step index when it keeps sigmas, else
    ``alphas_cumprod[t]``."""
    import torch
    from graphflow_nodes.stages.scheduler_state import step_index

    sigmas = getattr(scheduler, "sigmas", None)
    idx = step_index(scheduler, timestep) if sigmas is not None else None
    if prediction_type(scheduler) == "flow_prediction":  # x_t = (1 - σ) x0 + σ noise: σ runs from 1 to 0
        sigma = sigmas[idx].to(device=like.device, dtype=like.dtype)
        return 1 - sigma, sigma, False
    exploding = float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0
    if sigmas is not None and idx is not None:
        sigma = sigmas[idx].to(device=like.device, dtype=like.dtype)
        if exploding:
            return torch.ones_like(sigma), sigma, True
        alpha_t = 1 / (sigma**2 + 1).sqrt()  # DPM-Solver's _sigma_to_alpha_sigma_t
        return alpha_t, sigma * alpha_t, False
    a = scheduler.alphas_cumprod.to(like.device)[int(timestep)].to(like.dtype)
    return a.sqrt(), (1 - a).sqrt(), False


def predicted_x0(scheduler: Any, model_output: Any, timestep: Any, latents: Any) -> Any:
    """The clean latents the model output implies, differentiable (colour guidance takes its
    gradient). Equal to the scheduler's own ``pred_original_sample`` where it reports one."""
    kind = prediction_type(scheduler)
    if kind == "sample":
        return model_output
    alpha_t, sigma_t, exploding = noise_levels(scheduler, timestep, latents)
    if kind == "flow_prediction":  # v = noise - x0, so x0 = x_t - σ v
        return latents - sigma_t * model_output
    if exploding:
        if kind == "epsilon":
            return latents - sigma_t * model_output
        s2 = sigma_t**2 + 1  # v is defined on the variance-preserving input latents / sqrt(sigma² + 1)
        return model_output * (-sigma_t / s2.sqrt()) + latents / s2
    if kind == "epsilon":
        return (latents - sigma_t * model_output) / alpha_t
    return alpha_t * latents - sigma_t * model_output
