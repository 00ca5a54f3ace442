"""Structured validation problems: every check reports into one list so the user sees all that is
wrong in one pass, each with a stable code for tools and the node and field it is about."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    node: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

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
