"""Running a sweep's items here, one after another on one executor: each run given its own output
folder, so the caches and the model manager (the model loads once) are shared by construction."""

from __future__ import annotations

from collections.abc import Iterator

from graphflow.sweep.item import ItemResult, item_folder, run_item

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
        for i in todo:
            if sweep.cancelled:
                return
            prefix = item_folder(i) + "/"
            r = run_item(self.executor, sweep.bound[i], i, sweep.items[i], sweep.out_dir / prefix, prefix)
            yield r
            if r.status == "cancelled":
                return

    def cancel(self) -> None:
        if self.executor is not None:
            self.executor.cancel()

    def close(self) -> None:
        pass
