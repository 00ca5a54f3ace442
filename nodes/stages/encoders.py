"""The inputs turned into what the UNet and the loop take, as diffusers' encoder steps do: the
prompt's text side, one step per node, as the Deep Dive notebook takes it apart (tokenize → token
embeddings + position embeddings → transformer with causal mask → final layer norm; ``EncodePrompt``
does all of it in one node and gives the same tensor), and a picture into latents (img2img)."""

from __future__ import annotations

import functools
import inspect
from typing import Literal

from graphflow_nodes.kinds import (
    SEED_MAX,
    VAE,
    AttentionMask,
    GuidanceBatch,
    Image,
    InputEmbeddings,
    Latents,
    PositionEmbeddings,
    Rng,
    TextEmbeddings,
    TextEncoder,
    TokenEmbeddings,
    TokenIds,
    Tokenizer,
)
from graphflow_nodes.stages.vae import Tiling, pixel_vae, tile_overlap_field, tile_size_field, tiled_field
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


def _text_model(te):
    """transformers 5 flattened CLIPTextModel; 4.x kept the parts under ``.text_model``."""
    return getattr(te, "text_model", te)


def table_device(te):
    return _text_model(te).embeddings.token_embedding.weight.device


def tokenize(tokenizer, text: str, max_length: int | None = None):
    import torch

    length = max_length or tokenizer.model_max_length
    enc = tokenizer([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc.input_ids.to(torch.long), enc.attention_mask


@functools.cache
def _no_cache(create_causal_mask) -> dict:
    """The "no key/value cache" argument of transformers' ``create_causal_mask``, under the name
    the installed version takes: ``cache`` since 5.x, which warns (a FutureWarning a user cannot
    act on) when given the older ``past_key_values`` that 4.x requires."""
    params = inspect.signature(create_causal_mask).parameters
    return {"cache": None} if "cache" in params else {"past_key_values": None}


def encode_embeddings(te, input_embeddings):
    """The transformer and its final layer norm on given input embeddings, with the causal mask
    CLIP was trained with: what ``text_encoder(input_ids)`` does after its embedding layer."""
    import torch
    from graphflow_nodes.runtime import placement
    from transformers.masking_utils import create_causal_mask

    tm = _text_model(te)
    device, dtype = placement(te)
    h = input_embeddings.to(device=device, dtype=dtype)
    with torch.no_grad():
        mask = create_causal_mask(config=te.config, inputs_embeds=h, attention_mask=None, **_no_cache(create_causal_mask))
        out = tm.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True)
        return tm.final_layer_norm(out.last_hidden_state)


class Tokenize(Node, name="Tokenize", category="text", uses=("models",)):
    """Text → CLIP token ids, padded and truncated to the model's length (77 for CLIP)."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel")
        text: str = Field(description="the prompt")
        max_length: int | None = Field(None, ge=2, le=4096, description="sequence length; default: the tokenizer's (77)")

    class Out(Outputs):
        token_ids: TokenIds = Field(description="(1, 77) token ids: start token, the text's tokens, end token, padding")
        attention_mask: AttentionMask = Field(description="(1, 77): 1 for real tokens, 0 for padding")

    def run(self, i: In, ctx: Context) -> dict:
        ids, mask = tokenize(ctx.models.get(i.tokenizer), i.text, i.max_length)
        return {"token_ids": ids, "attention_mask": mask}


class TokenEmbed(Node, name="TokenEmbed", category="text", uses=("models",)):
    """Token ids → rows of the text encoder's token-embedding table (before positions are added)."""

    class In(Inputs):
        text_encoder: TextEncoder = Field(description="from LoadModel")
        token_ids: TokenIds = Field(description="from Tokenize")

    class Out(Outputs):
        token_embeddings: TokenEmbeddings = Field(description="(batch, 77, hidden)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        table = _text_model(ctx.models.get(i.text_encoder)).embeddings.token_embedding
        with torch.no_grad():
            return {"token_embeddings": table(i.token_ids.to(table.weight.device))}


class PosEmbed(Node, name="PosEmbed", category="text", uses=("models",)):
    """The position embeddings for a sequence as long as the token ids."""

    class In(Inputs):
        text_encoder: TextEncoder = Field(description="from LoadModel")
        token_ids: TokenIds = Field(description="only their length is used")

    class Out(Outputs):
        position_embeddings: PositionEmbeddings = Field(description="(1, 77, hidden)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        emb = _text_model(ctx.models.get(i.text_encoder)).embeddings
        n = i.token_ids.shape[-1]
        with torch.no_grad():
            return {"position_embeddings": emb.position_embedding(emb.position_ids[:, :n])}


class AddEmbeddings(Node, name="AddEmbeddings", category="text"):
    """Token embeddings + position embeddings: the transformer's input."""

    class In(Inputs):
        token_embeddings: TokenEmbeddings = Field(description="from TokenEmbed (possibly edited)")
        position_embeddings: PositionEmbeddings = Field(description="from PosEmbed")

    class Out(Outputs):
        input_embeddings: InputEmbeddings = Field(description="(batch, 77, hidden)")

    def run(self, i: In, ctx: Context) -> dict:
        return {"input_embeddings": i.token_embeddings + i.position_embeddings.to(i.token_embeddings.device)}


class TextEncode(Node, name="TextEncode", category="text", uses=("models",)):
    """Input embeddings → the text encoder's final hidden states: the transformer layers with
    CLIP's causal mask, then the final layer norm (the notebook's ``get_output_embeds``)."""

    class In(Inputs):
        text_encoder: TextEncoder = Field(description="from LoadModel")
        input_embeddings: InputEmbeddings = Field(description="from AddEmbeddings")

    class Out(Outputs):
        text_embeddings: TextEmbeddings = Field(description="(batch, 77, hidden): what the UNet attends to")

    def run(self, i: In, ctx: Context) -> dict:
        from graphflow_nodes.batch_calls import per_sample

        te = ctx.models.get(i.text_encoder)
        return {"text_embeddings": per_sample(ctx, ("clip-embeddings", id(te)), (i.input_embeddings,),
                                              lambda a: encode_embeddings(te, a[0]), distinct=True)}


class EncodePrompt(Node, name="EncodePrompt", category="text", uses=("models",)):
    """Text → final text embeddings in one node, for everyday workflows. Gives the same tensor as
    Tokenize → TokenEmbed + PosEmbed → AddEmbeddings → TextEncode."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel")
        text_encoder: TextEncoder = Field(description="from LoadModel")
        text: str = Field("", description="the prompt; empty for the unconditional embedding")
        clip_skip: int = Field(0, ge=0, le=48, description="take the state this many layers before the last, then the final "
                                                         "layer norm (diffusers' clip_skip; ComfyUI's CLIPSetLastLayer -1 - n)")

    class Out(Outputs):
        text_embeddings: TextEmbeddings = Field(description="(1, 77, hidden)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.batch_calls import per_sample

        te = ctx.models.get(i.text_encoder)
        ids, _ = tokenize(ctx.models.get(i.tokenizer), i.text)
        layers = te.config.num_hidden_layers
        if i.clip_skip >= layers:
            raise ValueError(f"clip_skip {i.clip_skip} reaches past the first of the text encoder's {layers} layers")

        def encode(args):
            with torch.no_grad():
                if i.clip_skip == 0:
                    return te(args[0].to(table_device(te)))[0]
                out = te(args[0].to(table_device(te)), output_hidden_states=True)
                return _text_model(te).final_layer_norm(out.hidden_states[-(i.clip_skip + 1)])

        # the prompts of runs batched with this one are encoded in one call (a shared one once)
        return {"text_embeddings": per_sample(ctx, ("clip", id(te), i.clip_skip), (ids,), encode, distinct=True)}


class MixEmbeddings(Node, name="MixEmbeddings", category="text"):
    """Linear mix of two prompts' final embeddings: ``(1 - weight) * a + weight * b`` (the
    notebook's mouse/leopard mix is weight 0.65 towards the leopard)."""

    class In(Inputs):
        a: TextEmbeddings = Field(description="first prompt's embeddings")
        b: TextEmbeddings = Field(description="second prompt's embeddings")
        weight: float = Field(0.5, ge=-1.0, le=2.0, description="0 gives a, 1 gives b")

    class Out(Outputs):
        text_embeddings: TextEmbeddings = Field(description="the mix")

    def run(self, i: In, ctx: Context) -> dict:
        return {"text_embeddings": (1.0 - i.weight) * i.a + i.weight * i.b}


class CFGEmbeddings(Node, name="CFGEmbeddings", category="text"):
    """Stacks unconditional (or negative-prompt) and conditional embeddings so the UNet predicts
    both in one batched call, as diffusers' pipelines do (unconditional first)."""

    class In(Inputs):
        uncond: TextEmbeddings = Field(description="embeddings of the empty prompt, or of a negative prompt")
        cond: TextEmbeddings = Field(description="embeddings of the prompt")

    class Out(Outputs):
        embeddings: GuidanceBatch = Field(description="(2*batch, 77, hidden)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        uncond, cond = common_length(i.uncond, i.cond)
        uncond = uncond.expand(cond.shape[0], -1, -1) if uncond.shape[0] == 1 else uncond
        return {"embeddings": torch.cat([uncond, cond])}


def common_length(a, b):
    """Two prompts' embeddings of different lengths (a long prompt is 154, 231… states) repeated
    along the sequence to their least common multiple, as ComfyUI batches a long prompt with a
    short negative one (``comfy/conds.py``, ``CONDCrossAttn.concat``)."""
    import math

    n, m = a.shape[1], b.shape[1]
    if n == m:
        return a, b
    if n % 77 or m % 77:
        raise ValueError(f"the prompts' embeddings are {n} and {m} states long: only whole 77-state chunks can be matched")
    k = math.lcm(n, m)
    return a.repeat(1, k // n, 1), b.repeat(1, k // m, 1)


class VAEEncode(Node, name="VAEEncode", category="latents", uses=("models",)):
    """Image in [0, 1] → latents × the VAE's scaling factor: a sample of the latent distribution
    (seeded, as diffusers' img2img draws it) or its mean; with ``tiled``, encoded in overlapping
    tiles (diffusers' ``vae.enable_tiling()``)."""

    class In(Inputs):
        vae: VAE = Field(description="from LoadModel")
        image: Image = Field(description="(batch, 3, H, W) in [0, 1]")
        mode: Literal["sample", "mean"] = Field("sample", description="sample the latent distribution, or take its mean")
        seed: int = Field(0, ge=0, le=SEED_MAX, description="seed for 'sample'")
        rng: Rng | None = Field(None, description="draw from this generator state instead of a fresh one from the seed")
        tiled: bool = tiled_field()
        tile_size: int | None = tile_size_field()
        tile_overlap: float = tile_overlap_field()

    class Out(Outputs):
        latents: Latents = Field(description="scaled latents")
        rng: Rng = Field(description="the generator after the sample: give it to NoiseLike, and the noise comes as "
                                     "diffusers' img2img pipelines draw it from the same seed")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.runtime import generator_from, placement

        dtype_out = placement(ctx.models.get(i.vae))[1]  # latents come out in the model's dtype, even from an upcast VAE
        vae = pixel_vae(ctx, i.vae)
        device, dtype = placement(vae)
        # channels-last, as diffusers' image processor hands a picture to the VAE (a numpy HWC
        # array transposed): convolutions sum in another order on the other layout, 1e-5 apart
        # the picture passes through the model's dtype even for an upcast VAE, as in diffusers' SDXL img2img
        x = (i.image * 2 - 1).to(device=device, dtype=dtype_out).to(dtype).contiguous(memory_format=torch.channels_last)
        g = generator_from(i.seed, i.rng)
        with torch.no_grad():
            if i.tiled:
                from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

                dist = DiagonalGaussianDistribution(Tiling.of(vae, i.tile_size, i.tile_overlap, "tile_size").encode(vae, x))
            else:
                dist = vae.encode(x).latent_dist
            z = dist.sample(generator=g) if i.mode == "sample" else dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return {"latents": (z.to(dtype_out) - shift) * vae.config.scaling_factor, "rng": g.get_state()}
