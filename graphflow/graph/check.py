"""check: document → checked graph. Everything that can be known wrong before any value is bound
or any node runs, gathered into one list of problems.

Independent of parameter values, so it runs once per document however many parameter sets are
bound to it (``bind.py`` checks the values). Needs only the registry's declarations, never torch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import ValidationError

from graphflow.document.tree import (
    Def,
    Document,
    Link,
    LinkList,
    Lit,
    NodeDef,
    ParamRef,
    Ref,
    ScopeDef,
    scope_chain,
    scope_contents,
)
from graphflow.document.format import PARAM_VALUES, ParamType
from graphflow.graph.memo import Memo
from graphflow.graph.scopes import scope_order, variance
from graphflow.node.declaration import Node, Port
from graphflow.node.kinds import ANY, BOOL, FLOAT, INT, STRING, Kind, compatible, list_of
from graphflow.node.registry import Registry
from graphflow.problems import Problem

#: the port kind of each declared parameter type (format.ParamType names them)
PARAM_KINDS = {"int": INT, "float": FLOAT, "string": STRING, "bool": BOOL, "list": list_of(ANY), "any": ANY}
assert set(PARAM_KINDS) == set(get_args(ParamType)) == set(PARAM_VALUES)


@dataclass
class CheckedGraph:
    """A document that passed every structural check, with what binding and planning need."""

    doc: Document
    nodes: dict[str, Def]
    types: dict[str, type[Node]]
    chain: dict[str, tuple[str, ...]]
    #: (node id, field) -> a literal already coerced by its port
    literals: dict[tuple[str, str], Any]
    #: parameter name -> the (node id, field, port or None) it feeds; bind checks values there
    param_uses: dict[str, list[tuple[str, str, Port | None]]]
    #: (node id, field, limit name) of every input subject to a resource ceiling
    limited: list[tuple[str, str, str]]
    #: (node id, field, length) of every list written inline
    lists: list[tuple[str, str, int]]
    #: scope id (None: the top level) -> its members in a topological order
    order: dict[str | None, list[str]]
    #: scope id -> member -> the members of the same scope it reads
    preds: dict[str | None, dict[str, list[str]]]
    #: scope id -> every node inside it, at any depth, sorted
    within: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: body member -> the enclosing scopes it changes with from item to item (see ``variance``)
    varies: dict[str, frozenset[str]] = field(default_factory=dict)
    #: what later stages derive from the document alone, worked out on first use (``memo.py``)
    memo: Memo = field(default_factory=Memo, repr=False)

    def level(self, m: str) -> str | None:
        """The innermost scope a body member changes with: it runs once per item of that scope,
        once per run if None."""
        v = self.varies.get(m)
        return next((s for s in reversed(self.chain[m]) if s in v), None) if v else None


def literal_kind(value: Any) -> Kind:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return list_of(ANY)
    return ANY


def did_you_mean(name: str, options) -> str:
    if len(name) > 100:  # nothing is near a runaway name, and comparing costs seconds
        return ""
    near = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def pyd_message(e: ValidationError) -> str:
    errs = e.errors()
    return "; ".join(err["msg"] for err in errs[:3]) if errs else str(e)


def type_hint(name: str, registry: Registry) -> str:
    """What an unknown node type might have meant: the same name in another case first."""
    near = [t for t in registry.names() if t.lower() == name.lower()]
    return f" (did you mean '{near[0]}'?)" if near else (did_you_mean(name, registry.names()) or " (see `graphflow nodes`)")


def every_iteration_readers(s: ScopeDef, n: NodeDef) -> list[tuple[str, str, str]]:
    """(port, reader, field) for each read of conditional node ``n``'s outputs, within ``s``, by
    a member that runs on iterations ``n`` skips: a member under another condition (or none), or
    the scope's 'next' values. What 'collect' reads is dropped on skipped iterations instead."""
    readers: list[tuple[str, str, str]] = []
    for m in s.body.values():
        if isinstance(m, NodeDef) and m.when == n.when:
            continue
        for fld, ref in m.refs() if isinstance(m, NodeDef) else [(f, r) for f, r in m.refs() if not f.startswith(("next", "collect"))]:
            readers += [(link.port, m.id, fld.split(".", 1)[-1]) for link in (ref.links if isinstance(ref, LinkList) else [ref])
                        if isinstance(link, Link) and link.node == n.id]
    readers += [(r.port, s.id, f"next.{k}") for k, r in s.next.items() if isinstance(r, Link) and r.node == n.id]
    return readers


