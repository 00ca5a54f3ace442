"""What the command line answers when it is used wrong, in words a newcomer can act on: the list
of commands for a bare `graphflow`, and for a ``NAME=VALUE`` flag split by the shell
(``--set prompt=a red square``, ``--set seed 3``) the one argument that was meant, instead of
argparse's bare "unrecognized arguments"."""

from __future__ import annotations

import argparse
import shlex

#: the flags that take NAME=VALUE, with the form each takes
PAIR_FLAGS = {"--set": "NAME=VALUE", "--grid": "NAME=JSON_LIST", "--zip": "NAME=JSON_LIST", "--limit": "NAME=N"}


def command_list(parser: argparse.ArgumentParser, commands: argparse.Action) -> str:
    """Every command with its one-line help, as `git` answers a bare `git`."""
    rows = [(a.dest, a.help or "") for a in commands._choices_actions]  # noqa: SLF001 (argparse keeps them there)
    width = max(len(name) for name, _ in rows)
    lines = [f"usage: {parser.prog} COMMAND [options]", "", parser.description or "", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in rows]
    lines += ["", f"`{parser.prog} COMMAND --help` shows a command's options; the README has the whole story."]
    return "\n".join(lines)


def pair_hint(argv: list[str], extra: list[str]) -> str | None:
    """For arguments argparse did not recognize because a NAME=VALUE flag's value was split by
    the shell, the sentence that shows the one argument meant; None when the stray arguments
    follow no such flag. An unquoted value with spaces (``--set prompt=a red square``) comes back
    quoted; a name and value given as two arguments (``--set seed 3``) come back joined by '='."""
    for i, token in enumerate(argv):
        flag, eq, inline = token.partition("=")
        if flag not in PAIR_FLAGS:
            continue
        at = i if eq else i + 1
        if at >= len(argv):
            continue
        value = inline if eq else argv[at]
        rest = []
        for t in argv[at + 1:]:
            if t.startswith("-"):
                break
            rest.append(t)
        form = PAIR_FLAGS[flag]
        if rest and "=" not in value:  # the value is invalid anyway: the next word was meant to be in it
            joined = f"{value}={rest[1] if rest[0] == '=' and len(rest) > 1 else rest[0].removeprefix('=')}"
            return f"{flag} takes one {form} argument, '=' and no spaces between name and value: {flag} {joined}"
        if rest and "=" in value and all(t in extra for t in rest):
            name, _, v = value.partition("=")
            meant = f"{flag} {name}={shlex.quote(' '.join([v, *rest]))}"
            return f"{flag} takes one {form} argument: quote a value that has spaces, as in {meant}"
    return None


def generic_pair_hint(argv: list[str]) -> str | None:
    """When stray arguments cannot be traced to one flag but the command line has a NAME=VALUE
    flag, how such a flag is written."""
    flags = [f for f in PAIR_FLAGS if any(t == f or t.startswith(f + "=") for t in argv)]
    if not flags:
        return None
    return (f"{', '.join(flags)} take{'s one' if len(flags) == 1 else ' one each:'} NAME=VALUE argument: write --set seed=3, "
            f"and quote a value that has spaces, as in --set prompt='a red square'")
