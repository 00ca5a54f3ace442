"""Everything that can be known wrong before a node runs, gathered into one list of problems.

Needs only the registry's declarations (pydantic models and kinds), never torch: editors and CI
call ``graphflow validate`` on every save.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import ValidationError

from graphflow.document import Document, Link, LinkList, Lit, LoopDef, NodeDef, ParamRef, Ref, links_of, top_level_of
from graphflow.node import Node, Port
from graphflow.ports import ANY, BOOL, FLOAT, INT, STRING, Kind, compatible, list_of
from graphflow.problems import Problem
from graphflow.registry import Registry

_PARAM_TYPES = {"int": (int,), "float": (int, float), "string": (str,), "bool": (bool,), "list": (list,)}


@dataclass
class Checked:
    """A document that passed validation, with what the executor needs precomputed."""

    doc: Document
    types: dict[str, type[Node]]
    #: (node id, input name) -> the literal or parameter value, already coerced by the port
    literals: dict[tuple[str, str], Any]
    params: dict[str, Any]
    #: top-level dependency graph: nodes and loops, edges from producer to consumer
    graph: nx.DiGraph
    #: per loop: dependency graph of its body nodes
    bodies: dict[str, nx.DiGraph] = field(default_factory=dict)
    #: a topological order of ``graph`` (any subset of it, filtered, stays topological)
    order: list[str] = field(default_factory=list)
    #: plain-dict adjacency of ``graph`` for the executor's hot path
    preds: dict[str, list[str]] = field(default_factory=dict)
    succs: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.preds = {n: list(self.graph.pred[n]) for n in self.graph}
        self.succs = {n: list(self.graph.succ[n]) for n in self.graph}


def _literal_kind(value: Any) -> Kind:
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


def _did_you_mean(name: str, options) -> str:
    near = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _pyd_message(e: ValidationError) -> str:
    errs = e.errors()
    return "; ".join(err["msg"] for err in errs[:3]) if errs else str(e)


class _Checker:
    def __init__(self, doc: Document, registry: Registry, overrides: dict[str, Any]) -> None:
        self.doc = doc
        self.reg = registry
        self.problems: list[Problem] = []
        self.all = doc.all_nodes()
        self.types: dict[str, type[Node]] = {}
        self.literals: dict[tuple[str, str], Any] = {}
        self.params: dict[str, Any] = {}
        self.used_params: set[str] = set()
        for name, value in overrides.items():
            if name not in doc.params:
                known = ", ".join(sorted(doc.params)) or "none"
                self.problems.append(Problem("unknown_param", f"no parameter '{name}'{_did_you_mean(name, doc.params)} (known: {known})", field=f"params.{name}"))
        for name, p in doc.params.items():
            if name in overrides:
                self.params[name] = overrides[name]
            elif p.has_default:
                self.params[name] = p.default
            if name in self.params and p.type and p.type != "any":
                v = self.params[name]
                ok = isinstance(v, _PARAM_TYPES[p.type]) and not (p.type in ("int", "float") and isinstance(v, bool))
                if not ok:
                    self.problems.append(
                        Problem("bad_param", f"parameter '{name}' is declared {p.type}, got {v!r}", field=f"params.{name}")
                    )

    def add(self, code: str, msg: str, node: str | None = None, fld: str | None = None) -> None:
        self.problems.append(Problem(code, msg, node=node, field=fld))

    # --- kinds of the things a link can point at ---------------------------------------------

    def source_kind(self, link: Link, scope: str | None) -> Kind | None:
        """Kind of ``link`` as seen from a node in ``scope`` (a loop id, or None for top level).
        Reports and returns None when the link points nowhere valid."""
        target = self.all.get(link.node)
        if target is None:
            self.add("unknown_node", f"link to '{link}': there is no node '{link.node}'{_did_you_mean(link.node, self.all)}")
            return None
        if isinstance(target, LoopDef):
            if scope == target.id:
                if link.port in ("index", "count"):
                    return INT
                if link.port == target.item:
                    over = self.quiet_kind(target.over, None)
                    return (over.item if over else None) or ANY
                if link.port in target.carry:
                    return self.quiet_kind(target.carry[link.port], None)
                self.add("unknown_output", f"link to '{link}': inside the body, loop '{target.id}' provides "
                         f"{', '.join([*target.variables, *target.carry])}")
                return None
            if link.port in target.carry:
                return self.quiet_kind(target.carry[link.port], None)
            if link.port in target.collect:
                return list_of(self.quiet_kind(target.collect[link.port], target.id) or ANY)
            if link.port in target.variables:
                self.add("loop_scope", f"link to '{link}': loop variables are only visible inside the loop's body")
                return None
            outs = [*target.carry, *target.collect]
            self.add("unknown_output", f"link to '{link}': loop '{target.id}' outputs {', '.join(outs) or 'nothing'}")
            return None
        if target.loop is not None and target.loop != scope:
            self.add("loop_scope", f"link to '{link}': '{link.node}' is inside the body of loop '{target.loop}'; "
                     f"outside it, use the loop's 'next' or 'collect' values")
            return None
        node_cls = self.types.get(link.node)
        if node_cls is None:
            return None  # unknown type, already reported
        port = node_cls.outputs.get(link.port)
        if port is None:
            self.add("unknown_output", f"link to '{link}': {node_cls.type_name} has outputs {', '.join(node_cls.outputs)}"
                     f"{_did_you_mean(link.port, node_cls.outputs)}")
            return None
        return port.kind

    def quiet_kind(self, ref: Ref, scope: str | None) -> Kind | None:
        """Kind of a loop's own value seen through a link; its problems are reported by check_loop."""
        n = len(self.problems)
        k = self.ref_kind(ref, scope, "", "")
        del self.problems[n:]
        return k

    def ref_kind(self, ref: Ref, scope: str | None, node: str, fld: str) -> Kind | None:
        if isinstance(ref, Link):
            n = len(self.problems)
            k = self.source_kind(ref, scope)
            for i in range(n, len(self.problems)):  # attach the referring node and field
                p = self.problems[i]
                self.problems[i] = Problem(p.code, p.message, node=node, field=fld)
            return k
        if isinstance(ref, LinkList):
            kinds = [self.ref_kind(link, scope, node, f"{fld}[{j}]") for j, link in enumerate(ref.links)]
            first = next((k for k in kinds if k is not None), None)
            return list_of(first or ANY)
        if isinstance(ref, ParamRef):
            if ref.name not in self.doc.params:
                self.add("unknown_param", f"no parameter '{ref.name}' is declared in 'params'{_did_you_mean(ref.name, self.doc.params)}", node, fld)
                return None
            self.used_params.add(ref.name)
            if ref.name not in self.params:
                self.add("missing_param", f"parameter '{ref.name}' has no default; set it", node, fld)
                return None
            return _literal_kind(self.params[ref.name])
        return _literal_kind(ref.value)

    # --- nodes -----------------------------------------------------------------------------------

    def check_value(self, nid: str, port: Port, ref: Lit | ParamRef, fld: str) -> None:
        if not port.kind.literal:
            self.add("literal_not_allowed", f"input '{port.name}' takes a link to a {port.kind} output, not a value written inline", nid, fld)
            return
        if isinstance(ref, ParamRef):
            if ref.name not in self.params:
                return
            value = self.params[ref.name]
        else:
            value = ref.value
        try:
            self.literals[(nid, port.name)] = port.adapter.validate_python(value)
        except ValidationError as e:
            what = f"parameter '{ref.name}' = {value!r}" if isinstance(ref, ParamRef) else repr(value)
            code = "bad_param" if isinstance(ref, ParamRef) else "bad_literal"
            self.add(code, f"{what} is not valid for input '{port.name}' ({port.kind}): {_pyd_message(e)}", nid, fld)

    def check_node(self, n: NodeDef) -> None:
        node_cls = self.types.get(n.id)
        if node_cls is None:
            return
        for name, ref in n.inputs.items():
            fld = f"inputs.{name}"
            port = node_cls.inputs.get(name)
            if port is None:
                self.add("unknown_input", f"{node_cls.type_name} has no input '{name}'{_did_you_mean(name, node_cls.inputs)} "
                         f"(inputs: {', '.join(node_cls.inputs)})", n.id, fld)
                continue
            if isinstance(ref, Link):
                k = self.ref_kind(ref, n.loop, n.id, fld)
                if k is not None and not compatible(k, port.kind):
                    self.add("type_mismatch", f"'{ref}' is a {k}, but input '{name}' takes a {port.kind}", n.id, fld)
            elif isinstance(ref, LinkList):
                if port.kind.name not in ("list", "any"):
                    self.add("type_mismatch", f"a list of links was given, but input '{name}' takes one {port.kind}", n.id, fld)
                    continue
                item = port.kind.item or ANY
                for j, link in enumerate(ref.links):
                    k = self.ref_kind(link, n.loop, n.id, f"{fld}[{j}]")
                    if k is not None and not compatible(k, item):
                        self.add("type_mismatch", f"'{link}' is a {k}, but the items of input '{name}' are {item}", n.id, f"{fld}[{j}]")
            else:
                if isinstance(ref, ParamRef):
                    self.ref_kind(ref, n.loop, n.id, fld)
                self.check_value(n.id, port, ref, fld)
        for name, port in node_cls.inputs.items():
            if port.required and name not in n.inputs:
                self.add("missing_input", f"required input '{name}' ({port.kind}) is not given", n.id, f"inputs.{name}")
        for name, ref in n.otherwise.items():
            fld = f"otherwise.{name}"
            port = node_cls.outputs.get(name)
            if port is None:
                self.add("unknown_output", f"'otherwise' names '{name}', which is not an output of {node_cls.type_name}", n.id, fld)
                continue
            k = self.ref_kind(ref, n.loop, n.id, fld)
            if k is not None and not compatible(k, port.kind):
                self.add("type_mismatch", f"'otherwise' value for '{name}' is a {k}, the output is a {port.kind}", n.id, fld)

    def check_loop(self, loop: LoopDef) -> None:
        k = self.ref_kind(loop.over, None, loop.id, "over")
        if k is not None and not (k.item is not None or k.name in ("list", "any")):
            self.add("type_mismatch", f"'over' must be a sequence (a list or a kind with items), got {k}", loop.id, "over")
        init_kinds = {name: self.ref_kind(ref, None, loop.id, f"carry.{name}") for name, ref in loop.carry.items()}
        for n in loop.body.values():
            self.check_node(n)
        for name, ref in loop.next.items():
            k = self.ref_kind(ref, loop.id, loop.id, f"next.{name}")
            init = init_kinds.get(name)
            if k is not None and init is not None and not compatible(k, init) and not compatible(init, k):
                self.add("type_mismatch", f"next value of '{name}' is a {k}, its initial value a {init}", loop.id, f"next.{name}")
        for name, ref in loop.collect.items():
            self.ref_kind(ref, loop.id, loop.id, f"collect.{name}")
        self.check_conditionals(loop)

    def check_conditionals(self, loop: LoopDef) -> None:
        """A skipped node has no outputs; whoever reads them on that iteration needs 'otherwise'."""
        for n in loop.body.values():
            if n.when is None:
                continue
            readers: list[tuple[str, str, str]] = []
            for m in loop.body.values():
                if m.when == n.when:
                    continue
                for name, ref in [*m.inputs.items(), *m.otherwise.items()]:
                    for link in ref.links if isinstance(ref, LinkList) else [ref]:
                        if isinstance(link, Link) and link.node == n.id:
                            readers.append((link.port, m.id, name))
            for name, ref in loop.next.items():
                if isinstance(ref, Link) and ref.node == n.id:
                    readers.append((ref.port, loop.id, f"next.{name}"))
            for port, reader, fld in readers:
                if port not in n.otherwise:
                    self.add("conditional_output", f"'{n.id}' runs only on some iterations, but '{reader}' reads its output "
                             f"'{port}' on every iteration: give '{n.id}' an 'otherwise' value for '{port}'", n.id, "otherwise")

    # --- graph ---------------------------------------------------------------------------------

    def graphs(self) -> tuple[nx.DiGraph, dict[str, nx.DiGraph], list[str]]:
        top = nx.DiGraph()
        top.add_nodes_from(self.doc.nodes)
        bodies: dict[str, nx.DiGraph] = {}

        owner = top_level_of(self.all)
        for nid, n in self.doc.nodes.items():
            for ref in links_of(n):
                src = owner.get(ref.node)
                # a loop's reads of its own body and variables are not dependencies; a plain
                # node reading itself is a cycle
                if src is not None and (src != nid or isinstance(n, NodeDef)):
                    top.add_edge(src, nid)
            if isinstance(n, LoopDef):
                body = bodies[nid] = nx.DiGraph()
                body.add_nodes_from(n.body)
                for b in n.body.values():
                    for ref in links_of(b):
                        if ref.node in n.body:
                            body.add_edge(ref.node, b.id)
        order: list[str] = []
        for where, g in [(None, top), *bodies.items()]:
            try:
                sorted_nodes = list(nx.topological_sort(g))
                if where is None:
                    order = sorted_nodes
                continue
            except nx.NetworkXUnfeasible:
                cycle = nx.find_cycle(g)
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            extra = f" in the body of loop '{where}' (carry values through 'next' instead)" if where else ""
            self.add("cycle", f"the links form a cycle{extra}: {path}", cycle[0][0])
        return top, bodies, order

    def run(self) -> Checked | None:
        for nid, n in self.all.items():
            if isinstance(n, NodeDef):
                cls = self.reg.get(n.type)
                if cls is None:
                    near = [t for t in self.reg.names() if t.lower() == n.type.lower()]
                    hint = f" (did you mean '{near[0]}'?)" if near else (_did_you_mean(n.type, self.reg.names()) or " (see `graphflow nodes`)")
                    self.add("unknown_node_type", f"unknown node type '{n.type}'{hint}", nid, "type")
                else:
                    self.types[nid] = cls
        for n in self.doc.nodes.values():
            if isinstance(n, LoopDef):
                self.check_loop(n)
            else:
                self.check_node(n)
        for name, link in self.doc.outputs.items():
            target = self.doc.nodes.get(link.node)
            if target is None:
                inner = self.all.get(link.node)
                why = f"'{link.node}' is inside loop '{inner.loop}'; name the loop's output" if isinstance(inner, NodeDef) and inner.loop else f"there is no node '{link.node}'"
                self.add("unknown_node", f"output '{name}': {why}", None, f"outputs.{name}")
            elif link.port != "*":
                self.ref_kind(link, None, link.node, f"outputs.{name}")
        graph, bodies, order = self.graphs()
        if self.problems:
            return None
        return Checked(self.doc, self.types, self.literals, self.params, graph, bodies, order)


def check(doc: Document, registry: Registry, overrides: dict[str, Any] | None = None) -> tuple[Checked | None, list[Problem]]:
    c = _Checker(doc, registry, overrides or {})
    checked = c.run()
    # one problem per (code, node, field, message) even if reached along several paths
    seen, unique = set(), []
    for p in c.problems:
        key = (p.code, p.node, p.field, p.message)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return checked, unique
