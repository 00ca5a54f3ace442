"""A sweep owns its folder (graphflow/sweep/folder.py): each sweep gets one of its own by default,
a folder holding another sweep is refused unless --resume or --force (resume=True / force=True),
the same in the CLI and the Python API; and git ignores the default outputs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

import graphflow
from graphflow.cli import main
from graphflow.sweep import FolderInUse, Sweep
from graphflow.sweep.folder import NothingToResume, choose
from tests.sweep.test_sweep import HELLO, _isolated, lines  # noqa: F401  (an autouse fixture: each test in its own folder)

ROOT = Path(__file__).resolve().parents[2]
STAMP = r"\d{8}-\d{6}"


def exit_code(argv: list[str]) -> int:
    """``main``'s exit code, argparse's own errors (a SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def sums(folder: Path) -> dict[int, float]:
    """Each item's sum (its sum.txt: "the sum is 3.0"), by item number, as the index records it."""
    return {r["item"]: float((folder / r["files"][0]).read_text().split()[-1]) for r in lines(folder)}


def test_two_cli_sweeps_in_a_row_get_a_folder_each(tmp_path, capsys):
    assert main(["sweep", HELLO, "--grid", "n=[1,2]"]) == 0
    assert main(["sweep", HELLO, "--grid", "n=[3,4,5]"]) == 0
    err = capsys.readouterr().err
    folders = sorted((tmp_path / "sweeps").iterdir())
    assert len(folders) == 2 and not (tmp_path / "sweep").exists()
    assert all(re.fullmatch(rf"hello-{STAMP}(-2)?", f.name) for f in folders), [f.name for f in folders]
    first, second = folders if len(lines(folders[0])) == 2 else folders[::-1]
    assert sums(first) == {0: 0, 1: 1}  # each index holds its own sweep only
    assert sums(second) == {0: 3, 1: 6, 2: 10}
    for f in folders:  # each command says where it writes, and where its index is
        rel = f.relative_to(tmp_path)
        assert f"sweep of {len(lines(f))} items into {rel}/" in err and f"index: {rel / 'index.jsonl'}" in err


def test_two_sweeps_started_in_the_same_second_do_not_share_a_folder(tmp_path):
    wf = graphflow.load(HELLO)
    a = choose(wf, now=1_800_000_000.0)
    a.mkdir(parents=True)
    b = choose(wf, now=1_800_000_000.0)
    assert b == a.with_name(a.name + "-2") and b.parent == Path("sweeps")


def test_a_named_folder_holding_a_sweep_is_refused_then_resumed_then_replaced(tmp_path, capsys):
    assert main(["sweep", HELLO, "--grid", "n=[1,2]", "--name", "sums", "--quiet"]) == 0
    folder = tmp_path / "sweeps" / "sums"
    before = (folder / "index.jsonl").read_bytes()
    capsys.readouterr()

    assert main(["sweep", HELLO, "--grid", "n=[7,8,9]", "--name", "sums"]) == 2
    err = capsys.readouterr().err
    assert err == ("graphflow sweep: error: sweeps/sums/ already holds a sweep (2 items in its index.jsonl): --resume "
                   "continues it, --force replaces it, or --name/--out another folder\n")
    assert (folder / "index.jsonl").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "index.jsonl", "item_00000", "item_00001"]  # untouched

    # --resume: the two done items are skipped, the new one runs
    assert main(["sweep", HELLO, "--grid", "n=[1,2,3]", "--name", "sums", "--resume", "--quiet"]) == 0
    assert sums(folder) == {0: 0, 1: 1, 2: 3}

    # --force: the old sweep's index and item folders go, a file of the user's stays
    (folder / "notes.txt").write_text("mine")
    assert main(["sweep", HELLO, "--grid", "n=[5]", "--name", "sums", "--force", "--quiet"]) == 0
    assert sums(folder) == {0: 10}
    assert sorted(p.name for p in folder.iterdir()) == ["index.jsonl", "item_00000", "notes.txt"]

    capsys.readouterr()
    assert exit_code(["sweep", HELLO, "--grid", "n=[5]", "--name", "sums", "--force", "--resume"]) == 2
    assert "--resume: not allowed with argument --force" in capsys.readouterr().err
    assert exit_code(["sweep", HELLO, "--grid", "n=[5]", "--name", "sums", "--out", "x"]) == 2
    assert "--out: not allowed with argument --name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_without_a_name_continues_the_newest_sweep_of_that_workflow(tmp_path, capsys):
    assert main(["sweep", HELLO, "--grid", "n=[1,2,3]", "--resume"]) == 2
    assert "nothing to resume: no earlier sweep of hello in sweeps/" in capsys.readouterr().err
    old = tmp_path / "sweeps" / "hello-20000101-000000"  # an older sweep of the same workflow
    old.mkdir(parents=True)
    (old / "index.jsonl").write_bytes(b"")
    assert main(["sweep", HELLO, "--grid", "n=[1,2]", "--quiet"]) == 0
    newest = max((tmp_path / "sweeps").iterdir())
    assert newest != old and len(lines(newest)) == 2
    assert main(["sweep", HELLO, "--grid", "n=[1,2,3]", "--resume", "--quiet"]) == 0
    assert sums(newest) == {0: 0, 1: 1, 2: 3}
    assert (old / "index.jsonl").read_bytes() == b"" and len(list((tmp_path / "sweeps").iterdir())) == 2


