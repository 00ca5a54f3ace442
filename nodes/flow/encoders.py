"""The flow families' text side: T5's sequence (SD3's third encoder, Flux's second), SD3's joint
embedding of its three encoders, and Flux's text position ids. The CLIP sides are the shared
``EncodeHidden`` (penultimate state and projected pooled embedding for SD3; the pooled output alone
for Flux), so mixing and token surgery on the CLIP embeddings work as for SDXL."""

from __future__ import annotations

from graphflow_nodes.kinds import Pooled, TextEmbeddings, TextEncoder, Tokenizer, Transformer
from graphflow_nodes.kinds import TextIds as TextIdsKind  # the node below is named TextIds too
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class EncodeT5(Node, name="EncodeT5", category="text", uses=("models",)):
    """Text → a T5 encoder's last hidden states, ``max_sequence_length`` tokens (padded, truncated,
    the end token kept) as SD3's and Flux's pipelines tokenize. A model saved without its T5 encoder
    (SD3's ``text_encoder_3`` null) gives zeros as wide as the transformer's joint attention, as
    StableDiffusion3Pipeline does without one."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="the T5 tokenizer (SD3: tokenizer_3, Flux: tokenizer_2)")
        text_encoder: TextEncoder = Field(description="the T5 encoder (SD3: text_encoder_3, Flux: text_encoder_2)")
        text: str = Field("", description="the prompt")
        fallback: str = Field("", description="encoded when text is empty (prompt_3 / prompt_2: empty means the same as prompt)")
        max_sequence_length: int = Field(256, ge=1, le=512, description="T5 tokens (SD3's default 256, Flux's 512)")
        transformer: Transformer | None = Field(None, description="gives the width of the zeros when the model has no T5 encoder")

    class Out(Outputs):
        hidden_states: TextEmbeddings = Field(description="(1, max_sequence_length, T5 width)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.batch_calls import per_sample
        from graphflow_nodes.loading.model_refs import AbsentComponent
        from graphflow_nodes.runtime import placement

        if isinstance(i.text_encoder, AbsentComponent):
            if i.transformer is None:
                raise ValueError("the model has no T5 encoder: wire the transformer to EncodeT5 so it can give zeros in its place")
            transformer = ctx.models.get(i.transformer)
            device, dtype = placement(transformer)
            width = transformer.config.joint_attention_dim
            return {"hidden_states": torch.zeros((1, i.max_sequence_length, width), device=device, dtype=dtype)}
        tokenizer = ctx.models.get(i.tokenizer)
        te = ctx.models.get(i.text_encoder)
        ids = tokenizer([i.text or i.fallback], padding="max_length", max_length=i.max_sequence_length, truncation=True,
                        add_special_tokens=True, return_tensors="pt").input_ids

        def encode(args):
            with torch.no_grad():
                return te(args[0].to(placement(te)[0]))[0]

        # the prompts of runs batched with this one are encoded in one call (a shared one once)
        return {"hidden_states": per_sample(ctx, ("t5", id(te)), (ids,), encode, distinct=True)}


class JointEmbeddings(Node, name="JointEmbeddings", category="text"):
    """SD3's text condition: the two CLIP encoders' penultimate states side by side, zero-padded to
    T5's width and followed by T5's sequence (77 + T5 tokens long), and the two projected pooled
    embeddings concatenated: StableDiffusion3Pipeline's ``encode_prompt``."""

    class In(Inputs):
        clip_l: TextEmbeddings = Field(description="the first CLIP encoder's hidden states (EncodeHidden, penultimate)")
        clip_g: TextEmbeddings = Field(description="the second CLIP encoder's hidden states")
        t5: TextEmbeddings = Field(description="EncodeT5.hidden_states")
        pooled_l: Pooled = Field(description="the first encoder's projected pooled embedding")
        pooled_g: Pooled = Field(description="the second encoder's projected pooled embedding")

    class Out(Outputs):
        embeddings: TextEmbeddings = Field(description="(1, 77 + T5 tokens, T5 width)")
        pooled: Pooled = Field(description="(1, both projections)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        clip = torch.cat([i.clip_l, i.clip_g.to(i.clip_l)], dim=-1)
        if clip.shape[-1] > i.t5.shape[-1]:
            raise ValueError(f"the CLIP states are {clip.shape[-1]} wide together, wider than T5's {i.t5.shape[-1]}: "
                             "these encoders are not one SD3 model's")
        clip = torch.nn.functional.pad(clip, (0, i.t5.shape[-1] - clip.shape[-1]))
        return {"embeddings": torch.cat([clip, i.t5.to(clip)], dim=-2),
                "pooled": torch.cat([i.pooled_l, i.pooled_g.to(i.pooled_l)], dim=-1)}


class CFGPooled(Node, name="CFGPooled", category="text"):
    """SD3's two-half guidance batch for the pooled side: unconditional then conditional, stacked
    for one transformer call (CFGEmbeddings stacks the sequences)."""

    class In(Inputs):
        uncond: Pooled = Field(description="the negative prompt's pooled embedding")
        cond: Pooled = Field(description="the prompt's pooled embedding")

    class Out(Outputs):
        pooled: Pooled = Field(description="(2, dim)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        return {"pooled": torch.cat([i.uncond, i.cond])}


class TextIds(Node, name="TextIds", category="text"):
    """Flux's position ids for the text tokens: zeros, one (0, 0, 0) row per token (the text has
    no place in the picture; the rotary embedding sees it at the origin)."""

    class In(Inputs):
        embeddings: TextEmbeddings = Field(description="the T5 sequence (gives its length)")

    class Out(Outputs):
        text_ids: TextIdsKind = Field(description="(tokens, 3)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        return {"text_ids": torch.zeros(i.embeddings.shape[1], 3, device=i.embeddings.device, dtype=i.embeddings.dtype)}

