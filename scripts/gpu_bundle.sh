#!/usr/bin/env bash
# Packs what `scripts/gpu_check.sh` needs on a GPU machine that has no Rust toolchain (and no
# network): the CUDA build of spp and of the test binaries with CUDA bodies, the data they read,
# and the SmolLM2 GGUF, into one folder to copy over. On the GPU machine, from a checkout of the
# same commit, `bash BUNDLE/remote.sh [LOG_DIR]` unpacks it, converts the model, lays out the
# absolute paths the test binaries were compiled with (the repo, ../shared/data, the spp binary)
# as symbolic links, finds the CUDA 13 libraries and runs scripts/gpu_check.sh.
#
#   scripts/gpu_bundle.sh [BUNDLE_DIR]          # default: target/gpu-bundle
#
# Environment: CARGO_TARGET_DIR (of scripts/build_cuda.sh; default target/cuda), DATA
# (default ../shared/data), GGUF (default models/SmolLM2-135M-Instruct.Q4_1.gguf), SPLIT_BYTES
# (cut the GGUF into parts of at most this many bytes, for transfers with a size limit).
# Builds first with scripts/build_cuda.sh (a no-op when up to date). The binaries are stripped and
# packed into one tar.xz with a dictionary larger than a binary: they share most of their bytes
# (candle, the CUDA kernels), so eight of them pack to ~12 MB.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUTDIR=${1:-target/gpu-bundle}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/cuda}
DATA=${DATA:-../shared/data}
GGUF=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TESTS=(checkpoint model_golden perplexity prune train adapter zeroshot real_model)

bash scripts/build_cuda.sh
bash scripts/build_cuda.sh test --no-run "${TESTS[@]/#/--test=}"

rm -rf "$OUTDIR" && mkdir -p "$OUTDIR"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/tests"
cp "$CARGO_TARGET_DIR/release/spp" "$stage/spp"
for t in "${TESTS[@]}"; do
    # The newest executable of each test target (cargo names them <target>-<hash>).
    bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/"$t"-* | grep -v '\.d$' | head -1)
    cp "$bin" "$stage/tests/$t"
done
strip "$stage/spp" "$stage"/tests/*
tar -cf - -C "$stage" . | xz --lzma2=preset=6,dict=512MiB -T1 > "$OUTDIR/bins.tar.xz"
# The test binaries read ../shared/data relative to the repo they were built in.
cp -r "$DATA" "$OUTDIR/data" && chmod -R u+w "$OUTDIR/data"
if [ -n "${SPLIT_BYTES:-}" ]; then
    split -b "$SPLIT_BYTES" -d "$GGUF" "$OUTDIR/model.gguf.part"
else
    cp "$GGUF" "$OUTDIR/model.gguf.part00"
fi
cat > "$OUTDIR/remote.sh" <<EOF
#!/usr/bin/env bash
# Made by scripts/gpu_bundle.sh: run from the root of a checkout on the GPU machine.
set -uo pipefail
B=\$(cd "\$(dirname "\$0")" && pwd)
W=\${SPP_GPU_WORK:-/tmp/spp-gpu}
mkdir -p "\$W/bins" && xz -dc "\$B/bins.tar.xz" | tar -xf - -C "\$W/bins"
# The paths compiled into the test binaries, as links to this machine's copies.
if [ "\$PWD" != "$REPO" ]; then
    [ -e "$REPO" ] && [ ! -L "$REPO" ] && { echo "the test binaries expect the repo at $REPO: run from there" >&2; exit 1; }
    mkdir -p "$(dirname "$REPO")" && ln -sfn "\$PWD" "$REPO"
fi
shared_data=\$(realpath -m "$REPO/../shared/data")
[ -e "\$shared_data" ] || { mkdir -p "\$(dirname "\$shared_data")"; ln -sfn "\$B/data" "\$shared_data"; }
spp_bin=$CARGO_TARGET_DIR/release/spp
[ -e "\$spp_bin" ] || { mkdir -p "\$(dirname "\$spp_bin")"; ln -sfn "\$W/bins/spp" "\$spp_bin"; }
for d in /usr/local/cuda/lib64 /opt/torch/.venv/lib/python3.*/site-packages/nvidia/cu13/lib; do
    [ -e "\$d/libcublas.so.13" ] && export LD_LIBRARY_PATH=\$d\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} && break
done
mkdir -p models
cat "\$B"/model.gguf.part* > "\$W/model.gguf"
[ -e "models/$(basename "$GGUF")" ] || ln -s "\$W/model.gguf" "models/$(basename "$GGUF")"
[ -f models/smollm2-135m/model.safetensors ] || "\$W/bins/spp" convert gguf "\$W/model.gguf" --out models/smollm2-135m
SPP=\$W/bins/spp TEST_BINS=\$W/bins/tests DATA=\$shared_data bash scripts/gpu_check.sh "\$@"
EOF
ls -la "$OUTDIR"
echo "copy $OUTDIR to the GPU machine and run: bash $OUTDIR/remote.sh [LOG_DIR]" >&2
