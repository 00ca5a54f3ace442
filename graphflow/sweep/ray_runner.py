"""Running a sweep's items on Ray actors (``graphflow sweep --ray``, ``sweep(..., ray=...)``).

Ray does the distribution (processes, scheduling on a cluster, detecting a dead worker, moving
data); this module only decides which item goes to which actor and turns what comes back into the
sweep's ``ItemResult``s. The sweep (``graphflow.sweep.items``) still owns numbering, the index, resume
and the contact sheet, so a Ray sweep's folder is the same as a local one's.

Why actors, not tasks: an actor is a process that keeps one ``Executor``, with its loaded models
and its memory cache, across items; a task per item would load the model per item. Each actor
runs ``run_item``, the same function the local sweep runs, so the bytes are the same.

Why files come back as bytes: on a cluster the actor's disk is another machine's. The actor runs
an item into a private temporary folder, returns the files' bytes, and deletes the folder; the
driver writes them into ``OUT/item_NNNNN/``. The images are small next to the compute.

Cache affinity: before anything runs, every item's node fingerprints are computed (the engine's
own, the same the caches use). Items are dealt to actors in run order, each to the actor whose
items already share most of its fingerprints (the same prompt encoding, the same model), within
an even share per actor; an idle actor whose queue is empty takes work from the back of the
longest queue when that queue holds more than one item (stealing a queue's last item would save
at most one item's time at the end, and cost the work the two actors then both do). With ``cache_dir`` on shared storage, actors also share the disk cache: the
fingerprints hold content ids, not paths or hosts, so one actor's entry is right for another.

Token authentication (Ray 2.59+; see ``_LocalAuth`` and ``_check_token``): a Ray started here for
one sweep gets a fresh token through the environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``),
never ``~/.ray/auth_token``. Ray's own ``ray.init()`` writes that file, and ``ray start --head`` then
turns token authentication on with it, while joining an explicit address never sends it: a local
sweep used to break the README's cluster recipe that came after it, reported as an unreachable
cluster. Joining a cluster, the driver first asks the cluster's GCS for its id, which fails at once
(not after Ray's minute of retries) and says which: nothing answers, or the token is missing or
not the head's.

Batching (``executor_options={"batch": N}``, ``--batch N``): an idle actor is handed up to N
items from the front of its queue in one call, and runs them together on its executor
(``run_items``, the local sweep's batched path), so each actor makes one model call per step for
its group. Dealing by fingerprints already puts items that share a prompt and a model on one
queue, next to each other: the items that batch best are the ones that meet. Grouping on the
actor, not across actors: a batched call is one forward pass in one process. An idle actor steals
up to a batch's worth from the back of the longest queue, leaving it at least half its items.

Failures: an item whose node fails is an ordinary ``failed`` result (the sweep goes on). An actor
that dies (killed, out of memory) loses only its item in flight: that item is run again on another
actor, up to ``max_attempts`` in all, its queue goes to the others, and a replacement actor is
started while the number of replacements allows (batched: every item of the batch in flight).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from graphflow.atomic import write_new
from graphflow.sweep.item import ItemResult, item_error, item_folder, run_item, run_items

__all__ = ["INSTALL", "RaySweep", "RayUnavailable", "SweepWorker", "local_token"]

INSTALL = "pip install 'graphflow-diffusion[ray]'"
CANCEL_GRACE_S = 30.0  # how long a cancelled sweep waits for items in flight before killing actors


class RayUnavailable(RuntimeError):
    """Ray is not installed (or a cluster cannot be joined): the sweep cannot start."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--ray needs Ray, an optional extra: {INSTALL}") from None
    return ray


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on an address nothing listens at: Ray itself retries for minutes."""
    host, _, port = address.rpartition(":")
    if address.startswith("ray://"):
        return  # Ray Client: its own protocol and timeouts
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r}: nothing answers there ({e}); check the "
                             "address and port, or start a cluster with `ray start --head`") from None


AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _refresh_ray_auth() -> None:
    """Make Ray re-read the RAY_AUTH_* variables: it caches its config and the token it loaded."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without token authentication: nothing cached
        pass


