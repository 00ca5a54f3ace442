"""Content ids remembered between processes (graphflow/cache/content_ids.py): paid once per file,
re-hashed when the file changes, equal for a copy, a corrupt store ignored. "A new process" is
this one with its in-process memo emptied, and, once, two real `graphflow run` processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import blake3
import orjson
import pytest

from graphflow.cache import content_ids
from graphflow.cache.content_ids import NAME, ContentIdStore
from graphflow.engine import fingerprint as fp
from graphflow.node.file_access import InputRefused

ROOT = Path(__file__).resolve().parents[2]


def blake(data: bytes) -> str:
    """A content id as the reference package computes it: BLAKE3, 160 bits."""
    return blake3.blake3(data).hexdigest(length=20)


@pytest.fixture
def store(tmp_path):
    """The store in a cache folder, as an executor with that ``cache_dir`` sets it; afterwards none."""
    fp.remember_content_ids(tmp_path / "cache")
    fp._memo.clear()
    yield tmp_path / "cache" / NAME
    fp.remember_content_ids(None)
    fp._memo.clear()


def new_process() -> tuple[int, int]:
    """Forget what this process remembers (a later process starts so); the counters now."""
    fp._memo.clear()
    fp.remember_content_ids(fp._store.path.parent if fp._store is not None else None)
    return fp.hash_stats.hashed, fp.hash_stats.remembered


def counted(path: Path) -> tuple[str, int, int]:
    """The file's id, and how many files were hashed and found in the store to get it."""
    h0, r0 = fp.hash_stats.hashed, fp.hash_stats.remembered
    cid = fp.content_id(path)
    return cid, fp.hash_stats.hashed - h0, fp.hash_stats.remembered - r0


def test_a_files_id_is_hashed_once_then_read_from_the_store(store, tmp_path):
    f = tmp_path / "weights.bin"
    data = os.urandom(3 << 20)
    f.write_bytes(data)
    assert counted(f) == (blake(data), 1, 0)
    assert counted(f) == (blake(data), 0, 0)  # this process: its memo
    new_process()
    assert counted(f) == (blake(data), 0, 1)  # a later process: the store
    saved = orjson.loads(store.read_bytes())
    st = f.stat()
    assert saved["ids"] == {f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}": blake(data)}


def test_a_changed_file_is_hashed_again(store, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 1000)
    first = counted(f)
    new_process()
    f.write_bytes(b"b" * 1000)  # same size, same inode: a new mtime
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert counted(f) == (blake(b"b" * 1000), 1, 0)
    assert first[0] != blake(b"b" * 1000)


def test_a_copy_with_another_inode_gets_the_same_id(store, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(os.urandom(100_000))
    cid, _, _ = counted(f)
    copy = tmp_path / "elsewhere" / "copy.bin"
    copy.parent.mkdir()
    shutil.copy2(f, copy)  # the same mtime, another inode
    assert copy.stat().st_ino != f.stat().st_ino
    new_process()
    assert counted(copy) == (cid, 1, 0)
    assert counted(f) == (cid, 0, 1)


@pytest.mark.parametrize("corrupt", [
    b"",
    b"{not json",
    b"[1, 2]",
    b'{"version": 1, "check": "0", "ids": {}}',
])
def test_a_corrupt_store_is_ignored_and_replaced(store, tmp_path, corrupt):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 5000)
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_bytes(corrupt)
    new_process()
    assert counted(f) == (blake(b"x" * 5000), 1, 0)
    new_process()
    assert counted(f) == (blake(b"x" * 5000), 0, 1)  # written whole again


def test_a_tampered_id_fails_the_checksum_and_is_not_trusted(store, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"real bytes")
    counted(f)
    saved = json.loads(store.read_text())
    key = next(iter(saved["ids"]))
    saved["ids"][key] = "0" * 40
    store.write_text(json.dumps(saved))
    new_process()
    assert counted(f) == (blake(b"real bytes"), 1, 0)


