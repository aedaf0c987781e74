#!/usr/bin/env python3
"""llama.cpp's side of `cargo xtask bench decode`: prefill and greedy decode speed and peak
memory of one GGUF file through llama-cpp-python (an independent runtime on the same file and
thread count). Prints one JSON object.

    python3 scripts/bench_llama_cpp.py MODEL.gguf PROMPT N_NEW THREADS
"""
import json
import resource
import sys
import time

import numpy as np
from llama_cpp import Llama  # pip install llama-cpp-python (compiles llama.cpp, ~30 min on 2 cores)


def main() -> None:
    path, prompt, n_new, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    generated = 0
    for _ in range(n_new):
        # Greedy, as hlm's side runs (-t 0); the last eval's logits row.
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
        generated += 1
    decode_s = time.perf_counter() - t1
    print(json.dumps({
        "prompt_tokens": len(ids),
        "prefill_tokens_per_s": len(ids) / prefill_s,
        "decode_tokens_per_s": generated / decode_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
