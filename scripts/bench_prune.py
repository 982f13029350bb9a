#!/usr/bin/env python3
"""Pruning benchmark: spp against an independent PyTorch implementation, side by side.

For each METHOD:SPARSITY it runs `spp prune` (which writes its calibration windows to
OUT/calibration.safetensors), evaluates the pruned model with `spp eval ppl`, then runs
scripts/ref/prune_ref.py on the *same* windows and evaluates there too, and prints a table:
perplexity of both sides and their relative difference (target <= 2%), pruning wall time of both
(target: spp <= 0.7x for Wanda and SparseGPT), spp's peak memory, and the orderings the papers
report (SparseGPT ~ Wanda << magnitude at 50%; 2:4 worse than 4:8 worse than 50%).

Run from the repository root, with a venv that has torch + transformers (never needed in CI):

    /work/venv/bin/python scripts/bench_prune.py --nsamples 32            # the benchmark's setting
    /work/venv/bin/python scripts/bench_prune.py --nsamples 2 --configs wanda:0.5,sparsegpt:2:4   # quick

Both sides use the same number of threads (RAYON_NUM_THREADS / torch.set_num_threads). This
machine's speed drifts from minute to minute: with --rounds N (N > 1) each configuration is pruned
N times on each side, alternating spp and the reference, and the table gives the median times and
the median of the per-round time ratios (perplexity comes from the first round).
"""
import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hostinfo import host


