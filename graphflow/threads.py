"""How many threads torch computes with, chosen so that a run does not collapse on shared cores.

torch starts one OpenMP worker per physical core and libgomp's workers spin-wait between the
UNet's thousands of small parallel regions. When another process holds one of those cores (a
second sweep, a build, a container's CPU quota smaller than the cores it can see), every region
waits for the worker that got no time slice, and the spinning workers burn what little time there
is: on a 2-core machine running other work the README's 12-item sweep took 8 min 13 s with torch's
default against 36 s with one thread. So the count is chosen from what this process can really
have: the CPUs it may run on (``os.sched_getaffinity``), its cgroup's CPU quota (``cpu.max``, or
cgroup v1's ``cpu.cfs_quota_us``), the processes of its own that run at once (a sweep's workers
on one machine) and the other work that is runnable on the machine right now. A user's choice wins:
``--threads N``, then ``GRAPHFLOW_THREADS``, then an ``OMP_NUM_THREADS`` already set.

Everything read is injectable (``Machine``), so the choice is tested under a fake quota, a fake
affinity and a fake load rather than by timing.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV = "GRAPHFLOW_THREADS"
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def read_cpu_max(text: str) -> float | None:
    """CPUs a cgroup v2 ``cpu.max`` grants (``"150000 100000"`` is 1.5); None for ``max`` (no quota)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_files() -> list[Path]:
    """Where this process's CPU quota may be written, most specific first: its cgroup v2 folder and
    the folders above it (a quota set on a parent holds too), then cgroup v1's cpu controller."""
    found: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hid == "0" and controllers == "":
            p = _CGROUP_ROOT / rel.lstrip("/")
            while True:
                found.append(p / "cpu.max")
                if p == _CGROUP_ROOT or _CGROUP_ROOT not in p.parents:
                    break
                p = p.parent
        elif "cpu" in controllers.split(","):
            for base in (_CGROUP_ROOT / "cpu,cpuacct", _CGROUP_ROOT / "cpu"):
                found.append(base / rel.lstrip("/") / "cpu.cfs_quota_us")
                found.append(base / "cpu.cfs_quota_us")
    return found


def cgroup_quota(files: list[Path] | None = None) -> float | None:
    """The smallest CPU quota among ``files`` (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``
    beside its ``cpu.cfs_period_us``), in CPUs; None when none is set or none can be read."""
    quotas = []
    for f in _own_cgroup_files() if files is None else files:
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        try:
            if Path(f).name == "cpu.cfs_quota_us":
                quota = int(text.strip())
                period = int((Path(f).parent / "cpu.cfs_period_us").read_text().strip())
                q = quota / period if quota > 0 and period > 0 else None
            else:
                q = read_cpu_max(text)
        except (OSError, ValueError):
            continue
        if q is not None:
            quotas.append(q)
    return min(quotas) if quotas else None


def runnable_others(samples: int = 3, gap: float = 0.002, read: Callable[[], str] | None = None) -> int:
    """Threads of other processes runnable on the machine now: /proc/loadavg's running count, less
    this reader, the median of a few reads (one read catches passing blips). 0 where unknown."""
    def once() -> int | None:
        try:
            text = read() if read else Path("/proc/loadavg").read_text()
            return max(0, int(text.split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return None
    seen = []
    for k in range(samples):
        if k:
            time.sleep(gap)
        n = once()
        if n is not None:
            seen.append(n)
    return sorted(seen)[len(seen) // 2] if seen else 0


@dataclass
class Machine:
    """What the choice reads, each a callable so that tests can stand in for the machine."""

    affinity: Callable[[], int] = _affinity
    online: Callable[[], int] = lambda: os.cpu_count() or 1  # the machine's CPUs, which other work competes for
    quota: Callable[[], float | None] = cgroup_quota
    others: Callable[[], int] = runnable_others
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and how it was reached (for ``--profile``)."""

    threads: int
    source: str  # "--threads", "GRAPHFLOW_THREADS", "OMP_NUM_THREADS" or "automatic"
    cpus: int  # CPUs this process may run on
    quota: float | None  # its cgroup quota, in CPUs
    workers: int  # its own processes running torch at once
    others: int  # other work runnable at the time of the choice

    def describe(self) -> str:
        if self.source != "automatic":
            return f"torch threads: {self.threads} (set by {self.source})"
        quota = "no CPU quota" if self.quota is None else f"a CPU quota of {self.quota:g}"
        return (f"torch threads: {self.threads} (automatic: {self.cpus} CPU{'s' * (self.cpus != 1)} usable, {quota}, "
                f"{self.workers} worker{'s' * (self.workers != 1)}, {self.others} other runnable thread{'s' * (self.others != 1)}; "
                f"--threads N or {ENV} to set it)")


def _positive(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{what} takes a whole number of threads of at least 1, got {text!r}")
    return n


def choose(requested: int | None = None, workers: int = 1, machine: Machine | None = None) -> ThreadChoice:
    """The thread count for torch in one of ``workers`` processes of this sweep or server.

    Automatic: the CPUs this process may have (its affinity, and its cgroup quota rounded down,
    at least 1), shared out between the workers, and no more than the machine's CPUs that the
    other work runnable now leaves free, so that no thread of ours waits for a core someone else
    holds. (Other work counts against the machine's CPUs, not the quota: in a 4-CPU container on a
    64-core host, 40 runnable threads elsewhere still leave it its 4.) Raises ValueError naming the setting
    for a count below 1 or not a number."""
    m = machine or Machine()
    workers = max(1, int(workers))
    cpus = max(1, m.affinity())
    if requested is not None:
        return ThreadChoice(_positive(str(requested), "--threads"), "--threads", cpus, None, workers, 0)
    for name in (ENV, "OMP_NUM_THREADS"):
        v = m.env.get(name)
        if v and not (name == "OMP_NUM_THREADS" and _applied is not None and v == str(_applied.threads)):
            return ThreadChoice(_positive(v, name), name, cpus, None, workers, 0)
    quota = m.quota()
    budget = cpus if quota is None else max(1, min(cpus, math.floor(quota + 1e-9)))
    others = m.others()
    free = max(1, m.online()) - others  # the machine's CPUs other work does not hold now
    share = min(budget // workers, free // workers)
    return ThreadChoice(max(1, share), "automatic", cpus, quota, workers, others)


_applied: ThreadChoice | None = None


def apply(choice: ThreadChoice) -> ThreadChoice:
    """Make ``choice`` torch's: before torch is imported through the environment its OpenMP
    runtime reads at start (so no larger team is ever started), after it by ``set_num_threads``."""
    global _applied
    n = str(choice.threads)
    os.environ["OMP_NUM_THREADS"] = n
    os.environ["MKL_NUM_THREADS"] = n
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(choice.threads)
    _applied = choice
    return choice


def configure(requested: int | None = None, workers: int = 1, machine: Machine | None = None) -> ThreadChoice:
    """``choose`` then ``apply``: what `graphflow run`, `sweep` and `serve` do before anything runs."""
    return apply(choose(requested, workers, machine))


def applied() -> ThreadChoice | None:
    """The choice this process made, if it made one."""
    return _applied
