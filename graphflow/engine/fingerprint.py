"""What makes a result reusable: a fixed-size hash over what a node is and what it reads.

A node's fingerprint is the hash of its type, its code version (from the class's source), its
bound input values or its producers' fingerprints, the context values it declares, and the
content of the files it reads. Equal fingerprints promise equal outputs; nothing else decides a
cache hit. Files are identified by content, not by path or time, so a cache can be shared between
machines and workers that mount the same files elsewhere.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from graphflow.cache.content_ids import ContentIdStore, file_key, hash_file, overlapped
from graphflow.document.tree import Link, LinkList, Lit, ParamRef, ScopeDef
from graphflow.graph.memo import Recipe
from graphflow.node.file_access import UNCONFINED, FileAccess

DIGEST = 20  # bytes of blake2b: 160 bits, as git's object ids
_NOTHING: frozenset = frozenset()  # no scope's inside: a top-level node's links are all fingerprinted


def digest(obj: Any) -> str:
    """The hash of a JSON-like value (keys sorted, so dict order does not matter)."""
    try:
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=_default)
    except TypeError:  # an int beyond 64 bits, which orjson does not write
        data = repr(obj).encode()
    return hashlib.blake2b(data, digest_size=DIGEST).hexdigest()


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (tuple, Path)):
        return list(obj) if isinstance(obj, tuple) else str(obj)
    return repr(obj)


_CODE: dict[type, str] = {}


def code_version(cls: type) -> str:
    """A hash of a node class's source: its declarations and ``run``. Editing the class invalidates
    the results of its old code without anyone remembering to bump ``version``. Where no source is
    available (a class built at run time), the bytecode of ``run`` stands in."""
    v = _CODE.get(cls)
    if v is None:
        try:
            text = inspect.getsource(cls)
        except (OSError, TypeError):
            code = cls.run.__code__
            text = repr((code.co_code, code.co_consts, code.co_names))
        v = _CODE[cls] = hashlib.blake2b(text.encode(), digest_size=DIGEST).hexdigest()
    return v


# --- file content ----------------------------------------------------------------------------

_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()
_store: ContentIdStore | None = None


@dataclass
class HashStats:
    """What this process paid for content ids (``graphflow run --profile`` prints it): files read
    and hashed, their bytes and seconds, and ids found in the persistent store instead."""

    hashed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    remembered: int = 0
    store: str | None = field(default=None)
    beside: float = 0.0  # seconds of hashing that ran while the loaders imported (content_ids.while_hashing)

    def describe(self) -> str:
        where = f" from {self.store}" if self.store else " (no disk cache: nothing remembered between processes)"
        beside = f", {min(self.beside, self.seconds):.2f} s of it beside the model loaders' imports" if self.beside else ""
        return (f"content ids: {self.hashed} file{'s' * (self.hashed != 1)} hashed ({self.bytes / 1e6:.1f} MB in "
                f"{self.seconds:.2f} s{beside}), {self.remembered} remembered{where}")


hash_stats = HashStats()


def remember_content_ids(folder: str | Path | None) -> None:
    """Keep files' content ids in ``folder`` (an executor's disk cache), for later processes; None
    stops. The last executor made with a disk cache decides, for the whole process (ids are the
    same whichever folder keeps them)."""
    global _store
    _store = None if folder is None else ContentIdStore(folder)
    hash_stats.store = None if _store is None else str(_store.path)


def _file_hash(path: str, st: os.stat_result, max_bytes: int) -> str:
    """Content hash of one file, remembered per (device, inode, size, mtime_ns) in this process and
    in the disk cache's store (``cache/content_ids.py``): a 4 GB checkpoint is read once, and again
    only after it changes. Only a regular file within ``max_bytes`` is hashed, and no more than its
    size is read: a device or a FIFO is refused from its stat, before it is opened (``/dev/zero``
    would never end), and what is opened is checked again (FileAccess.open)."""
    rules = FileAccess(None, max_bytes)
    rules.check_stat(st, path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    store = _store
    if store is not None:
        hit = store.get(file_key(st))
        if hit is not None:
            with _memo_lock:
                _memo[key] = hit
                hash_stats.remembered += 1
            return hit
    t0 = time.perf_counter()
    with rules.open(path) as f:
        opened = os.fstat(f.fileno())
        value = hash_file(f, opened.st_size)
        after = os.fstat(f.fileno())
    with _memo_lock:
        _memo[key] = value
        hash_stats.hashed += 1
        hash_stats.bytes += opened.st_size
        hash_stats.seconds += time.perf_counter() - t0
    if store is not None and file_key(after) == file_key(st):  # the file stated, unchanged while it was read
        store.put(file_key(st), value)
    return value


_steady = threading.local()


@contextmanager
def steady_files():
    """Within the block, each path's content id is worked out once: for a caller fingerprinting
    many parameter sets at one moment (a sweep dealing its items), where re-walking a model folder
    per set costs milliseconds and the files cannot be expected to change meanwhile."""
    outer = getattr(_steady, "ids", None)
    _steady.ids = {} if outer is None else outer
    try:
        yield
    finally:
        _steady.ids = outer


def content_id(path: str | Path, max_bytes: int | None = None) -> str:
    """The identity of a file or folder by content: the same bytes anywhere give the same id; a
    folder's id covers its files' relative names and contents. A missing path has an id of its own
    (the node that reads it reports the error when it runs). A file that is not regular, or is
    over ``max_bytes`` (default: ``Limits.input_bytes``'s default), raises InputRefused."""
    p = os.fspath(path)
    limit = UNCONFINED.max_bytes if max_bytes is None else max_bytes
    ids = getattr(_steady, "ids", None)
    if ids is not None:
        hit = ids.get(p)
        if hit is None:
            _steady.ids = None
            try:
                hit = ids[p] = content_id(p, max_bytes)
            finally:
                _steady.ids = ids
        return hit
    try:
        st = os.stat(p)
    except OSError:
        return "missing:" + digest(p)
    if not stat.S_ISDIR(st.st_mode):
        cid, beside = overlapped(lambda: _file_hash(p, st, limit), _unknown_bytes([st]))
        hash_stats.beside += beside
        return cid
    found = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            found.append((os.path.relpath(full, p), full, os.stat(full)))
    entries, beside = overlapped(lambda: [(rel, _file_hash(full, fst, limit)) for rel, full, fst in found],
                                 _unknown_bytes([fst for _, _, fst in found]))
    hash_stats.beside += beside
    return "dir:" + digest(entries)


def _unknown_bytes(stats: list[os.stat_result]) -> int:
    """How many of these files' bytes a hash would read: those whose ids neither this process nor
    the disk cache's store remembers."""
    store = _store
    with _memo_lock:
        unknown = [st for st in stats if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) not in _memo]
    return sum(st.st_size for st in unknown if stat.S_ISREG(st.st_mode) and (store is None or store.get(file_key(st)) is None))


