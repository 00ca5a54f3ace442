"""The files a run reads, at run time: a path arriving through a link is held to the executor's
rules before the node runs, in the words validation uses; hashing a file for a fingerprint never
opens a device or a FIFO and reads no more than the ceiling; a graph bound elsewhere is checked
again under a confined executor's rules; a node opening a file through ``open_input`` gets them
whatever its declaration says."""

from __future__ import annotations

import os

import pytest
from pydantic import Field

from graphflow import Executor, Registry, ValidationFailed, Workflow
from graphflow.engine.fingerprint import content_id
from graphflow.node.builtin import Value
from graphflow.node.limits import Limits
from graphflow.node_api import Context, InputNotFound, InputRefused, Inputs, Node, Outputs, open_input
from tests.file_nodes import RUNS, read, scene, within


def invalid(wf, **kw) -> str:
    """The one problem validation finds with the workflow's file input."""
    with pytest.raises(ValidationFailed) as e:
        wf.bind(**kw)
    (p,) = e.value.problems
    return p.message


def failed(ex: Executor, wf) -> tuple[str, str, str]:
    """(node, code, message) of the one node that failed; nothing ran for it."""
    r = within(60, ex.run, wf)
    assert not r.ok and len(r.errors) == 1 and RUNS["read"] == 0
    e = r.errors[0]
    return e.node, e.exc_type, e.message


@pytest.fixture(autouse=True)
def _clean_runs():
    RUNS.clear()


def test_a_linked_path_is_checked_when_it_arrives_in_the_words_of_validation(tmp_path):
    s = scene(tmp_path)
    roots = [s["allowed"]]
    ex = Executor(read_roots=roots, limits=Limits(input_bytes=1000))
    for path, code in [(s["secret"], "refused_file"), (s["escape"], "refused_file"), (s["fifo"], "refused_file"),
                       ("/dev/zero", "refused_file"), (s["allowed"] / "aa.txt", "missing_file")]:
        said = invalid(read(str(path)), read_roots=roots, limits=Limits(input_bytes=1000))
        assert failed(ex, read(str(path), linked=True)) == ("read", code, f"input 'path': {said}")
    assert failed(Executor(limits=Limits(input_bytes=14)), read(str(s["file"]), linked=True)) == (
        "read", "refused_file", f"input 'path': '{s['file']}' is 15 bytes, over the limit of 14 for 'input_bytes' "
                                "(raise it with --limit input_bytes=N)")
    assert failed(Executor(), read("/dev/zero", linked=True))[1:] == ("refused_file", "input 'path': '/dev/zero' is a character "
                                                                      "device, not a regular file; refused")
    r = ex.run(read(str(s["file"]), linked=True))
    assert r.ok and r["out"] == 15 and RUNS["read"] == 1


def test_hashing_never_opens_a_device_or_a_fifo_and_reads_within_the_ceiling(tmp_path):
    s = scene(tmp_path)
    with pytest.raises(InputRefused, match="'/dev/zero' is a character device, not a regular file; refused"):
        within(30, content_id, "/dev/zero")
    with pytest.raises(InputRefused, match="is a FIFO"):
        within(30, content_id, s["fifo"])
    os.mkfifo(s["model"] / "unet" / "pipe")
    with pytest.raises(InputRefused, match="pipe' is a FIFO"):  # a folder's files too
        within(30, content_id, s["model"])
    with pytest.raises(InputRefused, match="is 15 bytes, over the limit of 14"):
        content_id(s["file"], max_bytes=14)
    assert content_id(s["file"], max_bytes=15) == content_id(s["file"])


def test_a_file_swapped_for_a_fifo_after_validation_fails_its_node_and_stalls_nothing(tmp_path):
    s = scene(tmp_path)
    ex = Executor()
    bound = read(str(s["file"])).bind()
    s["file"].unlink()
    os.mkfifo(s["file"])
    assert failed(ex, bound) == ("read", "refused_file", f"input 'path': '{s['file']}' is a FIFO (named pipe), not a regular file; refused")


def test_a_graph_bound_under_other_rules_is_checked_again_by_a_confined_executor(tmp_path):
    s = scene(tmp_path)
    bound = read(str(s["secret"])).bind()  # unconfined: valid
    ex = Executor(read_roots=[s["allowed"]])
    with pytest.raises(ValidationFailed) as e:
        ex.submit(bound)
    assert [(p.code, p.node, p.field) for p in e.value.problems] == [("refused_file", "read", "inputs.path")]
    assert ex.run(read(str(s["file"])).bind()).ok


class ReadUndeclared(Node, name="ReadUndeclared", category="test"):
    """Opens a path it takes as a plain string (no FileInput): open_input still applies the rules."""

    class In(Inputs):
        path: str = Field(description="a file")

    class Out(Outputs):
        size: int = Field(description="bytes")

    def run(self, i, ctx: Context):
        with open_input(ctx, i.path) as f:
            return {"size": len(f.read())}


def test_open_input_holds_any_node_to_the_executor_rules(tmp_path):
    s = scene(tmp_path)
    reg = Registry([ReadUndeclared, Value])
    wf = lambda p: Workflow.from_dict({"format": 1, "nodes": {"r": {"type": "ReadUndeclared", "inputs": {"path": str(p)}}},  # noqa: E731
                                       "outputs": {"n": "r.size"}}, reg)
    ex = Executor(read_roots=[s["allowed"]])
    assert ex.run(wf(s["file"]))["n"] == 15
    r = ex.run(wf(s["secret"]))
    assert r.errors[0].exc_type == "InputRefused" and "is outside the folders this executor may read" in r.errors[0].message
    r = within(30, Executor().run, wf(s["fifo"]))
    assert r.errors[0].message == f"InputRefused: '{s['fifo']}' is a FIFO (named pipe), not a regular file; refused"
    with pytest.raises(InputNotFound):  # a bare Context (a unit test) is unconfined, with the default ceiling
        ReadUndeclared().run(ReadUndeclared.In(path=str(tmp_path / "none")), Context())
    assert ReadUndeclared().run(ReadUndeclared.In(path=str(s["secret"])), Context()) == {"size": 18}
