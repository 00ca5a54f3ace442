"""The process that runs the server's workflows, so that every run can be stopped.

A run is cancelled cooperatively, between nodes and loop steps; a node stuck in C code (a read
that never returns, a sleep, an allocation without end) never reaches that point, and a thread
cannot be killed. A process can: the server's queue thread (``worker.Worker``) sends each run
here, relays what comes back, and kills this process when a run will not stop, then starts a
fresh one. Loaded models and the caches live here, between runs, as they lived in the server
before.

The process is spawned, never forked (the server has threads, which a fork would copy half-way),
so what builds its executor and registry travels as a ``WorkerRecipe`` of picklable callables.
Messages are tuples over one ``multiprocessing`` pipe; the process sends only from the thread
that relays the current run, and reads only on its main thread.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: how long a fresh process may take to import and build its executor before it counts as failed
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class WorkerRecipe:
    """How the worker process builds what it runs with: each a picklable callable (a module-level
    function, or ``functools.partial`` of one), called in the process."""

    make_executor: Callable[[], Any]
    make_registry: Callable[[], Any]


class WorkerDied(Exception):
    """The worker process ended without being asked to (killed by the system, crashed)."""


def _serve(conn, recipe: WorkerRecipe) -> None:
    """The process's main: build the executor once, then run what the pipe asks, one at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server decides what stops
    from graphflow.problems import ValidationFailed
    from graphflow.server.outputs import storable_summary
    from graphflow.server.run_events import event_dict

    executor, registry = recipe.make_executor(), recipe.make_registry()
    send_lock = threading.Lock()
    current: dict[str, Any] = {}

    def send(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    def relay(run_id: str, handle: Any, folder: Path) -> None:
        try:
            for e in handle.events():
                d = event_dict(e)
                if d is not None:
                    send(("event", run_id, d))
            result = handle.result()
            send(("result", run_id, *storable_summary(result, folder, run_id, handle.bound.checked.doc.outputs)))
        except BaseException as e:  # a bug here must end the run, not leave the server waiting
            send(("error", run_id, f"{type(e).__name__}: {e}"))
        finally:
            current.clear()

    send(("ready", os.getpid()))
    try:
        while True:
            msg = conn.recv()
            kind = msg[0]
            if kind == "run":
                _, run_id, wf, params, folder = msg
                from graphflow.graph.workflow import Workflow

                try:
                    # bound by the executor: within its limits, every file inside its read roots
                    handle = executor.submit(Workflow.from_dict(wf, registry, "<request>", executor.limits), params, out_dir=folder)
                except ValidationFailed as e:
                    send(("invalid", run_id, [p.to_dict() for p in e.problems]))
                    continue
                current.update(run_id=run_id, handle=handle)
                threading.Thread(target=relay, args=(run_id, handle, Path(folder)), daemon=True).start()
            elif kind == "cancel":
                if current.get("run_id") == msg[1]:
                    current["handle"].cancel()
            elif kind == "stop":
                return
    except (EOFError, OSError):  # the server is gone: so is the reason to be
        pass
    finally:
        os._exit(0)  # a run still in C code would keep an orderly exit waiting


def _rss(pid: int) -> int:
    """Resident memory of a process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class WorkerProcess:
    """The server's side of the process: start it, send it runs, read what it says, stop or kill
    it. Used by one thread (the queue's), except ``cancel``, which only sets a flag."""

    def __init__(self, recipe: WorkerRecipe) -> None:
        self.recipe = recipe
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        #: how many times a process was killed (tests and /api/health read it)
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def ensure(self) -> None:
        """A running process, started now if there is none (raises WorkerDied if it cannot start)."""
        if self.alive():
            return
        self._discard()
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.recipe), name="graphflow-worker", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        deadline = time.monotonic() + START_TIMEOUT
        while not parent.poll(0.1):
            if not proc.is_alive() or time.monotonic() > deadline:
                self.kill()
                raise WorkerDied(f"the worker process did not start (exit code {proc.exitcode})")
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            msg = None
        if not msg or msg[0] != "ready":
            self.kill()
            raise WorkerDied("the worker process did not start")

    def send(self, msg: tuple) -> None:
        try:
            self._conn.send(msg)
        except (OSError, ValueError, AttributeError) as e:
            raise WorkerDied(f"the worker process is gone ({e})") from None

    def receive(self, timeout: float) -> tuple | None:
        """The next message, None if none came within ``timeout``; WorkerDied if the process ended."""
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, OSError):
            pass
        else:
            if self._proc.is_alive():
                return None
        self._proc.join(1.0)
        raise WorkerDied(_how_it_ended(self._proc.exitcode))

    def rss(self) -> int:
        return _rss(self._proc.pid) if self._proc is not None else 0

    def kill(self) -> None:
        """End the process now (SIGKILL): nothing it does can delay this."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10.0)
            self.restarts += 1
        self._discard()

    def close(self, timeout: float = 5.0) -> None:
        """Ask the idle process to leave; killed if it does not within ``timeout``."""
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(("stop",))
            except (OSError, ValueError):
                pass
            self._proc.join(timeout)
        if self._proc is not None and self._proc.is_alive():
            self.kill()
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the worker process was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"the worker process exited with code {exitcode}"
