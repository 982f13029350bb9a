#!/usr/bin/env python3
"""Memory at scale: spp's block-streamed jobs on random LLaMA-shaped bf16 checkpoints larger than
the machine's memory, with the peak anonymous resident memory (RssAnon, sampled every 50 ms from
outside the process) and the peak of the checkpoint's file-backed pages (RssFile) beside it.

    python3 scripts/bench_memory.py --work /path/with/60GB [--rows prune13,sparsegpt13,ppl13,merge13,calib,depth,train7]

Checkpoints are made by `cargo run --release --example synth_checkpoint` (seeded, SmolLM2's
tokenizer) and kept in --work for the next run; outputs are deleted after each row. Rows:
  prune13      LLaMA-2-13B shape: `spp prune` Wanda 2:4, 2 x 512 calibration tokens, with the time the
               blocks' compute took and the time to read the checkpoint once
  sparsegpt13  SparseGPT 50% on 4 blocks of the 13B shape (the peak does not depend on the depth:
               see `depth`; the whole 40 blocks take about 40 min on 2 cores)
  ppl13        `spp eval ppl --seqlen 512 --max-windows 1` on the Wanda-pruned 13B model
  merge13      `spp merge` of a random SPP adapter onto it (every zero kept); the original 13B
               checkpoint is deleted first when the disk cannot hold a third copy
  calib        the prune peak at three calibration sizes (2 blocks of the 7B shape) against the formula
  depth        the prune peak at 8, 16 and 32 blocks of the 7B shape (2 x 128 calibration tokens)
  train7       LLaMA-2-7B shape: magnitude 2:4, then `spp train --method spp` for 2 steps of 1 x 128
               tokens (the frozen weights streamed), then `spp merge` (every zero kept)
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

from hostinfo import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPP = os.path.join(ROOT, "target/release/spp")
SYNTH = os.path.join(ROOT, "target/release/examples/synth_checkpoint")
GIB = 1 << 30


def status(pid):
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def measured(cmd):
    """Runs cmd; returns (wall seconds, peak RssAnon, peak RssFile, stdout)."""
    t = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0}
    err = []
    reader = threading.Thread(target=lambda: err.extend(p.stderr))
    reader.start()
    while p.poll() is None:
        for k, v in status(p.pid).items():
            peak[k] = max(peak[k], v)
        time.sleep(0.05)
    out = p.stdout.read()
    reader.join()
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{''.join(err[-20:])}")
    return time.time() - t, peak["RssAnon"], peak["RssFile"], out


def synth(work, shape, layers=None):
    name = shape + (f"-{layers}l" if layers else "")
    out = os.path.join(work, name)
    if not os.path.exists(os.path.join(out, "config.json")):
        cmd = [SYNTH, "--shape", shape, "--out", out, "--tokenizer-from", os.path.join(ROOT, "models/smollm2-135m")]
        if layers:
            cmd += ["--layers", str(layers)]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return out


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_once(model):
    """Seconds to read the checkpoint's shards once from disk (page cache dropped first)."""
    if not drop_caches():
        return None
    t = time.time()
    for f in sorted(os.listdir(model)):
        if f.endswith(".safetensors"):
            with open(os.path.join(model, f), "rb") as fh:
                while fh.read(64 << 20):
                    pass
    return time.time() - t


def row(label, wall, anon, file, extra=""):
    print(f"| {label} | {wall:.0f} | {anon / GIB:.2f} | {file / GIB:.2f} | {extra} |", flush=True)


