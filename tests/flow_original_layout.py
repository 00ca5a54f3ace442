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
