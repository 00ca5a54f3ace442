"""The one way graphflow writes a file: to a temporary name in the same folder, then renamed over
the target, the temporary removed on any failure. A reader never sees half a file, and a failed
or interrupted write leaves nothing behind."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object] | bytes) -> Path:
    """``write`` is the bytes, or a function that writes to the open temporary file."""
    path = Path(path)
    # unique across threads, processes and machines sharing a folder (a network cache)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{secrets.token_hex(6)}")
    try:
        # O_EXCL | O_NOFOLLOW: never through a link or file someone placed at the temporary name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