def _unchanged(path: Path, cid: str, max_bytes: int) -> bool:
    try:
        return content_id(path, max_bytes) == cid
    except (OSError, ValueError):  # refused now (it became a FIFO, it grew past the ceiling)
        return False


# --- node fingerprints -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """The context values a run offers its nodes (``Node.uses``)."""

    device: str = "cpu"
    dtype: str = "float32"
    out_dir: str = "out"


def _bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=_default)
    except TypeError:  # an int beyond 64 bits
        return repr(value).encode()


def _recipes(c) -> dict[str, Recipe]:
    """Per node, the part of its key fixed by the document, serialised once per checked graph.
    A file input's literal path is left out: the file is identified by its content."""
    memo = c.memo.recipes
    if memo is not None:
        return memo
    memo = {}
    for nid, d in c.nodes.items():
        if isinstance(d, ScopeDef):
            static, refs, uses, pure = [d.type, d.item], d.refs(), frozenset(), True
            ports: dict = {}
        else:
            cls = c.types[nid]
            static = [cls.type_name, cls.version, code_version(cls), sorted(cls.uses),
                      [d.when.every, d.when.start, d.when.stop] if d.when else None]
            refs, uses, pure = d.refs(), cls.uses, cls.pure
            ports = {f"inputs.{k}": p.file for k, p in cls.inputs.items() if p.file is not None}
        fields, dynamic = [], []
        for fld, ref in sorted(refs, key=lambda fr: fr[0]):
            if isinstance(ref, (Lit, ParamRef)) and fld not in ports:
                fields.append(fld)  # a parameter and a literal of equal value hash alike
            else:
                links = ref.links if isinstance(ref, LinkList) else (ref,) if isinstance(ref, Link) else ()
                dynamic.append((fld.encode() + b"=", fld, ref, ports.get(fld),
                                tuple((x.node, b"." + x.port.encode() + b"\0", b"I" + x.node.encode() + b"." + x.port.encode() + b"\0")
                                      for x in links)))
        lits = None
        if all(isinstance(r, Lit) for f, r in refs if f in fields):
            lits = _bytes({f: c.literals.get((nid, f), r.value) for f, r in refs if f in fields})
        # the fixed part enters keys as its digest: a chain node's key then fits one blake2b block
        fixed = hashlib.blake2b(_bytes(static), digest_size=DIGEST).digest()
        memo[nid] = Recipe(fixed, lits, tuple(fields), tuple(dynamic), uses, pure)
    c.memo.recipes = memo
    return memo


