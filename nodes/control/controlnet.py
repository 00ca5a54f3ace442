"""ControlNet: a copy of the UNet's encoder that reads a control image (edges, depth, a pose) and
hands the UNet residuals for its down blocks and middle block, as diffusers'
StableDiffusionControlNetPipeline and StableDiffusionXLControlNetPipeline do.

``LoadControlNet`` reads a diffusers ControlNet folder, or a single ``.safetensors`` file (the
original ``control_model.…`` layout, or diffusers' keys), offline, into a reference; the weights
load when ApplyControlNet first runs. ``ApplyControlNet`` runs one ControlNet on the step's model
input, timestep, embeddings and control image, scaled by its conditioning scale while the step
lies inside its [start, end] fraction of the schedule (the pipelines' ``control_guidance_start``
and ``_end``); chained, each adds its residuals to the previous one's, as ``MultiControlNetModel``
sums them. The noise-prediction nodes (PredictNoise, PredictNoiseXL) take the sum as ``control``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.kinds import ControlImage, ControlNet, ControlResiduals, Embeddings, ModelInput, Pooled, TimeIds, Timestep
from graphflow_nodes.loading.checkpoint import PICKLE_SUFFIXES
from graphflow_nodes.loading.families import ModelError
from graphflow_nodes.loading.files import CONFIGS_DIR, locate, resolve_controlnet_path
from graphflow_nodes.loading.model_refs import offline
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id, digest

#: the shipped configs a single-file ControlNet is built with when LoadControlNet names none
SHIPPED_CONFIGS = {"sd": "controlnet-sd15", "sdxl": "controlnet-sdxl"}
#: a key only SDXL ControlNets have (their added text and time conditions), in either layout
SDXL_KEYS = ("add_embedding.linear_1.weight", "control_model.label_emb.0.0.weight", "label_emb.0.0.weight")


def resolve_controlnet_config(name: str) -> Path | None:
    """LoadControlNet's ``config``: a shipped config's name (``configs/controlnet-sd15``), else a
    ControlNet folder as ``resolve_controlnet_path`` finds it; None when empty."""
    if not name.strip():
        return None
    if "/" not in name and (CONFIGS_DIR / name / "config.json").is_file():
        return CONFIGS_DIR / name
    return locate(name, "controlnet")


#: the ControlNet classes LoadControlNet loads (diffusers folders), by the family they steer
CLASSES = {"ControlNetModel": ("sd", "sdxl"), "SD3ControlNetModel": ("sd3",), "FluxControlNetModel": ("flux",)}


def family_of_config(config: dict) -> str:
    """sd, sdxl or sd3: an SDXL ControlNet takes the pooled embedding and size conditions as SDXL's
    UNet does; an SD3 one is a few MMDiT blocks."""
    if config.get("_class_name") == "SD3ControlNetModel":
        return "sd3"
    if config.get("_class_name") == "FluxControlNetModel":
        return "flux"
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"


def file_keys(path: Path) -> list[str]:
    """The tensor names of a single file, from its header alone (no torch: validation reads it)."""
    from graphflow_nodes.loading.checkpoint import header_shapes

    return list(header_shapes(path))


def read_controlnet(path: Path) -> tuple[str, dict | None]:
    """(family, the folder's config or None for a single file) of a ControlNet, read without a
    weight; a ModelError naming what it is instead for anything else (a pickle is never opened)."""
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelError(f"{path} is not a diffusers ControlNet folder: it has no config.json")
        try:
            cfg = json.loads(cfg_file.read_text())
        except ValueError as e:
            raise ModelError(f"{cfg_file} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict) or cfg.get("_class_name") not in CLASSES:
            name = cfg.get("_class_name") if isinstance(cfg, dict) else None
            raise ModelError(f"{path} holds a {name or 'model without a _class_name'}, not a ControlNet ({', '.join(CLASSES)})")
        return family_of_config(cfg), cfg
    if path.suffix.lower() in PICKLE_SUFFIXES or path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path}: only .safetensors ControlNets are read (a pickled .pth/.ckpt/.bin file can run code when loaded)")
    keys = file_keys(path)
    if not any(k.endswith(("zero_convs.0.0.weight", "controlnet_down_blocks.0.weight")) for k in keys):
        raise ModelError(f"{path} is not a ControlNet: it has neither zero_convs (original layout) nor controlnet_down_blocks (diffusers)")
    if "difference" in keys:  # ComfyUI's DiffControlNetLoader adds such a file's weights to the checkpoint's UNet's
        raise ModelError(f"{path} is a weight-difference ControlNet (its weights are added to a checkpoint's UNet): not read; "
                         "use the full ControlNet file")
    return ("sdxl" if any(k in keys for k in SDXL_KEYS) else "sd"), None


def describe_controlnet(value: str) -> str:
    """One line for ``graphflow validate``: what a ControlNet is (LoadControlNet's refusal for
    anything else, before a weight loads)."""
    path = resolve_controlnet_path(value)
    family, cfg = read_controlnet(path)
    if cfg is not None:
        width = cfg.get("cross_attention_dim") or cfg.get("joint_attention_dim")
        return f"{family} ControlNet ({cfg['_class_name']} folder, text width {width}) at {path}"
    return f"{family} ControlNet (a single .safetensors file; LoadControlNet's config builds it) at {path}"


@dataclass(frozen=True)
class ControlNetRef:
    """A ControlNet named by its content (and, for a single file, the config it is built with)."""

    source: str
    path: str = field(compare=False)
    family: str
    config: str = field(default="", compare=False)  # single files: the folder holding config.json

    def load(self, manager: Any) -> Any:
        offline()
        from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel
        from graphflow_nodes.runtime import torch_dtype

        dtype = torch_dtype(manager.dtype)
        if self.config:
            model = single_file_controlnet(Path(self.path), Path(self.config)).to(dtype)
        else:
            cls = {"sd3": SD3ControlNetModel, "flux": FluxControlNetModel}.get(self.family, ControlNetModel)
            model = cls.from_pretrained(self.path, torch_dtype=dtype, local_files_only=True)
        model = model.to(manager.device).eval()
        model.requires_grad_(False)
        return model

    def __repr__(self) -> str:
        return f"ControlNetRef({self.family} {self.source[:16]}… at {self.path})"


def single_file_controlnet(path: Path, config: Path) -> Any:
    """A single-file ControlNet built with a config folder: diffusers' own key conversion
    (``convert_controlnet_checkpoint``: a file with diffusers' keys passes through), plus the
    added-condition embedding of SDXL files in the original layout (``label_emb``), which that
    conversion leaves out (``from_single_file`` then fails on the empty layer). Loaded strictly:
    a file that does not fit the config is refused naming the layers."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, LDM_CONTROLNET_KEY, convert_controlnet_checkpoint
    from safetensors.torch import load_file

    cfg = ControlNetModel.load_config(config)
    state = load_file(str(path))
    converted = convert_controlnet_checkpoint(state, cfg)
    if "time_embedding.linear_1.weight" not in state:  # the original layout
        ldm = {k.removeprefix(LDM_CONTROLNET_KEY): v for k, v in state.items()}
        for kind in ("addition_embed_type", "class_embed_type"):
            if cfg.get(kind):
                converted |= {hf: ldm[old] for hf, old in DIFFUSERS_TO_LDM_MAPPING["controlnet"][kind].items() if old in ldm}
    model = ControlNetModel.from_config(cfg)
    try:
        model.load_state_dict({k: v for k, v in converted.items() if v is not None}, strict=True)
    except RuntimeError as e:
        raise ModelError(f"the ControlNet {path} does not fit the config {config}: {' '.join(str(e).split())[:400]}") from None
    return model


def controlnet_ref(path: Path, config: Path | None, max_bytes: int | None = None) -> ControlNetRef:
    family, cfg = read_controlnet(path)
    if cfg is not None:
        if config is not None:
            raise ModelError(f"config applies to single-file ControlNets; {path} is a diffusers folder, which carries its own config")
        return ControlNetRef(content_id(path, max_bytes), str(path.resolve()), family)
    if config is None:
        config = CONFIGS_DIR / SHIPPED_CONFIGS[family]
    cfg_file = config / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"config {config} has no config.json (give a diffusers ControlNet folder of the file's architecture)")
    if family_of_config(json.loads(cfg_file.read_text())) != family:
        raise ModelError(f"{path} is an {family} ControlNet but config {config} is not")
    return ControlNetRef(digest([content_id(path, max_bytes), content_id(cfg_file)]), str(path.resolve()), family, str(config.resolve()))


class LoadControlNet(Node, name="LoadControlNet", category="model", disk_cache=False):
    """A ControlNet from local disk: a diffusers folder (``config.json`` + weights: a ControlNetModel
    for SD 1.x, 2.x or SDXL, an SD3ControlNetModel or a FluxControlNetModel) or, for SD 1.x/2.x and SDXL, a single
    ``.safetensors`` file in the original layout (``control_model.…``, as model sites ship them)
    or with diffusers' keys, built offline with ``config`` (default: the shipped SD 1.5 or SDXL
    ControlNet config, chosen from the file's keys). Pickles are refused unread. Only the
    folder's config or the file's header is read here; the weights load on first use."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_controlnet_path, describe=describe_controlnet, folder=True)] = Field(
            description="a ControlNet folder or .safetensors file: a name in the models folders' controlnet/, or a path")
        config: Annotated[str, FileInput(resolve=resolve_controlnet_config, folder=True)] = Field(
            "", description="single files only: a diffusers ControlNet folder of the file's architecture, or a shipped "
            "config (controlnet-sd15, controlnet-sdxl); empty: chosen from the file's keys")

    class Out(Outputs):
        controlnet: ControlNet = Field(description="the ControlNet, for ApplyControlNet")
        family: str = Field(description="sd (SD 1.x/2.x), sdxl, sd3 or flux: the base model family it was trained with")

    def run(self, i: In, ctx: Context) -> dict:
        path = checked_input(ctx, resolve_controlnet_path(i.path), folder=True)
        config = checked_input(ctx, resolve_controlnet_config(i.config), folder=True) if i.config.strip() else None
        ref = controlnet_ref(path, config, ctx.files.max_bytes)
        return {"controlnet": ref, "family": ref.family}


@dataclass(frozen=True)
class Residuals:
    """One ControlNet's (or a stack's summed) residuals: one per UNet down-block output, and the
    middle block's. Added as MultiControlNetModel adds them: the earlier sum first."""

    down: tuple
    mid: Any

    def __add__(self, other: Residuals) -> Residuals:
        return Residuals(tuple(a + b for a, b in zip(self.down, other.down)), self.mid + other.mid)


