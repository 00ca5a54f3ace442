"""Real servers for the tests: uvicorn on a free loopback port, in this process (a thread) for the
quick API tests, or as a `graphflow serve` process for the load and kill -9 tests. Both are always
stopped, within bounded time."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = str(ROOT / "tests" / "server_nodes.py")


class ThreadServer:
    """create_app + uvicorn.Server on a socket bound to 127.0.0.1:0, served from a thread."""

    def __init__(self, tmp: Path, **settings) -> None:
        from graphflow.node.limits import Limits
        from graphflow.node.registry import default_registry
        from graphflow.options import build_executor, read_roots
        from graphflow.server.app import create_app
        from graphflow.server.settings import LOOPBACK_NAMES, Settings
        from graphflow.server.worker_process import WorkerRecipe
        from graphflow.server.workflow_catalog import shipped_folder

        self.tmp = Path(tmp)
        limits = settings.pop("limits", None) or Limits()
        registry = default_registry([PLUGIN])
        uploads = self.tmp / "out" / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        roots = settings.pop("read_roots", None) or read_roots(registry, [uploads, *settings.pop("allow_read", [])])
        recipe = WorkerRecipe(make_executor=functools.partial(build_executor, str(self.tmp / "out"), limits, {"check_finite": True}, roots),
                              make_registry=functools.partial(default_registry, [PLUGIN]))
        self.settings = Settings(out=self.tmp / "out", db=self.tmp / "out" / "graphflow.db", allowed_hosts=LOOPBACK_NAMES,
                                 workflows=shipped_folder(), read_roots=roots, **settings)
        self.app = create_app(self.settings, recipe, registry, limits)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    @property
    def store(self):
        return self.app.state.store

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


class ProcessServer:
    """`graphflow serve --port 0 …` as a child process; the URL is its first line of output."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None, timeout: float = 60) -> None:
        self.tmp = Path(tmp)
        self.log_path = self.tmp / f"server-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w+")
        cmd = [sys.executable, "-m", "graphflow.cli", "serve", "--port", "0", "--out", str(self.tmp / "out"), "--no-cache",
               "--plugin", PLUGIN, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        line = _readline(self.proc, timeout)
        if not line.startswith("graphflow serve: http"):
            self.kill()
            raise RuntimeError(f"the server did not start: {line!r} {self.stderr()}")
        self.url = line.split()[2]

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def servers():
    """Collects the ProcessServers a test starts, and stops every one of them after it."""
    started: list[ProcessServer] = []
    yield started
    for s in started:
        s.stop()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


def wait_for(predicate, timeout: float = 30, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every)
