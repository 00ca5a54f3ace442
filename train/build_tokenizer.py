"""Rebuilds the CLIP tokenizer files shipped in nodes/models/tiny-sd/tokenizer/ (vocab.json and
merges.txt for transformers' CLIPTokenizer) from the BPE merges file inside the open-clip-torch
wheel, offline. graphflow does not depend on open-clip-torch (installing it pulls a torchvision
that breaks transformers beside torch 2.13); take the wheel once:

    pip download --no-deps open-clip-torch -d /tmp/oc
    python train/build_tokenizer.py /tmp/oc/open_clip_torch-*.whl nodes/models/tiny-sd/tokenizer

The vocabulary is built the way CLIP's own SimpleTokenizer builds it: the 256 byte symbols, the
same with the end-of-word marker, one entry per merge, then the two special tokens (49,408 in
all). The result reproduces openai/clip-vit-large-patch14's ids.
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build(wheel: Path, out: Path) -> int:
    with zipfile.ZipFile(wheel) as z:
        lines = gzip.decompress(z.read(BPE_IN_WHEEL)).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out = Path(sys.argv[2])
    n = build(Path(sys.argv[1]), out)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    ids = tok("A picture of a puppy").input_ids
    print(f"{n} tokens; 'A picture of a puppy' -> {ids}")
    assert ids == [49406, 320, 1674, 539, 320, 6829, 49407], ids


if __name__ == "__main__":
    main()
