"""A diffusers Flux transformer's tensors written back in the original FLUX.1 layout (Black Forest
Labs' ``flux1-dev.safetensors`` keys: ``double_blocks.{i}.img_attn.qkv``, ``single_blocks.{i}.linear1``
fusing q, k, v and the MLP's input, ``final_layer.adaLN_modulation.1`` as (shift, scale)), so the
tests can load a single file of a tiny random model and compare it with its folder."""

from __future__ import annotations


def flux_to_original(state: dict, prefix: str = "") -> dict:
    import torch

    out = {}
    take = state.copy()

    def put(orig: str, diff: str) -> None:
        for sfx in (".weight", ".bias"):
            if diff + sfx in take:
                out[prefix + orig + sfx] = take.pop(diff + sfx)

    def fuse(orig: str, parts: list[str]) -> None:
        for sfx in (".weight", ".bias"):
            out[prefix + orig + sfx] = torch.cat([take.pop(p + sfx) for p in parts], dim=0).contiguous()

    for orig, diff in (("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                       ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                       ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                       ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                       ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                       ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                       ("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out")):
        put(orig, diff)
    doubles = sorted({int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")})
    singles = sorted({int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")})
    for i in doubles:
        b, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        put(o + "img_mod.lin", b + "norm1.linear")
        put(o + "txt_mod.lin", b + "norm1_context.linear")
        fuse(o + "img_attn.qkv", [b + "attn.to_q", b + "attn.to_k", b + "attn.to_v"])
        fuse(o + "txt_attn.qkv", [b + "attn.add_q_proj", b + "attn.add_k_proj", b + "attn.add_v_proj"])
        for side, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
            out[f"{prefix}{o}{side}_attn.norm.query_norm.scale"] = take.pop(f"{b}attn.{q}.weight")
            out[f"{prefix}{o}{side}_attn.norm.key_norm.scale"] = take.pop(f"{b}attn.{k}.weight")
        put(o + "img_mlp.0", b + "ff.net.0.proj")
        put(o + "img_mlp.2", b + "ff.net.2")
        put(o + "txt_mlp.0", b + "ff_context.net.0.proj")
        put(o + "txt_mlp.2", b + "ff_context.net.2")
        put(o + "img_attn.proj", b + "attn.to_out.0")
        put(o + "txt_attn.proj", b + "attn.to_add_out")
    for i in singles:
        b, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        put(o + "modulation.lin", b + "norm.linear")
        fuse(o + "linear1", [b + "attn.to_q", b + "attn.to_k", b + "attn.to_v", b + "proj_mlp"])
        out[f"{prefix}{o}norm.query_norm.scale"] = take.pop(f"{b}attn.norm_q.weight")
        out[f"{prefix}{o}norm.key_norm.scale"] = take.pop(f"{b}attn.norm_k.weight")
        put(o + "linear2", b + "proj_out")
    for sfx in (".weight", ".bias"):
        scale, shift = take.pop("norm_out.linear" + sfx).chunk(2, dim=0)
        out[f"{prefix}final_layer.adaLN_modulation.1{sfx}"] = torch.cat([shift, scale], dim=0).contiguous()
    assert not take, f"left unmapped: {sorted(take)[:5]}"
    return out


def write_flux_transformer_file(folder, path, prefix: str = ""):
    """The folder's transformer as one original-layout ``.safetensors`` (``prefix``: ComfyUI-style
    files put it under ``model.diffusion_model.``)."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    model = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", local_files_only=True)
    save_file({k: v.contiguous() for k, v in flux_to_original(model.state_dict(), prefix).items()}, str(path))
    return path


def sd3_to_original(state: dict, prefix: str = "model.diffusion_model.") -> dict:
    """An SD3/SD3.5 transformer (MMDiT) in Stability's original layout: ``joint_blocks.{i}.x_block``
    (the image side) and ``context_block`` (the text side) with fused qkv, ``adaLN_modulation.1``,
    ``mlp.fc1/fc2``; the last block's text side only modulates (its (shift, scale) order, as the
    final layer's, swapped against diffusers')."""
    import torch

    take = state.copy()
    out = {}

    def put(orig: str, diff: str) -> None:
        for sfx in (".weight", ".bias"):
            if diff + sfx in take:
                out[prefix + orig + sfx] = take.pop(diff + sfx)

    def swapped(orig: str, diff: str) -> None:
        for sfx in (".weight", ".bias"):
            scale, shift = take.pop(diff + sfx).chunk(2, dim=0)
            out[prefix + orig + sfx] = torch.cat([shift, scale], dim=0).contiguous()

    out[prefix + "pos_embed"] = take.pop("pos_embed.pos_embed")
    for orig, diff in (("x_embedder.proj", "pos_embed.proj"), ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                       ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"), ("context_embedder", "context_embedder"),
                       ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                       ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"), ("final_layer.linear", "proj_out")):
        put(orig, diff)
    swapped("final_layer.adaLN_modulation.1", "norm_out.linear")
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")})
    for i in blocks:
        b, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == blocks[-1]
        for sfx in (".weight", ".bias"):
            out[prefix + x + "attn.qkv" + sfx] = torch.cat([take.pop(f"{b}attn.to_{n}{sfx}") for n in "qkv"]).contiguous()
            out[prefix + c + "attn.qkv" + sfx] = torch.cat([take.pop(f"{b}attn.add_{n}_proj{sfx}") for n in "qkv"]).contiguous()
            if f"{b}attn2.to_q{sfx}" in take:
                out[prefix + x + "attn2.qkv" + sfx] = torch.cat([take.pop(f"{b}attn2.to_{n}{sfx}") for n in "qkv"]).contiguous()
        for side, q, k in ((x + "attn.", "norm_q", "norm_k"), (c + "attn.", "norm_added_q", "norm_added_k"), (x + "attn2.", "norm_q", "norm_k")):
            attn = "attn2." if side.endswith("attn2.") else "attn."
            if f"{b}{attn}{q}.weight" in take:
                out[prefix + side + "ln_q.weight"] = take.pop(f"{b}{attn}{q}.weight")
                out[prefix + side + "ln_k.weight"] = take.pop(f"{b}{attn}{k}.weight")
        put(x + "attn.proj", b + "attn.to_out.0")
        put(x + "attn2.proj", b + "attn2.to_out.0")
        put(x + "adaLN_modulation.1", b + "norm1.linear")
        put(x + "mlp.fc1", b + "ff.net.0.proj")
        put(x + "mlp.fc2", b + "ff.net.2")
        if last:
            swapped(c + "adaLN_modulation.1", b + "norm1_context.linear")
        else:
            put(c + "attn.proj", b + "attn.to_add_out")
            put(c + "adaLN_modulation.1", b + "norm1_context.linear")
            put(c + "mlp.fc1", b + "ff_context.net.0.proj")
            put(c + "mlp.fc2", b + "ff_context.net.2")
    assert not take, f"left unmapped: {sorted(take)[:5]}"
    return out


def write_sd3_all_in_one(folder, path, encoders: bool = True, t5: bool = True):
    """An SD3.5-style all-in-one ``.safetensors`` of an SD3 folder: the MMDiT under
    ``model.diffusion_model.``, the VAE under ``first_stage_model.`` (the original autoencoder's
    names), and with ``encoders`` the text encoders as ComfyUI saves them:
    ``text_encoders.clip_l.transformer.…``, ``text_encoders.clip_g.transformer.…`` (transformers'
    own names, projection included) and ``text_encoders.t5xxl.transformer.…``."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    from tests.original_layout import convert_vae

    folder = Path(folder)
    out = sd3_to_original(SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer").state_dict())
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    out |= convert_vae(vae.state_dict(), json.loads((folder / "vae" / "config.json").read_text()))
    if encoders:
        for comp, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
            sd = CLIPTextModelWithProjection.from_pretrained(folder, subfolder=comp).state_dict()
            out |= {f"text_encoders.{name}.transformer.{'' if k.startswith(('text_model.', 'text_projection')) else 'text_model.'}{k}": v
                    for k, v in sd.items()}
        if t5 and (folder / "text_encoder_3").is_dir():
            out |= {f"text_encoders.t5xxl.transformer.{k}": v
                    for k, v in T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_3").state_dict().items()}
    save_file({k: v.clone().contiguous() for k, v in out.items()}, str(path))  # (T5 shares its embedding: copies)
    return path


def write_part_files(folder, out_dir, vae_prefix: str = "") -> dict:
    """A Flux or SD3 folder's text encoders and VAE as the separate files ComfyUI's split loaders
    read: each encoder in transformers' own names as ``clip_l.safetensors``, ``clip_g.safetensors``,
    ``t5xxl.safetensors`` (CLIP under ``text_model.``, as the published files are), the VAE in the
    original autoencoder layout as ``ae.safetensors`` (``vae_prefix``: ``first_stage_model.``, as
    some VAE files keep it). Returns {name: path}."""
    import json
    from pathlib import Path

    import transformers
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from tests.original_layout import convert_vae

    folder, out_dir = Path(folder), Path(out_dir)
    index = json.loads((folder / "model_index.json").read_text())
    names = {"text_encoder": "clip_l", "text_encoder_2": "t5xxl" if index["text_encoder_2"][1].startswith("T5") else "clip_g",
             "text_encoder_3": "t5xxl"}
    paths = {}
    for comp, name in names.items():
        entry = index.get(comp)
        if not (isinstance(entry, list) and entry[1]):
            continue
        sd = getattr(transformers, entry[1]).from_pretrained(folder, subfolder=comp).state_dict()
        if name != "t5xxl":
            sd = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}
        paths[name] = out_dir / f"{name}.safetensors"
        save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(paths[name]))
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    sd = convert_vae(vae.state_dict(), json.loads((folder / "vae" / "config.json").read_text()))
    paths["vae"] = out_dir / "ae.safetensors"
    save_file({vae_prefix + k.removeprefix("first_stage_model."): v.contiguous() for k, v in sd.items()}, str(paths["vae"]))
    return paths
