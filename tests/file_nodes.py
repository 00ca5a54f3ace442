"""Nodes that read files as a plugin author writes them (``FileInput`` and ``open_input`` from the
node API, nothing else), a folder of files to read (some allowed, some not), and a bound on the
time a call may take: the file-input tests of the graph, engine and node-library suites share
them."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Annotated

from pydantic import Field

from graphflow import Registry, Workflow
from graphflow.node.builtin import Value
from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, open_input

RUNS: Counter[str] = Counter()


class ReadBytes(Node, name="ReadBytes", category="test"):
    """The length and first bytes of a file."""

    class In(Inputs):
        path: Annotated[str, FileInput()] = Field(description="a file")

    class Out(Outputs):
        size: int = Field(description="bytes read")
        head: str = Field(description="the first bytes, as text")

    def run(self, i, ctx: Context):
        RUNS[ctx.node_id] += 1
        with open_input(ctx, i.path) as f:
            data = f.read()
        return {"size": len(data), "head": data[:16].decode(errors="replace")}


class CountFiles(Node, name="CountFiles", category="test"):
    """How many files a folder holds (as a model folder is read: a folder of files)."""

    class In(Inputs):
        path: Annotated[str, FileInput(folder=True)] = Field(description="a folder")

    class Out(Outputs):
        files: int = Field(description="files in it")

    def run(self, i, ctx: Context):
        RUNS[ctx.node_id] += 1
        folder = checked_input(ctx, i.path, folder=True)
        return {"files": sum(len(f) for _, _, f in os.walk(folder))}


def file_registry() -> Registry:
    return Registry([ReadBytes, CountFiles, Value])


def read(path: str, *, linked: bool = False, node: str = "ReadBytes") -> Workflow:
    """One node reading ``path``, written inline or (``linked``) arriving from a Value node."""
    nodes = {"read": {"type": node, "inputs": {"path": {"from": "where.value"} if linked else path}}}
    if linked:
        nodes["where"] = {"type": "Value", "inputs": {"value": path}}
    out = "read.size" if node == "ReadBytes" else "read.files"
    return Workflow.from_dict({"format": 1, "nodes": nodes, "outputs": {"out": out}}, file_registry())


def scene(tmp_path: Path) -> dict[str, Path]:
    """allowed/ (a root) holding a file, a model-like folder and a link that leads out of it; a
    file outside every root; a FIFO inside the root."""
    allowed = tmp_path / "allowed"
    (allowed / "model" / "unet").mkdir(parents=True)
    (allowed / "a.txt").write_bytes(b"hello graphflow")
    (allowed / "model" / "model_index.json").write_text("{}")
    (allowed / "model" / "unet" / "weights.bin").write_bytes(b"\0" * 64)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not copy me out")
    (allowed / "escape.txt").symlink_to(secret)
    fifo = allowed / "fifo"
    os.mkfifo(fifo)
    return {"allowed": allowed, "file": allowed / "a.txt", "model": allowed / "model", "secret": secret,
            "escape": allowed / "escape.txt", "fifo": fifo}


def within(seconds: float, fn, *args, **kwargs):
    """``fn(*args)``, failing the test if it has not returned after ``seconds``: a read of
    ``/dev/zero`` or a FIFO would never return (the thread is left blocked, a daemon)."""
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s: it blocked"
    if "error" in box:
        raise box["error"]
    return box.get("value")
