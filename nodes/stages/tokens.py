"""Editing the prompt at the level of token embeddings: the notebook's token replacement, the
half-puppy-half-skunk mix, and textual inversion. Edits act on token embeddings, before the
position embeddings are added, exactly where the notebook makes them."""

from __future__ import annotations

from typing import Annotated, Any

from graphflow_nodes.kinds import TextEncoder, TokenEmbeddings, TokenIds, Tokenizer, Vector
from graphflow_nodes.loading.files import resolve_embedding_path
from graphflow_nodes.stages.encoders import _text_model
from pydantic import Field

from graphflow.node_api import Context, FileInput, Inputs, Node, Outputs, open_input


def phrase_ids(tokenizer, phrase: str) -> list[int]:
    ids = tokenizer(phrase, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"{phrase!r} gives no tokens")
    return list(ids)


class TokenVector(Node, name="TokenVector", category="tokens", uses=("models",)):
    """The token-embedding row of one token (a word that the tokenizer keeps whole)."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel")
        text_encoder: TextEncoder = Field(description="from LoadModel")
        token: str = Field(description="a word that is one token, e.g. 'puppy' or 'red'")

    class Out(Outputs):
        vector: Vector = Field(description="(1, hidden)")
        token_id: int = Field(description="its id")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        tokenizer = ctx.models.get(i.tokenizer)
        ids = phrase_ids(tokenizer, i.token)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"{i.token!r} is {len(ids)} tokens ({' '.join(pieces)}), not one")
        table = _text_model(ctx.models.get(i.text_encoder)).embeddings.token_embedding
        with torch.no_grad():
            return {"vector": table.weight[ids[0]].detach().clone().unsqueeze(0), "token_id": ids[0]}


class MixVectors(Node, name="MixVectors", category="tokens"):
    """``(1 - weight) * a + weight * b``: half a puppy, half a skunk."""

    class In(Inputs):
        a: Vector = Field(description="first vector")
        b: Vector = Field(description="second vector")
        weight: float = Field(0.5, ge=-1.0, le=2.0, description="0 gives a, 1 gives b")

    class Out(Outputs):
        vector: Vector = Field(description="the mix")

    def run(self, i: In, ctx: Context) -> dict:
        if i.a.shape != i.b.shape:
            raise ValueError(f"vectors differ in shape: {tuple(i.a.shape)} and {tuple(i.b.shape)}")
        return {"vector": (1.0 - i.weight) * i.a + i.weight * i.b}


class ReplaceToken(Node, name="ReplaceToken", category="tokens", uses=("models",)):
    """Puts vectors in place of a token or phrase wherever it occurs in the prompt. A phrase of
    several tokens (a placeholder like ``<my-shape>``) collapses to the given vectors, the rest of
    the sequence moves up and the end is padded: the same sequence diffusers builds after adding
    the placeholder to its vocabulary."""

    class In(Inputs):
        tokenizer: Tokenizer = Field(description="from LoadModel")
        token_ids: TokenIds = Field(description="from Tokenize")
        token_embeddings: TokenEmbeddings = Field(description="from TokenEmbed")
        token: str = Field(description="the word or placeholder to replace, e.g. 'puppy'")
        vector: Vector = Field(description="(hidden,) or (n, hidden) replacement")
        require: bool = Field(True, description="fail when the token does not occur in the prompt")

    class Out(Outputs):
        token_embeddings: TokenEmbeddings = Field(description="edited embeddings")
        token_ids: TokenIds = Field(description="ids aligned with them (a collapsed phrase keeps its first id)")
        replaced: int = Field(description="how many occurrences were replaced")

    def run(self, i: In, ctx: Context) -> dict:
        import torch

        pat = phrase_ids(ctx.models.get(i.tokenizer), i.token)
        vec = i.vector.reshape(-1, i.vector.shape[-1]).to(i.token_embeddings)
        ids_out, emb_out, count = [], [], 0
        for ids, emb in zip(i.token_ids.tolist(), i.token_embeddings):
            length = len(ids)
            new_ids: list[int] = []
            rows: list[Any] = []
            j = 0
            while j < length:
                if ids[j : j + len(pat)] == pat:
                    new_ids += [pat[0]] * len(vec)
                    rows += list(vec)
                    j += len(pat)
                    count += 1
                else:
                    new_ids.append(ids[j])
                    rows.append(emb[j])
                    j += 1
            pad_id, pad_row = ids[-1], emb[-1]
            new_ids = (new_ids + [pad_id] * length)[:length]
            rows = (rows + [pad_row] * length)[:length]
            ids_out.append(new_ids)
            emb_out.append(torch.stack(rows))
        if count == 0 and i.require:
            raise ValueError(f"{i.token!r} (token ids {pat}) does not occur in the prompt")
        return {
            "token_embeddings": torch.stack(emb_out),
            "token_ids": torch.tensor(ids_out, dtype=i.token_ids.dtype),
            "replaced": count,
        }


def read_textual_inversion(path, token: str | None, f=None) -> tuple[Any, str]:
    """A textual-inversion file as (vectors (n, hidden), token). Reads safetensors, or a torch
    ``.bin`` with ``weights_only=True``: a pickle that would run code is refused, never executed.
    ``f``: the file, opened (``open_input``); else ``path`` is opened here."""
    import torch

    if f is None:
        with open(path, "rb") as f:
            return read_textual_inversion(path, token, f)
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        data = load(f.read())
    else:
        try:
            data = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} was refused: it is not a plain tensor file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a dict of tensors")
    if "string_to_param" in data:  # the Automatic1111 layout
        data = {data.get("name", token or "*"): data["string_to_param"]["*"]}
    if "emb_params" in data:
        data = {token or "*": data["emb_params"]}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != 1:
        raise ValueError(f"{path} holds {len(tensors)} tensors ({', '.join(map(str, tensors))}); expected one embedding")
    (name, vec), = tensors.items()
    return vec.reshape(-1, vec.shape[-1]).float(), token or str(name)


class LoadTextualInversion(Node, name="LoadTextualInversion", category="tokens"):
    """Loads a learned embedding (``learned_embeds.bin`` or ``.safetensors``), to put in place of
    a placeholder with ReplaceToken."""

    class In(Inputs):
        path: Annotated[str, FileInput(resolve=resolve_embedding_path)] = Field(
            description="the embedding file: a name in the models folders' embeddings/ (my-shape.safetensors is shipped), or a path"
        )
        token: str | None = Field(None, description="the placeholder; default: the name stored in the file")

    class Out(Outputs):
        vector: Vector = Field(description="(n, hidden) learned vectors")
        token: str = Field(description="the placeholder token")

    def run(self, i: In, ctx: Context) -> dict:
        path = resolve_embedding_path(i.path)
        with open_input(ctx, path) as f:
            vec, token = read_textual_inversion(path, i.token, f)
        return {"vector": vec, "token": token}
