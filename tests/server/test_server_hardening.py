"""The red team's findings against `graphflow serve`, each as the case that broke it: runs that
never answer a cancel (stuck in C code, allocating without end, killing their process), pages of
other origins, a second server on one output folder, a database that fails, and inputs that gave
500s. Every server here is real (uvicorn on a loopback port, a spawned worker process, SQLite on
disk); times are bounds on a hang, never measurements."""

from __future__ import annotations

import http.client
import os
import sqlite3
import stat
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from graphflow.client import Client
from tests.server_helpers import ROOT, PLUGIN, ProcessServer, ThreadServer, servers, wait_for  # noqa: F401 (fixture)
from tests.server_nodes import gate_workflow, one_node


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ThreadServer(tmp_path_factory.mktemp("hard"), cancel_grace=1.0)
    yield s
    s.stop()


def _pid(srv) -> int:
    return wait_for(lambda: srv.app.state.worker.process.pid)


def _then_hello_runs(client: Client) -> None:
    later = client.submit("hello", {"n": 3})
    assert client.wait(later, timeout=60)["status"] == "done"


# --- runs that can always be stopped ------------------------------------------------------------


def test_a_run_stuck_in_c_code_is_killed_after_the_grace_and_the_queue_moves_on(srv):
    c = Client(srv.url)
    stuck = c.submit(one_node("Stall"))
    waiting = c.submit("hello", {"n": 4})
    wait_for(lambda: c.run(stuck)["status"] == "running" and srv.app.state.worker._current == stuck)
    first_pid = srv.app.state.worker.process.pid
    wait_for(lambda: any(e["type"] == "node_started" for e in srv.app.state.broker.log(stuck)))
    t0 = time.monotonic()
    assert c.cancel(stuck) == "cancelling"
    run = c.wait(stuck, timeout=30)
    assert time.monotonic() - t0 < 15  # the grace is 1 s; a hang would take the 600 s the node sleeps
    assert run["status"] == "cancelled"
    (err,) = run["errors"]
    assert err["node"] == "n" and err["exc_type"] == "Cancelled"
    assert "did not stop within 1 s of the cancel; its worker process was killed and restarted" in err["message"]
    assert c.wait(waiting, timeout=60)["status"] == "done"  # the next run, on a fresh process
    assert srv.app.state.worker.process.pid != first_pid
    assert "worker_restarted" in [e["type"] for e in c.events(stuck)]


def test_run_timeout_fails_the_run_naming_the_limit(tmp_path):
    s = ThreadServer(tmp_path, run_timeout=1.0, cancel_grace=1.0)
    try:
        c = Client(s.url)
        run = c.wait(c.submit(one_node("Stall")), timeout=60)
        assert run["status"] == "failed"
        (err,) = run["errors"]
        assert err["exc_type"] == "RunTimeout" and "exceeded --run-timeout (1 s)" in err["message"]
        # a run that honours the cancel the timeout sends ends failed too, without a kill
        restarts = s.app.state.worker.process.restarts
        run = c.wait(c.submit(gate_workflow(str(tmp_path / "never"))), timeout=60)
        assert run["status"] == "failed" and run["errors"][-1]["exc_type"] == "RunTimeout"
        assert s.app.state.worker.process.restarts == restarts
        _then_hello_runs(c)
    finally:
        s.stop()


def test_a_run_over_worker_memory_is_killed_and_failed(tmp_path):
    s = ThreadServer(tmp_path, worker_memory=600 << 20)
    try:
        c = Client(s.url)
        run = c.wait(c.submit(one_node("Hog")), timeout=120)
        assert run["status"] == "failed"
        (err,) = run["errors"]
        assert err["node"] == "n" and err["exc_type"] == "WorkerMemory"
        assert err["type"] == "Hog" and "while node 'n' (Hog) ran, over --worker-memory (600M)" in err["message"], err
        _then_hello_runs(c)
    finally:
        s.stop()


def test_a_run_that_kills_its_worker_is_retried_once_then_failed(srv):
    c = Client(srv.url)
    run = c.wait(c.submit(one_node("Crash")), timeout=120)
    assert run["status"] == "failed" and run["attempts"] == 2
    (err,) = run["errors"]
    assert err["exc_type"] == "WorkerDied" and "killed by SIGKILL" in err["message"] and "second time" in err["message"]
    types = [e["type"] for e in c.events(run["id"])]
    assert types.count("worker_restarted") == 2 and types.count("requeued") == 1
    _then_hello_runs(c)


