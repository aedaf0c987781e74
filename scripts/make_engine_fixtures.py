#!/usr/bin/env python3
"""Writes crates/net/tests/fixtures/{vllm-completions,vllm-point-*,sglang-generate*}.json: one
scoring request of hlm's vLLM and SGLang verifiers (and vLLM's point queries of
distribution = "sampled") and an answer in each engine's documented schema
(vLLM: vllm/entrypoints/openai/completion/protocol.py; SGLang: GenerateReqInput and its
meta_info), for a vocabulary of 4 and the sequence [3, 1, 2]. Neither engine runs without a
GPU here, so the answers are written from the schemas, not recorded from a server.

    python3 scripts/make_engine_fixtures.py
"""
import json
import math
import os

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "net", "tests", "fixtures")
LP = [math.log(p) for p in (0.4, 0.3, 0.2, 0.1)]
TOKENS = [3, 1, 2]


def row(k):
    """The law after the k-token prefix: the same four masses, rotated, so rows differ."""
    return {i: LP[(i + k) % 4] for i in range(4)}


def rank(k, v):
    return 1 + sorted(row(k).values(), reverse=True).index(v)


def entries(k):
    return [[v, i, "abcd"[i]] for i, v in sorted(row(k).items(), key=lambda e: -e[1])]


def rows():
    return [sorted(row(k).items()) for k in (1, 2, 3)]


vllm = {
    "about": "vLLM /v1/completions, written from vLLM's documented schema "
    "(CompletionRequest, CompletionResponse; prompt_logprobs as list[dict[int, Logprob] | None]; "
    "return_tokens_as_token_ids keys top_logprobs 'token_id:N'). Vocabulary 4, prompt [3, 1, 2]: "
    "rows after [3] and [3, 1] (prompt positions 1, 2) and after [3, 1, 2] (the generated token).",
    "from": 1,
    "request": {
        "model": "tiny",
        "prompt": TOKENS,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": -1,
        "logprobs": -1,
        "return_tokens_as_token_ids": True,
        "add_special_tokens": False,
    },
    "response": {
        "id": "cmpl-0",
        "object": "text_completion",
        "created": 1796300000,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "text": "token_id:0",
                "finish_reason": "length",
                "stop_reason": None,
                "logprobs": {
                    "text_offset": [0],
                    "token_logprobs": [row(3)[0]],
                    "tokens": ["token_id:0"],
                    "top_logprobs": [{f"token_id:{i}": v for i, v in row(3).items()}],
                },
                "prompt_logprobs": [None]
                + [
                    {
                        str(i): {"logprob": v, "rank": rank(k, v), "decoded_token": "abcd"[i]}
                        for i, v in row(k).items()
                    }
                    for k in (1, 2)
                ],
                "prompt_token_ids": TOKENS,
            }
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1},
    },
    "rows": rows(),
}

sglang = {
    "about": "SGLang /generate, written from SGLang's documented schema (GenerateReqInput: "
    "input_ids, return_logprob, logprob_start_len, top_logprobs_num; meta_info.input_token_logprobs "
    "/ input_top_logprobs / output_top_logprobs as [logprob, token_id, text], a null logprob on "
    "the first input token). Vocabulary 4, input [3, 1, 2], rows from the prefix of 1.",
    "from": 1,
    "request": {
        "input_ids": TOKENS,
        "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 4,
        "stream": False,
    },
    "response": {
        "text": "a",
        "output_ids": [0],
        "meta_info": {
            "id": "0",
            "finish_reason": {"type": "length", "length": 1},
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "cached_tokens": 1,
            "input_token_logprobs": [[None, 3, "d"], [row(1)[1], 1, "b"], [row(2)[2], 2, "c"]],
            "input_top_logprobs": [None, entries(1), entries(2)],
            "output_token_logprobs": [[row(3)[0], 0, "a"]],
            "output_top_logprobs": [entries(3)],
            "e2e_latency": 0.01,
        },
    },
    "rows": rows(),
}

