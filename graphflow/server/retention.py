"""How long the server keeps what runs leave behind: their rows in the history and their folders
of files. A server that runs for months would otherwise fill its disk; like ComfyUI's history cap,
the newest ended runs are kept (``--keep-runs``, 10,000 by default) and, if asked, none older than
``--keep-days``. Queued and running runs are never pruned.

Rows go first, in one transaction, then the folders: a server killed in between leaves folders no
row names, and the next start removes them (``sweep_orphans``), so nothing is left half-deleted.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from graphflow.server.broker import Broker
from graphflow.server.outputs import RUN_ID, run_dir
from graphflow.server.store import Store


def remove_run(out_root: Path, broker: Broker, run_id: str) -> None:
    """A run's files and remembered events, once its row is gone."""
    shutil.rmtree(run_dir(out_root, run_id), ignore_errors=True)
    broker.forget(run_id)


@dataclass(frozen=True)
class Retention:
    keep_runs: int | None = 10_000  # None: no count limit
    keep_days: float | None = None  # None: no age limit

    def prune(self, store: Store, broker: Broker, out_root: Path) -> list[str]:
        """Delete what falls outside the limits; returns the ids deleted."""
        cutoff = time.time() - self.keep_days * 86400 if self.keep_days is not None else None
        ids = store.prune(self.keep_runs, cutoff)
        for run_id in ids:
            remove_run(out_root, broker, run_id)
        return ids


def sweep_orphans(store: Store, out_root: Path) -> list[str]:
    """Remove run folders whose run is no longer in the store (a prune cut short by a kill);
    anything under OUT/runs/ not named like a run is not the server's to remove."""
    runs = out_root / "runs"
    if not runs.is_dir():
        return []
    names = [p.name for p in runs.iterdir() if RUN_ID.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    orphans = sorted(set(names) - store.known(names))
    for name in orphans:
        shutil.rmtree(runs / name, ignore_errors=True)
    return orphans
