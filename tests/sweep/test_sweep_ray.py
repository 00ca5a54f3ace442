"""Sweeps on a real Ray (graphflow.sweep.ray_runner): the same bytes as a local sweep and as `graphflow
run`, cache affinity (a prompt encoded by one actor only), models loaded once per actor, an actor
killed mid-sweep, resume and cancel. One local Ray instance serves the module (started here, in a
home folder of its own, stopped at the end); the `ray start --head` cluster is in
test_sweep_ray_cluster.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from graphflow.sweep.items import Sweep, read_index
from graphflow.sweep.ray_runner import affinity_keys, deal
from graphflow.sweep.ray_runner import RaySweep, local_token
from tests.sweep.ray_helpers import own_home
from tests.sweep.test_sweep import _isolated, txt2img  # noqa: F401  (an autouse fixture: each test in its own folder)

ray = pytest.importorskip("ray", reason="Ray is the optional extra graphflow-diffusion[ray]; `make test` installs it")

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = str(ROOT / "workflows" / "txt2img.json")
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module, in a home folder of its own: ray.init() writes
    ~/.ray/auth_token, which would change how every later cluster on the machine is joined."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with own_home() as home, local_token():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
        try:
            yield
        finally:
            ray.shutdown()
        assert not (home / ".ray").exists()  # graphflow.sweep.ray_runner.local_token: the token was in the environment


def pngs(out: Path) -> dict[int, bytes]:
    return {r["item"]: (out / r["files"][0]).read_bytes() for r in read_index(out) if r["status"] == "ok"}


def test_deal_keeps_a_prompt_on_one_queue_and_balances(tiny_model):
    """No Ray needed: the dealing itself, from the engine's fingerprints."""
    sw = Sweep(txt2img(tiny_model), grid={"prompt": ["p0", "p1", "p2", "p3"], "seed": [0, 1, 2, 3]}, out_dir="x")
    queues = deal(sw.order, affinity_keys(sw, sw.order), 2)
    assert sorted(len(q) for q in queues) == [8, 8]
    for q in queues:  # every prompt's four items on one queue: each prompt is encoded by one actor
        assert len({sw.items[i]["prompt"] for i in q}) == 2
    one_prompt = Sweep(txt2img(tiny_model), grid={"seed": [0, 1, 2], "guidance": [1.0, 3.0]}, out_dir="y")
    queues = deal(one_prompt.order, affinity_keys(one_prompt, one_prompt.order), 2)
    assert sorted(len(q) for q in queues) == [3, 3]


