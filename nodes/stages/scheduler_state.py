"""Diffusers schedulers keep state between ``step()`` calls (step index, LMS derivatives,
DPM-Solver's model outputs): how to copy one cheaply, and where a copy stands in its schedule.
Below both the scheduler nodes and the prediction arithmetic that reads a scheduler's sigmas."""

from __future__ import annotations

import copy
from typing import Any


def clone(scheduler: Any) -> Any:
    """A copy that ``step()`` can advance without touching the original. Schedulers rebind their
    tensors and counters but append to lists (LMS ``derivatives``, DPM ``model_outputs``), so a
    shallow copy with fresh lists and dicts is enough, and far cheaper than a deep copy."""
    c = copy.copy(scheduler)
    for k, v in vars(c).items():
        if isinstance(v, list):
            setattr(c, k, list(v))
        elif isinstance(v, dict) and k not in ("config", "_internal_dict"):
            setattr(c, k, dict(v))
    return c


def step_index(scheduler: Any, t: Any) -> int | None:
    """The index of timestep ``t`` in the schedule, as the scheduler itself would pick it."""
    s = clone(scheduler)
    if getattr(s, "step_index", None) is None and hasattr(s, "_init_step_index"):
        s._init_step_index(t)
    return getattr(s, "step_index", None)
