"""Node outputs kept on disk, for later processes and other workers: one safetensors file per
fingerprint with a checksum of its tensors (the format: ``entry.py``). An entry that fails to read
or to match its checksum is deleted and recomputed, never trusted. Several processes may share one
folder; it keeps itself under a size limit by evicting the least recently used entries (see
``DiskCache``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphflow.atomic import write_atomic
from graphflow.cache.entry import decode, encode, header_len, read_header
from graphflow.sizes import DEFAULT_CACHE_BYTES, parse_size


STALE_TMP_SECONDS = 3600
"""A temporary file older than this was left by a killed process (a live write takes seconds)."""

_PRUNE_TO = 0.9  # an automatic prune evicts down to 90 % of the limit, so the next puts do not prune again
_RESYNC_PUTS = 100  # at the latest after this many puts a process looks at the folder's real size

@dataclass
class PruneReport:
    """What a prune did: entries it deleted (and their bytes), stray temporary files it deleted, and
    what is left."""

    removed: int = 0
    freed: int = 0
    temporaries: int = 0
    entries: int = 0
    size: int = 0


def _stale_temporary(name: str, st: os.stat_result, now: float) -> bool:
    return name.startswith(".") and ".safetensors.tmp" in name and now - st.st_mtime > STALE_TMP_SECONDS


class DiskCache:
    """One safetensors file per fingerprint, shared by any number of processes. Only outputs made of
    tensors and JSON scalars are stored; an opaque output (a model, a scheduler) is left out, and a
    lookup that needs it misses.

    **Sharing.** An entry is written to a temporary file and renamed over its name, so a reader sees
    the old file or the new one, never half of one; two processes that compute the same key write the
    same outputs, and the last rename wins. A reader that finds a file missing (evicted or replaced
    by another process meanwhile) treats it as a miss. An entry that fails to parse, to match its
    checksum, or names another key inside is deleted (unless another process has meanwhile renamed a
    new file over it) and reported, never used.

    **Size limit.** ``max_bytes`` (default 4 GiB; None: no limit) bounds the folder: each hit sets
    the entry's modification time to now (one ``utime`` on the open file, so it cannot touch a file
    that replaced it, and a failure is ignored: a read-only cache still reads), and a prune deletes
    entries by oldest modification time, least recently used first, until the total is under the
    limit. Scanning the folder costs one ``stat`` per entry, so ``put`` does not: each process keeps
    an approximate running total (the folder's size when it last scanned plus the bytes it wrote
    since) and scans and prunes only when that total crosses the limit. It cannot see what other
    processes write, so it also rescans every 100 puts: that bounds how far several writers can push
    the folder over the limit between prunes, at the cost of one scan per 100 entries written (an
    entry of a diffusion workflow takes far longer to compute than its share of the scan). An
    automatic prune evicts down to 90 % of the limit, so that the next few puts do not prune again.
    Two processes pruning at once evict the same oldest entries; a file already gone counts as freed,
    and an entry used since the scan is kept, so they do not evict more than needed. Temporary files
    older than an hour (left by a killed process) are deleted by ``prune`` and ``clear``."""

    def __init__(self, root: str | Path, max_bytes: int | str | None = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = None if max_bytes is None else parse_size(max_bytes)
        self._lock = threading.Lock()
        self._used: int | None = None  # this process's estimate of the folder's size; None: not scanned
        self._puts = 0  # puts since the last scan

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("??/*.safetensors")) if self.root.is_dir() else []

    def _scan(self) -> tuple[list[tuple[int, int, Path]], list[Path]]:
        """(mtime in ns, size, path) of every entry, and the stray temporary files; a file that
        vanishes while the folder is read is left out."""
        found: list[tuple[int, int, Path]] = []
        stale: list[Path] = []
        now = time.time()
        try:
            top = os.scandir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return found, stale
        with top:
            for d in top:
                if len(d.name) != 2:
                    continue
                try:
                    sub = os.scandir(d.path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                with sub:
                    for e in sub:
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if e.name.endswith(".safetensors") and not e.name.startswith("."):
                            found.append((st.st_mtime_ns, st.st_size, Path(e.path)))
                        elif _stale_temporary(e.name, st, now):
                            stale.append(Path(e.path))
        return found, stale

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) on disk now."""
        found, _ = self._scan()
        return len(found), sum(size for _, size, _ in found)

    def clear(self) -> int:
        """Delete every entry and the stray temporary files (a younger temporary file belongs to a
        write in progress and is left to it); returns how many entries were deleted."""
        found, stale = self._scan()
        n = 0
        for _, _, p in found:
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
        for p in stale:
            p.unlink(missing_ok=True)
        with self._lock:
            self._used, self._puts = None, 0
        return n

    def prune(self, max_bytes: int | str | None = None) -> PruneReport:
        """Delete least-recently-used entries until the folder holds at most ``max_bytes`` (default:
        this cache's limit; no limit: only stray temporary files go), and temporary files older than
        an hour."""
        limit = self.max_bytes if max_bytes is None else parse_size(max_bytes)
        return self._evict(*self._scan(), limit)

    def _evict(self, found: list[tuple[int, int, Path]], stale: list[Path], limit: int | None) -> PruneReport:
        report = PruneReport()
        for p in stale:
            try:
                p.unlink()
                report.temporaries += 1
            except OSError:
                pass
        total = sum(size for _, size, _ in found)
        kept = len(found)
        if limit is not None and total > limit:
            found.sort(key=lambda e: (e[0], str(e[2])))
            for mtime, size, p in found:
                if total <= limit:
                    break
                try:
                    if os.stat(p).st_mtime_ns != mtime:
                        continue  # used (or written again) since the scan: no longer the oldest
                    p.unlink()
                    report.removed += 1
                    report.freed += size
                except FileNotFoundError:
                    pass  # another process evicted it first: gone all the same
                except OSError:
                    continue  # cannot delete (a read-only cache): it stays and counts
                total -= size
                kept -= 1
        report.entries, report.size = kept, total
        return report

    def _wrote(self, n: int) -> None:
        """Account for ``n`` bytes just written; prune when the estimate crosses the limit."""
        limit = self.max_bytes
        if limit is None:
            return
        with self._lock:
            self._puts += 1
            if self._used is not None and self._puts < _RESYNC_PUTS:
                self._used += n
                if self._used <= limit:
                    return
            self._puts = 0
        try:
            found, stale = self._scan()
            total = sum(size for _, size, _ in found)
            if total > limit:
                total = self._evict(found, stale, int(limit * _PRUNE_TO)).size
        except OSError:
            return  # the next put tries again
        with self._lock:
            self._used = total

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    @staticmethod
    def _discard(p: Path, st: os.stat_result | None) -> None:
        """Delete a damaged entry, unless another process has meanwhile renamed a new file over it
        (``st``: the damaged file's identity; None: whatever is there)."""
        try:
            if st is not None:
                now = os.stat(p)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    return
            p.unlink()
        except OSError:
            pass

    def has(self, key: str, needed: set[str]) -> tuple[bool, str | None]:
        """Whether an entry holding ``needed`` exists, from its header alone (for planning); a
        damaged header is deleted and reported."""
        p = self.path(key)
        st = None
        try:
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                head = f.read(8)
                info = read_header(head + f.read(header_len(head, st.st_size)))
            if info["key"] != key:
                raise ValueError("the entry belongs to another key")
            outputs = info["outputs"].keys()
        except FileNotFoundError:
            return False, None
        except Exception as e:
            self._discard(p, st)
            return False, f"{p}: {type(e).__name__}: {e}"
        return needed <= outputs, None

    def get(self, key: str, needed: set[str]) -> tuple[dict[str, Any] | None, str | None]:
        """The entry's outputs, or None and why (a damaged entry is deleted and reported; a missing
        one is a plain miss). A hit makes the entry the most recently used."""
        p = self.path(key)
        st = None
        try:
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                outputs = decode(f.read(), key)
                if not needed <= outputs.keys():
                    return None, None
                try:  # the most recently used now; by descriptor, so never a file renamed over it since
                    os.utime(f.fileno() if os.utime in os.supports_fd else p)
                except OSError:
                    pass
        except FileNotFoundError:
            return None, None  # evicted or never written: a miss
        except Exception as e:  # a damaged entry of any kind is recomputed
            self._discard(p, st)
            return None, f"{p}: {type(e).__name__}: {e}"
        return outputs, None

    def put(self, key: str, outputs: dict[str, Any]) -> bool:
        """Store the storable outputs; False when none is storable or the entry alone exceeds the
        size limit."""
        data = encode(key, outputs)
        if data is None or (self.max_bytes is not None and len(data) > self.max_bytes):
            return False
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, data)
        self._wrote(len(data))
        return True
