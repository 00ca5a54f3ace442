"""Running a sweep's items here, one after another on one executor: each run given its own output
folder, so the caches and the model manager (the model loads once) are shared by construction."""

from __future__ import annotations

from collections.abc import Iterator

from graphflow.sweep.item import ItemResult, item_folder, run_item, run_items

__all__ = ["LocalRunner"]


class LocalRunner:
    """A sweep runner (``run``, ``cancel``, ``close``) on ``executor``, or on one made for the
    sweep (its out_dir and limits) when none is given."""

    def __init__(self, executor=None) -> None:
        self.executor = executor
        self._sweep = None

    def run(self, sweep, todo: list[int]) -> Iterator[ItemResult]:
        if self.executor is None:
            from graphflow.engine.executor import Executor

            self.executor = Executor(out_dir=sweep.out_dir, limits=sweep.limits)
        self._sweep = sweep
        batch = getattr(self.executor, "batch", 1)
        if batch > 1:
            yield from self._batched(sweep, todo, batch)
            return
        for i in todo:
            if sweep.cancelled:
                return
            prefix = item_folder(i) + "/"
            r = run_item(self.executor, sweep.bound[i], i, sweep.items[i], sweep.out_dir / prefix, prefix)
            yield r
            if r.status == "cancelled":
                return

    def _batched(self, sweep, todo: list[int], batch: int) -> Iterator[ItemResult]:
        """``batch`` items at a time through ``run_items``, in the sweep's order (which puts items
        sharing a model and prompt next to each other); their results in that order."""
        for k in range(0, len(todo), batch):
            if sweep.cancelled:
                return
            chunk = todo[k:k + batch]
            prefixes = [item_folder(i) + "/" for i in chunk]
            rs = run_items(self.executor, [sweep.bound[i] for i in chunk], chunk, [sweep.items[i] for i in chunk],
                           [sweep.out_dir / p for p in prefixes], prefixes)
            yield from rs
            if any(r.status == "cancelled" for r in rs):
                return

    def cancel(self) -> None:
        if self.executor is not None:
            self.executor.cancel()

    def close(self) -> None:
        pass
