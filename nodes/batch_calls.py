"""One model call for a group of batched runs (``Context.batched``) whose arguments are any nesting
of per-sample tensors: the UNet with ControlNet residuals, T2I-Adapter maps and IP-Adapter image
prompts, a ControlNet with its control image, a flow transformer with its block residuals.

Why one helper rather than a batch function per node: every such call is the same three moves
(concatenate each argument along the batch, call once, split each output back), and the key that
decides which calls may share a batch is the same rule (the model, what is shared by the whole
call, and every per-sample shape, dtype and device). Writing it per node made each new control
input a reason to call the model alone; here an argument is per-sample by being a tensor with the
item's rows, and anything else (a flag, a None) must be equal to share the call.

Imported lazily from inside ``run`` methods, as runtime.py is."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def per_sample(ctx: Any, key: Hashable, inputs: Any, call: Callable[[Any], Any], distinct: bool = False) -> Any:
    """``call(inputs)``, made once with the same-keyed calls of the runs batched with this one.

    ``inputs``: a tuple/list/dict nesting whose tensor leaves all have this item's rows first
    (the model input's batch); its other leaves (None, flags) join the key. ``key``: whatever
    ``call`` closes over that is the same for every sample (the model, a scalar timestep, shared
    position ids). ``call``'s result: a nesting of tensors with the rows of its input (or None
    leaves); each item gets its own rows back. Each sample's result is its own as long as the
    model has no cross-sample operation (true of every model here: norms and attention are per
    sample), so batched pictures differ from unbatched ones by float summation order only.

    ``distinct``: equal inputs (compared by value) are computed once and each of their callers
    gets that result: for text encoders, where the items of a batch often share a prompt (a
    sweep's seeds), which unbatched runs would have encoded once and then found in the cache."""
    leaves, spec = tree_flatten(inputs)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    rows = tensors[0].shape[0] if tensors and tensors[0].ndim else 0
    if not rows or any(t.ndim == 0 or t.shape[0] != rows for t in tensors):
        return call(inputs)  # no common batch axis to batch along
    sig = tuple((tuple(x.shape[1:]), x.dtype, x.device) if isinstance(x, torch.Tensor) else ("value", x) for x in leaves)
    try:
        hash((key, spec, sig))
    except TypeError:  # a leaf that cannot be compared: nothing to match it with
        return call(inputs)

    def together(payloads: list) -> list:
        if distinct and len(payloads) > 1:
            first: dict[bytes, int] = {}
            slot = [first.setdefault(_content(p), len(first)) for p in payloads]
            if len(first) < len(payloads):
                unique = [payloads[slot.index(j)] for j in range(len(first))]
                done = together(unique)
                return [done[j] for j in slot]
        if len(payloads) == 1:
            return [call(payloads[0])]
        flat = [tree_flatten(p)[0] for p in payloads]
        joined = [torch.cat(col) if isinstance(col[0], torch.Tensor) else col[0] for col in zip(*flat)]
        sizes = [next(x for x in f if isinstance(x, torch.Tensor)).shape[0] for f in flat]
        out, out_spec = tree_flatten(call(tree_unflatten(joined, spec)))
        # each item's rows copied out of the batch's tensor: a view would keep the whole batch alive
        # for as long as one item's output is cached, which the cache counts as the view's size only
        parts = [[p.clone() for p in x.split(sizes)] if isinstance(x, torch.Tensor) else [x] * len(payloads) for x in out]
        return [tree_unflatten([p[k] for p in parts], out_spec) for k in range(len(payloads))]

    return ctx.batched((key, spec, sig), inputs, together)


def _content(inputs: Any) -> bytes:
    """An input nesting's tensors by value (token ids, embeddings: small), for ``distinct``."""
    leaves = tree_flatten(inputs)[0]
    return b"".join(x.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes() if isinstance(x, torch.Tensor)
                    else repr(x).encode() for x in leaves)  # as bytes: bfloat16 has no numpy type


def timestep_key(timestep: Any) -> Any:
    """A timestep as a key: models that take one timestep for the whole call (the UNet, SD's
    ControlNet) batch only the items at the same timestep."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep) if timestep.numel() == 1 else tuple(timestep.flatten().tolist())
    return float(timestep)


def value_key(t: torch.Tensor) -> tuple:
    """A tensor shared by a whole call (Flux's position ids) as a key: by value, not identity."""
    return tuple(t.shape), t.dtype, hash(t.detach().to("cpu", torch.float64).numpy().tobytes())