@pytest.mark.slow
def test_ray_sweep_equals_local_sweep_and_run_with_affinity_and_one_load_per_actor(tmp_path, tiny_model, ray_session):
    grid = {"prompt": PROMPTS, "seed": [0, 1]}
    sw = Sweep(txt2img(tiny_model), grid=grid, out_dir=tmp_path / "ray", runner=RaySweep("local", workers=2))
    results = list(sw)
    assert [r.status for r in results] == ["ok"] * 4
    by_worker: dict[str, list] = {}
    for r in sorted(results, key=lambda r: r.item):
        by_worker.setdefault(r.worker, []).append(r)
    assert len(by_worker) == 2  # both actors worked
    for rs in by_worker.values():
        assert len({r.params["prompt"] for r in rs}) == 1  # affinity: one prompt per actor
        assert len({r.loads for r in rs}) == 1 and rs[0].loads > 0  # models loaded by the first item, never again
        assert sum(r.runs.get("cond", 0) for r in rs) == 1  # its prompt encoded once
    assert sum(r.runs.get("cond", 0) for r in results) == 2  # two prompts, two encodings in the whole sweep
    index = read_index(tmp_path / "ray")
    assert sorted(r["item"] for r in index) == [0, 1, 2, 3]
    assert all(r["worker"] and r["host"] and r["attempts"] == 1 for r in index)
    assert (tmp_path / "ray" / "contact_sheet.png").exists()

    # On the CPU, torch's sums depend on its thread count, and each one-CPU actor runs one thread:
    # the same command with OMP_NUM_THREADS=1 here gives the same bytes.
    sets = ["--set", f"model={tiny_model}", "--set", "steps=2"]
    code = ("import sys; from graphflow.cli import main\n"
            f"assert main(['sweep', {TXT2IMG!r}, *{sets!r}, '--grid', 'prompt={orjson.dumps(PROMPTS).decode()}', "
            "'--grid', 'seed=[0,1]', '--out', 'local', '--no-cache', '--quiet']) == 0\n"
            f"assert main(['run', {TXT2IMG!r}, *{sets!r}, '--set', 'prompt={PROMPTS[1]}', '--set', 'seed=1', "
            "'--out', 'single', '--no-cache', '--quiet']) == 0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert pngs(tmp_path / "ray") == pngs(tmp_path / "local")  # byte for byte, wherever it ran
    single = next((tmp_path / "single").glob("*.png")).read_bytes()
    assert single == pngs(tmp_path / "ray")[3]

    # --resume through Ray: only the two new items run
    more = Sweep(txt2img(tiny_model), grid={"prompt": PROMPTS, "seed": [0, 1, 2]}, out_dir=tmp_path / "ray", resume=True,
                 runner=RaySweep("local", workers=2))
    statuses = {r.item: r.status for r in more}
    assert sorted(i for i, s in statuses.items() if s == "ok") == [2, 5]  # (p0, seed 2) and (p1, seed 2)
    assert len(read_index(tmp_path / "ray")) == 6


@pytest.mark.slow
def test_killed_actor_has_its_item_retried_elsewhere(tmp_path, tiny_model, ray_session):
    sw = Sweep(txt2img(tiny_model).with_params(steps=6), grid={"seed": list(range(6))}, out_dir=tmp_path / "k", runner=RaySweep("local", workers=2, max_replacements=0))
    it = iter(sw)
    first = next(it)  # the sweep is paused in this yield: the actor that ran it has not been given its next item
    assert first.status == "ok"
    info = sw.runner.info()
    assert [w["threads"] for w in info] == ["1", "1"]  # one torch thread per one-CPU actor
    victim = next(w for w in info if f"{w['host']}:{w['pid']}" == first.worker)
    os.kill(victim["pid"], signal.SIGKILL)  # its next item is lost with it
    rest = list(it)
    assert sorted(r.status for r in rest) == ["ok"] * 5
    index = read_index(tmp_path / "k")
    assert sorted(r["item"] for r in index) == list(range(6))  # none lost, none twice
    retried = [r for r in index if r["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["worker"] != first.worker  # run again on the other actor


@pytest.mark.slow
def test_cancel_stops_with_a_consistent_index(tmp_path, tiny_model, ray_session):
    sw = Sweep(txt2img(tiny_model).with_params(steps=20), grid={"seed": list(range(8))}, out_dir=tmp_path / "c", runner=RaySweep("local", workers=2))
    seen = []
    for r in sw:
        seen.append(r)
        if len(seen) == 1:
            threading.Thread(target=sw.cancel).start()
    index = read_index(tmp_path / "c")
    ok = [r for r in seen if r.status == "ok"]
    assert 1 <= len(ok) < 8 and len(index) == len(ok)  # every finished item recorded, nothing else
    assert {r["item"] for r in index} == {r.item for r in ok}
    raw = (tmp_path / "c" / "index.jsonl").read_bytes()
    assert raw.endswith(b"\n") and all(orjson.loads(x) for x in raw.splitlines())


def test_ray_missing_exits_2_with_the_install_command(tmp_path, tiny_model):
    code = ("import sys; sys.modules['ray'] = None\n"  # what `import ray` does where Ray is not installed
            "from graphflow.cli import main\n"
            f"sys.exit(main(['sweep', {TXT2IMG!r}, '--set', 'model={tiny_model}', '--grid', 'seed=[0,1]', '--ray', '--out', 'o']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "pip install 'graphflow-diffusion[ray]'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_actors_share_a_disk_cache(tmp_path, tiny_model, ray_session):
    """Two sweeps, each with fresh actors, over one --cache-dir: the second computes nothing but the
    saving, whichever actor computed each entry, and gives the same bytes."""
    opts = {"workers": 2, "executor_options": {"cache_dir": str(tmp_path / "shared-cache")}}
    grid = {"seed": [0, 1]}
    first = list(Sweep(txt2img(tiny_model), grid=grid, out_dir=tmp_path / "a", runner=RaySweep("local", **opts)))
    second = list(Sweep(txt2img(tiny_model), grid=grid, out_dir=tmp_path / "b", runner=RaySweep("local", **opts)))
    assert all(r.runs.get("denoise") == 1 for r in first), [r.runs for r in first]
    assert all(r.runs.get("denoise", 0) == 0 and r.runs.get("cond", 0) == 0 and r.runs.get("save") == 1 for r in second), [r.runs for r in second]
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b")


@pytest.mark.slow
def test_when_every_actor_dies_every_item_is_still_reported(tmp_path, tiny_model, ray_session):
    sw = Sweep(txt2img(tiny_model), grid={"seed": list(range(4))}, out_dir=tmp_path / "d", runner=RaySweep("local", workers=1, max_replacements=0))
    it = iter(sw)
    first = next(it)
    os.kill(sw.runner.info()[0]["pid"], signal.SIGKILL)  # the only actor, and no replacement allowed
    rest = list(it)
    assert first.status == "ok" and sorted(r.item for r in rest) == [1, 2, 3]  # none lost
    assert all(r.status == "failed" and "died" in r.error["message"] for r in rest)
    assert sorted(r["item"] for r in read_index(tmp_path / "d")) == [0, 1, 2, 3]


@pytest.mark.slow
def test_batch_on_ray_groups_an_actors_items_into_one_model_call_per_step(tmp_path, tiny_model, ray_session):
    """``--batch N`` with ``--ray``: each actor is handed up to N of its queue's items at once and
    runs them together, one UNet call per step; each item's picture and index line stay its own,
    and --resume works across batches. (A failing item's batch-mates: the actor runs the local
    sweep's own batched path, tests/sweep/test_batching.py.)"""
    from graphflow.cli import main
    from graphflow.sweep import sweep

    wf = txt2img(tiny_model).with_params(steps=1)
    grid = {"prompt": PROMPTS, "seed": [0, 1]}
    alone = {r.item: r.image for r in sweep(wf, grid=grid, out_dir=tmp_path / "local")}
    sw = Sweep(wf, grid=grid, out_dir=tmp_path / "ray", runner=RaySweep("local", workers=1, executor_options={"batch": 3}))
    it = iter(sw)
    first = next(it)  # paused here: the actor has run its first batch, 3 items, and no more
    # the negative prompt's and the prompts' text encoder calls, the step's UNet call and the VAE
    # decode, each for all 3
    assert sw.runner.info()[0]["batch_sizes"] == [3, 3, 3, 3]
    results = [first, *it]
    assert sorted(r.item for r in results) == list(range(4)) and {r.status for r in results} == {"ok"}
    for r in results:  # float summation order only
        assert np.abs(r.image.astype(int) - alone[r.item].astype(int)).max() <= 1
    index = read_index(tmp_path / "ray")
    assert sorted(r["item"] for r in index) == list(range(4)) and all(r["attempts"] == 1 for r in index)
    assert all(r["files"][0].startswith(f"item_{r['item']:05d}/") for r in index)

    # the CLI takes --batch with --ray (it used to refuse), and resumes across batches
    args = ["sweep", TXT2IMG, "--set", f"model={tiny_model}", "--set", "steps=1", "--grid", f"prompt={orjson.dumps(PROMPTS).decode()}",
            "--grid", "seed=[0,1,2]", "--ray", "--workers", "1", "--batch", "2", "--out", str(tmp_path / "ray"),
            "--resume", "--no-cache", "--quiet"]
    assert main(args) == 0
    index = read_index(tmp_path / "ray")
    assert len(index) == 6 and {r["status"] for r in index} == {"ok"}  # the 4 kept, the 2 new seed-2 items run
    assert {(r["params"]["prompt"], r["params"]["seed"]) for r in index} == {(p, s) for p in PROMPTS for s in range(3)}