class _Checker:
    def __init__(self, doc: Document, registry: Registry) -> None:
        self.doc = doc
        self.reg = registry
        self.problems: list[Problem] = []
        self.nodes = doc.all_nodes()
        self.chain = scope_chain(self.nodes)
        self.within = scope_contents(self.chain)
        self.types: dict[str, type[Node]] = {}
        self.literals: dict[tuple[str, str], Any] = {}
        self.param_uses: dict[str, list[tuple[str, str, Port | None]]] = {p: [] for p in doc.params}
        self.limited: list[tuple[str, str, str]] = []
        self.resolving: set[tuple[str, str]] = set()
        self.lists: list[tuple[str, str, int]] = []

    def add(self, code: str, msg: str, node: str | None = None, fld: str | None = None) -> None:
        self.problems.append(Problem(code, msg, node=node, field=fld))

    # --- what a link points at, seen from inside the scopes ``where`` --------------------------

    def source_kind(self, link: Link, where: tuple[str, ...], node: str | None, fld: str) -> Kind | None:
        target = self.nodes.get(link.node)
        if target is None:
            self.add("unknown_node", f"link to '{link}': there is no node '{link.node}'{did_you_mean(link.node, self.nodes)}", node, fld)
            return None
        if isinstance(target, ScopeDef) and target.id in where:  # an enclosing scope's variables
            if link.port in ("index", "count"):
                return INT
            if link.port == target.item:
                over = self.quiet_kind(target.over, self.chain[target.id])
                return (over.item if over else None) or ANY
            if link.port in target.carry:
                return self.carried_kind(target, link.port)
            self.add("unknown_output", f"link to '{link}': inside the body, {target.type.lower()} '{target.id}' provides "
                     f"{', '.join([*target.variables, *target.carry])}", node, fld)
            return None
        home = self.chain[target.id]
        if home != where[: len(home)]:
            inner = home[-1]
            self.add("loop_scope", f"link to '{link}': '{link.node}' is inside the body of {self.nodes[inner].type.lower()} '{inner}'; "
                     f"outside it, use the loop's 'next' or 'collect' values", node, fld)
            return None
        if isinstance(target, ScopeDef):
            if link.port in target.carry:
                return self.carried_kind(target, link.port)
            if link.port in target.collect:
                return list_of(self.quiet_kind(target.collect[link.port], (*home, target.id)) or ANY)
            if link.port in target.variables:
                self.add("loop_scope", f"link to '{link}': loop variables are only visible inside the loop's body", node, fld)
                return None
            self.add("unknown_output", f"link to '{link}': {target.type.lower()} '{target.id}' outputs {', '.join(target.outputs) or 'nothing'}", node, fld)
            return None
        cls = self.types.get(link.node)
        if cls is None:
            return None  # unknown type, already reported
        port = cls.outputs.get(link.port)
        if port is None:
            self.add("unknown_output", f"link to '{link}': {cls.type_name} has outputs {', '.join(cls.outputs)}"
                     f"{did_you_mean(link.port, cls.outputs)}", node, fld)
            return None
        return port.kind

    def carried_kind(self, s: ScopeDef, name: str) -> Kind | None:
        """The kind of a carried value: its initial value's. A carry whose initial value reads
        carried values in a circle has none (the circle is reported as a cycle)."""
        key = (s.id, name)
        if key in self.resolving:
            return None
        self.resolving.add(key)
        try:
            return self.quiet_kind(s.carry[name], self.chain[s.id])
        finally:
            self.resolving.discard(key)

    def quiet_kind(self, ref: Ref, where: tuple[str, ...]) -> Kind | None:
        """Kind of a scope's own value seen through a link; its problems are reported where it is written."""
        n = len(self.problems)
        k = self.ref_kind(ref, where, None, "")
        del self.problems[n:]
        return k

    def ref_kind(self, ref: Ref, where: tuple[str, ...], node: str | None, fld: str) -> Kind | None:
        if isinstance(ref, Link):
            return self.source_kind(ref, where, node, fld)
        if isinstance(ref, LinkList):
            kinds = [self.ref_kind(link, where, node, f"{fld}[{j}]") for j, link in enumerate(ref.links)]
            return list_of(next((k for k in kinds if k is not None), None) or ANY)
        if isinstance(ref, ParamRef):
            p = self.doc.params.get(ref.name)
            if p is None:
                self.add("unknown_param", f"no parameter '{ref.name}' is declared in 'params'{did_you_mean(ref.name, self.doc.params)}", node, fld)
                return None
            if p.type:
                return PARAM_KINDS[p.type]
            return literal_kind(p.default) if p.has_default else ANY
        return literal_kind(ref.value)

    # --- nodes ---------------------------------------------------------------------------------

    def value(self, nid: str, port: Port, ref: Lit | ParamRef, fld: str, where: tuple[str, ...]) -> None:
        if not port.kind.literal:
            self.add("literal_not_allowed", f"input '{port.name}' takes a link to a {port.kind} output, not a value written inline", nid, fld)
            return
        if port.limit is not None:
            self.limited.append((nid, fld, port.limit))
        if isinstance(ref, ParamRef):
            if self.ref_kind(ref, where, nid, fld) is not None:
                self.param_uses[ref.name].append((nid, fld, port))
            return
        if isinstance(ref.value, list):
            self.lists.append((nid, fld, len(ref.value)))
        try:
            self.literals[(nid, fld)] = port.adapter.validate_python(ref.value, strict=True)
        except ValidationError as e:
            self.add("bad_literal", f"{ref.value!r} is not valid for input '{port.name}' ({port.kind}): {pyd_message(e)}", nid, fld)

    def link_fits(self, ref: Link | LinkList, want: Kind, where: tuple[str, ...], nid: str, fld: str, name: str) -> None:
        if isinstance(ref, Link):
            k = self.ref_kind(ref, where, nid, fld)
            if k is not None and not compatible(k, want):
                self.add("type_mismatch", f"'{ref}' is a {k}, but input '{name}' takes a {want}", nid, fld)
            return
        if want.name not in ("list", "any"):
            self.add("type_mismatch", f"a list of links was given, but input '{name}' takes one {want}", nid, fld)
            return
        item = want.item or ANY
        for j, link in enumerate(ref.links):
            k = self.ref_kind(link, where, nid, f"{fld}[{j}]")
            if k is not None and not compatible(k, item):
                self.add("type_mismatch", f"'{link}' is a {k}, but the items of input '{name}' are {item}", nid, f"{fld}[{j}]")

    def check_node(self, n: NodeDef) -> None:
        cls = self.types.get(n.id)
        if cls is None:
            return
        where = self.chain[n.id]
        for name, ref in n.inputs.items():
            fld = f"inputs.{name}"
            port = cls.inputs.get(name)
            if port is None:
                self.add("unknown_input", f"{cls.type_name} has no input '{name}'{did_you_mean(name, cls.inputs)} "
                         f"(inputs: {', '.join(cls.inputs)})", n.id, fld)
            elif isinstance(ref, (Link, LinkList)):
                self.link_fits(ref, port.kind, where, n.id, fld, name)
            else:
                self.value(n.id, port, ref, fld, where)
        for name, port in cls.inputs.items():
            if port.required and name not in n.inputs:
                self.add("missing_input", f"required input '{name}' ({port.kind}) is not given", n.id, f"inputs.{name}")
        for name, ref in n.otherwise.items():
            fld = f"otherwise.{name}"
            port = cls.outputs.get(name)
            if port is None:
                self.add("unknown_output", f"'otherwise' names '{name}', which is not an output of {cls.type_name}", n.id, fld)
                continue
            k = self.ref_kind(ref, where, n.id, fld)
            if k is not None and not compatible(k, port.kind):
                self.add("type_mismatch", f"'otherwise' value for '{name}' is a {k}, the output is a {port.kind}", n.id, fld)
            self.raw_value(n.id, fld, ref, k)

    def raw_value(self, nid: str, fld: str, ref: Ref, kind: Kind | None) -> None:
        """A value written inline where no port coerces it (scope fields, 'otherwise')."""
        if isinstance(ref, Lit):
            self.literals[(nid, fld)] = ref.value
            if isinstance(ref.value, list):
                self.lists.append((nid, fld, len(ref.value)))
        elif isinstance(ref, ParamRef) and kind is not None:
            self.param_uses[ref.name].append((nid, fld, None))

    def check_scope(self, s: ScopeDef) -> None:
        outer, inner = self.chain[s.id], (*self.chain[s.id], s.id)
        k = self.ref_kind(s.over, outer, s.id, "over")
        if k is not None and not (k.item is not None or k.name in ("list", "any")):
            self.add("type_mismatch", f"'over' must be a sequence (a list or a kind with items), got {k}", s.id, "over")
        self.raw_value(s.id, "over", s.over, k)
        init = {}
        for name, ref in s.carry.items():
            init[name] = self.ref_kind(ref, outer, s.id, f"carry.{name}")
            self.raw_value(s.id, f"carry.{name}", ref, init[name])
        for b in s.body.values():
            self.check_scope(b) if isinstance(b, ScopeDef) else self.check_node(b)
        for name, ref in s.next.items():
            k = self.ref_kind(ref, inner, s.id, f"next.{name}")
            self.raw_value(s.id, f"next.{name}", ref, k)
            if k is not None and init.get(name) is not None and not compatible(k, init[name]) and not compatible(init[name], k):
                self.add("type_mismatch", f"next value of '{name}' is a {k}, its initial value a {init[name]}", s.id, f"next.{name}")
        for name, ref in s.collect.items():
            self.raw_value(s.id, f"collect.{name}", ref, self.ref_kind(ref, inner, s.id, f"collect.{name}"))
        self.check_literal_carries(s)
        self.check_conditionals(s)

    def check_literal_carries(self, s: ScopeDef) -> None:
        """A carried value written inline must suit every input that reads it: the first iteration
        would otherwise fail at run time, after models were loaded."""
        carried = {Link(s.id, c) for c in s.carry}
        readers = [(n, name) for n in map(self.nodes.get, self.within.get(s.id, ())) if isinstance(n, NodeDef)
                   for name, ref in n.inputs.items() if isinstance(ref, Link) and ref in carried]
        for n, name in readers:
            carried = n.inputs[name].port
            init = s.carry[carried]
            port = self.types[n.id].inputs.get(name) if n.id in self.types else None
            if isinstance(init, Lit) and port is not None and port.validates_values:
                try:
                    port.adapter.validate_python(init.value)
                except ValidationError as e:
                    self.add("bad_literal", f"the initial value {init.value!r} of '{carried}' is not valid for input '{name}' "
                             f"of '{n.id}' ({port.kind}): {pyd_message(e)}", s.id, f"carry.{carried}")

    def check_conditionals(self, s: ScopeDef) -> None:
        """A skipped node has no outputs; whoever reads them on that iteration needs 'otherwise'."""
        for n in s.body.values():
            if not isinstance(n, NodeDef) or n.when is None:
                continue
            for port, reader, fld in every_iteration_readers(s, n):
                if port not in n.otherwise:
                    self.add("conditional_output", f"'{n.id}' runs only on some iterations, but '{reader}' reads its output "
                             f"'{port}' on every iteration: give '{n.id}' an 'otherwise' value for '{port}'", n.id, "otherwise")

    def run(self) -> CheckedGraph | None:
        for nid, n in self.nodes.items():
            if isinstance(n, NodeDef):
                cls = self.reg.get(n.type)
                if cls is None:
                    self.add("unknown_node_type", f"unknown node type '{n.type}'{type_hint(n.type, self.reg)}", nid, "type")
                else:
                    self.types[nid] = cls
        for n in self.doc.nodes.values():
            self.check_scope(n) if isinstance(n, ScopeDef) else self.check_node(n)
        for name, link in self.doc.outputs.items():
            target = self.doc.nodes.get(link.node)
            if target is None:
                inner = self.nodes.get(link.node)
                why = (f"'{link.node}' is inside loop '{inner.scope}'; name the loop's output" if inner is not None
                       else f"there is no node '{link.node}'")
                self.add("unknown_node", f"output '{name}': {why}", None, f"outputs.{name}")
            elif link.port != "*":
                n = len(self.problems)
                self.ref_kind(link, (), link.node, f"outputs.{name}")
                for i in range(n, len(self.problems)):
                    p = self.problems[i]
                    self.problems[i] = Problem(p.code, p.message, node=link.node, field=f"outputs.{name}")
        order, preds, cycles = scope_order(self.doc, self.nodes, self.chain)
        self.problems += cycles
        if self.problems:
            return None
        varies = variance(self.nodes, self.chain, self.within, self.types, order)
        return CheckedGraph(self.doc, self.nodes, self.types, self.chain, self.literals, self.param_uses, self.limited, self.lists,
                            order, preds, self.within, varies)


def check(doc: Document, registry: Registry) -> tuple[CheckedGraph | None, list[Problem]]:
    c = _Checker(doc, registry)
    checked = c.run()
    seen, unique = set(), []  # one problem per (code, node, field, message), however often reached
    for p in c.problems:
        key = (p.code, p.node, p.field, p.message)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return checked, unique