def active(step: int, steps: int, start: float, end: float) -> bool:
    """Whether step ``step`` of ``steps`` lies inside [start, end], by the pipelines' own rule
    (``controlnet_keep``): off when ``step/steps < start`` or ``(step+1)/steps > end``."""
    return not (step / steps < start or (step + 1) / steps > end)


def acting(i: Any) -> bool:
    """Whether an apply node's ControlNet runs at this step: its ``step`` of ``steps`` inside its
    [``start``, ``end``] window (a window that ends before it starts is refused). The SD, SD3 and
    Flux apply nodes share these inputs and this rule."""
    if i.start > i.end:
        raise ValueError(f"start ({i.start}) is after end ({i.end}): the ControlNet would never act")
    return active(i.step, i.steps, i.start, i.end)


def scaled(tensors: Any, scale: float) -> Any:
    """Residuals times an item's conditioning scale, as the ControlNets multiply them (``sample *
    conditioning_scale``), done per item after a batched call so items of different scales share
    it; None stays None (a Flux ControlNet without single blocks)."""
    return None if tensors is None else tuple(t * scale for t in tensors)


class ApplyControlNet(Node, name="ApplyControlNet", category="control", uses=("models",)):
    """Runs a ControlNet for this step: the UNet's model input (both halves of a guidance batch),
    timestep and text embeddings, with the control image, give residuals for the UNet's down
    blocks and middle block, times ``scale``. Outside its [start, end] fraction of the schedule
    the ControlNet adds nothing (and is not run). ``guess_mode`` runs it on the prompt's half
    alone, with residuals rising from 0.1× at the first block to 1× at the middle, and zeros for
    the unconditional half. Chain several through ``residuals``: their residuals are summed.
    SDXL ControlNets also take the pooled embedding and size conditions (CFGConditions)."""

    class In(Inputs):
        controlnet: ControlNet = Field(description="from LoadControlNet")
        model_input: ModelInput = Field(description="from ScaleModelInput (the UNet's own input)")
        timestep: Timestep = Field(description="the loop's timestep")
        embeddings: Embeddings = Field(description="the UNet's embeddings (CFGEmbeddings or CFGConditions.embeddings)")
        control_image: ControlImage = Field(description="from ControlImage, the picture's size")
        step: int = Field(ge=0, description="the loop's index (denoise.index): where the step lies in the schedule")
        steps: int = Field(ge=1, description="the loop's count (denoise.count)")
        scale: float = Field(1.0, ge=0.0, le=10.0, description="conditioning scale: how strongly the control image steers")
        start: float = Field(0.0, ge=0.0, le=1.0, description="the fraction of the schedule at which the ControlNet starts acting")
        end: float = Field(1.0, ge=0.0, le=1.0, description="the fraction of the schedule after which it stops")
        guess_mode: bool = Field(False, description="run on the prompt's half only, residuals scaled 0.1 to 1 by depth (for an empty prompt)")
        guidance_batch: bool = Field(True, description="the inputs stack the unconditional and prompt halves (guess mode runs on the second)")
        uncond: bool = Field(True, description="false: the unconditional half gets no residuals, without guess mode's scaling "
                                               "(ComfyUI's ControlNetApply steers the positive prompt alone)")
        cond: bool = Field(True, description="false: the prompt's half gets no residuals, the unconditional half alone is steered "
                                             "(a ComfyUI negative conditioning's own ControlNet)")
        pooled: Pooled | None = Field(None, description="SDXL: CFGConditions.pooled")
        time_ids: TimeIds | None = Field(None, description="SDXL: CFGConditions.time_ids")
        residuals: ControlResiduals | None = Field(None, description="an earlier ApplyControlNet's: this one's are added to them")

    class Out(Outputs):
        residuals: ControlResiduals | None = Field(description="None while no ControlNet of the chain acts; into PredictNoise's or PredictNoiseXL's control (or the next ApplyControlNet)")

    def run(self, i: In, ctx: Context) -> dict:
        if not acting(i):
            return {"residuals": i.residuals}
        import torch
        from graphflow_nodes.batch_calls import per_sample, timestep_key
        from graphflow_nodes.runtime import placement, to_batch

        net = ctx.models.get(i.controlnet)
        device, dtype = placement(net)
        x, emb = i.model_input.to(dtype=dtype), i.embeddings.to(device=device, dtype=dtype)
        check_fits(net, x, emb, i.control_image, i.pooled, i.time_ids)
        emb = to_batch(emb, x.shape[0], "embeddings")
        added = None
        if net.config.addition_embed_type == "text_time":
            added = {"text_embeds": to_batch(i.pooled.to(device=device, dtype=dtype), x.shape[0], "pooled"),
                     "time_ids": to_batch(i.time_ids.to(device=device, dtype=dtype), x.shape[0], "time_ids")}
        if not (i.cond or i.uncond) or (i.guess_mode and not i.cond):
            raise ValueError("cond, uncond: the ControlNet steers the prompt's half, the unconditional half or both (guess mode: the prompt's)")
        halves = (i.guess_mode or not i.uncond or not i.cond) and i.guidance_batch
        half = 1 if i.cond else 0  # the half it runs on: the prompt's (second), or with cond false the unconditional (first)
        if halves:  # one half alone, as the pipelines run guess mode under guidance
            if x.shape[0] % 2:
                raise ValueError(f"guidance_batch: the model input's batch {x.shape[0]} has no two halves")
            x, emb = x.chunk(2)[half], emb.chunk(2)[half]
            added = added and {k: v.chunk(2)[half] for k, v in added.items()}
        image = to_batch(i.control_image.to(device=device, dtype=dtype), x.shape[0], "control_image")
        # one call for a sweep's items at this timestep (the latents, embeddings and control image
        # are per-sample rows); the scale and guess mode's depth scaling are applied per item
        # afterwards, exactly as the ControlNet applies them, unless it pools its residuals
        # (global_pool_conditions: it averages after scaling), when they join the key
        pools = bool(net.config.global_pool_conditions)
        inside = (i.scale, i.guess_mode) if pools else (1.0, False)

        def call(a):
            with torch.no_grad():
                return net(a[0], i.timestep, encoder_hidden_states=a[1], controlnet_cond=a[2], conditioning_scale=inside[0],
                           guess_mode=inside[1], added_cond_kwargs=a[3], return_dict=False)

        down, mid = per_sample(ctx, ("controlnet", id(net), timestep_key(i.timestep), inside), (x, emb, image, added), call)
        if not pools and i.guess_mode:  # ControlNetModel's own depth scales, 0.1 to 1
            scales = torch.logspace(-1, 0, len(down) + 1, device=mid.device) * i.scale
            down, mid = tuple(d * s for d, s in zip(down, scales)), mid * scales[-1]
        elif not pools:
            down, mid = scaled(down, i.scale), mid * i.scale
        if halves:
            pair = lambda t: torch.cat([torch.zeros_like(t), t] if half else [t, torch.zeros_like(t)])
            down, mid = [pair(d) for d in down], pair(mid)
        mine = Residuals(tuple(down), mid)
        return {"residuals": mine if i.residuals is None else i.residuals + mine}


