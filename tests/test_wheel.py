"""The distribution as a user gets it: the wheel built from this source, installed into a fresh
venv, runs a shipped workflow by name from an empty folder, with no checkout anywhere in sight.

The fresh venv gets the wheel alone (``pip install --no-deps --no-index``: nothing is downloaded);
its dependencies (torch, diffusers, ...) are this venv's, seen through a ``.pth`` line naming a
folder of links to this venv's site-packages with every trace of graphflow taken out (its editable
install, its metadata), so the only graphflow it can import is the wheel's, which the test checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphflow.version import __version__

ROOT = Path(__file__).resolve().parents[1]
DIST = "graphflow-diffusion"
SHIPPED = sorted(p.name for p in (ROOT / "nodes" / "workflows").glob("*.json"))


def source_copy(dst: Path) -> Path:
    """The files git would ship (tracked, or new and not ignored), so nothing lying in the checkout
    (build/, an old egg-info, out/) reaches the wheel; a plain copy where there is no git."""
    files = None
    if shutil.which("git") and (ROOT / ".git").exists():
        r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True)
        if r.returncode == 0:
            files = [f for f in r.stdout.decode().split("\0") if f]
    if files is None:
        shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "out", ".graphflow-cache", "graphflow_nodes"))
        return dst
    for f in files:
        src = ROOT / f
        if not src.exists() and not src.is_symlink():  # deleted, not yet committed
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst / f)
        elif src.is_file():
            shutil.copy2(src, dst / f)
    return dst


def test_no_message_or_document_names_the_other_projects_distribution():
    """``pip install 'graphflow[ray]'`` would install an unrelated project: every hint says graphflow-diffusion."""
    wrong = sorted(str(p.relative_to(ROOT)) for top in ("graphflow", "nodes", "README.md", "Makefile", "pyproject.toml")
                   for p in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*.py"))
                   if re.search(r"\bgraphflow\[", p.read_text()))
    assert wrong == [], f"these name the distribution graphflow (another project): {wrong}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the source copy, the wheel built from it), offline: the venv's setuptools, no build isolation."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_copy(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheels = list((tmp / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return src, wheels[0]


@pytest.mark.slow
def test_wheel_is_named_and_versioned_as_the_source_says(built):
    _, wheel = built
    assert wheel.name == f"graphflow_diffusion-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        info = f"graphflow_diffusion-{__version__}.dist-info/"
        meta = Parser().parsestr(z.read(info + "METADATA").decode())
        entry_points = z.read(info + "entry_points.txt").decode()
    assert (meta["Name"], meta["Version"]) == (DIST, __version__)
    assert {"ray", "notebook", "test"} <= set(meta.get_all("Provides-Extra"))
    assert "graphflow = graphflow.cli:main" in entry_points
    assert "stable-diffusion = graphflow_nodes.library:register" in entry_points


@pytest.mark.slow
def test_wheel_holds_every_file_of_both_packages(built):
    """Every file under graphflow/ and nodes/ (code, the server's page, the workflows, the models
    with tiny-sd's CLIP vocabulary, the configs, the samples) is in the wheel, and nothing else of
    the checkout is (no tests, no top-level workflows/)."""
    src, wheel = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    expected = set()
    for top, installed in (("graphflow", "graphflow"), ("nodes", "graphflow_nodes")):
        for p in (src / top).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                expected.add(installed + "/" + p.relative_to(src / top).as_posix())
    assert expected - names == set()
    assert {n.split("/")[0] for n in names} == {"graphflow", "graphflow_nodes", f"graphflow_diffusion-{__version__}.dist-info"}
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("graphflow_nodes/workflows/")) == SHIPPED
    assert len(SHIPPED) >= 21  # the wheel holds exactly the source's workflows (above); a few dozen ship
    for must in ("graphflow/server/page.html", "graphflow_nodes/models/tiny-sd/tokenizer/vocab.json",
                 "graphflow_nodes/models/tiny-sd/tokenizer/merges.txt", "graphflow_nodes/models/tiny-sd/unet/diffusion_pytorch_model.safetensors",
                 "graphflow_nodes/models/tiny-shapes-ddpm/model_index.json", "graphflow_nodes/models/loras/tiny-sd-cross.safetensors",
                 "graphflow_nodes/configs/sdxl/unet/config.json", "graphflow_nodes/samples/red-circle-on-blue.png"):
        assert must in names


def dependencies_without_graphflow(folder: Path) -> Path:
    """Links to everything in this venv's site-packages except graphflow's own files and metadata
    (an editable install's finder would hand out the checkout; its metadata would register the
    node library twice)."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("graphflow", "__editable__")) or low.endswith(".pth"):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding the wheel, and the environment to run it in (no PYTHONPATH: the
    checkout must be invisible)."""
    _, wheel = built
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(str(dependencies_without_graphflow(tmp / "deps")) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GRAPHFLOW_MODELS")}
    env.update(GRAPHFLOW_CACHE_DIR=str(tmp / "cache"), HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return venv, env


@pytest.mark.slow
def test_installed_wheel_imports_itself_not_the_checkout(installed, tmp_path):
    venv, env = installed
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import graphflow, graphflow_nodes.library as l, importlib.metadata as m; "
                        "print(graphflow.__file__); print(l.WORKFLOWS); print(m.version('graphflow-diffusion'))"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    graphflow_file, workflows, version = r.stdout.splitlines()
    assert Path(graphflow_file).is_relative_to(venv) and Path(workflows).is_relative_to(venv), r.stdout
    assert version == __version__
    r = subprocess.run([str(venv / "bin" / "graphflow"), "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == f"graphflow {__version__}"


@pytest.mark.slow
def test_installed_wheel_runs_a_shipped_workflow_by_name_from_any_folder(installed, tmp_path):
    venv, env = installed
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    r = subprocess.run([str(venv / "bin" / "graphflow"), "run", "txt2img"], cwd=anywhere, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "image: tensor (1, 3, 64, 64) float32\nfiles: out/txt2img_00001.png\n"
    px = np.asarray(Image.open(anywhere / "out" / "txt2img_00001.png").convert("RGB")).astype(int)
    assert px.shape == (64, 64, 3)
    # "a red circle on a blue background": red in the middle, blue at the corners
    centre, corners = px[24:40, 24:40].reshape(-1, 3).mean(0), px[[0, 0, -1, -1], [0, -1, 0, -1]].mean(0)
    assert centre[0] > centre[2] + 60 and corners[2] > corners[0] + 60, (centre, corners)
    # a checkout's path, given where there is no checkout: the name that works instead
    r = subprocess.run([str(venv / "bin" / "graphflow"), "validate", "workflows/txt2img.json"], cwd=anywhere, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("workflows/txt2img.json: 1 problem found:\n  [unreadable_file] cannot read workflows/txt2img.json: "
                        "No such file or directory; did you mean the shipped workflow 'txt2img'?\n")
