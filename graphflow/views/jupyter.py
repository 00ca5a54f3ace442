"""Teaches IPython (a notebook, a console) how graphflow's objects look, from here: the engine's
classes carry no ``_repr_*_`` hooks and import nothing of presentation. IPython's formatters take
the classes by module and name, so registering imports none of them either."""

from __future__ import annotations

from typing import Any

from graphflow.views.html import result_html, sweep_html, workflow_svg

#: (MIME type, module, class, function): what each object shows as
SHOWN_AS = (
    ("text/html", "graphflow.engine.results", "RunResult", result_html),
    ("text/html", "graphflow.sweep.items", "Sweep", sweep_html),
    ("image/svg+xml", "graphflow.graph.workflow", "Workflow", workflow_svg),
)


def register(ipython: Any) -> None:
    """Add graphflow's displays to ``ipython``'s formatters (an InteractiveShell)."""
    formatters = ipython.display_formatter.formatters
    for mime, module, name, show in SHOWN_AS:
        formatters[mime].for_type_by_name(module, name, show)