def check_fits(net: Any, x: Any, emb: Any, image: Any, pooled: Any, time_ids: Any) -> None:
    """The mismatches a ControlNet would otherwise report as a shape error deep inside a conv:
    a ControlNet of another family than the model, a control image of another size than the
    picture or with other channels than the ControlNet reads."""
    cfg = net.config
    family = family_of_config(cfg)
    if family in ("sd3", "flux") or not hasattr(cfg, "cross_attention_dim"):
        raise ValueError(f"controlnet: this is an {family} ControlNet; ApplyControlNet runs SD 1.x, 2.x and SDXL ones "
                         f"(ApplySD3ControlNet runs SD3's, ApplyFluxControlNet Flux's)")
    if emb.shape[-1] != cfg.cross_attention_dim:
        raise ValueError(f"controlnet: this is an {family} ControlNet (text width {cfg.cross_attention_dim}); the embeddings are "
                         f"{emb.shape[-1]} wide: wire a ControlNet made for this model's family")
    if family == "sdxl" and (pooled is None or time_ids is None):
        raise ValueError("pooled, time_ids: an SDXL ControlNet needs the pooled embedding and size conditions (CFGConditions)")
    if image.shape[1] != cfg.conditioning_channels:
        raise ValueError(f"control_image: has {image.shape[1]} channels; this ControlNet reads {cfg.conditioning_channels}")
    factor = 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
    want = (x.shape[-2] * factor, x.shape[-1] * factor)
    if tuple(image.shape[-2:]) != want:
        raise ValueError(f"control_image: is {image.shape[-1]}x{image.shape[-2]} pixels but the picture is {want[1]}x{want[0]}: "
                         f"give ControlImage the picture's width and height (or wire its width and height into RandomLatents)")
