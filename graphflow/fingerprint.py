"""What makes a result reusable: a fixed-size hash over what a node is and what it reads.

A node's fingerprint is the hash of its type, its code version (from the class's source), its
bound input values or its producers' fingerprints, the context values it declares, and the
content of the files it reads. Equal fingerprints promise equal outputs; nothing else decides a
cache hit. Files are identified by content, not by path or time, so a cache can be shared between
machines and workers that mount the same files elsewhere.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
from pathlib import Path
from typing import Any

import orjson

DIGEST = 20  # bytes of blake2b: 160 bits, as git's object ids


def digest(obj: Any) -> str:
    """The hash of a JSON-like value (keys sorted, so dict order does not matter)."""
    try:
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=_default)
    except TypeError:  # an int beyond 64 bits, which orjson does not write
        data = repr(obj).encode()
    return hashlib.blake2b(data, digest_size=DIGEST).hexdigest()


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (tuple, Path)):
        return list(obj) if isinstance(obj, tuple) else str(obj)
    return repr(obj)


_CODE: dict[type, str] = {}


def code_version(cls: type) -> str:
    """A hash of a node class's source: its declarations and ``run``. Editing the class invalidates
    the results of its old code without anyone remembering to bump ``version``. Where no source is
    available (a class built at run time), the bytecode of ``run`` stands in."""
    v = _CODE.get(cls)
    if v is None:
        try:
            text = inspect.getsource(cls)
        except (OSError, TypeError):
            code = cls.run.__code__
            text = repr((code.co_code, code.co_consts, code.co_names))
        v = _CODE[cls] = hashlib.blake2b(text.encode(), digest_size=DIGEST).hexdigest()
    return v


# --- file content ----------------------------------------------------------------------------

_CHUNK = 1 << 20
_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def _file_hash(path: str, st: os.stat_result) -> str:
    """Content hash of one file, remembered per (device, inode, size, mtime_ns): a 4 GB checkpoint
    is read once per process, and again only after it changes."""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    h = hashlib.blake2b(digest_size=DIGEST)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    value = h.hexdigest()
    with _memo_lock:
        _memo[key] = value
    return value


def content_id(path: str | Path) -> str:
    """The identity of a file or folder by content: the same bytes anywhere give the same id; a
    folder's id covers its files' relative names and contents. A missing path has an id of its own
    (the node that reads it reports the error when it runs)."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError:
        return "missing:" + digest(p)
    if not os.path.isdir(p):
        return _file_hash(p, st)
    entries = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            entries.append((os.path.relpath(full, p), _file_hash(full, os.stat(full))))
    return "dir:" + digest(entries)
