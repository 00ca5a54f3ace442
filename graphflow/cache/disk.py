"""Node outputs kept on disk, for later processes and other workers: one safetensors file per
fingerprint with a checksum of its tensors (the format: ``entry.py``). An entry that fails to read
or to match its checksum is deleted and recomputed, never trusted. Several processes may share one
folder; it keeps itself under a size limit by evicting the least recently used entries, and never
follows a link planted in it (see ``DiskCache``).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: opening an entry: never through a link, never blocking on a FIFO someone planted at its name
_READ_ENTRY = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_UTIME_FD = os.utime in os.supports_fd
_LINK_ERRNOS = {errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP)}  # O_NOFOLLOW met a link (EMLINK: FreeBSD)


class _NotOurs(Exception):
    """A name in the cache that is not what the cache writes there (a link, a FIFO, a folder):
    it is never followed, read or evicted as an entry."""


def _open_folder(name: str | Path, dir_fd: int | None = None, follow: bool = False) -> int:
    """An open folder, by descriptor, so that what follows works inside it and nowhere else.
    ``follow`` only for the cache's root, which its user names (a link there is their choice);
    a shard folder inside it is opened with O_NOFOLLOW: a link planted there fails to open."""
    return os.open(name, os.O_RDONLY | _DIRECTORY | _CLOEXEC | (0 if follow else _NOFOLLOW), dir_fd=dir_fd)


def _open_shard(root_fd: int, name: str, create: bool) -> int:
    """The shard folder ``name`` (an entry key's first two characters) of the open root. A link (or
    anything but a folder) there raises _NotOurs; with ``create`` a missing shard is made and a
    planted link in its place is removed (the link, never what it points to) and replaced."""
    try:
        return _open_folder(name, root_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno not in _LINK_ERRNOS and e.errno != errno.ENOTDIR:
            raise
        if not create or not stat.S_ISLNK(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
            raise _NotOurs(f"{name} is a link or a file, not a cache folder") from None
        os.unlink(name, dir_fd=root_fd)  # unlink removes the link itself: nothing outside is touched
    try:
        os.mkdir(name, 0o755, dir_fd=root_fd)
    except FileExistsError:
        pass  # another process made it meanwhile
    return _open_folder(name, root_fd)


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
    older than an hour (left by a killed process) are deleted by ``prune`` and ``clear``.

    **Links.** Whoever can write to a shared folder can plant a link in it: a shard folder that
    points at a models folder made entries be written there, and eviction delete the model files
    beside them. So the cache follows no link it did not make (it makes none): each shard folder
    is opened with ``O_NOFOLLOW`` and every entry is opened, written, renamed, stat'ed and deleted
    by name inside it (``dir_fd``), so no path is resolved twice; a link planted as a shard folder
    is replaced by a real one on the next write, a link (or a FIFO) at an entry's name is a damaged
    entry (the link is removed, what it points to is never opened), and a scan lists only regular
    files in real folders, so a prune or a clear cannot reach outside the cache. The root folder
    itself is the user's to choose, a link included."""

    def __init__(self, root: str | Path, max_bytes: int | str | None = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = None if max_bytes is None else parse_size(max_bytes)
        self._lock = threading.Lock()
        self._used: int | None = None  # this process's estimate of the folder's size; None: not scanned
        self._puts = 0  # puts since the last scan

    def entries(self) -> list[Path]:
        found, _ = self._scan()
        return sorted(self.root / shard / name for _, _, shard, name in found)

    @contextmanager
    def _root_fd(self, create: bool = False) -> Iterator[int]:
        """The root folder, open; FileNotFoundError (or NotADirectoryError) when it is not there."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = _open_folder(self.root, follow=True)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _shard_fd(self, key: str, create: bool = False) -> Iterator[int]:
        """The open shard folder of ``key``: every entry operation works by name inside it
        (``dir_fd``), so a link planted as a shard is never followed to write, read or delete."""
        with self._root_fd(create) as root:
            fd = _open_shard(root, key[:2], create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _scan(self) -> tuple[list[tuple[int, int, str, str]], list[tuple[str, str]]]:
        """(mtime in ns, size, shard, name) of every entry, and (shard, name) of the stray
        temporary files; a file that vanishes while the folder is read is left out. Only real
        folders and regular files count: a link is neither descended into nor listed, so a prune
        or a clear cannot reach past the cache."""
        found: list[tuple[int, int, str, str]] = []
        stale: list[tuple[str, str]] = []
        now = time.time()
        try:
            with self._root_fd() as root, os.scandir(root) as top:
                for d in top:
                    if len(d.name) != 2 or not d.is_dir(follow_symlinks=False):
                        continue
                    try:
                        fd = _open_folder(d.name, root)
                    except OSError:  # gone, or swapped for a link since the listing
                        continue
                    try:
                        with os.scandir(fd) as sub:
                            for e in sub:
                                try:
                                    st = e.stat(follow_symlinks=False)
                                except FileNotFoundError:
                                    continue
                                if not stat.S_ISREG(st.st_mode):
                                    continue
                                if e.name.endswith(".safetensors") and not e.name.startswith("."):
                                    found.append((st.st_mtime_ns, st.st_size, d.name, e.name))
                                elif _stale_temporary(e.name, st, now):
                                    stale.append((d.name, e.name))
                    finally:
                        os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return found, stale

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) on disk now."""
        found, _ = self._scan()
        return len(found), sum(size for _, size, _, _ in found)

    def _remove(self, files: list[tuple[str, str]], mtimes: list[int] | None = None) -> Iterator[int]:
        """Delete files given as (shard, name), one per step of the iteration (stop it to keep the
        rest), each by name inside its shard folder opened without following links, and only a
        regular file: a link or a folder put there since the scan stays. With ``mtimes``, only a
        file still last used then (one used since is no longer the oldest). Yields, per file, 1
        deleted, 0 already gone (another process deleted it first), -1 kept."""
        shards: dict[str, int | None] = {}
        try:
            with self._root_fd() as root:
                for i, (shard, name) in enumerate(files):
                    if shard not in shards:
                        try:
                            shards[shard] = _open_folder(shard, root)
                        except OSError:
                            shards[shard] = None
                    fd = shards[shard]
                    if fd is None:
                        yield 0
                        continue
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if not stat.S_ISREG(st.st_mode) or mtimes is not None and st.st_mtime_ns != mtimes[i]:
                            r = -1
                        else:
                            os.unlink(name, dir_fd=fd)
                            r = 1
                    except FileNotFoundError:
                        r = 0
                    except OSError:
                        r = -1  # cannot delete (a read-only cache): it stays
                    yield r
        except (FileNotFoundError, NotADirectoryError):
            yield from (0 for _ in files)  # the whole folder is gone: so is every file
        finally:
            for fd in shards.values():
                if fd is not None:
                    os.close(fd)

    def clear(self) -> int:
        """Delete every entry and the stray temporary files (a younger temporary file belongs to a
        write in progress and is left to it); returns how many entries were deleted."""
        found, stale = self._scan()
        n = sum(r == 1 for r in self._remove([(shard, name) for _, _, shard, name in found]))
        for _ in self._remove(stale):  # a generator: each step deletes one
            pass
        with self._lock:
            self._used, self._puts = None, 0
        return n

    def prune(self, max_bytes: int | str | None = None) -> PruneReport:
        """Delete least-recently-used entries until the folder holds at most ``max_bytes`` (default:
        this cache's limit; no limit: only stray temporary files go), and temporary files older than
        an hour."""
        limit = self.max_bytes if max_bytes is None else parse_size(max_bytes)
        return self._evict(*self._scan(), limit)

    def _evict(self, found: list[tuple[int, int, str, str]], stale: list[tuple[str, str]], limit: int | None) -> PruneReport:
        report = PruneReport()
        report.temporaries = sum(r == 1 for r in self._remove(stale))
        total = sum(size for _, size, _, _ in found)
        kept = len(found)
        if limit is not None and total > limit:
            found.sort(key=lambda e: (e[0], e[2], e[3]))
            results = self._remove([(shard, name) for _, _, shard, name in found], [mtime for mtime, _, _, _ in found])
            try:
                for _, size, _, _ in found:
                    if total <= limit:
                        break
                    r = next(results)
                    if r == 1:
                        report.removed += 1
                        report.freed += size
                    if r >= 0:
                        total -= size
                        kept -= 1
            finally:
                results.close()
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
            total = sum(size for _, size, _, _ in found)
            if total > limit:
                total = self._evict(found, stale, int(limit * _PRUNE_TO)).size
        except OSError:
            return  # the next put tries again
        with self._lock:
            self._used = total

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` is (for people and tests: the cache itself reaches it by
        name inside its shard folder, never through this path)."""
        return self.root / key[:2] / f"{key}.safetensors"

    @staticmethod
    def _discard(shard: int, name: str, st: os.stat_result | None) -> None:
        """Delete a damaged entry (or a link planted at its name: the link, not what it points to),
        unless another process has meanwhile renamed a new file over it (``st``: the damaged
        file's identity; None: whatever is there)."""
        try:
            if st is not None:
                now = os.stat(name, dir_fd=shard, follow_symlinks=False)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    return
            os.unlink(name, dir_fd=shard)
        except OSError:
            pass

    def _read(self, key: str, read: Callable[[Any, os.stat_result], Any]) -> tuple[Any, str | None]:
        """``read(file, stat)`` on the entry of ``key``, opened without following a link: (its
        result, None); (None, None) for a miss; (None, why) for a damaged entry, which is deleted.
        A link, a FIFO or a folder at the entry's name is such a damaged entry (never opened
        through); a shard folder that is a link is a miss (``put`` replaces it)."""
        name = f"{key}.safetensors"
        try:
            with self._shard_fd(key) as shard:
                st = None
                try:
                    fd = os.open(name, _READ_ENTRY, dir_fd=shard)
                    with open(fd, "rb") as f:
                        st = os.fstat(fd)
                        if not stat.S_ISREG(st.st_mode):
                            raise _NotOurs("not a file the cache writes (a FIFO, a device or a folder): never read")
                        return read(f, st), None
                except FileNotFoundError:
                    return None, None
                except Exception as e:  # a damaged entry of any kind is recomputed
                    self._discard(shard, name, st)
                    if isinstance(e, OSError) and e.errno in _LINK_ERRNOS:
                        return None, f"{self.path(key)}: a link, not an entry (the cache never follows one)"
                    if isinstance(e, _NotOurs):
                        return None, f"{self.path(key)}: {e}"
                    return None, f"{self.path(key)}: {type(e).__name__}: {e}"
        except (FileNotFoundError, NotADirectoryError, _NotOurs):
            return None, None

    def has(self, key: str, needed: set[str]) -> tuple[bool, str | None]:
        """Whether an entry holding ``needed`` exists, from its header alone (for planning); a
        damaged header is deleted and reported."""

        def outputs(f, st: os.stat_result):
            head = f.read(8)
            info = read_header(head + f.read(header_len(head, st.st_size)))
            if info["key"] != key:
                raise ValueError("the entry belongs to another key")
            return info["outputs"].keys()

        found, err = self._read(key, outputs)
        return found is not None and needed <= found, err

    def get(self, key: str, needed: set[str]) -> tuple[dict[str, Any] | None, str | None]:
        """The entry's outputs, or None and why (a damaged entry is deleted and reported; a missing
        one is a plain miss). A hit makes the entry the most recently used."""

        def outputs(f, st: os.stat_result):
            found = decode(f.read(), key)
            if not needed <= found.keys():
                return None
            if _UTIME_FD:  # the most recently used now; by descriptor, so never a file renamed over it since
                try:
                    os.utime(f.fileno())
                except OSError:  # a read-only cache still reads
                    pass
            return found

        return self._read(key, outputs)

    def put(self, key: str, outputs: dict[str, Any]) -> bool:
        """Store the storable outputs; False when none is storable or the entry alone exceeds the
        size limit. Written by name inside the shard folder opened without following a link (a
        link planted as the shard is replaced by a real folder), so nothing lands outside the cache.
        An entry already there is kept: equal keys hold equal outputs, and batched runs that share
        a prompt each store its embeddings (a damaged entry was deleted when it was read)."""
        with self._shard_fd(key, create=True) as shard:
            name = f"{key}.safetensors"
            try:
                if stat.S_ISREG(os.stat(name, dir_fd=shard, follow_symlinks=False).st_mode):
                    try:
                        os.utime(name, dir_fd=shard, follow_symlinks=False)  # the most recently used, as a write made it
                    except OSError:  # a read-only cache still works
                        pass
                    return True
            except FileNotFoundError:
                pass
            data = encode(key, outputs)
            if data is None or (self.max_bytes is not None and len(data) > self.max_bytes):
                return False
            write_atomic(name, data, dir_fd=shard)
        self._wrote(len(data))
        return True
