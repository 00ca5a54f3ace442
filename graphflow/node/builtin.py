"""Generic nodes that come with the engine: numbers, text, lists, writing a text file. They know
nothing of diffusion; they let a workflow compute a value, build a file name or a sweep."""

from __future__ import annotations

import operator
import string
from typing import Annotated, Any, Literal

from pydantic import Field

from graphflow.atomic import write_new
from graphflow.node.context import Context
from graphflow.node.declaration import Inputs, Node, Outputs
from graphflow.node.kinds import ANY, Kind, list_of
from graphflow.node.limits import Limit

AnyValue = Annotated[Any, ANY]
IntList = Annotated[list[int], list_of(Kind("int"))]


class Value(Node, name="Value", category="values"):
    """Names a value once so several nodes can link to it."""

    class In(Inputs):
        value: AnyValue = Field(description="any JSON value")

    class Out(Outputs):
        value: AnyValue = Field(description="the same value")

    def run(self, i: In, ctx: Context) -> dict:
        return {"value": i.value}


class Math(Node, name="Math", category="values"):
    """Arithmetic on two numbers, for values derived from parameters (a start step from a strength)."""

    class In(Inputs):
        a: float = Field(description="left operand")
        b: float = Field(0.0, description="right operand")
        op: Literal["add", "sub", "mul", "div", "min", "max", "pow"] = Field("add", description="operation")
        as_int: bool = Field(False, description="round the result down to an int")

    class Out(Outputs):
        result: float = Field(description="a op b")

    #: one table for every call (a table of lambdas built per call was a tenth of a chain's cost)
    OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
           "min": min, "max": max, "pow": operator.pow}

    def run(self, i: In, ctx: Context) -> dict:
        r = self.OPS[i.op](i.a, i.b)
        return {"result": int(r) if i.as_int else r}


class Range(Node, name="Range", category="values"):
    """A list of ints, like Python's range: something for a loop to iterate over."""

    class In(Inputs):
        start: int = Field(0, description="first value")
        stop: Annotated[int, Limit("list")] = Field(description="end (exclusive); at most the 'list' ceiling")
        step: int = Field(1, description="increment", ge=1)

    class Out(Outputs):
        values: IntList = Field(description="the ints")

    def run(self, i: In, ctx: Context) -> dict:
        return {"values": list(range(i.start, i.stop, i.step))}


class Text(Node, name="Text", category="text"):
    """Fills ``$name`` placeholders of a template (string.Template: no attribute access, so a
    workflow cannot reach into Python objects the way ``str.format`` could)."""

    class In(Inputs):
        template: str = Field(description="text with $name or ${name} placeholders")
        values: dict[str, Any] = Field(default_factory=dict, description="placeholder values written inline")
        value: AnyValue = Field(None, description="value for $value (linkable)")

    class Out(Outputs):
        text: str = Field(description="the filled-in text")

    def run(self, i: In, ctx: Context) -> dict:
        values = {**i.values, **({"value": i.value} if i.value is not None else {})}
        try:
            return {"text": string.Template(i.template).substitute(values)}
        except KeyError as e:
            raise ValueError(f"template placeholder ${e.args[0]} has no value") from None


class SaveText(Node, name="SaveText", category="output", pure=False, uses=("out_dir",)):
    """Writes text to a new file in the output folder, atomically (never a half-written file, never
    over an existing one: a taken name gets a number, output_00001.txt)."""

    class In(Inputs):
        text: AnyValue = Field(description="what to write (non-strings are converted with str())")
        filename: str = Field("output.txt", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100,
                              description="file name inside the output folder: up to 100 letters, digits, '_', '.' and '-', "
                                          "starting with a letter or digit (no folders, no '..')")

    class Out(Outputs):
        path: str = Field(description="where the file was written")

    def run(self, i: In, ctx: Context) -> dict:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        path = write_new(ctx.out_dir, i.filename, (str(i.text) + "\n").encode("utf-8"))
        return {"path": str(path)}
