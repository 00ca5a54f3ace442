"""The README's conformance table, generated from the matrix's own cells (tests/conformance/test_conformance.py)
and the figures its last full run measured (tests/conformance/conformance_measured.json), so the table can
neither list a cell the suite does not run nor miss one it does.

    GRAPHFLOW_CONFORMANCE_OUT=/tmp/measured.json .venv/bin/python -m pytest tests/conformance/test_conformance.py
    .venv/bin/python -m tests.conformance.conformance_table /tmp/measured.json   # rewrites both files
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MEASURED = REPO / "tests" / "conformance" / "conformance_measured.json"
START, END = "<!-- conformance:start -->", "<!-- conformance:end -->"


def render(cells: list, measured: dict[str, float]) -> str:
    """One row per family, config and entry point, one column per scheduler; a cell lists the step
    counts the matrix runs, ✓ where every one measured 0.0, else the largest difference."""
    from tests.conformance.test_conformance import ALL_SCHEDULERS, STEPS, scheduler_config

    rows: dict[tuple[str, str, str], dict[str, list]] = {}
    for c in cells:
        rows.setdefault((c.family, c.config, c.entry), {}).setdefault(c.scheduler, []).append(c)
    lines = ["| family | scheduler config | entry point | " + " | ".join(ALL_SCHEDULERS) + " |",
             "|---|---|---|" + "---|" * len(ALL_SCHEDULERS)]
    for (family, config, entry), by_scheduler in rows.items():
        out = []
        for name in ALL_SCHEDULERS:
            group = by_scheduler.get(name, [])
            if not group:
                out.append("—")
                continue
            steps = [c.steps for c in group]
            counts = "1–7" if tuple(steps) == STEPS else ",".join(map(str, steps))
            worst = max(measured[c.id] for c in group)
            out.append(f"✓ {counts}" if worst == 0.0 else f"{worst:.1e} {counts}")
        label = f"{config} ({scheduler_config(config)['_class_name'].removesuffix('Scheduler')})"
        lines.append(f"| {family} | {label} | {entry} | " + " | ".join(out) + " |")
    exact = sum(1 for c in cells if measured[c.id] == 0.0)
    lines.append("")
    lines.append(f"{len(cells)} cells: {exact} exact (0.0), {len(cells) - exact} within the bound, 0 outside it.")
    return "\n".join(lines)


def readme_block(text: str) -> str:
    m = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if m is None:
        raise SystemExit(f"README.md has no {START} … {END} block")
    return m.group(1)


def main(measured_path: str) -> None:
    from tests.conformance.test_conformance import CELLS

    measured = json.loads(Path(measured_path).read_text())
    missing = [c.id for c in CELLS if c.id not in measured]
    if missing:
        raise SystemExit(f"{len(missing)} cells were not measured (run the whole matrix), e.g. {missing[0]}")
    measured = {c.id: measured[c.id] for c in CELLS}
    MEASURED.write_text(json.dumps(measured, indent=0) + "\n")
    text = README.read_text()
    README.write_text(text.replace(readme_block(text), render(CELLS, measured)))


if __name__ == "__main__":
    main(*sys.argv[1:])
