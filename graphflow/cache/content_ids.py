"""The content ids of files: how they are computed, and remembered between processes, so that a
model's bytes are hashed once per file rather than once per process.

A cache entry's key holds the content id of every file a node read: that is what lets a cache move
between machines and mounts, so the id must be collision-safe (a cryptographic hash, never a
checksum such as xxhash) and the same everywhere. It is BLAKE3 (the ``blake3`` package: Rust, SIMD,
and threads over one file's chunks, since BLAKE3 is itself a tree hash), 160 bits. It replaced
blake2b, which at about 0.6 GB/s on one core put seconds before the first step of a fresh process
(a 2 GB SD 1.5 folder; a 24 GB Flux folder, tens of seconds); BLAKE3 runs 3 to 4 times faster on
one thread here and spreads over the threads this process computes with. A file whose identity on this
machine (device, inode, size, modification time in ns) is unchanged has unchanged bytes, as far as
anything short of reading them can tell (the same test make and rsync trust; an in-place rewrite
changes the mtime), so its id is kept in a small file in the disk cache folder, keyed by that
identity. A copy of the file has another inode and is hashed anew, giving the same id.

The store is a JSON file written whole (``atomic.py``) with a checksum over its entries: a
truncated, corrupt or foreign file reads as empty and is replaced at the next write, never trusted.
Processes sharing the folder merge what is on disk before writing; two writing at once may lose one
entry, which costs one hash later, never a wrong id. A store written before the hash changed
(version 1: blake2b ids) reads as empty, so no old id is mixed with new ones; the cache entries
keyed by old ids miss once.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

import blake3
import orjson

from graphflow import threads
from graphflow.atomic import write_atomic

NAME = "content-ids.json"
MAX_ENTRIES = 20_000  # the oldest go first beyond this: ~1.5 MB of JSON
_ID = re.compile(r"(dir:)?[0-9a-f]{40}")
VERSION = 2  # 1 held blake2b ids
ID_BYTES = 20  # 160 bits, as git's object ids
_BUFFER = 16 << 20  # per read, where a file cannot be mapped


def hash_threads() -> int:
    """Threads for one file's hash: those this process chose for torch (``graphflow.threads``),
    which already account for a CPU quota and a busy machine; one where nothing chose."""
    choice = threads.applied()
    return 1 if choice is None else max(1, choice.threads)


def hash_file(f: BinaryIO, size: int) -> str:
    """The content id of an open file's first ``size`` bytes (its size when it was opened: a file
    that grows meanwhile is not read past it). The file is memory-mapped and hashed in one call,
    which holds no GIL from start to end: read in pieces, the hashing thread would need the GIL back
    after every piece, and wait up to the interpreter's switch interval each time for a thread busy
    in Python (the loaders' imports, ``while_hashing``), slower on a busy machine than the old hash.
    The mapping is the one risk the loader takes too (safetensors maps the same file): a file
    truncated while mapped ends the process. A file that cannot be mapped, or has shrunk since it
    was opened, is read in pieces instead."""
    h = blake3.blake3(max_threads=hash_threads())
    if size > 0:
        try:
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                h.update(view)
            return h.hexdigest(length=ID_BYTES)
        except (OSError, ValueError):  # not mappable (some FUSE and network mounts), or shorter than size
            h = blake3.blake3(max_threads=hash_threads())
    buf = bytearray(min(_BUFFER, max(size, 1)))
    view = memoryview(buf)
    left = size
    while left > 0:
        n = f.readinto(view[:min(len(buf), left)])
        if not n:
            break
        h.update(view[:n])
        left -= n
    return h.hexdigest(length=ID_BYTES)


WARM_BYTES = 256 << 20  # files to hash beyond this: a model, so its loader's imports are worth starting
_while_hashing: list[Callable[[], None]] = []
_while_lock = threading.Lock()
T = TypeVar("T")


def while_hashing(fn: Callable[[], None]) -> None:
    """Work to do while a model's files are hashed: once per process, at the first hash of more
    than ``WARM_BYTES``, in the waiting thread while another thread hashes. A fresh process must
    hash a 2 GB folder before its first step and then spends seconds importing torch and the model
    libraries; the hash runs without the GIL, the imports mostly with it, so on two cores the one
    hides behind the other. The node library registers its loaders' imports here. Best effort:
    an exception is dropped (the node that needs the import meets it again, and reports it)."""
    with _while_lock:
        _while_hashing.append(fn)


def overlapped(hash_all: Callable[[], T], size: int) -> tuple[T, float]:
    """``hash_all()``, which will read ``size`` bytes not hashed before; beside it, in this thread,
    whatever ``while_hashing`` registered, if the bytes are many enough. Returns its value and the
    seconds the hash ran beside that work (0 when nothing ran beside it). The hash's exception, if
    any, is raised here."""
    with _while_lock:
        pending = _while_hashing[:] if size >= WARM_BYTES else []
        if pending:
            _while_hashing.clear()
    if not pending:
        return hash_all(), 0.0
    out: dict[str, Any] = {}

    def work() -> None:
        t = time.perf_counter()
        try:
            out["value"] = hash_all()
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e
        out["seconds"] = time.perf_counter() - t

    t0 = time.perf_counter()
    worker = threading.Thread(target=work, name="graphflow-content-ids", daemon=True)
    worker.start()
    for fn in pending:
        try:
            fn()
        except Exception:
            pass
    beside = time.perf_counter() - t0
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"], min(beside, out["seconds"])


def hash_bytes(data: bytes) -> str:
    """The content id of bytes in memory: what ``hash_file`` gives for a file holding them."""
    return blake3.blake3(data).hexdigest(length=ID_BYTES)


def file_key(st: os.stat_result) -> str:
    """A file's identity on this machine, as the store's key."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _check(ids: dict[str, str]) -> str:
    return hashlib.blake2b(orjson.dumps(ids), digest_size=16).hexdigest()


class ContentIdStore:
    """``folder``/content-ids.json: file identity → content id."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / NAME
        self._ids: dict[str, str] | None = None
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        """What is on disk, or {} for a missing, unreadable or corrupt store."""
        try:
            data = orjson.loads(self.path.read_bytes())
            ids = data["ids"]
            if data.get("version") != VERSION or not isinstance(ids, dict) or data.get("check") != _check(ids):
                return {}
            if not all(isinstance(k, str) and isinstance(v, str) and _ID.fullmatch(v) for k, v in ids.items()):
                return {}
            return ids
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def get(self, key: str) -> str | None:
        with self._lock:
            if self._ids is None:
                self._ids = self._read()
            return self._ids.get(key)

    def put(self, key: str, cid: str) -> None:
        """Remember one id, merged with what other processes wrote meanwhile. A folder that cannot
        be written (read-only, full) leaves the id remembered in this process only."""
        with self._lock:
            ids = self._read()
            ids.update(self._ids or {})
            ids[key] = cid
            while len(ids) > MAX_ENTRIES:
                ids.pop(next(iter(ids)))
            self._ids = ids
            try:  # the disk cache makes its folder at its first entry; this may come first
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, orjson.dumps({"version": VERSION, "check": _check(ids), "ids": ids}))
            except OSError:
                pass