def test_shutdown_with_a_stuck_run_is_bounded_and_requeues_it(tmp_path, servers):
    s = ProcessServer(tmp_path, "--cancel-grace", "30")
    servers.append(s)
    c = Client(s.url)
    stuck = c.submit(one_node("Stall"))
    wait_for(lambda: c.run(stuck)["status"] == "running")
    time.sleep(0.5)
    t0 = time.monotonic()
    assert s.stop() in (0, -15)  # uvicorn re-raises the SIGTERM once it has shut down; -9 would be the test's kill
    assert time.monotonic() - t0 < 15  # shutdown waits at most 5 s for a run, whatever --cancel-grace says
    s2 = ProcessServer(tmp_path, "--cancel-grace", "1")
    servers.append(s2)
    c2 = Client(s2.url)
    wait_for(lambda: c2.run(stuck)["status"] == "running")
    assert c2.cancel(stuck) == "cancelling"
    assert c2.wait(stuck, timeout=30)["status"] == "cancelled"


# --- results that cannot be stored ----------------------------------------------------------------


def test_an_output_no_json_store_holds_fails_its_node_not_the_server(srv):
    c = Client(srv.url)
    run = c.wait(c.submit(one_node("Huge", "n")), timeout=60)
    assert run["status"] == "failed" and run["outputs"]["n"] is None
    (err,) = run["errors"]
    assert err["node"] == "n" and err["exc_type"] == "Unstorable" and "output 'n' cannot be stored" in err["message"]
    assert c.wait(c.submit(one_node("Huge", "n"), {}), timeout=60)["status"] == "failed"


# --- origins ----------------------------------------------------------------------------------


def test_pages_of_other_origins_get_no_events_and_change_nothing(srv):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    c = Client(srv.url)
    run_id = c.submit(gate_workflow(str(srv.tmp / "never-opened")))
    wait_for(lambda: c.run(run_id)["status"] == "running")
    evil = {"Origin": "https://evil.example"}
    ws_url = srv.url.replace("http", "ws") + "/api/ws"
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url, additional_headers=evil, open_timeout=10).close()
    assert e.value.response.status_code == 403
    with connect(ws_url, additional_headers={"Origin": srv.url}, open_timeout=10) as ws:  # the server's own page
        assert '"status"' in ws.recv(timeout=10)
    r = httpx.get(srv.url + f"/api/runs/{run_id}/events", headers=evil)
    assert r.status_code == 403 and "--allow-origin" in r.json()["detail"]
    # the form a cross-site page can send: urlencoded, with or without its Origin
    form = httpx.post(srv.url + f"/api/runs/{run_id}/cancel", data={"x": "1"})
    assert form.status_code == 415
    assert httpx.post(srv.url + f"/api/runs/{run_id}/cancel", json={}, headers=evil).status_code == 403
    assert httpx.delete(srv.url + f"/api/runs/{run_id}", headers=evil).status_code == 403
    assert c.run(run_id)["status"] == "running"
    assert httpx.post(srv.url + f"/api/runs/{run_id}/cancel", json={}, headers={"Origin": srv.url}).status_code == 202
    assert c.wait(run_id, timeout=30)["status"] == "cancelled"


def test_allow_origin_lets_a_named_page_in(tmp_path):
    s = ThreadServer(tmp_path, cors_origins=["http://localhost:5173"])
    try:
        r = httpx.get(s.url + "/api/runs/" + "0" * 32 + "/events", headers={"Origin": "http://localhost:5173"})
        assert r.status_code == 404  # past the origin check: there is no such run
        assert httpx.get(s.url + "/api/runs/" + "0" * 32 + "/events", headers={"Origin": "http://localhost:5174"}).status_code == 403
    finally:
        s.stop()


# --- one --out, one owner ---------------------------------------------------------------------


def test_a_second_server_on_the_same_out_is_refused_and_deletes_nothing(tmp_path, servers):
    first = ProcessServer(tmp_path)
    servers.append(first)
    c = Client(first.url)
    run_id = c.submit("hello", {"n": 2})
    assert c.wait(run_id, timeout=60)["status"] == "done"
    p = subprocess.run([sys.executable, "-m", "graphflow.cli", "serve", "--port", "0", "--out", str(tmp_path / "out"),
                        "--db", str(tmp_path / "other.db"), "--no-cache", "--plugin", PLUGIN],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert f"{tmp_path / 'out'} is the output folder of another graphflow server (pid {first.proc.pid}" in p.stderr
    assert "give each server its own --out" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "out" / "runs" / run_id / "sum.txt").is_file()
    assert not (tmp_path / "other.db").exists() or os.path.getsize(tmp_path / "other.db") == 0
    # once the first is gone (even by kill -9), the folder is free again
    first.kill()
    second = ProcessServer(tmp_path)
    servers.append(second)
    assert Client(second.url).run(run_id)["status"] == "done"


