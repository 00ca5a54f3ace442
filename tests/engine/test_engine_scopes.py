"""Scopes: a Loop or a Map inside a Loop or a Map, at any depth. Inner bodies read the items and
carried values of every enclosing scope; nodes are hoisted out of the scopes whose values they do
not read; reading into a scope from outside it, or into a sibling's body, is a ``loop_scope``
problem. Counted on toy nodes, plus the shipped example workflows."""

from __future__ import annotations

from pathlib import Path

import pytest

import graphflow
from graphflow import Executor, ValidationFailed, Workflow
from tests.toy_nodes import RUNS, Iteration, link, make, toy_registry

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def problems_of(factory) -> list:
    """Validation problems however the engine reports them: at load or when checked."""
    try:
        wf = factory()
    except ValidationFailed as e:
        return e.problems
    return wf.problems()


def codes(problems) -> set[tuple[str, str | None]]:
    return {(p.code, p.node) for p in problems}


# --- a Loop in a Loop ---------------------------------------------------------------------------------


def nested() -> dict:
    """outer walks i = 0, 1, 2 carrying a total; inner walks j = 0..3, its carry starting at the outer
    total. ``base`` reads only outer values (hoisted: once per outer iteration); ``k`` reads only
    top-level values (hoisted out of both loops: once)."""
    return {
        "r3": {"type": "Range", "inputs": {"stop": 3}},
        "r4": {"type": "Range", "inputs": {"stop": 4}},
        "c": {"type": "Num", "inputs": {"value": 100}},
        "outer": {
            "type": "Loop",
            "over": link("r3.values"),
            "item": "i",
            "carry": {"total": 0},
            "body": {
                "inner": {
                    "type": "Loop",
                    "over": link("r4.values"),
                    "item": "j",
                    "carry": {"acc": link("outer.total")},
                    "body": {
                        "base": {"type": "Add", "inputs": {"a": link("outer.i"), "b": link("outer.total")}},
                        "k": {"type": "Add", "inputs": {"a": link("c.value"), "b": 1}},
                        "t": {"type": "Add", "inputs": {"a": link("base.sum"), "b": link("inner.j")}},
                        "s": {"type": "Add", "inputs": {"a": link("inner.acc"), "b": link("t.sum")}},
                        "shifted": {"type": "Add", "inputs": {"a": link("k.sum"), "b": link("inner.j")}},
                    },
                    "next": {"acc": link("s.sum")},
                    "collect": {"terms": link("t.sum"), "shifted": link("shifted.sum")},
                },
            },
            "next": {"total": link("inner.acc")},
            "collect": {"rows": link("inner.terms"), "shifted": link("inner.shifted")},
        },
        "post": {"type": "Add", "inputs": {"a": link("outer.total"), "b": {"param": "k"}}},
    }


NESTED_OUTPUTS = {"total": "outer.total", "rows": "outer.rows", "shifted": "outer.shifted", "post": "post.sum"}


def nested_wf(nodes: dict | None = None) -> Workflow:
    return make(nodes or nested(), NESTED_OUTPUTS, {"k": {"default": 0.5, "type": "float"}})


def test_loop_in_a_loop_reads_the_outer_item_and_carry():
    r = Executor().run(nested_wf())
    assert r.ok, r.errors
    # i=0: base 0,          t 0..3,   acc 0 + 6 = 6
    # i=1: base 1 + 6 = 7,  t 7..10,  acc 6 + 34 = 40
    # i=2: base 2 + 40 = 42, t 42..45, acc 40 + 174 = 214
    assert r["rows"] == [[0.0, 1.0, 2.0, 3.0], [7.0, 8.0, 9.0, 10.0], [42.0, 43.0, 44.0, 45.0]]
    assert r["total"] == 214.0
    assert r["post"] == 214.5
    assert r["shifted"] == [[101.0, 102.0, 103.0, 104.0]] * 3
    assert RUNS["t"] == 12 and RUNS["s"] == 12 and RUNS["shifted"] == 12
    assert r.runs("t") == 12 and r.runs("outer") == 1


