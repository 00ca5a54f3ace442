"""The torch thread count graphflow chooses, under a fake machine: CPU quotas written to files in
the cgroup formats, a fake affinity and a fake /proc/loadavg. Nothing is timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphflow import threads as th

ROOT = Path(__file__).resolve().parents[1]


def machine(cpus: int, quota_files: list[Path] | None = None, loadavg: str = "0.00 0.00 0.00 1/100 1",
            env: dict[str, str] | None = None, online: int | None = None) -> th.Machine:
    return th.Machine(affinity=lambda: cpus, online=lambda: online or cpus, quota=lambda: th.cgroup_quota(quota_files or []),
                      others=lambda: th.runnable_others(read=lambda: loadavg), env=env or {})


def cpu_max(tmp_path: Path, text: str, name: str = "a") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "cpu.max").write_text(text)
    return d / "cpu.max"


def test_cpu_max_formats():
    assert th.read_cpu_max("max 100000\n") is None
    assert th.read_cpu_max("150000 100000\n") == 1.5
    assert th.read_cpu_max("200000 50000") == 4.0
    assert th.read_cpu_max("") is None


def test_idle_machine_without_quota_uses_every_usable_cpu():
    c = th.choose(machine=machine(8))
    assert (c.threads, c.source, c.cpus, c.quota, c.others) == (8, "automatic", 8, None, 0)


def test_a_cgroup_v2_quota_below_the_cpus_caps_the_threads(tmp_path):
    c = th.choose(machine=machine(16, [cpu_max(tmp_path, "250000 100000\n")]))
    assert (c.threads, c.quota) == (2, 2.5)  # 2.5 CPUs of time: 2 threads, never 3 sharing it


def test_a_quota_under_one_cpu_still_gives_one_thread(tmp_path):
    assert th.choose(machine=machine(4, [cpu_max(tmp_path, "50000 100000")])).threads == 1


def test_the_smallest_quota_of_the_cgroup_and_its_parents_holds(tmp_path):
    files = [cpu_max(tmp_path, "max 100000", "leaf"), cpu_max(tmp_path, "300000 100000", "parent"),
             tmp_path / "missing" / "cpu.max"]
    c = th.choose(machine=machine(16, files))
    assert (c.threads, c.quota) == (3, 3.0)


def test_a_cgroup_v1_quota_is_read_with_its_period(tmp_path):
    (tmp_path / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert th.cgroup_quota([tmp_path / "cpu.cfs_quota_us"]) == 3.0
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert th.cgroup_quota([tmp_path / "cpu.cfs_quota_us"]) is None


def test_an_unreadable_quota_file_is_no_quota(tmp_path):
    assert th.cgroup_quota([cpu_max(tmp_path, "garbage here")]) is None
    assert th.choose(machine=machine(4, [cpu_max(tmp_path, "garbage", "b")])).threads == 4


def test_other_runnable_work_takes_its_cores_out():
    # /proc/loadavg's 4th field counts runnable threads, the reader among them
    assert th.choose(machine=machine(2, loadavg="1.00 1.00 1.00 2/300 9")).threads == 1
    assert th.choose(machine=machine(8, loadavg="3.00 1.00 1.00 4/300 9")).threads == 5
    assert th.choose(machine=machine(2, loadavg="9.00 9.00 9.00 12/300 9")).threads == 1


def test_other_work_on_a_big_host_leaves_a_containers_quota_alone(tmp_path):
    quota = [cpu_max(tmp_path, "400000 100000")]
    assert th.choose(machine=machine(64, quota, loadavg="40 40 40 41/900 9", online=64)).threads == 4
    assert th.choose(machine=machine(64, quota, loadavg="62 62 62 63/900 9", online=64)).threads == 2


def test_the_median_of_the_reads_ignores_a_passing_blip():
    reads = iter(["0 0 0 1/9 1", "0 0 0 7/9 1", "0 0 0 1/9 1"])
    assert th.runnable_others(read=lambda: next(reads), gap=0) == 0


def test_a_sweeps_workers_share_the_budget(tmp_path):
    assert th.choose(workers=2, machine=machine(8)).threads == 4
    assert th.choose(workers=3, machine=machine(8, [cpu_max(tmp_path, "400000 100000")])).threads == 1
    assert th.choose(workers=4, machine=machine(8, loadavg="0 0 0 3/10 1")).threads == 1  # (8 - 2) // 4


def test_the_users_choice_wins_in_order():
    m = machine(8, env={"GRAPHFLOW_THREADS": "3", "OMP_NUM_THREADS": "5"})
    assert (th.choose(2, machine=m).threads, th.choose(2, machine=m).source) == (2, "--threads")
    assert (th.choose(machine=m).threads, th.choose(machine=m).source) == (3, "GRAPHFLOW_THREADS")
    m = machine(8, env={"OMP_NUM_THREADS": "5"})
    assert (th.choose(machine=m).threads, th.choose(machine=m).source) == (5, "OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_count_is_refused_naming_the_setting(value):
    with pytest.raises(ValueError) as e:
        th.choose(machine=machine(4, env={"GRAPHFLOW_THREADS": value}))
    assert str(e.value) == f"GRAPHFLOW_THREADS takes a whole number of threads of at least 1, got {value!r}"


def test_describe_says_what_was_chosen_and_why():
    c = th.choose(machine=machine(2, loadavg="1 1 1 2/50 3"))
    assert c.describe() == ("torch threads: 1 (automatic: 2 CPUs usable, no CPU quota, 1 worker, 1 other runnable thread; "
                            "--threads N or GRAPHFLOW_THREADS to set it)")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GRAPHFLOW_THREADS")}
    return subprocess.run([sys.executable, "-m", "graphflow.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**full, "PYTHONPATH": str(ROOT), **env}, timeout=120)


def test_run_profile_reports_the_choice_and_a_bad_one_exits_2(tmp_path):
    p = _cli("run", "workflows/hello.json", "--no-cache", "--out", str(tmp_path), "--profile", env={"GRAPHFLOW_THREADS": "3"})
    assert p.returncode == 0, p.stderr
    assert "torch threads: 3 (set by GRAPHFLOW_THREADS)" in p.stderr.splitlines()
    p = _cli("run", "workflows/hello.json", "--no-cache", "--out", str(tmp_path), "--threads", "0", env={})
    assert p.returncode == 2
    assert p.stderr.strip() == "graphflow run: error: --threads takes a whole number of threads of at least 1, got '0'"


def test_torch_gets_the_count_before_and_after_its_import():
    code = ("from graphflow import threads as th\n"
            "th.configure(1)\n"
            "import torch\n"
            "print(torch.get_num_threads())\n"
            "th.configure(2)\n"
            "print(torch.get_num_threads())\n")
    full = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**full, "PYTHONPATH": str(ROOT)},
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "2"]
