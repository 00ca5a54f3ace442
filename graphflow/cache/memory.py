"""Node outputs kept in memory between runs of one executor: least recently used first out,
under a byte budget (entries of numbers only: under a count). Keys are fingerprints
(``fingerprint.py``): equal fingerprints promise equal outputs, so a hit is simply used."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from itertools import repeat
from typing import Any

NUMBERS = _NUMBERS = (int, float, bool, type(None))  # values that hold nothing to count


def nbytes(value: Any) -> int:
    """Memory a value holds, as far as the cache budget is concerned: tensors, arrays and text
    count, containers add up their items, numbers and opaque objects (models) count as zero."""
    if type(value) in _NUMBERS:
        return 0
    if type(value) is str:
        return sys.getsizeof(value)
    n = getattr(value, "nbytes", None)
    if isinstance(n, int):
        return n
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


class MemoryCache:
    """Two stores. Entries that hold something to count (tensors, text) or opaque objects (models)
    are kept least recently used first, under the byte budget, with the sizes of those that count.
    Entries of numbers only, most of a big graph's, hold nothing the budget counts: they live in a
    plain dict (an ordered dict's insert cost more than a trivial node's run), at most
    ``max_small`` of them; past that the older half goes (a hit moves an entry to the young end)."""

    def __init__(self, budget_bytes: int = 4 << 30, max_small: int = 500_000) -> None:
        self.budget = budget_bytes
        self.max_small = max_small
        self.used = 0
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._small: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def holds(self, key: str) -> bool:
        """``key in cache``, as the planner asks it (once per node)."""
        return key in self._small or key in self._entries

    __contains__ = holds

    def holds_all(self, keys: list[str]) -> bool:
        """``holds`` for many keys, answered in C (the planner of a fully cached run asks it)."""
        with self._lock:  # get() takes a key out and puts it back: never seen missing meanwhile
            small, entries = self._small, self._entries
            return small.keys() >= set(keys) or all(k in small or k in entries for k in keys)

    def get_many(self, keys: list[str]) -> list[dict[str, Any]] | None:
        """``get`` of each key, in one go (a fully cached run's loads), or None when one is not
        held. Keys may repeat (equal nodes have equal keys)."""
        unique = list(dict.fromkeys(keys))
        with self._lock:
            small, entries = self._small, self._entries
            found = list(map(small.pop, unique, repeat(None)))  # taken out and put back: the young end
            if None not in found:
                small.update(zip(unique, found))
            else:
                small.update((k, v) for k, v in zip(unique, found) if v is not None)
                for i, k in enumerate(unique):
                    if found[i] is None:
                        found[i] = entries.get(k)
                        if found[i] is None:
                            return None
                        entries.move_to_end(k)
        if len(unique) == len(keys):
            return found
        return list(map(dict(zip(unique, found)).__getitem__, keys))

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            small = self._small
            hit = small.pop(key, None)
            if hit is not None:
                small[key] = hit  # the young end: the last to go
                return hit
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit

    def put(self, key: str, outputs: dict[str, Any]) -> None:
        for v in outputs.values():
            if type(v) not in _NUMBERS:
                break
        else:  # numbers: nothing to count, nothing to evict by size
            self.put_scalars({key: outputs})
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

    def put_scalars(self, items: dict[str, dict[str, Any]]) -> None:
        """``put`` for many entries of numbers only, under one lock: a run keeps its small entries
        and hands them over together (a put per node was a tenth of a trivial node's cost)."""
        with self._lock:
            small = self._small
            for key in items.keys() & small.keys():  # put again: to the young end
                del small[key]
            small.update(items)
            if len(small) > self.max_small:
                keep = list(small.items())[len(small) - max(1, self.max_small // 2):]
                small.clear()
                small.update(keep)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._small.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries) + len(self._small)