def run(cmd, env=None):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p, time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--spp", default="target/release/spp")
    ap.add_argument("--python", default=sys.executable, help="python with torch + transformers for the reference")
    ap.add_argument("--data", default=os.environ.get("SPP_DATA_DIR", "../shared/data"))
    ap.add_argument("--configs", default="magnitude:0.5,wanda:0.5,wanda:2:4,wanda:4:8,sparsegpt:0.5,sparsegpt:2:4")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ref", action="store_true", help="only run spp")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternating spp/reference prunes per configuration; medians are reported")
    ap.add_argument("--json-out")
    ap.add_argument("--keep", action="store_true",
                    help="keep the pruned models (0.5 GB per side and configuration) instead of deleting them at exit")
    args = ap.parse_args()
    print(f"host: {host()}")

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    calib = os.path.join(args.data, "c4/c4_sample.jsonl")
    text = os.path.join(args.data, "wikitext2/wiki.test.raw")
    work = tempfile.mkdtemp(prefix="spp-bench-prune-")
    if args.keep:
        print(f"pruned models go to {work} (kept)", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, work, True)
    rows = []
    dense = json.loads(run([args.spp, "eval", "ppl", "--model", args.model, "--text", text,
                            "--max-windows", str(args.eval_windows), "--json"], env)[0].stdout)["ppl"]
    for cfg in args.configs.split(","):
        method, sparsity = cfg.split(":", 1)
        out = os.path.join(work, f"{method}-{sparsity.replace(':', '-')}")
        p, wall = run([args.spp, "prune", "--model", args.model, "--method", method, "--sparsity", sparsity,
                       "--calib", calib, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                       "--seed", str(args.seed), "--out", out, "--json"], env)
        rec = json.loads(p.stdout)
        spp_ppl = json.loads(run([args.spp, "eval", "ppl", "--model", out, "--text", text,
                                  "--max-windows", str(args.eval_windows), "--json"], env)[0].stdout)["ppl"]
        row = {"method": method, "sparsity": sparsity, "spp_ppl": spp_ppl,
               "spp_seconds": rec["report"]["total_seconds"], "spp_peak_gib": (rec["peak_rss_bytes"] or 0) / 2**30,
               "spp_sparsity": rec["result"]["linear_sparsity"]}
        if not args.no_ref:
            ref_out = out + "-ref"

            def ref_prune(eval_windows):
                cmd = [args.python, "scripts/ref/prune_ref.py", "--model", args.model, "--method", method,
                       "--sparsity", sparsity, "--out", ref_out, "--threads", str(args.threads),
                       "--eval-text", text, "--eval-windows", str(eval_windows), "--seqlen", str(args.seqlen)]
                if method != "magnitude":
                    cmd += ["--calib", os.path.join(out, "calibration.safetensors")]
                run(cmd)
                return json.load(open(os.path.join(ref_out, "prune_ref.json")))

            ref = ref_prune(args.eval_windows)
            row.update(ref_ppl=ref["ppl"]["ppl"], ref_seconds=ref["prune_seconds"])
            spp_times, ref_times = [row["spp_seconds"]], [row["ref_seconds"]]
            for _ in range(args.rounds - 1):
                p, _ = run([args.spp, "prune", "--model", args.model, "--method", method, "--sparsity", sparsity,
                            "--calib", calib, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                            "--seed", str(args.seed), "--out", out + "-again", "--force", "--json"], env)
                spp_times.append(json.loads(p.stdout)["report"]["total_seconds"])
                ref_times.append(ref_prune(1)["prune_seconds"])
            if args.rounds > 1:
                row.update(spp_seconds=statistics.median(spp_times), ref_seconds=statistics.median(ref_times),
                           ratio_median=statistics.median(a / b for a, b in zip(spp_times, ref_times)),
                           spp_times=spp_times, ref_times=ref_times)
        rows.append(row)
        print(f"done {cfg}: {row}", file=sys.stderr, flush=True)

    print(f"\nSmolLM2-135M f32, calibration {args.nsamples} x {args.seqlen} from C4 sample (seed {args.seed}), "
          f"WikiText-2 ppl on {args.eval_windows} windows of 2048; dense ppl {dense:.4f}; {args.threads} threads\n")
    print("| method | sparsity | spp ppl | ref ppl | rel diff (<=2%) | spp s | ref s | time ratio (<=0.7) | spp peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "ref_ppl" in r:
            rel = abs(r["spp_ppl"] - r["ref_ppl"]) / r["ref_ppl"]
            ratio = r.get("ratio_median") or (r["spp_seconds"] / r["ref_seconds"] if r["ref_seconds"] else float("nan"))
            print(f"| {r['method']} | {r['sparsity']} | {r['spp_ppl']:.3f} | {r['ref_ppl']:.3f} | {100 * rel:.2f}% "
                  f"{'ok' if rel <= 0.02 else 'NO'} | {r['spp_seconds']:.1f} | {r['ref_seconds']:.1f} | {ratio:.2f} | "
                  f"{r['spp_peak_gib']:.2f} |")
        else:
            print(f"| {r['method']} | {r['sparsity']} | {r['spp_ppl']:.3f} | - | - | {r['spp_seconds']:.1f} | - | - | "
                  f"{r['spp_peak_gib']:.2f} |")
    ppl = {(r["method"], r["sparsity"]): r["spp_ppl"] for r in rows}
    checks = []
    if {("wanda", "0.5"), ("magnitude", "0.5")} <= ppl.keys():
        checks.append(("wanda 50% << magnitude 50%", ppl[("wanda", "0.5")] < ppl[("magnitude", "0.5")]))
    if {("sparsegpt", "0.5"), ("magnitude", "0.5")} <= ppl.keys():
        checks.append(("sparsegpt 50% << magnitude 50%", ppl[("sparsegpt", "0.5")] < ppl[("magnitude", "0.5")]))
    if {("wanda", "2:4"), ("wanda", "4:8"), ("wanda", "0.5")} <= ppl.keys():
        checks.append(("wanda 2:4 > 4:8 > 50%", ppl[("wanda", "2:4")] > ppl[("wanda", "4:8")] > ppl[("wanda", "0.5")]))
    for name, ok in checks:
        print(f"ordering: {name}: {'ok' if ok else 'NO'}")
    if args.json_out:
        json.dump({"dense_ppl": dense, "rows": rows, "args": vars(args)}, open(args.json_out, "w"), indent=1)


if __name__ == "__main__":
    main()
