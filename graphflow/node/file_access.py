"""Which files a run may read, and reading them safely. A workflow names files (a picture to
load, a model, a LoRA); a workflow may come from someone else, so what it names is checked like
any other value of it: the file must exist (or the message says where it was looked for and what
is near), be a regular file (a device or a FIFO never ends: reading ``/dev/zero`` to hash it
would stall the run for good), be no larger than ``Limits.input_bytes``, and, where the reader
is confined (a server), lie inside the allowed folders once every link is followed.

The policy is a value (``FileAccess``) the executor and validation receive, never global state:
``graphflow run`` on one's own machine is unconfined (``roots=None``); a server passes its
uploads folder, the models folders and its ``--allow-read`` folders. Validation checks what it
can see without opening anything (``check``: stat calls, and a bounded walk of a model folder);
nodes open files through ``open_input`` / ``checked_input``, which apply the same rules at the
moment of opening.
"""

from __future__ import annotations

import difflib
import itertools
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from graphflow.node.limits import Limits

#: a folder input (a diffusers model folder) holding more files than this is refused: a typo
#: such as ``/`` must not start a walk of the whole disk
MAX_FOLDER_FILES = 10_000
#: names looked at when suggesting what a mistyped name meant, per folder
MAX_CANDIDATES = 2_000


class InputFileError(ValueError):
    """A file a workflow names cannot be read: ``code`` is the validation problem's code
    (``missing_file`` or ``refused_file``), the text says why in the user's words."""

    code = "refused_file"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InputRefused(InputFileError):
    """The file exists but may not be read: outside the allowed folders, not a regular file,
    over the size limit, or a name that would leave its folder."""


class InputNotFound(InputFileError):
    """Nothing of that name where it was looked for. Raised by a node library's resolver (which
    knows where its names are looked up), or by graphflow for a path that does not exist:
    ``looked_in`` says where, ``candidates`` are the names that do exist there, the nearest of
    which the message suggests."""

    code = "missing_file"

    def __init__(self, name: str, looked_in: Iterable[str | Path] = (), candidates: Iterable[str] = (), *,
                 what: str = "file", hint: str = "") -> None:
        self.name, self.what, self.hint = name, what, hint
        self.looked_in = tuple(str(p) for p in looked_in)
        self.suggestions = tuple(nearest(name, candidates))
        text = f"no {what} named {name!r}"
        if self.looked_in:
            text += f" (looked in {', '.join(self.looked_in)})"
        if hint:
            text += f"; {hint}"
        if self.suggestions:
            text += f"; did you mean {self.suggestions[0]!r}?"
        super().__init__(text)


