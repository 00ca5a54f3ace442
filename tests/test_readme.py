"""The README is the front door: its node table is generated from the registry and must match."""

from pathlib import Path

from graphflow import registry
from graphflow.cli.inspect import nodes_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_node_table_matches_the_registry():
    text = README.read_text()
    start, end = text.index("<!-- nodes:start -->\n"), text.index("<!-- nodes:end -->")
    table = text[start + len("<!-- nodes:start -->\n") : end]
    assert table == nodes_markdown(registry()), "regenerate with: graphflow nodes --markdown"


def test_readme_lists_every_shipped_workflow():
    text = README.read_text()
    for wf in (README.parent / "workflows").glob("*.json"):
        assert f"| `{wf.stem}` |" in text


def test_readme_python_example_runs_as_written(tmp_path, capsys):
    """The README's Python API example, run with its paths pointed at a temporary folder."""
    text = README.read_text()
    start = text.index("## Python API")
    code = text[text.index("```python\n", start) + len("```python\n") : text.index("```\n", text.index("```python\n", start) + 10)]
    code = (code.replace('"workflows/', f'"{README.parent}/workflows/')
                .replace('".graphflow-cache"', repr(str(tmp_path / "cache")))
                .replace('out_dir="out"', f"out_dir={str(tmp_path / 'out')!r}")
                .replace("ex.subscribe(lambda e: print(e))", "events = []; ex.subscribe(events.append)"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["image"].shape == (1, 3, 64, 64)
    assert capsys.readouterr().out.split() == ["30", "memory"]
    assert len(list((tmp_path / "out").glob("txt2img_*.png"))) == 2


def test_readme_node_example_runs_as_written():
    """The *Writing nodes* example, imports included: a node that registers and runs."""
    import torch

    from graphflow import Context, Registry

    text = README.read_text()
    start = text.index("```python\n", text.index("## Writing nodes")) + len("```python\n")
    scope: dict = {}
    exec(compile(text[start:text.index("```\n", start)], "README.md", "exec"), scope)
    brighten = scope["Brighten"]
    assert Registry([brighten]).get("Brighten") is not None
    out = brighten().run(brighten.In(image=torch.full((1, 3, 2, 2), 0.5), amount=0.25), Context())
    assert out["image"].flatten().tolist() == [0.75] * 12


def test_readme_limits_example_runs_as_written():
    import re

    import graphflow

    text = README.read_text()
    call = re.search(r"`(Executor\(limits=graphflow\.Limits\(steps=2000\)\))`", text).group(1)
    assert eval(call, {"Executor": graphflow.Executor, "graphflow": graphflow}).limits.steps == 2000


def test_readme_models_sample_lists_every_shipped_model():
    """Each file graphflow ships appears in the README's `graphflow models` sample, with its kind and family."""
    from graphflow_nodes.catalog import catalog

    text = README.read_text()
    start = text.index("$ graphflow models")
    sample = text[start:text.index("```", start)]
    rows = [r for r in catalog() if "graphflow_nodes" in r["path"] or "/nodes/" in r["path"]]
    assert {r["name"] for r in rows} >= {"tiny-sd", "tiny-shapes-ddpm", "tiny-sd-cross.safetensors", "my-shape.safetensors"}
    for r in rows:
        assert any(line.split()[:2] == [r["kind"], r["name"]] and r["family"] in line for line in sample.splitlines()), r["name"]
