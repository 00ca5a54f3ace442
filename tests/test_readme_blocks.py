"""Every code block of the README runs, so a snippet that has gone wrong fails the suite.

What runs (one test case per block, named by its number and first line):

- ``sh``/``bash`` blocks: with ``bash -euo pipefail`` (a failing line fails the block);
- ``console`` blocks, and plain blocks whose first line starts with ``$ ``: a transcript; each
  ``$`` command runs and its output must be the lines shown (runs of spaces are one space, ``…``
  stands for any text);
- ``python`` blocks: with this venv's Python, after the section's earlier Python blocks, as a
  reader following the section would have run them in one session;
- ``json`` blocks that are whole workflow documents (they have ``"format"``): checked against the
  registry. Fragments (a node, a loop) and plain listings are prose, not collected.

Each runs in a fresh folder that looks like the checkout (links to its files, ``.venv`` the venv
running the suite), so what a block writes (out/, sweep/, the cache) lands in a temporary folder;
the code under test is this checkout's (PYTHONPATH), the disk cache is the test's own, and pip
cannot reach an index. ``make`` takes its setup step as done: the suite runs in the venv it makes.

The line before a block may hold a directive, an HTML comment the rendered README does not show:

- ``<!-- readme-test: skip — WHY -->``: not run, saying why (the reason is required, and a test
  file it names must exist). For what cannot run here: a GPU, the package index, a server that
  runs until stopped, the suite itself.
- ``<!-- readme-test: writes PATH … -->``: the block ran, and it wrote each of these (globs,
  relative to its folder), as the README says it does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT_S = 600

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<verb>\w+)\s*(?P<rest>.*?)\s*-->\s*$")
SHELL, PYTHON, TRANSCRIPT, DOCUMENT = "sh", "python", "console", "json"
LANGS = {"sh": SHELL, "bash": SHELL, "shell": SHELL, "console": TRANSCRIPT, "python": PYTHON, "py": PYTHON, "json": DOCUMENT}

# Blocks known to be wrong while other changes fix them (matched by section and first line). The
# test still runs them: strict xfail, so a block that starts passing fails here until its entry goes.
KNOWN_WRONG = {
}


@dataclass
class Block:
    number: int
    line: int  # of the opening fence, 1-based
    section: str
    kind: str
    code: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "")

    @property
    def id(self) -> str:
        return f"{self.number:02d}-{self.kind}-{' '.join(self.first_line.split())[:48].strip()}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block that is code to run (see the module's docstring), in order."""
    lines = text.splitlines()
    blocks, section, i, number = [], "", 0, 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        if not m:
            i += 1
            continue
        indent, lang, start = m["indent"], m["lang"].lower(), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        number += 1
        code = "\n".join(body) + "\n"
        kind = LANGS.get(lang)
        if kind is None and not lang and code.lstrip().startswith("$ "):
            kind = TRANSCRIPT
        if kind == DOCUMENT:
            try:
                kind = DOCUMENT if "format" in json.loads(code) else None
            except (ValueError, TypeError):
                kind = None  # a fragment: a node or a loop shown alone
        if kind is None:
            continue
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        d = DIRECTIVE.match(prev)
        directives = {d["verb"]: d["rest"]} if d else {}
        blocks.append(Block(number, start + 1, section, kind, code, directives))
    return blocks


BLOCKS = readme_blocks(README.read_text())


def skip_reason(block: Block) -> str | None:
    if "skip" not in block.directives:
        return None
    return re.sub(r"^[—–:-]+\s*", "", block.directives["skip"]).strip()


# --- what the README's markup must be (quick) --------------------------------------------------------


def test_readme_has_blocks_of_every_kind():
    kinds = {b.kind for b in BLOCKS}
    assert kinds == {SHELL, PYTHON, TRANSCRIPT, DOCUMENT}, kinds


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.directives], ids=lambda b: b.id)
def test_directives_are_known_and_skips_say_why(block):
    (verb,) = block.directives
    assert verb in ("skip", "writes"), f"README.md:{block.line}: unknown readme-test directive {verb!r}"
    if verb == "skip":
        reason = skip_reason(block)
        assert len(reason.split()) >= 3, f"README.md:{block.line}: a skipped block needs its reason: {reason!r}"
        for named in re.findall(r"tests/[\w/]+\.py", reason):
            assert (ROOT / named).is_file(), f"README.md:{block.line}: the skip names {named}, which does not exist"
    else:
        assert block.directives["writes"].split(), f"README.md:{block.line}: writes what?"


def test_known_wrong_entries_name_blocks_that_exist():
    """An entry whose block has been rewritten is stale: remove it (the new block is tested as is)."""
    present = {(b.section, b.first_line) for b in BLOCKS}
    assert [k for k in KNOWN_WRONG if k not in present] == []


