#!/usr/bin/env bash
# Builds spp with `--features cuda` on a machine that has neither a GPU nor the CUDA toolkit,
# so that the x86-64 binaries can be copied to a GPU machine and run there.
#
# Why this works: every piece of CUDA 13.0 that the build needs is published on PyPI as a
# wheel — nvcc (+ cicc/ptxas, crt and cccl headers), the runtime headers and libcudart, cuBLAS /
# cuBLASLt, cuRAND and NVRTC. They are pip-installed into a venv outside the repo and presented
# to the build scripts as one CUDA root:
#   - candle-kernels' build.rs (via cudaforge) runs `nvcc` from PATH to make PTX (and a small
#     static library of MoE/GGUF kernels) for CUDA_COMPUTE_CAP (no nvidia-smi here, so it must
#     be set: 90 = H100/H200);
#   - cudarc's build.rs asks `nvcc --version` for the CUDA version (cuda-version-from-build-system)
#     and, with dynamic-linking, adds $CUDA_ROOT/lib64 to the link search path for -lcuda -lnvrtc
#     -lcurand -lcublas -lcublasLt (candle-kernels adds -lcudart).
# The wheels ship only versioned sonames (libcublas.so.13 ...), so lib64/ gets the unversioned
# libX.so symlinks that `ld -lX` looks for. libcuda.so (the driver library) is on no wheel: a
# stub with the same soname (libcuda.so.1) and the driver API's function names (taken from the
# wheel's cuda.h) is built here. It is only linked against; at run time the GPU machine's real
# libcuda.so.1 from the NVIDIA driver is loaded instead.
#
# The toolkit is pinned to CUDA 13.0: the PTX that nvcc emits is JIT-compiled by the driver at
# run time, and a driver only accepts PTX from its own CUDA version or older (driver 580 =
# CUDA 13.0). Do not move the pins past what the target machine's driver supports.
#
# Usage:
#   scripts/build_cuda.sh                      # cargo build --release --features cuda --bin spp
#   scripts/build_cuda.sh --tests              # cargo build --release --features cuda --tests
#   scripts/build_cuda.sh test --no-run        # cargo test --release --features cuda --no-run
#   scripts/build_cuda.sh env                  # print the exports, to run cargo by hand
# A first argument that is a cargo subcommand (build, test, bench, run, check, clippy) is used
# as such; all other arguments go to cargo as they are.
#
# Environment (all optional):
#   CARGO_TARGET_DIR   where cargo builds        (default: <repo>/target/cuda, git-ignored)
#   SPP_CUDA_VENV      venv holding the wheels   (default: ${XDG_CACHE_HOME:-~/.cache}/spp/cuda-13.0-venv)
#   CUDA_COMPUTE_CAP   GPU compute capability    (default: 90)
#   PYTHON             python3 used to make the venv (default: python3)
#
# Idempotent: the pip install is skipped when the venv already holds the pinned wheels.
#
# Running the result on the GPU machine: the binary needs libcuda.so.1 (from the driver, normally
# already on the loader path) and libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libnvrtc.so.13 (+ libnvrtc-builtins.so.13.0, dlopened by NVRTC), libcudart.so.13. From the
# same wheels these all lie in <site-packages>/nvidia/cu13/lib, e.g. with torch's venv:
#   LD_LIBRARY_PATH=/path/to/venv/lib/python3.X/site-packages/nvidia/cu13/lib ./spp ...
# or with a toolkit install: LD_LIBRARY_PATH=/usr/local/cuda/lib64.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/cuda}
VENV=${SPP_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/spp/cuda-13.0-venv}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
PYTHON=${PYTHON:-python3}

# CUDA 13.0 (driver >= 580). nvidia-nvvm is pinned too: nvcc's wheel requires it unpinned, and a
# newer cicc would emit PTX the target driver may refuse.
PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

log() { echo "build_cuda: $*" >&2; }

# ---- 1. the wheels -------------------------------------------------------------------------
STAMP="$VENV/.spp-cuda-pins"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ]; then
    log "venv $VENV already holds the pinned CUDA wheels; skipping pip"