class _LocalAuth:
    """The token of a Ray started here for one sweep: fresh, in this process's environment (which
    Ray's processes inherit), and gone with the sweep. Never ``~/.ray/auth_token``: Ray's own
    ``ray.init()`` writes one there, and every later ``ray start --head`` on the machine turns token
    authentication on with it, which the README's ``--ray HOST:PORT`` then did not send. Variables
    the user set are theirs: a token they chose is used, ``RAY_AUTH_MODE=disabled`` is kept."""

    def __init__(self) -> None:
        self.saved: dict[str, str | None] | None = None

    def apply(self) -> None:
        env = os.environ
        if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or env.get("RAY_AUTH_MODE", "").lower() == "disabled":
            return
        self.saved = {k: env.get(k) for k in AUTH_VARS}
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # as `ray get-auth-token --generate` makes one
        _refresh_ray_auth()

    def restore(self) -> None:
        if self.saved is None:
            return
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved = None
        _refresh_ray_auth()


@contextlib.contextmanager
def local_token():
    """For code that starts a local Ray itself (``ray.init()``, a benchmark): the fresh token a
    sweep's own Ray gets, in the environment while the block runs, instead of ~/.ray/auth_token."""
    auth = _LocalAuth()
    auth.apply()
    try:
        yield
    finally:
        auth.restore()


def _token_source() -> str:
    """Where Ray takes this process's token from, in its own order."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "~/.ray/auth_token"


def _check_token(address: str, timeout_ms: int = 10_000) -> None:
    """Ask the cluster's GCS for its id, as ``ray.init`` does first: a token the cluster refuses
    fails here at once, named as such, instead of after Ray's retries as "Failed to connect"."""
    try:
        from ray._raylet import InnerGcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return
    try:
        with _quiet_stderr():  # Ray's C++ client logs each refused try there
            InnerGcsClient.standalone(address, None, timeout_ms)
    except AuthenticationError:
        pass
    except Exception:  # anything else (a timeout, an older protocol): ray.init tells
        return
    else:
        return
    fix = "`ray get-auth-token` on the head machine prints its token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        raise RayUnavailable(
            f"the Ray cluster at {address!r} is up but refused this process's token (from {_token_source()}): it was "
            f"started with another one. Set RAY_AUTH_TOKEN to the head's token ({fix})") from None
    here = os.path.expanduser("~/.ray/auth_token")
    also = (f"; on the head's own machine, RAY_AUTH_MODE=token alone sends {here}, the token `ray start` used there"
            if os.path.isfile(here) else "")
    raise RayUnavailable(
        f"the Ray cluster at {address!r} is up but refused this process: it uses token authentication and this process "
        f"sends no token. Run with RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the head's token> ({fix}){also}") from None


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 pointed at /dev/null for a moment (Ray's C++ side writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class SweepWorker:
    """The body of a Ray actor: one executor, kept across items (made a Ray actor class at run
    time, so that importing graphflow never imports Ray)."""

    def __init__(self, doc, params: dict[str, Any], plugins: list[str], executor_options: dict[str, Any], limits,
                 cwd: str | None = None) -> None:
        if cwd and os.path.isdir(cwd):  # relative paths in parameters mean what they meant to the driver
            os.chdir(cwd)
        from graphflow.engine.executor import Executor
        from graphflow.node.registry import default_registry
        from graphflow.graph.workflow import Workflow

        self.wf = Workflow(doc, default_registry(plugins), params)
        self.limits = limits
        self.ex = Executor(limits=limits, **executor_options)
        self.host = socket.gethostname()
        # Executor.run executes on its caller's thread, and Ray calls this actor's methods on
        # either of two threads (run + cancel at once): items go through one thread of their own,
        # so the actor's torch work keeps one OpenMP thread team (see graphflow/engine/executor.py)
        self.items = ThreadPoolExecutor(1, thread_name_prefix="graphflow-item")

    def info(self) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS"),
                "loads": sum(self.ex.models.loads.values()), "batch_sizes": list(self.ex.batch_sizes)}

    def run(self, item: int, params: dict[str, Any], attempt: int):
        """Run one item; returns (ItemResult, {file name: bytes})."""

        bound = self.wf.bind(params, self.limits)
        with tempfile.TemporaryDirectory(prefix="graphflow-item-") as tmp:
            r = self.items.submit(run_item, self.ex, bound, item, params, Path(tmp)).result()
            r.attempts = attempt
            files = {name: (Path(tmp) / name).read_bytes() for name in r.files}
        return r, files

    def run_many(self, items: list[int], params: list[dict[str, Any]], attempts: list[int]):
        """Run items together (the executor's ``batch``: their model calls batched); returns
        [(ItemResult, {file name: bytes}), ...] in their order."""
        bounds = [self.wf.bind(p, self.limits) for p in params]
        with tempfile.TemporaryDirectory(prefix="graphflow-items-") as tmp:
            folders = [Path(tmp) / item_folder(i) for i in items]
            rs = self.items.submit(run_items, self.ex, bounds, items, params, folders, [""] * len(items)).result()
            out = []
            for r, folder, attempt in zip(rs, folders, attempts):
                r.attempts = attempt
                out.append((r, {name: (folder / name).read_bytes() for name in r.files}))
        return out

    def cancel(self) -> None:
        self.ex.cancel()


