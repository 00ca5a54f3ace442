"""Retention: the server keeps the newest ended runs (``keep_runs``) and none older than
``keep_days``, deleting each pruned run's row and files together; DELETE /api/runs/{id} removes
one; folders left by a prune cut short are swept at start. Real uvicorn servers on loopback
ports, the real SQLite store, real files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from graphflow.client import Client, ServerError
from tests.server_helpers import ThreadServer, wait_for
from tests.server_nodes import gate_workflow


def _done(client: Client, n: int) -> list[str]:
    """``n`` runs of hello.json, one after another, each ended before the next is queued."""
    ids = []
    for k in range(n):
        run_id = client.submit("hello", {"n": k + 1})
        assert client.wait(run_id, timeout=30)["status"] == "done"
        ids.append(run_id)
    return ids


def _folder(srv: ThreadServer, run_id: str) -> Path:
    return srv.tmp / "out" / "runs" / run_id


def test_the_newest_ended_runs_are_kept_with_their_files(tmp_path):
    srv = ThreadServer(tmp_path, keep_runs=3)
    try:
        c = Client(srv.url)
        ids = _done(c, 5)
        kept = [r["id"] for r in c._json("GET", "/api/runs")["runs"]]
        assert kept == ids[:1:-1]  # the newest three, newest first
        for old in ids[:2]:
            assert not _folder(srv, old).exists()
            with pytest.raises(ServerError) as e:
                c.run(old)
            assert e.value.status == 404
        for new in ids[2:]:
            assert (_folder(srv, new) / "sum.txt").is_file()
        assert srv.store.counts() == {"done": 3}
    finally:
        srv.stop()


def test_runs_older_than_keep_days_go_and_running_ones_stay(tmp_path):
    srv = ThreadServer(tmp_path, keep_runs=None, keep_days=1)
    try:
        c = Client(srv.url)
        old, recent = _done(c, 2)
        srv.store._run("UPDATE runs SET finished = ? WHERE id = ?", (time.time() - 2 * 86400, old))
        gate = tmp_path / "gate"
        waiting = c.submit(gate_workflow(str(gate)))  # running (held at its gate) while the next prune happens
        wait_for(lambda: c.run(waiting)["status"] == "running")
        srv.store._run("UPDATE runs SET created = ? WHERE id = ?", (time.time() - 3 * 86400, waiting))
        with pytest.raises(ServerError) as e:
            c.delete(waiting)
        assert e.value.status == 409
        gate.write_text("open")
        assert c.wait(waiting, timeout=30)["status"] == "done"  # its end prunes: the 2-day-old run goes
        assert [r["id"] for r in c._json("GET", "/api/runs")["runs"]] == [waiting, recent]
        assert not _folder(srv, old).exists() and _folder(srv, recent).exists()
    finally:
        srv.stop()


def test_delete_removes_an_ended_run_and_its_files(tmp_path):
    srv = ThreadServer(tmp_path)
    try:
        c = Client(srv.url)
        (run_id,) = _done(c, 1)
        url = c.run(run_id)["files"][0]["url"]
        c.delete(run_id)
        assert not _folder(srv, run_id).exists()
        for call in (lambda: c.run(run_id), lambda: c.delete(run_id), lambda: c._request("GET", url).close()):
            with pytest.raises(ServerError) as e:
                call()
            assert e.value.status == 404
    finally:
        srv.stop()


def test_a_prune_cut_short_is_finished_at_start_and_unlisted_folders_are_left_alone(tmp_path):
    """A prune killed between deleting rows and folders leaves folders its database lists as
    deleting: the next start removes those. A run folder the database never listed (another
    server's, the user's) is not the server's to remove, whatever its name."""
    from graphflow.server.store import Store

    srv = ThreadServer(tmp_path)
    try:
        pruned, kept = _done(Client(srv.url), 2)
    finally:
        srv.stop()
    runs = tmp_path / "out" / "runs"
    store = Store(tmp_path / "out" / "graphflow.db")
    assert store.prune(keep=1, ended_before=None) == [pruned]  # the older one; the kill comes before its folder goes
    store.close()
    assert (runs / pruned).is_dir()
    stranger = runs / ("ab" * 16)
    stranger.mkdir()
    (stranger / "picture.png").write_bytes(b"another server's")
    (runs / "notes").mkdir()
    srv = ThreadServer(tmp_path)
    try:
        assert not (runs / pruned).exists()
        assert (stranger / "picture.png").read_bytes() == b"another server's"
        assert (runs / kept / "sum.txt").is_file() and (runs / "notes").is_dir()
        assert Client(srv.url).run(kept)["status"] == "done"
        assert srv.store.deleting() == []
    finally:
        srv.stop()


def test_serve_refuses_bad_retention_flags(tmp_path):
    import subprocess
    import sys

    from tests.server_helpers import ROOT

    for flags in (["--keep-runs", "0"], ["--keep-runs", "many"], ["--keep-days", "-1"]):
        p = subprocess.run([sys.executable, "-m", "graphflow.cli", "serve", "--port", "0", "--out", str(tmp_path), *flags],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 2 and "--keep-runs takes a number" in p.stderr, (flags, p.stderr)
