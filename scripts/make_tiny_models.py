#!/usr/bin/env python3
"""Generate two tiny random HF models plus reference outputs for Rust tests.

Writes, under crates/backends/tests/fixtures/:
  tiny-llama/{config.json, model.safetensors, reference.json}
  tiny-qwen2/{config.json, model.safetensors, reference.json}

Models are built with transformers + torch on CPU in float32 with
torch.manual_seed(0); all weights are re-initialised N(0, 0.2) (RMSNorm weights
1 + N(0, 0.1), Qwen2 q/k/v biases N(0, 0.2)) so the logits are far from zero.
Everything runs with attn_implementation="eager".

reference.json:
  input_ids                    [12] token ids of the prefill sequence
  logits                       [12][64] logits of a full forward over input_ids
  extra_ids                    [3] tokens fed one at a time after the prefill
  decode_logits                [3][64] logits of each of those incremental steps
                               (past_key_values from the 12-token prefill)
  attentions_last_layer_newest [heads][12] softmax attention probabilities of the
                               last layer, for the last position of input_ids
  generated_by                 versions / seed

Run:  /var/tmp/hlm-venv/bin/python scripts/make_tiny_models.py
(venv from scripts/setup-python.sh).
"""
from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "backends" / "tests" / "fixtures"

INPUT_IDS = [1, 5, 17, 33, 2, 63, 8, 40, 21, 9, 56, 12]
EXTRA_IDS = [7, 44, 3]
STD = 0.2

COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=128,
    initializer_range=STD,
)


def build(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(**COMMON, rope_theta=10000.0, rms_norm_eps=1e-5,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = Qwen2Config(**COMMON, rope_theta=1e6, rms_norm_eps=1e-6,
                          tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.set_attn_implementation("eager")
    model = model.to(torch.float32).eval()

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:  # weights and (Qwen2) q/k/v biases
                p.copy_(STD * torch.randn_like(p))
    if kind == "qwen2":
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        for i, layer in enumerate(model.model.layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                b = getattr(layer.self_attn, proj).bias
                assert b is not None and b.abs().max() > 0, (i, proj)
    return model


def reference(model) -> dict:
    ids = torch.tensor([INPUT_IDS], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, output_attentions=True)
        logits = out.logits[0].to(torch.float32)  # [12, V]
        attn = out.attentions[-1][0, :, -1, :].to(torch.float32)  # [heads, 12]
        pkv = out.past_key_values

        decode = []
        for t in EXTRA_IDS:
            step = model(input_ids=torch.tensor([[t]], dtype=torch.long),
                         past_key_values=pkv, use_cache=True)
            pkv = step.past_key_values
            decode.append(step.logits[0, -1].to(torch.float32))
        decode = torch.stack(decode)  # [3, V]

        # consistency: incremental decode == full forward over all 15 tokens
        full = model(input_ids=torch.tensor([INPUT_IDS + EXTRA_IDS])).logits[0]
        assert torch.allclose(full[: len(INPUT_IDS)], logits, atol=1e-5)
        assert torch.allclose(full[len(INPUT_IDS):], decode, atol=1e-5), \
            (full[len(INPUT_IDS):] - decode).abs().max()
        assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[0]), atol=1e-5)

    return {
        "input_ids": INPUT_IDS,
        "logits": logits.numpy().astype(np.float32).tolist(),
        "extra_ids": EXTRA_IDS,
        "decode_logits": decode.numpy().astype(np.float32).tolist(),
        "attentions_last_layer_newest": attn.numpy().astype(np.float32).tolist(),
    }


def main() -> int:
    gen = {
        "script": "scripts/make_tiny_models.py",
        "seed": 0,
        "init_std": STD,
        "attn_implementation": "eager",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": version("safetensors"),
        "numpy": np.__version__,
    }
    for kind, cls_name in (("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")):
        out_dir = FIXTURES / f"tiny-{kind}"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)

        model = build(kind)
        model.save_pretrained(out_dir)  # safetensors is the default (and only) format
        # keep only what the tests need
        for extra in out_dir.iterdir():
            if extra.name not in ("config.json", "model.safetensors"):
                extra.unlink()
        # config.json via to_json_file; transformers 5 nests rope_theta inside
        # "rope_parameters" -- also add the classic top-level key for loaders
        # that expect the transformers-4 layout.
        model.config.to_json_file(out_dir / "config.json")
        cfg = json.loads((out_dir / "config.json").read_text())
        cfg.setdefault("rope_theta", cfg["rope_parameters"]["rope_theta"])
        cfg.pop("dtype", None)
        cfg["torch_dtype"] = "float32"
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

        ref = reference(model)
        ref["model_class"] = cls_name
        ref["generated_by"] = gen
        (out_dir / "reference.json").write_text(json.dumps(ref) + "\n")

        # sanity: the saved file reproduces the same logits
        reloaded = type(model).from_pretrained(out_dir, dtype=torch.float32,
                                               attn_implementation="eager").eval()
        with torch.no_grad():
            l2 = reloaded(input_ids=torch.tensor([INPUT_IDS])).logits[0]
        assert torch.allclose(l2, torch.tensor(ref["logits"]), atol=1e-6)

        with safe_open(out_dir / "model.safetensors", "pt") as f:
            names = sorted(f.keys())
            print(f"tiny-{kind}: {len(names)} tensors")
            for n in names:
                t = f.get_slice(n)
                print(f"  {n:45s} {t.get_dtype()} {t.get_shape()}")
        lg = np.array(ref["logits"])
        print(f"  logits std={lg.std():.3f} absmax={np.abs(lg).max():.3f}; "
              f"argmax={lg.argmax(-1).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
