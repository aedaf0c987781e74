#!/usr/bin/env python3
"""Reference BERTScores from the `bert-score` package (an independent implementation) for
crates/eval/tests/bertscore.rs, on the fetched all-MiniLM-L6-v2.

    scripts/setup-python.sh && /var/tmp/hlm-venv/bin/pip install bert-score
    /var/tmp/hlm-venv/bin/python scripts/make_bertscore_fixtures.py \
        ~/.cache/hlm/models/all-minilm-l6-v2 > crates/eval/tests/fixtures/bertscore.json
"""
import json
import sys

import bert_score
import torch

folder = sys.argv[1]
pairs = [
    ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("A hash map stores key-value pairs and finds a value by hashing its key.",
     "A hash table maps keys to values using a hash function to compute an index."),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat.", "Quarterly revenue grew by twelve percent."),
    ("Café naïve — résumé, 東京 and emoji 🙂!", "Cafe naive resume, Tokyo and an emoji."),
    ("return x", "  return   x  "),
]
cands = [c for c, _ in pairs]
refs = [r for _, r in pairs]
out = {"model": "all-minilm-l6-v2", "bert_score": bert_score.__version__, "cases": []}
torch.set_grad_enabled(False)
for layers in (6, 3):
    for idf in (False, True):
        p, r, f = bert_score.score(
            cands, refs, model_type=folder, num_layers=layers, idf=idf,
            # batch_size=1: bert-score multiplies similarities by the padding mask, so in a
            # padded batch a padded position offers a similarity of 0 to the maximum, and a
            # token whose best real match is negative scores 0 instead: the result would
            # depend on the batch. One pair per batch has no padding.
            batch_size=1, use_fast_tokenizer=True, device="cpu",
        )
        out["cases"].append({
            "layer": layers,
            "idf": idf,
            "candidates": cands,
            "references": refs,
            "precision": p.tolist(),
            "recall": r.tolist(),
            "f1": f.tolist(),
        })
json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
print()