# --- the database -------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_database_is_refused_at_start_naming_it(tmp_path):
    db = tmp_path / "ro.db"
    sqlite3.connect(db).close()
    db.chmod(stat.S_IRUSR)
    _refused_at_start(tmp_path, db, "readonly")


def test_a_file_that_is_not_a_database_is_refused_at_start_naming_it(tmp_path):
    db = tmp_path / "notes.db"
    db.write_text("my notes, not a database\n" * 100)
    _refused_at_start(tmp_path, db, "not a database")
    assert db.read_text() == "my notes, not a database\n" * 100


@pytest.mark.slow  # the server waits SQLite's 30 s for the lock before it gives up
def test_a_locked_database_is_refused_at_start_naming_it(tmp_path):
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        _refused_at_start(tmp_path, db, "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _refused_at_start(tmp_path, db, word: str) -> None:
    p = subprocess.run([sys.executable, "-m", "graphflow.cli", "serve", "--port", "0", "--out", str(tmp_path / "out"),
                        "--db", str(db), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"graphflow serve: error: cannot write the database {db}" in p.stderr and word in p.stderr
    assert "Traceback" not in p.stderr


def test_a_database_locked_while_serving_is_503_and_health_says_so_then_the_worker_goes_on(tmp_path):
    s = ThreadServer(tmp_path)
    try:
        c = Client(s.url)
        _then_hello_runs(c)
        s.store._db.execute("PRAGMA busy_timeout = 200")  # the server's own waits, shortened for the test
        s.store._timeout = 0.2
        holder = sqlite3.connect(s.settings.db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            r = httpx.post(s.url + "/api/runs", json={"workflow_name": "hello", "params": {"n": 1}})
            assert r.status_code == 503 and str(s.settings.db) in r.json()["detail"] and "locked" in r.json()["detail"]
            h = httpx.get(s.url + "/api/health")
            assert h.status_code == 503 and "locked" in h.json()["problems"]["database"]
            time.sleep(1.5)  # the worker's claims fail meanwhile; its thread must survive them
            assert s.app.state.worker._thread.is_alive()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert httpx.get(s.url + "/api/health").json()["ok"] is True
        _then_hello_runs(c)
    finally:
        s.stop()


# --- no 500 from input --------------------------------------------------------------------------


def _raw(srv, method: str, path: str, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_long_file_names_and_paths_are_404(srv):
    c = Client(srv.url)
    run_id = c.submit("hello", {"n": 2})
    c.wait(run_id, timeout=60)
    assert _raw(srv, "GET", f"/api/files/{run_id}/{'a' * 300}") == 404
    assert _raw(srv, "GET", f"/api/files/{run_id}/{'/'.join(['abcdefghij'] * 600)}") == 404
    assert _raw(srv, "GET", f"/api/files/{run_id}/sum.txt") == 200


def test_a_run_folder_replaced_by_a_link_is_not_followed(srv, tmp_path):
    c = Client(srv.url)
    run_id = c.submit("hello", {"n": 2})
    c.wait(run_id, timeout=60)
    folder = srv.tmp / "out" / "runs" / run_id
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "sum.txt").write_text("not the server's")
    os.rename(folder, tmp_path / "moved")
    folder.symlink_to(secret)
    assert _raw(srv, "GET", f"/api/files/{run_id}/sum.txt") == 404


@pytest.mark.parametrize("value", ["٣", "²", "9" * 5000, "-1", "1.0", "0x1"])
def test_last_event_id_is_parsed_strictly(srv, value):
    c = Client(srv.url)
    run_id = c.submit("hello", {"n": 1})
    c.wait(run_id, timeout=60)
    r = httpx.get(srv.url + f"/api/runs/{run_id}/events", headers={"Last-Event-ID": value.encode()})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]
    ok = httpx.get(srv.url + f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "0"})
    assert ok.status_code == 200 and "run_finished" in ok.text


@pytest.mark.parametrize("params", [False, 0, "", [], None])
def test_params_that_are_not_an_object_are_refused(srv, params):
    before = len(srv.store.history(1000))
    r = httpx.post(srv.url + "/api/runs", json={"workflow_name": "hello", "params": params})
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "params"
    assert len(srv.store.history(1000)) == before


def test_health_reports_the_worker(srv):
    h = httpx.get(srv.url + "/api/health")
    assert h.status_code == 200 and h.json()["ok"] is True and h.json()["problems"] == {}


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_empty_token_is_refused(tmp_path, how):
    args = ["--token", ""] if how == "flag" else []
    env = {**os.environ, "GRAPHFLOW_TOKEN": ""} if how == "env" else {k: v for k, v in os.environ.items() if k != "GRAPHFLOW_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "graphflow.cli", "serve", "--port", "0", "--out", str(tmp_path), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2
    assert f"graphflow serve: error: {'--token' if how == 'flag' else 'GRAPHFLOW_TOKEN'} is empty" in p.stderr


def test_without_a_token_only_loopback_is_served_and_it_says_so(tmp_path, servers):
    s = ProcessServer(tmp_path, "--host", "0.0.0.0")
    servers.append(s)
    assert s.url.startswith("http://127.0.0.1:")
    assert "no --token, so listening on 127.0.0.1 only, not 0.0.0.0" in s.stderr()


# --- the corpus: hostile requests, none of which may get a 500 ------------------------------------


def _deep(levels: int) -> bytes:
    """A JSON value nested ``levels`` lists deep (deeper than JSON encoders agree to write)."""
    return b"[" * levels + b"1" + b"]" * levels


def _corpus(run_id: str) -> list[tuple[str, str, dict, bytes]]:
    j = {"Content-Type": "application/json"}
    hello = lambda **kw: orjson.dumps({"workflow_name": "hello", **kw})  # noqa: E731
    deep_params = b'{"workflow_name": "hello", "params": {"n": ' + _deep(1000) + b"}}"
    deep_wf = (b'{"workflow": {"format": 1, "nodes": {"a": {"type": "Range", "inputs": {"stop": ' + _deep(300)
               + b'}}}, "outputs": {"x": "a.values"}}}')
    cases = [
        ("POST", "/api/runs", j, b"{"),
        ("POST", "/api/runs", j, b"[]"),
        ("POST", "/api/runs", j, b'{"workflow_name": "hello", "workflow_name": "hello"}'),
        ("POST", "/api/runs", j, b'{"workflow_name": "hello", "params": {"n": 18446744073709551616}}'),
        ("POST", "/api/runs", j, deep_params),
        ("POST", "/api/validate", j, deep_params),
        ("POST", "/api/runs", j, deep_wf),
        ("POST", "/api/validate", j, deep_wf),
        ("POST", "/api/runs", j, hello(params={"n": "\u0000" * 10})),
        ("POST", "/api/runs", j, hello(params={"é" * 1000: 1})),
        ("POST", "/api/runs", {"Content-Type": "application/x-www-form-urlencoded"}, b"workflow_name=hello"),
        ("POST", "/api/runs", {"Content-Type": "text/plain"}, hello()),
        ("POST", f"/api/runs/{run_id}/cancel", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
        ("POST", "/api/runs/" + "a" * 5000 + "/cancel", j, b"{}"),
        ("GET", "/api/runs/" + "%00" * 10, {}, b""),
        ("GET", "/api/runs?limit=0", {}, b""),
        ("GET", "/api/runs?limit=99999999999999999999999", {}, b""),
        ("GET", "/api/runs?before=" + "x" * 5000, {}, b""),
        ("GET", f"/api/runs/{run_id}/events", {"Last-Event-ID": "9" * 5000}, b""),
        ("GET", f"/api/files/{run_id}/" + "%2e%2e/" * 50 + "etc/passwd", {}, b""),
        ("GET", f"/api/files/{run_id}/" + "x" * 300, {}, b""),
        ("GET", f"/api/files/{run_id}/" + "y/" * 3000, {}, b""),
        ("GET", "/api/files/" + "0" * 32 + "/%00", {}, b""),
        ("GET", "/api/workflows/" + "../" * 20 + "etc/passwd", {}, b""),
        ("DELETE", "/api/runs/" + "0" * 32, {}, b""),
        ("DELETE", f"/api/runs/{run_id}", {"Origin": "null"}, b""),
    ]
    return cases


def test_hostile_requests_never_get_a_500_and_the_server_keeps_working(srv):
    c = Client(srv.url)
    run_id = c.submit("hello", {"n": 2})
    c.wait(run_id, timeout=60)
    before = len(srv.store.history(1000))
    statuses = []
    for method, path, headers, body in _corpus(run_id):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            r = conn.getresponse()
            r.read()
        finally:
            conn.close()
        statuses.append(r.status)
        assert r.status < 500, (method, path[:80], r.status)
    assert len(srv.store.history(1000)) == before  # none of them queued anything
    assert Client(srv.url).run(run_id)["status"] == "done"  # the DELETE from a null origin did nothing
    _then_hello_runs(c)
    assert httpx.get(srv.url + "/api/health").json()["ok"] is True


# --- inputs read safely and confined --------------------------------------------------------------


def _load_image(path: str) -> dict:
    return {"format": 1, "nodes": {"img": {"type": "LoadImage", "inputs": {"path": path}}}, "outputs": {"image": "img.image"}}


def test_files_outside_the_read_roots_are_refused_at_submission_naming_node_and_field(srv, tmp_path):
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(secret)
    link = srv.tmp / "out" / "uploads" / "innocent.png"
    link.symlink_to(secret)  # inside the uploads folder, leading out of it
    before = len(srv.store.history(1000))
    for path in (str(secret), str(link), "/dev/zero", "/etc/passwd"):
        r = httpx.post(srv.url + "/api/runs", json={"workflow": _load_image(path)})
        assert r.status_code == 422, (path, r.text)
        (p,) = r.json()["problems"]
        assert (p["code"], p["node"], p["field"]) == ("refused_file", "img", "inputs.path"), p
        assert "outside the folders this executor may read" in p["message"] or "not a regular file" in p["message"], p
    assert len(srv.store.history(1000)) == before
    inside = srv.tmp / "out" / "uploads" / "mine.png"
    Image.new("RGB", (8, 8), (10, 200, 10)).save(inside)
    run = Client(srv.url).wait(Client(srv.url).submit(_load_image(str(inside))), timeout=60)
    assert run["status"] == "done" and run["outputs"]["image"]["tensor"]["shape"] == [1, 3, 8, 8], run["outputs"]


def test_allow_read_adds_a_folder(tmp_path):
    from PIL import Image

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(pictures / "blue.png")
    s = ThreadServer(tmp_path, allow_read=[pictures])
    try:
        c = Client(s.url)
        assert c.wait(c.submit(_load_image(str(pictures / "blue.png"))), timeout=60)["status"] == "done"
    finally:
        s.stop()


def test_an_upload_lands_in_the_uploads_folder_and_a_workflow_reads_it(srv):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (0, 128, 255)).save(buf, format="PNG")
    r = httpx.put(srv.url + "/api/uploads/photo.png", content=buf.getvalue())
    assert r.status_code == 201
    path = r.json()["path"]
    assert path == str(srv.tmp.resolve() / "out" / "uploads" / r.json()["name"]) and r.json()["bytes"] == len(buf.getvalue())
    again = httpx.put(srv.url + "/api/uploads/photo.png", content=b"other bytes").json()
    assert again["name"] != r.json()["name"] and open(path, "rb").read() == buf.getvalue()  # never replaced
    for bad in ("..", ".hidden", "a%2Fb", "x" * 101):
        assert httpx.put(srv.url + f"/api/uploads/{bad}", content=b"x").status_code in (404, 422), bad
    assert httpx.put(srv.url + "/api/uploads/evil.png", content=b"x", headers={"Origin": "https://evil.example"}).status_code == 403
    run = Client(srv.url).wait(Client(srv.url).submit(_load_image(path)), timeout=60)
    assert run["status"] == "done" and run["outputs"]["image"]["tensor"]["shape"] == [1, 3, 4, 8]


def test_a_cancel_reaches_a_run_that_sends_events_all_the_time(srv):
    """The queue thread relays a chatty run's events and still watches it: a loop of 2,000 naps
    (20 s, events every 10 ms, more often than the thread polls) stops soon after its cancel,
    not at its end."""
    from tests.server_nodes import naps_workflow

    c = Client(srv.url)
    run_id = c.submit(naps_workflow(2000, 0.01))
    wait_for(lambda: sum(e["type"] == "loop_step" for e in srv.app.state.broker.log(run_id)) >= 3)
    t0 = time.monotonic()
    assert c.cancel(run_id) == "cancelling"
    run = c.wait(run_id, timeout=60)
    assert run["status"] == "cancelled" and time.monotonic() - t0 < 10
