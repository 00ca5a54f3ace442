"""Helpers the torch-using nodes share. Imported lazily from inside ``run`` methods, never at
module level, so that validation does not load torch."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def generator(seed: int) -> torch.Generator:
    """Random draws happen on the CPU, as diffusers' ``randn_tensor`` does for a CPU generator, so
    a seed gives the same picture on every device."""
    return torch.Generator("cpu").manual_seed(int(seed))


def generator_from(seed: int, rng: torch.Tensor | None) -> torch.Generator:
    """The generator a node draws from: the state handed on by an earlier draw (``rng``), so one
    seed's draws follow each other as in a diffusers pipeline that passes one generator around,
    or else a fresh one from ``seed``."""
    if rng is None:
        return generator(seed)
    g = torch.Generator("cpu")
    g.set_state(rng.to(device="cpu", dtype=torch.uint8))
    return g


def placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a model from its first parameter. diffusers' ``model.dtype`` walks
    every submodule on each call, which inside a denoising loop costs more than the step's
    bookkeeping; one parameter tells the same."""
    p = next(model.parameters())
    return p.device, p.dtype


def to_batch(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """``t`` repeated along its first axis to ``n`` rows: a condition given once for a batch of
    pictures (or for both halves of a guidance batch) goes with each of them."""
    if t.shape[0] == n:
        return t
    if n % t.shape[0]:
        raise ValueError(f"{what} batch {t.shape[0]} does not divide model input batch {n}")
    return t.repeat_interleave(n // t.shape[0], dim=0)
