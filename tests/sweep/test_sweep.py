"""Local parameter sweeps (graphflow.sweep, `graphflow sweep`): item order, validation before
anything runs, shared work done once, the index and resume, the contact sheet, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from graphflow.cli import main
from graphflow.engine.executor import Executor
from graphflow.graph.workflow import Workflow
from graphflow.problems import ValidationFailed
from graphflow.sweep import LocalRunner, Sweep, sweep
from graphflow.sweep.items import expand, read_index, run_order

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = str(ROOT / "workflows" / "txt2img.json")
HELLO = str(ROOT / "workflows" / "hello.json")

# a parameter value (d=0) that makes a node fail while running (division by zero)
DIVIDE = {
    "format": 1,
    "params": {"d": {"default": 1.0, "type": "float"}},
    "nodes": {
        "q": {"type": "Math", "inputs": {"a": 1.0, "b": {"param": "d"}, "op": "div"}},
        "msg": {"type": "Text", "inputs": {"template": "q=$value", "value": {"from": "q.result"}}},
        "save": {"type": "SaveText", "inputs": {"text": {"from": "msg.text"}, "filename": "q.txt"}},
    },
    "outputs": {"file": "save.path"},
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.chdir(tmp_path)


def txt2img(tiny_model) -> Workflow:
    return Workflow.load(TXT2IMG).with_params(model=str(tiny_model), steps=2)


def lines(out: Path) -> list[dict]:
    return [orjson.loads(x) for x in (out / "index.jsonl").read_bytes().splitlines()]


def test_grid_times_zip_count_and_order():
    items = expand({"seed": [0, 1], "guidance": [1.0, 2.5, 4.0]}, {"prompt": ["a", "b"], "steps": [2, 3]})
    assert len(items) == 2 * 3 * 2
    assert items[0] == {"seed": 0, "guidance": 1.0, "prompt": "a", "steps": 2}
    assert items[1] == {"seed": 0, "guidance": 1.0, "prompt": "b", "steps": 3}  # the zip: the last, fastest axis
    assert items[2] == {"seed": 0, "guidance": 2.5, "prompt": "a", "steps": 2}
    assert items[-1] == {"seed": 1, "guidance": 4.0, "prompt": "b", "steps": 3}
    with pytest.raises(ValidationFailed, match="equal lengths"):
        expand(zip={"prompt": ["a", "b"], "seed": [1]})
    with pytest.raises(ValidationFailed, match="JSON list"):
        expand(grid={"seed": 3})
    # run order: the prompt (read near the graph's start) groups the items before the seed
    wf = Workflow.load(TXT2IMG)
    items = expand({"seed": [0, 1, 2], "prompt": ["p", "q"]})
    order = run_order(items, wf.checked())
    assert [items[i]["prompt"] for i in order] == ["p"] * 3 + ["q"] * 3
    assert [items[i]["seed"] for i in order] == [0, 1, 2, 0, 1, 2]


def test_a_bad_value_names_the_item_and_parameter_and_nothing_runs(tmp_path):
    wf = Workflow.load(TXT2IMG)
    ex = Executor(out_dir=tmp_path / "x")
    with pytest.raises(ValidationFailed) as e:
        sweep(wf, grid={"seed": [0, 1, 2, "three"], "guidance": [2.5]}, out_dir=tmp_path / "sw", runner=LocalRunner(ex))
    text = str(e.value)
    assert "item 3 (seed=three, guidance=2.5)" in text and "parameter 'seed'" in text
    assert all("item 3" in p.message for p in e.value.problems)
    assert not ex.models.loads and not (tmp_path / "sw").exists() and not (tmp_path / "x").exists()


def test_prompts_encoded_once_model_loaded_once_index_and_contact_sheet(tmp_path, tiny_model):
    ex = Executor(out_dir=tmp_path / "unused")
    out = tmp_path / "sw"
    prompts = ["a red circle on a blue background", "a green square on a white background"]
    results = list(sweep(txt2img(tiny_model), grid={"prompt": prompts, "seed": [0, 1, 2]}, out_dir=out, executor=ex))
    assert len(results) == 6 and all(r.status == "ok" for r in results)
    assert sum(r.runs.get("embeddings", 0) for r in results) == 2  # each distinct prompt once
    assert sum(r.runs.get("cond", 0) for r in results) == 2
    assert sum(r.runs.get("noise", 0) for r in results) == 3  # the noise depends on the seed only: shared too
    assert ex.models.loads and set(ex.models.loads.values()) == {1}  # the UNet (and the rest) loaded once
    assert ex.out_dir == tmp_path / "unused"  # the caller's folder is given back
    idx = lines(out)
    assert sorted(r["item"] for r in idx) == list(range(6))
    for r in idx:
        assert r["status"] == "ok" and r["error"] is None and r["host"] and r["seconds"] >= 0
        assert r["files"] and all((out / f).is_file() for f in r["files"])
        assert all(f.startswith(f"item_{r['item']:05d}/") for f in r["files"])
    # the contact sheet: an XY plot, rows = prompts, columns = seeds
    layout = orjson.loads((out / "contact_sheet.json").read_bytes())
    assert (layout["rows"], layout["cols"], layout["xy"]) == (2, 3, True)
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB")).astype(float)
    tw, th = layout["tile"]
    assert sheet.shape[0] >= 2 * th and sheet.shape[1] >= 3 * tw
    for r in idx:
        x, y, w, h = layout["boxes"][str(r["item"])]
        tile = sheet[y:y + h, x:x + w]
        png = np.asarray(Image.open(out / r["files"][0]).convert("RGB")).astype(float)
        assert tile.shape == png.shape
        assert np.allclose(tile.mean(axis=(0, 1)), png.mean(axis=(0, 1)))
    # tiles in a row share the prompt: item 4 (prompt 1, seed 1) is on row 1, column 1
    assert layout["boxes"]["4"][1] > layout["boxes"]["1"][1] and layout["boxes"]["4"][0] == layout["boxes"]["1"][0]


def test_resume_after_an_interrupted_sweep_runs_only_the_missing_items(tmp_path, tiny_model):
    out = tmp_path / "sw"
    grid = {"seed": [0, 1, 2, 3]}
    assert len(list(sweep(txt2img(tiny_model), grid=grid, out_dir=out))) == 4
    data = (out / "index.jsonl").read_bytes().splitlines(keepends=True)
    (out / "index.jsonl").write_bytes(b"".join(data[:2]) + data[2][: len(data[2]) // 2])  # killed mid-line
    assert len(read_index(out)) == 2
    results = list(sweep(txt2img(tiny_model), grid=grid, out_dir=out, resume=True))
    ran = [r for r in results if r.status == "ok"]
    assert len(ran) == 2 and sum(r.status == "skipped" for r in results) == 2
    idx = lines(out)  # every line whole again, one ok line per item
    assert len(idx) == 4 and sorted(r["params"]["seed"] for r in idx) == [0, 1, 2, 3]
    # a third pass has nothing left to do
    assert all(r.status == "skipped" for r in sweep(txt2img(tiny_model), grid=grid, out_dir=out, resume=True))


def test_cancel_stops_with_whole_lines_only(tmp_path):
    from graphflow.engine import events as ev

    ex = Executor(out_dir=tmp_path / "x")
    s = Sweep(Workflow.load(HELLO), grid={"n": [1, 2, 3, 4]}, out_dir=tmp_path / "sw", runner=LocalRunner(ex))
    started = []

    def hook(e):
        if isinstance(e, ev.RunStarted):
            started.append(e)
            if len(started) == 3:
                s.cancel()
    ex.subscribe(hook, on_run_thread=True)
    results = list(s)
    assert [r.status for r in results] == ["ok", "ok", "cancelled"]
    assert [r["item"] for r in lines(tmp_path / "sw")] == [0, 1]


def test_sweep_png_equals_graphflow_run(tmp_path, tiny_model):
    assert main(["sweep", TXT2IMG, "--grid", "seed=[0,5]", "--set", f"model={tiny_model}", "--set", "steps=2",
                 "--out", "sw", "--no-cache", "--quiet"]) == 0
    assert main(["run", TXT2IMG, "--set", "seed=5", "--set", f"model={tiny_model}", "--set", "steps=2",
                 "--out", "single", "--no-cache", "--quiet"]) == 0
    item = next(r for r in lines(tmp_path / "sw") if r["params"] == {"seed": 5})
    a = np.asarray(Image.open(tmp_path / "sw" / item["files"][0]))
    b = np.asarray(Image.open(next((tmp_path / "single").glob("*.png"))))
    assert a.shape == b.shape and np.array_equal(a, b)


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["sweep", HELLO, "--grid", "n=[1,2,3]", "--out", "ok", "--quiet"]) == 0
    assert len(lines(tmp_path / "ok")) == 3
    assert (tmp_path / "ok" / "item_00002" / "sum.txt").read_text().startswith("the sum is 3")
    capsys.readouterr()
    assert main(["sweep", HELLO, "--grid", "n=3", "--out", "bad"]) == 2
    assert "--grid" in capsys.readouterr().err
    assert main(["sweep", HELLO, "--zip", "n=[1,2]", "--zip", "m=[1]", "--out", "bad"]) == 2
    assert main(["sweep", HELLO, "--grid", "n=[1,-1e9,\"x\"]", "--out", "bad"]) == 2
    assert "item 2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    wf = tmp_path / "divide.json"
    wf.write_bytes(orjson.dumps(DIVIDE))
    assert main(["sweep", str(wf), "--grid", "d=[1.0,0.0,2.0]", "--out", "div", "--quiet"]) == 1
    idx = {r["item"]: r for r in lines(tmp_path / "div")}
    assert [idx[i]["status"] for i in range(3)] == ["ok", "failed", "ok"]  # the sweep went on
    assert idx[1]["error"]["node"] == "q" and "ZeroDivisionError" in idx[1]["error"]["message"]
    assert (tmp_path / "div" / "item_00002" / "q.txt").exists()
    assert not os.path.exists(tmp_path / "div" / "contact_sheet.png")  # no images, no sheet


def test_a_change_after_the_loop_reuses_the_latents(tmp_path, tiny_model):
    """Items that differ only downstream of the denoising loop (here the saved file's prefix)
    denoise once: the loop's result is shared through the executor's cache."""
    doc = orjson.loads(Path(TXT2IMG).read_bytes())
    doc["params"]["prefix"] = {"default": "txt2img", "type": "string"}
    doc["nodes"]["save"]["inputs"]["prefix"] = {"param": "prefix"}
    wf = Workflow.from_dict(doc).with_params(model=str(tiny_model), steps=2)
    results = list(sweep(wf, grid={"prefix": ["a", "b", "c"]}, out_dir=tmp_path / "p", executor=Executor(out_dir=tmp_path / "x")))
    assert [r.status for r in results] == ["ok"] * 3
    assert sum(r.runs.get("denoise", 0) for r in results) == 1
    assert sum(r.runs.get("decode", 0) for r in results) == 1
    assert sum(r.runs.get("save", 0) for r in results) == 3
    assert [Path(r.files[0]).name for r in sorted(results, key=lambda r: r.item)] == ["a_00001.png", "b_00001.png", "c_00001.png"]
