"""Where a run's files live (``OUT/runs/<id>/``) and its result as JSON: numbers and text inline,
files the run wrote as URLs under ``/api/files/{id}/``, tensors and images described (shape,
dtype, size), never serialized whole."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from graphflow.engine.results import RunResult

#: list items shown inline; a longer list is summarized
MAX_ITEMS = 1000
#: the server's run ids, which name the runs' folders
RUN_ID = re.compile(r"[0-9a-f]{32}")


def run_dir(out_root: Path, run_id: str) -> Path:
    return out_root / "runs" / run_id


def file_url(run_id: str, name: str) -> str:
    return f"/api/files/{run_id}/{quote(name)}"


def list_files(run_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """The plain files a run wrote into its folder (links and hidden temporaries left out)."""
    if not run_dir.is_dir():
        return []
    out = []
    for p in sorted(run_dir.rglob("*")):
        if p.is_symlink() or not p.is_file() or any(part.startswith(".") for part in p.relative_to(run_dir).parts):
            continue
        name = p.relative_to(run_dir).as_posix()
        out.append({"name": name, "url": file_url(run_id, name), "bytes": p.stat().st_size})
    return out


def jsonable(value: Any, run_dir: Path, run_id: str, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, Path)):
        text = str(value)
        try:
            p = Path(text)
            if p.is_absolute() or text.startswith(str(run_dir)):
                rel = p.resolve().relative_to(run_dir.resolve())
                if p.is_file():
                    return {"file": rel.as_posix(), "url": file_url(run_id, rel.as_posix())}
        except (ValueError, OSError):
            pass
        return text
    if depth > 8:
        return {"value": type(value).__name__}
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            return {"list": len(value), "first": [jsonable(v, run_dir, run_id, depth + 1) for v in value[:10]]}
        return [jsonable(v, run_dir, run_id, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v, run_dir, run_id, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        shape = [int(s) for s in shape]
        if not shape:  # a 0-d tensor or array is a number
            return jsonable(value.item(), run_dir, run_id, depth + 1)
        return {"tensor": {"shape": shape, "dtype": str(value.dtype).replace("torch.", "")}}
    size = getattr(value, "size", None)
    if hasattr(value, "mode") and isinstance(size, tuple):  # a PIL image
        return {"image": {"size": list(size), "mode": value.mode}}
    from graphflow.views.text import describe_value

    return {"value": describe_value(value)}


def summarize(result: RunResult, run_dir: Path, run_id: str, status: str) -> dict[str, Any]:
    """What ``GET /api/runs/{id}`` adds once a run has ended."""
    return {
        "seconds": round(result.seconds, 6),
        "outputs": {k: jsonable(v, run_dir, run_id) for k, v in result.outputs.items()},
        "missing": result.missing,
        "errors": [e.to_dict() for e in result.errors],
        "nodes": {k: {"type": s.type, "status": s.status, "runs": s.runs, "hits": s.hits, "seconds": round(s.seconds, 6)}
                  for k, s in result.stats.items()},
        "files": list_files(run_dir, run_id),
        "cache_errors": result.cache_errors,
    }


def storable_summary(result: RunResult, run_dir: Path, run_id: str, sources: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The run's status and summary, made sure to be storable: an output JSON cannot hold (an
    integer beyond 64 bits) is not stored; the run fails, naming the node that made it and why,
    rather than being recorded as a failure of the server. ``sources``: output name → the link
    (``node.port``) it comes from, to name that node."""
    status = result.status
    summary = summarize(result, run_dir, run_id, status)
    for name, value in list(summary["outputs"].items()):
        try:
            orjson.dumps(value)
        except (orjson.JSONEncodeError, TypeError) as e:
            link = (sources or {}).get(name)
            node = getattr(link, "node", None) or str(link or name).split(".")[0]
            summary["outputs"][name] = None
            summary["errors"].append({"node": node, "type": summary["nodes"].get(node, {}).get("type", ""), "exc_type": "Unstorable",
                                      "message": f"output {name!r} cannot be stored in the run's history: {e}", "iteration": None})
            status = "failed" if status == "done" else status
    return status, summary
