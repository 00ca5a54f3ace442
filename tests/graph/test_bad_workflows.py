"""A corpus of malformed workflows, each refused by the real command before anything runs.

``tests/bad_workflows/`` holds one file per malformed workflow, its name saying what is wrong:
not JSON, truncated, BOM and UTF-16, bytes that are not UTF-8, NaN and Infinity, integers beyond
64 bits, wrong top-level shapes, format versions, node types that look like Python paths, inputs,
literals, ranges, links, kinds, cycles, loops and maps (nested ones too), parameters and ``--set``
values, repeated keys, output names. The huge and the deeply nested documents (a 50 MB string,
100,000 nested arrays, a 10-million-character node type) are generated here instead of stored.

Every one goes through ``graphflow validate --json`` and ``graphflow run --out DIR --no-cache``
in-process, a sample through the installed ``graphflow`` program as well, and must: exit 2, print
no traceback, report exactly the expected problems (code, node, field), name the node in the text
output too, write nothing (neither in the output folder nor beside it), and be refused before a run
was queued or a model loaded (the installed program does not even import torch).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from graphflow.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parents[1] / "bad_workflows"
GRAPHFLOW_BIN = Path(sys.executable).parent / "graphflow"

# file stem -> its problems, exactly: a code alone (nothing about a node or field), one
# (code, node, field), or a list of them
EXPECT: dict[str, object] = {
    "bom_utf8": "invalid_json",
    "bool_input_given_1": ("bad_literal", "m", "inputs.as_int"),
    "choice_not_in_list": ("bad_literal", "m", "inputs.op"),
    "comment_in_json": "invalid_json",
    "conditional_output_read_without_otherwise": ("conditional_output", "m", "otherwise"),
    "cycle_between_two_nodes": ("cycle", "a", None),
    "loop_carry_reads_its_own_carried_value": ("cycle", "sum", None),
    "loop_over_reads_its_own_collected_list": ("cycle", "sum", None),
    "cycle_inside_a_loop_body": ("cycle", "p", None),
    "cycle_of_three_nodes": ("cycle", "a", None),
    "duplicate_input_key": ("duplicate_key", "n", "nodes.n.inputs.stop"),
    "duplicate_key_in_loop_body_node": ("duplicate_key", "m", "nodes.loop.body.m.inputs.op"),
    "duplicate_node_id": ("duplicate_key", "n", "nodes.n"),
    "duplicate_param_name": ("duplicate_key", None, "params.n"),
    "duplicate_top_level_key": ("duplicate_key", None, "nodes"),
    "empty_file": "invalid_json",
    "float_input_given_a_numeric_string": ("bad_literal", "m", "inputs.a"),
    "float_input_given_true": ("bad_literal", "m", "inputs.a"),
    "float_overflowing_to_infinity": "invalid_json",
    "format_0_unsupported": ("unsupported_format", None, "format"),
    "format_2_unsupported": ("unsupported_format", None, "format"),
    "format_float_1_0": ("invalid_document", None, "format"),
    "format_missing": ("invalid_document", None, "format"),
    "format_negative": ("unsupported_format", None, "format"),
    "format_null": ("invalid_document", None, "format"),
    "format_semver_string": ("invalid_document", None, "format"),
    "format_string_1": ("invalid_document", None, "format"),
    "format_true": ("invalid_document", None, "format"),
    "imagegrid_columns_given_true": ("bad_literal", "grid", "inputs.columns"),
    "infinity_literal": "invalid_json",
    "inputs_is_a_list": ("invalid_document", "n", "inputs"),
    "int_below_minus_2_63_in_param_default": ("invalid_document", None, "params.n.default"),
    "int_beyond_64_bits_any_input": ("invalid_document", "v", "nodes.v.inputs.value"),
    "int_beyond_64_bits_format": ("invalid_document", None, "format"),
    "int_beyond_64_bits_int_input": ("invalid_document", "n", "nodes.n.inputs.stop"),
    "int_input_given_a_float": ("bad_literal", "n", "inputs.stop"),
    "int_input_given_a_string": ("bad_literal", "n", "inputs.stop"),
    "int_input_given_true": ("bad_literal", "n", "inputs.stop"),
    "int_with_5000_digits": "invalid_json",
    "link_not_a_string": ("bad_link", "m", "inputs.a"),
    "link_to_missing_node": ("unknown_node", "m", "inputs.a"),
    "link_to_missing_port": ("unknown_output", "m", "inputs.a"),
    "link_with_two_dots": ("bad_link", "m", "inputs.a"),
    "link_without_port": ("bad_link", "m", "inputs.a"),
    "list_of_links_into_a_single_input": ("type_mismatch", "m", "inputs.a"),
    "literal_for_a_link_only_input": [("literal_not_allowed", "d", "inputs.latents"), ("literal_not_allowed", "d", "inputs.vae")],
    "lone_surrogate_escape": "invalid_json",
    "loop_body_is_a_list": ("invalid_document", "loop", "body"),
    "loop_body_node_read_from_outside": ("loop_scope", "after", "inputs.a"),
    "loop_carry_without_next": ("bad_loop", "loop", "carry.total"),
    "loop_collect_clashes_with_carry": ("bad_loop", "loop", "collect.r"),
    "loop_inside_map_reads_sibling_loop_body": ("loop_scope", "y", "inputs.a"),
    "loop_item_named_index": ("bad_loop", "loop", "item"),
    "loop_item_not_a_name": ("invalid_document", "loop", "item"),
    "loop_item_read_from_outside": ("loop_scope", "after", "inputs.a"),
    "loop_next_without_carry": ("bad_loop", "loop", "next.total"),
    "loop_over_a_number": ("type_mismatch", "loop", "over"),
    "loop_unknown_key": ("invalid_document", "loop", "carried"),
    "loop_unknown_variable": ("unknown_output", "m", "inputs.a"),
    "loop_when_every_zero": ("invalid_document", "m", "when.every"),
    "loop_without_body": ("invalid_document", "loop", "body"),
    "map_with_carry": ("bad_loop", "loop", "carry"),
    "map_with_next": ("bad_loop", "loop", "next"),
    "missing_required_input": ("missing_input", "n", "inputs.stop"),
    "nan_literal": "invalid_json",
    "negative_infinity_literal": "invalid_json",
    "nested_loop_reads_unknown_outer_variable": ("unknown_output", "c", "inputs.a"),
    "no_outputs": ("no_outputs", None, "outputs"),
    "node_id_reused_inside_a_loop_body": ("duplicate_node_id", "n", None),
    "node_id_starts_with_a_digit": ("bad_node_id", "1n", None),
    "node_id_with_a_dot": ("bad_node_id", "a.b", None),
    "node_is_a_string": ("invalid_document", "n", None),
    "node_type_builtins_eval": ("unknown_node_type", "n", "type"),
    "node_type_dunder_import": ("unknown_node_type", "n", "type"),
    "node_type_empty_string": ("unknown_node_type", "n", "type"),
    "node_type_eval_expression": ("unknown_node_type", "n", "type"),
    "node_type_is_a_list": ("invalid_document", "n", "type"),
    "node_type_missing": ("invalid_document", "n", "type"),
    "node_type_not_a_string": ("invalid_document", "n", "type"),
    "node_type_os_system": ("unknown_node_type", "n", "type"),
    "node_type_python_path_to_a_real_node_class": ("unknown_node_type", "n", "type"),
    "node_type_subprocess_popen": ("unknown_node_type", "n", "type"),
    "node_type_unknown": ("unknown_node_type", "n", "type"),
    "node_type_wrong_case": ("unknown_node_type", "n", "type"),
    "nodes_is_a_list": ("invalid_document", None, "nodes"),
    "non_utf8_latin1_description": "invalid_json",
    "non_utf8_stray_continuation_byte": "invalid_json",
    "not_json_plain_text": "invalid_json",
    "not_json_python_dict_single_quotes": "invalid_json",
    "not_json_yaml": "invalid_json",
    "out_of_range_above_maximum": ("bad_literal", "grid", "inputs.columns"),
    "out_of_range_below_minimum": ("bad_literal", "n", "inputs.step"),
    "out_of_range_negative_gap": ("bad_literal", "lc", "inputs.gap"),
    "output_link_with_two_dots": [("bad_link", None, "outputs.x"), ("no_outputs", None, "outputs")],
    "output_names_a_node_inside_a_loop": ("unknown_node", None, "outputs.r"),
    "output_to_missing_node": ("unknown_node", None, "outputs.x"),
    "output_to_missing_port": ("unknown_output", "n", "outputs.x"),
    "outputs_is_a_number": ("invalid_document", None, "outputs"),
    "param_default_of_the_wrong_type": ("bad_param", None, "params.n"),  # once, not again per input it feeds
    "param_default_true_for_int": ("bad_param", None, "params.n"),
    "param_name_starts_with_a_digit": ("invalid_document", None, "params.1n"),
    "param_not_declared": ("unknown_param", "n", "inputs.stop"),
    "param_reference_not_a_string": ("bad_link", "n", "inputs.stop"),
    "param_unknown_key": ("invalid_document", None, "params.n.typ"),
    "param_unknown_type": ("invalid_document", None, "params.n.type"),
    "param_without_default_never_set": ("missing_param", "n", "inputs.stop"),
    "params_is_a_list": ("invalid_document", None, "params"),
    "raw_control_character_in_string": "invalid_json",
    "saveanimation_filename_nul_byte": ("bad_literal", "anim", "inputs.filename"),
    "saveanimation_filename_parent_path": ("bad_literal", "anim", "inputs.filename"),
    "saveimage_prefix_300_characters": ("bad_literal", "save", "inputs.prefix"),
    "saveimage_prefix_absolute_path": ("bad_literal", "save", "inputs.prefix"),
    "saveimage_prefix_parent_path": ("bad_literal", "save", "inputs.prefix"),
    "savetext_filename_300_characters": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_absolute_path": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_dot": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_dotdot": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_empty": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_from_param_default_parent_path": ("bad_param", "s", "inputs.filename"),
    "savetext_filename_hidden_dotfile": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_newline": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_nul_byte": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_parent_path": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_with_backslash": ("bad_literal", "s", "inputs.filename"),
    "savetext_filename_with_slash": ("bad_literal", "s", "inputs.filename"),
    "scope_type_lowercase_loop": [("invalid_document", "loop", "body"), ("invalid_document", "loop", "collect"), ("invalid_document", "loop", "over")],
    "self_link": ("cycle", "a", None),
    "string_input_given_a_number": ("bad_literal", "t", "inputs.template"),
    "top_level_array": "invalid_document",
    "top_level_empty_object": [("invalid_document", None, "format"), ("invalid_document", None, "nodes"), ("invalid_document", None, "outputs")],
    "top_level_null": "invalid_document",
    "top_level_number": "invalid_document",
    "top_level_string": "invalid_document",
    "trailing_comma": "invalid_json",
    "truncated_after_key": "invalid_json",
    "truncated_mid_object": "invalid_json",
    "truncated_mid_string": "invalid_json",
    "two_documents_concatenated": "invalid_json",
    "type_mismatch_string_into_float": ("type_mismatch", "m", "inputs.a"),
    "type_mismatch_text_embeddings_into_latents": ("type_mismatch", "decode", "inputs.latents"),
    "type_mismatch_unet_into_vae": ("type_mismatch", "enc", "inputs.vae"),
    "unknown_input": ("unknown_input", "n", "inputs.stpe"),
    "unknown_node_key": ("invalid_document", "n", "input"),
    "unknown_top_level_key": ("invalid_document", None, "nodez"),
    "unquoted_keys": "invalid_json",
    "utf16_be_with_bom": "invalid_json",
    "utf16_le_with_bom": "invalid_json",
    "utf16_le_without_bom": "invalid_json",
    "utf32_with_bom": "invalid_json",
    "when_outside_a_loop": ("when_outside_loop", "m", "when"),
    "whitespace_only": "invalid_json",
    # the same valid workflow, refused for the --set value given with it (SET_ARGS)
    "set_unknown_parameter": ("unknown_param", None, "params.m"),
    "set_string_for_int": ("bad_param", None, "params.n"),  # once, not again per input it feeds
    "set_true_for_int": ("bad_param", None, "params.n"),
    "set_without_equals": "bad_set",
    "set_int_beyond_64_bits": ("bad_set", None, None),
    "set_out_of_range_value": ("bad_param", "m", "inputs.step"),
    "set_value_nested_1000_levels": ("too_deep", None, "params.n"),  # refused before anything recurses into it
}

SET_ARGS = {
    "set_unknown_parameter": ["--set", "m=4"],
    "set_string_for_int": ["--set", "n=four"],
    "set_true_for_int": ["--set", "n=true"],
    "set_without_equals": ["--set", "n"],
    "set_int_beyond_64_bits": ["--set", "n=36893488147419103232"],
    "set_out_of_range_value": ["--set", "n=0"],
    "set_value_nested_1000_levels": ["--set", "n=" + "[" * 1000 + "1" + "]" * 1000],
}

BIG = 10_000_000


def _doc(nodes: str, outputs: str = '["n"]', extra: str = "") -> bytes:
    return f'{{"format": 1, {extra}"nodes": {{{nodes}}}, "outputs": {outputs}}}'.encode()


# too large or too deep to keep as files: name -> (the document's bytes, its problems; None: checked below)
GENERATED = {
    "deep_nesting_100000_arrays": (lambda: b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    "deep_nesting_100000_objects_in_a_literal": (
        lambda: _doc('"n": {"type": "Value", "inputs": {"value": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}}"), "invalid_json"),
    # deeper than the standard json parser's recursion limit, within orjson's: the scanner finds the repeated key
    "duplicate_key_1000_levels_deep": (
        lambda: _doc('"n": {"type": "Value", "inputs": {"value": ' + "[" * 1000 + '{"k": 1, "k": 2}' + "]" * 1000 + "}}"), None),
    # deeper than the 'depth' ceiling (64), within orjson's 1024: refused before anything recurses into it (a 500 from the server)
    "literal_nested_300_levels": (
        lambda: _doc('"n": {"type": "Value", "inputs": {"value": ' + "[" * 300 + "1" + "]" * 300 + "}}"), ("too_deep", "n", "nodes.n.inputs.value")),
    "literal_nested_1000_objects_in_a_map_body": (
        lambda: _doc('"L": {"type": "Map", "over": [1], "body": {"n": {"type": "Value", "inputs": {"value": ' + '{"a": ' * 1000 + "1"
                     + "}" * 1000 + "}}}}", '["L"]'), ("too_deep", "n", "nodes.L.body.n.inputs.value")),
    "ten_thousand_duplicate_keys": (
        lambda: _doc('"n": {"type": "Value", "inputs": {"value": {' + ", ".join(['"k": 1'] * 10_001) + "}}}"), None),
    "string_literal_50_mb_as_file_name": (
        lambda: _doc('"s": {"type": "SaveText", "inputs": {"text": "hi", "filename": "' + "x" * 50_000_000 + '"}}', '["s"]'),
        ("bad_literal", "s", "inputs.filename")),
    "description_50_mb_and_an_unknown_node_type": (
        lambda: _doc('"n": {"type": "Nope"}', extra='"description": "' + "d" * 50_000_000 + '", '), ("unknown_node_type", "n", "type")),
    "node_type_10_million_characters": (lambda: _doc('"n": {"type": "' + "T" * BIG + '"}'), ("unknown_node_type", "n", "type")),
    "node_id_10_million_characters": (
        lambda: _doc('"-' + "i" * BIG + '": {"type": "Range", "inputs": {"stop": 3}}', '{"x": "n.values"}'), None),
    "input_name_10_million_characters": (
        lambda: _doc('"n": {"type": "Range", "inputs": {"stop": 3, "' + "s" * BIG + '": 1}}'), None),
}


def _expected(spec) -> set[tuple]:
    if isinstance(spec, str):
        return {(spec, None, None)}
    if isinstance(spec, tuple):
        return {spec}
    return set(spec)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def nothing_runs(monkeypatch):
    """Records any run queued and any model asked for; a refused document must cause neither."""
    from graphflow.engine import executor
    from graphflow.engine import model_manager as models

    calls: list[str] = []

    def submit(self, *a, **k):
        calls.append("Executor.submit")
        raise RuntimeError("a refused workflow reached Executor.submit")

    def get(self, *a, **k):
        calls.append("ModelManager.get")
        raise RuntimeError("a refused workflow loaded a model")

    monkeypatch.setattr(executor.Executor, "submit", submit)
    monkeypatch.setattr(models.ModelManager, "get", get)
    return calls


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refuse(tmp_path: Path, capsys, calls: list[str], wf: Path, args: list[str]) -> list[dict]:
    """validate --json and run, both refused with exit 2; returns validate's problems."""
    before = _tree(tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["validate", str(wf), "--json", *args]) == 2
    v = capsys.readouterr()
    assert "Traceback" not in v.out + v.err and "internal error" not in v.err, v.err[-2000:]
    data = orjson.loads(v.out)
    assert data["ok"] is False and data["problems"]
    for p in data["problems"]:
        assert isinstance(p["code"], str) and p["code"] and isinstance(p["message"], str) and p["message"]
    assert main(["run", str(wf), "--out", str(out), "--no-cache", "--quiet", *args]) == 2
    r = capsys.readouterr()
    assert "Traceback" not in r.out + r.err and "internal error" not in r.err, r.err[-2000:]
    assert r.out == ""  # no outputs printed: nothing ran
    for p in data["problems"]:
        if p.get("node") is not None:
            assert f"node '{p['node']}'" in r.err
        assert f"[{p['code']}]" in r.err
    # nothing echoed whole: a 10 MB name is shortened in every message
    assert len(v.out) < 60_000 and len(r.err) < 60_000
    assert not out.exists()
    assert _tree(tmp_path) == before, "a refused workflow wrote something"
    assert calls == []
    return data["problems"]


