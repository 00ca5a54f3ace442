"""Nodes the server tests use to hold a run at a known point: ``Gate`` waits until a file exists
(or the run is cancelled), ``Nap`` sleeps a little, answering a cancel at once."""

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
