"""Python's cycle collector, tuned down while graphflow builds and runs big graphs."""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_gc_passes():
    """A big graph holds many small objects; each pass of Python's cycle collector scans them all,
    which made the executor's cost grow faster than the node count. Collect less often while the
    executor plans and runs (tensors are freed by reference counting, not by these passes)."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(_gc_saved[0], 50_000), *_gc_saved[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
