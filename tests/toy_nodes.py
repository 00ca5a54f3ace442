"""Small pure-Python nodes for exercising the engine; each counts its executions so tests can
assert exactly how many times a node's code ran."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from pydantic import Field

from graphflow import Registry
from graphflow.node.builtin import Math, Range, SaveText, Text, Value
from graphflow.node_api import ANY, Context, Inputs, Node, Outputs, kind

RUNS: Counter[str] = Counter()

Vec = kind("vec", description="a small tensor")
Other = kind("other", description="a tensor of another kind")


def counted(ctx: Context) -> None:
    RUNS[ctx.node_id] += 1


class Num(Node, name="Num", category="toy"):
    """A constant number."""

    class In(Inputs):
        value: float = Field(0.0, description="the number", ge=-1e6, le=1e6)

    class Out(Outputs):
        value: float = Field(description="the number")

    def run(self, i, ctx):
        counted(ctx)
        return {"value": i.value}


class Add(Node, name="Add", category="toy"):
    """a + b."""

    class In(Inputs):
        a: float = Field(description="left")
        b: float = Field(0.0, description="right")

    class Out(Outputs):
        sum: float = Field(description="a + b")

    def run(self, i, ctx):
        counted(ctx)
        return {"sum": i.a + i.b}


class MakeVec(Node, name="MakeVec", category="toy"):
    """A 1-D torch tensor filled with a value."""

    class In(Inputs):
        value: float = Field(1.0, description="fill value")
        size: int = Field(4, ge=1, le=1_000_000, description="length")

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field(description="the tensor")

    def run(self, i, ctx):
        import torch

        counted(ctx)
        return {"vec": torch.full((i.size,), float(i.value))}


class ScaleVec(Node, name="ScaleVec", category="toy"):
    """vec * factor + offset."""

    class In(Inputs):
        vec: Annotated[Any, Vec] = Field(description="input")
        factor: float = Field(1.0, description="multiplier")
        offset: float = Field(0.0, description="added")

    class Out(Outputs):
        vec: Annotated[Any, Vec] = Field(description="result")

    def run(self, i, ctx):
        counted(ctx)
        return {"vec": i.vec * i.factor + i.offset}


class SumVec(Node, name="SumVec", category="toy"):
    """Sum of a tensor's elements."""

    class In(Inputs):
        vec: Annotated[Any, Vec] = Field(description="input")

    class Out(Outputs):
        total: float = Field(description="sum")

    def run(self, i, ctx):
        counted(ctx)
        return {"total": float(i.vec.sum())}


class TakeOther(Node, name="TakeOther", category="toy"):
    """Consumes a tensor of another kind (for type-mismatch tests)."""

    class In(Inputs):
        x: Annotated[Any, Other] = Field(description="input")

    class Out(Outputs):
        y: Annotated[Any, Other] = Field(description="output")

    def run(self, i, ctx):
        counted(ctx)
        return {"y": i.x}


class Fail(Node, name="Fail", category="toy"):
    """Raises, to test failure reporting."""

    class In(Inputs):
        x: float = Field(0.0, description="ignored")

    class Out(Outputs):
        y: float = Field(description="never produced")

    def run(self, i, ctx):
        counted(ctx)
        raise RuntimeError("boom")


class Record(Node, name="Record", category="toy", pure=False):
    """A side effect: appends its input to RECORDED."""

    class In(Inputs):
        value: Annotated[Any, ANY] = Field(description="what to record")

    class Out(Outputs):
        count: int = Field(description="records so far")

    def run(self, i, ctx):
        counted(ctx)
        RECORDED.append(i.value)
        return {"count": len(RECORDED)}


class Cancel(Node, name="CancelMe", category="toy"):
    """Asks the run to stop (simulates a Ctrl-C arriving while it runs)."""

    class In(Inputs):
        x: float = Field(0.0, description="passed through")

    class Out(Outputs):
        x: float = Field(description="x")

    def run(self, i, ctx):
        counted(ctx)
        ctx.cancel_event.set()
        return {"x": i.x}


class Iteration(Node, name="Iteration", category="toy", uses=("iteration",)):
    """The innermost loop's index: a node fed only literals that declares the iteration as a
    context input (so it must run on every iteration, not once)."""

    class In(Inputs):
        scale: float = Field(1.0, description="multiplier")

    class Out(Outputs):
        value: float = Field(description="iteration * scale")
        count: int = Field(description="ctx.iterations")

    def run(self, i, ctx):
        counted(ctx)
        return {"value": ctx.iteration * i.scale, "count": ctx.iterations}


RECORDED: list = []


def toy_registry() -> Registry:
    return Registry([Num, Add, MakeVec, ScaleVec, SumVec, TakeOther, Fail, Record, Cancel, Math, Range, Text, SaveText, Value])


def reset() -> None:
    RUNS.clear()
    RECORDED.clear()


def link(ref: str) -> dict:
    return {"from": ref}


def make(nodes: dict, outputs, params: dict | None = None):
    """A workflow of toy nodes from its parts."""
    from graphflow import Workflow

    doc = {"format": 1, "nodes": nodes, "outputs": outputs}
    if params:
        doc["params"] = params
    return Workflow.from_dict(doc, toy_registry())
