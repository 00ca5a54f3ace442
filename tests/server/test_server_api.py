"""The HTTP API on a real uvicorn server (a free loopback port, served from a thread): queueing,
validation with the CLI's problems, history, events (SSE and WebSocket), cancel, file
confinement, token, body and queue limits, and the store's recovery rules."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest

from graphflow.client import Client, ServerError
from tests.server_helpers import ROOT, ThreadServer, wait_for
from tests.server_nodes import gate_workflow, naps_workflow


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ThreadServer(tmp_path_factory.mktemp("srv"))
    yield s
    s.stop()


@pytest.fixture
def client(srv):
    return Client(srv.url)


def raw_get(srv, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """A GET with the path sent byte for byte (no client-side normalization of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_submit_runs_and_returns_numbers_inline_and_files_as_urls(srv, client):
    r = httpx.post(srv.url + "/api/runs", json={"workflow_name": "hello", "params": {"n": 10}})
    assert r.status_code == 201
    body = r.json()
    assert body["status"] == "queued" and len(body["id"]) == 32
    run = client.wait(body["id"], timeout=30)
    assert run["status"] == "done"
    assert run["outputs"]["partial_sums"] == [0, 1, 3, 6, 10, 15, 21, 28, 36, 45]
    assert run["params"] == {"n": 10} and run["workflow_name"] == "hello"
    assert run["started"] >= run["created"] and run["finished"] >= run["started"] and run["seconds"] > 0
    assert run["nodes"]["add"]["runs"] == 10
    f = run["outputs"]["file"]
    assert f == {"file": "sum.txt", "url": f"/api/files/{body['id']}/sum.txt"}
    assert httpx.get(srv.url + f["url"]).text == "the sum is 45.0\n"
    assert [x["name"] for x in run["files"]] == ["sum.txt"]
    # each run writes into its own folder
    assert (srv.tmp / "out" / "runs" / body["id"] / "sum.txt").is_file()


def test_invalid_parameter_is_422_with_the_problems_the_cli_prints_and_nothing_is_queued(srv):
    before = len(srv.store.history(1000))
    r = httpx.post(srv.url + "/api/runs", json={"workflow_name": "hello", "params": {"n": "x"}})
    assert r.status_code == 422
    cli = subprocess.run([sys.executable, "-m", "graphflow.cli", "validate", "workflows/hello.json", "--set", 'n="x"', "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2
    assert r.json()["problems"] == json.loads(cli.stdout)["problems"]
    # the declared type's problem, once (not again for the input it feeds)
    assert [(p["code"], p.get("node"), p.get("field")) for p in r.json()["problems"]] == [("bad_param", None, "params.n")]
    assert len(srv.store.history(1000)) == before


def test_invalid_document_names_node_and_field(srv):
    wf = {"format": 1, "nodes": {"a": {"type": "Range", "inputs": {"stop": 3}}, "b": {"type": "Math", "inputs": {"a": {"from": "a.nope"}}}},
          "outputs": {"x": "b.result"}}
    r = httpx.post(srv.url + "/api/runs", json={"workflow": wf})
    assert r.status_code == 422
    assert any(p.get("node") == "b" and p.get("field") == "inputs.a" for p in r.json()["problems"]), r.json()
    with pytest.raises(ServerError) as e:  # the client's face of the same answer
        Client(srv.url).submit(wf)
    assert e.value.status == 422 and e.value.problems == r.json()["problems"] and "node 'b'" in str(e.value)
    r = httpx.post(srv.url + "/api/runs", json={"workflow_name": "no-such"})
    assert r.status_code == 422 and r.json()["problems"][0]["code"] == "unknown_workflow"
    r = httpx.post(srv.url + "/api/runs", json={"workflow_name": "hello", "workflow": wf})
    assert r.status_code == 422 and r.json()["problems"][0]["code"] == "bad_request"
    r = httpx.post(srv.url + "/api/runs", json={"workflow_name": "hello", "extra": 1})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "extra"


def test_body_parsed_like_a_workflow_file(srv):
    dup = b'{"workflow_name": "hello", "params": {"n": 3, "n": 4}}'
    r = httpx.post(srv.url + "/api/runs", content=dup, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "n" in r.text
    r = httpx.post(srv.url + "/api/runs", content=b'{"workflow_name": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["problems"][0]["line"] == 1
    # a cross-site form can post text/plain without a preflight: refused
    r = httpx.post(srv.url + "/api/runs", content=b'{"workflow_name": "hello"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_validate_endpoint(srv):
    ok = httpx.post(srv.url + "/api/validate", json={"workflow_name": "txt2img", "params": {"seed": 3}}).json()
    assert ok == {"ok": True, "problems": []}
    bad = httpx.post(srv.url + "/api/validate", json={"workflow_name": "txt2img", "params": {"steps": 100000}}).json()
    assert bad["ok"] is False and any(p["code"] == "limit_exceeded" or "steps" in p["message"] for p in bad["problems"]), bad


def test_history_newest_first_with_paging(srv, client):
    ids = [client.submit("hello", {"n": i}) for i in range(1, 6)]
    for i in ids:
        client.wait(i, timeout=30)
    page1 = client.history(limit=3)
    assert [r["id"] for r in page1] == ids[::-1][:3]
    page2 = client.history(limit=2, before=page1[-1]["id"])
    assert [r["id"] for r in page2] == ids[::-1][3:5]
    assert all("workflow" not in r for r in page1)  # listings leave the documents out
    assert httpx.get(srv.url + "/api/runs?limit=0").status_code == 422


def test_events_late_client_gets_everything_in_order(srv, client):
    run_id = client.submit("hello", {"n": 7})
    client.wait(run_id, timeout=30)
    events = list(client.events(run_id))  # connects after the run ended
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "queued" and events[1]["type"] == "run_started"
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "done"
    assert [e["index"] for e in events if e["type"] == "loop_step"] == list(range(7))
    assert all(e["count"] == 7 for e in events if e["type"] == "loop_step")
    finished = [e for e in events if e["type"] == "node_finished"]
    assert sum(1 for e in finished if e["node"] == "add") == 7
    assert {e["node"] for e in finished if e["iteration"] is None} == {"numbers", "sum", "message", "save"}
    # the same run again: its nodes come from the executor's memory cache, and the events say so
    again = client.submit("hello", {"n": 7})
    client.wait(again, timeout=30)
    cached = {e["node"]: e["cached"] for e in client.events(again) if e["type"] == "node_finished" and e["iteration"] is None}
    assert cached == {"sum": "memory", "message": "memory", "save": None}  # SaveText has side effects: it always runs
    # Last-Event-ID: a reconnecting client gets only what it has not seen
    r = httpx.get(srv.url + f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(len(events) - 3)})
    ids = [int(line[3:]) for line in r.text.splitlines() if line.startswith("id:")]
    assert ids == [len(events) - 2, len(events) - 1]


def test_events_live_while_running(srv, client, tmp_path):
    run_id = client.submit(naps_workflow(20, 0.05))
    seen, status_at_first_step = [], None
    for e in client.events(run_id, timeout=30):
        seen.append(e["type"])
        if e["type"] == "loop_step" and status_at_first_step is None:
            status_at_first_step = client.run(run_id)["status"]
    assert status_at_first_step == "running"  # delivered as it happened, not in one batch at the end
    assert seen.count("loop_step") == 20 and seen[-1] == "run_finished"


def test_status_of_a_running_run_shows_its_progress(srv, client, tmp_path):
    gate = tmp_path / "open"
    wf = naps_workflow(40, 0.0)
    wf["nodes"]["loop"]["body"]["nap"] = {"type": "Gate", "inputs": {"path": str(gate), "x": {"from": "loop.item"}}}
    run_id = client.submit(wf)  # held at the gate in the loop's first step
    run = wait_for(lambda: (r := client.run(run_id))["status"] == "running" and (r.get("progress") or {}).get("loop") and r)
    assert run["progress"] == {"nodes": 2, "finished": 1, "node": "loop", "loop": {"node": "loop", "index": 0, "count": 40}}
    gate.touch()
    done = client.wait(run_id, timeout=60)
    assert done["status"] == "done" and done["outputs"]["x"] == 39 and "progress" not in done


def test_cancel_queued_never_starts_and_running_stops(srv, client, tmp_path):
    gate = tmp_path / "open"
    blocker = client.submit(gate_workflow(str(gate)))
    wait_for(lambda: client.run(blocker)["status"] == "running")
    waiting = client.submit("hello", {"n": 3})
    assert client.run(waiting)["status"] == "queued"
    assert client.cancel(waiting) == "cancelled"
    assert client.cancel(blocker) == "cancelling"
    run = client.wait(blocker, timeout=10)
    assert run["status"] == "cancelled"
    gate.touch()
    later = client.submit("hello", {"n": 2})
    assert client.wait(later, timeout=30)["status"] == "done"
    w = client.run(waiting)
    assert w["status"] == "cancelled" and w["started"] is None
    assert [e["type"] for e in client.events(waiting)] == ["queued", "run_finished"]
    assert not (srv.tmp / "out" / "runs" / waiting).exists()
    r = httpx.post(srv.url + f"/api/runs/{later}/cancel", json={})
    assert r.status_code == 409
    assert client.cancel(later) == "done"  # the client turns the server's 409 into the run's status


def test_files_are_confined_to_the_run_folder(srv, client, tmp_path):
    run_id = client.submit("hello", {"n": 2})
    client.wait(run_id, timeout=30)
    other = client.submit("hello", {"n": 3})
    client.wait(other, timeout=30)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    folder = srv.tmp / "out" / "runs" / run_id
    os.symlink(secret, folder / "link.txt")  # a link planted in the folder, pointing out of it
    (folder / ".tmp-sum.txt").write_text("half written")  # an atomic write's temporary
    assert raw_get(srv, f"/api/files/{run_id}/sum.txt")[0] == 200
    for path in [f"/api/files/{run_id}/../../graphflow.db", f"/api/files/{run_id}/..%2F..%2Fgraphflow.db",
                 f"/api/files/{run_id}/%2e%2e/%2e%2e/graphflow.db", f"/api/files/{run_id}/link.txt",
                 f"/api/files/{run_id}/{secret}", f"/api/files/{run_id}/%2F{str(secret)[1:]}", f"/api/files/{run_id}/",
                 f"/api/files/{run_id}/../{other}/sum.txt", "/api/files/../out/graphflow.db", f"/api/files/{run_id[:-1]}x/sum.txt",
                 f"/api/files/{run_id}/%00", f"/api/files/{run_id}/.tmp-sum.txt"]:
        status, body = raw_get(srv, path)
        assert status == 404, (path, status)
        assert b"secret" not in body and b"SQLite" not in body and b"half" not in body
    assert "link.txt" not in [f["name"] for f in client.run(run_id)["files"]]


def test_nodes_schema_workflows(srv):
    from graphflow.node.schema import workflow_schema
    from graphflow.graph.workflow import registry

    nodes = {n["type"]: n for n in httpx.get(srv.url + "/api/nodes").json()}
    assert set(registry().names()) <= set(nodes)
    width = next(p for p in nodes["RandomLatents"]["inputs"] if p["name"] == "width")
    assert (width["ge"], width["le"], width["multiple_of"], width["limit"], width["required"]) == (8, 4096, 8, "size", False)
    unet = next(p for p in nodes["RandomLatents"]["inputs"] if p["name"] == "unet")
    assert unet["link_only"] is True and unet["kind"] == "unet"
    from graphflow.node.registry import default_registry
    from tests.server_helpers import PLUGIN

    served = httpx.get(srv.url + "/api/schema").json()
    assert served == orjson.loads(orjson.dumps(workflow_schema(default_registry([PLUGIN]))))
    assert "Gate" in served["$defs"] or "Gate" in json.dumps(served)  # the server's plugins are in it
    wfs = {w["name"]: w for w in httpx.get(srv.url + "/api/workflows").json()["workflows"]}
    assert {"txt2img", "hello"} <= set(wfs)
    assert wfs["txt2img"]["params"]["seed"] == {"type": "int", "default": 0, "description": "noise seed"}
    assert httpx.get(srv.url + "/api/workflows/txt2img").json()["format"] == 1
    assert httpx.get(srv.url + "/api/workflows/..%2Fpyproject").status_code == 404


def test_websocket_streams_every_run(srv, client):
    from websockets.sync.client import connect

    with connect(srv.url.replace("http", "ws") + "/api/ws", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status"
        a = client.submit("hello", {"n": 2})
        b = client.submit("hello", {"n": 3})
        ended, got = set(), []
        while ended != {a, b}:
            m = json.loads(ws.recv(timeout=20))
            got.append(m)
            if m["type"] == "run_finished":
                ended.add(m["data"]["run_id"])
    for rid in (a, b):
        mine = [m["data"] for m in got if m["data"]["run_id"] == rid]
        assert [e["seq"] for e in mine] == list(range(len(mine)))
        assert mine == list(client.events(rid))


def test_page_is_served(srv):
    r = httpx.get(srv.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "<title>graphflow</title>" in r.text


def test_dns_rebinding_host_and_cors_off(srv):
    assert httpx.get(srv.url + "/api/runs", headers={"Host": "evil.example"}).status_code == 400
    r = httpx.get(srv.url + "/api/runs", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = httpx.options(srv.url + "/api/runs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_token_required_on_every_api_route_and_file(tmp_path):
    s = ThreadServer(tmp_path, token="s3cret")
    try:
        good = Client(s.url, token="s3cret")
        run_id = good.submit("hello", {"n": 2})
        good.wait(run_id, timeout=30)
        routes = [("GET", "/api/runs"), ("GET", f"/api/runs/{run_id}"), ("GET", f"/api/runs/{run_id}/events"),
                  ("POST", f"/api/runs/{run_id}/cancel"), ("GET", f"/api/files/{run_id}/sum.txt"), ("GET", "/api/nodes"),
                  ("GET", "/api/schema"), ("GET", "/api/workflows"), ("GET", "/api/workflows/hello"), ("POST", "/api/validate"),
                  ("POST", "/api/runs"), ("GET", "/api/status")]
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret"}):
                r = httpx.request(method, s.url + path, headers={**headers, "Content-Type": "application/json"}, content=b"{}")
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
        assert len(s.store.history(100)) == 1  # nothing queued by the refused calls
        ok = httpx.get(s.url + f"/api/files/{run_id}/sum.txt", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.text == "the sum is 1.0\n"
        assert httpx.get(s.url + "/").status_code == 200  # the page loads, then asks for the token

        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        ws_url = s.url.replace("http", "ws") + "/api/ws"
        for url, headers in ((ws_url, None), (ws_url + "?token=wrong", None), (ws_url, {"Authorization": "Bearer wrong"})):
            with pytest.raises(InvalidStatus) as e:
                connect(url, additional_headers=headers, open_timeout=10).close()
            assert e.value.response.status_code == 403
        for url, headers in ((ws_url + "?token=s3cret", None), (ws_url, {"Authorization": "Bearer s3cret"})):
            with connect(url, additional_headers=headers, open_timeout=10) as ws:
                assert json.loads(ws.recv(timeout=10))["type"] == "status"
    finally:
        s.stop()


def test_body_limit_413_and_full_queue_429(tmp_path):
    s = ThreadServer(tmp_path, max_body=64 << 10, max_queue=2)
    try:
        c = Client(s.url)
        big = {"workflow_name": "hello", "params": {"n": 3}, "pad": "x" * (100 << 10)}
        r = httpx.post(s.url + "/api/runs", json=big)
        assert r.status_code == 413
        # without a Content-Length (chunked), the limit still holds
        r = httpx.post(s.url + "/api/runs", content=iter([b'{"workflow_name": "hello", "x": "', b"x" * (100 << 10), b'"}']),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        gate = tmp_path / "open"
        blocker = c.submit(gate_workflow(str(gate)))
        wait_for(lambda: c.run(blocker)["status"] == "running")
        queued = [c.submit("hello", {"n": 2}), c.submit("hello", {"n": 3})]
        r = httpx.post(s.url + "/api/runs", json={"workflow_name": "hello"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert len(s.store.history(100)) == 3
        gate.touch()
        assert [c.wait(i, timeout=30)["status"] for i in [blocker, *queued]] == ["done"] * 3
        assert httpx.post(s.url + "/api/runs", json={"workflow_name": "hello"}).status_code == 201
    finally:
        s.stop()


def test_per_run_limits_apply(tmp_path):
    from graphflow.node.limits import Limits

    s = ThreadServer(tmp_path, limits=Limits().with_values(list=5))
    try:
        r = httpx.post(s.url + "/api/runs", json={"workflow_name": "hello", "params": {"n": 50}})
        assert r.status_code == 422 and "list" in r.text
    finally:
        s.stop()


def test_a_failing_run_reports_the_node(srv, client):
    wf = {"format": 1, "nodes": {"d": {"type": "Math", "inputs": {"a": 1, "b": 0, "op": "div"}}}, "outputs": {"x": "d.result"}}
    run_id = client.submit(wf)
    run = client.wait(run_id, timeout=30)
    assert run["status"] == "failed"
    assert run["errors"][0]["node"] == "d" and run["errors"][0]["type"] == "Math"
    assert "traceback" not in run["errors"][0]


def test_store_recovery_requeues_once_then_marks_interrupted(tmp_path):
    from graphflow.server.store import Store

    st = Store(tmp_path / "q.db")
    st.add("a" * 32, {"format": 1}, {}, None, None)
    st.add("b" * 32, {"format": 1}, {}, None, None)
    assert st.claim()["id"] == "a" * 32
    st.close()  # the process dies with 'a' running
    st = Store(tmp_path / "q.db")
    assert st.recover() == [("a" * 32, "queued")]
    assert st.claim()["id"] == "a" * 32  # back at its old place, ahead of b
    st.close()
    st = Store(tmp_path / "q.db")
    assert st.recover() == [("a" * 32, "interrupted")]
    row = st.get("a" * 32)
    assert (row["status"], row["attempts"], row["interruptions"]) == ("interrupted", 2, 2)
    assert st.claim()["id"] == "b" * 32
    st.close()


def test_serve_command_line_errors(tmp_path):
    import socket

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "graphflow.cli", "serve", "--out", str(tmp_path), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    r = serve("--max-body", "lots")
    assert r.returncode == 2 and "invalid size" in r.stderr and "Traceback" not in r.stderr
    r = serve("--limit", "nope=3")
    assert r.returncode == 2 and "unknown limit" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = serve("--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen" in r.stderr


def test_concurrent_submits_in_process(srv, client):
    """Ten threads at once: every id distinct, every run done exactly once."""
    ids, errors = [], []

    def go(n):
        try:
            ids.append(client.submit("hello", {"n": n}))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(set(ids)) == 10
    runs = [client.wait(i, timeout=30) for i in ids]
    assert sorted(r["outputs"]["partial_sums"][-1] for r in runs) == sorted(n * (n - 1) / 2 for n in range(1, 11))
    assert all(r["attempts"] == 1 for r in runs)


def test_executor_submit_out_dir_gives_a_run_its_own_folder(tmp_path):
    import graphflow

    ex = graphflow.Executor(out_dir=tmp_path / "default")
    wf = graphflow.load(ROOT / "workflows" / "hello.json")
    a = ex.submit(wf.with_params(n=3), out_dir=tmp_path / "a")
    b = ex.submit(wf.with_params(n=4))
    assert a.result(30).ok and b.result(30).ok
    assert (tmp_path / "a" / "sum.txt").read_text() == "the sum is 3.0\n"
    assert (tmp_path / "default" / "sum.txt").read_text() == "the sum is 6.0\n"
    ex.close()


def test_broker_keeps_no_waiter_for_ended_runs(srv, client):
    run_id = client.submit("hello", {"n": 2})
    client.wait(run_id, timeout=30)
    for _ in range(3):
        list(client.events(run_id))
    assert run_id not in srv.app.state.broker._waiters
