#!/usr/bin/env python3
"""Zero-shot task benchmark: `spp eval tasks` against EleutherAI lm-evaluation-harness, side by side.

Both sides run in one invocation, one after the other (spp first, so the timings do not disturb each
other), on the same converted Hugging Face model directory, the same local data and the same number
of threads:

  A. `spp eval tasks --model M --tasks T --limit N --data-dir D --json --out OUT.json`
     (RAYON_NUM_THREADS=threads), timed wall clock (includes loading the model and the data);
  B. lm_eval 0.4.13 in this process: the harness's own task objects pointed at the local JSONL files
     (scripts/ref/lm_eval_local.py), `HFLM(pretrained=M, dtype=float32, device=cpu,
     batch_size=B)`, `simple_evaluate(..., num_fewshot=0, limit=N, log_samples=True)` once per task
     (so that each task gets its own time), torch.set_num_threads(threads). Timed: task building,
     model loading and evaluation separately; "with load" = all three.

Then it compares, per task: n, accuracy of both and |delta| in points (target <= 0.5), agreement of
the per-document predictions (argmax of the loglikelihoods; target >= 99 % over all docs), acc_norm
of both where the harness reports it (hellaswag, arc_*, openbookqa), the largest |delta
loglikelihood| over all choices, seconds; and the total wall time of both and the speedup (target
>= 3x, measured with load on both sides: spp's process wall clock against the harness's task build +
model load + evaluation). The harness per-doc prediction is argmax of the sample's `filtered_resps`
loglikelihoods (np.argmax: first maximum on ties), pred_norm that of ll / len(choice) in characters
of the doc_to_choice string; acc is the sample's own metric.

Run from the repository root with the venv that has lm_eval (offline; never needed in CI):

    /work/venv/bin/python scripts/bench_tasks.py                                   # full, limit 200
    /work/venv/bin/python scripts/bench_tasks.py --limit 5 --skip-spp              # harness smoke test
    /work/venv/bin/python scripts/bench_tasks.py --skip-spp --save-harness /tmp/harness_200.json
    /work/venv/bin/python scripts/bench_tasks.py --harness-json /tmp/harness_200.json   # iterate on spp

`--save-harness FILE` dumps the harness side (settings, timings, per-task metrics and per-doc
loglikelihoods, gold, preds and the requests) to JSON; `--harness-json FILE` reuses such a file
instead of running the harness (the file's limit / tasks must cover the requested ones);
`--spp-json FILE` reuses a saved `spp eval tasks --out` file instead of running spp.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from hostinfo import host

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "ref"))

TASKS = "boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa"


def run_spp(args, out):
    cmd = [args.spp, "eval", "tasks", "--model", args.model, "--tasks", args.tasks, "--limit", str(args.limit),
           "--data-dir", args.data_dir, "--json", "--out", out]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        sys.exit(f"{args.spp} not found (build it with `cargo build --release`, or pass --skip-spp)")
    wall = time.time() - t
    if p.returncode != 0:
        sys.exit(f"spp failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f), wall


def run_harness(args, names):
    import numpy as np
    import torch

    import lm_eval
    import lm_eval_local as L  # sets the HF offline variables
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(args.threads)
    t0 = time.time()
    tm = TaskManager()
    tasks = L.build_tasks(args.data_dir, names, task_manager=tm)
    t_tasks = time.time() - t0
    t1 = time.time()
    lm = HFLM(pretrained=args.model, dtype="float32", device="cpu", batch_size=args.batch_size)
    t_load = time.time() - t1
    print(f"harness: tasks built in {t_tasks:.1f}s, model loaded in {t_load:.1f}s "
          f"(max_length {lm.max_length}, add_bos_token {lm.add_bos_token})", file=sys.stderr, flush=True)
    out = {"settings": {"model": args.model, "limit": args.limit, "tasks": names, "batch_size": args.batch_size,
                        "threads": args.threads, "data_dir": args.data_dir, "lm_eval_version": lm_eval.__version__,
                        "torch_version": torch.__version__, "max_length": lm.max_length,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S")},
           "tasks": {}}
    t_eval = 0.0
    for name in names:
        task = tasks[name]
        t = time.time()
        res = simple_evaluate(model=lm, tasks=[task], num_fewshot=0, limit=args.limit, log_samples=True,
                              task_manager=tm, bootstrap_iters=100000)
        secs = time.time() - t
        t_eval += secs
        r = res["results"][name]
        docs = []
        for s in sorted(res["samples"][name], key=lambda s: s["doc_id"]):
            lls = [float(x[0]) for x in s["filtered_resps"]]
            greedy = [bool(x[1]) for x in s["filtered_resps"]]
            choices = task.doc_to_choice(s["doc"])
            lens = [float(len(c)) for c in choices]
            docs.append({"index": s["doc_id"], "gold": L.gold_index(task, s["doc"]),
                         "pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(np.array(lls) / np.array(lens))),
                         "acc": s.get("acc"), "acc_norm": s.get("acc_norm"), "loglikelihoods": lls,
                         "is_greedy": greedy, "choice_lens": lens, "requests": [list(a[:2]) for a in s["arguments"]]})
        out["tasks"][name] = {"n": len(docs), "acc": r.get("acc,none"), "acc_stderr": r.get("acc_stderr,none"),
                              "acc_norm": r.get("acc_norm,none"), "acc_norm_stderr": r.get("acc_norm_stderr,none"),
                              "seconds": secs, "docs": docs}
        print(f"harness {name}: n {len(docs)} acc {r.get('acc,none'):.4f}"
              + (f" acc_norm {r['acc_norm,none']:.4f}" if "acc_norm,none" in r else "") + f" ({secs:.1f}s)",
              file=sys.stderr, flush=True)
    out["timing"] = {"task_build_s": t_tasks, "model_load_s": t_load, "eval_s": t_eval,
                     "total_s": t_tasks + t_load + t_eval}
    return out


def fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--data-dir", default=os.environ.get("SPP_EVAL_DIR", "../shared/data/eval"))
    ap.add_argument("--spp", default="target/release/spp")
    ap.add_argument("--batch-size", type=int, default=8, help="harness batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-spp", action="store_true", help="only run (or load) the harness side")
    ap.add_argument("--spp-json", help="reuse this `spp eval tasks --out` file instead of running spp")
    ap.add_argument("--save-harness", help="write the harness side (per-doc loglikelihoods etc.) to this JSON")
    ap.add_argument("--harness-json", help="reuse a --save-harness file instead of running the harness")
    ap.add_argument("--json-out", help="write the comparison rows here")
    args = ap.parse_args()
    print(f"host: {host()}")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]

    spp, spp_wall = None, None
    if args.spp_json:
        with open(args.spp_json) as f:
            spp = json.load(f)
    elif not args.skip_spp:
        out = os.path.join(tempfile.mkdtemp(prefix="spp-bench-tasks-"), "spp_tasks.json")
        spp, spp_wall = run_spp(args, out)

    if args.harness_json:
        with open(args.harness_json) as f:
            h = json.load(f)
        missing = [n for n in names if n not in h["tasks"]]
        if missing:
            sys.exit(f"{args.harness_json} has no {missing}")
        if h["settings"]["limit"] != args.limit:
            print(f"warning: {args.harness_json} was made with limit {h['settings']['limit']}, comparing the "
                  f"first {args.limit} docs", file=sys.stderr)
            for n in names:
                h["tasks"][n]["docs"] = [d for d in h["tasks"][n]["docs"] if d["index"] < args.limit]
    else:
        h = run_harness(args, names)
        if args.save_harness:
            with open(args.save_harness, "w", encoding="utf-8") as f:
                json.dump(h, f, indent=1, ensure_ascii=False)
            print(f"wrote {args.save_harness}", file=sys.stderr)

    hs = h["settings"]
    print(f"\n{args.model}, 0-shot, limit {args.limit}, {args.threads} threads; harness lm_eval "
          f"{hs.get('lm_eval_version')} HFLM f32 cpu batch {hs.get('batch_size')}"
          + (f" (loaded from {args.harness_json}, run {hs.get('date')})" if args.harness_json else "") + "\n")
    rows = []
    all_agree = all_n = 0
    ok_acc = True
    if spp is None:
        print("| task | n | harness acc | ± stderr | harness acc_norm | ± stderr | harness s |")
        print("|---|---|---|---|---|---|---|")
        for n in names:
            t = h["tasks"][n]
            print(f"| {n} | {t['n']} | {fmt(t['acc'])} | {fmt(t['acc_stderr'])} | {fmt(t['acc_norm'])} | "
                  f"{fmt(t['acc_norm_stderr'])} | {t['seconds']:.1f} |")
    else:
        print("| task | n | spp acc | harness acc | abs Δacc pts (<=0.5) | pred agree % | spp acc_norm | "
              "harness acc_norm | agree_norm % | max abs Δll | spp s | harness s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in names:
            t, s = h["tasks"][n], spp["tasks"].get(n)
            if s is None:
                print(f"| {n} | - | missing in spp output | | | | | | | | | |")
                ok_acc = False
                continue
            hd = {d["index"]: d for d in t["docs"]}
            sd = {d["index"]: d for d in s.get("docs", [])}
            common = sorted(hd.keys() & sd.keys())
            agree = sum(hd[i]["pred"] == sd[i]["pred"] for i in common)
            agree_norm = sum(hd[i]["pred_norm"] == sd[i].get("pred_norm") for i in common)
            dll = 0.0
            for i in common:
                a, b = hd[i]["loglikelihoods"], sd[i].get("loglikelihoods") or []
                if len(a) != len(b):
                    dll = float("inf")
                else:
                    dll = max([dll] + [abs(x - y) for x, y in zip(a, b)])
            gold_mismatch = sum(hd[i]["gold"] != sd[i].get("gold") for i in common)
            all_agree += agree
            all_n += len(common)
            dacc = 100 * abs(s["acc"] - t["acc"])
            ok_acc &= dacc <= 0.5 and len(common) == t["n"] == s["n"]
            has_norm = t.get("acc_norm") is not None
            row = {"task": n, "n_spp": s["n"], "n_harness": t["n"], "n_common": len(common),
                   "spp_acc": s["acc"], "harness_acc": t["acc"], "dacc_pts": dacc,
                   "agree": agree / max(1, len(common)), "agree_norm": agree_norm / max(1, len(common)),
                   "spp_acc_norm": s.get("acc_norm"), "harness_acc_norm": t.get("acc_norm"), "max_dll": dll,
                   "gold_mismatch": gold_mismatch, "spp_s": s.get("seconds"), "harness_s": t["seconds"]}
            rows.append(row)
            nstr = str(t["n"]) if s["n"] == t["n"] == len(common) else f"{s['n']}/{t['n']} ({len(common)} common)"
            print(f"| {n} | {nstr} | {s['acc']:.4f} | {t['acc']:.4f} | {dacc:.2f} {'ok' if dacc <= 0.5 else 'NO'} | "
                  f"{100 * row['agree']:.1f} | {fmt(s.get('acc_norm')) if has_norm else '-'} | "
                  f"{fmt(t.get('acc_norm'))} | {fmt(100 * row['agree_norm'], '.1f') if has_norm else '-'} | "
                  f"{dll:.2e} | {fmt(s.get('seconds'), '.1f')} | {t['seconds']:.1f} |")
            if gold_mismatch:
                print(f"warning: {n}: gold differs on {gold_mismatch} docs", file=sys.stderr)
        print("(spp s: compute time of the task's passes; on the CPU spp runs the passes of all tasks "
              "concurrently, one per core, so this column adds up to more than spp's wall time)")
        overall = all_agree / max(1, all_n)
        tm = h["timing"]
        print(f"\nprediction agreement over all {all_n} docs: {100 * overall:.2f}% (target >= 99%)")
        print(f"harness: {tm['total_s']:.1f}s with load (tasks {tm['task_build_s']:.1f}s + model "
              f"{tm['model_load_s']:.1f}s + eval {tm['eval_s']:.1f}s), {tm['eval_s']:.1f}s without")
        speed = None
        if spp_wall is not None:
            speed = tm["total_s"] / spp_wall
            print(f"spp: {spp_wall:.1f}s wall (process, with load); its own `seconds` {fmt(spp.get('seconds'), '.1f')}")
            if spp.get("seconds"):
                print(f"speedup with load: {speed:.2f}x; eval only (harness eval / spp seconds): "
                      f"{tm['eval_s'] / spp['seconds']:.2f}x")
            else:
                print(f"speedup with load: {speed:.2f}x")
        else:
            print(f"spp: reused {args.spp_json}, its own `seconds` {fmt(spp.get('seconds'), '.1f')}; "
                  "no wall clock, speedup from `seconds` (without load)")
            if spp.get("seconds"):
                speed = tm["eval_s"] / spp["seconds"]
                print(f"speedup (eval only): {speed:.2f}x")
        checks = [("agreement >= 99%", overall >= 0.99), ("per-task |Δacc| <= 0.5 pts", ok_acc),
                  ("speedup >= 3x", speed is not None and speed >= 3)]
        for name, ok in checks:
            print(f"{name}: {'ok' if ok else 'NO'}")
        print("PASS" if all(ok for _, ok in checks) else "FAIL")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"rows": rows, "harness_timing": h.get("timing"), "spp_wall_s": spp_wall,
                       "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
