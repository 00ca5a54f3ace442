"""Node outputs kept in memory between runs of one executor: least recently used first out,
under a byte budget. Keys are fingerprints (``fingerprint.py``): equal fingerprints promise equal
outputs, so a hit is simply used."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

SCALARS = _SCALARS = (int, float, str, bool, type(None))  # values that hold nothing to count


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
    """The entries, least recently used first, and the sizes of those that hold anything to count
    (apart, so that an entry of numbers, most of a big graph's, is one dict slot and no tuple)."""

    def __init__(self, budget_bytes: int = 4 << 30) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        #: ``key in cache`` without a Python-level ``__contains__`` (the planner asks once per node)
        self.holds = self._entries.__contains__

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit

    def put(self, key: str, outputs: dict[str, Any]) -> None:
        for v in outputs.values():
            if type(v) not in _SCALARS:
                break
        else:  # numbers and text (most nodes of a big graph): nothing to count, nothing to evict
            with self._lock:
                entries = self._entries
                if key in entries:
                    del entries[key]
                    self.used -= self._sizes.pop(key, 0)
                entries[key] = outputs
            return
        size = nbytes(outputs)
        if size > self.budget:
            return
        entries = self._entries
        with self._lock:
            if key in entries:
                del entries[key]
                self.used -= self._sizes.pop(key, 0)
            entries[key] = outputs
            if size:
                self._sizes[key] = size
                self.used += size
            while self.used > self.budget and entries:
                old, _ = entries.popitem(last=False)
                self.used -= self._sizes.pop(old, 0)

    def put_scalars(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """``put`` for many entries of numbers and text only (they hold nothing to count, so
        nothing is evicted), under one lock: a run keeps its small entries and hands them over
        together (a put per node was a tenth of a trivial node's cost)."""
        entries, sizes = self._entries, self._sizes
        with self._lock:
            for key, outputs in items:
                if key in entries:
                    del entries[key]
                    self.used -= sizes.pop(key, 0)
                entries[key] = outputs

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries
