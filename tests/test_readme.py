"""The README is the front door: its node table is generated from the registry and must match."""

from pathlib import Path

from graphflow import registry
from graphflow.cli import nodes_markdown

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
