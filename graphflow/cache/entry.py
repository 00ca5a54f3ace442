"""The disk cache's entry format: one safetensors file holding a node's storable outputs, with
their layout (lists, tuples, dicts, scalars around the tensors), the fingerprint they belong to
and a checksum of the tensors in its metadata.

Apart from ``disk.py`` (where entries live, how they are shared and evicted) so that what an entry
holds can be read without the folder's rules. Everything here raises on damage; the caller
decides what damage means (``disk.py`` deletes and reports the entry).
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import orjson

__all__ = ["Unstorable", "decode", "encode", "header_len", "read_header"]

_MAX_HEADER = 100 << 20  # a safetensors header is small; a length field above this is not one


class Unstorable(Exception):
    """An output the format cannot hold (a model, a scheduler): left out of the entry."""


def _encode(value: Any, name: str, tensors: dict[str, Any], torch: Any) -> Any:
    """A value as JSON-able layout, with its tensors moved into ``tensors``."""
    if isinstance(value, torch.Tensor):
        # a contiguous copy: safetensors refuses shared storage and other layouts; a channels-last
        # tensor (what a VAE makes of a picture) is marked, so it comes back in its own layout and
        # the convolutions after it sum in the same order as on a fresh run
        channels_last = value.dim() == 4 and not value.is_contiguous() and value.is_contiguous(memory_format=torch.channels_last)
        tensors[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        return {"t": name, "channels_last": True} if channels_last else {"t": name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    if isinstance(value, (list, tuple)):
        return {"l": [_encode(v, f"{name}.{i}", tensors, torch) for i, v in enumerate(value)], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"d": {k: _encode(v, f"{name}.{k}", tensors, torch) for k, v in value.items()}}
    raise Unstorable(type(value).__name__)


def _decode(layout: Any, tensors: dict[str, Any], torch: Any) -> Any:
    if "t" in layout:
        t = tensors[layout["t"]]
        return t.contiguous(memory_format=torch.channels_last) if layout.get("channels_last") else t
    if "v" in layout:
        return layout["v"]
    if "l" in layout:
        items = [_decode(v, tensors, torch) for v in layout["l"]]
        return tuple(items) if layout.get("tuple") else items
    return {k: _decode(v, tensors, torch) for k, v in layout["d"].items()}


def _digest(tensors: dict[str, Any], torch: Any) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class _NoTorch:
    """Stands in for torch where no value can be a tensor: a process that never imported torch
    (a workflow of engine nodes, ``hello.json``) stores and loads its entries without importing
    it (seconds on a busy machine)."""

    class Tensor:
        pass


def _save_header_only(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """A safetensors file of no tensors, as safetensors writes one (its length, its JSON header
    padded with spaces to 8 bytes), without importing numpy or torch for it."""
    assert not tensors
    header = orjson.dumps({"__metadata__": metadata})
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


def encode(key: str, outputs: dict[str, Any]) -> bytes | None:
    """The entry for ``key`` holding the storable ``outputs``; None when none is storable."""
    if "torch" in sys.modules:
        import torch
        from safetensors.torch import save
    else:  # nothing can be a torch tensor: an entry of numbers and text
        torch, save = _NoTorch, _save_header_only

    tensors: dict[str, Any] = {}
    layout = {}
    for name, value in outputs.items():
        part: dict[str, Any] = {}
        try:
            layout[name] = _encode(value, f"o.{name}", part, torch)
        except Unstorable:
            continue
        tensors.update(part)
    if not layout:
        return None
    meta = {"graphflow": orjson.dumps({"key": key, "outputs": layout, "sha256": _digest(tensors, torch)}).decode()}
    return save(tensors, metadata=meta)


def decode(data: bytes, key: str) -> dict[str, Any]:
    """The outputs an entry holds; a ValueError (or the parser's error) when it is damaged, is
    not one, or belongs to another key."""
    n = header_len(data[:8], len(data))
    if orjson.loads(data[8 : 8 + n]).keys() <= {"__metadata__"}:  # no tensors: numbers and text
        torch, load = _NoTorch, lambda _: {}
    else:
        import torch
        from safetensors.torch import load
    tensors = load(data)
    info = read_header(data)
    if info["key"] != key:
        raise ValueError("the entry belongs to another key")
    if _digest(tensors, torch) != info["sha256"]:
        raise ValueError("checksum mismatch")
    return {name: _decode(lay, tensors, torch) for name, lay in info["outputs"].items()}


def read_header(data: bytes) -> dict[str, Any]:
    """graphflow's metadata from an entry's first bytes (its length field and header at least)."""
    n = int.from_bytes(data[:8], "little")
    header = orjson.loads(data[8 : 8 + n])
    try:
        info = orjson.loads(header["__metadata__"]["graphflow"])
        _ = info["key"], info["outputs"].keys()
    except (KeyError, TypeError, AttributeError):
        raise ValueError("not a graphflow cache entry (a safetensors file without its metadata)") from None
    return info


def header_len(head: bytes, file_size: int) -> int:
    """The header's length from the first 8 bytes, refused when no safetensors file could have it
    (checked before reading that many bytes)."""
    n = int.from_bytes(head, "little")
    if len(head) < 8 or not 2 <= n <= min(file_size - 8, _MAX_HEADER):
        raise ValueError("not a safetensors file")
    return n
