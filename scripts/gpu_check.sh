#!/usr/bin/env bash
# What a machine with an NVIDIA GPU checks beyond CI (CI has no GPU): the test bodies that
# `tests/common::devices()` runs on CUDA, the real model's perplexity, generation and throughput on
# `--device cuda` against the CPU and against PyTorch on the same GPU, and the whole pipeline
# (prune → SPP fine-tuning → merge → evaluation) with `device = "cuda"`, and the block-streamed
# prune, training and zero-shot evaluation on the GPU against their resident runs.
#
#   bash scripts/gpu_check.sh [LOG_DIR]        # default LOG_DIR: runs/gpu-check
#
# Needs spp built with `--features cuda` (scripts/build_cuda.sh builds it on a machine without the
# CUDA toolkit) and the converted model (scripts/setup.sh). Environment:
#   SPP        the CUDA build of spp              (default target/release/spp)
#   TEST_BINS  a folder of test binaries built with --features cuda; unset: `cargo test --release
#              --features cuda` (needs the toolkit)
#   MODEL      (default models/smollm2-135m)      DATA (default ../shared/data)
#   STEPS      which steps to run, of: tests ppl generate bench pipeline (default: all)
# Every step runs even when one before it failed; each writes LOG_DIR/<step>.log, and the summary
# at the end says which passed. Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-runs/gpu-check}
SPP=${SPP:-target/release/spp}
MODEL=${MODEL:-models/smollm2-135m}
DATA=${DATA:-../shared/data}
STEPS=${STEPS:-tests ppl generate bench pipeline streamed}
PY=${PYTHON:-python3}
mkdir -p "$LOG"
declare -a SUMMARY=()
failed=0

step() { # step NAME COMMAND...: runs COMMAND with its output in LOG/NAME.log and on stdout
    local name=$1 t0=$SECONDS rc
    shift
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$LOG/$name.log"
    rc=${PIPESTATUS[0]}
    SUMMARY+=("$name rc=$rc $((SECONDS - t0))s")
    [ "$rc" = 0 ] || failed=$((failed + 1))
}

run_tests() {
    if [ -z "${TEST_BINS:-}" ]; then
        cargo test --release --features cuda
        return
    fi
    local rc=0 b
    for b in "$TEST_BINS"/*; do
        [ -x "$b" ] || continue
        echo "--- $(basename "$b")"
        "$b" --test-threads 4 || rc=1
    done
    return $rc
}

ppl() { # ppl DEVICE DTYPE: 8 windows of 2048 tokens of WikiText-2 as the perplexity benchmark measures them
    "$SPP" eval ppl --model "$MODEL" --text "$DATA/wikitext2/wiki.test.raw" --max-windows 8 \
        --json --device "$1" --dtype "$2"
}

compare_ppl() {
    local cpu gpu bf
    cpu=$(ppl cpu f32) && gpu=$(ppl cuda f32) && bf=$(ppl cuda bf16) || return 1
    echo "cpu f32:   $cpu"
    echo "cuda f32:  $gpu"
    echo "cuda bf16: $bf"
    "$PY" - "$cpu" "$gpu" "$bf" <<'EOF'
import json, sys
cpu, gpu, bf = (json.loads(a) for a in sys.argv[1:])
rel = abs(gpu["ppl"] - cpu["ppl"]) / cpu["ppl"]
rel_bf = abs(bf["ppl"] - cpu["ppl"]) / cpu["ppl"]
print(f"ppl cpu {cpu['ppl']:.5f} ({cpu['tokens_per_second']:.0f} tok/s), cuda f32 {gpu['ppl']:.5f} "
      f"({gpu['tokens_per_second']:.0f} tok/s, rel {rel:.1e}), cuda bf16 {bf['ppl']:.5f} "
      f"({bf['tokens_per_second']:.0f} tok/s, rel {rel_bf:.1e})")
sys.exit(0 if rel <= 1e-3 and rel_bf <= 2e-2 else 1)
EOF
}

generate() {
    local out
    out=$("$SPP" generate --model "$MODEL" --prompt "The capital of France is" -n 12 --device cuda) || return 1
    echo "$out"
    [[ "$out" == *Paris* ]]
}

pipeline() { # the default recipe with device = "cuda", in LOG/pipeline
    local recipe=recipes/.gpu-check.toml
    { echo 'device = "cuda"'; cat recipes/smollm2-135m.toml; } > "$recipe"
    "$SPP" run "$recipe" --out "$LOG/pipeline"
    local rc=$?
    rm -f "$recipe"
    return $rc
}

streamed() { # block-streamed jobs on the GPU give what the resident ones give
    local d=$LOG/streamed a rc=0
    rm -rf "$d" && mkdir -p "$d"
    "$SPP" prune --model "$MODEL" --method wanda --sparsity 2:4 --calib "$DATA/c4/c4_sample.jsonl" \
        --nsamples 4 --seqlen 512 --device cuda --out "$d/pruned" || return 1
    # Resident with gradient checkpointing, then streamed with no block and with every block kept.
    local name flags
    for name in resident 0 30; do
        flags="--stream-blocks --keep-blocks $name"
        [ "$name" = resident ] && flags=--grad-checkpoint
        "$SPP" train --model "$d/pruned" --data "$DATA/alpaca/alpaca_gpt4_en_demo.json" --max-steps 2 \
            --batch-size 2 --micro-batch-size 1 --cutoff 128 --val-size 2 --device cuda \
            $flags --out "$d/adapter-$name" || return 1
    done
    for a in 0 30; do
        cmp "$d/adapter-$a/adapter_model.safetensors" "$d/adapter-resident/adapter_model.safetensors" \
            || { echo "streamed training (--keep-blocks $a) differs from resident"; rc=1; }
    done
    for mode in "" --stream-blocks; do
        "$SPP" eval tasks --model "$d/pruned" --data-dir "$DATA/eval" --limit 20 --device cuda \
            --json $mode > "$d/tasks$mode.json" || return 1
    done
    "$PY" - "$d/tasks.json" "$d/tasks--stream-blocks.json" <<'EOF' || rc=1
import json, sys
a, b = (json.load(open(f))["tasks"] for f in sys.argv[1:])
strip = lambda r: {k: {f: v for f, v in t.items() if f != "seconds"} for k, t in r.items()}
same = strip(a) == strip(b)
print("streamed tasks:", "equal to resident" if same else "DIFFER from resident")
sys.exit(0 if same else 1)
EOF
    return $rc
}

nvidia-smi -L || echo "nvidia-smi: not found"
step tests run_tests
step ppl compare_ppl
step generate generate
step bench "$PY" scripts/bench_foundation.py --spp "$SPP" --model "$MODEL" \
    --text "$DATA/wikitext2/wiki.test.raw" --device cuda --threads "$(nproc)" --windows 8 --rounds 3 \
    --json-out "$LOG/bench.json"
step pipeline pipeline
step streamed streamed
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}" | tee "$LOG/summary.txt"
exit $failed
