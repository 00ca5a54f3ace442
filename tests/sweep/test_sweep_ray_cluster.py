"""A sweep joining a Ray cluster started the way users start one (`ray start --head`, here on this
machine's loopback), through the CLI: `graphflow sweep --ray HOST:PORT`; the README's recipe after
a local `--ray` sweep; a refused token named as such. Every test runs with a home folder of its
own (tests/sweep/ray_helpers.py) and checks the user's ~/.ray unchanged; each cluster is stopped
afterwards whatever happens, by its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graphflow.sweep.items import read_index
from tests.sweep.ray_helpers import free_port, new_token, own_home, ray_head

pytest.importorskip("ray", reason="Ray is the optional extra graphflow-diffusion[ray]; `make test` installs it")

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = str(ROOT / "workflows" / "txt2img.json")
GRAPHFLOW = str(Path(sys.executable).parent / "graphflow")


@pytest.fixture
def home():
    with own_home() as h:
        yield h


def sweep(env, cwd, tiny_model, *args, timeout=600):
    return subprocess.run([GRAPHFLOW, "sweep", TXT2IMG, "--set", f"model={tiny_model}", "--set", "steps=2", "--no-cache", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_sweep_joins_a_ray_start_head_cluster(tmp_path, tiny_model, home):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": new_token()}
    with ray_head(env, tmp_path) as address:
        p = sweep(env, tmp_path, tiny_model, "--grid", "seed=[0,1,2]", "--ray", address, "--out", "sw")
        assert p.returncode == 0, p.stderr[-3000:]
        index = read_index(tmp_path / "sw")
        assert sorted(r["item"] for r in index) == [0, 1, 2] and {r["status"] for r in index} == {"ok"}
        assert len({r["worker"] for r in index}) == 2  # two one-CPU actors on the two-CPU cluster
        assert all((tmp_path / "sw" / r["files"][0]).stat().st_size > 0 for r in index)
        assert (tmp_path / "sw" / "contact_sheet.png").exists()
        # the cluster outlives the sweep (it only disconnected): a second sweep joins it again
        again = sweep(env, tmp_path, tiny_model, "--grid", "seed=[0,1,2,3]", "--ray", address, "--out", "sw", "--resume")
        assert again.returncode == 0, again.stderr[-3000:]
        assert sorted(r["item"] for r in read_index(tmp_path / "sw")) == [0, 1, 2, 3]


@pytest.mark.slow
def test_the_readme_cluster_recipe_works_after_a_local_ray_sweep(tmp_path, tiny_model, home):
    """`graphflow sweep --ray` (a Ray started for the sweep), then the README's recipe as typed:
    `ray start --head`, `graphflow sweep --ray HOST:PORT`, no RAY_AUTH_* anywhere. The local sweep
    used to leave ~/.ray/auth_token, with which the head then required a token the join never sent."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    assert not any(k.startswith("RAY_AUTH") for k in env)
    t0 = time.monotonic()
    local = sweep(env, tmp_path, tiny_model, "--grid", "seed=[0]", "--ray", "--workers", "1", "--out", "local")
    assert local.returncode == 0, local.stderr[-3000:]
    assert [r["status"] for r in read_index(tmp_path / "local")] == ["ok"]
    assert not (home / ".ray").exists()  # nothing that changes how a later cluster is joined
    with ray_head(env, tmp_path, cpus=1) as address:
        joined = sweep(env, tmp_path, tiny_model, "--grid", "seed=[0,1]", "--ray", address, "--out", "joined")
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert [r["status"] for r in read_index(tmp_path / "joined")] == ["ok", "ok"]
    assert time.monotonic() - t0 < 400


