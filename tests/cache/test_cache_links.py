"""A shared cache folder is writable by others, so a link planted in it must not turn the cache
into a way to write or delete files elsewhere (the red team's test: a model file next to the cache
was deleted by eviction). Real folders, real links, real safetensors entries: nothing is mocked."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from graphflow.cache.disk import DiskCache
from graphflow.cli import main

KEY = "ab" + "12" * 31  # its shard folder is "ab"
OTHER = "cd" + "34" * 31  # shard "cd"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time, to show nothing changed."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the cache holding what a user keeps there: a model and a valid-looking
    cache entry (copied from a real cache), which a link inside the cache points to."""
    out = tmp_path / "models"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights the cache must never touch" * 100)
    probe = DiskCache(tmp_path / "probe")
    probe.put(KEY, {"vec": torch.arange(4.0)})
    (out / f"{KEY}.safetensors").write_bytes(probe.path(KEY).read_bytes())
    return out


def test_a_linked_shard_folder_is_never_written_through_nor_evicted(tmp_path, outside):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ab").symlink_to(outside, target_is_directory=True)
    (cache / "cd").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    disk = DiskCache(cache, max_bytes=None)

    assert disk.usage() == (0, 0)  # the files behind the links are not entries
    assert disk.get(KEY, {"vec"}) == (None, None)  # not read through the link (it would be a valid hit)
    assert disk.has(KEY, {"vec"}) == (False, None)
    assert disk.put(KEY, {"vec": torch.ones(3)})
    assert snapshot(outside) == before  # written inside the cache, not through the link
    assert not (cache / "ab").is_symlink() and (cache / "ab").is_dir()  # the link was replaced by a real folder
    out, err = disk.get(KEY, {"vec"})
    assert err is None and out["vec"].tolist() == [1.0, 1.0, 1.0]  # and the cache works

    disk.put(OTHER[:2] + "00" * 31, {"vec": torch.ones(2)})  # "cd" is a link too: replaced the same way
    (cache / "ef").symlink_to(outside, target_is_directory=True)  # planted after the writes
    assert disk.prune(0).removed == 2  # both real entries, nothing behind "ef"
    assert disk.put(KEY, {"vec": torch.ones(3)})
    assert disk.clear() == 1
    assert main(["cache", "--cache-dir", str(cache), "--clear"]) == 0
    assert snapshot(outside) == before
    assert (cache / "ef").is_symlink()  # a link is not the cache's to delete by a prune or a clear


def test_a_linked_entry_is_never_read_touched_nor_deleted_through(tmp_path, outside):
    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    entry = cache / "ab" / f"{KEY}.safetensors"
    entry.symlink_to(outside / f"{KEY}.safetensors")  # a valid entry for this very key, behind a link
    os.utime(outside / f"{KEY}.safetensors", ns=(10**18, 10**18))  # a hit would make it "now"
    before = snapshot(outside)
    disk = DiskCache(cache, max_bytes=None)

    assert disk.usage() == (0, 0) and disk.prune(0).removed == 0 and disk.clear() == 0
    out, err = disk.get(KEY, {"vec"})
    assert out is None and err == f"{entry}: a link, not an entry (the cache never follows one)"
    assert not entry.is_symlink() and not entry.exists()  # the link itself was removed, its target kept
    assert snapshot(outside) == before

    entry.symlink_to(outside / "model.safetensors")
    assert disk.put(KEY, {"vec": torch.ones(3)})  # the rename replaces the link, not its target
    assert not entry.is_symlink() and disk.get(KEY, {"vec"})[0]["vec"].tolist() == [1.0, 1.0, 1.0]
    assert disk.clear() == 1
    assert snapshot(outside) == before


def test_a_fifo_at_an_entry_name_is_a_damaged_entry_not_a_hang(tmp_path):
    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    os.mkfifo(cache / "ab" / f"{KEY}.safetensors")
    disk = DiskCache(cache)
    got: list = []
    t = threading.Thread(target=lambda: got.append(disk.get(KEY, {"vec"})), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO planted at an entry's name blocked"
    assert got[0][0] is None and got[0][1].endswith(": not a file the cache writes (a FIFO, a device or a folder): never read")
    assert not (cache / "ab" / f"{KEY}.safetensors").exists()
