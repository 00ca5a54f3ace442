"""Sizes as people write them (``500M``, ``4G``) and as they read them (``3.9 GiB``), and the
defaults stated in bytes once: the disk cache's limit and the server's largest request body."""

from __future__ import annotations

import re
from decimal import Decimal

DEFAULT_CACHE_BYTES = 4 << 30
"""The disk cache's default size limit (``Executor(cache_max_size=…)``, ``--cache-max-size``, ``cache --prune``)."""
DEFAULT_BODY_BYTES = 16 << 20
"""The server's default largest request body (``--max-body``)."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:I?B)?|B)?\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from ``500M``, ``4G``, ``1.5T``, ``4GiB`` or plain ``1048576`` (K, M, G, T are powers of
    1024, in either case); a ValueError that says what is accepted otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text}: must not be negative")
        return text
    m = _SIZE.fullmatch(str(text))
    if m is None or (m[2] is None and "." in m[1]):
        raise ValueError(
            f"invalid size {text!r}: give a number of bytes or a number with K, M, G or T (powers of 1024), e.g. 500M, 4G, 1.5T"
        )
    return int(Decimal(m[1]) * _UNITS[(m[2] or "").upper()])


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def short_size(n: int) -> str:
    """``4G``, ``16M``: a whole size the way a flag takes it (for help texts)."""
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