def test_a_node_reading_only_outer_loop_values_runs_once_per_outer_iteration():
    Executor().run(nested_wf())
    assert RUNS["base"] == 3, "reads only the outer loop's values: once per outer iteration, not per inner one"
    assert RUNS["t"] == 12


def test_a_node_reading_only_top_level_values_is_hoisted_out_of_every_scope():
    Executor().run(nested_wf())
    assert RUNS["k"] == 1, "reads only top-level values: once per run, not once per outer iteration"
    assert RUNS["c"] == 1


def test_a_node_declaring_iteration_is_not_hoisted_and_sees_the_innermost_index():
    nodes = nested()
    nodes["outer"]["body"]["inner"]["body"]["it"] = {"type": "Iteration", "inputs": {"scale": 10}}
    nodes["outer"]["body"]["inner"]["collect"]["its"] = link("it.value")
    nodes["outer"]["collect"]["its"] = link("inner.its")
    reg = toy_registry()
    reg.register(Iteration)
    wf = Workflow.from_dict({"format": 1, "nodes": nodes, "outputs": {**NESTED_OUTPUTS, "its": "outer.its"},
                             "params": {"k": {"default": 0.5, "type": "float"}}}, reg)
    r = Executor().run(wf)
    assert r.ok, r.errors
    assert r["its"] == [[0.0, 10.0, 20.0, 30.0]] * 3
    assert RUNS["it"] == 12


def test_a_fully_cached_nested_rerun_runs_nothing_and_a_downstream_param_reruns_only_downstream():
    ex = Executor()
    first = ex.run(nested_wf())
    RUNS.clear()
    again = ex.run(nested_wf())
    assert again.ok and again["total"] == first["total"] and again["rows"] == first["rows"]
    assert sum(RUNS.values()) == 0
    assert again.stats["outer"].status == "memory"
    assert again.runs("outer") == 0 and again.runs("t") == 0

    r = ex.run(nested_wf().with_params(k=2))
    assert r["post"] == 216.0
    assert dict(RUNS) == {"post": 1}


# --- Map ----------------------------------------------------------------------------------------------


def test_map_collects_in_item_order_and_runs_each_items_body_once():
    wf = make(
        {
            "xs": {"type": "Value", "inputs": {"value": [3, 1, 4, 0, 2]}},
            "M": {
                "type": "Map",
                "over": link("xs.value"),
                "item": "x",
                "body": {
                    "d": {"type": "Add", "inputs": {"a": link("M.x"), "b": 0.5}},
                    "e": {"type": "Add", "inputs": {"a": link("d.sum"), "b": link("M.x")}},
                },
                "collect": {"ds": link("d.sum"), "es": link("e.sum")},
            },
        },
        {"ds": "M.ds", "es": "M.es"},
    )
    ex = Executor()
    r = ex.run(wf)
    assert r.ok, r.errors
    assert r["ds"] == [3.5, 1.5, 4.5, 0.5, 2.5]
    assert r["es"] == [6.5, 2.5, 8.5, 0.5, 4.5]
    assert RUNS == {"d": 5, "e": 5}

    RUNS.clear()
    again = ex.run(wf)
    assert again["ds"] == r["ds"] and sum(RUNS.values()) == 0


def test_map_in_a_loop_reads_the_loop_item_and_carry():
    wf = make(
        {
            "r3": {"type": "Range", "inputs": {"stop": 3}},
            "r4": {"type": "Range", "inputs": {"stop": 4}},
            "L": {
                "type": "Loop",
                "over": link("r3.values"),
                "carry": {"offset": 0},
                "body": {
                    "M": {
                        "type": "Map",
                        "over": link("r4.values"),
                        "item": "x",
                        "body": {
                            "p": {"type": "Add", "inputs": {"a": link("M.x"), "b": link("L.offset")}},
                            "q": {"type": "Add", "inputs": {"a": link("L.item"), "b": link("L.offset")}},  # once per L iteration
                        },
                        "collect": {"ps": link("p.sum"), "qs": link("q.sum")},
                    },
                    "bump": {"type": "Add", "inputs": {"a": link("L.offset"), "b": 10}},
                },
                "next": {"offset": link("bump.sum")},
                "collect": {"rows": link("M.ps"), "qs": link("M.qs")},
            },
        },
        {"rows": "L.rows", "qs": "L.qs", "offset": "L.offset"},
    )
    r = Executor().run(wf)
    assert r.ok, r.errors
    assert r["rows"] == [[0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0], [20.0, 21.0, 22.0, 23.0]]
    assert r["qs"] == [[0.0] * 4, [11.0] * 4, [22.0] * 4]
    assert r["offset"] == 30.0
    assert RUNS["p"] == 12 and RUNS["bump"] == 3
    assert RUNS["q"] == 3, "reads only the loop's values: once per loop iteration, not per map item"


