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
