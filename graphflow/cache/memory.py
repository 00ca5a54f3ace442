"""Node outputs kept in memory between runs of one executor: least recently used first out,
under a byte budget. Keys are fingerprints (``fingerprint.py``): equal fingerprints promise equal
outputs, so a hit is simply used."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

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
        size = 0
        for v in outputs.values():  # numbers and text (most nodes of a big graph) hold nothing to count
            if type(v) not in _SCALARS:
                size = nbytes(outputs)
                break
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
