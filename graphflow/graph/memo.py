"""What later stages work out from a checked document alone, kept with it.

Binding, planning, fingerprinting and running derive the same facts from a document every time
(the fingerprint recipe of each node, the plan's shape, which body members a scope needs, how
each node reads its inputs, the fingerprints of recent parameter sets). A checked graph is made
once per document and shared by every parameter set bound to it, so each fact is worked out on
first use and kept here. The records are defined here, below the engine that fills them in,
because the checked graph that keeps them sits below the engine.

Each field is filled in by one writer, whole (or, for the dicts, one key at a time); a race
between two threads computes the same value twice, never a wrong one.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

__all__ = ["Memo", "Recipe", "Shape"]


class Recipe(NamedTuple):
    """The part of a node's fingerprint the document fixes (``engine.fingerprint``)."""

    static: bytes  # the digest of what never changes for the document: type, versions, condition
    values: bytes | None  # the inline values, serialised, when no parameter feeds the node
    value_fields: tuple  # the fields holding values (literals or parameters)
    #: (tag, field, ref, file marker or None, links) for links and file inputs; links: per link,
    #: (its node, the bytes of its port, the bytes naming it inside a scope)
    dynamic: tuple
    uses: frozenset
    pure: bool


@dataclass
class Shape:
    """What planning needs that depends on the document alone (``engine.plan.shape``)."""

    members: list[str]  # the top-level members the outputs need, in order
    consumed: dict[str, set[str]]
    keep: set[str]
    pure: dict[str, bool]
    ports: dict[str, set[str]]  # every output port of each member
    to_disk: dict[str, bool]
    #: the members in ``keep``, in order, when each is pure: all a fully cached run touches; else None
    kept: list[str] | None = None


#: (the parameter set serialised, the run options) -> (member -> fingerprint, for those that hold
#: no run token; the (file, content id) pairs those fingerprints read; how many members they are when
#: none is missing or holds a token, else -1)
Fingerprints = dict[tuple[bytes, Hashable], tuple[dict[str, str], list[tuple[Path, str]], int]]


@dataclass(eq=False)
class Memo:
    #: node or scope id -> its fingerprint recipe; None until the first fingerprint
    recipes: dict[str, Recipe] | None = None
    #: (the plan's top-level members, each with its recipe (None for a scope) and its plain form
    #: (``engine.fingerprint._plain``)), for ``engine.fingerprint.Fingerprints.all``; None until the
    #: first fingerprint
    top_recipes: tuple | None = None
    #: top-level member -> (pure, the ports a cache lookup asks for, producers), for
    #: ``engine.plan.plan``; None until the first plan
    plan_walk: dict[str, tuple] | None = None
    #: top-level member -> (definition, pure, to disk, producers, node class, may pin a model, type
    #: name, how it reads its inputs (three parts), its output names), for ``engine.run.Runner``;
    #: None until the first run
    top_records: dict[str, tuple] | None = None
    #: the newest parameter sets' fingerprints (at most 32: a long sweep keeps the newest)
    fingerprints: Fingerprints = field(default_factory=dict)
    #: the top level's plan shape; None until the first plan
    shape: Shape | None = None
    #: member -> how many steps read it, when every member is a step and none is loaded (a cold
    #: run's plan: copied, not counted again); None until such a plan
    all_remaining: dict[str, int] | None = None
    #: scope id -> the body members its values need, in order (``engine.plan.body_order``)
    body_order: dict[str, list[str]] = field(default_factory=dict)
    #: node id -> (its literal inputs over its class's defaults, the names of the inputs it sets,
    #: per other input: name, field, ref, how it is read, its value checker, the file marker of a
    #: linked file input, the type a linked value may have to pass unchecked)
    #: (``engine.run.Runner.inputs_of``)
    input_specs: dict[str, tuple] = field(default_factory=dict)
    #: (node id, input name, port, whether the workflow gives the input) of every file input
    #: (``graph.file_check``); None until the first bind
    file_inputs: list[tuple] | None = None
