"""The caches one run reads and writes, seen by the planner as one index: what this run already
computed, then the executor's memory cache, then the disk cache. Damaged disk entries it meets are
reported in the run's result, not kept on the cache object (which runs share)."""

from __future__ import annotations

from typing import Any


class RunCaches:
    """The caches a run reads and writes, seen as one index for the planner. ``done`` holds what
    this run computed and still needs, by member (the runner's values): a re-plan stops at those
    members, so it never recomputes them."""

    def __init__(self, memory, disk) -> None:
        self.memory, self.disk = memory, disk
        self.done: dict[str, dict[str, Any]] = {}
        self.bad: set[str] = set()
        self.errors: list[str] = []
        self._in_memory = getattr(memory, "holds", None) or memory.__contains__
        #: memory-cache entries of numbers only that a run hands over at its end
        #: (``flush``), by fingerprint; meanwhile ``done`` or the run's values hold them
        self.small: dict[str, dict[str, Any]] = {}

    def empty(self) -> bool:
        """Nothing could be found (no disk cache, an empty memory cache, nothing run yet): the
        planner need not walk the graph asking."""
        return self.disk is None and not self.done and not self.small and not len(self.memory)

    def all_in_memory(self, fps: list[str]) -> bool:
        """Whether ``lookup`` would answer "memory" for each of ``fps`` (asked before this run
        has computed or refused anything)."""
        if self.bad or self.done:
            return False
        self.flush()
        holds_all = getattr(self.memory, "holds_all", None)
        return holds_all(fps) if holds_all is not None else all(map(self._in_memory, fps))

    def lookup(self, fp: str, member: str, ports: set[str]) -> str | None:
        if fp in self.bad:
            return None
        if member in self.done:
            return "run"
        if self.small:
            self.flush()
        if self._in_memory(fp):
            return "memory"
        if self.disk is not None:
            ok, err = self.disk.has(fp, ports)
            if err:
                self.errors.append(f"recomputed a damaged entry ({err})")
            if ok:
                return "disk"
        return None

    def load(self, fp: str, where: str, ports: set[str], complete: set[str]) -> dict[str, Any] | None:
        """An entry found by ``lookup`` in memory or on disk (a member found in ``done`` is not
        loaded: the runner already holds its values)."""
        if where == "memory":
            hit = self.memory.get(fp)
            if hit is not None:
                return hit
        elif where == "disk" and self.disk is not None:
            hit, err = self.disk.get(fp, ports)
            if err:
                self.errors.append(f"recomputed a damaged entry ({err})")
            if hit is not None:
                if hit.keys() >= complete:  # a partial entry must not pose as complete
                    self.memory.put(fp, hit)
                return hit
        self.bad.add(fp)
        return None

    def flush(self) -> None:
        """Hand the small entries kept so far to the memory cache (at a run's end, before a
        re-plan): one lock for all of them."""
        if self.small:
            small = self.small.copy()
            self.small.clear()  # in place: a runner holds it
            put = getattr(self.memory, "put_scalars", None)
            if put is not None:
                put(small)
            else:
                for fp, outputs in small.items():
                    self.memory.put(fp, outputs)

    def store(self, fp: str, outputs: dict[str, Any], to_disk: bool) -> None:
        self.memory.put(fp, outputs)
        if self.disk is not None and to_disk:
            try:
                self.disk.put(fp, outputs)
            except Exception as e:  # a cache that cannot keep a result must not cost the run its result
                self.errors.append(f"cannot write entry {fp}: {type(e).__name__}: {e}")
