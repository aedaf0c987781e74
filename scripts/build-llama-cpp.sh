#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools from source: llama-bench, llama-speculative and
# llama-server. We benchmark hlm's CPU kernels against them: the same GGUF files and the
# same thread count, with llama.cpp's own prefill/decode numbers (llama-bench) and its
# speculative decoding (llama-speculative) as the peer.
#
# Source: the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python (pinned below,
# SHA-256 checked), because only package registries are reachable here, not GitHub. Build
# tools: cmake and ninja from PyPI, in a venv inside the work folder (no system cmake needed).
# The build is Release with GGML_NATIVE=ON (-march=native: the peer at its best on this
# CPU) and static libraries, so the binaries do not depend on the rest of the build folder.
# There is no libcurl option in this llama.cpp any more (LLAMA_CURL is deprecated and
# ignored); its HTTP client is cpp-httplib, built with LLAMA_OPENSSL=OFF (no HTTPS). The
# web UI is not embedded in llama-server (it would be downloaded from Hugging Face).
#
# AMX: on a CPU that lists amx_tile/amx_int8/amx_bf16 in /proc/cpuinfo, -march=native
# compiles ggml's AMX kernels, and they crash (SIGSEGV in ggml_backend_amx_mul_mat) where
# the hypervisor does not grant AMX tile state, as on an earlier development VM. With
# GGML_NATIVE=ON ggml ignores its GGML_AMX_* options (they only apply to non-native
# builds), so the script keeps -march=native and adds -mno-amx-tile -mno-amx-int8
# -mno-amx-bf16 to the C/C++ flags (GCC and Clang let explicit -mno-* win over -march);
# the AMX code is behind #if defined(__AMX_INT8__) and is left out. The script checks this
# before the build (no __AMX_*__ macro) and after it (no ggml_backend_amx_* symbol).
#
# Takes about 15 minutes on 2 cores (14 min measured at nice 19 beside a cargo build),
# most of it ggml and llama-server; the sdist is 74 MB. Afterwards a re-run with
# the same version, arguments and CPU is a no-op. A stamp in the build folder records
# them; a build that stopped part-way resumes where it stopped. To rebuild from scratch,
# delete the work folder.
#
# The last line on stdout is the absolute path of the folder holding the binaries; all
# progress goes to stderr:
#
#   bin=$(bash scripts/build-llama-cpp.sh | tail -1)
#   "$bin/llama-bench" -m model.gguf -p 512 -n 128 -t 2 -o json
#
# Environment:
#   HLM_LLAMA_CPP_DIR   work folder (default /var/tmp/hlm-llama-cpp): sdist/, src/,
#                       venv/ (cmake, ninja), build/ (binaries in build/bin)
#   HLM_LLAMA_CPP_JOBS  parallel compile jobs (default: nproc)
#   CC, CXX             compilers, as for any CMake build (default cc, c++)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_PYTHON_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TARGETS=(llama-bench llama-speculative llama-server)