def test_an_unwritable_folder_only_loses_the_memory(tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    s = ContentIdStore(blocker / "cache")
    s.put("1:2:3:4", "a" * 40)  # no error: kept in this process
    assert s.get("1:2:3:4") == "a" * 40


def test_graphflow_run_profile_shows_ids_hashed_then_remembered(tmp_path):
    models = tmp_path / "model"
    models.mkdir()
    (models / "unet.bin").write_bytes(os.urandom(2_000_000))
    (models / "config.json").write_text("{}")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"format": 1, "nodes": {"c": {"type": "CountFiles", "inputs": {"path": str(models)}}},
                              "outputs": {"files": "c.files"}}))
    cache = tmp_path / "cache"

    def run() -> str:
        p = subprocess.run([sys.executable, "-m", "graphflow.cli", "run", str(wf), "--plugin", "tests/file_nodes.py",
                            "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "--profile"],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert p.returncode == 0, p.stderr
        return next(line for line in p.stderr.splitlines() if line.startswith("content ids:"))

    first = run()
    assert first.startswith("content ids: 2 files hashed (2.0 MB in ")
    assert first.endswith(f"), 0 remembered from {cache / NAME}")
    assert run() == f"content ids: 0 files hashed (0.0 MB in 0.00 s), 2 remembered from {cache / NAME}"


# --- the hash itself (BLAKE3 since the first-picture work; blake2b before) ----------------------

BIG = (16 << 20) + 12_345  # over one read buffer: the id spans buffers and ends in a partial one


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("big") / "unet.safetensors"
    data = os.urandom(BIG)
    f.write_bytes(data)
    return f, data


@pytest.fixture
def no_store():
    fp.remember_content_ids(None)
    fp._memo.clear()
    yield
    fp._memo.clear()


def test_the_id_is_blake3_of_the_bytes_whatever_the_thread_count(no_store, big_file, monkeypatch):
    f, data = big_file
    ids = set()
    for n in (1, 2, 4):
        monkeypatch.setattr(content_ids, "hash_threads", lambda n=n: n)
        fp._memo.clear()
        ids.add(fp.content_id(f))
    assert ids == {blake(data)}
    assert content_ids.hash_bytes(data) == blake(data)


def test_the_id_is_the_same_in_another_process(no_store, big_file):
    f, data = big_file
    folder = f.parent
    code = "import sys; from graphflow.engine.fingerprint import content_id; print(content_id(sys.argv[1])); print(content_id(sys.argv[2]))"
    p = subprocess.run([sys.executable, "-c", code, str(f), str(folder)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "GRAPHFLOW_THREADS": "2"}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [blake(data), fp.content_id(folder)]
    assert fp.content_id(folder).startswith("dir:")


@pytest.mark.parametrize("where", [0, 1 << 20, (16 << 20) - 1, 16 << 20, BIG - 1])
def test_one_changed_byte_changes_the_id(no_store, big_file, tmp_path, where):
    f, data = big_file
    changed = bytearray(data)
    changed[where] ^= 0x01
    g = tmp_path / "changed.safetensors"
    g.write_bytes(changed)
    assert fp.content_id(g) == blake(bytes(changed)) != blake(data)


def test_a_remembered_id_is_not_hashed_again(store, big_file, monkeypatch):
    """Counted where the hashing happens: the function that reads a file's bytes."""
    f, data = big_file
    calls = []
    real = fp.hash_file
    monkeypatch.setattr(fp, "hash_file", lambda fh, size: calls.append(size) or real(fh, size))
    assert fp.content_id(f) == blake(data)
    assert calls == [BIG]
    for _ in range(3):
        new_process()
        assert counted(f) == (blake(data), 0, 1)
    assert calls == [BIG]


def test_a_store_of_the_old_hash_is_not_trusted(store, tmp_path):
    """A version-1 store (blake2b ids, checksum valid) is read as empty: no old id is mixed in."""
    import hashlib

    f = tmp_path / "weights.bin"
    f.write_bytes(b"old bytes")
    old = {content_ids.file_key(f.stat()): hashlib.blake2b(b"old bytes", digest_size=20).hexdigest()}
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_bytes(orjson.dumps({"version": 1, "check": content_ids._check(old), "ids": old}))
    new_process()
    assert counted(f) == (blake(b"old bytes"), 1, 0)
    assert orjson.loads(store.read_bytes())["version"] == 2


# --- work beside the hash (while_hashing): a fresh process imports its loaders meanwhile --------

@pytest.fixture
def hooks(monkeypatch):
    """No hook but the test's own (the node library registers its loaders' imports), and a small
    threshold, so a few hundred kB stand for a model."""
    monkeypatch.setattr(content_ids, "_while_hashing", [])
    monkeypatch.setattr(content_ids, "WARM_BYTES", 100_000)
    return content_ids.while_hashing


def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.safetensors").write_bytes(os.urandom(300_000))
    (folder / "model_index.json").write_text("{}")
    return folder


def test_the_hook_runs_once_in_the_waiting_thread_while_another_hashes(store, tmp_path, hooks, monkeypatch):
    folder = model_folder(tmp_path)
    hashing = threading.Event()
    real = fp.hash_file

    def hash_file(f, size):
        hashing.set()
        return real(f, size)

    monkeypatch.setattr(fp, "hash_file", hash_file)
    seen = []
    hooks(lambda: seen.append((threading.current_thread() is threading.main_thread(), hashing.wait(10))))
    beside = fp.hash_stats.beside
    cid = fp.content_id(folder)
    assert seen == [(True, True)]  # this thread, and the hash was running meanwhile (else it waited 10 s)
    assert fp.hash_stats.beside > beside  # --profile says how much of the hash ran beside it
    assert fp.hash_stats.hashed >= 2
    new_process()
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    assert fp.content_id(other) == cid and seen == [(True, True)]  # once per process


def test_no_hook_for_small_or_remembered_files(store, tmp_path, hooks):
    """A fully cached second process finds its ids in the store: it must not import torch for them."""
    calls = []
    hooks(lambda: calls.append(1))
    small = tmp_path / "config.json"
    small.write_bytes(b"{}" * 100)
    fp.content_id(small)
    assert calls == []
    folder = model_folder(tmp_path)
    fp.content_id(folder)
    assert calls == [1]
    new_process()
    hooks(lambda: calls.append(2))
    fp.content_id(folder)
    assert calls == [1]  # remembered: nothing to hash, nothing to do beside it


def test_a_failing_hook_is_dropped_and_a_failing_hash_is_raised(store, tmp_path, hooks):
    hooks(lambda: 1 / 0)
    folder = model_folder(tmp_path)
    assert fp.content_id(folder).startswith("dir:")  # the hook's error does not reach the caller
    new_process()
    hooks(lambda: None)
    os.mkfifo(folder / "unet" / "pipe")
    os.utime(folder / "unet" / "weights.safetensors", ns=(1, 1))  # a new identity: hashed again
    with pytest.raises(InputRefused, match="pipe"):
        fp.content_id(folder)


def test_a_file_that_cannot_be_mapped_is_read_to_the_same_id(big_file, monkeypatch):
    f, data = big_file

    def refuse(*a, **k):
        raise OSError("no mmap on this mount")

    monkeypatch.setattr(content_ids.mmap, "mmap", refuse)
    with open(f, "rb") as fh:
        assert content_ids.hash_file(fh, BIG) == blake(data)


def test_a_file_shorter_than_its_stated_size_is_hashed_as_far_as_it_goes(tmp_path):
    """Shrunk between its stat and the hash: not mapped past its end (that would kill the process)."""
    f = tmp_path / "shrunk.bin"
    f.write_bytes(b"x" * 5000)
    with open(f, "rb") as fh:
        assert content_ids.hash_file(fh, 9000) == blake(b"x" * 5000)
    with open(f, "rb") as fh:
        assert content_ids.hash_file(fh, 3000) == blake(b"x" * 3000)


def test_the_node_library_imports_its_loaders_while_a_model_is_hashed(tmp_path):
    """In a new process: registering the node library and importing LoadModel's module import no torch; hashing a model's worth of
    unseen bytes (the threshold lowered to this small folder) imports it, beside the hash."""
    folder = model_folder(tmp_path)
    code = """
import sys
from graphflow.cache import content_ids
from graphflow.engine.fingerprint import content_id, hash_stats
from graphflow.node.registry import default_registry
default_registry().get("LoadModel")  # a workflow naming LoadModel imports its module
before = [m for m in ("torch", "diffusers.models.modeling_utils", "transformers.modeling_utils") if m in sys.modules]
content_ids.WARM_BYTES = 100_000
content_id(sys.argv[1])
after = [m for m in ("torch", "diffusers.models.modeling_utils", "transformers.modeling_utils") if m in sys.modules]
print(before, after, hash_stats.beside > 0)
"""
    p = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[0] == "[] ['torch', 'diffusers.models.modeling_utils', 'transformers.modeling_utils'] True"
