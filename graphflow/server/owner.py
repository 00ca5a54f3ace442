"""One output folder, one server. Two servers on one ``--out`` (one per GPU, say, each with its
own ``--db``) would each take the other's run folders for leftovers; so a server holds an
exclusive lock on ``OUT/.graphflow-server.lock`` for its whole life, and a second one is refused
at start, told who holds it. The lock is the kernel's (``flock``): it ends with the process, so a
server killed with ``kill -9`` leaves nothing that stops the next one."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

LOCK_NAME = ".graphflow-server.lock"


class FolderTaken(Exception):
    """Another live server owns the output folder."""


class Ownership:
    def __init__(self, out: Path, record: dict) -> None:
        """Raises FolderTaken naming the owner (its pid and database) if another server holds ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                owner = {}
            os.close(fd)
            raise FolderTaken(f"{out} is the output folder of another graphflow server (pid {owner.get('pid', '?')}, "
                              f"database {owner.get('db', '?')}): give each server its own --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), **record}).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays, harmless, for the next owner
            self._fd = None
