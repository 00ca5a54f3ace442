"""How long the server keeps what runs leave behind: their rows in the history and their folders
of files. A server that runs for months would otherwise fill its disk; like ComfyUI's history cap,
the newest ended runs are kept (``--keep-runs``, 10,000 by default) and, if asked, none older than
``--keep-days``. Queued and running runs are never pruned.

Rows go first, in one transaction that also lists their ids as ``deleting``, then the folders: a
server killed in between leaves folders the database still lists, and the next start removes them
(``sweep_orphans``), so nothing is left half-deleted. A folder the database does not list is never
removed: it may be another server's, or the user's.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from graphflow.server.broker import Broker
from graphflow.server.outputs import RUN_ID, run_dir
from graphflow.server.store import Store


def remove_run(store: Store, out_root: Path, broker: Broker, run_id: str) -> None:
    """A run's files and remembered events, once its row is gone."""
    _remove_folder(run_dir(out_root, run_id))
    store.deleted([run_id])
    broker.forget(run_id)


def _remove_folder(folder: Path) -> None:
    """A run's folder, never what a link there points to (rmtree does not follow links inside)."""
    if folder.is_symlink():
        folder.unlink()
    else:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Retention:
    keep_runs: int | None = 10_000  # None: no count limit
    keep_days: float | None = None  # None: no age limit

    def prune(self, store: Store, broker: Broker, out_root: Path) -> list[str]:
        """Delete what falls outside the limits; returns the ids deleted."""
        cutoff = time.time() - self.keep_days * 86400 if self.keep_days is not None else None
        ids = store.prune(self.keep_runs, cutoff)
        for run_id in ids:
            remove_run(store, out_root, broker, run_id)
        return ids


def sweep_orphans(store: Store, out_root: Path) -> list[str]:
    """Remove the folders of runs this database deleted but whose folders a kill left behind."""
    ids = [i for i in store.deleting() if RUN_ID.fullmatch(i)]
    for run_id in ids:
        _remove_folder(run_dir(out_root, run_id))
    store.deleted(ids)
    return ids