# The same from the prefix of 2 (logprob_start_len 1): SGLang pads the first input entry
# with a null log-probability whatever the start, so rows begin at its second entry.
sglang_from_2 = {
    "about": "As sglang-generate.json, rows from the prefix of 2 (logprob_start_len = 1).",
    "from": 2,
    "request": dict(sglang["request"], logprob_start_len=1),
    "response": {
        "text": "a",
        "output_ids": [0],
        "meta_info": dict(
            sglang["response"]["meta_info"],
            cached_tokens=2,
            input_token_logprobs=[[None, 1, "b"], [row(2)[2], 2, "c"]],
            input_top_logprobs=[None, entries(2)],
        ),
    },
    "rows": rows()[1:],
}

def top(k, n, also=None):
    """The n most likely entries after the k-token prefix, and `also` beside them (vLLM adds
    the prompt or sampled token to the top n), as vLLM's prompt_logprobs entries."""
    keep = sorted(row(k).items(), key=lambda e: -e[1])[:n]
    if also is not None and also not in dict(keep):
        keep.append((also, row(k)[also]))
    return {str(i): {"logprob": v, "rank": rank(k, v), "decoded_token": "abcd"[i]} for i, v in keep}


def top_ids(k, n, also=None):
    return {f"token_id:{i}": e["logprob"] for i, e in ((int(i), e) for i, e in top(k, n, also).items())}


def point(k, n):
    """What hlm reads back: the n most likely tokens after the k-token prefix."""
    return sorted(row(k).items(), key=lambda e: -e[1])[:n]


# distribution = "sampled": the drafted token 1's own probability after [3, 1] (the last
# prompt entry of [3, 1, 1], where token 1 ranks fourth and so stands beside the top 2) ...
vllm_point_token = {
    "about": "vLLM /v1/completions as a point query: token 1's own log-probability after "
    "[3, 1] with the top 2 (prompt_logprobs = 2; vLLM adds the prompt token to each entry).",
    "query": {"token": 1},
    "prefix": [3, 1],
    "top": 2,
    "request": {
        "model": "tiny",
        "prompt": [3, 1, 1],
        "max_tokens": 1,
        "temperature": 0.0,
        "return_tokens_as_token_ids": True,
        "add_special_tokens": False,
        "prompt_logprobs": 2,
    },
    "response": {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1796300000,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "text": "token_id:0",
                "finish_reason": "length",
                "logprobs": None,
                "prompt_logprobs": [None, top(1, 2, also=1), top(2, 2, also=1)],
                "prompt_token_ids": [3, 1, 1],
            }
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1},
    },
    "point": {"token": 1, "logprob": row(2)[1], "top": point(2, 2), "computed_positions": 3},
}

# ... and a draw from the raw distribution after [3, 1, 2] under seed 84 (sent as 42).
vllm_point_sample = {
    "about": "vLLM /v1/completions as a point query: one token drawn at temperature 1 without "
    "truncation after [3, 1, 2], seed 84 (vLLM's seeds are signed: hlm sends seed >> 1), top 2.",
    "query": {"sample": 84},
    "prefix": [3, 1, 2],
    "top": 2,
    "request": {
        "model": "tiny",
        "prompt": [3, 1, 2],
        "max_tokens": 1,
        "temperature": 1.0,
        "return_tokens_as_token_ids": True,
        "add_special_tokens": False,
        "logprobs": 2,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "seed": 42,
    },
    "response": {
        "id": "cmpl-2",
        "object": "text_completion",
        "created": 1796300000,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "text": "token_id:2",
                "finish_reason": "length",
                "logprobs": {
                    "text_offset": [0],
                    "token_logprobs": [row(3)[2]],
                    "tokens": ["token_id:2"],
                    "top_logprobs": [top_ids(3, 2, also=2)],
                },
                "prompt_logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1},
    },
    "point": {"token": 2, "logprob": row(3)[2], "top": point(3, 2), "computed_positions": 3},
}

for name, doc in [
    ("vllm-completions.json", vllm),
    ("vllm-point-token.json", vllm_point_token),
    ("vllm-point-sample.json", vllm_point_sample),
    ("sglang-generate.json", sglang),
    ("sglang-generate-from-2.json", sglang_from_2),
]:
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
