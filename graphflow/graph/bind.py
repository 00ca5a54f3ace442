"""bind: checked graph + parameter values → bound graph. Only the values are checked here, each
against the inputs it feeds; the structure was checked once, for every parameter set to come."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from graphflow.document.depth import depth_problem
from graphflow.document.format import PARAM_VALUES
from graphflow.graph.check import CheckedGraph, did_you_mean, pyd_message
from graphflow.graph.file_check import file_problems
from graphflow.node.file_access import FileAccess
from graphflow.node.limits import Limits
from graphflow.problems import Problem, ValidationFailed

DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class BoundGraph:
    checked: CheckedGraph
    #: every parameter's value: the overrides, else the defaults
    params: dict[str, Any]
    #: (node id, field) -> the value a parameter gives there, coerced by the port it feeds
    values: dict[tuple[str, str], Any]
    #: the rules the files it names were checked under (an executor with other rules checks again)
    files: FileAccess | None = None

    def value(self, nid: str, fld: str) -> Any:
        """A bound input: a parameter's value where one feeds it, else the checked literal."""
        key = (nid, fld)
        v = self.values.get(key, _MISSING)
        return self.checked.literals.get(key) if v is _MISSING else v


_MISSING = object()


def bind(checked: CheckedGraph, overrides: dict[str, Any] | None = None, limits: Limits | None = None,
         read_roots=None) -> BoundGraph:
    """Raises ValidationFailed with every problem of the values at once, resource ceilings
    (``limits``, the defaults if None) and the files the workflow names included: each must
    exist, be a regular file within ``limits.input_bytes``, and lie inside ``read_roots`` (the
    folders a run may read; None: anywhere)."""
    doc = checked.doc
    if overrides is not None and not isinstance(overrides, dict):  # false, 0, "" or [] are not "no parameters"
        raise ValidationFailed([params_not_an_object(overrides)])
    overrides = overrides or {}
    limits = limits or DEFAULT_LIMITS
    problems: list[Problem] = []
    for name in overrides:
        if name not in doc.params:
            known = ", ".join(sorted(doc.params)) or "none"
            problems.append(Problem("unknown_param", f"no parameter '{name}'{did_you_mean(name, doc.params)} (known: {known})", field=f"params.{name}"))
    params: dict[str, Any] = {}
    wrong: set[str] = set()  # declared a type and given another: one problem, not one more per input it feeds
    for name, p in doc.params.items():
        if name in overrides:
            params[name] = overrides[name]
        elif p.has_default:
            params[name] = p.default
        else:
            continue
        v = params[name]
        deep = depth_problem(v, limits.depth, f"params.{name}", f"parameter '{name}'") if name in overrides else None
        if deep is not None:  # refused before anything walks it (the document's defaults were checked with it)
            wrong.add(name)
            problems.append(deep)
            continue
        if p.type:
            ok = isinstance(v, PARAM_VALUES[p.type]) and not (p.type in ("int", "float") and isinstance(v, bool))
            if not ok:
                wrong.add(name)
                problems.append(Problem("bad_param", f"parameter '{name}' is declared {p.type}, got {v!r}", field=f"params.{name}"))
    values: dict[tuple[str, str], Any] = {}
    for name, uses in checked.param_uses.items():
        for nid, fld, port in uses:
            if name not in params:
                problems.append(Problem("missing_param", f"parameter '{name}' has no default; set it", node=nid, field=fld))
                continue
            value = params[name]
            if name in wrong:
                continue
            if port is None:
                values[(nid, fld)] = value
                continue
            try:
                values[(nid, fld)] = port.adapter.validate_python(value, strict=True)
            except ValidationError as e:
                problems.append(Problem("bad_param", f"parameter '{name}' = {value!r} is not valid for input '{port.name}' ({port.kind}): "
                                        f"{pyd_message(e)}", node=nid, field=fld))
    files = FileAccess.of(read_roots, limits)
    bound = BoundGraph(checked, params, values, files)
    problems += _over_limits(bound, limits)
    problems += file_problems(bound, files)
    if problems:
        raise ValidationFailed(problems)
    return bound


def params_not_an_object(params: Any) -> Problem:
    """Parameter values come as an object of name -> value; ``false``, ``0``, ``""`` or ``[]``
    are refused, not read as "no parameters" (a client that sent them meant something else)."""
    shown = repr(params) if params is None or isinstance(params, (bool, int, float, str)) else f"a {type(params).__name__}"
    return Problem("bad_param", f"params must be an object (parameter name -> value), got {shown}", field="params")


def _over_limits(b: BoundGraph, limits: Limits) -> list[Problem]:
    out = []
    for nid, fld, name in b.checked.limited:
        v = b.value(nid, fld)
        ceiling = getattr(limits, name)
        if isinstance(v, (int, float)) and v > ceiling:
            out.append(Problem("over_limit", f"{fld.split('.')[-1]} = {v} is over the limit of {ceiling} for '{name}' "
                                             f"(raise it with --limit {name}=N, or Executor(limits=...))", node=nid, field=fld))
    lists = [(nid, fld, n) for nid, fld, n in b.checked.lists]
    lists += [(None, f"params.{k}", len(v)) for k, v in b.params.items() if isinstance(v, list)]
    for nid, fld, n in lists:
        if n > limits.list:
            out.append(Problem("over_limit", f"a list of {n} items is over the limit of {limits.list} for 'list' "
                                             f"(raise it with --limit list=N)", node=nid, field=fld))
    return out
