"""The `graphflow` command: exit codes, messages, and the read-only commands. Mostly in-process
through graphflow.cli.main, plus real subprocesses for the installed entry point and for the
promise that `validate` never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from graphflow.cli import main
from tests.toy_nodes import link

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(ROOT / "workflows" / "hello.json")
TOY_PLUGIN = str(ROOT / "tests" / "toy_nodes.py")
GRAPHFLOW_BIN = Path(sys.executable).parent / "graphflow"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Never touch the user's cache or the repository's out/ folder."""
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, name: str, doc) -> str:
    p = tmp_path / name
    p.write_bytes(doc if isinstance(doc, bytes) else orjson.dumps(doc))
    return str(p)


BROKEN = {
    "format": 1,
    "nodes": {
        "n": {"type": "Nmu"},
        "s": {"type": "Math", "inputs": {"a": link("ghost.result"), "op": "mod"}},
    },
    "outputs": {"x": "s.result"},
}

# one branch fails, the other writes a file
PARTLY_FAILING = {
    "format": 1,
    "nodes": {
        "bad": {"type": "Fail", "inputs": {"x": 1}},
        "after": {"type": "Add", "inputs": {"a": link("bad.y")}},
        "msg": {"type": "Text", "inputs": {"template": "still here"}},
        "save": {"type": "SaveText", "inputs": {"text": link("msg.text"), "filename": "ok.txt"}},
    },
    "outputs": {"x": "after.sum", "file": "save.path"},
}


# --- validate ------------------------------------------------------------------------------------


def test_validate_ok(capsys):
    assert main(["validate", HELLO]) == 0
    out = capsys.readouterr().out
    assert "hello.json: ok (5 nodes, 1 parameters, outputs: file, partial_sums)" in out


