"""SDXL's text side: each of its two CLIP encoders gives a chosen hidden state and a pooled
embedding, the two states are joined, and the unconditional side is a negative prompt or zeros.
Nodes of their own because SDXL's UNet was trained on the penultimate state and a pooled
embedding, which the shared ``EncodePrompt`` does not give."""

from __future__ import annotations

from typing import Any, Literal

from graphflow_nodes.kinds import Embeddings, Pooled, TextEmbeddings, TextEncoder, Tokenizer
from pydantic import Field

from graphflow.node_api import Context, Inputs, Node, Outputs


class EncodeHidden(Node, name="EncodeHidden", category="text", uses=("models",)):
    """Text → one hidden state of a CLIP text encoder and its pooled embedding. ``last`` is the
    final hidden state after the final layer norm (SD 1.x); ``penultimate`` is the state before
    the last layer, without that norm (SDXL, and "clip skip"); ``skip`` counts more layers back.
    The pooled embedding is the projected one when the encoder has a projection (SDXL's second
    encoder), else the end token's state."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel (tokenizer or tokenizer_2)")
        text_encoder: TextEncoder = Field(description="the matching text encoder")
        text: str = Field("", description="the prompt")
        fallback: str = Field("", description="encoded when text is empty (SDXL's prompt_2: empty means the same as prompt)")
        layer: Literal["last", "penultimate"] = Field("penultimate", description="which hidden state")
        skip: int = Field(0, ge=0, le=48, description="with 'penultimate': this many more layers back (diffusers' clip_skip)")

    class Out(Outputs):
        hidden_states: TextEmbeddings = Field(description="(1, 77, hidden)")
        pooled: Pooled = Field(description="(1, projection or hidden): the pooled/projected embedding")

    def run(self, i: In, ctx: Context) -> dict:
        import torch
        from graphflow_nodes.batch_calls import per_sample
        from graphflow_nodes.stages.encoders import table_device, tokenize

        te = ctx.models.get(i.text_encoder)
        ids, _ = tokenize(ctx.models.get(i.tokenizer), i.text or i.fallback)

        def encode(args):
            with torch.no_grad():
                out = te(args[0].to(table_device(te)), output_hidden_states=True)
            hidden = out[0] if i.layer == "last" else out.hidden_states[-(i.skip + 2)]
            return hidden, (out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output)

        # the prompts of runs batched with this one are encoded in one call (a shared one once)
        hidden, pooled = per_sample(ctx, ("clip-hidden", id(te), i.layer, i.skip), (ids,), encode, distinct=True)
        return {"hidden_states": hidden, "pooled": pooled}


class ConcatEmbeddings(Node, name="ConcatEmbeddings", category="text"):
    """Two encoders' hidden states side by side along the feature axis: SDXL's UNet attends to
    the first encoder's 768 features followed by the second's 1280."""

    class In(Inputs):
        a: Embeddings = Field(description="first encoder's states, (batch, 77, h1)")
        b: Embeddings = Field(description="second encoder's states, (batch, 77, h2)")

    class Out(Outputs):
        text_embeddings: TextEmbeddings = Field(description="(batch, 77, h1 + h2)")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        return {"text_embeddings": torch.cat([i.a, i.b.to(i.a)], dim=-1)}


class UncondXL(Node, name="UncondXL", category="text"):
    """The unconditional side of SDXL's guidance batch: the negative prompt's embeddings, or
    zeros shaped like them when no negative prompt is given and the model asks for zeros
    (``force_zeros_for_empty_prompt`` in model_index.json, as StableDiffusionXLPipeline does).
    A second negative prompt alone counts as a negative prompt: zeros would throw it away."""

    class In(Inputs):
        hidden_states: TextEmbeddings = Field(description="the negative prompt's concatenated hidden states")
        pooled: Pooled = Field(description="the negative prompt's pooled embedding")
        negative_prompt: str = Field("", description="the negative prompt the embeddings came from; empty means none")
        negative_prompt_2: str = Field("", description="the second encoder's own negative prompt, if any")
        zeros: bool | None = Field(None, description="use zeros for an empty negative prompt; default: the model's force_zeros_for_empty_prompt")
        pipeline_config: dict[str, Any] = Field(default_factory=dict, description="LoadModel.pipeline_config (gives the model's default)")

    class Out(Outputs):
        hidden_states: TextEmbeddings = Field(description="unconditional hidden states")
        pooled: Pooled = Field(description="unconditional pooled embedding")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        zeros = i.zeros if i.zeros is not None else bool(i.pipeline_config.get("force_zeros_for_empty_prompt", False))
        if zeros and not (i.negative_prompt or i.negative_prompt_2):
            return {"hidden_states": torch.zeros_like(i.hidden_states), "pooled": torch.zeros_like(i.pooled)}
        return {"hidden_states": i.hidden_states, "pooled": i.pooled}
