"""A sweep joining a Ray cluster started the way users start one (`ray start --head`, here on this
machine's loopback, with token authentication), through the CLI: `graphflow sweep --ray HOST:PORT`.
The cluster is stopped afterwards whatever happens."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from graphflow.sweep.items import read_index

pytest.importorskip("ray", reason="Ray is the optional extra graphflow[ray]; `make test` installs it")

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = str(ROOT / "workflows" / "txt2img.json")
RAY = str(Path(sys.executable).parent / "ray")
GRAPHFLOW = str(Path(sys.executable).parent / "graphflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """`ray start --head` with two CPUs and a fresh token; yields (address, env)."""
    if not shutil.which(RAY):
        pytest.skip("the `ray` command is not installed beside this Python")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_cli_sweep_joins_a_ray_start_head_cluster(tmp_path, tiny_model, cluster):
    address, env = cluster
    p = subprocess.run([GRAPHFLOW, "sweep", TXT2IMG, "--set", f"model={tiny_model}", "--set", "steps=2",
                        "--grid", "seed=[0,1,2]", "--ray", address, "--out", "sw", "--no-cache"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    index = read_index(tmp_path / "sw")
    assert sorted(r["item"] for r in index) == [0, 1, 2] and {r["status"] for r in index} == {"ok"}
    assert len({r["worker"] for r in index}) == 2  # two one-CPU actors on the two-CPU cluster
    assert all((tmp_path / "sw" / r["files"][0]).stat().st_size > 0 for r in index)
    assert (tmp_path / "sw" / "contact_sheet.png").exists()
    # the cluster outlives the sweep (it only disconnected): a second sweep joins it again
    again = subprocess.run([GRAPHFLOW, "sweep", TXT2IMG, "--set", f"model={tiny_model}", "--set", "steps=2",
                            "--grid", "seed=[0,1,2,3]", "--ray", address, "--out", "sw", "--no-cache", "--resume"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(r["item"] for r in read_index(tmp_path / "sw")) == [0, 1, 2, 3]


def test_unreachable_cluster_exits_2_naming_it(tmp_path, tiny_model):
    port = free_port()  # nothing listens there
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    code = ("import sys; from graphflow.cli import main\n"
            f"sys.exit(main(['sweep', {TXT2IMG!r}, '--set', 'model={tiny_model}', '--grid', 'seed=[0]', "
            f"'--ray', '127.0.0.1:{port}', '--out', 'o']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_cli_ray_alone_starts_ray_and_ctrl_c_stops_it_cleanly(tmp_path, tiny_model):
    """`--ray` alone: a Ray started for the sweep and stopped after it. Ctrl-C after the first item:
    exit 130, the index holds whole lines of finished items only, no Ray process is left."""
    import signal
    import time

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([GRAPHFLOW, "sweep", TXT2IMG, "--set", f"model={tiny_model}", "--set", "steps=30",
                             "--grid", "seed=[0,1,2,3,4,5,6,7]", "--ray", "--workers", "2", "--out", "sw", "--no-cache"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    index = tmp_path / "sw" / "index.jsonl"
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not (index.exists() and index.read_bytes().count(b"\n") >= 1):
            time.sleep(0.2)
        assert index.exists(), "no item finished in time"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    done = read_index(tmp_path / "sw")
    assert 1 <= len(done) < 8 and all(r["status"] == "ok" for r in done)
    assert index.read_bytes().endswith(b"\n")
    assert all((tmp_path / "sw" / r["files"][0]).exists() for r in done)
    leftover = subprocess.run(["pgrep", "-f", "ray::SweepWorker"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # the sweep's actors are gone with its Ray
