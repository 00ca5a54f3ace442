"""Whether the installed torch can compute on a device in a dtype, asked before anything loads.

Without it, ``--device cuda`` on a CPU-only torch validated, imported torch and diffusers, started
the run and only then showed torch's bare ``AssertionError: Torch not compiled with CUDA enabled``
from each node that touched the device, about 7 s later. The answer says what this torch does
support and how to get the build that is missing, and refuses only what fails: the CPU computes
in float16 and bfloat16 too (slowly, but correctly), so those are accepted there. Each check is
a tiny convolution and matrix product on the device in the dtype, the operations a diffusion
model is made of, so an old torch without a half-precision CPU kernel is caught as well.
"""

from __future__ import annotations

import functools
import sys

DTYPES = ("float32", "float16", "bfloat16")

#: how to install a torch that has what is missing (the Makefile's TORCH variable; pip the same)
CUDA_BUILD = 'make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu126" (see the Makefile)'


def device_problem(device: str, dtype: str) -> str | None:
    """Why this torch cannot run models on ``device`` in ``dtype`` (a sentence that says what does
    work and how to fix it), or None. cpu/float32 works with every torch and is answered without
    importing it, so `graphflow validate` stays fast."""
    if dtype not in DTYPES:
        return f"dtype {dtype!r} is not one of {', '.join(DTYPES)}"
    if not isinstance(device, str):
        return f"device must be a string such as 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
    if device == "cpu" and dtype == "float32":
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"device {device!r} is not a device torch knows: use cpu, cuda, cuda:N or mps"
    this = f"this torch ({torch.__version__})"
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return (f"device {device!r}: {this} is a CPU-only build: it runs on {_works()}. For an NVIDIA GPU, install a "
                    f"CUDA build of torch: {CUDA_BUILD}")
        if not torch.cuda.is_available():
            return (f"device {device!r}: {this} is built for CUDA {torch.version.cuda or torch.version.hip} but sees no GPU "
                    f"(no driver, or CUDA_VISIBLE_DEVICES hides them): it runs on {_works()}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"device {device!r}: this machine has {count} GPU{'s' * (count != 1)} (cuda:0 to cuda:{count - 1})"
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return (f"dtype 'bfloat16' on {device}: {torch.cuda.get_device_name(dev)} has no bfloat16 support; "
                    f"float16 and float32 work there")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            if sys.platform != "darwin":
                why = "MPS exists only on Macs with Apple silicon"
            elif not torch.backends.mps.is_built():
                why = "this torch is built without MPS (install torch from PyPI: pip install torch)"
            else:
                why = "MPS is not available on this Mac (it needs Apple silicon and macOS 12.3 or later)"
            return f"device {device!r} (an Apple-silicon Mac's GPU): {why}: {this} runs on {_works()}"
    elif dev.type != "cpu":
        return f"device {device!r}: graphflow runs models on cpu, cuda or mps; {this} runs on {_works()}"
    error = _compute_error(device, dtype)
    if error is not None:
        return f"dtype {dtype!r} on {device}: {this} cannot compute in it there ({error}); it runs on {_works()}"
    return None


def _compute_error(device: str, dtype: str) -> str | None:
    """What a convolution and a matrix product in ``dtype`` on ``device`` raise, or None."""
    import torch

    try:
        t = torch.ones(1, 2, 4, 4, device=device, dtype=getattr(torch, dtype))
        torch.nn.functional.conv2d(t, torch.ones(2, 2, 3, 3, device=device, dtype=t.dtype))
        t[0, 0] @ t[0, 1]
    except (RuntimeError, TypeError, NotImplementedError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


@functools.cache
def _works() -> str:
    """The devices and dtypes this torch computes in, as a user reads them: 'cpu (float32,
    float16, bfloat16)'."""
    import torch

    places = ["cpu"]
    if torch.cuda.is_available():
        places += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        places.append("mps")
    out = []
    for place in places:
        ok = [d for d in DTYPES if _compute_error(place, d) is None]
        out.append(f"{place} ({', '.join(ok)})" if ok else f"{place} (no dtype)")
    return ", ".join(out)


def check_device(device: str, dtype: str) -> None:
    """Raises ValueError with ``device_problem``'s sentence."""
    problem = device_problem(device, dtype)
    if problem is not None:
        raise ValueError(problem)
