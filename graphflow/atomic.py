"""The one way graphflow writes a file: to a temporary name in the same folder, then published
under its name, the temporary removed on any failure. A reader never sees half a file, and a
failed or interrupted write leaves nothing behind. Outputs are never overwritten: ``write_new``
publishes with a hard link, which fails instead of replacing (no check-then-write race between
processes saving into one folder)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

Writer = Callable[[IO[bytes]], object] | bytes


def _temporary(path: Path, write: Writer, dir_fd: int | None = None) -> Path:
    # unique across threads, processes and machines sharing a folder (a network cache); O_EXCL |
    # O_NOFOLLOW: never through a link or file someone placed at the temporary name
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
    except BaseException:
        _unlink(tmp, dir_fd)
        raise
    return tmp


def _unlink(path: Path, dir_fd: int | None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def write_atomic(path: str | Path, write: Writer, *, dir_fd: int | None = None) -> Path:
    """Write ``path`` whole, replacing what is there (a cache entry: same key, same content).
    ``write`` is the bytes, or a function that writes to the open temporary file. With ``dir_fd``
    (an open folder), ``path`` is a name inside that folder: the disk cache writes so, to reach its
    own folder and never one a link planted in its place points to. The rename replaces a link at
    ``path`` itself, never what it points to."""
    path = Path(path)
    tmp = _temporary(path, write, dir_fd)
    try:
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        _unlink(tmp, dir_fd)
    return path


def write_new(folder: str | Path, name: str, write: Writer, *, numbered: bool = False) -> Path:
    """Write a new file in ``folder`` and return its path, never replacing one: ``name`` itself
    if it is free (unless ``numbered``), else ``stem_00001.ext``, ``stem_00002.ext``, ... after the
    highest number present."""
    folder = Path(folder)
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+){re.escape(dot + ext)}$")
    tmp = _temporary(folder / name, write)
    try:
        candidates = [] if numbered else [name]
        n = max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0)
        while True:
            target = folder / (candidates.pop(0) if candidates else f"{stem}_{(n := n + 1):05d}{dot}{ext}")
            try:
                os.link(tmp, target, follow_symlinks=False)
                return target
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)
