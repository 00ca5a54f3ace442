"""The one rounding of pictures to 8 bits: what SaveImage writes, what a notebook and a sweep's
contact sheet show, so a picture looks the same byte for byte wherever it appears.

numpy does the arithmetic, not torch: runs made with ``Executor.run`` execute on the caller's
thread and would not mind, but submitted runs execute on the executor's worker, and a torch op on
a second thread gives the process a second OpenMP thread team, after which every run on the worker
is about 2x slower on a 2-core machine (bench/bench_threads.py)."""

from __future__ import annotations

from typing import Any


def to_uint8(image) -> Any:
    """(batch, 3, H, W) in [0, 1] → (batch, H, W, 3) uint8, rounded as diffusers' ``numpy_to_pil``."""
    import numpy as np

    a = image.detach()
    if str(a.dtype) != "torch.float32":
        a = a.float()
    return (np.clip(a.cpu().numpy(), 0, 1).transpose(0, 2, 3, 1) * 255).round().astype("uint8")
