"""The server's queue and history: one SQLite file in WAL mode.

A run is a row from the moment the server answers 201 until someone deletes the file, so a
server killed with ``kill -9`` loses nothing it accepted: WAL with ``synchronous=NORMAL`` makes
every committed transaction survive the death of the process (only a power cut can lose the
last ones). On start, a row left ``running`` by a dead server is put back in the queue once
(``attempts`` counts the starts); a run that was interrupted twice is left ``interrupted``.

One connection, guarded by a lock: every statement here is a few microseconds, and a single
writer is what SQLite wants anyway.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

#: statuses a run ends in; ``queued`` and ``running`` are the others
FINAL = ("done", "failed", "cancelled", "interrupted")
#: how many times a run may be started before a crash leaves it ``interrupted`` for good
MAX_ATTEMPTS = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    workflow_name TEXT,
    workflow BLOB NOT NULL,
    params BLOB NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    events BLOB
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, seq);
CREATE TABLE IF NOT EXISTS deleting (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS aliases (run_id TEXT PRIMARY KEY, alias TEXT NOT NULL UNIQUE, meta BLOB NOT NULL);
"""

_LIST_COLUMNS = "seq, id, status, workflow_name, params, created, started, finished, attempts, interruptions, result"


class StoreUnusable(Exception):
    """The database cannot be opened for writing (read-only, locked, not a database)."""


class AliasTaken(Exception):
    """A run already answers to the name a client chose for its new one (ComfyUI's ``prompt_id``)."""


