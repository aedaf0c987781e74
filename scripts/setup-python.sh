#!/usr/bin/env bash
# Creates the Python venv used to (re)generate test fixtures and reference
# outputs (scripts/make_dequant_fixtures.py, scripts/make_tiny_models.py).
# Idempotent: packages that are already importable are not reinstalled.
#
#   HLM_VENV=/path/to/venv scripts/setup-python.sh   # default /var/tmp/hlm-venv
#
# Only PyPI is reachable, so torch comes from PyPI as the regular (CUDA) Linux
# build together with its nvidia-* dependencies (~5 GB installed). A
# `--no-deps` install of torch does NOT work: `import torch` fails without
# libcudart/libcublasLt. It runs fine on CPU-only machines.
set -euo pipefail

VENV="${HLM_VENV:-/var/tmp/hlm-venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "[setup-python] creating venv at $VENV"
    python3 -m venv "$VENV"
fi

# module-name:pip-spec
PKGS=(
    "numpy:numpy"
    "gguf:gguf"
    "safetensors:safetensors"
    "torch:torch"
    "transformers:transformers"
    "accelerate:accelerate"
)

for entry in "${PKGS[@]}"; do
    mod="${entry%%:*}"
    spec="${entry#*:}"
    if "$PY" -c "import $mod" >/dev/null 2>&1; then
        echo "[setup-python] $mod already importable"
    else
        echo "[setup-python] installing $spec"
        "$PY" -m pip install --no-cache-dir "$spec"
    fi
done

"$PY" - <<'EOF'
import importlib
for m in ("numpy", "gguf", "safetensors", "torch", "transformers"):
    mod = importlib.import_module(m)
    v = getattr(mod, "__version__", None)
    if v is None:
        from importlib.metadata import version
        v = version(m)
    print(f"{m}=={v}")
EOF
