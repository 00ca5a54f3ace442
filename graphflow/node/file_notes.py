"""What the files a bound workflow names are, in the words of the nodes that read them: each
input marked ``FileInput(describe=...)`` whose value is known before running (a literal or a
parameter) gets one line from its node library, for ``graphflow validate``. The engine only
walks the inputs; what a file means is the node library's business."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FileNote:
    node: str
    field: str
    value: str
    text: str
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "field": self.field, "value": self.value, "note": self.text, "ok": self.ok}


def file_notes(bound: Any) -> list[FileNote]:
    checked = bound.checked
    notes = []
    for nid, cls in sorted(checked.types.items()):
        for name, port in cls.inputs.items():
            describe = getattr(port.file, "describe", None) if port.file is not None else None
            if describe is None:
                continue
            fld = f"inputs.{name}"
            value = bound.value(nid, fld)
            if not isinstance(value, str):
                continue  # arrives through a link: known only when the graph runs
            try:
                text = describe(value)
            except Exception as e:  # the library's own words about what is wrong
                notes.append(FileNote(nid, fld, value, str(e), False))
                continue
            if text is not None:  # None: the value names no file (an optional input left empty)
                notes.append(FileNote(nid, fld, value, str(text), True))
    return notes
