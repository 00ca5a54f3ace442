"""ComfyUI's ``sampler_name`` × ``scheduler`` as diffusers schedulers with ComfyUI's own sigmas.

ComfyUI builds a list of sigmas from the model's discrete noise levels (comfy/samplers.py
``SCHEDULER_HANDLERS``) and runs a k-diffusion sampler over it (comfy/k_diffusion/sampling.py).
The diffusers schedulers below implement the same update rules; what differs between the two
programs is only which sigmas and which UNet timesteps they use. So the sigmas are computed here
exactly as ComfyUI does (its float64 → float32 noise table, its nearest-index timesteps) and
written into the diffusers scheduler, which then steps them with its own code. Pairs with no such
mapping are refused by name rather than approximated silently."""

from __future__ import annotations

import math
from typing import Any

#: sampler_name -> (diffusers class, extra config, how exact, why). "exact": same sigmas, same
#: timesteps, same update (differences are float rounding); "close": same sigmas, a different
#: update in the last bits of an algebraically equal formula. Anything else is refused.
SAMPLERS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "exact", "Euler on ComfyUI's sigmas"),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, "exact",
                        "ancestral Euler (eta 1); the step noise drawn from a generator seeded with the seed, as ComfyUI's default noise sampler"),
    "heun": ("HeunDiscreteScheduler", {}, "exact", "Heun's 2nd order, a plain Euler step to sigma 0"),
    "lms": ("LMSDiscreteScheduler", {}, "exact", "linear multistep, order 4"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                                                 "final_sigmas_type": "zero", "lower_order_final": True},
                 "close", "DPM-Solver++(2M) in the variance-preserving scale (equal algebra, other rounding)"),
    "ddim": ("EulerDiscreteScheduler", {}, "exact", "ComfyUI's ddim is its Euler sampler (deterministic DDIM is Euler in sigma space)"),
}

#: samplers ComfyUI has that are refused, with the reason a user is shown
REFUSED_SAMPLERS: dict[str, str] = {
    "dpmpp_2m_sde": "its noise comes from torchsde's Brownian tree, which no diffusers scheduler draws",
    "dpmpp_2m_sde_gpu": "its noise comes from torchsde's Brownian tree, which no diffusers scheduler draws",
    "dpmpp_sde": "its noise comes from torchsde's Brownian tree, which no diffusers scheduler draws",
    "uni_pc": "ComfyUI's UniPC (bh1, its own noise-schedule interpolation) differs from diffusers' UniPCMultistepScheduler",
    "uni_pc_bh2": "ComfyUI's UniPC keeps its own noise-schedule interpolation, which diffusers' UniPCMultistepScheduler does not",
}

#: sampler_name on a flow-matching model (SD3/SD3.5) -> (diffusers class, how exact, why); the rest are refused for them
FLOW_SAMPLERS: dict[str, tuple[str, str, str]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", "exact", "Euler on ComfyUI's flow sigmas: x + (σ' − σ)·v"),
    "ddim": ("FlowMatchEulerDiscreteScheduler", "exact", "ComfyUI's ddim is its Euler sampler"),
}
FLOW_REFUSED = ("ComfyUI runs its own rectified-flow variant (sample_euler_ancestral_RF and the like) or a k-diffusion update that no "
                "diffusers flow scheduler steps over given sigmas")

#: schedulers computed here as ComfyUI computes them
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
#: samplers whose latents live in the variance-preserving scale (x / sqrt(1 + sigma^2)) in diffusers
VP_SPACE = {"DPMSolverMultistepScheduler"}


class SamplerError(ValueError):
    pass


def check_pair(sampler: str, scheduler: str) -> tuple[str, dict[str, Any]]:
    if sampler in REFUSED_SAMPLERS:
        raise SamplerError(f"sampler_name {sampler!r} is refused: {REFUSED_SAMPLERS[sampler]}; translatable: {', '.join(SAMPLERS)}")
    if sampler not in SAMPLERS:
        raise SamplerError(f"sampler_name {sampler!r} has no translation; translatable: {', '.join(SAMPLERS)}")
    if scheduler not in SCHEDULERS:
        raise SamplerError(f"scheduler {scheduler!r} has no translation; translatable: {', '.join(SCHEDULERS)}")
    cls, extra, _, _ = SAMPLERS[sampler]
    return cls, extra


