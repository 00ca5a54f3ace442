"""The server under load and faults, as `graphflow serve` processes on free loopback ports: 200
submissions from 20 clients, kill -9 with runs queued, clients that drop mid-stream, and a
txt2img through the server equal to the same run through the Python API."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest

from graphflow.client import Client
from tests.server_helpers import ProcessServer, servers, wait_for  # noqa: F401 (servers: a fixture)
from tests.server_nodes import gate_workflow, naps_workflow

pytestmark = pytest.mark.slow


def test_200_submissions_from_20_clients(tmp_path, servers):
    s = ProcessServer(tmp_path)
    servers.append(s)
    jobs = list(range(200))

    def client_work(k: int) -> list[tuple[int, str]]:
        c = Client(s.url, timeout=60)
        return [(n, c.submit("hello", {"n": n % 50 + 1})) for n in jobs[k::20]]

    with ThreadPoolExecutor(20) as pool:
        submitted = [x for part in pool.map(client_work, range(20)) for x in part]
    assert len(submitted) == 200 and len({rid for _, rid in submitted}) == 200
    c = Client(s.url, timeout=60)
    runs = {rid: c.wait(rid, timeout=120) for _, rid in submitted}
    for n, rid in submitted:  # each run did its own work: no loss, no duplication, no mix-up
        r = runs[rid]
        m = n % 50 + 1
        assert r["status"] == "done" and r["attempts"] == 1
        assert r["outputs"]["partial_sums"][-1] == m * (m - 1) / 2
        assert r["params"] == {"n": m}
    history = c.history(limit=1000)
    assert len(history) == 200 and {r["id"] for r in history} == set(runs)
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 200


def test_kill_9_with_10_queued_then_restart_completes_them(tmp_path, servers):
    gate = tmp_path / "open"
    s = ProcessServer(tmp_path)
    servers.append(s)
    c = Client(s.url)
    blocker = c.submit(gate_workflow(str(gate)))
    wait_for(lambda: c.run(blocker)["status"] == "running")
    queued = [c.submit("hello", {"n": n}) for n in range(1, 11)]
    done_before = c.submit("hello", {"n": 1})  # queued too; cancelled before the kill
    assert c.cancel(done_before) == "cancelled"
    assert [c.run(i)["status"] for i in queued] == ["queued"] * 10
    s.kill()
    assert s.proc.returncode == -9

    gate.touch()
    s2 = ProcessServer(tmp_path)
    servers.append(s2)
    c = Client(s2.url)
    b = c.wait(blocker, timeout=60)
    assert (b["status"], b["attempts"], b["interruptions"]) == ("done", 2, 1)  # interrupted, re-queued once, finished
    assert c.events(blocker).__next__()["type"] == "requeued"
    runs = [c.wait(i, timeout=60) for i in queued]
    assert [r["status"] for r in runs] == ["done"] * 10
    assert [r["outputs"]["partial_sums"][-1] for r in runs] == [n * (n - 1) / 2 for n in range(1, 11)]
    assert c.run(done_before)["status"] == "cancelled"
    assert len(c.history(limit=100)) == 12
    assert blocker in [r["id"] for r in c.history(limit=100)]


def test_sigterm_puts_the_running_run_back_in_the_queue(tmp_path, servers):
    gate = tmp_path / "open"
    s = ProcessServer(tmp_path)
    servers.append(s)
    c = Client(s.url)
    rid = c.submit(gate_workflow(str(gate)))
    wait_for(lambda: c.run(rid)["status"] == "running")
    t0 = time.monotonic()
    assert s.stop() in (0, -15)  # uvicorn stops gracefully, then exits by the signal it got
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in s.stderr()
    gate.touch()
    s2 = ProcessServer(tmp_path)
    servers.append(s2)
    r = Client(s2.url).wait(rid, timeout=60)
    assert (r["status"], r["attempts"], r["interruptions"]) == ("done", 1, 0)  # a clean stop is not an interruption


def test_a_run_killed_twice_is_left_interrupted(tmp_path, servers):
    gate = tmp_path / "never"
    for attempt in (1, 2):
        s = ProcessServer(tmp_path)
        servers.append(s)
        c = Client(s.url)
        if attempt == 1:
            rid = c.submit(gate_workflow(str(gate)))
        wait_for(lambda: c.run(rid)["status"] == "running")
        s.kill()
    s = ProcessServer(tmp_path)
    servers.append(s)
    r = Client(s.url).run(rid)
    assert (r["status"], r["attempts"], r["interruptions"]) == ("interrupted", 2, 2)
    assert list(Client(s.url).events(rid, timeout=10))[-1]["status"] == "interrupted"
    s.stop()
    s = ProcessServer(tmp_path)  # a later life: the stream still ends, with the run's end
    servers.append(s)
    assert list(Client(s.url).events(rid, timeout=10))[-1]["status"] == "interrupted"


def test_clients_dropping_mid_stream_disturb_nothing(tmp_path, servers):
    s = ProcessServer(tmp_path)
    servers.append(s)
    c = Client(s.url)
    rid = c.submit(naps_workflow(30, 0.03))
    u = urlparse(s.url)

    def drop_after(n_events: int) -> None:
        sock = socket.create_connection((u.hostname, u.port), timeout=10)
        sock.sendall(f"GET /api/runs/{rid}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        got = b""
        while got.count(b"\n\n") < n_events + 1:
            got += sock.recv(4096)
        sock.shutdown(socket.SHUT_RDWR)  # gone, mid-stream, without a word
        sock.close()

    full: list[list[dict]] = []

    def follow() -> None:
        full.append(list(Client(s.url, timeout=30).events(rid)))

    watchers = [threading.Thread(target=follow) for _ in range(3)]
    droppers = [threading.Thread(target=drop_after, args=(k,)) for k in (2, 5, 9, 14)]
    for t in [*watchers, *droppers]:
        t.start()
    for t in [*watchers, *droppers]:
        t.join(60)
    run = c.wait(rid, timeout=60)
    assert run["status"] == "done" and run["outputs"]["x"] == 29
    assert len(full) == 3
    for events in full:
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert sum(e["type"] == "loop_step" for e in events) == 30 and events[-1]["status"] == "done"
    # and the server still answers
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", "/api/status")
    assert conn.getresponse().status == 200
    conn.close()
    assert c.wait(c.submit("hello", {"n": 3}), timeout=30)["status"] == "done"


def test_txt2img_through_the_server_equals_the_python_api(tmp_path, servers):
    """The same weights, seed and settings give the same picture, byte for byte in its pixels."""
    import numpy as np
    from PIL import Image

    import graphflow

    s = ProcessServer(tmp_path)
    servers.append(s)
    c = Client(s.url, timeout=120)
    rid = c.submit("txt2img", {"seed": 5, "steps": 4})
    t0 = time.monotonic()
    run = c.wait(rid, timeout=300)
    assert run["status"] == "done", run
    assert time.monotonic() - t0 < 300
    png = [f for f in run["files"] if f["name"].endswith(".png")]
    assert len(png) == 1 and run["outputs"]["image"]["tensor"]["shape"] == [1, 3, 64, 64]
    got = np.asarray(Image.open(c.download(rid, png[0]["name"], tmp_path)))

    ex = graphflow.Executor(out_dir=tmp_path / "api")
    r = ex.run(graphflow.load("workflows/txt2img.json").with_params(seed=5, steps=4))
    want = np.asarray(Image.open(r["files"][0]))
    assert got.shape == (64, 64, 3) and np.array_equal(got, want)
    # the embedded model draws a red circle on a blue background: centre red, corner blue
    centre, corner = got[32, 32].astype(int), got[2, 2].astype(int)
    assert centre[0] > centre[2] + 60 and corner[2] > corner[0] + 60
