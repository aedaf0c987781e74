#!/usr/bin/env python3
"""Generate bit-exact GGUF dequantisation fixtures.

Writes crates/backends/tests/fixtures/dequant_fixtures.json. For each GGML
type (F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K) it stores two
blocks' worth of raw bytes (two 256-element super-blocks for the K-quants)
and the f32 bit patterns that gguf-py's reference `gguf.quants.dequantize`
produces for them.

Where gguf-py implements `quantize` for the type (F32, F16, Q8_0, Q4_0, Q4_1,
Q5_0) the raw bytes come from quantising seeded random f32 data; for the
K-quants (no quantizer in gguf-py) the raw bytes are seeded random bytes with
the f16 scale fields overwritten by small, finite f16 values.

Run:  /var/tmp/hlm-venv/bin/python scripts/make_dequant_fixtures.py
(venv from scripts/setup-python.sh). Output is deterministic.
"""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "backends" / "tests" / "fixtures" / "dequant_fixtures.json"

SEED = 20240611
TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q5_K", "Q6_K"]


def f16_bytes(vals: np.ndarray) -> np.ndarray:
    return np.asarray(vals, dtype=np.float16).view(np.uint8)


def make_raw(name: str, rng: np.random.Generator) -> tuple[np.ndarray, int, str]:
    """Return (raw uint8 bytes, n_elements, how)."""
    qtype = T[name]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]

    if name == "F32":
        n = 64
        x = (rng.standard_normal(n) * 3.0).astype(np.float32)
        # a few edge values: zeros of both signs, a subnormal, big and tiny
        x[:6] = np.array([0.0, -0.0, 1e-40, 3.0e38, -1.5, 1.0e-30], dtype=np.float32)
        return quantize(x, qtype).view(np.uint8).copy(), n, "quantize"

    if name == "F16":
        n = 64
        x = (rng.standard_normal(n) * 3.0).astype(np.float32)
        # edge values: signed zeros, f16 subnormals, f16 max/min-normal
        x[:8] = np.array([0.0, -0.0, 6.0e-8, -3.0e-6, 65504.0, 6.103515625e-05, -1.0, 0.5],
                         dtype=np.float32)
        return quantize(x, qtype).view(np.uint8).copy(), n, "quantize"

    n_blocks = 2
    n = n_blocks * block_size

    if name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0"):
        # rows of random data with different scales per block; quantize() exists
        x = rng.standard_normal(n).astype(np.float32)
        x[:block_size] *= 0.05
        x[block_size:] = x[block_size:] * 2.0 + 0.7  # offset helps Q4_1's min
        raw = quantize(x.reshape(1, n), qtype).reshape(-1).view(np.uint8).copy()
        assert raw.size == n_blocks * type_size, (name, raw.size)
        return raw, n, "quantize"

    # K-quants: random raw bytes, then sane f16 scale fields
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if name in ("Q4_K", "Q5_K"):
        # layout: d (f16) | dmin (f16) | scales[12] | (qh[32] for Q5_K) | qs
        d = rng.uniform(0.001, 0.05, size=n_blocks)
        dmin = rng.uniform(0.001, 0.05, size=n_blocks)
        raw[:, 0:2] = f16_bytes(d).reshape(n_blocks, 2)
        raw[:, 2:4] = f16_bytes(dmin).reshape(n_blocks, 2)
    elif name == "Q6_K":
        # layout: ql[128] | qh[64] | scales[16] (int8) | d (f16)
        d = rng.uniform(0.001, 0.05, size=n_blocks) * np.array([1.0, -1.0])
        raw[:, type_size - 2:type_size] = f16_bytes(d).reshape(n_blocks, 2)
    else:
        raise AssertionError(name)
    return raw.reshape(-1).copy(), n, "random_raw"


def main() -> int:
    rng = np.random.default_rng(SEED)
    entries = []
    for name in TYPES:
        qtype = T[name]
        raw, n, how = make_raw(name, rng)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        assert raw.size == (n // block_size) * type_size, (name, raw.size, n)

        deq = dequantize(raw.copy(), qtype).astype(np.float32, copy=False).reshape(-1)
        assert deq.size == n, (name, deq.size, n)
        assert np.all(np.isfinite(deq)), name
        bits = deq.view(np.uint32)

        # verify: re-dequantise from the hex round-trip and compare bit-exactly
        raw2 = np.frombuffer(bytes.fromhex(raw.tobytes().hex()), dtype=np.uint8)
        deq2 = dequantize(raw2.copy(), qtype).astype(np.float32, copy=False).reshape(-1)
        assert np.array_equal(deq2.view(np.uint32), bits), name

        entries.append({
            "type": name,
            "ggml_type": int(qtype),
            "block_size": int(block_size),
            "type_size": int(type_size),
            "n_elements": int(n),
            "source": how,
            "raw_hex": raw.tobytes().hex(),
            "expected_f32_bits": [int(b) for b in bits],
        })
        print(f"{name:5s} ggml_type={int(qtype):2d} bytes={raw.size:4d} n={n:4d} "
              f"source={how:10s} min={deq.min():+.4g} max={deq.max():+.4g}")

    doc = {
        "generated_by": {
            "script": "scripts/make_dequant_fixtures.py",
            "seed": SEED,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "gguf": version("gguf"),
        },
        "fixtures": entries,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
