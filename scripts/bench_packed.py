"""Packed sparse models against the same models stored dense, side by side on this host: size of
the block linears, decode and prefill rates, bytes of weights per token, perplexity, and greedy
agreement; optionally llama.cpp's decode on the same model exported to GGUF (F16, Q8_0; median of
--rounds, the prompt and first token left out of the time as spp leaves them out).

Usage (from the repository root, after `cargo build --release`; the llama.cpp rows need
`llama-cpp-python` in a venv outside the repository, never in CI):

    python3 scripts/bench_packed.py --model PRUNED_DIR [--model PRUNED_DIR ...]
        [--spp target/release/spp] [--rounds 3] [--tokens 128] [--windows 8] [--prompts 20]
        [--llama-cpp]

Each --model is a pruned model stored dense (`spp prune` / `spp merge` output). It is packed twice
with `spp pack` (values as stored; and int8 with the output head in int8 too) into a temporary
directory. Per variant: `spp generate -n TOKENS` greedy (median of --rounds, variants
alternating) for the decode rate, the bytes of weights a decode step reads and the bandwidth that
makes; a 2048-token prompt for the prefill rate (likewise); `spp eval ppl` on --windows windows
of WikiText-2; and --prompts prompts (lines of WikiText-2) continued greedily for 32 tokens,
counting the continuations identical to the dense model's.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

from hostinfo import host


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def generate(spp, model, prompt=None, prompts=None, n=128):
    cmd = [spp, "generate", "--model", model, "-n", str(n), "--json"]
    cmd += ["--prompts", prompts] if prompts else ["--prompt", prompt]
    return [json.loads(line) for line in run(cmd).splitlines() if line.strip()]


def llama_cpp_decode(spp, model, ty, tokens, rounds, tmp):
    from llama_cpp import Llama

    path = os.path.join(tmp, f"{os.path.basename(os.path.normpath(model))}-{ty}.gguf")
    run([spp, "export", "gguf", "--model", model, "--out", path, "--type", ty])
    llm = Llama(model_path=path, n_ctx=512, n_threads=os.cpu_count(), verbose=False)

    def timed(n):
        t0 = time.perf_counter()
        out = llm("The history of the city", max_tokens=n, temperature=0.0)
        return time.perf_counter() - t0, out["usage"]["completion_tokens"]

    timed(4)  # warm-up
    # Decode alone, as spp reports it: the time of `tokens` tokens less that of the prompt and
    # the first token.
    rates = []
    for _ in range(rounds):
        (first, _), (dt, n) = timed(1), timed(tokens)
        rates.append((n - 1) / (dt - first))
    return statistics.median(rates), os.path.getsize(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--spp", default="target/release/spp")
    ap.add_argument("--data", default=os.environ.get("SPP_DATA_DIR", "../shared/data"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--llama-cpp", action="store_true")
    a = ap.parse_args()
    text_path = os.path.join(a.data, "wikitext2/wiki.test.raw")
    text = open(text_path, encoding="utf-8").read()
    lines = [l.strip() for l in text.splitlines() if len(l.strip()) > 80 and not l.strip().startswith("=")]
    print(f"host: {host()}")
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts.txt")
        with open(prompts, "w") as f:
            f.write("\n".join(l[:120] for l in lines[: a.prompts]) + "\n")
        # A prompt of about 2048 tokens (the exact count is printed).
        long_prompt = " ".join(lines)[:9000]
        print(f"{'model':<28} {'variant':<12} {'linears MB':>11} {'B/token MB':>11} {'decode tok/s':>13} "
              f"{'GB/s':>6} {'prefill tok/s':>14} {'ppl':>10} {'rel. diff':>10} {'greedy same':>12}")
        for model in a.model:
            name = os.path.basename(os.path.normpath(model))
            variants = {"dense": model}
            sizes = {}
            for label, extra in (("packed", []), ("packed-int8", ["--values", "int8", "--int8-head"])):
                out = os.path.join(tmp, f"{name}-{label}")
                rec = json.loads(run([a.spp, "pack", "--model", model, "--out", out, "--json"] + extra))
                variants[label] = out
                sizes[label] = rec["linear_bytes"]
                sizes["dense"] = rec["linear_bytes_dense"]
            decode = {k: [] for k in variants}
            for _ in range(a.rounds):
                for k, d in variants.items():
                    decode[k].append(generate(a.spp, d, "The history of the city", n=a.tokens)[0]["stats"])
            prefill = {k: [] for k in variants}
            for _ in range(a.rounds):
                for k, d in variants.items():
                    prefill[k].append(generate(a.spp, d, long_prompt, n=1)[0]["stats"]
                                      ["prefill_tokens_per_second"])
            prefill = {k: statistics.median(v) for k, v in prefill.items()}
            n_prompt = generate(a.spp, model, long_prompt, n=1)[0]["stats"]["prompt_tokens"]
            ppl = {k: json.loads(run([a.spp, "eval", "ppl", "--model", d, "--text", text_path,
                                      "--max-windows", str(a.windows), "--json"]))["ppl"]
                   for k, d in variants.items()}
            greedy = {k: [r["tokens"] for r in generate(a.spp, d, prompts=prompts, n=32)]
                      for k, d in variants.items()}
            for k in variants:
                rate = statistics.median(s["decode_tokens_per_second"] for s in decode[k])
                base = statistics.median(s["decode_tokens_per_second"] for s in decode["dense"])
                bpt = decode[k][0]["weight_bytes_per_token"]
                same = sum(x == y for x, y in zip(greedy[k], greedy["dense"]))
                print(f"{name:<28} {k:<12} {sizes[k] / 1e6:7.1f} ({sizes[k] / sizes['dense']:.2f}) "
                      f"{bpt / 1e6:11.1f} {rate:7.1f} ({rate / base:.2f}) {rate * bpt / 1e9:6.2f} "
                      f"{prefill[k]:7.1f} ({prefill[k] / prefill['dense']:.2f}) {ppl[k]:10.4f} "
                      f"{(ppl[k] - ppl['dense']) / ppl['dense']:10.1e} {same:>9}/{len(greedy[k])}")
            print(f"  (prefill prompt: {n_prompt} tokens; decode: {a.tokens} greedy tokens, median of "
                  f"{a.rounds}; ppl: {a.windows} windows of 2048)")
            if a.llama_cpp:
                for ty in ("f16", "q8_0"):
                    rate, size = llama_cpp_decode(a.spp, model, ty, a.tokens, a.rounds, tmp)
                    print(f"{name:<28} {'llama.cpp ' + ty:<12} {'':>11} {'':>11} {rate:7.1f}        "
                          f"(GGUF {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