def test_validate_json_ok(capsys):
    assert main(["validate", HELLO, "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data == {"ok": True, "file": HELLO, "problems": []}


def test_validate_invalid_exit_2_with_all_problems(tmp_path, capsys):
    wf = write(tmp_path, "broken.json", BROKEN)
    assert main(["validate", wf]) == 2
    err = capsys.readouterr().err
    assert "3 problems found" in err
    assert "[unknown_node_type] node 'n', field 'type'" in err
    assert "[unknown_node] node 's', field 'inputs.a'" in err
    assert "[bad_literal] node 's', field 'inputs.op'" in err


def test_validate_json_is_machine_readable(tmp_path, capsys):
    wf = write(tmp_path, "broken.json", BROKEN)
    assert main(["validate", wf, "--json"]) == 2
    captured = capsys.readouterr()
    data = orjson.loads(captured.out)
    assert data["ok"] is False and data["file"] == wf
    got = sorted((p["code"], p["node"], p["field"]) for p in data["problems"])
    assert got == [
        ("bad_literal", "s", "inputs.op"),
        ("unknown_node", "s", "inputs.a"),
        ("unknown_node_type", "n", "type"),
    ]
    assert all(isinstance(p["message"], str) and p["message"] for p in data["problems"])


def test_validate_json_reports_invalid_json_position(tmp_path, capsys):
    wf = write(tmp_path, "bad.json", b'{\n  "format": 1,\n  "nodes": {]\n}')
    assert main(["validate", wf, "--json"]) == 2
    (p,) = orjson.loads(capsys.readouterr().out)["problems"]
    assert p["code"] == "invalid_json" and p["line"] == 3 and p["column"] == 13


def test_validate_with_set(capsys):
    assert main(["validate", HELLO, "--set", "n=3"]) == 0
    assert main(["validate", HELLO, "--set", "n=three", "--json"]) == 2
    problems = orjson.loads(capsys.readouterr().out.splitlines()[-1])["problems"]
    # the declared type, once: not again for the port the parameter feeds
    assert [(p["code"], p.get("node", ""), p["field"]) for p in problems] == [("bad_param", "", "params.n")]


def test_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.json")]) == 2
    assert "unreadable_file" in capsys.readouterr().err


# --- run -------------------------------------------------------------------------------------------


def test_run_ok_writes_file_and_prints_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", HELLO, "--out", str(out), "--no-cache", "--quiet"]) == 0
    assert (out / "sum.txt").read_text() == "the sum is 45.0\n"
    stdout = capsys.readouterr().out
    assert f"file: {out / 'sum.txt'}" in stdout
    assert "partial_sums: 10 values: 0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0, 36.0, 45.0" in stdout  # the notebook's summary, without statistics


def test_run_with_set(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", HELLO, "--out", str(out), "--no-cache", "--set", "n=4"]) == 0
    assert (out / "sum.txt").read_text() == "the sum is 6.0\n"


@pytest.mark.parametrize(
    ("pair", "code"),
    [("n=four", "bad_param"), ("m=4", "unknown_param"), ("n", "bad_set"), ("n=[1,2]", "bad_param")],
)
def test_run_with_invalid_set_is_exit_2_and_runs_nothing(tmp_path, capsys, pair, code):
    out = tmp_path / "out"
    assert main(["run", HELLO, "--out", str(out), "--no-cache", "--set", pair]) == 2
    err = capsys.readouterr().err
    assert f"[{code}]" in err
    assert not out.exists()


def test_run_invalid_workflow_is_exit_2(tmp_path, capsys):
    wf = write(tmp_path, "broken.json", BROKEN)
    assert main(["run", wf, "--no-cache"]) == 2
    assert "[unknown_node_type] node 'n'" in capsys.readouterr().err


def test_run_node_failure_is_exit_1_and_independent_branch_still_runs(tmp_path, capsys):
    wf = write(tmp_path, "fail.json", PARTLY_FAILING)
    out = tmp_path / "out"
    assert main(["run", wf, "--plugin", TOY_PLUGIN, "--out", str(out), "--no-cache"]) == 1
    captured = capsys.readouterr()
    assert "error: node 'bad' (Fail) failed: RuntimeError: boom" in captured.err
    assert "output 'x' not produced: skipped because 'bad' failed" in captured.err
    assert (out / "ok.txt").read_text() == "still here\n"
    assert f"file: {out / 'ok.txt'}" in captured.out


def test_run_profile_prints_a_table(tmp_path, capsys):
    assert main(["run", HELLO, "--out", str(tmp_path / "o"), "--no-cache", "--profile"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:3] == ["node", "type", "runs"])
    assert lines[head].split() == ["node", "type", "runs", "hits", "seconds", "status"]
    rows = {}
    for line in lines[head + 1 :]:
        if line.startswith("run wall time"):
            break
        cols = line.split()
        rows[cols[0]] = (cols[1], int(cols[2]), int(cols[3]), cols[5])
    assert rows == {
        "numbers": ("Range", 1, 0, "ran"),
        "sum": ("Loop", 1, 0, "ran"),
        "add": ("Math", 10, 0, "ran"),
        "message": ("Text", 1, 0, "ran"),
        "save": ("SaveText", 1, 0, "ran"),
    }
    assert any(line.startswith("run wall time") for line in lines)


def test_run_uses_cache_dir_across_invocations(tmp_path, capsys):
    args = ["run", HELLO, "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--profile"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    rows = [line.split() for line in err.splitlines()]
    statuses = {r[0]: r[-1] for r in rows if r[:1] in (["sum"], ["save"], ["numbers"])}
    # a fresh Executor in the same process: the pure nodes come from disk, the side effect runs;
    # 'numbers' only feeds the loop, which is a hit, so it need not be touched at all
    assert statuses.pop("numbers", "disk") == "disk"
    assert statuses == {"sum": "disk", "save": "ran"}


def test_run_cancelled_by_a_node_is_exit_130(tmp_path, capsys):
    wf = write(tmp_path, "cancel.json", {
        "format": 1,
        "nodes": {"c": {"type": "CancelMe"}, "after": {"type": "Add", "inputs": {"a": link("c.x")}}},
        "outputs": {"x": "after.sum"},
    })
    assert main(["run", wf, "--plugin", TOY_PLUGIN, "--no-cache"]) == 130
    err = capsys.readouterr().err
    assert "cancelled" in err and "output 'x' not produced: the run was cancelled" in err


def test_bad_plugin_is_exit_2(tmp_path, capsys):
    assert main(["validate", HELLO, "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "[bad_plugin]" in capsys.readouterr().err
    assert main(["nodes", "--plugin", "no_such_module_xyz"]) == 2


def test_plugin_does_not_clash_with_builtin_nodes_it_imports(capsys):
    """toy_nodes imports Math, Range, Text, SaveText and Value from the built-ins; loading it as a
    plugin next to the default registry must not be a duplicate registration."""
    assert main(["nodes", "--plugin", TOY_PLUGIN, "--json"]) == 0
    types = [n["type"] for n in orjson.loads(capsys.readouterr().out)]
    assert len(types) == len(set(types))
    assert {"Num", "MakeVec", "Fail", "Math", "Range", "SaveText"} <= set(types)


# --- read-only commands ------------------------------------------------------------------------------


def test_nodes_lists_types_by_category(capsys):
    assert main(["nodes"]) == 0
    out = capsys.readouterr().out
    assert "values:" in out and "text:" in out and "output:" in out
    for t in ("Math", "Range", "Text", "SaveText", "Value"):
        assert f"  {t} " in out


def test_nodes_json(capsys):
    assert main(["nodes", "--json"]) == 0
    data = {n["type"]: n for n in orjson.loads(capsys.readouterr().out)}
    assert data["Math"]["category"] == "values" and data["Math"]["version"] == 1
    assert data["Range"]["doc"].startswith("A list of ints")


def test_describe_shows_types_defaults_ranges_and_choices(capsys):
    assert main(["describe", "Math"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Math (version 1, category values)")
    assert "a: float, required" in out
    assert "op: string, default 'add', one of 'add', 'sub', 'mul', 'div', 'min', 'max', 'pow'" in out
    assert "result: float" in out
    assert main(["describe", "Range"]) == 0
    assert "step: int, default 1, >= 1" in capsys.readouterr().out
    assert main(["describe", "SaveText"]) == 0
    assert "side effects: always runs, never cached" in capsys.readouterr().out


def test_describe_unknown_node_is_exit_2_with_suggestion(capsys):
    assert main(["describe", "math"]) == 2
    assert "did you mean Math" in capsys.readouterr().err


def test_describe_plugin_node(capsys):
    assert main(["describe", "Num", "--plugin", TOY_PLUGIN]) == 0
    out = capsys.readouterr().out
    assert "value: float, default 0.0, >= -1000000.0, <= 1000000.0" in out


def test_describe_plugin_tensor_port_keeps_its_kind(capsys):
    assert main(["describe", "ScaleVec", "--plugin", TOY_PLUGIN]) == 0
    assert "vec: vec, required, link only" in capsys.readouterr().out


def test_validate_with_file_plugin_checks_tensor_kinds(tmp_path, capsys):
    wf = write(tmp_path, "kinds.json", {
        "format": 1,
        "nodes": {
            "v": {"type": "MakeVec"},
            "t": {"type": "TakeOther", "inputs": {"x": link("v.vec")}},
            "s": {"type": "ScaleVec", "inputs": {"vec": [1, 2]}},
        },
        "outputs": {"y": "t.y", "z": "s.vec"},
    })
    rc = main(["validate", wf, "--plugin", TOY_PLUGIN, "--json"])
    out = capsys.readouterr().out
    assert rc == 2
    codes = sorted(p["code"] for p in orjson.loads(out)["problems"])
    assert codes == ["literal_not_allowed", "type_mismatch"]


def test_schema_is_valid_json_with_node_types_and_enums(capsys):
    assert main(["schema"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["required"] == ["format", "nodes", "outputs"]
    defs = schema["$defs"]
    assert {"link", "param", "when", "node", "body_node", "loop"} <= defs.keys()
    by_type = {n["properties"]["type"]["const"]: n for n in defs["node"]["anyOf"]}
    assert {"Math", "Range", "Text", "SaveText", "Value"} <= by_type.keys()
    op = by_type["Math"]["properties"]["inputs"]["properties"]["op"]
    assert ["add", "sub", "mul", "div", "min", "max", "pow"] in [o.get("enum") for o in op["anyOf"]]
    assert by_type["Math"]["properties"]["inputs"]["required"] == ["a"]
    body = {n["properties"]["type"]["const"]: n for n in defs["body_node"]["anyOf"]}
    assert "when" in body["Math"]["properties"] and "when" not in by_type["Math"]["properties"]


def test_schema_to_file(tmp_path, capsys):
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    schema = orjson.loads(target.read_bytes())
    assert "Math" in {n["properties"]["type"]["const"] for n in schema["$defs"]["node"]["anyOf"]}
    assert capsys.readouterr().out == ""


def test_schema_with_file_plugin(tmp_path, capsys):
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target), "--plugin", TOY_PLUGIN]) == 0
    schema = orjson.loads(target.read_bytes())
    types = {n["properties"]["type"]["const"] for n in schema["$defs"]["node"]["anyOf"]}
    assert {"Num", "MakeVec", "Math"} <= types
    assert capsys.readouterr().out == ""


def test_graph_mermaid(capsys):
    assert main(["graph", HELLO]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR\n")
    assert '  subgraph sum_body["loop sum"]' in out
    assert '    add["add: Math"]' in out
    assert "  numbers -->|values→over| sum" in out
    assert "  sum -->|item→b| add" in out
    assert "  add -->|result→next total| sum" in out
    assert "  save --> out_file" in out


def test_graph_draws_nested_scopes_inside_each_other(capsys):
    nested = str(Path(HELLO).parent / "nested_loop.json")
    assert main(["graph", nested]) == 0
    out = capsys.readouterr().out
    outer, inner = out.index('  subgraph table_body["loop table"]'), out.index('    subgraph line_body["loop line"]')
    assert outer < inner < out.index('      product["product: Math"]') < out.index("    end\n  end")
    assert "  line -->|col→a| col_number" in out
    assert main(["graph", nested, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.index('subgraph "cluster_table"') < dot.index('    subgraph "cluster_line"')


def test_graph_dot(capsys):
    assert main(["graph", HELLO, "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph workflow {") and out.rstrip().endswith("}")
    assert 'subgraph "cluster_sum"' in out
    assert '"numbers" -> "sum" [label="values→over"];' in out
    assert '"save" -> "out:file";' in out


def test_graph_of_invalid_json_is_exit_2(tmp_path, capsys):
    wf = write(tmp_path, "bad.json", b"{nope")
    assert main(["graph", wf]) == 2
    assert "invalid_json" in capsys.readouterr().err


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0


# --- real processes ------------------------------------------------------------------------------------


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRAPHFLOW_DEBUG", None)
    return env


def test_installed_entry_point_runs_and_fails_with_exit_codes(tmp_path):
    out = tmp_path / "out"
    ok = subprocess.run([str(GRAPHFLOW_BIN), "run", HELLO, "--out", str(out), "--no-cache", "--set", "n=5"],
                        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (out / "sum.txt").read_text() == "the sum is 10.0\n"

    wf = write(tmp_path, "fail.json", PARTLY_FAILING)
    failed = subprocess.run([sys.executable, "-m", "graphflow.cli", "run", wf, "--plugin", TOY_PLUGIN, "--out", str(out),
                             "--no-cache"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "node 'bad' (Fail) failed: RuntimeError: boom" in failed.stderr
    assert (out / "ok.txt").read_text() == "still here\n"

    broken = write(tmp_path, "broken.json", BROKEN)
    invalid = subprocess.run([str(GRAPHFLOW_BIN), "validate", broken, "--json"], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert invalid.returncode == 2
    assert {p["code"] for p in orjson.loads(invalid.stdout)["problems"]} == {"unknown_node_type", "unknown_node", "bad_literal"}


def test_validate_does_not_import_torch_or_diffusers(tmp_path):
    code = (
        "import sys\n"
        "from graphflow.cli import main\n"
        f"rc = main(['validate', {HELLO!r}])\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("clean")


def test_read_only_commands_do_not_import_torch(tmp_path):
    code = (
        "import sys, contextlib, io\n"
        "from graphflow.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['nodes']) == 0\n"
        f"    assert main(['describe', 'Math']) == 0\n"
        f"    assert main(['schema']) == 0\n"
        f"    assert main(['graph', {HELLO!r}]) == 0\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
        "print('clean')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "clean"


def test_engine_only_workflow_runs_and_hits_its_disk_cache_without_torch(tmp_path):
    """hello.json stores its loop's numbers on disk and reads them back in a second run: an entry
    without tensors needs neither torch nor numpy, and is the file safetensors itself writes."""
    code = (
        "import sys, contextlib, io\n"
        "from graphflow.cli import main\n"
        "for _ in range(2):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        f"        assert main(['run', {HELLO!r}, '--cache-dir', 'cache', '--out', 'out']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'diffusers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "clean"
    entries = sorted((tmp_path / "cache").glob("??/*.safetensors"))
    assert entries
    from safetensors.numpy import load, save

    from graphflow.cache.entry import read_header

    for e in entries:
        data = e.read_bytes()
        assert load(data) == {}
        n = int.from_bytes(data[:8], "little")
        assert save({}, metadata=orjson.loads(data[8:8 + n])["__metadata__"]) == data
        assert read_header(data)["outputs"]


def test_set_value_types_follow_the_declared_parameter_type(tmp_path, capsys):
    wf = write(tmp_path, "words.json", {
        "format": 1,
        "params": {"word": {"type": "string", "default": "hi"}, "anything": {"default": 0}},
        "nodes": {
            "w": {"type": "Text", "inputs": {"template": "say $value", "value": {"param": "word"}}},
            "a": {"type": "Text", "inputs": {"template": "got $value", "value": {"param": "anything"}}},
            "sw": {"type": "SaveText", "inputs": {"text": link("w.text"), "filename": "w.txt"}},
            "sa": {"type": "SaveText", "inputs": {"text": link("a.text"), "filename": "a.txt"}},
        },
        "outputs": {"w": "sw.path", "a": "sa.path"},
    })
    out = tmp_path / "out"
    # a declared string stays text; an undeclared parameter's value is read as JSON
    assert main(["run", wf, "--out", str(out), "--no-cache", "--set", "word=true", "--set", "anything=true"]) == 0
    assert (out / "w.txt").read_text() == "say true\n"
    assert (out / "a.txt").read_text() == "got True\n"
    out = tmp_path / "out2"  # (outputs are never overwritten: a second run into out/ would write w_00001.txt)
    assert main(["run", wf, "--out", str(out), "--no-cache", "--set", "word=a red circle", "--set", "anything=a b"]) == 0
    assert (out / "w.txt").read_text() == "say a red circle\n"
    assert (out / "a.txt").read_text() == "got a b\n"


def test_dotted_module_plugin_checks_tensor_kinds(tmp_path, capsys):
    wf = write(tmp_path, "kinds.json", {
        "format": 1,
        "nodes": {
            "v": {"type": "MakeVec"},
            "t": {"type": "TakeOther", "inputs": {"x": link("v.vec")}},
            "s": {"type": "ScaleVec", "inputs": {"vec": [1, 2]}},
        },
        "outputs": {"y": "t.y", "z": "s.vec"},
    })
    assert main(["validate", wf, "--plugin", "tests.toy_nodes", "--json"]) == 2
    problems = orjson.loads(capsys.readouterr().out)["problems"]
    assert sorted((p["code"], p["node"], p["field"]) for p in problems) == [
        ("literal_not_allowed", "s", "inputs.vec"), ("type_mismatch", "t", "inputs.x")]


def test_plugin_that_fails_to_import_is_a_bad_plugin(tmp_path, capsys):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("raise RuntimeError('plugin is broken')\n")
    assert main(["validate", HELLO, "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert "[bad_plugin]" in err and "plugin is broken" in err


def test_cache_command_reports_and_clears_the_disk_cache(tmp_path, capsys):
    wf = write(tmp_path, "v.json", {
        "format": 1, "nodes": {"v": {"type": "MakeVec", "inputs": {"size": 3}}, "s": {"type": "SumVec", "inputs": {"vec": link("v.vec")}}},
        "outputs": {"t": "s.total"}})
    cache = str(tmp_path / "cache")
    assert main(["run", wf, "--plugin", "tests.toy_nodes", "--cache-dir", cache, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["cache", "--cache-dir", cache]) == 0
    assert ": 2 entries" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", cache, "--clear"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", cache]) == 0
    assert ": 0 entries" in capsys.readouterr().out
