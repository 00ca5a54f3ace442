"""Ctrl-C during ``Executor.run``: the first interrupt cancels the run instead of raising wherever
its thread happens to be, so nothing is left half-done; the way ``asyncio.run`` treats Ctrl-C."""

from __future__ import annotations

# _signal: the C functions under signal.signal/getsignal, whose enum conversions (an exception per
# call for a Python handler) were a tenth of a cached run's fixed cost; same arguments, same values
import _signal
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["interrupt_cancels"]


@contextmanager
def interrupt_cancels(cancel_event: threading.Event) -> Iterator[None]:
    """While ``run`` executes (or waits) on the main thread with Python's default SIGINT handler
    (a script, Jupyter's kernel during a cell), the first SIGINT sets ``cancel_event``; the
    KeyboardInterrupt is raised once the run has stopped. A second SIGINT raises at once. Any
    other handler (the CLI's, a test's) is left in place: it chose what an interrupt means."""
    if (threading.current_thread() is not threading.main_thread()
            or _signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    hits: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)
        if not cancel_event.is_set():  # nothing more: this thread may hold the executor's lock
            cancel_event.set()
        sys.stderr.write("\ninterrupted: the run stops at its next node or loop step (interrupt again to stop at once)\n")

    _signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        _signal.signal(signal.SIGINT, signal.default_int_handler)
    if hits:
        raise KeyboardInterrupt
