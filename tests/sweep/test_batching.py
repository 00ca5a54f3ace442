"""Batched sweeps (``Executor(batch=N)``, ``graphflow sweep --batch N``): items advanced together,
their UNet calls made once per step for all of them, each item's picture, files, index line,
events and failure still its own."""

from __future__ import annotations


import numpy as np
import orjson
import pytest
from PIL import Image

from graphflow.cli import main
from graphflow.engine import events as ev
from graphflow.engine.executor import Executor
from graphflow.graph.workflow import Workflow
from graphflow.problems import ValidationFailed
from graphflow.sweep import sweep
from tests.sweep.test_sweep import DIVIDE, ROOT, TXT2IMG, _isolated, lines, txt2img  # noqa: F401  (an autouse fixture: each test in its own folder)

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]
GRID = {"prompt": PROMPTS, "seed": [0, 1, 2]}


@pytest.fixture(scope="module")
def unbatched(tiny_model, tmp_path_factory):
    """The six items' pictures, one run each: what batching must give back."""
    out = tmp_path_factory.mktemp("unbatched")
    ex = Executor(out_dir=out / "unused")
    return {r.item: r.image for r in sweep(txt2img(tiny_model), grid=GRID, out_dir=out / "sw", executor=ex)}


def test_batched_sweep_gives_each_item_its_unbatched_picture_with_one_unet_call_per_step(tmp_path, tiny_model, unbatched):
    ex = Executor(out_dir=tmp_path / "unused", batch=4)
    events: list = []
    ex.subscribe(events.append, on_run_thread=True)
    out = tmp_path / "sw"
    results: list = []
    calls = unet_batches(lambda: results.extend(sweep(txt2img(tiny_model), grid=GRID, out_dir=out, executor=ex)))
    assert [r.status for r in results] == ["ok"] * 6
    # 6 items in chunks of 4 and 2, 2 steps each: one UNet call per step per chunk (CFG doubles
    # each item's batch), then one VAE decode per chunk
    assert calls == [8, 8, 4, 4]
    # the first chunk: its negative prompt, its prompts, two steps, the decode; the second finds
    # its prompts in the cache
    assert ex.batch_sizes == [4, 4, 4, 4, 4, 2, 2, 2]
    for r in results:  # float summation order only: at most one 8-bit level, most pixels equal
        d = np.abs(r.image.astype(int) - unbatched[r.item].astype(int))
        assert d.max() <= 1, (r.item, d.max())
        assert (d == 0).mean() > 0.99
    # shared work is still done once: each prompt encoded once, the model loaded once
    assert set(ex.models.loads.values()) == {1}
    # every item is a run of its own: its own id, start and end, its own two loop steps
    ex.flush()
    runs = {e.run_id for e in events if isinstance(e, ev.RunStarted)}
    assert len(runs) == 6
    for rid in runs:
        mine = [e for e in events if e.run_id == rid]
        assert isinstance(mine[0], ev.RunStarted) and isinstance(mine[-1], ev.RunFinished) and mine[-1].ok
        assert [e.index for e in mine if isinstance(e, ev.LoopStep)] == [0, 1]
    idx = lines(out)
    assert sorted(r["item"] for r in idx) == list(range(6))
    for r in idx:
        assert r["status"] == "ok" and len(r["files"]) == 1 and r["files"][0].startswith(f"item_{r['item']:05d}/")
        png = np.asarray(Image.open(out / r["files"][0]).convert("RGB"))
        assert np.abs(png.astype(int) - unbatched[r["item"]].astype(int)).max() <= 1


def test_a_batch_encodes_its_distinct_prompts_in_one_text_encoder_call(tmp_path, tiny_model, unbatched):
    """The first chunk's four items share the empty negative prompt and hold two prompts: one call
    of one row, one call of two rows; the second chunk finds both prompts in the cache. Unbatched:
    three calls of one row."""
    ex = Executor(out_dir=tmp_path / "unused", batch=4)
    results: list = []
    calls = unet_batches(lambda: results.extend(sweep(txt2img(tiny_model), grid=GRID, out_dir=tmp_path / "sw", executor=ex)),
                         "CLIPTextModel")
    assert sorted(calls) == [1, 2]
    for r in results:
        assert np.abs(r.image.astype(int) - unbatched[r.item].astype(int)).max() <= 1, r.item
    alone = unet_batches(lambda: list(sweep(txt2img(tiny_model), grid=GRID, out_dir=tmp_path / "sw1",
                                            executor=Executor(out_dir=tmp_path / "unused"))), "CLIPTextModel")
    assert alone == [1, 1, 1]