def _plain(r: Recipe) -> tuple | None:
    """A node's key bytes as fixed segments around its producers' fingerprints, when nothing else
    varies (a pure node of literals and links: no file, parameter or context value), so that the
    cold run's loop joins ``segs[0] + fp(producer 0) + segs[1] + ...``: exactly the bytes
    ``Fingerprints._hash`` joins for it, without walking its recipe. None for any other node."""
    if r.values is None or r.uses or not r.pure:
        return None
    segs, producers, pending = [], [], r.static + r.values
    for tag, _fld, _ref, file, links in r.dynamic:
        if file is not None:
            return None
        pending += tag
        for node, port, _within in links:
            segs.append(pending + b"F")
            producers.append(node)
            pending = port
    segs.append(pending)
    return tuple(segs), tuple(producers)


class Fingerprints:
    """The fingerprints of a bound graph's members, as they become known. ``token`` makes a node
    with side effects (and what depends on it) unique to one run. Fingerprints that depend on
    neither the token nor a link's run-time value are remembered per parameter set, so a re-run
    with the same parameters re-hashes only the files it reads."""

    def __init__(self, bound, options: RunOptions, token: str, access: FileAccess | None = None) -> None:
        self.bound = bound
        #: the rules of the files the keys read (an executor's; else those the graph was bound under)
        self.access = access or getattr(bound, "files", None) or UNCONFINED
        self.checked = bound.checked
        self.options = options
        self.token = token.encode()
        self.fps: dict[str, str | None] = {}
        self.tainted: set[str] = set()  # members whose key holds the token
        self.files: list[tuple[Path, str]] = []  # (file, content id) the keys hold
        self._recipes = _recipes(self.checked)
        self._ctx: dict[frozenset, bytes] = {}

    def all(self, members: list[str]) -> None:
        """Fingerprint every member, from the remembered keys of this parameter set if the files
        they read are unchanged."""
        memo = self.checked.memo.fingerprints
        mkey = (_bytes(self.bound.params), self.options)
        hit = memo.get(mkey)
        if hit is not None and all(_unchanged(p, cid, self.access.max_bytes) for p, cid in hit[1]):
            known = hit[0]
            if hit[2] == len(members):  # every one of these members' keys, none holding a token: copied whole
                self.fps.update(known)
                return
            for m in members:
                fp = known.get(m)
                if fp is None:
                    self.member(m)
                else:
                    self.fps[m] = fp
            return
        fps, node_hash, tainted, blake2b = self.fps, self._hash, self.tainted, hashlib.blake2b
        for m, r, plain in self._in_order(members):
            if plain is not None:  # _hash's bytes for a top-level node reading links only, joined here
                segs, producers = plain
                if len(producers) == 1:
                    fp = fps[producers[0]]
                    if fp is not None:
                        if tainted and producers[0] in tainted:
                            tainted.add(m)
                        fps[m] = blake2b(segs[0] + fp.encode() + segs[1], digest_size=DIGEST).hexdigest()
                        continue
                elif not producers:
                    fps[m] = blake2b(segs[0], digest_size=DIGEST).hexdigest()
                    continue
                else:
                    parts = [segs[0]]
                    for node, seg in zip(producers, segs[1:]):
                        fp = fps[node]
                        if fp is None:
                            break
                        if tainted and node in tainted:
                            tainted.add(m)
                        parts += (fp.encode(), seg)
                    else:
                        fps[m] = blake2b(b"".join(parts), digest_size=DIGEST).hexdigest()
                        continue
                fps[m] = None  # a producer without a fingerprint yet: so is this one
            elif r is None:  # a scope
                self.member(m)
            else:  # member()'s node case, inlined: this loop runs once per node of a cold run
                h = node_hash(m, r, _NOTHING, None, m)
                fps[m] = None if h is None else h.hexdigest()
        if len(memo) >= 32:  # a long sweep keeps the newest parameter sets only
            memo.pop(next(iter(memo)))
        plain = not self.tainted and None not in fps.values()  # the usual case: a copy, made in C
        memo[mkey] = (dict(fps) if plain else {m: fp for m, fp in fps.items() if fp is not None and m not in self.tainted},
                      list(self.files), len(fps) if plain else -1)

    def _in_order(self, members: list[str]) -> list[tuple[str, Recipe | None, tuple | None]]:
        """(member, its recipe (None for a scope), its plain form) in the order of ``members``,
        kept with the checked graph for the list it was made from (the plan's members): a cold
        run's loop reads one list instead of two dictionaries and a node per member."""
        memo = self.checked.memo
        kept = memo.top_recipes
        if kept is None or kept[0] is not members:
            nodes, recipes = self.checked.nodes, self._recipes
            kept = memo.top_recipes = (members, [(m, None, None) if type(nodes[m]) is ScopeDef else
                                                 (m, recipes[m], _plain(recipes[m])) for m in members])
        return kept[1]

    def member(self, m: str, files: dict[str, Any] | None = None) -> str | None:
        """A top-level member's fingerprint; None while a linked file path is not known yet.
        ``files`` gives those paths once the run has them."""
        d = self.checked.nodes[m]
        if isinstance(d, ScopeDef):
            inside = self.checked.within.get(m, ())
            inner = frozenset(inside) | {m}
            h = self._hash(m, self._recipes[m], inner, None, m)
            if h is not None:
                for x in inside:
                    part = self._hash(x, self._recipes[x], inner, None, m)
                    h.update(x.encode() + b"\0" + (part.digest() if part is not None else self._taint(m)))
        else:
            h = self._hash(m, self._recipes[m], _NOTHING, files, m)
        fp = None if h is None else h.hexdigest()
        self.fps[m] = fp
        return fp

    def _taint(self, m: str) -> bytes:
        self.tainted.add(m)
        return self.token

    def _hash(self, nid: str, r: Recipe, inner: frozenset, files: dict[str, Any] | None, member: str):
        """The hash of one node's (or scope's) key parts, ``r`` its recipe, joined first and hashed
        in one call (one ``update`` per part was a fifth of a trivial node's fingerprint); the
        digest is the same."""
        parts = [r.static, r.values if r.values is not None else _bytes({f: self.bound.value(nid, f) for f in r.value_fields})]
        fps = self.fps
        for tag, fld, ref, file, links in r.dynamic:
            parts.append(tag)
            if file is not None:
                known = isinstance(ref, (Lit, ParamRef))
                if not known and (files is None or fld[7:] not in files):
                    return None
                try:
                    path = file.path(self.bound.value(nid, fld) if known else files[fld[7:]])
                    cid = "none" if path is None else content_id(path, self.access.max_bytes)
                except Exception:
                    # gone wrong since validation (removed, swapped for a FIFO): fingerprinted when
                    # the node's turn comes, where the runner's check fails it with the reason
                    return None
                if known and path is not None:
                    self.files.append((path, cid))
                parts.append(cid.encode())
                continue
            for node, port, within in links:
                if node in inner:
                    parts.append(within)
                    continue
                fp = fps[node]
                if fp is None:
                    return None
                if node in self.tainted:
                    self.tainted.add(member)
                parts += (b"F", fp.encode(), port)
        if r.uses:
            parts.append(self._context(r.uses))
        if not r.pure:
            parts.append(self._taint(member))
        return hashlib.blake2b(b"".join(parts), digest_size=DIGEST)

    def _context(self, uses: frozenset) -> bytes:
        v = self._ctx.get(uses)
        if v is None:
            o = self.options
            vals = {"device": o.device, "dtype": o.dtype, "out_dir": o.out_dir, "iteration": True, "models": True}
            key = [[u, vals[u]] if u in vals else [u, digest([self.checked.doc.raw, self.bound.params])] for u in sorted(uses)]
            v = self._ctx[uses] = _bytes(key)
        return v
