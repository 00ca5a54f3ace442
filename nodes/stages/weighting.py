"""Weighted prompts: ``(word:1.3)``, ``(word)``, ``[word]`` and prompts longer than 77 tokens,
encoded into the same kind of embeddings ``EncodePrompt`` / ``EncodeHidden`` give (SD 1.x, and each
of SDXL's two encoders).

The syntax is one (prompt_syntax.py); what a weight *does* is the ``mode``, because the tools
people bring prompts from disagree, and a prompt should mean here what it meant there:

- ``comfy``: ComfyUI's ``comfy/sd1_clip.py``. Each token's state is pushed away from (or towards)
  the empty prompt's state at the same position, ``(z - z_empty) * w + z_empty``; words are kept
  whole across 75-token chunks; an explicit weight inside brackets replaces the outer one.
- ``compel``: compel 2.5's (InvokeAI's) ``EmbeddingsProvider``. Weights above 1 as ComfyUI's;
  a weight below 1 instead blends towards the prompt encoded with that fragment masked out of the
  attention, by ``tan((1 - w) * pi / 2)``, so 0 removes the fragment rather than inverting it;
  chunks split at the last sentence end that fits; nested weights multiply.

Both encode a prompt longer than 75 tokens as several 77-token chunks (start token, up to 75
tokens, end token, padding) side by side: the UNet attends to 154, 231… states."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from graphflow_nodes.kinds import Pooled, TextEmbeddings, TextEncoder, Tokenizer
from graphflow_nodes.stages.prompt_syntax import Fragment, check, parse
from pydantic import AfterValidator, Field

from graphflow.node_api import Context, Inputs, Node, Outputs

#: what a chunk holds besides the start and end tokens
CHUNK = 75
#: ComfyUI's ``max_word_length``: a word of this many tokens or more may be split across chunks
MAX_WORD = 8


def hidden_of(out, te, layer: str, skip: int):
    """The chosen hidden state of a text encoder's output (``output_hidden_states=True``), as
    diffusers' pipelines take it for ``clip_skip``: ``last`` with skip 0 is the final state after
    the final layer norm; skip n > 0 the state n layers earlier, normed too (SD 1.x); ``penultimate``
    the state before the last layer and ``skip`` more, without the norm (SDXL)."""
    from graphflow_nodes.stages.encoders import _text_model

    if layer == "penultimate":
        return out.hidden_states[-(skip + 2)]
    if skip == 0:
        return out.last_hidden_state  # (out[0] of an encoder with a projection is its pooled projection)
    return _text_model(te).final_layer_norm(out.hidden_states[-(skip + 1)])


def pooled_of(out):
    return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


class _Encoder:
    """One text encoder with its tokenizer and the hidden state to give."""

    def __init__(self, tokenizer, te, layer: str, skip: int) -> None:
        from graphflow_nodes.stages.encoders import table_device

        self.tok, self.te, self.layer, self.skip = tokenizer, te, layer, skip
        self.device = table_device(te)
        n_layers = te.config.num_hidden_layers
        if skip + (2 if layer == "penultimate" else 1) > n_layers:  # hidden_states[0] is the input, no layer's output
            raise ValueError(f"clip_skip {skip} reaches past the first of the text encoder's {n_layers} layers")
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.length = tokenizer.model_max_length

    def __call__(self, ids: list[list[int]], mask=None):
        import torch

        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        with torch.no_grad():
            out = self.te(t, mask, output_hidden_states=True, return_dict=True)
            return hidden_of(out, self.te, self.layer, self.skip), pooled_of(out)

    def empty_ids(self, length: int | None = None) -> list[int]:
        return [self.bos, self.eos] + [self.pad] * ((length or self.length) - 2)


# --- ComfyUI ---------------------------------------------------------------------------------

def comfy_chunks(tokenizer, fragments: list[Fragment]) -> list[list[tuple[int, float]]]:
    """(token, weight) rows of 77, as ComfyUI's ``SDTokenizer.tokenize_with_weights`` builds them:
    each fragment split at spaces into words, each word tokenized alone (whole when the vocabulary
    has it), and a word shorter than 8 tokens moved whole to the next chunk rather than split."""
    vocab = tokenizer.get_vocab()
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    length = tokenizer.model_max_length
    words: list[list[tuple[int, float]]] = []
    for frag in fragments:
        for word in (w for w in frag.text.replace("\n", " ").split(" ") if w):
            ids = [vocab[f"{word}</w>"]] if f"{word}</w>" in vocab else tokenizer(word)["input_ids"][1:-1]
            words.append([(t, frag.weight) for t in ids])
    batch = [(bos, 1.0)]
    chunks = [batch]
    for group in words:
        large = len(group) >= MAX_WORD
        while group:
            if len(group) + len(batch) > length - 1:
                room = length - len(batch) - 1
                if large:
                    batch.extend(group[:room])
                    batch.append((eos, 1.0))
                    group = group[room:]
                else:
                    batch.append((eos, 1.0))
                    batch.extend([(pad, 1.0)] * room)
                batch = [(bos, 1.0)]
                chunks.append(batch)
            else:
                batch.extend(group)
                group = []
    batch.append((eos, 1.0))
    batch.extend([(pad, 1.0)] * (length - len(batch)))
    return chunks


def comfy_embeddings(enc: _Encoder, fragments: list[Fragment]):
    """ComfyUI's ``ClipTokenWeightEncoder.encode_token_weights``: all chunks and, when any weight
    is not 1, the empty prompt, encoded as one batch without an attention mask; each weighted
    token moved along its offset from the empty prompt's state; the first chunk's pooled output."""
    import torch

    chunks = comfy_chunks(enc.tok, fragments)
    weighted = any(w != 1.0 for c in chunks for _, w in c)
    ids = [[t for t, _ in c] for c in chunks] + ([enc.empty_ids()] if weighted else [])
    z, pooled = enc(ids)
    out = []
    for k, chunk in enumerate(chunks):
        zk = z[k : k + 1].clone()
        if weighted:
            empty = z[-1]
            w = torch.tensor([w for _, w in chunk], dtype=zk.dtype, device=zk.device)[:, None]
            moved = (zk[0] - empty) * w + empty
            zk[0] = torch.where(w != 1.0, moved, zk[0])
        out.append(zk)
    return torch.cat(out, dim=-2), pooled[0:1]


# --- compel ----------------------------------------------------------------------------------

def _split_point(tokenizer, ids: list[int]) -> int:
    """compel's ``_find_next_best_split_point`` for its default ``SENTENCES`` mode: after the last
    ``.`` that fits, else the last ``, . ; :``, else the last word end, else at 75."""
    if len(ids) <= CHUNK:
        return CHUNK
    pieces = tokenizer.convert_ids_to_tokens(ids[:CHUNK])
    for marks in (lambda p: p == ".</w>", lambda p: p in (".</w>", ",</w>", ";</w>", ":</w>"), lambda p: p.endswith("</w>")):
        for index in range(len(pieces) - 1, -1, -1):
            if marks(pieces[index]):
                return index + 1
    return CHUNK


def compel_chunks(enc: _Encoder, fragments: list[Fragment]):
    """Token ids, weights and the fragment each token came from (-1: start, end, padding), in
    77-token chunks as compel's ``_chunk_and_pad_token_ids`` lays them out."""
    per = enc.tok([f.text for f in fragments], truncation=False, padding="do_not_pad")["input_ids"]
    ids, weights, owner = [], [], []
    for k, (frag, toks) in enumerate(zip(fragments, per)):
        toks = [t for t in toks[1:-1]]
        ids += toks
        weights += [frag.weight] * len(toks)
        owner += [k] * len(toks)
    out_ids, out_w, out_owner = [], [], []
    while True:
        cut = _split_point(enc.tok, ids)
        row = [enc.bos] + ids[:cut] + [enc.eos]
        pad = enc.length - len(row)
        out_ids += row + [enc.pad] * pad
        out_w += [1.0] + weights[:cut] + [1.0] * (1 + pad)
        out_owner += [-1] + owner[:cut] + [-1] * (1 + pad)
        ids, weights, owner = ids[cut:], weights[cut:], owner[cut:]
        if not ids:
            return out_ids, out_w, out_owner