def _got(problems: list[dict]) -> set[tuple]:
    return {(p["code"], p.get("node"), p.get("field")) for p in problems}


def test_the_corpus_is_complete():
    stems = {p.stem for p in CORPUS.iterdir()}
    assert stems == set(EXPECT), stems ^ set(EXPECT)
    assert all(p.suffix == ".json" for p in CORPUS.iterdir())
    assert len(stems) + len(GENERATED) >= 60
    assert set(SET_ARGS) <= set(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_bad_workflow_is_refused_before_anything_runs(name, tmp_path, capsys, nothing_runs):
    wf = tmp_path / "in" / f"{name}.json"
    wf.parent.mkdir()
    shutil.copyfile(CORPUS / wf.name, wf)
    problems = refuse(tmp_path, capsys, nothing_runs, wf, SET_ARGS.get(name, []))
    assert _got(problems) == _expected(EXPECT[name]), [f"{p['code']} {p.get('node')} {p.get('field')}: {p['message']}" for p in problems]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_huge_or_deep_workflow_is_refused_quickly(name, tmp_path, capsys, nothing_runs):
    make, expected = GENERATED[name]
    wf = tmp_path / "in" / f"{name}.json"
    wf.parent.mkdir()
    wf.write_bytes(make())
    t = time.perf_counter()
    problems = refuse(tmp_path, capsys, nothing_runs, wf, [])
    assert time.perf_counter() - t < 20  # both commands; the slowest case takes a few seconds
    if name.startswith(("string_literal_50_mb", "description_50_mb")) and {p["code"] for p in problems} == {"over_limit"}:
        return  # refused unread, for its size (the document ceiling is 16 MB by default)
    if expected is not None:
        assert _got(problems) == _expected(expected)
    if name == "duplicate_key_1000_levels_deep":
        (p,) = problems
        assert (p["code"], p["node"], p["line"]) == ("duplicate_key", "n", 1)
        assert p["field"].startswith("nodes.n.inputs.value[0][0]") and p["field"].endswith("[0][0].k") and len(p["field"]) < 300
    if name == "ten_thousand_duplicate_keys":  # reported up to a cap, then counted
        assert len(problems) == 101 and all(p["code"] == "duplicate_key" for p in problems)
        assert problems[0]["node"] == "n" and problems[0]["field"] == "nodes.n.inputs.value.k"
        assert problems[-1]["message"] == "and 9900 more like these"
    if name == "node_id_10_million_characters":
        bad = [p for p in problems if p["code"] == "bad_node_id"]
        assert len(bad) == 1 and len(bad[0]["node"]) < 300 and "characters cut" in bad[0]["node"]
    if name == "input_name_10_million_characters":
        (p,) = problems
        assert (p["code"], p["node"]) == ("unknown_input", "n") and len(p["field"]) < 300 and len(p["message"]) < 2100


IMPORT_LINE = re.compile(r"^import time:.*\|\s*(torch|diffusers|transformers)(\.\S*)?\s*$", re.MULTILINE)


@pytest.mark.parametrize("name", ["node_type_os_system", "duplicate_node_id", "savetext_filename_parent_path", "utf16_le_with_bom",
                                  "type_mismatch_text_embeddings_into_latents", "set_int_beyond_64_bits"])
def test_installed_program_refuses_without_importing_torch(name, tmp_path):
    """The real program, with Python's own import log on: a refused document never imports
    torch, diffusers or transformers, so no model could have loaded."""
    shutil.copyfile(CORPUS / f"{name}.json", tmp_path / "wf.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("GRAPHFLOW_DEBUG", None)
    before = _tree(tmp_path)
    p = subprocess.run([str(GRAPHFLOW_BIN), "run", "wf.json", "--out", "out", "--no-cache", *SET_ARGS.get(name, [])],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert "import time:" in p.stderr  # the import log is on
    heavy = IMPORT_LINE.search(p.stderr)
    assert heavy is None, heavy.group(0)
    codes = {c for c, _, _ in _expected(EXPECT[name])}
    assert all(f"[{c}]" in p.stderr for c in codes)
    assert _tree(tmp_path) == before


# --- regressions: each hole this corpus found, closed ------------------------------------------------


def test_two_nodes_with_the_same_id_are_refused_not_last_wins(tmp_path):
    """It used to be silently last-wins: the second 'n' replaced the first."""
    from graphflow import ValidationFailed, load

    with pytest.raises(ValidationFailed) as e:
        load(CORPUS / "duplicate_node_id.json")
    (p,) = e.value.problems
    assert (p.code, p.node, p.field, p.line, p.column) == ("duplicate_key", "n", "nodes.n", 5, 5)
    assert "'n' appears twice" in p.message and "first on line 4" in p.message
    assert str(p).startswith("[duplicate_key] line 5, column 5, node 'n', field 'nodes.n': ")


def test_a_key_written_twice_inside_a_png_workflow_is_refused(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from graphflow import ValidationFailed, load

    info = PngInfo()
    info.add_text("graphflow_workflow", (CORPUS / "duplicate_input_key.json").read_text())
    Image.new("RGB", (4, 4)).save(tmp_path / "pic.png", pnginfo=info)
    with pytest.raises(ValidationFailed) as e:
        load(tmp_path / "pic.png")
    assert [(p.code, p.node, p.field, p.line) for p in e.value.problems] == [("duplicate_key", "n", "nodes.n.inputs.stop", 5)]


def test_shipped_workflows_have_no_repeated_keys_and_read_as_before():
    from graphflow.document.jsontext import parse_json, silent_losses

    for p in sorted((ROOT / "workflows").glob("*.json")):
        text = p.read_bytes()
        assert silent_losses(text) == [], p.name
        assert parse_json(text) == orjson.loads(text)


def test_integers_beyond_64_bits_are_refused_not_rounded():
    from graphflow import ValidationFailed
    from graphflow.document.jsontext import parse_json

    assert parse_json(b'{"a": [18446744073709551615, -9223372036854775808]}') == {"a": [2**64 - 1, -(2**63)]}
    with pytest.raises(ValidationFailed) as e:
        parse_json(b'{"nodes": {"v": {"inputs": {"value": 18446744073709551616}}}}')
    (p,) = e.value.problems
    assert (p.code, p.node, p.field, p.line, p.column) == ("invalid_document", "v", "nodes.v.inputs.value", 1, 38)


def test_a_problem_never_echoes_a_huge_name_or_value():
    from graphflow import Problem, ValidationFailed

    huge = "a" * BIG
    p = Problem("unknown_node_type", f"unknown node type '{huge}' (see `graphflow nodes`)", node="n" * BIG, field="f" * BIG)
    assert len(p.message) < 400 and p.message.startswith("unknown node type 'aaaa") and p.message.endswith("aaa' (see `graphflow nodes`)")
    assert f"…({BIG - 200} characters cut)…" in p.message
    assert len(p.node) < 300 and len(p.field) < 300 and p.node.startswith("n" * 100) and p.node.endswith("n" * 100)
    unquoted = Problem("bad_literal", f"{list(range(10**6))!r} is not valid")  # no quotes: the whole text is cut
    assert len(unquoted.message) < 2100 and unquoted.message.endswith("999999] is not valid")
    assert len(str(ValidationFailed([p, unquoted]))) < 3000 and len(orjson.dumps(p.to_dict())) < 1000
    short = Problem("bad_literal", "'x' is not valid", node="n", field="inputs.a")
    assert (short.message, short.node, short.field) == ("'x' is not valid", "n", "inputs.a")


@pytest.mark.parametrize(("node", "field", "value"), [
    ("Range", "stop", True), ("Range", "stop", "3"), ("Math", "a", True), ("Math", "a", "1.5"), ("ImageGrid", "columns", True),
    ("ImageGrid", "columns", "2"), ("CFG", "guidance_scale", True), ("CFG", "guidance_scale", "7.5"),
])
def test_booleans_and_strings_are_no_numbers(node, field, value):
    from graphflow import Workflow

    nodes = {"src": {"type": "LoadImage", "inputs": {"path": "samples/red-circle-on-blue.png"}}, "n": {"type": node, "inputs": {field: value}}}
    if node == "ImageGrid":
        nodes["n"]["inputs"]["images"] = [{"from": "src.image"}]
    problems = Workflow.from_dict({"format": 1, "nodes": nodes, "outputs": ["n"]}).problems()
    assert ("bad_literal", "n", f"inputs.{field}") in [(p.code, p.node, p.field) for p in problems]


@pytest.mark.parametrize("value", [True, "1", 1.0, None, [1]])
def test_format_must_be_the_integer_1(value):
    from graphflow import ValidationFailed, Workflow

    with pytest.raises(ValidationFailed) as e:
        Workflow.from_dict({"format": value, "nodes": {"n": {"type": "Range", "inputs": {"stop": 3}}}, "outputs": ["n"]})
    assert [(p.code, p.field) for p in e.value.problems] == [("invalid_document", "format")]
