"""Nodes the server tests use to hold a run at a known point: ``Gate`` waits until a file exists
(or the run is cancelled), ``Nap`` sleeps a little, answering a cancel at once. And the hostile
ones, which never answer a cancel: ``Stall`` sleeps in C code, ``Hog`` allocates without end,
``Crash`` kills its own process, ``Huge`` returns an integer no JSON store holds."""

import ctypes
import os
import signal
import time
from pathlib import Path

from pydantic import Field

from graphflow.node_api import Inputs, Node, Outputs


class Gate(Node, name="Gate", category="test", pure=False):
    """Waits until the file ``path`` exists, then passes ``x`` through."""

    class In(Inputs):
        path: str = Field(description="the file to wait for")
        x: float = Field(0.0, description="passed through")
        timeout: float = Field(120.0, description="seconds before giving up")

    class Out(Outputs):
        x: float = Field(description="x")

    def run(self, i, ctx):
        deadline = time.monotonic() + i.timeout
        while not Path(i.path).exists():
            ctx.check_cancelled()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{i.path} never appeared")
            time.sleep(0.01)
        return {"x": i.x}


class Nap(Node, name="Nap", category="test", pure=False):
    """Sleeps ``seconds``, then passes ``x`` through."""

    class In(Inputs):
        seconds: float = Field(0.05, ge=0, le=5, description="how long")
        x: float = Field(0.0, description="passed through")

    class Out(Outputs):
        x: float = Field(description="x")

    def run(self, i, ctx):
        end = time.monotonic() + i.seconds
        while time.monotonic() < end:
            ctx.check_cancelled()
            time.sleep(0.005)
        return {"x": i.x}


class Stall(Node, name="Stall", category="test", pure=False):
    """Sleeps ``seconds`` inside libc, where no cancel reaches it (as a read of /dev/zero would)."""

    class In(Inputs):
        seconds: int = Field(600, description="how long")

    class Out(Outputs):
        x: float = Field(description="never")

    def run(self, i, ctx):
        ctypes.CDLL(None).sleep(i.seconds)
        return {"x": 0.0}


class Hog(Node, name="Hog", category="test", pure=False):
    """Allocates (and touches) 64 MiB after 64 MiB, forever; never looks at a cancel."""

    class In(Inputs):
        x: float = Field(0.0, description="unused")

    class Out(Outputs):
        x: float = Field(description="never")

    def run(self, i, ctx):
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))
            time.sleep(0.01)


class Crash(Node, name="Crash", category="test", pure=False):
    """Kills the process it runs in, as a segfault or the kernel's OOM killer would."""

    class In(Inputs):
        x: float = Field(0.0, description="unused")

    class Out(Outputs):
        x: float = Field(description="never")

    def run(self, i, ctx):
        os.kill(os.getpid(), signal.SIGKILL)
        return {"x": 0.0}


class Huge(Node, name="Huge", category="test"):
    """An integer of ``bits`` bits: Python holds it, JSON stores cannot."""

    class In(Inputs):
        bits: int = Field(80, description="its size")

    class Out(Outputs):
        n: int = Field(description="2 ** bits")

    def run(self, i, ctx):
        return {"n": 2 ** i.bits}


def one_node(type_name: str, port: str = "x") -> dict:
    """A workflow of one node of ``type_name``, its output ``port`` as the workflow's output."""
    return {"format": 1, "nodes": {"n": {"type": type_name}}, "outputs": {port: f"n.{port}"}}


def gate_workflow(path: str) -> dict:
    return {"format": 1, "nodes": {"gate": {"type": "Gate", "inputs": {"path": path}}}, "outputs": {"x": "gate.x"}}


def naps_workflow(steps: int, seconds: float) -> dict:
    """A loop of ``steps`` naps: a run that takes a while and reports each step."""
    return {"format": 1,
            "nodes": {"steps": {"type": "Range", "inputs": {"stop": steps}},
                      "loop": {"type": "Loop", "over": {"from": "steps.values"}, "carry": {"x": 0.0},
                               "body": {"nap": {"type": "Nap", "inputs": {"seconds": seconds, "x": {"from": "loop.item"}}}},
                               "next": {"x": {"from": "nap.x"}}}},
            "outputs": {"x": "loop.x"}}