class ModelSampling:
    """ComfyUI's ``ModelSamplingDiscrete`` for an epsilon model: the training noise levels from the
    beta schedule (float64, then stored as float32), and its sigma ↔ timestep maps."""

    def __init__(self, config: dict) -> None:
        import torch

        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        kind = config.get("beta_schedule", "scaled_linear")
        if kind == "scaled_linear":  # ComfyUI's "linear": sqrt-spaced betas, as SD's original configs
            betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
        elif kind == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        else:
            raise SamplerError(f"beta_schedule {kind!r} has no ComfyUI equivalent here (scaled_linear or linear)")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log().float()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def timestep(self, sigma):
        """The nearest training timestep (ComfyUI passes the UNet this index, not an interpolation)."""
        import torch

        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, t):
        import torch

        t = torch.clamp(torch.as_tensor(t).float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


class ModelSamplingFlow:
    """ComfyUI's ``ModelSamplingDiscreteFlow`` (SD3/SD3.5, ``ModelSamplingSD3``): 1000 noise
    levels ``t / 1000`` shifted by ``shift·t / (1 + (shift − 1)·t)``; the model's timestep is
    sigma × 1000, not rounded to a training step."""

    def __init__(self, shift: float, multiplier: float = 1000.0) -> None:
        import torch

        self.shift, self.multiplier = shift, multiplier
        self.sigmas = self.sigma(torch.arange(1, 1001, dtype=torch.float32))
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def timestep(self, sigma):
        import torch

        return torch.as_tensor(sigma, dtype=torch.float32) * self.multiplier

    def sigma(self, t):
        import torch

        t = torch.as_tensor(t, dtype=torch.float32) / self.multiplier
        return self.shift * t / (1 + (self.shift - 1) * t)


class ModelSamplingFluxShift(ModelSamplingFlow):
    """ComfyUI's ``ModelSamplingFlux``: 10000 levels ``t`` shifted by ``e^shift / (e^shift + 1/t − 1)``
    (shift 1.15 for FLUX.1-dev, 1.0 for schnell, or ModelSamplingFlux's from the picture's size);
    the model's timestep is sigma itself (diffusers' transformer takes the same fraction)."""

    def __init__(self, shift: float) -> None:
        import torch

        self.shift, self.multiplier = shift, 1000.0
        self.sigmas = self.sigma(torch.arange(1, 10001, dtype=torch.float32) / 10000)
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def timestep(self, sigma):
        import torch

        return torch.as_tensor(sigma, dtype=torch.float32)

    def sigma(self, t):
        import torch

        t = torch.as_tensor(t, dtype=torch.float32)
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / t - 1))


def flux_default_shift(config: dict) -> float:
    """ComfyUI's shift for a Flux model: 1.15 for dev, 1.0 for schnell (ComfyUI tells them by the
    guidance embedding; their diffusers scheduler configs by dynamic shifting)."""
    return 1.15 if config.get("use_dynamic_shifting") else 1.0


def model_sampling(config: dict, shift: float | None = None, flux: bool = False):
    """ComfyUI's model sampling for a scheduler config: Flux's, flow matching (its ``shift``, or
    the one ModelSamplingSD3 sets) or discrete epsilon."""
    if flux:
        return ModelSamplingFluxShift(float(shift if shift is not None else flux_default_shift(config)))
    if is_flow(config):
        return ModelSamplingFlow(float(shift if shift is not None else config.get("shift", 1.0)))
    return ModelSampling(config)


def is_flow(config: dict) -> bool:
    return "FlowMatch" in str(config.get("_class_name", ""))


def _normal(s: ModelSampling, steps: int, sgm: bool = False) -> list[float]:
    import torch

    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(float(start), float(end), steps)
    sigs = [float(s.sigma(t)) for t in timesteps]
    return sigs + [0.0] if append_zero else sigs


def _karras(s: ModelSampling, steps: int, rho: float = 7.0) -> list[float]:
    import torch

    ramp = torch.linspace(0, 1, steps)
    min_inv, max_inv = s.sigma_min ** (1 / rho), s.sigma_max ** (1 / rho)
    return [float(x) for x in (max_inv + ramp * (min_inv - max_inv)) ** rho] + [0.0]


def _exponential(s: ModelSampling, steps: int) -> list[float]:
    import torch

    return [float(x) for x in torch.linspace(math.log(s.sigma_max), math.log(s.sigma_min), steps).exp()] + [0.0]


def _simple(s: ModelSampling, steps: int) -> list[float]:
    ss = len(s.sigmas) / steps
    return [float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)] + [0.0]


def _ddim_uniform(s: ModelSampling, steps: int) -> list[float]:
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs.append(float(s.sigmas[x]))
        x += ss
    return sigs[::-1]


def _beta(s: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    import numpy as np  # here, not at import: the node library is imported by workflows that need no numpy
    import scipy.stats

    total = len(s.sigmas) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    sigs, last = [], -1.0
    for t in ts:
        if t != last:
            sigs.append(float(s.sigmas[int(t)]))
        last = t
    return sigs + [0.0]


HANDLERS = {"normal": _normal, "karras": _karras, "exponential": _exponential, "sgm_uniform": lambda s, n: _normal(s, n, sgm=True),
            "simple": _simple, "ddim_uniform": _ddim_uniform, "beta": _beta}


def comfy_sigmas(config: dict, scheduler: str, steps: int, denoise: float = 1.0, start_step: int = 0, end_step: int = 10000,
                 force_full_denoise: bool = False, shift: float | None = None, flux: bool = False) -> list[float]:
    """The sigmas ComfyUI's KSampler (``denoise``) or KSamplerAdvanced (``start_step``, ``end_step``,
    ``force_full_denoise``) runs for this model config (comfy/samplers.py ``KSampler.set_steps``
    and comfy/sample.py); ``shift``: a flow model's (ModelSamplingSD3), else its config's."""
    s = model_sampling(config, shift, flux)
    if denoise is None or denoise > 0.9999:
        sigmas = HANDLERS[scheduler](s, steps)
    else:
        if denoise <= 0.0:
            return []
        sigmas = HANDLERS[scheduler](s, int(steps / denoise))[-(steps + 1):]
    if end_step < len(sigmas) - 1:
        sigmas = sigmas[:end_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0.0
    if start_step < len(sigmas) - 1:
        sigmas = sigmas[start_step:]
    else:
        return []
    return sigmas


def max_denoise(config: dict, first_sigma: float) -> bool:
    """ComfyUI scales the starting noise by sqrt(1 + sigma²) instead of sigma when the run starts at
    the model's largest sigma (comfy/samplers.py ``max_denoise``)."""
    sigma_max = ModelSampling(config).sigma_max
    return math.isclose(sigma_max, first_sigma, rel_tol=1e-05) or first_sigma > sigma_max
