"""The package's layers hold: import-linter's contracts (pyproject.toml) are kept, and no two
modules import each other, directly or through others (grimp's import graph, the one
import-linter builds, with imports inside functions counted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    """Every contract: the layers, the engine knowing nothing of presentation, nothing importing
    the CLI, the node library using graphflow.node_api alone. A new upward import fails here."""
    r = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout and "4 kept" in r.stdout


def test_no_import_cycle_between_modules():
    import grimp
    import networkx as nx

    graph = grimp.build_graph("graphflow", "graphflow_nodes", cache_dir=None)
    g = nx.DiGraph()
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            if imported != m and not m.startswith(imported + "."):  # a module importing its own package's __init__ is no cycle
                g.add_edge(m, imported)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []
