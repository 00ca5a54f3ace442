"""Structured validation problems: every check reports into one list so the user sees all that is
wrong in one pass, each with a stable code for tools and the node and field it is about."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

#: a node id, field or quoted value longer than this is shortened to its two ends
MAX_NAME = 200
#: a whole message longer than this is shortened to its two ends
MAX_MESSAGE = 2000
_KEEP = 100  # characters kept at each end of a shortened name or quoted value
#: a quoted value: its opening quote starts a word and its closing quote ends one (so the text
#: between two short quoted names, 'a' ... 'b', is not taken for one long one)
_LONG_QUOTED = re.compile(rf"(?<!\w)'[^']{{{MAX_NAME},}}'(?!\w)|(?<!\w)\"[^\"]{{{MAX_NAME},}}\"(?!\w)")


def shorten(text: str, limit: int = MAX_NAME, keep: int = _KEEP) -> str:
    """``text`` itself, or its first and last ``keep`` characters around a note of how many
    were cut, when it is longer than ``limit``."""
    if len(text) <= limit:
        return text
    return f"{text[:keep]}…({len(text) - 2 * keep} characters cut)…{text[-keep:]}"


def shorten_message(message: str) -> str:
    """Every quoted value over MAX_NAME characters shortened, then the whole text if it is still
    over MAX_MESSAGE: a 10-million-character node type is reported, not echoed."""
    if len(message) <= MAX_NAME:
        return message
    message = _LONG_QUOTED.sub(lambda m: m[0][0] + shorten(m[0][1:-1]) + m[0][0], message)
    return shorten(message, MAX_MESSAGE, MAX_MESSAGE // 2 - 50)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow. Whoever builds it, an overlong message, node id or field
    (a hostile document's 10 MB name) is shortened here, so no code path can echo it whole."""

    code: str
    message: str
    node: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def __post_init__(self) -> None:
        if len(self.message) > MAX_NAME:
            object.__setattr__(self, "message", shorten_message(self.message))
        if self.node is not None and len(self.node) > MAX_NAME:
            object.__setattr__(self, "node", shorten(self.node))
        if self.field is not None and len(self.field) > MAX_NAME:
            object.__setattr__(self, "field", shorten(self.field))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}, column {self.column}")
        if self.node is not None:
            where.append(f"node '{self.node}'")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = f"[{self.code}] " + (", ".join(where) + ": " if where else "")
        return prefix + self.message


class ValidationFailed(Exception):
    """A workflow (or parameter override) is invalid; nothing has run."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        n = len(problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} found:"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))
