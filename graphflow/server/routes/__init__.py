"""The HTTP API's routes, one module per resource: ``runs`` (queue, history, cancel, delete),
``events`` (a run's Server-Sent Events, every run's WebSocket), ``files`` (what runs wrote),
``uploads`` (what clients give runs to read),
``workflows`` (workflows, node types, the schema), ``page`` (the web page, the queue's status).

Each module builds its routes from one ``Services``, made once by ``app.create_app``: the routes
only turn requests into calls on the store (queue and history), the worker (running), the broker
(live events) and the catalog (workflows). Routes a module returns from ``api_routes`` are mounted
under ``/api`` behind the bearer token (``auth``); ``open_routes`` are mounted as they are, and
check the token themselves or need none."""

# no `from __future__ import annotations`: FastAPI reads known_run's annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from graphflow.node.registry import Registry
from graphflow.server.broker import Broker
from graphflow.server.outputs import RUN_ID
from graphflow.server.settings import Settings
from graphflow.server.store import Store
from graphflow.server.worker import Worker
from graphflow.server.workflow_catalog import Catalog


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, as FastAPI hashes known_run, a dependency
class Services:
    settings: Settings
    out: Path  # the runs' files, resolved once
    registry: Registry
    store: Store
    broker: Broker
    catalog: Catalog
    worker: Worker

    def known_run(self, run_id: str) -> dict[str, Any]:
        """The run a path names, as a dependency: an id that is not a run id is not looked up, and
        the answer is the same 404 either way."""
        row = self.store.get(run_id) if RUN_ID.fullmatch(run_id) else None
        if row is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return row
