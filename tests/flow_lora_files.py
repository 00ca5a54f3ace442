"""Random LoRA files for the tiny SD3 and Flux folders, written the ways real ones are: diffusers'
``save_lora_weights`` (peft keys, ``transformer.…lora_A.weight``, ``text_encoder.…``), and the
kohya layout their trainers write, over the original model's fused layers (Flux's
``lora_unet_double_blocks_0_img_attn_qkv``, SD3's ``lora_unet_joint_blocks_0_x_block_attn_qkv``,
``lora_te1_…``), with ``.lora_down``/``.lora_up``/``.alpha``."""

from __future__ import annotations

from pathlib import Path

from tests.lora_files import TEXT_TARGETS, _random_layers

TRANSFORMER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_out")


def flow_lora_tensors(model_dir: Path, seed: int, rank: int = 4, scale: float = 0.3) -> dict[str, dict]:
    """Component -> random A and B for its targeted Linear layers (the transformer's attention,
    each CLIP encoder's)."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    g = torch.Generator().manual_seed(seed)
    sd3 = "StableDiffusion3" in (model_dir / "model_index.json").read_text()
    cls = SD3Transformer2DModel if sd3 else FluxTransformer2DModel
    out = {"transformer": _random_layers(cls.from_pretrained(model_dir, subfolder="transformer"), TRANSFORMER_TARGETS, g, rank, scale)}
    te = CLIPTextModelWithProjection if sd3 else CLIPTextModel
    for comp in ("text_encoder", "text_encoder_2") if sd3 else ("text_encoder",):
        out[comp] = _random_layers(te.from_pretrained(model_dir, subfolder=comp), TEXT_TARGETS, g, rank, scale)
    return out


def write_flow_lora(path: Path, model_dir: Path, layers: dict[str, dict]) -> Path:
    """As ``StableDiffusion3Pipeline.save_lora_weights`` / ``FluxPipeline.save_lora_weights`` write one."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    sd3 = "StableDiffusion3" in (model_dir / "model_index.json").read_text()
    kw = {f"{c}_lora_layers": v for c, v in layers.items()}
    (StableDiffusion3Pipeline if sd3 else FluxPipeline).save_lora_weights(path.parent, weight_name=path.name, safe_serialization=True, **kw)
    return path


