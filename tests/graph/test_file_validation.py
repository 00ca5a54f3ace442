"""Every file a workflow names is checked when it is bound, before anything runs: it must exist
(else the problem says where it was looked for and the nearest name), be a regular file within
``input_bytes``, and lie inside the read roots once links are followed; each problem names the
node and the field. Values arriving through links are left to the run (tests/engine)."""

from __future__ import annotations

import os

import pytest

from graphflow import ValidationFailed, Workflow
from graphflow.node.limits import Limits
from tests.file_nodes import file_registry, read, scene, within


def problems_of(wf, **kw) -> list[tuple]:
    with pytest.raises(ValidationFailed) as e:
        wf.bind(**kw)
    return [(p.code, p.node, p.field, p.message) for p in e.value.problems]


def refused(message: str) -> list[tuple]:
    return [("refused_file", "read", "inputs.path", message)]


def test_a_file_outside_the_read_roots_is_refused_naming_node_and_field(tmp_path):
    s = scene(tmp_path)
    roots = [s["allowed"]]
    allowed = os.path.realpath(s["allowed"])
    assert problems_of(read(str(s["secret"])), read_roots=roots) == refused(
        f"'{s['secret']}' is outside the folders this executor may read (allowed: {allowed})")
    assert read(str(s["file"])).bind(read_roots=roots).files.roots == (allowed,)
    assert read(str(s["secret"])).bind().files.roots is None  # unconfined (graphflow run on one's own machine): read


def test_a_link_that_leads_out_of_a_root_is_outside(tmp_path):
    s = scene(tmp_path)
    allowed = os.path.realpath(s["allowed"])
    assert problems_of(read(str(s["escape"])), read_roots=[s["allowed"]]) == refused(
        f"'{s['escape']}' (a link to {os.path.realpath(s['secret'])}) is outside the folders this executor may read (allowed: {allowed})")
    # the same inside a folder input: each of its files is held to the roots, links followed
    (s["model"] / "unet" / "more.bin").symlink_to(s["secret"])
    assert problems_of(read(str(s["model"]), node="CountFiles"), read_roots=[s["allowed"]]) == refused(
        f"'{s['model']}/unet/more.bin' (a link to {os.path.realpath(s['secret'])}) is outside the folders this executor may read "
        f"(allowed: {allowed})")


def test_a_device_or_a_fifo_is_refused_without_being_opened(tmp_path):
    s = scene(tmp_path)
    assert within(30, problems_of, read("/dev/zero")) == refused("'/dev/zero' is a character device, not a regular file; refused")
    assert within(30, problems_of, read(str(s["fifo"]))) == refused(f"'{s['fifo']}' is a FIFO (named pipe), not a regular file; refused")
    os.mkfifo(s["model"] / "unet" / "pipe")  # a folder input's files too
    assert within(30, problems_of, read(str(s["model"]), node="CountFiles")) == refused(
        f"'{s['model']}/unet/pipe' is a FIFO (named pipe), not a regular file; refused")


def test_a_file_over_input_bytes_is_refused(tmp_path):
    s = scene(tmp_path)  # a.txt holds 15 bytes
    assert problems_of(read(str(s["file"])), limits=Limits(input_bytes=14)) == refused(
        f"'{s['file']}' is 15 bytes, over the limit of 14 for 'input_bytes' (raise it with --limit input_bytes=N)")
    read(str(s["file"])).bind(limits=Limits(input_bytes=15))
    assert problems_of(read(str(s["model"]), node="CountFiles"), limits=Limits(input_bytes=63)) == refused(
        f"'{s['model']}/unet/weights.bin' is 64 bytes, over the limit of 63 for 'input_bytes' (raise it with --limit input_bytes=N)")


def test_a_missing_file_says_where_it_looked_and_what_is_near(tmp_path):
    s = scene(tmp_path)
    assert problems_of(read(str(s["allowed"] / "aa.txt"))) == [(
        "missing_file", "read", "inputs.path", f"no file named '{s['allowed'] / 'aa.txt'}' (looked in {s['allowed']}); "
        f"did you mean '{s['allowed'] / 'a.txt'}'?")]
    assert problems_of(read(str(s["allowed"] / "zzz.txt"))) == [(
        "missing_file", "read", "inputs.path", f"no file named '{s['allowed'] / 'zzz.txt'}' (looked in {s['allowed']})")]
    assert problems_of(read(str(s["model"]))) == refused(f"'{s['model']}' is a folder; a file is expected")


def test_values_from_parameters_are_checked_and_links_are_left_to_the_run(tmp_path):
    s = scene(tmp_path)
    wf = Workflow.from_dict({"format": 1, "params": {"p": {"type": "string", "default": str(s["file"])}},
                             "nodes": {"read": {"type": "ReadBytes", "inputs": {"path": {"param": "p"}}}}, "outputs": ["read"]},
                            file_registry())
    wf.bind()
    assert problems_of(wf.with_params(p="/dev/zero")) == refused("'/dev/zero' is a character device, not a regular file; refused")
    read("/dev/zero", linked=True).bind()  # known only when the graph runs
