"""``graphflow import comfy PATH -o workflow.json``: a ComfyUI API prompt (JSON) or picture (PNG)
written as an ordinary graphflow workflow, to read, edit and run like any other."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_command(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("import", help="translate another program's workflow into a graphflow workflow",
                       description="Translate another program's workflow into a graphflow workflow file.")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    c = formats.add_parser("comfy", help="a ComfyUI API-format prompt (.json, as Export (API) writes) or a ComfyUI PNG",
                           description="Translate a ComfyUI API-format prompt (.json) or the prompt a ComfyUI PNG carries into a "
                                       "graphflow workflow: named ports, the sampler as graphflow's own denoising loop, params "
                                       "for seed, steps, cfg, prompts, size, denoise and checkpoint, node ids n<ComfyUI id>.")
    c.add_argument("path", help="the ComfyUI .json or .png")
    c.add_argument("-o", "--output", required=True, help="the workflow file to write ('-': standard output)")
    c.add_argument("--id-map", action="store_true", help="also print which graphflow nodes each ComfyUI node became")
    c.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import orjson

    from graphflow.node_api import EXIT_INVALID, EXIT_OK, load_json_file
    from graphflow.problems import Problem, ValidationFailed
    from graphflow_nodes.comfy.document import problems, raw_prompt
    from graphflow_nodes.comfy.translate import TranslationError, translate

    def untranslated(data, text, source):
        prompt = raw_prompt(data, text, source)
        return None if prompt is None else (prompt, None)

    try:
        prompt, _ = load_json_file(args.path, readers=[untranslated])
        if "format" in prompt or not isinstance(prompt, dict):
            raise ValidationFailed([Problem("not_comfy", f"{args.path} is not a ComfyUI API-format prompt ({{id: {{class_type, inputs}}}})"
                                                         + (": it is a graphflow workflow already" if "format" in prompt else ""))])
        try:
            workflow, _, id_map = translate(prompt)
        except TranslationError as e:
            raise ValidationFailed(problems(e, args.path)) from None
    except ValidationFailed as e:
        for p in e.problems:
            print(f"{args.path}: {p}", file=sys.stderr)
        return EXIT_INVALID
    text = orjson.dumps(workflow, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {len(workflow['nodes'])} nodes, params {', '.join(workflow['params'])}", file=sys.stderr)
    if args.id_map:
        for cid, ids in id_map.items():
            print(f"ComfyUI {cid} -> {', '.join(ids) or '(folded into its users)'}", file=sys.stderr)
    return EXIT_OK
