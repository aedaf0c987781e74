#!/usr/bin/env python3
"""Greedy continuations of real GGUF models by an independent runtime.

Writes crates/backends/tests/fixtures/greedy_continuations.json: for each model
(smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, from the hlm models folder)
and each prompt, the prompt's token ids and the first N greedily chosen ids, as
Hugging Face transformers computes them from the same GGUF file
(`from_pretrained(folder, gguf_file=...)` dequantises every tensor to f32 with
gguf-py and runs the PyTorch implementation; the tokenizer is rebuilt from the
GGUF vocabulary and merges).

If llama-cpp-python is importable, the script also runs llama.cpp (its own
tokenizer, quantised kernels) on the same prompt ids and records, per prompt,
how many leading tokens agree with transformers (`llama_cpp_agreement`): llama.cpp
quantises activations to 8 bits in its dot products, so it may part ways at a
near tie; the Rust test compares with transformers, whose arithmetic (f32
weights dequantised bit-exactly) is what hlm computes.

Run:  /var/tmp/hlm-venv/bin/python scripts/make_greedy_fixtures.py
(venv from scripts/setup-python.sh; models from `cargo xtask models fetch`).
Output is deterministic.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "backends" / "tests" / "fixtures" / "greedy_continuations.json"
MODELS = Path(os.environ.get("HLM_MODELS", Path.home() / ".cache" / "hlm" / "models"))
NEW_TOKENS = 40
MODEL_NAMES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]


LLAMA_CPP_RUN = """
import json, sys
from llama_cpp import Llama
path, n, ids = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
llm = Llama(model_path=path, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
llm.eval(ids)
out = []
for _ in range(n):
    tok = int(llm.scores[llm.n_tokens - 1].argmax())
    out.append(tok)
    llm.eval([tok])
print(json.dumps(out))
"""


def llama_cpp_ids(path: Path, prompt_ids: list[int], n: int) -> list[int] | None:
    """llama.cpp's greedy ids, in a separate process (its OpenMP runtime and torch's do
    not mix in one process); None if llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    run = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP_RUN, str(path), str(n), json.dumps(prompt_ids)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    torch.manual_seed(0)
    result = {
        "generator": "scripts/make_greedy_fixtures.py",
        "transformers": version("transformers"),
        "torch": version("torch"),
        "new_tokens": NEW_TOKENS,
        "models": {},
    }
    for name in MODEL_NAMES:
        path = MODELS / name / "model.gguf"
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        model.eval()
        cases = []
        for prompt in PROMPTS:
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pad_token_id=tok.eos_token_id,
                    eos_token_id=None,
                )
            generated = out[0, len(ids):].tolist()
            case = {"prompt": prompt, "prompt_ids": ids, "generated_ids": generated}
            other = llama_cpp_ids(path, ids, NEW_TOKENS)
            if other is not None:
                agree = next((i for i, (a, b) in enumerate(zip(generated, other)) if a != b), len(other))
                case["llama_cpp_agreement"] = agree
            cases.append(case)
            print(name, repr(prompt), len(generated), "tokens", case.get("llama_cpp_agreement", ""))
        result["models"][name] = cases
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
