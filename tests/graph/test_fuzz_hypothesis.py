"""Property-based fuzzing of the shipped workflows with hypothesis.

Every shipped workflow (workflows/*.json) is mutated at the JSON level (a key dropped, copied
under another name or renamed, a value retyped, two link targets swapped, a number pushed to an
extreme, a hostile string injected), at the graph level (a link rewired to another node's port, a
node deleted, a cycle added, a node moved into or out of a loop body) and at the text level (a key
written twice, bytes cut or damaged). The properties:

- ``Workflow.from_dict`` + ``.checked()`` + ``.bind()`` raise nothing but ``ValidationFailed``,
  whose problems all have a code and a message;
- a key written twice is refused as ``duplicate_key`` at its JSON path;
- a mutated workflow they accept, for the workflows of built-in nodes (hello, nested_loop: they run
  in milliseconds), runs: its result is ok, or its errors name a node of the document; nothing
  escapes ``Executor.run`` as an exception.

Derandomized (the same examples on every run, for CI), with a bounded number of examples; each
test prints how many examples ran and what became of them.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphflow
from graphflow import Executor, ValidationFailed, Workflow
from graphflow.document.jsontext import parse_json
from graphflow.document.tree import Link, NodeDef

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
DOCS = {p.stem: orjson.loads(p.read_bytes()) for p in sorted(WORKFLOWS.glob("*.json"))}
RUNNABLE = ("hello", "nested_loop")
REG = graphflow.registry()

SETTINGS = {"derandomize": True, "deadline": None, "database": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]}

EXTREMES = [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 1e308, -1e308, 5e-324, -0.0, 0.5, 10**6, -(10**6), 1e-12]
INJECTED = ["", " ", "..", ".", "../../../etc/passwd", "/etc/passwd", "a\x00b", "C:\\Windows\\x", "\u202egnp.exe", "os.system",
            "builtins.eval", "__import__", "__import__('os').system('touch pwned')", "${value}", "$value", "{0.__class__}",
            "node.port", "a.b.c", ".x", "x.", "x" * 300, "é", "Loop", "Map", "index", "count", "item", "\n", "null"]
KEYS = ["type", "inputs", "from", "param", "literal", "body", "carry", "next", "collect", "over", "item", "when", "otherwise",
        "every", "start", "stop", "format", "nodes", "outputs", "params", "default", "title", "zz"]

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(EXTREMES), st.sampled_from(INJECTED),
)
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


# --- walking a (possibly already damaged) document -------------------------------------------------


def walk(o: Any, path: tuple = ()):
    """(path, value) of every value in a JSON document, the document itself first."""
    yield path, o
    if isinstance(o, dict):
        for k, v in list(o.items()):
            yield from walk(v, (*path, k))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from walk(v, (*path, i))


def parent_of(doc: Any, path: tuple) -> Any:
    for k in path[:-1]:
        doc = doc[k]
    return doc


def containers(doc: Any) -> list[tuple[tuple, dict]]:
    """Every dict of nodes: the top level's, and each scope's body, at any depth."""
    out = []

    def visit(nodes: Any, path: tuple) -> None:
        if not isinstance(nodes, dict):
            return
        out.append((path, nodes))
        for nid, n in nodes.items():
            if isinstance(n, dict) and isinstance(n.get("body"), dict):
                visit(n["body"], (*path, nid, "body"))

    if isinstance(doc, dict):
        visit(doc.get("nodes"), ("nodes",))
    return out


def all_nodes(doc: Any) -> dict[str, dict]:
    return {nid: n for _, nodes in containers(doc) for nid, n in nodes.items() if isinstance(n, dict)}


def ports_of(n: dict) -> list[str]:
    """What a link may name on this node: a node type's outputs, a scope's values."""
    t = n.get("type")
    if t in ("Loop", "Map"):
        names = [n.get("item", "item") if isinstance(n.get("item", "item"), str) else "item", "index", "count"]
        for section in ("carry", "collect"):
            if isinstance(n.get(section), dict):
                names += list(n[section])
        return names
    cls = REG.get(t) if isinstance(t, str) else None
    return list(cls.outputs) if cls else ["value", "result"]


def links(doc: Any) -> list[tuple]:
    return [p for p, v in walk(doc) if p and isinstance(v, dict) and set(v) == {"from"} and isinstance(v["from"], str)]


# --- mutations -------------------------------------------------------------------------------------


def json_mutation(data, doc: dict) -> str:
    op = data.draw(st.sampled_from(["drop", "copy_key", "rename_key", "retype", "swap_links", "extreme", "inject"]), label="json op")
    places = [p for p, _ in walk(doc) if p]
    if not places:
        return "noop"
    if op == "swap_links":
        ls = links(doc)
        if len(ls) < 2:
            return "noop"
        a, b = data.draw(st.sampled_from(ls)), data.draw(st.sampled_from(ls))
        pa, pb = parent_of(doc, a)[a[-1]], parent_of(doc, b)[b[-1]]
        pa["from"], pb["from"] = pb["from"], pa["from"]
        return op
    if op == "extreme":
        places = [p for p, v in walk(doc) if p and isinstance(v, (int, float))] or places
    if op == "inject":
        places = [p for p, v in walk(doc) if p and isinstance(v, str)] or places
    if op in ("drop", "copy_key", "rename_key"):
        places = [p for p in places if isinstance(parent_of(doc, p), dict)]
        if not places:
            return "noop"
    path = data.draw(st.sampled_from(places), label="where")
    parent = parent_of(doc, path)
    key = path[-1]
    if op == "drop":
        del parent[key]
    elif op in ("copy_key", "rename_key"):
        new = data.draw(st.sampled_from([*KEYS, *INJECTED[:8], f"{key}2", f"{key}_copy"]), label="new key")
        value = parent[key] if op == "copy_key" else parent.pop(key)
        parent[new] = copy.deepcopy(value)
    elif op == "retype":
        parent[key] = data.draw(json_values, label="value")
    elif op == "extreme":
        parent[key] = data.draw(st.sampled_from(EXTREMES), label="number")
    else:
        parent[key] = data.draw(st.sampled_from(INJECTED), label="string")
    return op


def graph_mutation(data, doc: dict) -> str:
    op = data.draw(st.sampled_from(["rewire", "delete_node", "add_cycle", "self_link", "move_in", "move_out"]), label="graph op")
    nodes = all_nodes(doc)
    cs = containers(doc)
    if not nodes:
        return "noop"
    if op == "rewire":
        ls = links(doc)
        if not ls:
            return "noop"
        path = data.draw(st.sampled_from(ls), label="link")
        target = data.draw(st.sampled_from(sorted(nodes)), label="target")
        port = data.draw(st.sampled_from(ports_of(nodes[target])), label="port")
        parent_of(doc, path)[path[-1]] = {"from": f"{target}.{port}"}
        return op
    if op == "delete_node":
        path, container = data.draw(st.sampled_from(cs), label="container")
        if not container:
            return "noop"
        del container[data.draw(st.sampled_from(sorted(container)), label="node")]
        return op
    plain = {nid: n for nid, n in nodes.items() if isinstance(n.get("type"), str) and REG.get(n["type"]) is not None
             and REG.get(n["type"]).inputs and REG.get(n["type"]).outputs}
    if op in ("add_cycle", "self_link"):
        if not plain:
            return "noop"
        a = data.draw(st.sampled_from(sorted(plain)), label="a")
        b = a if op == "self_link" else data.draw(st.sampled_from(sorted(plain)), label="b")
        for x, y in ((a, b), (b, a)):
            cls = REG.get(plain[x]["type"])
            name = data.draw(st.sampled_from(list(cls.inputs)), label="input")
            if not isinstance(plain[x].get("inputs"), dict):
                plain[x]["inputs"] = {}
            plain[x]["inputs"][name] = {"from": f"{y}.{data.draw(st.sampled_from(list(REG.get(plain[y]['type']).outputs)))}"}
        return op
    if op == "move_in":
        scopes = [(p, c) for p, c in cs if p != ("nodes",)]
        top = cs[0][1] if cs and cs[0][0] == ("nodes",) else None
        if not scopes or not top:
            return "noop"
        nid = data.draw(st.sampled_from(sorted(top)), label="node")
        _, body = data.draw(st.sampled_from(scopes), label="into")
        if body is top.get(nid, {}).get("body") if isinstance(top.get(nid), dict) else False:
            return "noop"  # a scope into its own body: the walk would lose it
        body[nid] = top.pop(nid)
        return op
    # move_out: a body node to the top level
    inner = [(p, c) for p, c in cs if p != ("nodes",) and c]
    if not inner or not isinstance(doc.get("nodes"), dict):
        return "noop"
    _, body = data.draw(st.sampled_from(inner), label="from body")
    nid = data.draw(st.sampled_from(sorted(body)), label="node")
    doc["nodes"][nid if nid not in doc["nodes"] else f"{nid}_out"] = body.pop(nid)
    return op


# --- checking --------------------------------------------------------------------------------------


def check_or_refuse(doc: Any, stats: Counter) -> tuple[Workflow | str | None, Any]:
    """The workflow and its bound graph, (None, None) when refused; anything but
    ValidationFailed fails the test."""
    try:
        wf = Workflow.from_dict(doc, REG)
        wf.checked()
        return wf, wf.bind()
    except ValidationFailed as e:
        assert e.problems, "ValidationFailed without problems"
        for p in e.problems:
            assert isinstance(p.code, str) and p.code and isinstance(p.message, str) and p.message, p
        return None, None


def small_enough_to_run(bound) -> bool:
    """Every Range fed by values (not links) and at most 30 long, so a mutated loop stays short."""
    for nid, n in bound.checked.nodes.items():
        if isinstance(n, NodeDef) and n.type == "Range":
            if any(isinstance(n.inputs.get(k), Link) for k in ("start", "stop", "step")):
                return False
            start = bound.value(nid, "inputs.start") if "start" in n.inputs else 0
            step = bound.value(nid, "inputs.step") if "step" in n.inputs else 1
            stop = bound.value(nid, "inputs.stop")
            if not all(isinstance(v, int) for v in (start, stop, step)) or step < 1 or -(-(stop - start) // step) > 30:
                return False  # (a range's length, without building one of 2**64 items)
    return True


def report(name: str, stats: Counter, seconds: float, record_property) -> None:
    line = f"{name}: {stats['examples']} examples in {seconds:.1f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k != "examples")
    print(line)
    record_property(name, dict(stats))


# --- the properties --------------------------------------------------------------------------------


def test_mutated_workflows_are_refused_with_problems_or_accepted(record_property):
    stats: Counter = Counter()

    @settings(max_examples=1000, **SETTINGS)
    @given(st.data())
    def mutate(data):
        name = data.draw(st.sampled_from(sorted(DOCS)), label="workflow")
        doc = copy.deepcopy(DOCS[name])
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            level = data.draw(st.sampled_from(["json", "graph"]), label="level")
            stats[(json_mutation if level == "json" else graph_mutation)(data, doc)] += 1
        params = {}
        if data.draw(st.booleans(), label="set a parameter"):
            params = {data.draw(st.sampled_from(sorted(DOCS[name].get("params", {})) or ["zz"])): data.draw(json_values)}
        stats["examples"] += 1
        wf, _ = check_or_refuse(doc, stats)
        if wf is not None and params:
            try:
                wf.bind(params)
            except ValidationFailed as e:
                assert e.problems and all(p.code and p.message for p in e.problems)
        stats["refused" if wf is None else "accepted"] += 1

    t = time.perf_counter()
    mutate()
    report("json+graph mutations", stats, time.perf_counter() - t, record_property)
    assert stats["examples"] >= 1000 and stats["refused"] > 500


def dump_with_duplicate(o: Any, target: tuple, path: tuple = ()) -> str:
    """JSON text of ``o`` in which the key at ``target`` is written twice (the first time with null)."""
    if isinstance(o, dict):
        parts = []
        for k, v in o.items():
            if (*path, k) == target:
                parts.append(f"{orjson.dumps(k).decode()}: null")
            parts.append(f"{orjson.dumps(k).decode()}: {dump_with_duplicate(v, target, (*path, k))}")
        return "{\n" + ",\n".join(parts) + "\n}"
    if isinstance(o, list):
        return "[" + ", ".join(dump_with_duplicate(v, target, (*path, i)) for i, v in enumerate(o)) + "]"
    return orjson.dumps(o).decode()


def test_a_key_written_twice_anywhere_is_refused_at_its_path(record_property):
    stats: Counter = Counter()

    @settings(max_examples=300, **SETTINGS)
    @given(st.data())
    def duplicate(data):
        doc = DOCS[data.draw(st.sampled_from(sorted(DOCS)), label="workflow")]
        keys = [p for p, _ in walk(doc) if p and isinstance(p[-1], str)]
        target = data.draw(st.sampled_from(keys), label="key")
        text = dump_with_duplicate(doc, target)
        with pytest.raises(ValidationFailed) as e:
            parse_json(text.encode())
        (p,) = e.value.problems
        field = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(target))
        assert (p.code, p.field) == ("duplicate_key", field)
        line = text[: text.index(f"{orjson.dumps(target[-1]).decode()}: null")].count("\n") + 2  # the second writing's line
        assert p.line is not None and p.line >= line - 1 and p.message
        if target[0] == "nodes" and len(target) >= 2:
            assert p.node is not None
        stats["examples"] += 1
        stats["refused as duplicate_key at its path"] += 1

    t = time.perf_counter()
    duplicate()
    report("duplicate keys", stats, time.perf_counter() - t, record_property)
    assert stats["examples"] >= 300


def test_damaged_text_is_refused_or_read(record_property):
    stats: Counter = Counter()

    @settings(max_examples=400, **SETTINGS)
    @given(st.data())
    def damage(data):
        text = orjson.dumps(DOCS[data.draw(st.sampled_from(sorted(DOCS)), label="workflow")], option=orjson.OPT_INDENT_2)
        at = data.draw(st.integers(0, len(text)), label="at")
        op = data.draw(st.sampled_from(["cut", "insert", "replace"]), label="op")
        junk = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"\xef\xbb\xbf", b"\x00", b'"', b"{", b"]", b",", b"NaN",
                                                                               b"1e400", b"99999999999999999999999"]), label="bytes")
        text = text[:at] if op == "cut" else text[:at] + junk + text[at + (len(junk) if op == "replace" else 0):]
        try:
            doc = parse_json(text)
        except ValidationFailed as e:
            assert e.problems and all(p.code in ("invalid_json", "duplicate_key", "invalid_document") and p.message for p in e.problems)
            stats["unreadable"] += 1
        else:
            wf, _ = check_or_refuse(doc, stats)
            stats["refused" if wf is None else "accepted"] += 1
        stats["examples"] += 1

    t = time.perf_counter()
    damage()
    report("damaged text", stats, time.perf_counter() - t, record_property)
    assert stats["examples"] >= 400


def test_accepted_mutations_of_builtin_workflows_run_or_fail_naming_a_node(tmp_path, record_property):
    stats: Counter = Counter()

    @settings(max_examples=1500, **SETTINGS)
    @given(st.data())
    def run(data):
        name = data.draw(st.sampled_from(RUNNABLE), label="workflow")
        doc = copy.deepcopy(DOCS[name])
        for _ in range(data.draw(st.integers(1, 2), label="mutations")):
            level = data.draw(st.sampled_from(["json", "graph"]), label="level")
            (json_mutation if level == "json" else graph_mutation)(data, doc)
        stats["examples"] += 1
        wf, bound = check_or_refuse(doc, stats)
        if wf is None:
            stats["refused"] += 1
            return
        if data.draw(st.booleans(), label="set n"):  # the --set of a run: any value, bound again
            wf = wf.with_params(n=data.draw(st.integers(-3, 12) | st.sampled_from(EXTREMES) | json_values, label="n"))
            try:
                bound = wf.bind()
            except ValidationFailed as e:
                assert e.problems and all(p.code and p.message for p in e.problems)
                stats["refused"] += 1
                return
        if not small_enough_to_run(bound):
            stats["accepted, too long to run"] += 1
            return
        out = tmp_path / f"out{stats['examples']}"
        with Executor(out_dir=out) as ex:
            result = ex.submit(wf).result(timeout=60)  # never an exception out of a run
        ids = set(bound.checked.nodes)
        for err in result.errors:
            assert err.node in ids and err.type and err.message, err
        assert not result.cancelled
        stats["ran ok" if result.ok else "ran, failed naming a node"] += 1

    t = time.perf_counter()
    run()
    report("runs of accepted mutations", stats, time.perf_counter() - t, record_property)
    assert stats["examples"] >= 1500 and stats["ran ok"] + stats["ran, failed naming a node"] >= 20
