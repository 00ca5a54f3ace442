"""The hook through which ``graphflow run`` and ``validate`` read ComfyUI files directly: the
library registers ``read`` with the registry (``Registry.add_reader``), and the document reader
hands it any JSON object without graphflow's ``format`` key and any PNG without graphflow's
chunks. A ComfyUI API prompt (or ``/prompt``'s body, ``{"prompt": {...}}``) and a ComfyUI PNG's
``prompt`` chunk are translated; ComfyUI's editor format (``nodes`` and ``links`` lists) is
refused with the way to get the API format. Anything else is left to the engine's reader."""

from __future__ import annotations

from typing import Any

from graphflow.problems import Problem, ValidationFailed


def is_prompt(data: Any) -> bool:
    """A ComfyUI API prompt: an object some of whose values are nodes with a ``class_type``."""
    return isinstance(data, dict) and bool(data) and any(isinstance(v, dict) and "class_type" in v for v in data.values())


def is_editor_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def problems(e, source: str) -> list[Problem]:
    """A TranslationError as graphflow's problems, one per ComfyUI node error, each naming the
    ComfyUI node id and its input."""
    out = [Problem("comfy_" + x["type"], f"ComfyUI node {nid} ({err['class_type']}): {x['message']}"
                   + (f" ({x['details']})" if x["details"] else ""), node=None, field=x["extra_info"].get("input_name"))
           for nid, err in e.node_errors.items() for x in err["errors"]]
    return out or [Problem("comfy_" + e.error["type"], f"{source}: {e.error['message']}" + (f" ({e.error['details']})" if e.error["details"] else ""))]


def translated(prompt: dict, source: str) -> tuple[dict, dict]:
    from graphflow_nodes.comfy.translate import TranslationError, translate

    try:
        workflow, params, _ = translate(prompt)
    except TranslationError as e:
        raise ValidationFailed(problems(e, source)) from None
    return workflow, params


def raw_prompt(data: dict | None, text: dict[str, str] | None, source: str) -> dict | None:
    """The ComfyUI API prompt a JSON object or a PNG's text chunks hold, untranslated; None for
    neither; refused for ComfyUI's editor format and for a ComfyUI PNG without its prompt."""
    if data is not None:
        if isinstance(data.get("prompt"), dict) and is_prompt(data["prompt"]):
            return data["prompt"]  # the body a ComfyUI client POSTs to /prompt
        if is_prompt(data):
            return data
        if is_editor_workflow(data):
            raise ValidationFailed([Problem("comfy_editor_format", f"{source} is a ComfyUI editor workflow (nodes and links), not the API "
                                                                   "format: in ComfyUI use Workflow → Export (API), or give the PNG it saved")])
        return None
    if "prompt" in text:
        from graphflow.node_api import parse_json

        prompt = parse_json(text["prompt"], f"{source} (ComfyUI prompt chunk)")
        if not is_prompt(prompt):
            raise ValidationFailed([Problem("invalid_png", f"{source}: its ComfyUI prompt chunk is not an API-format prompt")])
        return prompt
    if "workflow" in text:
        raise ValidationFailed([Problem("invalid_png", f"{source} holds a ComfyUI editor workflow but no prompt chunk (the API format "
                                                       "graphflow translates); ComfyUI writes both unless the picture was saved without its metadata")])
    return None


def read(data: dict | None, text: dict[str, str] | None, source: str) -> tuple[dict, dict] | None:
    """The registered reader: a ComfyUI prompt or picture as ``(workflow, params)``."""
    prompt = raw_prompt(data, text, source)
    return None if prompt is None else translated(prompt, source)
