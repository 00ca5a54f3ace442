"""IP-Adapters: a picture as a prompt. A CLIP vision encoder embeds the reference image; the
adapter's projection turns the embedding into a few extra context tokens, and extra attention
layers (``to_k_ip``/``to_v_ip`` beside each cross-attention) let the UNet attend to them, at a
scale per adapter.

As a LoRA, the adapter is a model patch: ``LoadIPAdapter`` returns the UNet reference with an
``IPAdapterPatch`` appended, and the model manager applies it to a private copy of the UNet, so
the shared base never changes (a run without the adapter afterwards gives the base picture bit
for bit). Several LoadIPAdapter nodes stack, each with its own scale, as diffusers'
``load_ip_adapter([...])`` + ``set_ip_adapter_scale([...])``. ``EncodeImagePrompt`` embeds the
reference image (chained in the same order for several adapters), and ``PredictNoise`` takes the
embeddings as its ``image_prompts`` input (diffusers' ``added_cond_kwargs["image_embeds"]``).

Files: the adapter is read from ``.safetensors`` only, in the layout of h94/IP-Adapter's files
(``image_proj.…`` and ``ip_adapter.1.to_k_ip.weight``…); its encoder is a transformers
``CLIPVisionModelWithProjection`` folder with safetensors weights, by default the
``image_encoder/`` folder beside the file. Pickles are refused unread."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from graphflow_nodes.kinds import Image, ImageEncoder, ImagePrompts, UNet
from graphflow_nodes.loading.files import resolve_image_encoder_path, resolve_ip_adapter_path
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, checked_input, content_id

ENCODER_WEIGHTS = "model.safetensors"


class IPAdapterError(ValueError):
    pass


def _header(path: Path) -> dict[str, tuple]:
    """Key -> shape of a safetensors file, from its header alone; anything else is refused unread."""
    from safetensors import SafetensorError, safe_open

    if not str(path).endswith(".safetensors"):
        raise IPAdapterError(f"{path}: only .safetensors IP-Adapter files are read (a pickled .bin/.ckpt/.pt file can run code when loaded)")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise IPAdapterError(f"{path} is not a readable safetensors file: {e}") from None


def check_ip_adapter_file(path: Path, cross_attention_dim: int | None = None) -> bool:
    """Checks the file's layout (and, given the UNet's cross-attention width, that it was made for
    that model) from its header; returns whether its projection takes the encoder's penultimate
    hidden states (IP-Adapter Plus) rather than its projected image embedding."""
    shapes = _header(path)
    proj = {k for k in shapes if k.startswith("image_proj.")}
    attn = {k: s for k, s in shapes.items() if k.startswith("ip_adapter.")}
    if not proj or not attn:
        sample = ", ".join(list(shapes)[:3])
        raise IPAdapterError(f"{path} is not an IP-Adapter file: expected image_proj.… and ip_adapter.N.to_k_ip.weight keys, "
                             f"found keys like {sample}")
    if "image_proj.proj.0.weight" in shapes or any("lora" in k for k in attn):
        raise IPAdapterError(f"{path} is a FaceID IP-Adapter: it takes face embeddings (insightface), which graphflow does not make")
    if cross_attention_dim is not None:
        widths = {s[1] for k, s in attn.items() if k.endswith("to_k_ip.weight")}
        if widths and widths != {cross_attention_dim}:
            raise IPAdapterError(f"{path.name} does not fit this UNet: its attention layers read {sorted(widths)[0]}-wide context, "
                                 f"the UNet's text context is {cross_attention_dim} wide (an IP-Adapter made for another model family)")
    return "image_proj.latents" in shapes


@lru_cache(maxsize=8)
def read_ip_adapter(path: str, source: str) -> dict:
    """The file as diffusers' ``load_ip_adapter`` splits it: ``{"image_proj": …, "ip_adapter": …}``;
    cached per content (``source``)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    return {part: {k.removeprefix(part + "."): v for k, v in tensors.items() if k.startswith(part + ".")}
            for part in ("image_proj", "ip_adapter")}