def compel_embeddings(enc: _Encoder, fragments: list[Fragment]):
    """compel's ``get_embeddings_for_weighted_prompt_fragments`` with ``truncate_long_prompts=False``
    and its default ``DownweightMode.MASK``; the pooled embedding of the whole text, truncated to
    one chunk, as compel's ``get_pooled_embeddings`` — of the words alone: compel pools its raw
    prompt, ``(red)1.3`` and all, which would make the syntax part of the picture."""
    import torch

    fragments = [f for f in fragments if f.text.strip()] or [Fragment("", 1.0)]
    ids, weights, owner = compel_chunks(enc, fragments)
    n = enc.length
    mask = torch.ones(len(ids), dtype=torch.long, device=enc.device)
    w = torch.tensor(weights, dtype=torch.float32)  # compel's default dtype for weights, whatever the model's
    empty = None

    def build(m):
        nonlocal empty
        parts = []
        for s in range(0, len(ids), n):
            z = enc([ids[s : s + n]], m[s : s + n].unsqueeze(0))[0]
            ws = w[s : s + n].reshape(-1, 1).expand(z.shape[1:]).to(z.device)
            same = ws == 1
            if not torch.all(same):
                if empty is None:
                    empty = enc([enc.empty_ids()])[0]
                z = torch.where(same, z, empty + (z - empty) * ws)
            parts.append(z)
        return torch.cat(parts, dim=1)

    stack, lerp = [build(mask).unsqueeze(0)], [1.0]
    positions = torch.tensor(owner)
    for k, frag in enumerate(fragments):
        where = torch.nonzero(positions == k).flatten()
        if frag.weight >= 1 or len(where) == 0:
            continue
        without = mask.clone()
        without[int(where[0]) : int(where[-1]) + 1] = 0
        without[0::n] = 1
        without[n - 1 :: n] = 1
        stack.append(build(without).unsqueeze(0))
        lerp.append(math.tan((1.0 - max(1e-5, frag.weight)) * math.pi / 2))
    embeddings = torch.cat(stack, dim=1)
    scale = torch.tensor(lerp, dtype=embeddings.dtype, device=embeddings.device)
    scale = (scale / torch.sum(scale)).reshape(-1, 1, 1)
    z = torch.sum(embeddings * scale, dim=1).to(enc.te.dtype)  # compel hands back the encoder's dtype too
    text = " ".join(f.text for f in fragments)
    pooled_ids = enc.tok([text], truncation=True, padding="max_length", max_length=n)["input_ids"]
    return z, enc(pooled_ids)[1]