def test_loop_in_a_map_runs_one_loop_per_item():
    wf = make(
        {
            "ns": {"type": "Value", "inputs": {"value": [3, 5, 1]}},
            "M": {
                "type": "Map",
                "over": link("ns.value"),
                "item": "n",
                "body": {
                    "numbers": {"type": "Range", "inputs": {"stop": link("M.n")}},
                    "sum": {
                        "type": "Loop",
                        "over": link("numbers.values"),
                        "carry": {"acc": 0},
                        "body": {"add": {"type": "Add", "inputs": {"a": link("sum.acc"), "b": link("sum.item")}}},
                        "next": {"acc": link("add.sum")},
                        "collect": {"partial": link("add.sum")},
                    },
                },
                "collect": {"sums": link("sum.acc"), "partials": link("sum.partial")},
            },
        },
        {"sums": "M.sums", "partials": "M.partials"},
    )
    r = Executor().run(wf)
    assert r.ok, r.errors
    assert r["sums"] == [3.0, 10.0, 0.0]
    assert r["partials"] == [[0.0, 1.0, 3.0], [0.0, 1.0, 3.0, 6.0, 10.0], [0.0]]
    assert RUNS["add"] == 9


# --- scope errors ---------------------------------------------------------------------------------------


def test_valid_nested_scopes_have_no_problems():
    assert problems_of(nested_wf) == []


@pytest.mark.parametrize(
    "where, reader",
    [
        ("top", "peek"),  # a top-level node reads a node two scopes down
        ("outer", "peek"),  # the outer body reads the inner body
        ("sibling", "peek"),  # a second inner loop's body reads the first one's body
        ("map", "peek"),  # a Map's body at the top level reads a Loop's inner body
    ],
)
def test_reading_into_a_body_from_outside_it_is_a_loop_scope_problem(where, reader):
    nodes = nested()
    bad = {"type": "Add", "inputs": {"a": link("t.sum")}}
    if where == "top":
        nodes["peek"] = bad
    elif where == "outer":
        nodes["outer"]["body"]["peek"] = bad
    elif where == "sibling":
        nodes["outer"]["body"]["inner2"] = {
            "type": "Loop", "over": link("r4.values"), "body": {"peek": bad}, "collect": {"x": link("peek.sum")}}
    else:
        nodes["M"] = {"type": "Map", "over": link("r3.values"), "body": {"peek": bad}, "collect": {"x": link("peek.sum")}}
    problems = problems_of(lambda: nested_wf(nodes))
    assert ("loop_scope", reader) in codes(problems), problems
    assert not any(p.code == "nested_loop" for p in problems)


def test_loop_variables_are_visible_only_inside_their_own_scope():
    nodes = nested()
    nodes["outer"]["body"]["peek"] = {"type": "Add", "inputs": {"a": link("inner.j")}}  # outer body, inner item
    nodes["peek2"] = {"type": "Add", "inputs": {"a": link("outer.i")}}  # top level, outer item
    problems = problems_of(lambda: nested_wf(nodes))
    assert {("loop_scope", "peek"), ("loop_scope", "peek2")} <= codes(problems), problems


def test_a_map_has_no_carry():
    def doc(**extra):
        return lambda: make(
            {
                "r": {"type": "Range", "inputs": {"stop": 3}},
                "M": {"type": "Map", "over": link("r.values"),
                      "body": {"a": {"type": "Add", "inputs": {"a": link("M.item"), "b": 1}}},
                      "collect": {"a": link("a.sum")}, **extra},
            },
            {"a": "M.a"},
        )

    assert problems_of(doc()) == []
    problems = problems_of(doc(carry={"acc": 0}, next={"acc": link("a.sum")}))
    assert any(p.node == "M" and "carry" in f"{p.field} {p.message}" for p in problems), problems


