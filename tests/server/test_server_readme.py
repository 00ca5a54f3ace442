"""The README's curl example, run as written against a real server."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from graphflow.client import ServerError
from tests.server_helpers import ROOT, ProcessServer

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_and_python_examples(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    start = text.index("## Server")
    block = text.index("```sh\nURL=", start) + len("```sh\n")
    script = text[block:text.index("```\n", block)]
    s = ProcessServer(tmp_path)
    try:
        script = script.replace("URL=http://127.0.0.1:8188", f"URL={s.url}")
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        # the Python client's example, as written, against the same server
        py = text.index("```python\nfrom graphflow.client import Client", start) + len("```python\n")
        code = text[py:text.index("```\n", py)].replace('"http://127.0.0.1:8188"', repr(s.url))
        (tmp_path / "py").mkdir()
        monkeypatch.chdir(tmp_path / "py")
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
        printed = capsys.readouterr().out.split("\n")
        assert printed[0] == "queued " and printed[-2] == "run_finished " and "loop_step denoise" in printed
        assert scope["run"]["status"] == "done" and (tmp_path / "py" / "picture.png").stat().st_size > 1000
        with pytest.raises(ServerError) as gone:  # the example's last line deleted it
            scope["c"].run(scope["run_id"])
        assert gone.value.status == 404
    finally:
        s.stop()
    lines = r.stdout.splitlines()
    events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    assert events[0] == "queued" and events[-1] == "run_finished" and events.count("loop_step") == 30
    assert '"status":"done"' in lines[-1]
    # "a yellow triangle on a black background": yellow in the middle, black at the corner
    px = np.asarray(Image.open(tmp_path / "picture.png").convert("RGB")).astype(int)
    assert px.shape == (64, 64, 3)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    yellow = int(((r > 150) & (g > 150) & (b < 100)).sum())
    dark = int((px.max(-1) < 60).sum())
    assert yellow > 200 and dark > 64 * 64 / 2 and yellow + dark > 64 * 64 * 0.85, (yellow, dark)