def test_items_of_other_shapes_run_in_the_same_group_unbatched(tmp_path, tiny_model):
    ex = Executor(out_dir=tmp_path / "unused", batch=4)
    wf = txt2img(tiny_model).with_params(steps=1)
    results: list = []
    calls = unet_batches(lambda: results.extend(
        sweep(wf, zip={"width": [64, 64, 32], "seed": [0, 1, 0]}, out_dir=tmp_path / "sw", executor=ex)))
    assert [r.status for r in results] == ["ok"] * 3
    assert sorted(calls) == [2, 4]  # the 32-pixel item's UNet call is its own
    assert [r.image.shape[:2] for r in results] == [(64, 64), (64, 64), (64, 32)]


def test_a_failing_item_does_not_fail_its_batch_mates(tmp_path):
    ex = Executor(out_dir=tmp_path / "unused", batch=3)
    results = list(sweep(Workflow.from_dict(DIVIDE), grid={"d": [1.0, 0.0, 2.0, 4.0]}, out_dir=tmp_path / "sw", executor=ex))
    assert [r.status for r in results] == ["ok", "failed", "ok", "ok"]
    assert results[1].error["node"] == "q" and "division by zero" in results[1].error["message"]
    for r, text in zip((results[0], results[2], results[3]), ("q=1.0", "q=0.5", "q=0.25")):
        assert (tmp_path / "sw" / r.files[0]).read_text().strip() == text


def test_cli_batch_resume_and_bad_values(tmp_path, tiny_model, capsys):
    args = ["sweep", TXT2IMG, "--grid", "seed=[0,1,2,3,4]", "--set", f"model={tiny_model}", "--set", "steps=1",
            "--out", "sw", "--no-cache", "--quiet", "--batch", "2"]
    assert main(args) == 0
    out = tmp_path / "sw"
    data = (out / "index.jsonl").read_bytes().splitlines(keepends=True)
    (out / "index.jsonl").write_bytes(b"".join(data[:2]))  # as if killed after the first batch
    first = {r["item"]: np.asarray(Image.open(out / r["files"][0])) for r in lines(out)}
    assert main([*args, "--resume"]) == 0
    idx = {r["item"]: r for r in lines(out)}
    assert sorted(idx) == [0, 1, 2, 3, 4] and all(r["status"] == "ok" for r in idx.values())
    for i, png in first.items():  # the items the first pass finished kept their pictures
        assert np.array_equal(np.asarray(Image.open(out / idx[i]["files"][0])), png)
    capsys.readouterr()
    assert main(["sweep", TXT2IMG, "--grid", "seed=[0,1]", "--batch", "0", "--out", "sw0"]) == 2
    assert "argument --batch: takes a number of items, at least 1, not 0" in capsys.readouterr().err


def unet_batches(run, model: str = "UNet2DConditionModel") -> list[int]:
    """The batch size of every call of a ``model`` class ``run()`` makes (a global forward hook:
    the real model)."""
    import torch

    sizes: list[int] = []

    def hook(module, args, kwargs=None):
        if type(module).__name__ == model:
            sizes.append(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return sizes


def test_a_map_with_batch_makes_one_unet_call_per_step_for_its_items(tiny_model):
    doc = orjson.loads((ROOT / "workflows" / "map_seeds.json").read_bytes())
    params = {"model": str(tiny_model), "steps": 2, "seeds": [0, 1, 2]}
    results = {}
    for batch in (1, 2):
        doc["nodes"]["pictures"]["batch"] = batch
        ex = Executor()
        wf = Workflow.from_dict(doc).with_params(**params)
        calls = unet_batches(lambda: results.__setitem__(batch, ex.run(wf)))
        assert results[batch].ok, results[batch].errors
        # CFG doubles each item; batched: items 0 and 1 together (4), item 2 alone (2), per step
        assert calls == ([2] * 6 if batch == 1 else [4, 4, 2, 2])
    for a, b in zip(results[1]["images"], results[2]["images"]):
        assert (a - b).abs().max().item() * 255 < 1
    assert results[2].stats["unet"].runs == 6  # each item's node still ran, once per step
    doc["nodes"]["pictures"]["body"]["denoise"]["batch"] = 2
    with pytest.raises(ValidationFailed, match="a Loop's iterations follow one another: only a Map's items batch"):
        Workflow.from_dict(doc)
