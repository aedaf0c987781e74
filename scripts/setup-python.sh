#!/usr/bin/env bash
# Creates the Python venv used to (re)generate test fixtures and reference
# outputs (scripts/make_dequant_fixtures.py, scripts/make_tiny_models.py).
# Idempotent: packages that are already importable are not reinstalled.
#
#   HLM_VENV=/path/to/venv scripts/setup-python.sh   # default /var/tmp/hlm-venv
#   scripts/setup-python.sh --llama-cpp   # also llama-cpp-python (for the greedy fixtures'
#                                         # llama.cpp column; benchmarks use llama.cpp's own
#                                         # tools instead: scripts/build-llama-cpp.sh)
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

if [ "${1:-}" = "--llama-cpp" ]; then
    if "$PY" -c "import llama_cpp" >/dev/null 2>&1; then
        echo "[setup-python] llama_cpp already importable"
    else
        # pip compiles llama.cpp (~12 minutes on 2 cores). Not with GGML_NATIVE: on a CPU that
        # advertises AMX, -march=native compiles ggml's AMX kernels, and they crash (SIGSEGV
        # in ggml_backend_amx_mul_mat) where the kernel does not grant AMX tile state, as on
        # the development VM. Every other vector extension this CPU lists is enabled.
        echo "[setup-python] installing llama-cpp-python (compiles llama.cpp)"
        flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
        args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
        for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 \
            avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 \
            avx_vnni:AVX_VNNI; do
            if grep -qw "${pair%%:*}" <<<"$flags"; then
                args="$args -DGGML_${pair#*:}=ON"
            fi
        done
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="$args" \
            "$PY" -m pip install --no-cache-dir llama-cpp-python
    fi
fi

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