@dataclass(frozen=True)
class IPAdapterPatch:
    """One IP-Adapter file on a UNet at a scale: part of the patched reference's identity (the
    file by content; its path is where to read it)."""

    source: str
    path: str = field(compare=False)
    scale: float

    def apply(self, model: Any) -> None:
        """Adds this adapter's attention layers and projection to ``model``, a private copy.
        diffusers builds them (``_load_ip_adapter_weights``, what ``load_ip_adapter`` calls) from
        the state dicts of all the adapters on the model at once, so an adapter stacked on
        another loads both again; the scales are then set per adapter, as
        ``set_ip_adapter_scale([...])`` sets them."""
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

        check_ip_adapter_file(Path(self.path), model.config.cross_attention_dim)
        stacked = [*getattr(model, "_graphflow_ip_adapters", ()), (read_ip_adapter(self.path, self.source), self.scale)]
        expected = sum(1 for n in model.attn_processors if not n.endswith("attn1.processor"))
        given = len(stacked[-1][0]["ip_adapter"]) // 2
        if given != expected:
            raise IPAdapterError(f"{Path(self.path).name} has attention weights for {given} cross-attention layers, this UNet has "
                                 f"{expected} (an IP-Adapter made for another model)")
        model._load_ip_adapter_weights([{part: dict(d) for part, d in state.items()} for state, _ in stacked])
        for proc in model.attn_processors.values():
            if isinstance(proc, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                proc.scale = [scale for _, scale in stacked]
        model._graphflow_ip_adapters = stacked
        model.requires_grad_(False)


def check_encoder_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise IPAdapterError(f"{path}: an image encoder is a transformers folder with config.json and {ENCODER_WEIGHTS}")
    if not (path / ENCODER_WEIGHTS).is_file():
        pickled = [p.name for p in path.glob("*.bin")]
        why = f"it has only {pickled[0]}, a pickle, which graphflow never opens (it can run code)" if pickled else "it has none"
        raise IPAdapterError(f"{path}: the image encoder's weights are read from {ENCODER_WEIGHTS}; {why}")


@dataclass(frozen=True)
class ImageEncoderRef:
    """A CLIP vision encoder folder, named by content; ``hidden_states``: the adapter it serves
    reads the penultimate hidden states (Plus) instead of the projected embedding."""

    source: str
    path: str = field(compare=False)
    hidden_states: bool = False

    def load(self, manager: Any) -> Any:
        from graphflow_nodes.loading.model_refs import offline
        from graphflow_nodes.runtime import torch_dtype
        from transformers import CLIPVisionModelWithProjection

        offline()
        check_encoder_folder(Path(self.path))
        model = CLIPVisionModelWithProjection.from_pretrained(self.path, dtype=torch_dtype(manager.dtype), use_safetensors=True,
                                                              local_files_only=True)
        model = model.to(manager.device).eval()
        model.requires_grad_(False)
        return model


def _unet_width(unet_ref: Any) -> int | None:
    """The UNet's cross-attention width from its folder's config, when it has one (a diffusers folder)."""
    import json

    config = Path(getattr(unet_ref, "path", "")) / "unet" / "config.json"
    try:
        width = json.loads(config.read_text()).get("cross_attention_dim")
    except (OSError, ValueError):
        return None
    return width if isinstance(width, int) else None


class LoadIPAdapter(Node, name="LoadIPAdapter", category="model", disk_cache=False):
    """Adds an IP-Adapter to a UNet at a scale, as a patched reference (the loaded base is never
    changed; chain LoadIPAdapter nodes to stack adapters, each with its scale), and gives its
    image encoder. Reads .safetensors IP-Adapter files in h94/IP-Adapter's layout (plain and
    Plus); the encoder is a CLIPVisionModelWithProjection folder."""

    class In(Inputs):
        unet: UNet = Field(description="from LoadModel (or another LoadIPAdapter / LoadLoRA)")
        path: Annotated[str, FileInput(resolve=resolve_ip_adapter_path)] = Field(
            description="an IP-Adapter .safetensors file: a name in the models folders' ip_adapters/, or a path")
        image_encoder: Annotated[str, FileInput(resolve=resolve_image_encoder_path, folder=True)] = Field(
            "", description="its CLIP vision encoder folder; empty: the image_encoder/ folder beside the file")
        scale: float = Field(1.0, ge=-10.0, le=10.0, description="how strongly the image prompt counts (0: not at all)")

    class Out(Outputs):
        unet: UNet = Field(description="the UNet with this IP-Adapter (a reference; the base stays as it was)")
        image_encoder: ImageEncoder = Field(description="to EncodeImagePrompt")

    def run(self, i: In, ctx: Context) -> dict:
        if not callable(getattr(i.unet, "with_patch", None)):
            raise TypeError(f"unet: expected a model reference from LoadModel, got {type(i.unet).__name__}")
        path = checked_input(ctx, resolve_ip_adapter_path(i.path))
        plus = check_ip_adapter_file(path, _unet_width(i.unet))
        encoder = resolve_image_encoder_path(i.image_encoder) or path.parent / "image_encoder"
        encoder = checked_input(ctx, encoder, folder=True)
        check_encoder_folder(encoder)
        patch = IPAdapterPatch(content_id(path), str(path), float(i.scale))
        return {"unet": i.unet.with_patch(patch),
                "image_encoder": ImageEncoderRef(content_id(encoder, ctx.files.max_bytes), str(encoder.resolve()), plus)}


class EncodeImagePrompt(Node, name="EncodeImagePrompt", category="conditioning", uses=("models",)):
    """The reference picture through the adapter's CLIP vision encoder, prepared as diffusers
    prepares it (CLIPImageProcessor at the encoder's size: shortest side resized, centre crop,
    CLIP's normalisation), with the unconditional half for guidance (zeros, or for Plus adapters
    the encoding of a black picture, as the pipelines make it). Chain one per IP-Adapter, in the
    order the LoadIPAdapter nodes were chained."""

    class In(Inputs):
        image_encoder: ImageEncoder = Field(description="from LoadIPAdapter")
        image: Image = Field(description="the reference picture, (1, 3, H, W) in [0, 1]")
        guidance: bool = Field(True, description="stack the unconditional half first, for a classifier-free-guidance batch")
        add_to: ImagePrompts | None = Field(None, description="the earlier adapters' image prompts (several IP-Adapters)")

    class Out(Outputs):
        image_prompts: ImagePrompts = Field(description="to PredictNoise.image_prompts")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.images import to_pil
        from graphflow_nodes.runtime import placement
        from transformers import CLIPImageProcessor

        encoder = ctx.models.get(i.image_encoder)
        device, dtype = placement(encoder)
        if i.image.ndim != 4 or i.image.shape[1] != 3:
            raise ValueError(f"image: expected an RGB picture (batch, 3, height, width), got shape {tuple(i.image.shape)}")
        size = encoder.config.image_size
        pixels = CLIPImageProcessor(size=size, crop_size=size)(to_pil(i.image), return_tensors="pt").pixel_values
        pixels = pixels.to(device=device, dtype=dtype)
        with torch.no_grad():
            if i.image_encoder.hidden_states:
                cond = encoder(pixels, output_hidden_states=True).hidden_states[-2]
                uncond = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
            else:
                cond = encoder(pixels).image_embeds
                uncond = torch.zeros_like(cond)
        embeds = torch.cat([uncond[None], cond[None]]) if i.guidance else cond[None]
        return {"image_prompts": (*(i.add_to or ()), embeds)}


def image_prompt_kwargs(unet: Any, prompts: Any, batch: int, device: Any, dtype: Any) -> dict:
    """``added_cond_kwargs`` entries for the UNet call: the image prompts, one per IP-Adapter on
    the UNet, each repeated to the model input's batch."""
    from graphflow_nodes.runtime import to_batch

    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    if layers is None:
        raise ValueError("image_prompts: this UNet has no IP-Adapter; wire PredictNoise's unet from LoadIPAdapter")
    if len(layers) != len(prompts):
        raise ValueError(f"image_prompts: {len(prompts)} image prompts for a UNet with {len(layers)} IP-Adapters "
                         "(chain one EncodeImagePrompt per LoadIPAdapter)")
    return {"image_embeds": [to_batch(p.to(device=device, dtype=dtype), batch, "image_prompts") for p in prompts]}