def write_flux_kohya(path: Path, model_dir: Path, seed: int, rank: int = 4, alpha: float = 2.0, scale: float = 0.3) -> Path:
    """A kohya-style Flux LoRA (sd-scripts' ``networks/lora_flux.py`` names) over the original
    layout's fused layers: each double block's image and text qkv and projection, each single
    block's linear2, and the CLIP encoder's attention (``lora_te1_``)."""
    import json

    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    cfg = json.loads((model_dir / "transformer" / "config.json").read_text())
    te = json.loads((model_dir / "text_encoder" / "config.json").read_text())
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp = int(inner * 4.0)  # a single block's MLP width, beside the attention in linear2's input
    layers = {}
    for i in range(cfg["num_layers"]):
        for side in ("img", "txt"):
            layers[f"lora_unet_double_blocks_{i}_{side}_attn_qkv"] = (inner, 3 * inner)
            layers[f"lora_unet_double_blocks_{i}_{side}_attn_proj"] = (inner, inner)
    for i in range(cfg["num_single_layers"]):
        # (linear1, qkv + MLP in, is left out: diffusers' converter splits it at FLUX.1's full
        # widths, 3072 × 3 + 12288, whatever the model's)
        layers[f"lora_unet_single_blocks_{i}_linear2"] = (inner + mlp, inner)
    width = te["hidden_size"]
    for i in range(te["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layers[f"lora_te1_text_model_encoder_layers_{i}_self_attn_{proj}"] = (width, width)
    out = {}
    for name, (fan_in, fan_out) in layers.items():
        out[f"{name}.lora_down.weight"] = (torch.randn(rank, fan_in, generator=g) * scale / fan_in**0.5).contiguous()
        out[f"{name}.lora_up.weight"] = (torch.randn(fan_out, rank, generator=g) * scale).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(out, str(path))
    return path


def write_sd3_kohya(path: Path, twin: Path, model_dir: Path, seed: int, rank: int = 4, alpha: float = 2.0,
                    scale: float = 0.3) -> tuple[Path, Path]:
    """A kohya-style SD3 LoRA (sd-scripts' ``networks/lora_sd3.py`` names: ``lora_unet_`` + the
    original MMDiT's module path, ``lora_te1_``/``lora_te2_`` for CLIP-L and CLIP-G) over every
    Linear layer of the transformer and the CLIP encoders' attention, and its twin in diffusers'
    format (``save_lora_weights``), which diffusers loads: the same products layer for layer.

    The original layout comes from tests/flow_original_layout.py's ``sd3_to_original`` (what the
    single-file tests write), not from graphflow's converter: run once on tags to learn which
    diffusers layers one original layer holds (a fused qkv holds three, sharing one down-weight),
    once on the up-weights to fuse and swap them as the weights are. kohya's ``alpha / rank`` is
    folded into the twin's up-weights (diffusers' files carry no alpha)."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from safetensors.torch import save_file
    from transformers import CLIPTextModelWithProjection

    from tests.flow_original_layout import sd3_to_original

    g = torch.Generator().manual_seed(seed)
    transformer = SD3Transformer2DModel.from_pretrained(model_dir, subfolder="transformer")
    state = transformer.state_dict()
    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    names = list(linears)
    tags = sd3_to_original({**state, **{f"{n}.weight": torch.full((m.out_features, 1), float(k)) for k, (n, m) in enumerate(linears.items())}},
                           prefix="")
    groups = {k.removesuffix(".weight"): [names[int(t)] for t in torch.unique(v[:, 0]).tolist()]
              for k, v in tags.items() if k.endswith(".weight") and v.dim() == 2 and v.shape[1] == 1}
    downs = {orig: torch.randn(rank, linears[members[0]].in_features, generator=g) * scale / linears[members[0]].in_features**0.5
             for orig, members in groups.items()}
    ups = {n: torch.randn(m.out_features, rank, generator=g) * scale for n, m in linears.items()}
    fused = sd3_to_original({**state, **{f"{n}.weight": b for n, b in ups.items()}}, prefix="")
    kohya, layers = {}, {"transformer": {}, "text_encoder": {}, "text_encoder_2": {}}
    for orig, members in groups.items():
        name = "lora_unet_" + orig.replace(".", "_")
        kohya |= {f"{name}.lora_down.weight": downs[orig].contiguous(), f"{name}.lora_up.weight": fused[f"{orig}.weight"].contiguous(),
                  f"{name}.alpha": torch.tensor(alpha)}
        for n in members:
            layers["transformer"] |= {f"{n}.lora_A.weight": downs[orig].clone(), f"{n}.lora_B.weight": ups[n] * (alpha / rank)}
    for te, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        random = _random_layers(CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder=te), TEXT_TARGETS, g, rank, scale)
        for key, a in random.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removesuffix(".lora_A.weight")
            b = random[f"{module}.lora_B.weight"]
            name = prefix + module.replace(".", "_")
            kohya |= {f"{name}.lora_down.weight": a.contiguous(), f"{name}.lora_up.weight": b.contiguous(), f"{name}.alpha": torch.tensor(alpha)}
            layers[te] |= {key: a, f"{module}.lora_B.weight": b * (alpha / rank)}
    save_file(kohya, str(path))
    StableDiffusion3Pipeline.save_lora_weights(twin.parent, weight_name=twin.name, safe_serialization=True,
                                               **{f"{c}_lora_layers": v for c, v in layers.items()})
    return path, twin


def with_loras(name: str, loras: list[tuple[Path, float]], sd3: bool, doc: dict | None = None) -> dict:
    """The shipped workflow (or ``doc``) with LoadLoRA nodes chained after LoadModel, every
    consumer of the transformer and the CLIP encoders rewired to the last one."""
    import graphflow

    if doc is None:
        doc = graphflow.load(Path(__file__).resolve().parents[1] / "workflows" / f"{name}.json").doc.raw
    ports = ["transformer", "text_encoder"] + (["text_encoder_2"] if sd3 else [])
    source = {p: f"model.{p}" for p in ports}

    def rewire(nodes: dict) -> None:
        for node in nodes.values():
            for key in ("inputs", "carry", "next", "collect"):
                for k, v in (node.get(key) or {}).items():
                    if isinstance(v, dict) and v.get("from") in wanted:
                        node[key][k] = {"from": wanted[v["from"]]}
            if "body" in node:
                rewire(node["body"])

    wanted = {}
    for n, (path, strength) in enumerate(loras):
        wanted |= {f"model.{p}": f"lora{n}.{p}" for p in ports}
    rewire(doc["nodes"])
    for n, (path, strength) in enumerate(loras):
        doc["nodes"][f"lora{n}"] = {"type": "LoadLoRA", "inputs": {
            **{p: {"from": source[p]} for p in ports}, "path": str(path), "unet_strength": strength, "text_encoder_strength": strength}}
        source = {p: f"lora{n}.{p}" for p in ports}
    return doc
