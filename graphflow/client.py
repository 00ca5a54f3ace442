"""A Python client for `graphflow serve`, on the standard library alone (a tool that only talks to
a server needs neither torch nor an HTTP package)::

    from graphflow.client import Client
    c = Client("http://127.0.0.1:8188", token=None)
    run_id = c.submit("txt2img", {"seed": 3})       # a shipped workflow's name, or a document (dict)
    for e in c.events(run_id):                       # live: node_started, loop_step, …, run_finished
        print(e["type"])
    run = c.wait(run_id)                             # status, outputs, files, timings
    c.download(run_id, run["files"][0]["name"], "picture.png")
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

FINAL = ("done", "failed", "cancelled", "interrupted")


class ServerError(Exception):
    """The server refused a request: ``status`` (401, 404, 413, 422, 429…), ``detail``, and for
    an invalid workflow the ``problems`` (code, node, field, message)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.detail = body.get("detail", "") if isinstance(body, dict) else str(body)
        self.problems: list[dict[str, Any]] = body.get("problems", []) if isinstance(body, dict) else []
        lines = [f"HTTP {status}: {self.detail}"] + [
            f"  [{p.get('code')}]" + (f" node '{p['node']}'" if p.get("node") else "") + (f" field '{p['field']}'" if p.get("field") else "")
            + f": {p.get('message')}" for p in self.problems]
        super().__init__("\n".join(lines))


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None, headers: dict[str, str] | None = None):
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers or {})
        if data is not None:
            h["Content-Type"] = "application/json"
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            raise ServerError(e.code, parsed) from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        with self._request(method, path, body) as r:
            return json.loads(r.read())

    # --- the verbs ---------------------------------------------------------------------------

    def submit(self, workflow: str | dict[str, Any], params: dict[str, Any] | None = None) -> str:
        """Queue a run of a shipped workflow (by name) or of a document; returns its id. An
        invalid workflow or parameter raises ServerError(422) with the problems; nothing queued."""
        body: dict[str, Any] = {"params": params or {}}
        body["workflow_name" if isinstance(workflow, str) else "workflow"] = workflow
        return self._json("POST", "/api/runs", body)["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        """The run as the server knows it now."""
        return self._json("GET", f"/api/runs/{quote(run_id)}")

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.2) -> dict[str, Any]:
        """The run once it has ended (done, failed, cancelled or interrupted). Follows the event
        stream, so it returns as soon as the run ends; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in FINAL:
                return run
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout} s")
            try:
                for e in self.events(run_id, timeout=min(left, 30.0) if left is not None else 30.0):
                    if e["type"] == "run_finished":
                        break
            except (TimeoutError, OSError):
                time.sleep(poll)

    def events(self, run_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The run's events from its start, live, ending with ``run_finished`` (Server-Sent Events;
        ``timeout``: the longest wait for the next event)."""
        with self._request("GET", f"/api/runs/{quote(run_id)}/events", timeout=timeout or self.timeout,
                           headers={"Accept": "text/event-stream"}) as r:
            data: list[str] = []
            for raw in r:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif not line and data:
                    e = json.loads("\n".join(data))
                    data = []
                    yield e
                    if e.get("type") == "run_finished":
                        return

    def cancel(self, run_id: str) -> str:
        """Cancel a run: returns ``cancelled`` (it was waiting, it never runs), ``cancelling`` (it
        stops at its next node or loop step), or the status of a run that had already ended (the
        server's 409: a race a caller cannot avoid, so not an error here)."""
        try:
            return self._json("POST", f"/api/runs/{quote(run_id)}/cancel", {})["status"]
        except ServerError as e:
            if e.status != 409:
                raise
            return self.run(run_id)["status"]

    def delete(self, run_id: str) -> None:
        """Delete an ended run and its files from the server (ServerError 409 while it is queued
        or running, 404 when there is no such run)."""
        self._json("DELETE", f"/api/runs/{quote(run_id)}")

    def download(self, run_id: str, name: str, dest: str | Path) -> Path:
        """Save a file the run wrote to ``dest`` (a file path, or a folder to put it in)."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / Path(name).name
        with self._request("GET", f"/api/files/{quote(run_id)}/{quote(name)}") as r:
            tmp = dest.with_name(dest.name + ".part")
            with open(tmp, "wb") as f:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
            tmp.replace(dest)
        return dest

    # --- the rest of the API -----------------------------------------------------------------

    def history(self, limit: int = 50, before: str | None = None) -> list[dict[str, Any]]:
        q = {"limit": limit} | ({"before": before} if before else {})
        return self._json("GET", "/api/runs?" + urlencode(q))["runs"]

    def validate(self, workflow: str | dict[str, Any], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The problems (empty when the workflow and parameters are valid)."""
        body: dict[str, Any] = {"params": params or {}}
        body["workflow_name" if isinstance(workflow, str) else "workflow"] = workflow
        return self._json("POST", "/api/validate", body)["problems"]

    def workflows(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/workflows")["workflows"]

    def nodes(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/nodes")
