"""What a server is told at start: where its files and database live, its token, queue and body
limits, which Host names and origins it accepts, how long it keeps ended runs, and how long and
how large a run may grow before its worker process is killed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graphflow.sizes import DEFAULT_BODY_BYTES

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


@dataclass
class Settings:
    out: Path
    db: Path
    token: str | None = None
    max_queue: int = 1000
    max_body: int = DEFAULT_BODY_BYTES
    cors_origins: list[str] = field(default_factory=list)
    #: Host headers accepted (None: any); a loopback server accepts only loopback names, which
    #: stops DNS-rebinding pages from reaching it under a name of their own
    allowed_hosts: list[str] | None = None
    workflows: Path | None = None
    #: ended runs kept in the history with their files: the newest ``keep_runs``, none older than ``keep_days`` (None: no limit)
    keep_runs: int | None = 10_000
    keep_days: float | None = None
    #: seconds a run may take before it is stopped and failed (None: no limit)
    run_timeout: float | None = None
    #: seconds a run has to honour a cancel (or the timeout) before its worker process is killed
    cancel_grace: float = 10.0
    #: bytes the worker process may hold resident before it is killed, failing its run (None: no limit)
    worker_memory: int | None = None
    #: the folders runs may read files from, as real paths (``options.read_roots``: the uploads
    #: folder, the node packs' models folders, ``--allow-read``); None: anywhere
    read_roots: tuple[str, ...] | None = None
