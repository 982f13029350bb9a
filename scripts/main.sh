#!/usr/bin/env bash
# The main job on the real model, from a fresh checkout: set up, then inspect SmolLM2-135M,
# measure its WikiText-2 perplexity (Wanda/SparseGPT protocol, first 8 windows of 2048 tokens),
# generate, prune it with Wanda 2:4 (16 calibration windows of 2048 C4 tokens) and measure the
# pruned model the same way, then fine-tune it with SPP adapters on the Alpaca-GPT4 subset (a short
# budget: SPP_TRAIN_STEPS optimizer steps of 4 examples × ≤ 256 tokens), merge them (every zero
# kept) and measure the merged model. DATA defaults to ../shared/data (override with SPP_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${SPP_DATA_DIR:-../shared/data}
SPP=target/release/spp
M=models/smollm2-135m
$SPP inspect --model $M
$SPP eval ppl --model $M --text "$DATA/wikitext2/wiki.test.raw" --seqlen 2048 --max-windows "${SPP_PPL_WINDOWS:-8}"
$SPP generate --model $M --prompt "The capital of France is" -n 24
$SPP generate --model $M --chat --prompt "Give me three tips for staying healthy." -n 96
$SPP prune --model $M --method wanda --sparsity 2:4 --calib "$DATA/c4/c4_sample.jsonl" \
    --nsamples "${SPP_CALIB_SAMPLES:-16}" --seqlen 2048 --out models/smollm2-135m-wanda-2-4 --force
$SPP inspect --model models/smollm2-135m-wanda-2-4
$SPP eval ppl --model models/smollm2-135m-wanda-2-4 --text "$DATA/wikitext2/wiki.test.raw" --seqlen 2048 --max-windows "${SPP_PPL_WINDOWS:-8}"
P=models/smollm2-135m-wanda-2-4
rm -rf $P-spp-adapter
$SPP train --model $P --data "$DATA/alpaca/alpaca_gpt4_en_demo.json" --out $P-spp-adapter \
    --max-steps "${SPP_TRAIN_STEPS:-20}" --batch-size 4 --micro-batch-size 4 --cutoff 256 --val-size 50 --eval-every 10
$SPP merge --model $P --adapter $P-spp-adapter --out $P-spp --force
$SPP inspect --model $P-spp
$SPP eval ppl --model $P-spp --text "$DATA/wikitext2/wiki.test.raw" --seqlen 2048 --max-windows "${SPP_PPL_WINDOWS:-8}"