def prune(model, out, method, sparsity, nsamples=2, seqlen=512):
    calib = os.path.join(ROOT, "../shared/data/c4/c4_sample.jsonl")
    shutil.rmtree(out, ignore_errors=True)
    drop_caches()
    wall, anon, file, _ = measured([SPP, "prune", "--model", model, "--method", method, "--sparsity", sparsity,
                                    "--calib", calib, "--nsamples", str(nsamples), "--seqlen", str(seqlen),
                                    "--out", out])
    rec = json.load(open(os.path.join(out, "prune.json")))
    return wall, anon, file, rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, help="directory for the checkpoints (13B: 26 GB, outputs as much again)")
    ap.add_argument("--rows", default="prune13,ppl13,merge13,calib,depth")
    a = ap.parse_args()
    rows = a.rows.split(",")
    os.makedirs(a.work, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "synth_checkpoint"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    print(f"host: {host()}; spp {subprocess.run([SPP, '--version'], capture_output=True, text=True).stdout.strip()}")
    print("\n| job | wall s | peak RssAnon GiB | peak RssFile GiB | notes |\n|---|---|---|---|---|")
    pruned13 = os.path.join(a.work, "out-13b-wanda")
    m13 = os.path.join(a.work, "llama-2-13b")
    if "prune13" in rows:
        synth(a.work, "llama-2-13b")
    jobs = []
    if "prune13" in rows:
        jobs.append((m13, pruned13, "wanda", "2:4", "13B"))
    if "sparsegpt13" in rows:
        jobs.append((synth(a.work, "llama-2-13b", 4), os.path.join(a.work, "out-13b-sparsegpt"), "sparsegpt", "0.5",
                     "13B-shape 4 blocks"))
    if jobs:
        for model, out, method, sp, label in jobs:
            size = du(model)
            wall, anon, file, rec = prune(model, out, method, sp)
            blocks = rec["report"]["blocks"]
            compute = sum(b["statistics"] + b["pruning"] + b["propagation"] for b in blocks)
            waited = sum(b.get("load_wait", 0.0) for b in blocks)
            res = rec["result"]
            read = read_once(model)
            read_s = f"{read:.0f} s" if read is not None else "n/a"
            bound = compute + (read or 0)
            row(f"{label} prune {method} {sp}, 2x512", wall, anon, file,
                f"{size / 1e9:.1f} GB bf16; sparsity {res['linear_sparsity']:.4f}, 2:4 {res['all_linears_2_4']}; "
                f"predicted {rec['predicted_peak_bytes'] / GIB:.2f} GiB; compute {compute:.0f} s + read once {read_s} "
                f"= {bound:.0f} s, wall / that = {wall / max(bound, 1e-9):.2f}; waited for blocks {waited:.0f} s")
            if out != pruned13:
                shutil.rmtree(out, ignore_errors=True)
    if "ppl13" in rows and os.path.exists(pruned13):
        text = os.path.join(ROOT, "../shared/data/wikitext2/wiki.test.raw")
        drop_caches()
        wall, anon, file, out = measured([SPP, "eval", "ppl", "--model", pruned13, "--text", text, "--seqlen", "512",
                                          "--max-windows", "1", "--json"])
        row("13B eval ppl 1x512 (pruned)", wall, anon, file, f"ppl {json.loads(out)['ppl']:.1f} (random weights)")
    if "merge13" in rows and os.path.exists(pruned13):
        adapter = os.path.join(a.work, "adapter-13b")
        if not os.path.exists(adapter):
            subprocess.run([SYNTH, "--adapter-for", pruned13, "--out", adapter], check=True)
        merged = os.path.join(a.work, "out-13b-merged")
        shutil.rmtree(merged, ignore_errors=True)
        if shutil.disk_usage(a.work).free < du(pruned13) * 1.05 and os.path.exists(m13):
            shutil.rmtree(m13)
        drop_caches()
        wall, anon, file, out = measured([SPP, "merge", "--model", pruned13, "--adapter", adapter, "--out", merged,
                                          "--force", "--json"])
        rec = json.loads(out)
        row("13B merge SPP r 16 (pruned)", wall, anon, file,
            f"all zeros kept {rec['all_zeros_kept']}, 2:4 {rec['all_linears_2_4']}, sparsity {rec['linear_sparsity']:.4f}")
        for d in (merged, pruned13):
            shutil.rmtree(d, ignore_errors=True)
    if "calib" in rows:
        m = synth(a.work, "llama-2-7b", 2)
        for n in (2, 8, 16):
            out = os.path.join(a.work, "out-calib")
            wall, anon, file, rec = prune(m, out, "wanda", "2:4", nsamples=n)
            row(f"7B-shape 2 blocks, wanda 2:4, {n}x512", wall, anon, file,
                f"predicted {rec['predicted_peak_bytes'] / GIB:.2f} GiB")
            shutil.rmtree(out, ignore_errors=True)
    if "depth" in rows:
        for layers in (8, 16, 32):
            m = synth(a.work, "llama-2-7b", layers if layers != 32 else None)
            out = os.path.join(a.work, "out-depth")
            wall, anon, file, rec = prune(m, out, "wanda", "2:4", seqlen=128)
            row(f"7B-shape {layers} blocks, wanda 2:4, 2x128", wall, anon, file,
                f"predicted {rec['predicted_peak_bytes'] / GIB:.2f} GiB; {du(m) / 1e9:.1f} GB on disk")
            shutil.rmtree(out, ignore_errors=True)
    if "train7" in rows:
        m = synth(a.work, "llama-2-7b")
        pruned = os.path.join(a.work, "out-7b-pruned")
        if not os.path.exists(os.path.join(pruned, "prune.json")):
            prune(m, pruned, "magnitude", "2:4")
        adapter = os.path.join(a.work, "out-7b-adapter")
        shutil.rmtree(adapter, ignore_errors=True)
        data = os.path.join(ROOT, "../shared/data/alpaca/alpaca_gpt4_en_demo.json")
        wall, anon, file, out = measured([SPP, "train", "--model", pruned, "--data", data, "--out", adapter,
                                          "--method", "spp", "--max-steps", "2", "--batch-size", "1",
                                          "--micro-batch-size", "1", "--cutoff", "128", "--val-size", "1",
                                          "--eval-every", "1000", "--stream-blocks", "--json"])
        rep = json.loads(out)["report"]
        row("7B-shape train spp 2 steps, 1x128 (pruned, streamed)", wall, anon, file,
            f"loss {rep['first_loss']:.3f} -> {rep['last_loss']:.3f}, {rep['tokens_per_second']:.1f} tok/s, "
            f"{rep['trainable_parameters'] / 1e6:.1f} M trainable")
        merged = os.path.join(a.work, "out-7b-merged")
        shutil.rmtree(merged, ignore_errors=True)
        wall, anon, file, out = measured([SPP, "merge", "--model", pruned, "--adapter", adapter, "--out", merged, "--json"])
        rec = json.loads(out)
        row("7B-shape merge of that adapter", wall, anon, file,
            f"all zeros kept {rec['all_zeros_kept']} ({rec['zeros_after']} of {rec['zeros_before']}), 2:4 {rec['all_linears_2_4']}")
        for d in (pruned, adapter, merged):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