def affinity_keys(sweep, todo: list[int]) -> dict[int, frozenset]:
    """Per item, the fingerprints of its top-level nodes that it shares with some but not all
    other items: what an actor that ran one of those items has in its caches."""
    from graphflow.engine.fingerprint import Fingerprints, RunOptions, steady_files

    members = sweep.checked.order.get(None, [])
    keys: dict[int, frozenset] = {}
    with steady_files():
        for i in todo:
            k = Fingerprints(sweep.bound[i], RunOptions(), "affinity")
            k.all(members)
            keys[i] = frozenset(fp for m, fp in k.fps.items() if fp is not None and m not in k.tainted)
    if keys:
        common = frozenset.intersection(*keys.values())
        keys = {i: ks - common for i, ks in keys.items()}
    return keys


def deal(todo: list[int], keys: dict[int, frozenset], n: int) -> list[deque]:
    """Items (in run order) dealt to ``n`` queues: each to the queue sharing most fingerprints
    with it, among those under an even share; ties to the shortest queue."""
    cap = max(1, math.ceil(len(todo) / max(1, n)))
    queues: list[deque] = [deque() for _ in range(n)]
    seen: list[set] = [set() for _ in range(n)]
    for i in todo:
        a = max(range(n), key=lambda q: (len(queues[q]) < cap, len(keys.get(i, frozenset()) & seen[q]), -len(queues[q]), -q))
        queues[a].append(i)
        seen[a] |= keys.get(i, frozenset())
    return queues


class _Actor:
    __slots__ = ("alive", "busy", "handle", "name", "queue")

    def __init__(self, handle, name: str) -> None:
        self.handle, self.queue, self.alive, self.busy, self.name = handle, deque(), True, False, name


