"""The weighted-prompt syntax that ComfyUI and A1111 users write, read into (text, weight) fragments.

``(words)`` is 1.1 times as strong, ``[words]`` 1/1.1, ``(words:1.3)`` 1.3; groups nest;
``\\(``, ``\\)``, ``\\[``, ``\\]`` are the bracket characters themselves. What nesting does with an
explicit weight is where the tools differ: A1111 and compel multiply (``((a:1.5))`` is 1.65),
ComfyUI's ``comfy/sd1_clip.py`` lets the inner number replace the outer weight (1.5); ``explicit``
picks. Anything the tools would silently read as text (an unclosed bracket, ``(word:abc)``) is
refused here with its position, so a typo never changes a picture unnoticed.

Pure Python on purpose: the prompt is checked when a workflow is validated, without torch."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: what one pair of round (square) brackets multiplies (divides) by, as in A1111 and ComfyUI
BRACKET = 1.1
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_ESCAPES = {"(": "(", ")": ")", "[": "[", "]": "]", "\\": "\\"}


class PromptSyntaxError(ValueError):
    """A malformed weighted prompt; ``position`` counts characters from 1."""

    def __init__(self, message: str, position: int, text: str) -> None:
        self.position = position
        start = max(0, position - 1 - 20)
        around = ("…" if start else "") + text[start : position - 1] + "⟨" + text[position - 1 : position] + "⟩" + text[position : position + 20]
        super().__init__(f"{message} at character {position}: {around}")


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float


@dataclass
class _Group:
    opener: str  # "(" or "[" or "" (the whole prompt)
    position: int  # 1-based position of the opener
    parts: list  # str pieces and finished child groups, in order


def parse(text: str, explicit: str = "multiply") -> list[Fragment]:
    """The prompt as fragments in order, each with its weight: one per run of text between
    brackets, never joined across a bracket (``(a)(b)`` is two words, as ComfyUI reads it; an
    empty prompt is one empty fragment). ``explicit``: ``multiply`` (A1111,
    compel) or ``replace`` (ComfyUI) — what ``(x:w)`` inside another group means."""
    if explicit not in ("multiply", "replace"):
        raise ValueError(f"explicit must be 'multiply' or 'replace', not {explicit!r}")
    root = _Group("", 0, [])
    stack = [root]
    buf: list[str] = []

    def flush() -> None:
        if buf:
            stack[-1].parts.append("".join(buf))
            buf.clear()

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            buf.append(text[i + 1])
            i += 2
            continue
        if c in "([":
            flush()
            stack.append(_Group(c, i + 1, []))
        elif c in ")]":
            want = "(" if c == ")" else "["
            if len(stack) == 1:
                raise PromptSyntaxError(f"'{c}' closes no bracket (write \\{c} for the character itself)", i + 1, text)
            if stack[-1].opener != want:
                raise PromptSyntaxError(f"'{c}' closes the '{stack[-1].opener}' opened at character {stack[-1].position}", i + 1, text)
            flush()
            group = stack.pop()
            stack[-1].parts.append(group)
        else:
            buf.append(c)
        i += 1
    if len(stack) > 1:
        g = stack[-1]
        closer = ")" if g.opener == "(" else "]"
        raise PromptSyntaxError(f"'{g.opener}' is never closed (add '{closer}', or write \\{g.opener} for the character itself)", g.position, text)
    flush()
    out: list[Fragment] = []
    _emit(root, 1.0, explicit, text, out)
    return out or [Fragment("", 1.0)]


def _explicit_weight(group: _Group, text: str) -> tuple[float | None, list]:
    """A round group's ``:number`` suffix, read off its last text piece; its parts without it."""
    if group.opener == "" or not group.parts or not isinstance(group.parts[-1], str):
        return None, group.parts
    last = group.parts[-1]
    colon = last.rfind(":")
    if colon < 0:
        return None, group.parts
    value = last[colon + 1 :]
    # where the colon is in the prompt: the group's closing bracket is right after `last`
    end = _closing_position(group, text)
    where = end - (len(last) - colon)
    if group.opener == "[":
        raise PromptSyntaxError("square brackets take no weight (write (words:0.9) to weaken by a number; "
                                "[a:b:step] prompt editing is not supported)", where, text)
    if not _NUMBER.fullmatch(value):
        raise PromptSyntaxError(f"the weight {value.strip()!r} is not a number (write \\( \\) for literal brackets)", where + 1, text)
    return float(value), [*group.parts[:-1], last[:colon]] if last[:colon] else group.parts[:-1]


def _closing_position(group: _Group, text: str) -> int:
    """1-based position of the bracket that closes ``group`` (found by re-scanning: errors only)."""
    depth = 0
    i = group.position - 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            i += 2
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _emit(group: _Group, weight: float, explicit: str, text: str, out: list[Fragment]) -> None:
    if group.opener == "(":
        w, parts = _explicit_weight(group, text)
        if w is None:
            weight *= BRACKET
        else:
            weight = w if explicit == "replace" else weight * w
    elif group.opener == "[":
        _explicit_weight(group, text)  # refuses [a:0.5]
        weight /= BRACKET
        parts = group.parts
    else:
        parts = group.parts
    for p in parts:
        if isinstance(p, str):
            if p:
                out.append(Fragment(p, weight))
        else:
            _emit(p, weight, explicit, text, out)


def check(text: str) -> str:
    """A pydantic after-validator: the prompt unchanged, or its syntax error (position named)."""
    parse(text)
    return text
