"""Prompt weighting (EncodeWeighted) against references that are not graphflow's: compel 2.5.1's
own embeddings for the same prompt in compel's syntax, and ComfyUI's formula transcribed below
from its source; malformed prompts refused with the character named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphflow import Executor, Workflow

LONG = ("a red circle on a blue background, drawn with a thick brush. " * 3 + "a small yellow square in the corner, "
        "with (soft:1.2) shadows and [grainy] paper texture. " * 3)

# prompt in our syntax -> the same prompt in compel's syntax
COMPEL_CASES = {
    "a red circle": "a red circle",
    "a (red:1.3) circle": "a (red)1.3 circle",
    "a (red:0.5) circle on a (blue:0.8) background": "a (red)0.5 circle on a (blue)0.8 background",
    "(a red:1.2) circle (on a blue:0.3) background": "(a red)1.2 circle (on a blue)0.3 background",
    "a (red) circle [blue] ((square))": "a (red)1.1 circle (blue)0.9090909090909091 (square)1.2100000000000002",
    "a ((red:1.5)) circle": "a (red)1.6500000000000001 circle",
    "(x:0)": "(x)0",
    "": "",
}


def encode(model: Path, text: str, *, mode: str, layer: str = "last", clip_skip: int = 0, encoder: str = "") -> dict:
    f = lambda r: {"from": r}
    doc = {"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(model)}},
        "w": {"type": "EncodeWeighted", "inputs": {"tokenizer": f(f"model.tokenizer{encoder}"), "text_encoder": f(f"model.text_encoder{encoder}"),
                                                   "text": text, "mode": mode, "layer": layer, "clip_skip": clip_skip}},
    }, "outputs": {"z": "w.text_embeddings", "pooled": "w.pooled"}}
    r = Executor().run(Workflow.from_dict(doc))
    assert r.ok, r.errors
    return r


@pytest.fixture(scope="module")
def sd(tiny_model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False, local_files_only=True)


@pytest.fixture(scope="module")
def xl(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)


@pytest.mark.parametrize("ours,theirs", [*COMPEL_CASES.items(), (LONG, LONG.replace("(soft:1.2)", "(soft)1.2")
                                                                 .replace("[grainy]", "(grainy)0.9090909090909091"))])
def test_compel_mode_equals_compel(tiny_model, sd, ours, theirs):
    from compel import Compel

    ref = Compel(tokenizer=sd.tokenizer, text_encoder=sd.text_encoder, truncate_long_prompts=False)(theirs)
    got = encode(tiny_model, ours, mode="compel")["z"]
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5


def test_compel_down_weighting_fades_the_words_out(tiny_model, sd):
    """compel's weight 0 is the prompt with the fragment masked out, not its negation: a check
    that the test above compares something that moves."""
    base = encode(tiny_model, "a red circle", mode="compel")["z"]
    half = encode(tiny_model, "a (red:0.5) circle", mode="compel")["z"]
    assert (half - base).abs().max().item() > 1e-2


@pytest.mark.parametrize("ours,theirs", [("a (red:1.3) circle, (blue:0.6) sky", "a (red)1.3 circle, (blue)0.6 sky"),
                                         ("a red circle", "a red circle")])
def test_compel_mode_equals_compel_on_sdxl(tiny_sdxl, xl, ours, theirs):
    from compel import Compel, ReturnedEmbeddingsType

    c = Compel(tokenizer=[xl.tokenizer, xl.tokenizer_2], text_encoder=[xl.text_encoder, xl.text_encoder_2],
               returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
               requires_pooled=[False, True], truncate_long_prompts=False)
    ref, ref_pooled = c(theirs)
    one = encode(tiny_sdxl, ours, mode="compel", layer="penultimate")
    two = encode(tiny_sdxl, ours, mode="compel", layer="penultimate", encoder="_2")
    got = torch.cat([one["z"], two["z"]], dim=-1)
    assert (got - ref).abs().max().item() <= 1e-5
    # compel pools the prompt's raw text, its syntax included ("(red)1.3"); graphflow pools the
    # words without the syntax, which is compel's pooled embedding of the plain text
    plain = ours.replace("(red:1.3)", "red").replace("(blue:0.6)", "blue")
    assert (two["pooled"] - c(plain)[1]).abs().max().item() <= 1e-5


# --- ComfyUI, transcribed from comfy/sd1_clip.py (comfyanonymous/ComfyUI, commit 00728eb2):
# parse_parentheses, token_weights, escape_important/unescape_important,
# SDTokenizer.tokenize_with_weights and ClipTokenWeightEncoder.encode_token_weights, with the
# HF text encoder standing in for ComfyUI's (SDClipModel.forward without attention masks).

def _parse_parentheses(string):
    result, current, nesting = [], "", 0
    for char in string:
        if char == "(":
            if nesting == 0:
                if current:
                    result.append(current)
                current = "("
            else:
                current += char
            nesting += 1
        elif char == ")":
            nesting -= 1
            if nesting == 0:
                result.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        result.append(current)
    return result


def _token_weights(string, current_weight):
    out = []
    for x in _parse_parentheses(string):
        weight = current_weight
        if len(x) >= 2 and x[-1] == ")" and x[0] == "(":
            x = x[1:-1]
            xx = x.rfind(":")
            weight *= 1.1
            if xx > 0:
                try:
                    weight = float(x[xx + 1:])
                    x = x[:xx]
                except ValueError:
                    pass
            out += _token_weights(x, weight)
        else:
            out += [(x, current_weight)]
    return out


def _comfy_tokenize(tokenizer, text, max_length=77, max_word_length=8):
    start, end = tokenizer("")["input_ids"]
    pad = tokenizer.pad_token_id  # pad_with_end (SD 1.x's clip_l) pads with the end token; clip_g with 0 ("!")
    text = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    vocab = tokenizer.get_vocab()
    tokens = []
    for segment, weight in _token_weights(text, 1.0):
        for word in [x for x in segment.replace("\0\1", ")").replace("\0\2", "(").replace("\n", " ").split(" ") if x != ""]:
            if f"{word}</w>" in vocab:
                result = [vocab[f"{word}</w>"]]
            else:
                result = tokenizer(word)["input_ids"][1:-1]
            tokens.append([(t, weight) for t in result])
    batched, batch = [], [(start, 1.0)]
    batched.append(batch)
    for t_group in tokens:
        is_large = len(t_group) >= max_word_length
        while len(t_group) > 0:
            if len(t_group) + len(batch) > max_length - 1:
                remaining = max_length - len(batch) - 1
                if is_large:
                    batch.extend(t_group[:remaining])
                    batch.append((end, 1.0))
                    t_group = t_group[remaining:]
                else:
                    batch.append((end, 1.0))
                    batch.extend([(pad, 1.0)] * remaining)
                batch = [(start, 1.0)]
                batched.append(batch)
            else:
                batch.extend(t_group)
                t_group = []
    batch.append((end, 1.0))
    batch.extend([(pad, 1.0)] * (max_length - len(batch)))
    return batched


def _comfy_encode(tokenizer, te, text, hidden):
    pairs = _comfy_tokenize(tokenizer, text)
    to_encode = [[t for t, _ in x] for x in pairs]
    has_weights = any(w != 1.0 for x in pairs for _, w in x)
    if has_weights:
        length = max(len(x) for x in to_encode)
        to_encode.append([tokenizer.bos_token_id, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (length - 2))
    with torch.no_grad():
        out = te(torch.tensor(to_encode), output_hidden_states=True)
    z_all = hidden(out)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    output = []
    for k in range(len(pairs)):
        z = z_all[k:k + 1].clone()
        if has_weights:
            z_empty = z_all[-1]
            for i in range(len(z)):
                for j in range(len(z[i])):
                    weight = pairs[k][j][1]
                    if weight != 1.0:
                        z[i][j] = (z[i][j] - z_empty[j]) * weight + z_empty[j]
        output.append(z)
    return torch.cat(output, dim=-2), pooled[0:1]


COMFY_CASES = ["a red circle", "a (red:1.3) circle", "a (red:0.5) circle on a (blue:-0.2) background", "((red)) circle",
               "(a (red:1.5) circle:0.8)", "a \\(red\\) circle", "(x:0)", "", LONG.replace("[grainy]", "(grainy:0.9)"),
               "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz " * 3]


@pytest.mark.parametrize("text", COMFY_CASES)
def test_comfy_mode_equals_comfyui_formula(tiny_model, sd, text):
    ref, _ = _comfy_encode(sd.tokenizer, sd.text_encoder, text, lambda out: out[0])
    got = encode(tiny_model, text, mode="comfy")["z"]
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5


def test_comfy_mode_equals_comfyui_formula_on_sdxl_with_clip_skip(tiny_sdxl, xl):
    text = "a (red:1.3) circle, (blue:0.6) sky " + LONG.replace("[grainy]", "(grainy:0.9)")  # ComfyUI reads [ ] as text
    for suffix, tok, te in (("", xl.tokenizer, xl.text_encoder), ("_2", xl.tokenizer_2, xl.text_encoder_2)):
        ref, ref_pooled = _comfy_encode(tok, te, text, lambda out: out.hidden_states[-3])
        got = encode(tiny_sdxl, text, mode="comfy", layer="penultimate", clip_skip=1, encoder=suffix)
        assert got["z"].shape == ref.shape == (1, 77 * 2, te.config.hidden_size)
        assert (got["z"] - ref).abs().max().item() <= 1e-5
        assert (got["pooled"] - ref_pooled).abs().max().item() <= 1e-5


def test_unweighted_prompt_equals_encode_prompt(tiny_model, sd):
    """Without weights and within 77 tokens, both modes give EncodePrompt's tensor."""
    ids = sd.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = sd.text_encoder(ids)[0]
    for mode in ("comfy", "compel"):
        assert (encode(tiny_model, "a red circle", mode=mode)["z"] - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("text,message", [
    ("a (red:abc) circle", "the weight 'abc' is not a number (write \\( \\) for literal brackets) at character 8"),
    ("a (red circle", "'(' is never closed (add ')', or write \\( for the character itself) at character 3"),
    ("a red) circle", "')' closes no bracket (write \\) for the character itself) at character 6"),
    ("a [red:0.5] circle", "square brackets take no weight"),
    ("a (red] circle", "']' closes the '(' opened at character 3 at character 7"),
])
def test_malformed_prompt_is_refused_at_validation_with_its_position(tiny_model, text, message):
    def doc(value):
        return {"format": 1, "params": {"prompt": {"default": "x", "type": "string"}}, "nodes": {
            "model": {"type": "LoadModel", "inputs": {"path": str(tiny_model)}},
            "w": {"type": "EncodeWeighted", "inputs": {"tokenizer": {"from": "model.tokenizer"},
                                                       "text_encoder": {"from": "model.text_encoder"}, "text": value}},
        }, "outputs": {"a": "w.text_embeddings"}}

    literal = Workflow.from_dict(doc(text)).problems()
    param = Workflow.from_dict(doc({"param": "prompt"})).with_params(prompt=text).problems()
    assert [(p.code, p.node, p.field) for p in literal] == [("bad_literal", "w", "inputs.text")]
    assert [(p.code, p.node, p.field) for p in param] == [("bad_param", "w", "inputs.text")]
    assert message in literal[0].message and message in param[0].message


def test_malformed_prompt_from_a_link_fails_the_node_naming_the_position(tiny_model):
    doc = {"format": 1, "nodes": {
        "model": {"type": "LoadModel", "inputs": {"path": str(tiny_model)}},
        "text": {"type": "Text", "inputs": {"template": "a ($x:abc)", "values": {"x": "red"}}},
        "w": {"type": "EncodeWeighted", "inputs": {"tokenizer": {"from": "model.tokenizer"}, "text_encoder": {"from": "model.text_encoder"},
                                                   "text": {"from": "text.text"}}},
    }, "outputs": {"z": "w.text_embeddings"}}
    r = Executor().run(Workflow.from_dict(doc))
    assert not r.ok
    assert r.errors[0].node == "w"
    assert "the weight 'abc' is not a number" in r.errors[0].message and "at character 8" in r.errors[0].message


def test_the_syntax_reads_weights_nesting_and_escapes():
    from graphflow_nodes.stages.prompt_syntax import Fragment, parse

    assert parse("a (red:1.3) [blue] \\(x\\) \\[y\\]") == [
        Fragment("a ", 1.0), Fragment("red", 1.3), Fragment(" ", 1.0), Fragment("blue", 1 / 1.1), Fragment(" (x) [y]", 1.0)]
    # nested: A1111 and compel multiply an explicit weight by the outer one, ComfyUI replaces it
    assert [f.weight for f in parse("((red:1.5))")] == [pytest.approx(1.65)]
    assert [f.weight for f in parse("((red:1.5))", explicit="replace")] == [1.5]
    assert parse("(a)(b)") == [Fragment("a", 1.1), Fragment("b", 1.1)]  # two words, never joined into "ab"
    assert parse("(red:-0.5) (x:.5e1)") == [Fragment("red", -0.5), Fragment(" ", 1.0), Fragment("x", 5.0)]
    assert parse("a: b, 10:30") == [Fragment("a: b, 10:30", 1.0)]  # a colon outside brackets is text
    assert parse("") == [Fragment("", 1.0)]