class RaySweep:
    """Runs a ``Sweep``'s items on Ray actors. ``address``: True/"local" starts a Ray instance on
    this machine (stopped at the end); "auto" or "HOST:PORT" joins a cluster started with
    ``ray start --head``. ``workers``: actors (default: as many as the cluster's CPUs allow at
    ``cpus_per_worker`` each, and its GPUs at ``gpus_per_worker``). Each actor's torch threads are
    its CPUs (OMP_NUM_THREADS), so actors do not fight over cores; ``threads`` sets another count."""

    def __init__(self, address: bool | str = True, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, max_attempts: int = 2, max_replacements: int | None = None,
                 executor_options: dict[str, Any] | None = None, plugins: list[str] | tuple = (),
                 threads: int | None = None) -> None:
        self.ray = _import_ray()
        self.threads = threads
        self.sweep = None  # the sweep whose items run() was handed
        self.address = None if address in (True, "local", "") else str(address)
        self.workers, self.cpus, self.gpus = workers, float(cpus_per_worker), float(gpus_per_worker)
        self.max_attempts = max(1, int(max_attempts))
        self.max_replacements = max_replacements
        self.executor_options = dict(executor_options or {})
        self.batch = int(self.executor_options.get("batch", 1))
        self.plugins = [os.path.abspath(p) for p in plugins]
        self.actors: list[_Actor] = []
        self.replaced = 0
        self._cancelled = False
        self._owns_connection = False
        self._auth = _LocalAuth()

    # --- connecting ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster (or start Ray here); raises RayUnavailable, saying why, when it cannot.
        ``run`` calls it; a caller may call it first, to fail before anything else is done."""
        ray = self.ray
        if ray.is_initialized():  # the caller's own Ray session: use it, leave it running
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
        if self.address not in (None, "auto"):
            _reachable(self.address)
            if not self.address.startswith("ray://"):
                _check_token(self.address)
        try:
            if self.address is None:
                self._auth.apply()  # undone in close(), after Ray stops
                ray.init(**kw)
            else:
                ray.init(address=self.address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            self._auth.restore()
            where = "start Ray here" if self.address is None else f"join the Ray cluster at {self.address!r}"
            raise RayUnavailable(f"cannot {where}: {e}") from None
        self._owns_connection = True

    def _worker_count(self) -> int:
        if self.workers:
            return max(1, int(self.workers))
        res = self.ray.cluster_resources()
        n = int(res.get("CPU", 1) // self.cpus) if self.cpus > 0 else 1
        if self.gpus > 0:
            n = min(n, int(res.get("GPU", 0) // self.gpus))
        return max(1, n)

    def _start_actor(self, name: str) -> _Actor:
        threads = str(self.threads or max(1, int(self.cpus)))
        cls = self.ray.remote(SweepWorker).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_concurrency=2,  # run + cancel at once
            runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}})
        wf = self.sweep.workflow
        handle = cls.remote(wf.doc, wf.params, self.plugins, self.executor_options, self.sweep.limits, os.getcwd())
        return _Actor(handle, name)

    # --- running -------------------------------------------------------------------------------

    def info(self) -> list[dict[str, Any]]:
        """Each live actor's host, pid, torch threads and model loads (for tests and tools)."""
        live = [a for a in self.actors if a.alive]
        return [dict(self.ray.get(a.handle.info.remote(), timeout=120), name=a.name) for a in live]

    def cancel(self) -> None:
        self._cancelled = True
        for a in self.actors:
            if a.alive:
                try:
                    a.handle.cancel.remote()
                except Exception:
                    pass

    def run(self, sweep, todo: list[int]):
        """Yield an ``ItemResult`` per item of ``sweep`` as it finishes (its files already written)."""
        self.sweep = sweep
        if not todo:
            return
        self.connect()
        n = min(self._worker_count(), len(todo))
        if self.max_replacements is None:
            self.max_replacements = n
        queues = deal(todo, affinity_keys(self.sweep, todo), n)
        self.actors = [self._start_actor(f"worker-{k}") for k in range(n)]
        for a, q in zip(self.actors, queues):
            a.queue = q
        attempts = {i: 0 for i in todo}
        inflight: dict[Any, tuple[_Actor, list[int]]] = {}
        cancel_deadline = None
        while True:
            if self._cancelled:
                cancel_deadline = cancel_deadline or time.monotonic() + CANCEL_GRACE_S
                for a in self.actors:
                    a.queue.clear()
            else:
                self._dispatch(inflight, attempts)
            if not inflight:
                return
            if cancel_deadline is not None and time.monotonic() > cancel_deadline:
                return
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                a, items = inflight.pop(ref)
                a.busy = False
                yield from self._collect(ref, a, items, attempts)

    def _dispatch(self, inflight: dict, attempts: dict[int, int]) -> None:
        live = [a for a in self.actors if a.alive]
        for a in live:
            if a.busy:
                continue
            if not a.queue:  # idle: take from the back of the longest queue, if it has more than one item
                donor = max(live, key=lambda b: len(b.queue))  # (its last item waits at most one item's time)
                for _ in range(min(self.batch, len(donor.queue) // 2)):  # at most half: the donor keeps its share
                    a.queue.appendleft(donor.queue.pop())
            if not a.queue:
                continue
            items = [a.queue.popleft() for _ in range(min(self.batch, len(a.queue)))]
            for i in items:
                attempts[i] += 1
            if self.batch == 1:
                ref = a.handle.run.remote(items[0], self.sweep.items[items[0]], attempts[items[0]])
            else:
                ref = a.handle.run_many.remote(items, [self.sweep.items[i] for i in items], [attempts[i] for i in items])
            inflight[ref] = (a, items)
            a.busy = True

    def _collect(self, ref, a: _Actor, items: list[int], attempts: dict[int, int]):
        ray = self.ray
        try:
            got = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            self._lost(a)
            retry = []
            for i in items:
                params = self.sweep.items[i]
                if self._cancelled:
                    yield ItemResult(i, params, "cancelled", attempts=attempts[i])
                elif attempts[i] < self.max_attempts and any(b.alive for b in self.actors):
                    retry.append(i)
                else:
                    msg = f"its worker died {attempts[i]} time(s) ({type(e).__name__}); not retried"
                    yield ItemResult(i, params, "failed", error=item_error(msg), attempts=attempts[i], worker=a.name)
            if retry:  # together, at the front of the shortest live queue: they batch again
                min((b for b in self.actors if b.alive), key=lambda b: len(b.queue)).queue.extendleft(reversed(retry))
            if not any(b.alive for b in self.actors):
                yield from self._abandon("every worker died")
            return
        except ray.exceptions.RayTaskError as e:  # the worker's own code raised: a bug, not the items'
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            for i in items:
                yield ItemResult(i, self.sweep.items[i], "failed", error=item_error(msg), attempts=attempts[i])
            return
        for i, (r, files) in zip(items, [got] if len(items) == 1 and self.batch == 1 else got):
            r.files = self._write(i, files)
            yield r

    def _lost(self, a: _Actor) -> None:
        """An actor died: its queue goes to the live ones, and a replacement starts if allowed."""
        a.alive = False
        if not self._cancelled and self.replaced < (self.max_replacements or 0):
            self.replaced += 1
            self.actors.append(self._start_actor(f"worker-{len(self.actors)}"))
        live = [b for b in self.actors if b.alive]
        if live:  # else the queue stays where _abandon finds it: no item goes unreported
            for k, i in enumerate(list(a.queue)):
                live[k % len(live)].queue.append(i)
            a.queue.clear()

    def _abandon(self, why: str):
        for a in self.actors:
            while a.queue:
                i = a.queue.popleft()
                yield ItemResult(i, self.sweep.items[i], "failed", error=item_error(why))

    def _write(self, i: int, files: dict[str, bytes]) -> list[str]:
        folder = self.sweep.out_dir / item_folder(i)
        names = []
        for name in sorted(files):
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            path = write_new(target.parent, target.name, files[name])
            names.append(str(path.relative_to(self.sweep.out_dir)))
        return names

    def close(self) -> None:
        """Stop this sweep's actors; stop Ray if this sweep started it, else just disconnect."""
        ray = self.ray
        for a in self.actors:
            try:
                ray.kill(a.handle)
            except Exception:
                pass
        self.actors = []
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._auth.restore()