def test_the_python_api_chooses_and_refuses_as_the_cli_does(tmp_path):
    wf = graphflow.load(HELLO)
    done = list(graphflow.sweep(wf, grid={"n": [1, 2]}))
    folders = list((tmp_path / "sweeps").iterdir())
    assert len(done) == 2 and len(folders) == 1 and re.fullmatch(rf"hello-{STAMP}", folders[0].name)

    list(graphflow.sweep(wf, grid={"n": [1, 2]}, name="seeds"))
    with pytest.raises(FolderInUse) as e:
        graphflow.sweep(wf, grid={"n": [3]}, name="seeds")  # refused before anything is bound or run
    assert str(e.value) == ("sweeps/seeds already holds a sweep (index.jsonl, 2 items): resume=True continues it, "
                            "force=True replaces it, or give another out_dir or name")
    with pytest.raises(FolderInUse):
        Sweep(wf, {"n": [3]}, out_dir=tmp_path / "sweeps" / "seeds")  # the same folder by its path
    resumed = graphflow.sweep(wf, grid={"n": [1, 2, 3]}, name="seeds", resume=True)
    assert [r.status for r in resumed] == ["skipped", "skipped", "ok"]
    assert [r.status for r in graphflow.sweep(wf, grid={"n": [4]}, name="seeds", force=True)] == ["ok"]
    assert sums(tmp_path / "sweeps" / "seeds") == {0: 6}

    with pytest.raises(ValueError, match="not both"):
        graphflow.sweep(wf, grid={"n": [1]}, name="a", out_dir="b")
    with pytest.raises(ValueError, match="one folder name under sweeps/"):
        graphflow.sweep(wf, grid={"n": [1]}, name="../elsewhere")
    shutil.rmtree(tmp_path / "sweeps")
    with pytest.raises(NothingToResume):
        graphflow.sweep(wf, grid={"n": [1]}, resume=True)
    made_in_memory = graphflow.Workflow.from_dict(orjson.loads(Path(HELLO).read_bytes()))
    assert choose(made_in_memory).name.startswith("sweep-")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_ignores_the_default_outputs():
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    paths = ["sweeps/txt2img-20260101-120000/index.jsonl", "sweeps/seeds/item_00000/image_00000.png",
             "sweep/index.jsonl", "out/txt2img_00000.png", "examples/sweeps/a/index.jsonl",
             "examples/out/mix_sweep/contact_sheet.png",
             ".graphflow-cache/entries/ab"]
    p = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *paths], capture_output=True, text=True)
    assert sorted(p.stdout.split()) == sorted(paths)
    kept = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "graphflow/sweep/items.py",
                           "tests/sweep/test_sweep.py",
                           "workflows/txt2img.json"], capture_output=True, text=True)
    assert kept.stdout == ""
