"""A real Ctrl-C (SIGINT) or SIGTERM (what servers, Ray and container runtimes send) to a running
`graphflow run` stops it at the next loop step, exit 130 or 143, and what finished before is in
the disk cache for the next run; nothing half-made is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

PLUGIN = '''
import time
from pydantic import Field
from graphflow import Inputs, Node, Outputs

class Slow(Node, name="Slow", category="test"):
    """Marks that it started, then works for 0.2 s: 20 of them give the test time to interrupt."""
    class In(Inputs):
        marker: str = Field(description="file to create when running")
        i: int = Field(0)
    class Out(Outputs):
        i: int = Field()
    def run(self, inp, ctx):
        open(inp.marker, "a").close()
        t = time.monotonic()
        while time.monotonic() - t < 0.2:
            time.sleep(0.01)
        return {"i": inp.i}
'''


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_a_run_cleanly(tmp_path, sig, code, name):
    (tmp_path / "slow_nodes.py").write_text(PLUGIN)
    marker = tmp_path / "started"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({
        "format": 1,
        "nodes": {
            "r": {"type": "Range", "inputs": {"stop": 20}},
            "first": {"type": "Math", "inputs": {"a": 41, "b": 1}},
            "loop": {"type": "Loop", "over": {"from": "r.values"}, "carry": {"x": 0},
                     "body": {"s": {"type": "Slow", "inputs": {"marker": str(marker), "i": {"from": "loop.item"}}}},
                     "next": {"x": {"from": "s.i"}}},
        },
        "outputs": {"first": "first.result", "x": "loop.x"},
    }))
    cmd = [sys.executable, "-m", "graphflow.cli", "run", str(wf), "--plugin", str(tmp_path / "slow_nodes.py"),
           "--cache-dir", str(tmp_path / "cache"), "--profile", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the loop never started"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"{name}: cancelling after the current step" in err and "Traceback" not in err
    from graphflow.cache.disk import DiskCache

    # 'r' and 'first' finished and were stored; the cancelled loop left nothing half-made behind
    cache = DiskCache(tmp_path / "cache")
    assert len(cache.entries()) == 2
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]

    # the next run reuses what finished before the signal, and completes the loop
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    status = {row[0]: row[-1] for row in (line.split() for line in again.stderr.splitlines()) if len(row) == 6}
    assert status["first"] == "disk" and status["loop"] == "ran" and "x: 19" in again.stdout
