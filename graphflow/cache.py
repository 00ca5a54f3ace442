"""Where node outputs are kept between runs: a least-recently-used store in memory with a byte
budget, and an optional store on disk that a later process can reuse.

Keys are fingerprints (see ``plan.py`` and ``fingerprint.py``): equal fingerprints promise equal outputs, so a
hit is simply used. The disk store keeps tensors as safetensors with a checksum of their bytes;
an entry that fails to read or to match its checksum is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from graphflow.atomic import write_atomic

_SCALARS = (int, float, str, bool, type(None))


def nbytes(value: Any) -> int:
    """Memory a value holds, as far as the cache budget is concerned: tensors and arrays count,
    containers add up their items, opaque objects (models) count as zero."""
    if type(value) in _SCALARS:
        return 0
    n = getattr(value, "nbytes", None)
    if isinstance(n, int):
        return n
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


class MemoryCache:
    def __init__(self, budget_bytes: int = 4 << 30) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit[0]

    def put(self, key: str, outputs: dict[str, Any]) -> None:
        size = nbytes(outputs)
        if size > self.budget:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old:
                self.used -= old[1]
            self._entries[key] = (outputs, size)
            self.used += size
            while self.used > self.budget and self._entries:
                _, (_, s) = self._entries.popitem(last=False)
                self.used -= s

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries


class _Unstorable(Exception):
    pass


def _encode(value: Any, name: str, tensors: dict[str, Any], torch: Any) -> Any:
    """A value as JSON-able layout, with its tensors moved into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().to("cpu").clone()  # clone: safetensors refuses shared storage
        return {"t": name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    if isinstance(value, (list, tuple)):
        return {"l": [_encode(v, f"{name}.{i}", tensors, torch) for i, v in enumerate(value)], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"d": {k: _encode(v, f"{name}.{k}", tensors, torch) for k, v in value.items()}}
    raise _Unstorable(type(value).__name__)


def _decode(layout: Any, tensors: dict[str, Any]) -> Any:
    if "t" in layout:
        return tensors[layout["t"]]
    if "v" in layout:
        return layout["v"]
    if "l" in layout:
        items = [_decode(v, tensors) for v in layout["l"]]
        return tuple(items) if layout.get("tuple") else items
    return {k: _decode(v, tensors) for k, v in layout["d"].items()}


def _digest(tensors: dict[str, Any], torch: Any) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class DiskCache:
    """One safetensors file per fingerprint. Only outputs made of tensors and JSON scalars are
    stored; an opaque output (a model, a scheduler) is left out, and a lookup that needs it misses."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("??/*.safetensors")) if self.root.is_dir() else []

    def clear(self) -> int:
        """Delete every entry (and stray temporary files); returns how many entries there were."""
        n = 0
        for p in self.root.glob("??/*") if self.root.is_dir() else []:
            n += p.suffix == ".safetensors"
            p.unlink(missing_ok=True)
        return n

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _header(self, data: bytes) -> dict[str, Any]:
        header_len = int.from_bytes(data[:8], "little")
        return orjson.loads(orjson.loads(data[8 : 8 + header_len])["__metadata__"]["graphflow"])

    def has(self, key: str, needed: set[str]) -> tuple[bool, str | None]:
        """Whether an entry holding ``needed`` exists, from its header alone (for planning); a
        damaged header is deleted and reported."""
        p = self.path(key)
        try:
            with open(p, "rb") as f:
                head = f.read(8)
                info = self._header(head + f.read(int.from_bytes(head, "little")))
            if info["key"] != key:
                raise ValueError("the entry belongs to another key")
        except FileNotFoundError:
            return False, None
        except Exception as e:
            p.unlink(missing_ok=True)
            return False, f"{p}: {type(e).__name__}: {e}"
        return needed <= info["outputs"].keys(), None

    def get(self, key: str, needed: set[str]) -> tuple[dict[str, Any] | None, str | None]:
        """The entry's outputs, or None and why (a damaged entry is deleted and reported)."""
        p = self.path(key)
        if not p.exists():
            return None, None
        import torch
        from safetensors.torch import load

        try:
            data = p.read_bytes()
            tensors = load(data)
            info = self._header(data)
            if info["key"] != key or _digest(tensors, torch) != info["sha256"]:
                raise ValueError("checksum mismatch")
            outputs = {name: _decode(lay, tensors) for name, lay in info["outputs"].items()}
        except Exception as e:  # a damaged entry of any kind is recomputed
            p.unlink(missing_ok=True)
            return None, f"{p}: {type(e).__name__}: {e}"
        if not needed <= outputs.keys():
            return None, None
        return outputs, None

    def put(self, key: str, outputs: dict[str, Any]) -> bool:
        import torch
        from safetensors.torch import save

        tensors: dict[str, Any] = {}
        layout = {}
        for name, value in outputs.items():
            part: dict[str, Any] = {}
            try:
                layout[name] = _encode(value, f"o.{name}", part, torch)
            except _Unstorable:
                continue
            tensors.update(part)
        if not layout:
            return False
        meta = {"graphflow": orjson.dumps({"key": key, "outputs": layout, "sha256": _digest(tensors, torch)}).decode()}
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, save(tensors, metadata=meta))
        return True
