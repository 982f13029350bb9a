"""Two spp binaries side by side on the real SmolLM2-135M: did a change slow the LLaMA path?

Usage (from the repository root; build the baseline first, e.g. from a `git worktree` of the
commit to compare against):

    python3 scripts/bench_ab.py --old /tmp/spp-old --new target/release/spp [--rounds 5]
        [--model models/smollm2-135m] [--data ../shared/data]

Per round, in alternating order (old, new, new, old, ...) so that drifts in the machine's speed
fall on both: `eval ppl` over 2 windows of 2048 tokens of WikiText-2 (the forward pass), `eval
tasks` on the first 20 documents of hellaswag and arc_easy (packed prefix-shared rows), and
`generate` of 64 greedy tokens (the KV-cached decode). Prints the median seconds of each side,
their ratio new / old and the ratio of the fastest runs (less sensitive to a busy machine), and checks that both printed the same numbers (perplexity, accuracies, tokens).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from hostinfo import host


def run(binary, args):
    t0 = time.perf_counter()
    out = subprocess.run([binary] + args, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed:\n{out.stderr}")
    return dt, out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default="target/release/spp")
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--data", default=os.environ.get("SPP_DATA_DIR", "../shared/data"))
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(f"host: {host()}")
    jobs = {
        "eval ppl 2x2048": ["eval", "ppl", "--model", a.model, "--text",
                            os.path.join(a.data, "wikitext2/wiki.test.raw"), "--max-windows", "2", "--json"],
        "eval tasks 2x20 docs": ["eval", "tasks", "--model", a.model, "--tasks", "hellaswag,arc_easy",
                                 "--limit", "20", "--data-dir", os.path.join(a.data, "eval"), "--json"],
        "generate 64 tokens": ["generate", "--model", a.model, "--prompt", "The history of the city",
                               "--max-new-tokens", "64"],
    }
    times = {j: {"old": [], "new": []} for j in jobs}
    outputs = {j: {} for j in jobs}
    for r in range(a.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for job, args in jobs.items():
            for side in order:
                dt, out = run(a.old if side == "old" else a.new, args)
                times[job][side].append(dt)
                outputs[job].setdefault(side, out)
    print(f"{'job':<22} {'old s':>8} {'new s':>8} {'new/old':>8} {'min n/o':>8}  same output")
    for job in jobs:
        t = times[job]
        o, n = statistics.median(t["old"]), statistics.median(t["new"])
        same = strip_timing(outputs[job]["old"]) == strip_timing(outputs[job]["new"])
        print(f"{job:<22} {o:8.2f} {n:8.2f} {n / o:8.3f} {min(t['new']) / min(t['old']):8.3f}"
              f"  {'yes' if same else 'NO'}")


def strip_timing(text):
    """The output without its timing fields (they differ between any two runs)."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    drop = ("seconds", "tokens_per_second", "peak", "elapsed", "time")

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(w) for k, w in x.items() if not any(d in k for d in drop)}
        if isinstance(x, list):
            return [clean(w) for w in x]
        return x

    return clean(v)


if __name__ == "__main__":
    main()