else
    command -v "$PYTHON" >/dev/null || { log "$PYTHON not found (needed to pip-install the CUDA wheels)"; exit 1; }
    log "installing CUDA 13.0 wheels into $VENV (about 1.2 GB)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
    echo "${PINS[*]}" > "$STAMP"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU="$SITE/nvidia/cu13"
for f in bin/nvcc include/cuda.h include/cuda_fp8.h lib/libcublas.so.13 lib/libcublasLt.so.13 \
         lib/libcurand.so.10 lib/libnvrtc.so.13 lib/libcudart.so.13; do
    [ -e "$CU/$f" ] || { log "missing $CU/$f — remove $VENV and rerun"; exit 1; }
done

# ---- 2. a CUDA root made of the wheels' folders, unversioned .so links and a libcuda stub --
ROOT="$CARGO_TARGET_DIR/cuda-root"
mkdir -p "$ROOT/lib64"
for d in bin include nvvm; do ln -sfn "$CU/$d" "$ROOT/$d"; done
for l in cublas cublasLt cudart nvrtc; do ln -sfn "$CU/lib/lib$l.so.13" "$ROOT/lib64/lib$l.so"; done
ln -sfn "$CU/lib/libcurand.so.10" "$ROOT/lib64/libcurand.so"

STUB="$ROOT/lib64/libcuda.so"
if [ ! -f "$STUB" ] || [ "$CU/include/cuda.h" -nt "$STUB" ]; then
    log "building the link-time stub $STUB"
    src="$ROOT/cuda_stub.c"
    # Every driver API function that cuda.h declares, both the current names (cuMemAlloc_v2 ...)
    # that its macros select and the legacy ones (__CUDA_API_VERSION_INTERNAL turns the macros off).
    {
        echo '/* Link-time stand-in for libcuda.so.1, generated by scripts/build_cuda.sh. Never loaded: */'
        echo '/* at run time the NVIDIA driver'"'"'s libcuda.so.1 provides these functions. */'
        for def in "" "-D__CUDA_API_VERSION_INTERNAL"; do
            echo '#include <cuda.h>' | cc -E -P $def -I"$CU/include" -x c -
        done | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
             | sed 's/.*/int &(void) { return 999; }/'
    } > "$src"
    cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$STUB" "$src"
fi

export PATH="$ROOT/bin:$PATH"
# cudarc's build.rs reads any of these (and uses $X/lib64 for linking); cudaforge finds nvcc on PATH.
export CUDA_ROOT="$ROOT" CUDA_HOME="$ROOT" CUDA_PATH="$ROOT"

if [ "${1:-}" = env ]; then
    printf 'export %s=%q\n' PATH "$PATH" CUDA_ROOT "$ROOT" CUDA_HOME "$ROOT" CUDA_PATH "$ROOT" \
        CUDA_COMPUTE_CAP "$CUDA_COMPUTE_CAP" CARGO_TARGET_DIR "$CARGO_TARGET_DIR"
    exit 0
fi

# ---- 3. cargo ------------------------------------------------------------------------------
sub=build
case "${1:-}" in build|test|bench|run|check|clippy) sub=$1; shift ;; esac
args=("$@")
[ "$sub" = build ] && [ ${#args[@]} -eq 0 ] && args=(--bin spp)

log "nvcc: $(nvcc --version | sed -n 4p); CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP; target dir $CARGO_TARGET_DIR"
log "cargo $sub --release --features cuda ${args[*]}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$SECONDS
# cargo's stderr is copied to $out (for the "Executable ..." lines of `test --no-run`).
{ cargo "$sub" --release --features cuda "${args[@]}" 2>&1 1>&3 | tee "$out" >&2; } 3>&1
log "cargo finished in $((SECONDS - start)) s"

# ---- 4. where the binaries are -------------------------------------------------------------
if [ -x "$CARGO_TARGET_DIR/release/spp" ]; then
    log "binary: $CARGO_TARGET_DIR/release/spp"
    readelf -d "$CARGO_TARGET_DIR/release/spp" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/build_cuda:   needs \1/p' >&2
fi
grep -oE 'Executable .*' "$out" | sed 's/^/build_cuda: /' >&2 || true
log "on the GPU machine: LD_LIBRARY_PATH=<dir with libcublas.so.13 etc., e.g. <site-packages>/nvidia/cu13/lib>; libcuda.so.1 comes from the driver"
