import gzip
import json


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~")+1))+list(range(ord("\xa1"), ord("\xac")+1))+list(range(ord("\xae"), ord("\xff")+1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256+n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))
lines = gzip.open('/tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz').read().decode('utf-8').split('\n')
merges = lines[1:49152-256-2+1]
bu = list(bytes_to_unicode().values())
vocab = bu + [v + '</w>' for v in bu]
for m in merges:
    vocab.append(''.join(m.split()))
vocab += ['<|startoftext|>', '<|endoftext|>']
json.dump({t: i for i, t in enumerate(vocab)}, open('vocab.json', 'w'), ensure_ascii=False)
open('merges.txt', 'w').write('#version: 0.2\n' + '\n'.join(merges) + '\n')
print(len(vocab))
from transformers import CLIPTokenizer

t = CLIPTokenizer('vocab.json', 'merges.txt')
ids = t('A picture of a puppy', padding='max_length', max_length=77).input_ids
print(ids[:9], len(ids))
