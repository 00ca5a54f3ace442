"""Workflow format 1 as pydantic models: the one declaration of the document's shape. The reader
(``document.py``) parses with them and the JSON Schema (``schema.py``) is generated from them, so
the two cannot disagree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
NODE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: the scope types: a body of nodes run once per item, with (Loop) or without (Map) carried state
SCOPE_TYPES = ("Loop", "Map")
#: the declared types a parameter may have; the one list CLI, checker, binder and schema read
ParamType = Literal["int", "float", "string", "bool", "list", "any"]
#: the JSON values each declared type accepts (a JSON boolean is no number; "any" takes all)
PARAM_VALUES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "string": (str,), "bool": (bool,), "list": (list,), "any": (object,)}

_Strict = ConfigDict(extra="forbid")


class WhenModel(BaseModel):
    model_config = _Strict
    every: int = Field(1, ge=1, description="run on every N-th iteration")
    start: int = Field(0, ge=0, description="first iteration on which the node runs")
    stop: int | None = Field(None, ge=0, description="iteration before which it stops running")


class NodeModel(BaseModel):
    model_config = _Strict
    type: str = Field(description="node type name (see `graphflow nodes`)")
    inputs: dict[str, Any] = Field(default_factory=dict, description="each input: a literal, a link, a parameter or a list of links")
    when: WhenModel | None = Field(None, description="only inside a loop body: the iterations the node runs on")
    otherwise: dict[str, Any] = Field(default_factory=dict, description="outputs on iterations the node skips")
    title: str | None = None


class ScopeModel(BaseModel):
    """A Loop (items in order, values carried from one to the next) or a Map (independent items)."""

    model_config = _Strict
    type: Literal["Loop", "Map"]
    over: Any = Field(description="the sequence to iterate: a link to a list or tensor")
    item: str = Field("item", pattern=NAME_PATTERN, description="the name of the current element inside the body")
    carry: dict[str, Any] = Field(default_factory=dict, description="Loop only: carried values and their initial values")
    body: dict[str, dict[str, Any]] = Field(description="the nodes (and inner scopes) run once per item")
    next: dict[str, Any] = Field(default_factory=dict, description="Loop only: each carried value's value for the next iteration")
    collect: dict[str, Any] = Field(default_factory=dict, description="per-item values gathered into lists")
    batch: int = Field(1, ge=1, le=4096, description="Map only: items advanced together, their batchable node calls (a model's) made once for all of them")
    title: str | None = None


class ParamModel(BaseModel):
    model_config = _Strict
    default: Any = None
    description: str = ""
    type: ParamType | None = None


class DocModel(BaseModel):
    model_config = _Strict
    format: int = Field(description="workflow format version")
    description: str = ""
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]]
    outputs: dict[str, Any] | list[str]
    meta: dict[str, Any] = Field(default_factory=dict, description="free-form data for tools; ignored by graphflow")
