"""One disk cache shared by several processes at once, and kept under a size limit by evicting the
least recently used entries. (Damage of a single entry read by one process: test_cache_disk.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from graphflow import Executor, Workflow
from graphflow.cache.disk import STALE_TMP_SECONDS, DiskCache
from graphflow.cli import main
from graphflow.sizes import DEFAULT_CACHE_BYTES, parse_size
from tests.toy_nodes import RUNS, link, toy_registry

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
HAMMER_OPS = 300
KEYS = [f"{i:02x}{'ab' * 31}" for i in range(0, 256, 21)]  # 13 keys, spread over folders
NEEDED = {"vec", "sum", "n", "key"}


def vec_doc(factor: int, size: int = 64) -> dict:
    return {
        "format": 1,
        "nodes": {
            "make": {"type": "MakeVec", "inputs": {"value": 2, "size": size}},
            "scale": {"type": "ScaleVec", "inputs": {"vec": link("make.vec"), "factor": factor}},
            "total": {"type": "SumVec", "inputs": {"vec": link("scale.vec")}},
        },
        "outputs": {"total": "total.total"},
    }


def on_disk(cache: Path) -> list[Path]:
    return sorted(cache.glob("??/*.safetensors"))


def disk_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in on_disk(cache))


# --- several processes at once ---------------------------------------------------------------------


def _worker(cache: str, worker: int, max_bytes: int, go: str) -> None:
    """Runs in its own process: puts, gets and has on the same keys as the other workers, with
    random tensors, checking every hit against what it says it holds; then runs a workflow that
    every worker runs and one of its own, each time with a fresh executor. Prints its counts as JSON."""
    import random

    import torch

    n: Counter[str] = Counter()

    def count_prunes(disk: DiskCache) -> DiskCache:
        evict = disk._evict

        def counting(*a):
            r = evict(*a)
            n["prunes"] += 1
            n["evicted"] += r.removed
            return r

        disk._evict = counting
        return disk

    disk = count_prunes(DiskCache(cache, max_bytes=max_bytes))
    Path(go + f".ready{worker}").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:  # start together
        time.sleep(0.005)

    rng = random.Random(worker)
    gen = torch.Generator().manual_seed(worker)
    for _ in range(HAMMER_OPS):
        key = rng.choice(KEYS)
        r = rng.random()
        if r < 0.4:
            size = rng.randrange(16, 2048)
            vec = torch.randn(size, generator=gen)
            disk.put(key, {"vec": vec, "sum": float(vec.double().sum()), "n": size, "key": key, "writer": worker})
            n["put"] += 1
        elif r < 0.85:
            out, err = disk.get(key, NEEDED)
            n["get"] += 1
            if err:
                n["corrupt"] += 1
                print("corrupt:", err, file=sys.stderr)
            elif out is None:
                n["miss"] += 1
            elif out["key"] != key or out["vec"].numel() != out["n"] or float(out["vec"].double().sum()) != out["sum"]:
                n["wrong"] += 1
            else:
                n["hit"] += 1
        else:
            _, err = disk.has(key, NEEDED)
            n["has"] += 1
            n["corrupt"] += err is not None

    reg = toy_registry()
    shared, own = Workflow.from_dict(vec_doc(3), reg), Workflow.from_dict(vec_doc(10 + worker), reg)
    for _ in range(3):
        for wf, factor in ((shared, 3), (own, 10 + worker)):
            ex = Executor(cache_dir=cache, cache_max_size=max_bytes, out_dir=os.path.join(cache, "..", f"out{worker}"))
            count_prunes(ex.disk)
            r = ex.run(wf)
            n["runs"] += 1
            n["corrupt"] += len(r.cache_errors)
            n["wrong"] += not (r.ok and r["total"] == 2 * factor * 64)
    print(json.dumps(n))


@pytest.mark.slow
def test_processes_share_one_cache_without_crash_or_corruption(tmp_path):
    cache = tmp_path / "cache"
    go = str(tmp_path / "go")
    max_bytes = 32 << 10  # small: entries are evicted while others read them
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from tests.cache.test_cache_shared import _worker; _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache), str(w), str(max_bytes), go], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(WORKERS)]
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{go}.ready{w}") for w in range(WORKERS)) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    Path(go).touch()
    total: Counter[str] = Counter()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        total.update(json.loads(out.strip().splitlines()[-1]))

    # every entry left reads back intact, under its own key, and matches its checksum
    disk = DiskCache(cache, max_bytes=None)
    left = on_disk(cache)
    intact = 0
    for p in left:
        outputs, err = disk.get(p.stem, set())
        assert err is None and outputs is not None, err
        intact += 1
    temporaries = [p for p in cache.glob("??/.*") if ".tmp" in p.name]
    print(f"\n{WORKERS} processes: {total['put']} puts, {total['get']} gets ({total['hit']} hits, {total['miss']} misses), "
          f"{total['has']} has, {total['runs']} workflow runs; {total['prunes']} prunes evicted {total['evicted']} entries; "
          f"{total['corrupt']} corrupt, {total['wrong']} wrong values; {intact} of {len(left)} entries left intact "
          f"({disk_bytes(cache)} bytes, limit {max_bytes}), {len(temporaries)} temporary files left")
    assert total["corrupt"] == 0 and total["wrong"] == 0
    assert total["runs"] == 6 * WORKERS
    assert total["hit"] > 0 and total["evicted"] > 0  # reads and evictions really overlapped
    assert intact == len(left) > 0 and temporaries == []
    # each process prunes when its own estimate crosses the limit, so the folder stays near it
    assert disk_bytes(cache) <= WORKERS * max_bytes


# --- damage not covered by test_cache_disk.py -------------------------------------------------------


def _foreign_safetensors(p: Path) -> None:
    """Another program's safetensors file (model weights, say) under an entry's name."""
    import torch
    from safetensors.torch import save

    p.write_bytes(save({"weight": torch.ones(3)}, metadata={"format": "pt"}))


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "foreign_safetensors": _foreign_safetensors,
    "huge_header_length": lambda p: p.write_bytes((1 << 62).to_bytes(8, "little") + b"{}"),
    "header_not_json": lambda p: p.write_bytes((20).to_bytes(8, "little") + b"\xff" * 40),
    "other_key_inside": lambda p: p.write_bytes(p.with_name(f"{KEYS[1]}.safetensors").read_bytes()),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("probe", ["has", "get"])
def test_foreign_or_damaged_entry_is_reported_deleted_and_rewritten(tmp_path, damage, probe):
    import torch

    disk = DiskCache(tmp_path)
    for key in KEYS[:2]:
        disk.put(key, {"vec": torch.arange(4.0), "key": key})
    p = disk.path(KEYS[0])
    p.with_name(f"{KEYS[1]}.safetensors").write_bytes(disk.path(KEYS[1]).read_bytes())
    DAMAGE[damage](p)
    found, err = disk.has(KEYS[0], {"vec"}) if probe == "has" else disk.get(KEYS[0], {"vec"})
    assert not found and err and p.name in err
    assert not p.exists()
    assert disk.put(KEYS[0], {"vec": torch.arange(4.0), "key": KEYS[0]})
    out, err = disk.get(KEYS[0], {"vec"})
    assert err is None and out["key"] == KEYS[0]


def test_foreign_safetensors_entry_is_recomputed_by_the_executor(tmp_path):
    wf = Workflow.from_dict(vec_doc(3), toy_registry())
    Executor(cache_dir=tmp_path, out_dir=tmp_path).run(wf)
    for p in on_disk(tmp_path):
        _foreign_safetensors(p)
    RUNS.clear()
    r = Executor(cache_dir=tmp_path, out_dir=tmp_path).run(wf)
    assert r.ok and r["total"] == 384.0 and dict(RUNS) == {"make": 1, "scale": 1, "total": 1}
    assert len(r.cache_errors) == 3 and all("not a graphflow cache entry" in e for e in r.cache_errors)


def test_an_entry_evicted_between_plan_and_load_is_recomputed_quietly(tmp_path):
    """Another process deletes an entry after this one planned to read it: a miss, not damage."""
    wf = Workflow.from_dict(vec_doc(3), toy_registry())
    Executor(cache_dir=tmp_path, out_dir=tmp_path).run(wf)
    ex = Executor(cache_dir=tmp_path, out_dir=tmp_path)
    get = ex.disk.get

    def evicted_first(key, needed):
        ex.disk.path(key).unlink(missing_ok=True)
        return get(key, needed)

    ex.disk.get = evicted_first
    RUNS.clear()
    r = ex.run(wf)
    assert r.ok and r["total"] == 384.0 and r.cache_errors == [] and RUNS["total"] == 1


def test_a_damaged_entry_replaced_meanwhile_is_not_deleted(tmp_path):
    """The reader that found damage deletes only the file it read, not a good one another process
    renamed over it in the meantime."""
    import torch

    disk = DiskCache(tmp_path)
    disk.put(KEYS[0], {"vec": torch.ones(2)})
    p = disk.path(KEYS[0])
    damaged = os.stat(p)
    new = p.with_name("another-process.tmp")  # another process's atomic write: a new inode under the same name
    new.write_bytes(p.read_bytes())
    os.replace(new, p)
    fd = os.open(p.parent, os.O_RDONLY)
    try:
        disk._discard(fd, p.name, damaged)
    finally:
        os.close(fd)
    assert disk.get(KEYS[0], {"vec"})[0] is not None


def test_a_hit_survives_a_failing_utime(tmp_path, monkeypatch):
    import torch

    disk = DiskCache(tmp_path)
    disk.put(KEYS[0], {"vec": torch.ones(2)})

    def vanished(*a, **k):
        raise FileNotFoundError

    monkeypatch.setattr(os, "utime", vanished)
    out, err = disk.get(KEYS[0], {"vec"})
    assert err is None and out["vec"].tolist() == [1.0, 1.0]


# --- size limit, least recently used out first ------------------------------------------------------


def _entry(i: int):
    import torch

    return {"vec": torch.full((256,), float(i))}  # 1 KiB of tensor each, all the same size


def test_least_recently_used_entries_are_evicted_first(tmp_path):
    probe = DiskCache(tmp_path / "probe", max_bytes=None)
    probe.put(KEYS[0], _entry(0))
    size = probe.path(KEYS[0]).stat().st_size
    disk = DiskCache(tmp_path / "c", max_bytes=int(size * 5.5))  # room for 5 entries
    old = time.time() - 1000
    for i, key in enumerate(KEYS[:5]):
        assert disk.put(key, _entry(i))
        os.utime(disk.path(key), (old + i, old + i))  # written in this order, long ago
    assert len(on_disk(tmp_path / "c")) == 5
    for key in (KEYS[1], KEYS[0]):  # read: now the most recently used
        assert disk.get(key, {"vec"})[0] is not None
    assert disk.put(KEYS[5], _entry(5))  # 6 entries: over the limit

    left = {p.stem for p in on_disk(tmp_path / "c")}
    # recency, oldest first: 2, 3, 4, 1, 0, 5; an automatic prune goes down to 90 % of the limit
    order = [KEYS[i] for i in (2, 3, 4, 1, 0, 5)]
    expected = set(order[next(k for k in range(6) if (6 - k) * size <= int(size * 5.5 * 0.9)):])
    assert left == expected == {KEYS[4], KEYS[1], KEYS[0], KEYS[5]}
    assert disk_bytes(tmp_path / "c") <= disk.max_bytes


def test_puts_do_not_rescan_the_folder_each_time(tmp_path, monkeypatch):
    disk = DiskCache(tmp_path, max_bytes=1 << 30)
    scans = Counter()
    scan = disk._scan
    monkeypatch.setattr(disk, "_scan", lambda: (scans.update(["scan"]), scan())[1])
    for i in range(150):
        disk.put(f"{i:04x}{'ab' * 30}", _entry(i))
    assert scans["scan"] == 2  # the first put, and once after 100 more (other writers are unseen)


def test_an_entry_larger_than_the_limit_is_not_stored(tmp_path):
    disk = DiskCache(tmp_path, max_bytes="1K")
    assert not disk.put(KEYS[0], _entry(0))
    assert on_disk(tmp_path) == []


def test_executor_keeps_the_disk_cache_under_its_limit(tmp_path):
    assert Executor(cache_dir=tmp_path).disk.max_bytes == DEFAULT_CACHE_BYTES == 4 << 30
    reg = toy_registry()
    ex = Executor(cache_dir=tmp_path / "c", cache_max_size="4K", out_dir=tmp_path)
    for factor in range(1, 9):
        assert ex.run(Workflow.from_dict(vec_doc(factor, size=128), reg))["total"] == 2 * factor * 128
    assert 0 < disk_bytes(tmp_path / "c") <= 4096


def _stray_temporaries(cache: Path) -> tuple[Path, Path]:
    folder = cache / KEYS[0][:2]
    folder.mkdir(parents=True, exist_ok=True)
    stale, young = folder / f".{KEYS[0]}.safetensors.tmp4242.1", folder / f".{KEYS[1]}.safetensors.tmp4243.1"
    for p in (stale, young):
        p.write_bytes(b"half an entry")
    t = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (t, t))
    return stale, young


def test_prune_and_clear_remove_temporaries_killed_processes_left(tmp_path):
    import torch

    disk = DiskCache(tmp_path)
    disk.put(KEYS[2], {"vec": torch.ones(2)})
    stale, young = _stray_temporaries(tmp_path)
    r = disk.prune()
    assert (r.temporaries, r.removed, r.entries) == (1, 0, 1)
    assert not stale.exists() and young.exists()  # a younger one may be a write in progress
    stale, young = _stray_temporaries(tmp_path)
    assert disk.clear() == 1
    assert not stale.exists() and young.exists() and on_disk(tmp_path) == []


# --- the command line -------------------------------------------------------------------------------


@pytest.fixture
def _cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("text,n", [("500M", 500 << 20), ("4G", 4 << 30), ("4g", 4 << 30), ("4GiB", 4 << 30),
                                    ("4GB", 4 << 30), ("1.5K", 1536), ("1048576", 1048576), ("0", 0), (" 2 T ", 2 << 40)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "lots", "4X", "-1", "1.5", "G", "4 GG", "1e9"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="e.g. 500M, 4G"):
        parse_size(text)


def test_cache_prune_command(tmp_path, capsys, _cli_env):
    import torch

    cache = tmp_path / "cache"
    disk = DiskCache(cache, max_bytes=None)
    for i, key in enumerate(KEYS[:8]):
        disk.put(key, {"vec": torch.full((1024,), float(i))})  # 4 KiB each
        os.utime(disk.path(key), (1000 + i, 1000 + i))
    stale, _ = _stray_temporaries(cache)
    before = disk_bytes(cache)
    assert main(["cache", "--cache-dir", str(cache)]) == 0
    assert ": 8 entries" in capsys.readouterr().out

    assert main(["cache", "--cache-dir", str(cache), "--prune", "--max-size", "20K"]) == 0
    out = capsys.readouterr().out
    assert disk_bytes(cache) <= 20 << 10
    left = {p.stem for p in on_disk(cache)}
    assert left == set(KEYS[8 - len(left):8])  # the most recently used stay
    assert f"removed {8 - len(left)} least recently used entries" in out and "1 stray temporary file" in out
    assert f"{len(left)} entries" in out and "limit 20.0 KiB" in out
    assert not stale.exists() and before > 20 << 10

    assert main(["cache", "--cache-dir", str(cache), "--prune"]) == 0  # default limit 4 GiB: nothing to do
    assert "removed 0 least recently used entries" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(cache), "--prune", "--max-size", "0"]) == 0
    assert on_disk(cache) == []


def test_size_errors_exit_2_with_a_clear_message(tmp_path, capsys, _cli_env):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(vec_doc(3)))
    assert main(["run", str(wf), "--plugin", "tests.toy_nodes", "--cache-max-size", "12X"]) == 2
    err = capsys.readouterr().err
    assert "--cache-max-size: invalid size '12X'" in err and "500M, 4G" in err
    assert main(["cache", "--prune", "--max-size", "lots"]) == 2
    assert "--max-size: invalid size 'lots'" in capsys.readouterr().err
    assert main(["cache", "--max-size", "1G"]) == 2
    assert "--max-size goes with --prune" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["cache", "--prune", "--clear"])
    assert e.value.code == 2


def test_run_with_a_cache_max_size(tmp_path, capsys, _cli_env):
    cache = tmp_path / "cache"
    for factor in (2, 3, 4, 5):
        wf = tmp_path / f"wf{factor}.json"
        wf.write_text(json.dumps(vec_doc(factor, size=256)))
        assert main(["run", str(wf), "--plugin", "tests.toy_nodes", "--cache-dir", str(cache), "--cache-max-size", "3K",
                     "--quiet"]) == 0
        assert f"total: {2.0 * factor * 256}" in capsys.readouterr().out
    assert 0 < disk_bytes(cache) <= 3 << 10