@pytest.mark.slow
def test_a_local_ray_in_this_process_leaves_its_environment_as_it_found_it(tmp_path, tiny_model, home):
    """The same from Python (a notebook's gn.sweep(ray=True)): Ray's own ray.init() would set
    RAY_AUTH_MODE=token in this process for good, and write the token file."""
    import ray

    from graphflow.graph.workflow import Workflow
    from graphflow.sweep import Sweep
    from graphflow.sweep.ray_runner import AUTH_VARS, RaySweep

    assert not ray.is_initialized()
    wf = Workflow.load(TXT2IMG).with_params(model=str(tiny_model), steps=2)
    results = list(Sweep(wf, {"seed": [0]}, out_dir=tmp_path / "s", runner=RaySweep("local", workers=1)))
    assert [r.status for r in results] == ["ok"]
    assert not ray.is_initialized() and not (home / ".ray").exists()
    assert {k: os.environ.get(k) for k in AUTH_VARS} == {k: None for k in AUTH_VARS}


@pytest.mark.slow
def test_a_refused_token_is_named_not_reported_as_unreachable(tmp_path, tiny_model, home):
    head_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": new_token()}
    with ray_head(head_env, tmp_path, cpus=1) as address:
        plain = {k: v for k, v in head_env.items() if not k.startswith("RAY_AUTH")}
        t0 = time.monotonic()
        none = sweep(plain, tmp_path, tiny_model, "--grid", "seed=[0]", "--ray", address, "--out", "a", timeout=120)
        wrong = sweep({**head_env, "RAY_AUTH_TOKEN": new_token()}, tmp_path, tiny_model, "--grid", "seed=[0]",
                      "--ray", address, "--out", "b", timeout=120)
        seconds = time.monotonic() - t0
    assert none.returncode == 2 and wrong.returncode == 2, (none.stderr[-2000:], wrong.stderr[-2000:])
    assert none.stderr.strip() == (
        f"graphflow sweep: error: the Ray cluster at '{address}' is up but refused this process: it uses token "
        "authentication and this process sends no token. Run with RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the head's token> "
        "(`ray get-auth-token` on the head machine prints its token)")
    assert wrong.stderr.strip() == (
        f"graphflow sweep: error: the Ray cluster at '{address}' is up but refused this process's token (from "
        "RAY_AUTH_TOKEN): it was started with another one. Set RAY_AUTH_TOKEN to the head's token "
        "(`ray get-auth-token` on the head machine prints its token)")
    assert seconds < 60  # told at once, not after Ray's retries (20 s each, before)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unreachable_cluster_exits_2_naming_it(tmp_path, tiny_model, home):
    port = free_port()  # nothing listens there
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    code = ("import sys; from graphflow.cli import main\n"
            f"sys.exit(main(['sweep', {TXT2IMG!r}, '--set', 'model={tiny_model}', '--grid', 'seed=[0]', "
            f"'--ray', '127.0.0.1:{port}', '--out', 'o']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}': nothing answers there" in p.stderr
    assert "Traceback" not in p.stderr and "token" not in p.stderr


@pytest.mark.slow
def test_cli_ray_alone_starts_ray_and_ctrl_c_stops_it_cleanly(tmp_path, tiny_model, home):
    """`--ray` alone: a Ray started for the sweep and stopped after it. Ctrl-C after the first item:
    exit 130, the index holds whole lines of finished items only, no Ray process is left, and the
    home folder holds no token."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([GRAPHFLOW, "sweep", TXT2IMG, "--set", f"model={tiny_model}", "--set", "steps=30",
                             "--grid", "seed=[0,1,2,3,4,5,6,7]", "--ray", "--workers", "2", "--out", "sw", "--no-cache"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    index = tmp_path / "sw" / "index.jsonl"
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not (index.exists() and index.read_bytes().count(b"\n") >= 1):
            time.sleep(0.2)
        assert index.exists(), "no item finished in time"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    done = read_index(tmp_path / "sw")
    assert 1 <= len(done) < 8 and all(r["status"] == "ok" for r in done)
    assert index.read_bytes().endswith(b"\n")
    assert all((tmp_path / "sw" / r["files"][0]).exists() for r in done)
    leftover = subprocess.run(["pgrep", "-f", "ray::SweepWorker"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # the sweep's actors are gone with its Ray
    assert not (home / ".ray").exists()
