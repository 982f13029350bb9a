#!/usr/bin/env python3
"""spp's GEMM against torch's on SmolLM2's block shapes, on this host, same threads.

    /work/venv/bin/python scripts/bench_gemm.py [--rounds 7]

Runs `cargo bench --bench peak` (the host's FMA peak, and spp's blocked GEMM on the three block
shapes, 2047 rows) between two passes of torch on the same shapes (`F.linear(x, w)`, f32, as many
threads as cores) and on a 2048³ matmul (torch's measured peak). Each side's figure is the median
of --rounds timed calls after one warm-up; torch's is the better of its two passes, so that a slow
moment of the machine counts against spp rather than for it. Prints the host and one table.
The script needs torch (a venv outside the repository; never in CI).
"""
import argparse
import os
import re
import statistics
import subprocess
import time

SHAPES = [(576, 576), (576, 1536), (1536, 576)]  # (k, n): x [2047, k] · w [n, k]ᵀ
M = 2047


def torch_pass(rounds):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    g = torch.Generator().manual_seed(0)

    def gflops(f, flops):
        f()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return flops / statistics.median(times) / 1e9

    out = {}
    with torch.inference_mode():
        for k, n in SHAPES:
            x, w = torch.randn(M, k, generator=g), torch.randn(n, k, generator=g)
            out[(k, n)] = gflops(lambda: F.linear(x, w), 2.0 * M * k * n)
        a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
        out["peak"] = gflops(lambda: a @ b, 2.0 * 2048**3)
    return out


def spp_pass():
    text = subprocess.run(["cargo", "bench", "--bench", "peak"], capture_output=True, text=True,
                          check=True).stdout
    host = text.splitlines()[0]
    fma = re.search(r"\| vfmadd231ps zmm \(f32\) \| 16 \| (\d+) \|", text) or re.search(
        r"\| vfmadd231ps ymm \(f32\) \| 8 \| (\d+) \|", text)
    out = {"host": host, "fma": float(fma.group(1)) if fma else float("nan")}
    for k, n in SHAPES:
        row = re.search(rf"\| {M}×{k}·\({n}×{k}\)ᵀ \| (\d+) \|", text)
        out[(k, n)] = float(row.group(1))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    first = torch_pass(a.rounds)
    ours = spp_pass()
    second = torch_pass(a.rounds)
    theirs = {key: max(first[key], second[key]) for key in first}
    print(ours["host"])
    print(f"FMA peak (cargo bench --bench peak): {ours['fma']:.0f} GFLOP/s; "
          f"torch 2048³ matmul: {theirs['peak']:.0f} GFLOP/s\n")
    print("| m×k·(n×k)ᵀ | spp GFLOP/s | torch F.linear GFLOP/s | spp / torch | spp / torch's 2048³ |")
    print("|---|---:|---:|---:|---:|")
    for k, n in SHAPES:
        s, t = ours[(k, n)], theirs[(k, n)]
        print(f"| {M}×{k}·({n}×{k})ᵀ | {s:.0f} | {t:.0f} | {s / t:.2f} | {s / theirs['peak']:.2f} |")


if __name__ == "__main__":
    main()
