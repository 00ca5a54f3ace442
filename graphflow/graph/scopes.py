"""The order of each scope's members (the top level is a scope too) and what changes from one
item of a scope to the next. Both follow from links alone: computed once per checked document."""

from __future__ import annotations

import graphlib

from graphflow.document.tree import Def, Document, Link, NodeDef, ScopeDef, links_of, member_of, ref_links
from graphflow.problems import Problem


def scope_order(doc: Document, nodes: dict[str, Def], chain: dict[str, tuple[str, ...]]) -> tuple[dict, dict, list[Problem]]:
    """Per scope (None: the top level): its members in a topological order, each member's
    producers among them, and a problem per cycle."""
    order: dict[str | None, list[str]] = {}
    preds: dict[str | None, dict[str, list[str]]] = {}
    problems: list[Problem] = []
    scopes: list[tuple[str | None, dict[str, Def]]] = [(None, doc.nodes)]
    scopes += [(s.id, s.body) for s in nodes.values() if isinstance(s, ScopeDef)]
    for sid, members in scopes:
        g: dict[str, dict[str, None]] = {m: {} for m in members}  # member -> its producers, in order
        for m, d in members.items():
            # a scope's body, 'next' and 'collect' may read the scope's own values; its 'over' and
            # 'carry' are read before it starts, so reading itself there is a cycle, as it is for
            # a plain node
            outer = {link for fld, r in d.refs() if fld == "over" or fld.startswith("carry.") for link in ref_links(r)} \
                if isinstance(d, ScopeDef) else set()
            for link in links_of(d):
                src = member_of(chain.get(link.node, ()), link.node, sid) if link.node in nodes else None
                if src is not None and (src != m or isinstance(d, NodeDef) or link in outer):
                    g[m][src] = None
        try:
            order[sid] = list(graphlib.TopologicalSorter(g).static_order())
        except graphlib.CycleError as e:
            cycle = e.args[1]  # [a, b, ..., a], each the producer of the one before it
            path = " -> ".join(reversed(cycle))
            extra = f" in the body of {nodes[sid].type.lower()} '{sid}' (carry values through 'next' instead)" if sid else ""
            problems.append(Problem("cycle", f"the links form a cycle{extra}: {path}", node=cycle[-1]))
            continue
        preds[sid] = {m: list(g[m]) for m in order[sid]}
    return order, preds, problems


def variance(nodes: dict[str, Def], chain: dict[str, tuple[str, ...]], within: dict[str, tuple[str, ...]], types: dict,
             order: dict[str | None, list[str]]) -> dict[str, frozenset[str]]:
    """For every member of a scope body: the enclosing scopes it changes with from item to item.
    It changes with a scope when it reads that scope's variables, or a value that changes with
    it; a node with a condition, a side effect or a declared use of the iteration changes with
    its own scope. Hoisting follows this, not the syntax of the inputs: a node runs once per
    item of the innermost scope it changes with (once per run if none)."""
    varies: dict[str, frozenset[str]] = {}

    def of(link: Link, reader: str) -> frozenset[str]:
        target = nodes[link.node]
        if isinstance(target, ScopeDef) and target.id in chain[reader] + (reader,):
            return frozenset((target.id,))  # an enclosing scope's variables
        return varies.get(link.node, frozenset())

    def visit(sid: str) -> None:
        for m in order[sid]:
            d = nodes[m]
            if isinstance(d, ScopeDef):
                visit(m)
                inside = within.get(m, ())
                own = [of(link, m) for fld, r in d.refs() if not fld.startswith(("next", "collect")) for link in ref_links(r)]
                v = frozenset().union(*own, *(varies[x] for x in inside)) - {m, *inside}
            else:
                cls = types[m]
                v = frozenset().union(*(of(link, m) for link in links_of(d)))
                if d.when or not cls.pure or "iteration" in cls.uses:
                    v |= {sid}
            varies[m] = v

    for s in order:
        if s is not None and nodes[s].scope is None:
            visit(s)
    return varies
