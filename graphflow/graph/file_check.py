"""The files a bound workflow names, checked before anything runs: every input marked
``FileInput`` whose value is known (written inline, a parameter, or the input's default) is
placed by its node library's resolver and held to the run's ``FileAccess`` rules, each failure
a problem naming the node and the field. Values that arrive through links are known only when
the graph runs; the runner checks them there with the same words (``FileAccess.locate``). The engine
knows nothing of what the files are: where a name is looked up, and what is near a mistyped
one, is the resolver's business."""

from __future__ import annotations

from graphflow.document.tree import Link, LinkList
from graphflow.node.file_access import FileAccess, InputFileError
from graphflow.problems import Problem


def file_inputs(checked) -> list[tuple]:
    """(node id, input name, port, given) of every file input, once per checked graph."""
    found = checked.memo.file_inputs
    if found is None:
        found = []
        for nid, cls in sorted(checked.types.items()):
            node = checked.nodes[nid]
            for name, port in cls.inputs.items():
                if port.file is not None:
                    found.append((nid, name, port, name in node.inputs))
        checked.memo.file_inputs = found
    return found


def file_problems(bound, files: FileAccess) -> list[Problem]:
    out = []
    for nid, name, port, given in file_inputs(bound.checked):
        fld = f"inputs.{name}"
        if given:
            if isinstance(bound.checked.nodes[nid].inputs[name], (Link, LinkList)):
                continue  # known when the graph runs
            value = bound.value(nid, fld)
        else:
            value = port.default
        try:
            files.locate(port.file, value)
        except InputFileError as e:
            out.append(Problem(e.code, str(e), node=nid, field=fld))
    return out

