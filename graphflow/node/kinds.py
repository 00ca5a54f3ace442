"""Port kinds: the static types the validator compares when one node's output is linked to another's input.

Kinds are plain names so that validation never has to import torch: a node library declares
``Latents = kind("latents", parent=TENSOR)`` and the validator can refuse a latent plugged into an
embeddings input without knowing what a tensor is.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_origin


@dataclass(frozen=True)
class Kind:
    """A named port type. ``parent`` makes kinds form a tree (an input of kind ``tensor`` accepts
    every tensor kind); ``item`` is the kind of one element when the value is iterated by a loop;
    ``literal`` says whether a workflow may write the value inline instead of linking it."""

    name: str
    parent: Kind | None = None
    item: Kind | None = None
    literal: bool = True
    description: str = field(default="", compare=False)

    def lineage(self) -> list[str]:
        out, k = [], self
        while k is not None:
            out.append(k.name)
            k = k.parent
        return out

    def __str__(self) -> str:
        if self.name == "list" and self.item is not None:
            return f"list[{self.item}]"
        return self.name


ANY = Kind("any", description="anything")
INT = Kind("int")
FLOAT = Kind("float")
STRING = Kind("string")
BOOL = Kind("bool")
#: Root of every tensor kind; an input of this kind accepts any tensor.
TENSOR = Kind("tensor", literal=False, description="a tensor")
#: Root of opaque in-memory objects (models, schedulers): never written inline, never on disk.
OBJECT = Kind("object", literal=False, description="an in-memory object")


@dataclass(frozen=True)
class FileInput:
    """Marks a string input that names a file or folder the node reads:
    ``path: Annotated[str, FileInput(resolve=my_resolver)]``. The fingerprint then holds the
    content of what ``resolve(value)`` points at, however the value arrived (literal, parameter
    or link), so an edited file is read again and the same bytes elsewhere are a cache hit.

    What the value names is checked before the node runs (at validation when the value is
    written inline or a parameter, before the node when it arrives through a link): it must
    exist, be a regular file within ``Limits.input_bytes`` (``folder=True``: or a folder whose
    files all are), and lie inside the folders the executor may read (graphflow/node/file_access.py).

    ``resolve`` (module-level, cheap, no heavy imports) turns the value into a path, or None when
    the value names no file (an optional input left empty); a name it cannot place it reports by
    raising ``InputNotFound(name, looked_in, candidates)``, whose message says where it looked and
    the nearest existing name. Without ``resolve`` the value is a path.
    ``describe`` (optional, module-level, cheap) says in one line what the named file is, for
    ``graphflow validate``; it may raise to say what is wrong with it, or return None."""

    resolve: Any = None
    describe: Any = None
    folder: bool = False

    def path(self, value: str):
        from pathlib import Path

        return self.resolve(value) if self.resolve is not None else Path(value).expanduser()


def list_of(item: Kind) -> Kind:
    return Kind("list", item=item)


def kind(name: str, *, parent: Kind | None = TENSOR, item: Kind | None = None, description: str = "") -> Kind:
    """Declare a node library's own kind. Use it inside ``Annotated[Any, MY_KIND]`` on a port."""
    literal = parent is None or parent.literal
    return Kind(name, parent=parent, item=item, literal=literal, description=description)


def compatible(src: Kind, dst: Kind) -> bool:
    """May a value of kind ``src`` flow into a port of kind ``dst``?"""
    if src.name == "any" or dst.name == "any":
        return True
    if src.name == "int" and dst.name == "float":
        return True
    if src.name == "list" and dst.name == "list":
        if src.item is None or dst.item is None:
            return True
        return compatible(src.item, dst.item)
    return dst.name in src.lineage()


_SCALARS = {int: INT, float: FLOAT, str: STRING, bool: BOOL}


def kind_of_annotation(annotation: Any) -> Kind:
    """Derive a port's kind from its pydantic annotation: an explicit ``Kind`` in ``Annotated``
    metadata wins, otherwise the Python type decides."""
    if get_origin(annotation) is Annotated:
        base, *meta = get_args(annotation)
        for m in meta:
            if isinstance(m, Kind):
                return m
        return kind_of_annotation(base)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin = get_origin(annotation)
    if origin is Literal:
        values = get_args(annotation)
        kinds = {kind_of_annotation(type(v)) for v in values}
        return kinds.pop() if len(kinds) == 1 else ANY
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return list_of(kind_of_annotation(args[0]) if args else ANY)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return kind_of_annotation(args[0])
        if set(args) == {int, float}:
            return FLOAT
    return ANY


def choices_of_annotation(annotation: Any) -> tuple | None:
    """The allowed values of an enum-like port (``Literal[...]``), for ``describe`` and the schema."""
    if get_origin(annotation) is Annotated:
        return choices_of_annotation(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (typing.Union, types.UnionType):
        for a in get_args(annotation):
            c = choices_of_annotation(a)
            if c:
                return c
    return None
