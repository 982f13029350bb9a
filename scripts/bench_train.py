#!/usr/bin/env python3
"""Fine-tuning benchmark: `spp train` against the PyTorch reference (scripts/ref/spp_ref.py),
side by side, on the same pruned model, data, order, steps and threads.

It runs, in this order (one at a time, so that the timings do not disturb each other):
  1. `spp eval ppl` of the pruned model (WikiText-2, first --eval-windows windows of 2048);
  2. `spp train` (SPP by default), `spp merge`, `spp inspect` of pruned and merged (exact zero
     counts), `spp eval ppl` of the merged model;
  3. scripts/ref/spp_ref.py with the same settings (it merges and evaluates itself);
  4. a torch f32 matmul (2048^3, same threads) as the machine's measured GEMM peak, for model FLOP
     utilisation: MFU = tok/s x 4N / peak, N = block-linear parameters + the LM head (forward 2N
     plus input gradients 2N; frozen weights get no weight gradient; attention scores and the
     adapters' own FLOPs not counted).
Then it prints a table. The pruned model defaults to models/smollm2-135m-wanda-2-4, made by
`spp prune --method wanda --sparsity 2:4` when missing.

    /work/venv/bin/python scripts/bench_train.py                       # 10 steps of 4 x 256
    /work/venv/bin/python scripts/bench_train.py --steps 20 --batch-size 8 --json-out /tmp/b.json
"""
import argparse
import json
import os
import sys
import tempfile

from bench_prune import run  # scripts/bench_prune.py: run a command, exit with its stderr on failure

from hostinfo import host