# --- the shipped workflows -------------------------------------------------------------------------------


def test_every_shipped_workflow_validates_including_the_nested_examples(capsys, tmp_path):
    from graphflow.cli import main
    from tests.tiny_adapters import build_tiny_ip_adapter, build_tiny_t2i_adapter

    tiny_sd = ROOT / "nodes" / "models" / "tiny-sd"
    adapters = {}  # none ships: tiny random ones made for the shipped model stand in, built on first need

    names = {p.name for p in WORKFLOWS}
    assert {"nested_loop.json", "map_seeds.json"} <= names
    failing = {}
    for path in WORKFLOWS:
        wf = graphflow.load(path)
        assert wf.doc.description and wf.doc.params, path.name
        # a workflow that ships no model (SDXL, pixel) is refused until one is set: validation names the file a run opens
        sets = [a for name, p in wf.doc.params.items() if name in ("model", "refiner") and p.default == "" for a in ("--set", f"{name}=tiny-sd")]
        if "controlnet" in wf.doc.params:  # none ships either: validation reads a ControlNet's config alone, so the shipped one stands in
            sets += ["--set", f"controlnet={ROOT / 'nodes' / 'configs' / 'controlnet-sd15'}"]
        if "adapter" in wf.doc.params:
            adapters.setdefault("adapter", build_tiny_t2i_adapter(tmp_path / "adapter", tiny_sd))
            sets += ["--set", f"adapter={adapters['adapter']}"]
        if "ip_adapter" in wf.doc.params:
            adapters.setdefault("ip_adapter", build_tiny_ip_adapter(tmp_path / "ip" / "ip.safetensors", tiny_sd))
            sets += ["--set", f"ip_adapter={adapters['ip_adapter']}"]
        if main(["validate", str(path), *sets]) != 0:
            failing[path.name] = capsys.readouterr().err
    assert not failing, failing


def test_nested_loop_example_computes_the_multiplication_table(tmp_path):
    wf = graphflow.load(ROOT / "workflows" / "nested_loop.json")
    ex = Executor(out_dir=tmp_path)
    r = ex.run(wf)
    assert r.ok, r.errors
    assert r["rows"] == [[(i + 1) * (j + 1) for j in range(5)] for i in range(5)]
    assert r["total"] == 225  # (1 + ... + 5) ** 2
    assert Path(r["file"]).read_text() == "the multiplication table sums to 225\n"
    assert r.runs("row_number") == 5 and r.runs("col_number") == 25 and r.runs("product") == 25

    r3 = ex.run(wf.with_params(n=3))
    assert r3["total"] == 36 and r3["rows"] == [[1, 2, 3], [2, 4, 6], [3, 6, 9]]


def test_map_seeds_example_draws_what_txt2img_draws_for_each_seed(tmp_path, tiny_model):
    import torch

    ex = Executor(out_dir=tmp_path)
    common = {"model": str(tiny_model), "steps": 2, "prompt": "a red circle"}
    r = ex.run(graphflow.load(ROOT / "workflows" / "map_seeds.json").with_params(seeds=[3, 1], **common))
    assert r.ok, r.errors
    images = r["images"]
    assert len(images) == 2
    txt2img = graphflow.load(ROOT / "workflows" / "txt2img.json").with_params(**common)
    for seed, image in zip([3, 1], images):
        alone = ex.run(txt2img.with_params(seed=seed))["image"]
        assert image.shape == alone.shape
        assert torch.allclose(image, alone, atol=1e-6), f"seed {seed}: {(image - alone).abs().max()}"
    assert not torch.allclose(images[0], images[1])
    h, w = images[0].shape[-2:]
    assert tuple(r["grid"].shape) == (1, 3, h, 2 * w + 2)  # two pictures in a row, 2 px apart
    assert len(r["files"]) == 1 and Path(r["files"][0]).is_file()
    assert r.runs("step") == 4 and r.runs("unet") == 4  # 2 seeds x 2 steps
    assert r.runs("embeddings") == 1 and r.runs("schedule") == 1  # outside the Map: once
