"""What a newcomer sees in the first hour (issue #30), asserted word for word: each message names
what is wrong and how to write it right, once, with exit 2 and nothing run."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import orjson
import pytest

from graphflow.cli import main
from tests import toy_nodes
from tests.toy_nodes import link

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = str(ROOT / "workflows" / "txt2img.json")
HELLO = str(ROOT / "workflows" / "hello.json")
TOY_PLUGIN = str(ROOT / "tests" / "toy_nodes.py")


def cpu_only_torch() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("GRAPHFLOW_DEBUG", raising=False)
    monkeypatch.delenv("GRAPHFLOW_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRAPHFLOW_DEBUG", None)
    return env


# --- a bare `graphflow` ----------------------------------------------------------------------------------


def test_a_bare_graphflow_lists_the_commands_one_line_each(capsys):
    assert main([]) == 2  # as git: a usage exit code (graphflow's is 2)
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == ["usage: graphflow COMMAND [options]", "", "Run diffusion workflows written as JSON graphs of typed nodes.", "",
                       "commands:"]
    rows = out[5:out.index("", 5)]
    assert [r.split()[0] for r in rows] == ["run", "sweep", "validate", "nodes", "describe", "schema", "graph", "cache", "serve", "models", "import"]
    assert "  run       validate, then run a workflow" in rows
    assert "  describe  a node type's inputs, outputs, types, defaults and docs" in rows
    assert out[-1] == "`graphflow COMMAND --help` shows a command's options; the README has the whole story."


# --- --set written as the shell splits it -----------------------------------------------------------------


@pytest.mark.parametrize(("args", "stray", "hint"), [
    (["--set", "prompt=a", "red", "square"], "red square",
     "--set takes one NAME=VALUE argument: quote a value that has spaces, as in --set prompt='a red square'"),
    (["--set", "seed", "3"], "3", "--set takes one NAME=VALUE argument, '=' and no spaces between name and value: --set seed=3"),
    (["--set", "seed", "=", "3"], "= 3", "--set takes one NAME=VALUE argument, '=' and no spaces between name and value: --set seed=3"),
])
def test_a_set_split_by_the_shell_shows_the_argument_meant(tmp_path, capsys, args, stray, hint):
    out = tmp_path / "out"
    assert main(["run", TXT2IMG, "--out", str(out), *args]) == 2
    assert capsys.readouterr().err == f"graphflow run: error: unrecognized arguments: {stray}\n{hint}\n"
    assert not out.exists()


def test_a_split_grid_list_is_shown_quoted(capsys):
    assert main(["sweep", HELLO, "--grid", "n=[1,", "2]"]) == 2
    assert capsys.readouterr().err == ("graphflow sweep: error: unrecognized arguments: 2]\n"
                                       "--grid takes one NAME=JSON_LIST argument: quote a value that has spaces, as in --grid n='[1, 2]'\n")


def test_a_set_without_equals_explains_name_value_and_quoting(capsys):
    assert main(["validate", HELLO, "--set", "n"]) == 2
    assert capsys.readouterr().err == (
        f"{HELLO}: 1 problem found:\n  [bad_set] --set takes NAME=VALUE as one argument, got 'n': write --set n=VALUE, "
        "and quote a value that has spaces, as in --set prompt='a red square'\n")


def test_other_unknown_arguments_keep_argparse_s_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["validate", HELLO, "--frobnicate"])
    assert e.value.code == 2
    assert capsys.readouterr().err.endswith("graphflow: error: unrecognized arguments: --frobnicate\n")


def test_a_parameter_of_the_wrong_type_is_one_problem(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", TXT2IMG, "--set", "steps=abc", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"{TXT2IMG}: 1 problem found:\n"
                                       "  [bad_param] field 'params.steps': parameter 'steps' is declared int, got 'abc'\n")
    assert not out.exists()


# --- describe ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("typed", "meant"), [("EncodePromt", "EncodePrompt"), ("LoadLora", "LoadLoRA"), ("math", "Math"),
                                              ("loop", "Loop")])
def test_describe_a_misspelt_node_type_says_which_was_meant(capsys, typed, meant):
    assert main(["describe", typed]) == 2
    assert capsys.readouterr().err == f"unknown node type '{typed}' (did you mean {meant}?)\n"


def test_describe_a_name_near_nothing_points_to_the_list(capsys):
    assert main(["describe", "Zzyzx"]) == 2
    assert capsys.readouterr().err == "unknown node type 'Zzyzx' (`graphflow nodes` lists them)\n"


def test_describe_loop_and_map_explain_scopes(capsys):
    assert main(["describe", "Loop"]) == 0
    loop = capsys.readouterr().out.splitlines()
    assert loop[0] == "Loop (a scope: written among a workflow's nodes, but a body of nodes rather than a node type)"
    keys = [line.strip() for line in loop[loop.index("keys:") + 1:] if line.startswith("  ") and not line.startswith("      ")]
    assert keys == ["over: required", "item: default 'item'", "carry: optional", "body: required", "next: optional", "collect: optional",
                    "batch: optional"]  # described as Map only, refused on a Loop at validation
    assert "      carried values and their initial values" in loop
    assert loop[-3] == ('inside the body, as {"from": ...}: <id>.item (the element, under the name \'item\' gives), <id>.index, '
                        "<id>.count, each carried value <id>.<name>")
    assert main(["describe", "Map"]) == 0
    map_ = capsys.readouterr().out
    assert map_.startswith("Map (a scope: ")
    assert "no 'carry', no 'next'" in " ".join(map_.split()) and "  carry:" not in map_ and "  next:" not in map_
    assert "workflows/map_seeds.json" in map_


# --- --models-dir, --plugin --------------------------------------------------------------------------------


def test_a_models_dir_that_does_not_exist_is_exit_2(tmp_path, capsys):
    missing, a_file = tmp_path / "no-such-models", tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["validate", TXT2IMG, "--models-dir", str(missing)]) == 2
    assert capsys.readouterr().err == (f"graphflow validate: error: argument --models-dir: {missing} does not exist "
                                       "(a models folder holds checkpoints/, loras/ and embeddings/)\n")
    assert main(["models", "--models-dir", str(a_file), "--models-dir", str(missing)]) == 2
    assert capsys.readouterr().err == (f"graphflow models: error: argument --models-dir: {a_file} is not a folder; {missing} does "
                                       "not exist (a models folder holds checkpoints/, loras/ and embeddings/)\n")
    assert "GRAPHFLOW_MODELS" not in os.environ
    (tmp_path / "models").mkdir()
    assert main(["validate", HELLO, "--models-dir", str(tmp_path / "models")]) == 0


@pytest.mark.parametrize("command", [["graph", HELLO], ["cache", "--cache-dir", "c"], ["models"]])
def test_every_command_takes_plugin(capsys, command):
    assert main([*command, "--plugin", TOY_PLUGIN]) == 0
    capsys.readouterr()
    assert main([*command, "--plugin", "no_such_module_anywhere"]) == 2
    assert "[bad_plugin] cannot import plugin 'no_such_module_anywhere': ModuleNotFoundError" in capsys.readouterr().err


# --- the steps ceiling, run --help ---------------------------------------------------------------------------


def test_limit_steps_is_the_one_ceiling_on_the_scheduler(capsys):
    assert main(["validate", TXT2IMG, "--set", "steps=2000", "--limit", "steps=2000"]) == 0
    capsys.readouterr()
    assert main(["validate", TXT2IMG, "--set", "steps=2000", "--json"]) == 2
    (p,) = orjson.loads(capsys.readouterr().out)["problems"]
    assert (p["code"], p["node"], p["field"]) == ("over_limit", "schedule", "inputs.steps")
    assert p["message"] == ("steps = 2000 is over the limit of 500 for 'steps' (raise it with --limit steps=N, or "
                            "Executor(limits=...))")


def test_run_help_says_a_png_works(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    assert "a .png graphflow saved: it holds its workflow and parameters" in " ".join(capsys.readouterr().out.split())


# --- --device and --dtype against the installed torch ---------------------------------------------------------


def _cuda_message() -> str:
    import torch

    return (f"device 'cuda': this torch ({torch.__version__}) is a CPU-only build: it runs on cpu (float32, float16, bfloat16). "
            'For an NVIDIA GPU, install a CUDA build of torch: make setup TORCH="torch --index-url '
            'https://download.pytorch.org/whl/cu126" (see the Makefile)')


TOY_DOC = {"format": 1, "nodes": {"v": {"type": "MakeVec", "inputs": {"value": 2}},
                                  "s": {"type": "SumVec", "inputs": {"vec": link("v.vec")}}}, "outputs": {"total": "s.total"}}


@pytest.mark.skipif(not cpu_only_torch(), reason="needs the CPU build of torch")
def test_device_cuda_on_a_cpu_torch_is_exit_2_before_any_node_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", TXT2IMG, "--device", "cuda", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"graphflow run: error: {_cuda_message()}\n"
    assert not out.exists()
    wf = tmp_path / "toy.json"
    wf.write_bytes(orjson.dumps(TOY_DOC))
    toy_nodes.reset()
    assert main(["run", str(wf), "--plugin", "tests.toy_nodes", "--device", "cuda", "--no-cache"]) == 2
    assert toy_nodes.RUNS == {}  # no node ran: refused before the executor started
    assert main(["run", str(wf), "--plugin", "tests.toy_nodes", "--no-cache"]) == 0 and toy_nodes.RUNS == {"v": 1, "s": 1}
    capsys.readouterr()
    assert main(["sweep", str(wf), "--plugin", "tests.toy_nodes", "--grid", "unused=[1]", "--device", "cuda", "--out", "sw"]) == 2
    assert capsys.readouterr().err == f"graphflow sweep: error: {_cuda_message()}\n"
    assert main(["validate", TXT2IMG, "--device", "cuda", "--json"]) == 2
    assert orjson.loads(capsys.readouterr().out)["problems"] == [
        {"code": "unsupported_device", "message": _cuda_message(), "field": "device"}]


@pytest.mark.slow
@pytest.mark.skipif(not cpu_only_torch(), reason="needs the CPU build of torch")
def test_device_cuda_stops_run_and_serve_without_loading_a_model(tmp_path):
    """As a process: nothing of diffusers is imported (a model load would need it), and serve
    does not start listening."""
    code = ("import sys\nfrom graphflow.cli import main\n"
            f"rc = main(['run', {TXT2IMG!r}, '--device', 'cuda', '--out', 'out'])\n"
            "print(rc, 'diffusers' in sys.modules, 'transformers' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["2", "False", "False"], p.stderr
    serve = subprocess.run([sys.executable, "-m", "graphflow.cli", "serve", "--device", "cuda", "--port", "0", "--out", "srv"],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and serve.stderr == f"graphflow serve: error: {_cuda_message()}\n"


def test_half_precision_on_the_cpu_is_accepted(tmp_path, capsys):
    """The CPU computes in float16 and bfloat16 (slowly): refusing them would refuse what works."""
    assert main(["validate", HELLO, "--dtype", "bfloat16"]) == 0
    assert main(["run", HELLO, "--dtype", "float16", "--no-cache", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "sum.txt").read_text() == "the sum is 45.0\n"


# --- warnings a user cannot act on -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_token_workflows_print_no_third_party_future_warning(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["run", str(ROOT / "workflows" / "token_mix.json"), "--no-cache", "--quiet", "--out", str(tmp_path / "o")]) == 0
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []
