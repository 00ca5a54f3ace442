"""LoRA files applied to model references, never to the loaded base.

``LoadLoRA`` reads a LoRA file's keys (diffusers/peft ``unet.…lora_A.weight``, or kohya's
``lora_unet_…``/``lora_te_…``), and returns the model references it was given with one more
patch each: a ``LoRAPatch`` naming the file by content, the component's prefix in the file and a
strength. No weights move in the node. When a node first asks the model manager for a patched
reference, the manager deep-copies the shared base and applies the patches in order
(``graphflow.engine.model_manager.load_patched``), so the base in memory never changes: a run with a LoRA, then
the same run without it, gives the base picture bit for bit, and the base loads once.

Stacking: each LoadLoRA appends its patch; ``(lora_a @ 0.7, lora_b @ 0.4)`` is another model than
``(lora_a @ 0.7)`` or than the base, each loaded once, each with its own cache entries.

SD3 and Flux: the denoiser is a transformer (``transformer.…lora_A.weight``, Flux's kohya
``lora_unet_double_blocks_…``/``lora_unet_single_blocks_…`` converted by diffusers'
``FluxLoraLoaderMixin``, SD3's kohya ``lora_unet_joint_blocks_…`` by sd3_kohya), patched through LoadLoRA's ``transformer`` input at ``unet_strength``
(ComfyUI's one "model" strength); their CLIP encoders (``text_encoder.``, SD3's ``text_encoder_2.``,
kohya's ``lora_te1_``) at ``text_encoder_strength``. The result equals the pipelines'
``load_lora_weights`` + ``set_adapters`` (tests/nodes/test_flow_lora.py).

Families: the file's prefixes are the components' own names (``unet``, ``text_encoder``, and for
SDXL ``text_encoder_2``; kohya's ``lora_te1_``/``lora_te2_``), so a reference's ``component`` names
its part of the file, and its ``family`` picks diffusers' key conversion (SDXL's loader maps its
block layout). A LoRA made for another family is refused by name before anything loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.kinds import TextEncoder, Transformer, UNet
from graphflow_nodes.loading.files import resolve_lora_path
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id

#: adapter name used while a patch is merged into its private copy (removed again at once)
ADAPTER = "graphflow_lora"
#: kohya prefixes -> the component whose weights they patch
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_transformer_": "transformer", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
#: components graphflow knows how to patch, per family; SD 2.x has SD 1.x's layout of parts
FAMILY_COMPONENTS = {"sdxl": ("unet", "text_encoder", "text_encoder_2"), "sd3": ("transformer", "text_encoder", "text_encoder_2"),
                     "flux": ("transformer", "text_encoder")}
#: the families whose denoiser is a transformer: a kohya file's ``lora_unet_`` weights patch it
TRANSFORMER_FAMILIES = ("sd3", "flux")
DEFAULT_COMPONENTS = ("unet", "text_encoder")
#: families whose LoRAs are refused by name (their UNet has another block layout; no conversion tested)
UNSUPPORTED_FAMILIES = ("sdxl-refiner",)


class LoRAError(ValueError):
    pass


def _loader(family: str):
    """diffusers' LoRA loader class for a family: its ``lora_state_dict`` converts kohya keys
    (SDXL's maps its block layout)."""
    if family == "flux":
        from diffusers.loaders import FluxLoraLoaderMixin

        return FluxLoraLoaderMixin
    if family == "sd3":
        from diffusers.loaders import SD3LoraLoaderMixin

        return SD3LoraLoaderMixin
    if family == "sdxl":
        from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

        return StableDiffusionXLLoraLoaderMixin
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    return StableDiffusionLoraLoaderMixin


def _check_suffix(path) -> None:
    if not str(path).endswith(".safetensors"):
        raise LoRAError(f"{path}: only .safetensors LoRA files are read (a pickled .ckpt/.bin/.pt file can run code when loaded)")


def lora_keys(path) -> list[str]:
    """The tensor names of a LoRA file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    _check_suffix(path)
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise LoRAError(f"{path} is not a readable safetensors file: {e}") from None


def read_lora_file(path: str) -> tuple[dict, dict | None]:
    """The tensors and diffusers' adapter metadata (rank, alpha per component) of a LoRA file.
    safetensors only: a pickle (``.ckpt``, ``.bin``, ``.pt``) could run code when read."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    _check_suffix(path)
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LoRAError(f"{path} is not a readable safetensors file: {e}") from None
    raw = header.get("lora_adapter_metadata")
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    return tensors, meta


def file_components(keys) -> set[str]:
    """Which components a LoRA file has weights for, from its key prefixes alone."""
    found = set()
    for k in keys:
        for pre, comp in KOHYA_PREFIXES.items():
            if k.startswith(pre):
                found.add(comp)
        head = k.split(".", 1)[0]
        if head in ("unet", "transformer", "text_encoder", "text_encoder_2"):
            found.add(head)
    return found


@lru_cache(maxsize=8)
def _converted(path: str, source: str, family: str, layout: int | None = None) -> tuple[dict, dict | None, dict | None]:
    """The file in diffusers' key layout with kohya alphas, its UNet part in peft's layout; cached
    per content (``source``), so the UNet and text-encoder patches of one file read it once.

    The UNet part is converted key by key here because diffusers' ``load_lora_adapter`` decides
    the layout from the first key alone, and the files diffusers' own training scripts write for
    a LoRA that also targets convolutions or feed-forward layers mix both layouts
    (``…to_q.lora.down.weight`` beside ``…conv1.lora_A.weight``): loaded as they are, one of the
    two halves is dropped.

    ``layout`` is what a kohya file's original-layout names need of the model: the UNet's
    ``layers_per_block`` (``lora_unet_input_blocks_1_1_…``, as A1111-era trainers write them, mapped
    to diffusers' blocks), or the SD3 transformer's ``num_layers`` (its last block's text side is
    laid out apart: sd3_kohya); None for a text encoder's patch."""
    from types import SimpleNamespace

    from diffusers.utils import convert_unet_state_dict_to_peft

    tensors, meta = read_lora_file(path)
    if family in TRANSFORMER_FAMILIES:
        return _converted_flow(tensors, meta, family, layout)
    unet_config = SimpleNamespace(layers_per_block=layout) if layout else None
    state, alphas = _loader(family).lora_state_dict(tensors, unet_config=unet_config)
    unet = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if unet:
        state = {**{k: v for k, v in state.items() if not k.startswith("unet.")},
                 **{"unet." + k: v for k, v in convert_unet_state_dict_to_peft(unet).items()}}
    return state, alphas, meta


def _converted_flow(tensors: dict, meta: dict | None, family: str, num_layers: int | None) -> tuple[dict, dict | None, dict | None]:
    """An SD3 or Flux LoRA in diffusers' layout, as the pipelines' ``load_lora_weights`` reads it:
    Flux's loader converts kohya, XLabs and BFL files (folding kohya's alphas into the weights),
    SD3's takes diffusers/peft keys as they are, and kohya's SD3 files (which diffusers does not
    convert) go through sd3_kohya."""
    from graphflow_nodes.loading.sd3_kohya import KohyaSD3Error, diffusers_state, encoder_state, is_kohya_sd3

    if family == "flux":
        state, alphas = _loader(family).lora_state_dict(dict(tensors), return_alphas=True)
    elif is_kohya_sd3(tensors):
        try:
            state, alphas = diffusers_state(tensors, num_layers) if num_layers is not None else encoder_state(tensors)
        except KohyaSD3Error as e:
            raise LoRAError(f"kohya-style SD3 LoRA: {e}") from None
    else:
        state, alphas = _loader(family).lora_state_dict(dict(tensors)), None
    return state, alphas or None, meta


@dataclass(frozen=True)
class LoRAPatch:
    """One LoRA file applied to one component at one strength: part of a patched reference's
    identity (the file by content; its path is where to read it, left out of equality)."""

    source: str
    path: str = field(compare=False)
    component: str
    family: str
    strength: float

    def apply(self, model: Any) -> None:
        """Merges this LoRA into ``model``, a private copy (never the shared base).

        peft does the arithmetic: diffusers' own loaders make the adapter layers from the file
        (rank, alpha and target modules worked out of the keys), the strength becomes the
        adapter's scale, then ``merge`` folds ``strength * alpha/r * B @ A`` into each weight and
        the adapter layers are removed. Merging (rather than keeping peft's layers) leaves an
        ordinary model of the base's class and speed, and makes stacking a sequence of merges."""
        layout = model.config.layers_per_block if self.component == "unet" else \
            model.config.num_layers if self.component == "transformer" and self.family == "sd3" else None
        state, alphas, meta = _converted(self.path, self.source, self.family, layout)
        self._check_shapes(model, state)
        if self.component == "transformer":
            self._apply_transformer(model, state, alphas, meta)
        elif self.component == "unet":
            self._apply_unet(model, state, alphas, meta)
        else:
            self._apply_text_encoder(model, state, alphas, meta)

    def _check_shapes(self, model, state) -> None:
        """Refuses a LoRA made for another model, naming a layer. Needed because transformers'
        ``load_adapter`` only reports mismatched shapes and goes on (leaving that layer's adapter
        at its random initialisation)."""
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

        prefix = self.component + "."
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not part:
            return
        if self.component not in ("unet", "transformer"):  # (the UNet part is in peft's layout already: _converted)
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        modules = dict(model.named_modules())
        for key, a in part.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")]
            module = modules.get(name) or modules.get(name.removeprefix("text_model."))
            if module is None and self.component == "transformer":  # peft would only warn, and leave it out
                raise LoRAError(f"{Path(self.path).name} does not fit this {self.family} transformer: it has no layer {name} "
                                "(a LoRA made for another model)")
            b = part.get(f"{name}.lora_B.weight")
            weight = getattr(module, "weight", None)
            if weight is None or b is None:
                continue
            if a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0]:
                raise LoRAError(
                    f"{Path(self.path).name} does not fit this {self.component}: at {name} it maps {a.shape[1]} → {b.shape[0]} "
                    f"features, the model's layer {weight.shape[1]} → {weight.shape[0]} (a LoRA made for another model)"
                )

    def _apply_unet(self, unet, state, alphas, meta) -> None:
        unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas, metadata=meta, adapter_name=ADAPTER)
        unet.set_adapters([ADAPTER], weights=[self.strength])
        unet.fuse_lora(adapter_names=[ADAPTER])
        unet.unload_lora()

    def _apply_transformer(self, transformer, state, alphas, meta) -> None:
        """As the pipelines' ``load_lora_into_transformer``, then merged as the UNet's are."""
        if not any(k.startswith("transformer.") for k in state):
            raise LoRAError(f"{self.path}: its weights match no layer of this {self.family} transformer")
        alphas = {k: v for k, v in (alphas or {}).items() if k.startswith("transformer.")} or None
        transformer.load_lora_adapter(state, prefix="transformer", network_alphas=alphas, metadata=meta, adapter_name=ADAPTER)
        transformer.set_adapters([ADAPTER], weights=[self.strength])
        transformer.fuse_lora(adapter_names=[ADAPTER])
        transformer.unload_lora()

    def _apply_text_encoder(self, te, state, alphas, meta) -> None:
        """diffusers' own text-encoder loader (which hands the adapter to transformers'
        ``load_adapter``: it works with peft 0.21.2, the registry's newest, while transformers'
        ``add_adapter`` asks for 0.22), then diffusers' fuse and unload."""
        from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch, fuse_text_encoder_lora
        from peft.tuners.tuners_utils import BaseTunerLayer

        _loader(self.family).load_lora_into_text_encoder(
            state, alphas, te, prefix=self.component, lora_scale=self.strength, adapter_name=ADAPTER,
            metadata=meta,
        )
        if not any(isinstance(m, BaseTunerLayer) for m in te.modules()):
            raise LoRAError(f"{self.path}: its {self.component} weights match no layer of this text encoder")
        fuse_text_encoder_lora(te, adapter_names=[ADAPTER])
        _remove_text_encoder_monkey_patch(te)


def patch_refs(refs: dict[str, Any], path, strengths: dict[str, float]) -> dict[str, Any]:
    """The references with this LoRA appended where the file has weights for them and the
    strength is not 0; the others come back unchanged (and share the base)."""
    keys = lora_keys(path)
    present = file_components(keys)
    if not present:
        sample = ", ".join(keys[:3])
        raise LoRAError(f"{path} holds no LoRA weights graphflow recognises (keys like {sample}); expected diffusers/peft "
                        "keys (unet.…lora_A.weight) or kohya keys (lora_unet_…, lora_te_…)")
    families = {getattr(r, "family", None) for r in refs.values() if r is not None}
    family = next(iter(families))
    if family == "sd3" and any(k.startswith("lora_te3_") for k in keys):
        raise LoRAError(f"{path} has T5 weights (lora_te3_…): graphflow patches SD3's transformer and CLIP encoders only, "
                        "as diffusers' SD3 loader does")
    if family in TRANSFORMER_FAMILIES and "unet" in present:  # kohya names the denoiser "unet" whatever it is
        present = (present - {"unet"}) | {"transformer"}
    if family in UNSUPPORTED_FAMILIES:
        raise LoRAError(f"{path}: LoRAs on an {family} model are not supported (graphflow converts SD and SDXL base LoRAs)")
    allowed = FAMILY_COMPONENTS.get(family, DEFAULT_COMPONENTS)
    foreign = present - set(allowed)
    if foreign:
        raise LoRAError(f"{path} has weights for {', '.join(sorted(foreign))}, which a {family} model does not have: "
                        f"it was made for another model family (SDXL's LoRAs patch two text encoders)")
    unwired = [c for c in present if c in refs and refs[c] is None and strengths.get(c, 0) != 0]
    if unwired:
        raise LoRAError(f"{path} has weights for {', '.join(sorted(unwired))}: connect that input too (or set its strength to 0)")
    source = content_id(path)
    out = {}
    for port, ref in refs.items():
        strength = strengths[port]
        if ref is None or strength == 0 or ref.component not in present:
            out[port] = ref
            continue
        out[port] = ref.with_patch(LoRAPatch(source, str(path), ref.component, ref.family, float(strength)))
    return out


class LoadLoRA(Node, name="LoadLoRA", category="model", disk_cache=False):
    """Applies a LoRA file to a model's UNet (SD3, Flux: transformer) and text encoders at the given
    strengths, as patched references: the loaded base is never changed, and several LoRAs stack
    (chain LoadLoRA nodes).
    Reads diffusers/peft LoRA files and kohya's (``lora_unet_…``, ``lora_te_…``)."""

    class In(Inputs):
        unet: UNet | None = Field(None, description="from LoadModel (or another LoadLoRA); SD3 and Flux: connect transformer instead")
        text_encoder: TextEncoder = Field(description="from LoadModel (or another LoadLoRA)")
        path: Annotated[str, FileInput(resolve=resolve_lora_path)] = Field(
            description="a .safetensors LoRA: a name in the models folders' loras/, or a path"
        )
        unet_strength: float = Field(1.0, ge=-10.0, le=10.0, description="scale of the LoRA's UNet weights (0: leave the UNet as it is)")
        text_encoder_strength: float = Field(
            1.0, ge=-10.0, le=10.0, description="scale of its text-encoder weights (0: leave the text encoder as it is)"
        )
        text_encoder_2: TextEncoder | None = Field(
            None, description="SDXL's and SD3's second text encoder, patched at text_encoder_strength (as ComfyUI's one CLIP strength)"
        )
        transformer: Transformer | None = Field(None, description="SD3, Flux: the transformer (from LoadModel), patched at unet_strength")

    class Out(Outputs):
        unet: UNet = Field(description="the UNet with this LoRA (a reference; the base stays as it was)")
        text_encoder: TextEncoder = Field(description="the text encoder with this LoRA")
        text_encoder_2: TextEncoder | None = Field(None, description="the second text encoder with this LoRA (SDXL, SD3; else None)")
        transformer: Transformer | None = Field(None, description="the transformer with this LoRA (SD3, Flux; else None)")

    def run(self, i: In, ctx: Context) -> dict:
        refs = {"unet": i.unet, "text_encoder": i.text_encoder, "text_encoder_2": i.text_encoder_2, "transformer": i.transformer}
        if i.unet is None and i.transformer is None:
            raise ValueError("connect unet (SD 1.x/2.x, SDXL) or transformer (SD3, Flux) from LoadModel")
        for port, ref in refs.items():
            if ref is not None and not callable(getattr(ref, "with_patch", None)):
                raise TypeError(f"{port}: expected a model reference from LoadModel, got {type(ref).__name__}")
        path = checked_input(ctx, resolve_lora_path(i.path))
        return patch_refs(refs, path, {"unet": i.unet_strength, "text_encoder": i.text_encoder_strength,
                                       "text_encoder_2": i.text_encoder_strength, "transformer": i.unet_strength})
