"""What the Ray tests share: a home folder of their own (Ray writes ~/.ray/auth_token, which changes
how every later cluster on the machine is joined; the user's must stay as it was), and a
`ray start --head` cluster that is stopped by its own process, not by `ray stop --force`, which
would stop every Ray of every user of the machine."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")
REAL_HOME = Path.home()  # read when the tests are collected, before any fixture moves HOME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dot_ray(home: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under home/.ray: (size, mtime in ns, sha256)."""
    root = home / ".ray"
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def own_home(prefix: str = "graphflow-ray-home-"):
    """HOME set to a new empty folder (and the user's ~/.ray checked unchanged afterwards); yields it."""
    before = dot_ray(REAL_HOME)
    home = Path(tempfile.mkdtemp(prefix=prefix))
    names = ("HOME", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
    saved = {k: os.environ.get(k) for k in names}  # restored exactly: ray.init() sets RAY_AUTH_MODE for good
    for k in names[1:]:
        os.environ.pop(k, None)
    os.environ["HOME"] = str(home)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(home, ignore_errors=True)
    assert dot_ray(REAL_HOME) == before, f"{REAL_HOME / '.ray'} changed"


@contextlib.contextmanager
def ray_head(env: dict[str, str], cwd: Path, cpus: int = 2, timeout: float = 180):
    """`ray start --head --block` on a free loopback port (HOME, RAY_AUTH_* from ``env``); yields
    its address. Stopped by SIGTERM to that process, which stops the node it started; its process
    group killed if it lingers; then no process of its session may be left."""
    if not shutil.which(RAY):
        pytest.skip("the `ray` command is not installed beside this Python")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="gfray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus}",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    proc = subprocess.Popen(cmd, env={**env, "RAY_USAGE_STATS_ENABLED": "0"}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not started.is_set() and proc.poll() is None and time.monotonic() < deadline:
            started.wait(0.2)
        assert started.is_set(), "".join(lines)[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        reader.join(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _session_processes(temp):
            time.sleep(0.5)
        left = _session_processes(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def _session_processes(temp: str) -> str:
    return subprocess.run(["pgrep", "-af", temp], capture_output=True, text=True).stdout.strip()


def new_token() -> str:
    return secrets.token_hex(32)