def bf16_copy(src, dst):
    """`src` with every safetensors tensor cast to bf16 and config.json saying so."""
    import shutil
    import torch
    from safetensors.torch import load_file, save_file
    os.makedirs(dst)
    for f in os.listdir(src):
        p = os.path.join(src, f)
        if f.endswith(".safetensors"):
            save_file({k: v.to(torch.bfloat16) for k, v in load_file(p).items()}, os.path.join(dst, f),
                      metadata={"format": "pt"})
        elif f == "config.json":
            cfg = json.load(open(p))
            cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
            json.dump(cfg, open(os.path.join(dst, f), "w"), indent=1)
        elif os.path.isfile(p):
            shutil.copy(p, dst)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2-135m-wanda-2-4", help="the pruned model")
    ap.add_argument("--dense", default="models/smollm2-135m", help="pruned from this when --model is missing")
    ap.add_argument("--spp", default="target/release/spp")
    ap.add_argument("--python", default=sys.executable, help="python with torch + transformers")
    ap.add_argument("--data-dir", default=os.environ.get("SPP_DATA_DIR", "../shared/data"))
    ap.add_argument("--method", default="spp", choices=["spp", "lora", "lora-mask"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--val-size", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=0, help="0 = validate only after the last step")
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ref", action="store_true")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="both sides' frozen weights")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    print(f"host: {host()}")

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    data = os.path.join(args.data_dir, "alpaca/alpaca_gpt4_en_demo.json")
    text = os.path.join(args.data_dir, "wikitext2/wiki.test.raw")
    work = tempfile.mkdtemp(prefix="spp-bench-train-")
    if not os.path.exists(args.model):
        run([args.spp, "prune", "--model", args.dense, "--method", "wanda", "--sparsity", "2:4",
             "--calib", os.path.join(args.data_dir, "c4/c4_sample.jsonl"), "--out", args.model], env)
    if args.dtype == "bf16":
        # A bf16 checkpoint, so that every command (and the adapter's base hash) sees one model.
        args.model = bf16_copy(args.model, os.path.join(work, "pruned-bf16"))
    ppl = lambda m: json.loads(run([args.spp, "eval", "ppl", "--model", m, "--text", text, "--dtype", args.dtype,
                                    "--max-windows", str(args.eval_windows), "--json"], env)[0].stdout)
    eval_every = args.eval_every or args.steps
    common = ["--data", data, "--method", args.method, "--max-steps", str(args.steps), "--batch-size",
              str(args.batch_size), "--micro-batch-size", str(args.micro_batch_size), "--cutoff", str(args.cutoff),
              "--lr", str(args.lr), "--val-size", str(args.val_size), "--eval-every", str(eval_every),
              "--dtype", args.dtype]

    pruned_ppl = ppl(args.model)["ppl"]
    out = os.path.join(work, "spp")
    p, train_wall = run([args.spp, "train", "--model", args.model, "--out", out, "--json"] + common, env)
    ours = json.loads(p.stdout)["report"]
    merged = os.path.join(work, "merged")
    merge = json.loads(run([args.spp, "merge", "--model", args.model, "--adapter", out, "--out", merged, "--json"], env)[0].stdout)
    zeros = lambda m: json.loads(run([args.spp, "inspect", "--model", m, "--json"], env)[0].stdout)
    before, after = zeros(args.model), zeros(merged)
    ours_ppl = ppl(merged)["ppl"]
    val = [json.loads(l)["val_loss"] for l in open(os.path.join(out, "metrics.jsonl")) if "val_loss" in l]

    ref = None
    if not args.no_ref:
        ref_out = os.path.join(work, "ref")
        run([args.python, "scripts/ref/spp_ref.py", "--model", args.model, "--out", ref_out, "--threads",
             str(args.threads), "--eval-text", text, "--eval-windows", str(args.eval_windows)] + common
            + (["--rows", "16"] if args.method == "spp" else []), env)
        ref = json.load(open(os.path.join(ref_out, "spp_ref.json")))

    peak_code = ("import torch,time;torch.set_num_threads(%d);a=torch.randn(2048,2048);b=torch.randn(2048,2048);"
                 "a@b;t=time.time();[a@b for _ in range(10)];print(10*2*2048**3/(time.time()-t)/1e9)" % args.threads)
    peak = float(run([args.python, "-c", peak_code])[0].stdout.strip())
    n = before["linear_parameters"] + before["vocab_size"] * before["hidden_size"]
    mfu = lambda tps: tps * 4 * n / (peak * 1e9)

    gib = 1 << 30
    rows = [
        ("WikiText-2 ppl, pruned (before)", f"{pruned_ppl:.3f}", f"{pruned_ppl:.3f}"),
        (f"WikiText-2 ppl after {args.steps} steps (merged)", f"{ours_ppl:.3f}",
         f"{ref['ppl_after']['ppl']:.3f}" if ref else "-"),
        ("train loss first -> last", f"{ours['first_loss']:.4f} -> {ours['last_loss']:.4f}",
         f"{ref['train']['first_loss']:.4f} -> {ref['train']['last_loss']:.4f}" if ref else "-"),
        ("validation loss (held-out)", " ".join(f"{v:.4f}" for v in val),
         " ".join(f"{v['val_loss']:.4f}" for v in ref["train"]["val_losses"]) if ref else "-"),
        ("training tokens/s (after 2 warm-up steps)", f"{ours['tokens_per_second']:.1f}",
         f"{ref['train']['tokens_per_second']:.1f}" if ref else "-"),
        ("MFU (4N FLOPs/token vs torch GEMM peak)", f"{100 * mfu(ours['tokens_per_second']):.1f}%",
         f"{100 * mfu(ref['train']['tokens_per_second']):.1f}%" if ref else "-"),
        ("peak RSS during training", f"{ours['peak_rss_bytes'] / gib:.2f} GiB",
         f"{ref['peak_rss_gib_after_train']:.2f} GiB" if ref else "-"),
        ("zeros in block linears: pruned -> merged", f"{before['linear_zeros']} -> {after['linear_zeros']}",
         ("kept" if ref["merge"]["zeros_kept"] else "NOT kept") if ref else "-"),
        ("2:4 after merge", str(after["all_linears_2_4"]), ""),
    ]
    print(f"\n{args.method}, {args.dtype} weights: {args.steps} steps x {args.batch_size} examples (micro-batch {args.micro_batch_size}, "
          f"cutoff {args.cutoff}, lr {args.lr}), {args.threads} threads; GEMM peak {peak:.0f} GFLOP/s (torch)\n")
    print("| | spp | PyTorch reference |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if ref and ref["train"]["tokens_per_second"]:
        print(f"\nthroughput spp / reference: {ours['tokens_per_second'] / ref['train']['tokens_per_second']:.2f}x "
              f"(target >= 1.5x); peak memory spp / reference: "
              f"{ours['peak_rss_bytes'] / gib / ref['peak_rss_gib_after_train']:.2f}x (target <= 0.7x)")
    print(f"merge: all zeros kept {merge['all_zeros_kept']}, {merge['zeros_before']} -> {merge['zeros_after']}")
    if args.json_out:
        json.dump({"args": vars(args), "spp": ours, "spp_ppl": ours_ppl, "pruned_ppl": pruned_ppl, "merge": merge,
                   "reference": ref, "gemm_peak_gflops": peak, "n_params_for_mfu": n}, open(args.json_out, "w"), indent=1)


if __name__ == "__main__":
    main()