def test_directive_parsing_on_a_sample():
    sample = ("## One\n\n<!-- readme-test: skip — needs a GPU and a driver -->\n```sh\nnvidia-smi\n```\n"
              "- item:\n\n  ```python\n  print(1)\n  ```\n\n```json\n{\"a\": 1}\n```\n```\n$ graphflow --version\ngraphflow 0.1.0\n```\n"
              "```\nplain/   a listing\n```\n")
    got = [(b.section, b.kind, b.code, skip_reason(b)) for b in readme_blocks(sample)]
    assert got == [("One", SHELL, "nvidia-smi\n", "needs a GPU and a driver"), ("One", PYTHON, "print(1)\n", None),
                   ("One", TRANSCRIPT, "$ graphflow --version\ngraphflow 0.1.0\n", None)]


# --- running them (slow: the embedded model draws in several) ----------------------------------------


@pytest.fixture
def checkout_view(tmp_path) -> Path:
    """A folder that looks like the checkout: links to its files, none of its outputs."""
    view = tmp_path / "checkout"
    view.mkdir()
    leave_out = {".git", ".venv", "out", "sweep", "sweeps", ".graphflow-cache", "build", "dist", "__pycache__"}
    for entry in ROOT.iterdir():
        if entry.name not in leave_out and not entry.name.endswith(".egg-info"):
            (view / entry.name).symlink_to(entry)
    (view / ".venv").symlink_to(Path(sys.prefix))
    return view


def block_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAPHFLOW_MODELS", "GRAPHFLOW_DEBUG", "VIRTUAL_ENV")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
               GRAPHFLOW_CACHE_DIR=str(tmp_path / "cache"), PIP_NO_INDEX="1", HF_HUB_OFFLINE="1")
    return env


# `make`'s setup target would (re)install into the venv: it is already the venv this suite runs in
SHELL_PRELUDE = 'make() { command make -o .venv/bin/graphflow "$@"; }\n'


def run_shell(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", SHELL_PRELUDE + script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def transcript_line(line: str) -> re.Pattern:
    """A shown output line as a pattern: spaces loose, ``…`` for any text."""
    parts = [re.escape(p) for p in " ".join(line.split()).split("…")]
    return re.compile("^" + ".*".join(parts).replace(r"\ ", r"\s+") + "$")


EXIT_LINE = re.compile(r"^\(exit (\d+)\)$")


def check_transcript(code: str, cwd: Path, env: dict[str, str]) -> None:
    steps: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line)
    for command, shown in steps:
        # a last line "(exit N)" is the exit code the command is shown to end with (0 otherwise)
        expected = int(m.group(1)) if shown and (m := EXIT_LINE.match(shown[-1].strip())) else 0
        shown = shown[:-1] if expected else shown
        r = run_shell(command + " 2>&1", cwd, env)
        got, code = [" ".join(s.split()) for s in r.stdout.splitlines() if s.strip()], r.returncode
        assert code == expected, f"$ {command}\nexit {code}, shown {expected}\n{r.stdout}{r.stderr}"
        matches = len(got) == len(shown) and all(transcript_line(s).match(g) for s, g in zip(shown, got))
        assert matches, (
            f"$ {command}\nshown:\n" + "\n".join(shown) + "\nprinted:\n" + "\n".join(got))


def python_session(block: Block) -> str:
    """The section's earlier runnable Python blocks, then this one."""
    earlier = [b for b in BLOCKS if b.section == block.section and b.kind == PYTHON and b.number < block.number
               and skip_reason(b) is None]
    return "\n".join(b.code for b in earlier + [block])


def run_block(block: Block, cwd: Path, tmp_path: Path) -> None:
    env = block_env(tmp_path)
    if block.kind == SHELL:
        r = run_shell(block.code, cwd, env)
        code = r.returncode
        assert code == 0, f"README.md:{block.line}: exit {code}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    elif block.kind == PYTHON:
        script = tmp_path / f"readme_block_{block.number:02d}.py"
        script.write_text(python_session(block))
        r = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        code = r.returncode
        assert code == 0, f"README.md:{block.line}: exit {code}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    elif block.kind == TRANSCRIPT:
        check_transcript(block.code, cwd, env)
    else:
        import graphflow

        graphflow.Workflow.from_dict(json.loads(block.code), source=f"README.md:{block.line}").check()
    for pattern in block.directives.get("writes", "").split():
        assert list(cwd.glob(pattern)), f"README.md:{block.line}: the block wrote no {pattern}"


def runnable(b: Block):
    marks = [pytest.mark.slow] if b.kind != DOCUMENT else []
    reason = KNOWN_WRONG.get((b.section, b.first_line))
    if reason:
        marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError))
    return pytest.param(b, id=b.id, marks=marks)


@pytest.mark.parametrize("block", [runnable(b) for b in BLOCKS])
def test_readme_block_runs(block, checkout_view, tmp_path):
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(f"README.md:{block.line}: {reason}")
    run_block(block, checkout_view, tmp_path)
