"""graphflow in a real Jupyter kernel (ipykernel, driven by nbclient / jupyter_client): the example
notebook executes top to bottom from the checkout, its run cells show pictures and progress
widgets, and the notebook's interrupt stops a running workflow at its next step."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "deep_dive.ipynb"
CELL_TIMEOUT = 600  # seconds a cell may take (a loaded 2-core machine; the whole notebook takes a few minutes)
WIDGET = "application/vnd.jupyter.widget-view+json"
IMG = re.compile(r'<img src="data:(image/\w+);base64,([^"]+)"')


@pytest.fixture(autouse=True)
def _quiet_kernel(monkeypatch):
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's frozen-modules warning
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def html_of(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def pictures(cell) -> list[np.ndarray]:
    out = []
    for _mime, data in IMG.findall(html_of(cell)):
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        out.append(np.asarray(im.convert("RGB")).astype(int))
    return out


def test_the_example_notebook_runs_top_to_bottom_with_pictures_inline(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    # the notebook as a checkout has it: examples/ beside workflows/ (its outputs go to the copy's out/)
    (tmp_path / "examples").mkdir()
    (tmp_path / "workflows").symlink_to(ROOT / "workflows")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # start from nothing, whatever outputs the file holds
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT, startup_timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "examples")}}).execute()
    seconds = time.perf_counter() - t0
    nbformat.write(nb, tmp_path / "executed.ipynb")  # kept with pytest's temporary folders, for a look
    print(f"deep_dive.ipynb executed in {seconds:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # every cell ran, in order
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]

    runs = [c for c in code if "gn.run(" in c.source or "gn.sweep(" in c.source]
    assert len(runs) >= 14
    for c in runs:
        assert any(WIDGET in o.get("data", {}) for o in c.outputs), f"no progress widget in {c.source!r}"
        if "zebrafish" in c.source or "print(" in c.source or c.source.splitlines()[-1].startswith("gn.profile("):
            continue  # a failed run, a printed number, a table of timings
        pics = pictures(c)
        assert pics, f"no picture from {c.source!r}"
        assert all(p.shape[0] >= 64 and p.shape[1] >= 64 for p in pics)

    graphs = [c for c in code if c.source.rstrip().splitlines()[-1] in ("txt2img", "token_replace")]
    assert len(graphs) == 2
    for c in graphs:
        (svg,) = [o["data"]["image/svg+xml"] for o in c.outputs if "image/svg+xml" in o.get("data", {})]
        assert "<title>cluster_denoise</title>" in svg

    def cell(snippet: str):
        (c,) = [c for c in code if snippet in c.source]
        return c

    # the first picture: a red circle on a blue background (background from the border, shape from the middle)
    img = pictures(cell('prompt="a red circle on a blue background", seed=0'))[0]
    border = np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3)]).mean(0)
    assert border[2] > border[0] + 80 and border[2] > border[1] + 80
    # "red" swapped for "green" in the token embeddings draws green, though the prompt says red
    img = pictures(cell('replacement="green"'))[0]
    green = ((img[..., 1] > img[..., 0] + 60) & (img[..., 1] > img[..., 2] + 60)).mean()
    red = ((img[..., 0] > img[..., 1] + 60) & (img[..., 0] > img[..., 2] + 60)).mean()
    assert green > 0.03 and red < 0.01
    # the failing cell names its node
    assert "✗ node <b>new_vec</b> (TokenVector) failed" in html_of(cell("zebrafish"))
    # the x0 frames play as two 30-frame animations
    gifs = [m for m, _ in IMG.findall(html_of(cell("x0_frames.json")))]
    assert gifs.count("image/gif") == 2 and "xt · 30 frames" in html_of(cell("x0_frames.json"))
    # sweeps: a contact sheet and one table row per item
    assert html_of(cell("img2img_sweep")).count("<tr>") == 1 + 4
    # the blue loss raised the blue channel
    text = "".join(o.get("text", "") for o in cell("mean blue").outputs)
    unguided, guided = map(float, re.search(r"mean blue: ([\d.]+) unguided, ([\d.]+) guided", text).groups())
    assert guided > unguided + 0.1


def test_the_notebook_interrupt_stops_a_running_workflow_at_its_next_step(tmp_path):
    from jupyter_client.manager import start_new_kernel

    marker = tmp_path / "step2"
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120, cwd=str(tmp_path))
    try:
        def run(code: str, timeout: float = 120) -> tuple[dict, str]:
            out: list[str] = []

            def hook(msg):
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
            reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
            return reply["content"], "".join(out)

        setup = f"""
import graphflow
from graphflow import notebook as gn
from graphflow.engine import events as ev
ex = gn.executor(out_dir="out")
steps = []
def hook(e):
    if isinstance(e, ev.LoopStep):
        steps.append(e.index)
        if e.index == 2:
            open({str(marker)!r}, "w").close()
ex.subscribe(hook, on_run_thread=True)
wf = graphflow.load({str(ROOT / 'workflows' / 'txt2img.json')!r})
"""
        assert run(setup)[0]["status"] == "ok"
        msg_id = kc.execute("r = gn.run(wf, steps=500)")  # 500 steps: many seconds, even on a fast machine
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, "the run never reached step 2"
            assert not kc.shell_channel.msg_ready(), f"the cell ended before step 2: {kc.get_shell_msg()['content']}"
            time.sleep(0.05)
        km.interrupt_kernel()
        t0 = time.monotonic()
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - t0 < 30
        content, first = run("print(len(steps), ex._current is None)")
        assert content["status"] == "ok"
        time.sleep(1.0)
        _, second = run("print(len(steps), ex._current is None)")
        n = int(first.split()[0])
        assert 3 <= n < 100 and first == second and first.split()[1] == "True"  # stopped, and nothing goes on behind
        _, out = run("print(gn.run(wf, steps=3, progress=False).ok)")
        assert out.strip() == "True"  # the executor takes the next run
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