def weighted_embeddings(tokenizer, te, text: str, mode: str, layer: str = "last", skip: int = 0):
    """(hidden states, pooled) of a weighted prompt under ``mode``."""
    enc = _Encoder(tokenizer, te, layer, skip)
    if mode == "comfy":
        return comfy_embeddings(enc, parse(text, explicit="replace"))
    return compel_embeddings(enc, parse(text, explicit="multiply"))


class EncodeWeighted(Node, name="EncodeWeighted", category="text", uses=("models",)):
    """A weighted prompt → text embeddings: ``(word:1.3)``, ``(word)`` ×1.1, ``[word]`` ÷1.1,
    ``\\(`` for a bracket; longer than 77 tokens is encoded in chunks. ``mode`` says what a weight
    does (ComfyUI's or compel's arithmetic; README *Prompt weighting*). A malformed prompt is
    refused with the character where it goes wrong."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel (tokenizer, or SDXL's tokenizer_2)")
        text_encoder: TextEncoder = Field(description="the matching text encoder")
        text: Annotated[str, AfterValidator(check)] = Field("", description="the weighted prompt")
        mode: Literal["comfy", "compel"] = Field("comfy", description="comfy: ComfyUI's weights; compel: compel's "
                                                 "(weights below 1 fade the words out instead)")
        layer: Literal["last", "penultimate"] = Field("last", description="last (SD 1.x) or penultimate without the final norm (SDXL)")
        clip_skip: int = Field(0, ge=0, le=48, description="this many layers before the chosen one (diffusers' clip_skip)")

    class Out(Outputs):
        text_embeddings: TextEmbeddings = Field(description="(1, 77 × chunks, hidden)")
        pooled: Pooled = Field(description="the pooled/projected embedding (SDXL's second encoder)")

    def run(self, i: In, ctx: Context) -> dict:
        z, pooled = weighted_embeddings(ctx.models.get(i.tokenizer), ctx.models.get(i.text_encoder), i.text, i.mode,
                                        i.layer, i.clip_skip)
        return {"text_embeddings": z, "pooled": pooled}