log() { echo "[build-llama-cpp] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

WORK="${HLM_LLAMA_CPP_DIR:-/var/tmp/hlm-llama-cpp}"
JOBS="${HLM_LLAMA_CPP_JOBS:-$(nproc)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"
VENV="$WORK/venv"
SDIST_DIR="$WORK/sdist"
TARBALL="$SDIST_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
SRC_ROOT="$WORK/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
SRC="$SRC_ROOT/vendor/llama.cpp"
BUILD="$WORK/build"
BIN="$BUILD/bin"
CONFIGURED="$BUILD/hlm-configured.stamp" # written after cmake configured $BUILD
STAMP="$BUILD/hlm-built.stamp"           # written after all targets were built

# One run at a time per work folder (two tools may ask for the binaries at once).
exec 9>"$WORK/.lock"
flock 9

# --- the configuration (computed first: the stamp records it) ---------------------------
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//' || true)"
extra_flags=""
amx="$(grep -owE 'amx_[a-z0-9_]+' <<<"$cpu_flags" | tr '\n' ' ' | sed 's/ $//' || true)"
if [ -n "$amx" ]; then
    extra_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    log "CPU lists AMX ($amx): GGML_NATIVE=ON plus '$extra_flags', so ggml's AMX kernels are" \
        "not compiled (they crash where the hypervisor does not grant AMX tile state)"
else
    log "CPU lists no AMX: plain GGML_NATIVE=ON (-march=native)"
fi

CMAKE_ARGS=(
    -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=ON
    "-DCMAKE_C_FLAGS=$extra_flags"
    "-DCMAKE_CXX_FLAGS=$extra_flags"
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
)

stamp_text() {
    echo "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sha256=$LLAMA_CPP_PYTHON_SHA256"
    echo "cpu: $cpu_model; flags sha256=$(sha256sum <<<"$cpu_flags" | cut -c1-16)"
    echo "compilers: ${CC:-cc} ${CXX:-c++}"
    echo "targets: ${TARGETS[*]}"
    printf '%s\n' "${CMAKE_ARGS[@]}"
}
want="$(stamp_text)"

have_binaries() {
    local t
    for t in "${TARGETS[@]}"; do
        [ -x "$BIN/$t" ] || return 1
    done
}

if have_binaries && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    log "up to date (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION): ${TARGETS[*]}"
    echo "$BIN"
    exit 0
fi
start=$SECONDS

# --- build tools: cmake and ninja from PyPI ----------------------------------------------
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    log "creating venv at $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
if ! { "$VENV/bin/cmake" --version && "$VENV/bin/ninja" --version; } >/dev/null 2>&1; then
    log "installing cmake and ninja from PyPI into $VENV"
    "$VENV/bin/python" -m pip install --no-cache-dir cmake ninja >&2
fi
export PATH="$VENV/bin:$PATH"
log "$(cmake --version | head -1), ninja $(ninja --version)"

# --- source: the sdist from PyPI ----------------------------------------------------------
sdist_ok() { [ -f "$TARBALL" ] && sha256sum "$TARBALL" | grep -q "^$LLAMA_CPP_PYTHON_SHA256 "; }
if ! sdist_ok; then
    rm -f "$TARBALL"
    log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
    # --no-binary for this package only: with ':all:' pip would also compile the sdist's
    # build requirements (cmake, ninja) from source just to read its metadata.
    "$VENV/bin/python" -m pip download --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$SDIST_DIR" >&2
    sdist_ok || die "$TARBALL missing or its SHA-256 is not $LLAMA_CPP_PYTHON_SHA256"
fi

# The whole sdist is unpacked: it carries the vendored tree's git metadata, so the binaries
# report the llama.cpp commit (llama-bench's build_commit column).
if [ ! -f "$SRC_ROOT/.hlm-unpacked" ]; then
    log "unpacking into $SRC_ROOT"
    rm -rf "$SRC_ROOT" "$WORK/src/.unpacking"
    mkdir -p "$WORK/src/.unpacking"
    tar -xzf "$TARBALL" -C "$WORK/src/.unpacking"
    mv "$WORK/src/.unpacking/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" "$SRC_ROOT"
    rm -rf "$WORK/src/.unpacking"
    [ -f "$SRC/CMakeLists.txt" ] || die "no vendor/llama.cpp in the sdist"
    touch "$SRC_ROOT/.hlm-unpacked"
fi
commit="$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)"
log "llama.cpp source: $SRC (commit $commit)"

# --- AMX check before spending the build time ---------------------------------------------
# shellcheck disable=SC2086 # $extra_flags is a list of flags
if "${CC:-cc}" $extra_flags -march=native -dM -E -x c /dev/null | grep -q '__AMX_'; then
    die "${CC:-cc} $extra_flags -march=native still defines __AMX_*__ macros"
fi

# --- configure -------------------------------------------------------------------------------
rm -f "$STAMP"
if [ -e "$BUILD" ] && ! { [ -f "$CONFIGURED" ] && [ "$(cat "$CONFIGURED")" = "$want" ]; }; then
    log "the build folder was configured differently (or not to the end); starting it afresh"
    rm -rf "$BUILD"
fi
if [ ! -f "$CONFIGURED" ]; then
    log "configuring: cmake ${CMAKE_ARGS[*]}"
    cmake -S "$SRC" -B "$BUILD" "${CMAKE_ARGS[@]}" >&2
    echo "$want" >"$CONFIGURED"
fi

# --- build -----------------------------------------------------------------------------------
log "building ${TARGETS[*]} with $JOBS jobs"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2
have_binaries || die "the build finished but not all of ${TARGETS[*]} are in $BIN"
for t in "${TARGETS[@]}"; do
    if nm "$BIN/$t" 2>/dev/null | grep -q 'ggml_backend_amx_'; then
        die "$BIN/$t contains ggml's AMX kernels"
    fi
done

echo "$want" >"$STAMP"
log "built ${TARGETS[*]} in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"
echo "$BIN"