def nearest(name: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The names among ``candidates`` closest to ``name`` (difflib's ratio, at least 0.6), best
    first; none for a runaway name, whose comparison would cost seconds. What a name shares with
    a candidate by construction says nothing of a typo, so it is left out of their comparison:
    the folder of a path, and an extension both have."""
    if len(name) > 200:
        return []
    folder, ext = os.path.dirname(name), os.path.splitext(name)[1]
    scored = []
    for c in sorted(set(itertools.islice(candidates, MAX_CANDIDATES * 4))):
        a, b = name, c
        if folder and os.path.dirname(c) == folder:
            a, b = a[len(folder) + 1 :], b[len(folder) + 1 :]
        if ext and b.endswith(ext) and len(b) > len(ext):
            a, b = a[: -len(ext)], b[: -len(ext)]
        m = difflib.SequenceMatcher(None, a, b)
        if m.real_quick_ratio() >= 0.6 and m.quick_ratio() >= 0.6 and (r := m.ratio()) >= 0.6:
            scored.append((-r, c))
    return [c for _, c in sorted(scored)[:n]]


def names_in(folder: str | Path, limit: int = MAX_CANDIDATES) -> list[str]:
    """The names in a folder (hidden ones left out), at most ``limit``; none if it cannot be listed.
    What a not-found message compares the mistyped name with."""
    try:
        with os.scandir(folder) as it:
            return [e.name for e in itertools.islice(it, limit) if not e.name.startswith(".")]
    except OSError:
        return []


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class FileAccess:
    """The rules every file a run reads is held to. ``roots``: the folders it may read, as real
    paths (None: anywhere, the user's own machine); ``max_bytes``: the largest file."""

    roots: tuple[str, ...] | None = None
    max_bytes: int = Limits().input_bytes

    @classmethod
    def of(cls, read_roots: Iterable[str | Path] | None = None, limits: Limits | None = None) -> FileAccess:
        """The rules from a read-roots setting (folders; links in them resolved now) and the ceilings."""
        if isinstance(read_roots, (str, Path)):  # one folder, not the characters of its name
            read_roots = [read_roots]
        roots = None if read_roots is None else tuple(dict.fromkeys(os.path.realpath(os.path.expanduser(r)) for r in read_roots))
        return cls(roots, (limits or Limits()).input_bytes)

    # --- what validation sees: stat calls, nothing opened -------------------------------------

    def confine(self, path: str | Path, shown: str | None = None) -> str:
        """The real path (links followed) of ``path``, or InputRefused when it lies outside the
        roots. Checked before anything else, so a confined reader says nothing of what exists
        outside its folders. Unconfined, the absolute path (following links costs a stat per
        component, and nothing depends on where they lead)."""
        if self.roots is None:
            return os.path.abspath(path)
        real = os.path.realpath(path)
        if not any(_inside(real, r) for r in self.roots):
            shown = shown if shown is not None else str(path)
            where = os.path.abspath(path)
            via = f" (a link to {real})" if where != real else f" (at {real})" if os.path.abspath(shown) != real else ""
            allowed = ", ".join(self.roots) or "none"
            raise InputRefused(f"{shown!r}{via} is outside the folders this executor may read (allowed: {allowed})")
        return real

    def check(self, path: str | Path, *, folder: bool = False, shown: str | None = None) -> Path:
        """``path`` as its real path (unconfined: absolute), if a run may read it: inside the
        roots, existing, a regular file within ``max_bytes`` (or, with ``folder``, a folder all
        of whose files are). Opens nothing; raises InputNotFound or InputRefused saying why not."""
        shown = shown if shown is not None else str(path)
        if "\0" in os.fspath(path):
            raise InputRefused(f"{shown!r} is not a file name (it holds a NUL character)")
        real = self.confine(path, shown)
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(os.path.abspath(path))
            raise InputNotFound(shown, [parent], [os.path.join(os.path.dirname(shown), n) for n in names_in(parent)]) from None
        except OSError as e:
            raise InputRefused(f"{shown!r} cannot be read: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            if not folder:
                raise InputRefused(f"{shown!r} is a folder; a file is expected")
            self._check_folder(real, shown, st)
        else:
            self.check_stat(st, shown)
        return Path(real)

    def inside(self, path: str | Path) -> bool:
        return self.roots is None or any(_inside(os.path.realpath(path), r) for r in self.roots)

    def check_stat(self, st: os.stat_result, shown: str) -> None:
        """What a stat says of a file: regular, within ``max_bytes``; else InputRefused."""
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused(f"{shown!r} is {_kind(st.st_mode)}, not a regular file; refused")
        if st.st_size > self.max_bytes:
            raise InputRefused(f"{shown!r} is {st.st_size} bytes, over the limit of {self.max_bytes} for 'input_bytes' "
                               f"(raise it with --limit input_bytes=N)")

    def _check_folder(self, real: str, shown: str, top: os.stat_result) -> None:
        """Every file under a folder input, links followed (a loader follows them): inside the
        roots, regular, within the size; at most MAX_FOLDER_FILES of them. Stat calls only: a
        sweep checks its model folder once per item."""
        def rel(path: str) -> str:
            return f"{shown}/{os.path.relpath(path, real)}"

        seen, stack, count = {(top.st_dev, top.st_ino)}, [real], 0
        while stack:
            here = stack.pop()
            try:
                with os.scandir(here) as it:
                    found = list(itertools.islice(it, MAX_FOLDER_FILES + 1))
            except OSError as e:
                raise InputRefused(f"{rel(here)!r} cannot be listed: {e.strerror}") from None
            count += len(found)
            if count > MAX_FOLDER_FILES:
                raise InputRefused(f"{shown!r} holds more than {MAX_FOLDER_FILES} files; a model folder is expected")
            for e in found:
                link = e.is_symlink()
                if link:
                    self.confine(e.path, rel(e.path))
                elif e.is_dir(follow_symlinks=False):  # no stat: only a link can lead back up (a cycle)
                    stack.append(e.path)
                    continue
                try:
                    st = e.stat()
                except OSError as err:
                    raise InputRefused(f"{rel(e.path)!r} cannot be read: {err.strerror}") from None
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        stack.append(e.path)
                elif not stat.S_ISREG(st.st_mode) or st.st_size > self.max_bytes:
                    self.check_stat(st, rel(e.path))

    # --- what a node does: open, and check again what was opened -------------------------------

    def open(self, path: str | Path, shown: str | None = None) -> IO[bytes]:
        """The file for reading, if a run may read it. Checked before opening (so a device is
        never opened: opening some has effects), then opened without blocking (a FIFO swapped in
        meanwhile does not stall) and checked again on what was actually opened."""
        shown = shown if shown is not None else str(path)
        real = str(self.check(path, shown=shown))
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            self.check_stat(os.fstat(fd), shown)
            opened = f"/proc/self/fd/{fd}"
            if self.roots is not None and os.path.exists(opened):  # where the open really went (Linux)
                self.confine(os.readlink(opened), shown)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def locate(self, marker: Any, value: Any, shown: str | None = None) -> Path | None:
        """What a file input's value names, checked: the node library's resolver places the name
        (it raises InputNotFound saying where it looked), then ``check``. None when the value
        names no file (an optional input left empty)."""
        if not isinstance(value, str):
            return None
        try:
            path = marker.path(value)
        except InputNotFound as e:
            raise self._within_roots(e, value) from None
        except InputFileError:
            raise
        except Exception as e:  # a resolver's own words about what is wrong with the name
            raise InputRefused(str(e)) from None
        if path is None:
            return None
        return self.check(path, folder=getattr(marker, "folder", False), shown=value if shown is None else shown)


    def _within_roots(self, e: InputNotFound, value: str) -> InputFileError:
        """A resolver's not-found, as a confined reader may tell it: where it looked and what is
        there only inside the roots (a server must not list its other folders to a client, nor
        confirm a name there), and a name looked for nowhere inside them is outside them."""
        if self.roots is None:
            return e
        inside = [p for p in e.looked_in if self.inside(p)]
        if not inside:
            return InputRefused(f"{value!r} is outside the folders this executor may read (allowed: {', '.join(self.roots) or 'none'})")
        if len(inside) == len(e.looked_in):
            return e
        return InputNotFound(e.name, inside, what=e.what, hint=e.hint)


#: the rules of a run on one's own machine with the default ceilings
UNCONFINED = FileAccess()


def open_input(ctx: Any, path: str | Path) -> IO[bytes]:
    """Open a file a node reads, under the rules of the run it is in (``ctx``): a regular file,
    within ``Limits.input_bytes``, inside the folders the executor may read. Raises
    InputNotFound / InputRefused, which fail the node with that message."""
    return _access(ctx).open(path)


def checked_input(ctx: Any, path: str | Path, *, folder: bool = False) -> Path:
    """The same rules for a library that opens the file itself by path (a memory-mapped
    checkpoint, a model folder handed to a loader): the real path, once checked."""
    return _access(ctx).check(path, folder=folder)


def _access(ctx: Any) -> FileAccess:
    files = getattr(ctx, "files", None)
    return files if isinstance(files, FileAccess) else UNCONFINED