class Store:
    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        """Raises StoreUnusable, naming the file, if the database cannot be written now: a server
        that could answer but never run anything must not start."""
        self.path, self._timeout = Path(path), timeout
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=timeout)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnusable(f"cannot open the database {self.path}: {e}") from None
        self._db.row_factory = sqlite3.Row
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self.check()
        except sqlite3.Error as e:
            self._db.close()
            raise StoreUnusable(f"cannot write the database {self.path}: {e}") from None

    def check(self, timeout: float = 0.5) -> None:
        """Raises sqlite3.Error unless the database can be written within ``timeout`` seconds."""
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE runs SET id = id WHERE 0")  # a write, so a read-only file fails here
                self._db.execute("ROLLBACK")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # --- the queue -----------------------------------------------------------------------------

    def recover(self) -> list[tuple[str, str]]:
        """After a crash: each run left ``running`` goes back to the queue (at its old place) if it
        has been started fewer than MAX_ATTEMPTS times, else ends ``interrupted``; one whose cancel
        was asked ends ``cancelled``. Returns (id, new status) for each."""
        now, changed = time.time(), []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT id, attempts, cancel_requested FROM runs WHERE status = 'running'").fetchall()
                for r in rows:
                    if r["cancel_requested"]:
                        status = "cancelled"
                    else:
                        status = "queued" if r["attempts"] < MAX_ATTEMPTS else "interrupted"
                    self._db.execute("UPDATE runs SET status = ?, interruptions = interruptions + 1, finished = ? WHERE id = ?",
                                     (status, None if status == "queued" else now, r["id"]))
                    changed.append((r["id"], status))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed

    def add(self, run_id: str, workflow: dict[str, Any], params: dict[str, Any], workflow_name: str | None,
            max_queue: int | None, alias: str | None = None, meta: dict[str, Any] | None = None) -> bool:
        """Queue a run; False (nothing written) when ``max_queue`` runs are already waiting.
        ``alias``: a second name the client chose for it (ComfyUI's ``prompt_id``, any text, so
        not the run's id, which names its folder), kept with ``meta`` (what the client sent in
        its own format); AliasTaken (nothing written) when a run in the history has it."""
        wf, ps = orjson.dumps(workflow), orjson.dumps(params)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if max_queue is not None:
                    (n,) = self._db.execute("SELECT count(*) FROM runs WHERE status = 'queued'").fetchone()
                    if n >= max_queue:
                        self._db.execute("ROLLBACK")
                        return False
                if alias is not None:
                    self._db.execute("DELETE FROM aliases WHERE alias = ? AND run_id NOT IN (SELECT id FROM runs)", (alias,))
                    if self._db.execute("SELECT 1 FROM aliases WHERE alias = ?", (alias,)).fetchone():
                        self._db.execute("ROLLBACK")
                        raise AliasTaken(alias)
                    self._db.execute("INSERT INTO aliases (run_id, alias, meta) VALUES (?, ?, ?)", (run_id, alias, orjson.dumps(meta or {})))
                self._db.execute("INSERT INTO runs (id, status, workflow_name, workflow, params, created) VALUES (?, 'queued', ?, ?, ?, ?)",
                                 (run_id, workflow_name, wf, ps, time.time()))
                self._db.execute("COMMIT")
            except AliasTaken:
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def claim(self) -> dict[str, Any] | None:
        """The oldest queued run, now marked running (its start counted), or None."""
        with self._lock:
            row = self._db.execute(
                "UPDATE runs SET status = 'running', started = ?, attempts = attempts + 1 "
                "WHERE seq = (SELECT seq FROM runs WHERE status = 'queued' ORDER BY seq LIMIT 1) "
                "RETURNING id, workflow, params, cancel_requested, attempts, interruptions", (time.time(),)).fetchone()
        if row is None:
            return None
        return {"id": row["id"], "workflow": orjson.loads(row["workflow"]), "params": orjson.loads(row["params"]),
                "cancel_requested": bool(row["cancel_requested"]), "attempts": row["attempts"], "interruptions": row["interruptions"]}

    def finish(self, run_id: str, status: str, result: dict[str, Any], events: list[dict[str, Any]]) -> None:
        assert status in FINAL
        self._run("UPDATE runs SET status = ?, finished = ?, result = ?, events = ? WHERE id = ?",
                  (status, time.time(), orjson.dumps(result), orjson.dumps(events), run_id))

    def requeue(self, run_id: str) -> None:
        """A run the server itself stopped (shutting down): back in the queue, the start not counted."""
        self._run("UPDATE runs SET status = 'queued', started = NULL, attempts = max(attempts - 1, 0) WHERE id = ? AND status = 'running'",
                  (run_id,))

    def retry(self, run_id: str) -> None:
        """A run whose worker process died under it: back in the queue, the start counted (a run
        started MAX_ATTEMPTS times is not retried again)."""
        self._run("UPDATE runs SET status = 'queued', started = NULL, interruptions = interruptions + 1 WHERE id = ? AND status = 'running'",
                  (run_id,))

    def cancel(self, run_id: str) -> str | None:
        """Cancel a run: a queued one ends ``cancelled`` now; a running one is marked, for the
        worker to stop (and for a restart to not run it again). Returns the status after, or None
        for an unknown id."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                status = None if row is None else row["status"]
                if status == "queued":
                    self._db.execute("UPDATE runs SET status = 'cancelled', finished = ?, cancel_requested = 1 WHERE id = ?", (now, run_id))
                    status = "cancelled"
                elif status == "running":
                    self._db.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return status

    def cancel_requested(self, run_id: str) -> bool:
        row = self._run("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def queued_count(self) -> int:
        return self._run("SELECT count(*) FROM runs WHERE status = 'queued'").fetchone()[0]

    # --- history -------------------------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any] | None:
        row = self._run(f"SELECT {_LIST_COLUMNS}, workflow FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        d = _row(row)
        d["workflow"] = orjson.loads(row["workflow"])
        return d

    def events(self, run_id: str) -> list[dict[str, Any]] | None:
        row = self._run("SELECT events FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None or row["events"] is None else orjson.loads(row["events"])

    def history(self, limit: int, before: str | None = None) -> list[dict[str, Any]]:
        """Runs newest first; ``before``: only runs submitted before that run (the paging cursor)."""
        if before is None:
            rows = self._run(f"SELECT {_LIST_COLUMNS} FROM runs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._run(f"SELECT {_LIST_COLUMNS} FROM runs WHERE seq < (SELECT seq FROM runs WHERE id = ?) "
                             "ORDER BY seq DESC LIMIT ?", (before, limit)).fetchall()
        return [_row(r) for r in rows]

    # --- runs named by their clients (aliases) ---------------------------------------------

    def by_alias(self, alias: str) -> str | None:
        """The id of the run in the history a client named ``alias``."""
        row = self._run("SELECT a.run_id FROM aliases a JOIN runs r ON r.id = a.run_id WHERE a.alias = ?", (alias,)).fetchone()
        return None if row is None else row[0]

    def aliased(self, limit: int | None = None, statuses: tuple[str, ...] | None = None,
                run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Runs that have an alias, oldest first (the newest ``limit``), each as ``get`` gives it
        plus ``alias``, ``meta`` and ``seq``; only those with one of ``statuses``, or one of ``run_ids``."""
        where, args = [], []
        if statuses is not None:
            where.append(f"r.status IN ({', '.join('?' * len(statuses))})")
            args += statuses
        if run_ids is not None:
            where.append(f"r.id IN ({', '.join('?' * len(run_ids))})")
            args += run_ids
        sql = (f"SELECT {', '.join('r.' + c for c in _LIST_COLUMNS.split(', '))}, a.alias, a.meta FROM runs r "
               f"JOIN aliases a ON a.run_id = r.id {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY r.seq DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._run(sql, tuple(args)).fetchall()
        return [{**_row(r), "seq": r["seq"], "alias": r["alias"], "meta": orjson.loads(r["meta"])} for r in reversed(rows)]

    # --- retention -----------------------------------------------------------------------------

    def prune(self, keep: int | None, ended_before: float | None) -> list[str]:
        """Delete ended runs beyond the newest ``keep`` ended ones, and those that ended before
        ``ended_before`` (a time); queued and running runs are never touched. Returns their ids;
        their files are the caller's to remove, and they stay listed in ``deleting`` until
        ``deleted`` says they are gone (a server killed in between finishes the job at start)."""
        if keep is None and ended_before is None:
            return []
        final = ", ".join(f"'{s}'" for s in FINAL)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids: list[str] = []
                if keep is not None:
                    ids += [r[0] for r in self._db.execute(
                        f"SELECT id FROM runs WHERE status IN ({final}) ORDER BY seq DESC LIMIT -1 OFFSET ?", (keep,))]
                if ended_before is not None:
                    ids += [r[0] for r in self._db.execute(
                        f"SELECT id FROM runs WHERE status IN ({final}) AND finished < ?", (ended_before,))]
                ids = list(dict.fromkeys(ids))
                self._db.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
                self._db.executemany("DELETE FROM aliases WHERE run_id = ?", [(i,) for i in ids])
                self._db.executemany("INSERT OR IGNORE INTO deleting (id) VALUES (?)", [(i,) for i in ids])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def delete(self, run_id: str) -> str | None:
        """Delete one ended run: returns ``deleted``, its status when it has not ended (nothing
        deleted), or None for an unknown id."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                status = None if row is None else row["status"]
                if status in FINAL:
                    self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                    self._db.execute("DELETE FROM aliases WHERE run_id = ?", (run_id,))
                    self._db.execute("INSERT OR IGNORE INTO deleting (id) VALUES (?)", (run_id,))
                    status = "deleted"
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return status

    def deleting(self) -> list[str]:
        """Runs deleted from the history whose folders may still be on disk."""
        return [r[0] for r in self._run("SELECT id FROM deleting ORDER BY id").fetchall()]

    def deleted(self, ids: list[str]) -> None:
        """Their folders are gone."""
        with self._lock:
            self._db.executemany("DELETE FROM deleting WHERE id = ?", [(i,) for i in ids])

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._run("SELECT status, count(*) FROM runs GROUP BY status").fetchall()}


def _row(row: sqlite3.Row) -> dict[str, Any]:
    result = orjson.loads(row["result"]) if row["result"] is not None else {}
    started, finished = row["started"], row["finished"]
    return {
        "id": row["id"], "status": row["status"], "workflow_name": row["workflow_name"], "params": orjson.loads(row["params"]),
        "created": row["created"], "started": started, "finished": finished,
        "queued_seconds": None if started is None else round(started - row["created"], 6),
        "attempts": row["attempts"], "interruptions": row["interruptions"], **result,
    }
