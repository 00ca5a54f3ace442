"""Run ComfyUI API-format prompts through ComfyUI's own executor, headless, on the CPU.

bench_comfy_real.py starts this in a process of its own: ComfyUI's top-level modules (``nodes``,
``execution``, ``utils``, ``server``…) share names with graphflow's tree, so the two cannot live in
one interpreter. Nothing of graphflow is imported here. What runs is ComfyUI's path for a queued
prompt, as its ``main.py`` prompt worker does it: ``execution.validate_prompt`` then
``execution.PromptExecutor.execute`` (its caches, its node classes from ``nodes.py``, SaveImage
writing the PNG), with a stand-in for the server object that only records the events it is sent.

ComfyUI imports torchvision at module level in code SD 1.x never reaches (Stable Cascade, Cosmos,
ACE); graphflow's environment cannot hold torchvision (the PyPI wheel breaks transformers beside
its torch), so when it is missing an empty module stands in for it. If SD 1.x code ever touched
it, the run would fail loudly with an AttributeError, not compute something else. ::

    python bench/comfy_headless.py --comfyui DIR --models DIR --out DIR [--comfy-arg=--fp32-text-enc] PROMPT.json...

Prints one JSON line per prompt: ``{"prompt": path, "ok": bool, "images": [paths], "seconds": s, "error": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
import types
import uuid
from pathlib import Path


def stand_in_torchvision() -> None:
    """An empty ``torchvision`` when there is none (see the module docstring for why)."""
    if importlib.util.find_spec("torchvision") is not None:
        return
    import transformers  # noqa: F401  (its "is torchvision installed?" probe runs now, and finds none)

    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.models"):
        sys.modules[name] = types.ModuleType(name)


def keep_float_pictures(nodes) -> None:
    """SaveImage also leaves the float picture it was given beside its PNG (``NAME.png.npy``).

    ComfyUI's PNG truncates to 8 bits (``astype(uint8)``) where graphflow rounds, so a PNG-to-PNG
    difference of one level can be the two conventions alone; the float lets the bench round both
    the same way. The hook only reads SaveImage's input; nothing upstream changes.
    """
    import numpy as np

    save_images = nodes.SaveImage.save_images

    def save_and_keep(self, images, *args, **kwargs):
        result = save_images(self, images, *args, **kwargs)
        for image, saved in zip(images, result["ui"]["images"]):
            np.save(Path(self.output_dir) / saved["subfolder"] / (saved["filename"] + ".npy"), image.float().cpu().numpy())
        return result

    nodes.SaveImage.save_images = save_and_keep


class Events:
    """What ComfyUI's ``PromptServer`` is to the executor, minus the sockets: it keeps the events."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.events: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI source tree (holds comfy/, nodes.py, execution.py)")
    ap.add_argument("--models", type=Path, required=True, help="folder whose checkpoints/ holds the prompts' ckpt_name files")
    ap.add_argument("--out", type=Path, required=True, help="ComfyUI's output directory")
    ap.add_argument("--comfy-arg", action="append", default=[], help="a ComfyUI command-line flag (repeatable), e.g. --fp32-text-enc")
    ap.add_argument("prompts", nargs="+", type=Path)
    a = ap.parse_args()

    sys.path.insert(0, str(a.comfyui.resolve()))
    stand_in_torchvision()
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [str(a.comfyui / "main.py"), "--cpu", *a.comfy_arg]
    import execution
    import folder_paths
    import nodes

    keep_float_pictures(nodes)

    folder_paths.set_output_directory(str(a.out.resolve()))  # main.py's job for --output-directory
    folder_paths.add_model_folder_path("checkpoints", str(a.models / "checkpoints"), is_default=True)
    server = Events()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    for path in a.prompts:
        prompt = json.loads(path.read_text())
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            print(json.dumps({"prompt": str(path), "ok": False, "error": valid[1], "node_errors": valid[3]}), flush=True)
            continue
        start = time.perf_counter()
        executor.execute(prompt, prompt_id, {}, valid[2])
        seconds = time.perf_counter() - start
        images = [str(Path(folder_paths.get_output_directory()) / im.get("subfolder", "") / im["filename"])
                  for out in executor.history_result.get("outputs", {}).values() for im in out.get("images", [])]
        error = next((d for e, d in server.events if e == "execution_error" and d.get("prompt_id") == prompt_id), None)
        print(json.dumps({"prompt": str(path), "ok": executor.success, "images": images, "seconds": round(seconds, 2),
                          "error": error and error.get("exception_message")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
