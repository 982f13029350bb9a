"""`spp export gguf` checked by llama.cpp itself: the same perplexity windows scored by spp and by
llama.cpp (through the llama-cpp-python wheel, which builds llama.cpp from source) on the GGUF
that spp exported, plus tokenisation agreement and decode speed of both.

Usage (from the repository root; once: `pip install llama-cpp-python tokenizers` into a venv
outside the repository — never in CI):

    /work/venv/bin/python scripts/bench_export.py [--model models/smollm2-135m]
        [--spp target/release/spp] [--data $SPP_DATA_DIR] [--windows 2] [--types f32,f16,q8_0]

Per export type: `spp export gguf` → FILE; the WikiText-2 test file tokenised once by the model's
tokenizer.json (spp's tokeniser, the `tokenizers` library), cut into `--windows` windows of 2048
tokens; llama.cpp scores every position of each window (logits_all) and the mean NLL gives its
perplexity; spp's `eval ppl` on the same model directory and windows gives spp's. Also: llama.cpp's
own tokenisation of 20 snippets of the file against tokenizer.json's, and 64 greedy tokens' decode
rate in llama.cpp next to `spp generate`'s.
"""

import argparse
import json
import math
import os
import subprocess
import tempfile
import time

import numpy as np

from hostinfo import host


def spp_ppl(spp, model, text, windows):
    out = subprocess.run([spp, "eval", "ppl", "--model", model, "--text", text,
                          "--max-windows", str(windows), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def llama_ppl(llm, ids, windows, seqlen=2048):
    nll, n = 0.0, 0
    for w in range(windows):
        window = ids[w * seqlen:(w + 1) * seqlen]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= logp[np.arange(len(window) - 1), window[1:]].sum()
        n += len(window) - 1
    return math.exp(nll / n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--spp", default="target/release/spp")
    ap.add_argument("--data", default=os.environ.get("SPP_DATA_DIR", "../shared/data"))
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--types", default="f32,f16,q8_0")
    a = ap.parse_args()
    print(f"host: {host()}")
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    text_path = os.path.join(a.data, "wikitext2/wiki.test.raw")
    text = open(text_path, encoding="utf-8").read()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    ref = spp_ppl(a.spp, a.model, text_path, a.windows)
    # spp's windows: the file's tokens as its tokeniser gives them (BOS as spp's record says).
    ids = tok.encode(text, add_special_tokens=ref["bos"]).ids
    snippets = [text[i * 5000:i * 5000 + 400] for i in range(20)]
    t0 = time.perf_counter()
    subprocess.run([a.spp, "generate", "--model", a.model, "--prompt", "The history of the city",
                    "--max-new-tokens", "64"], capture_output=True, check=True)
    spp_gen = time.perf_counter() - t0
    print(f"spp eval ppl: {ref['ppl']:.4f} ({a.windows} x 2048, bos {ref['bos']}); "
          f"spp generate 64 tokens: {spp_gen:.2f} s wall (with loading)")
    print(f"{'type':<6} {'MB':>7} {'llama.cpp ppl':>14} {'rel. diff':>10} {'tokens same':>12} {'decode tok/s':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for ty in a.types.split(","):
            path = os.path.join(tmp, f"model-{ty}.gguf")
            subprocess.run([a.spp, "export", "gguf", "--model", a.model, "--out", path, "--type", ty],
                           capture_output=True, check=True)
            llm = Llama(model_path=path, n_ctx=2048, logits_all=True, n_threads=os.cpu_count(),
                        verbose=False)
            ppl = llama_ppl(llm, ids, a.windows)
            same = sum(llm.tokenize(s.encode(), add_bos=False, special=False) == tok.encode(s, add_special_tokens=False).ids
                       for s in snippets)
            gen = Llama(model_path=path, n_ctx=512, n_threads=os.cpu_count(), verbose=False)
            t0 = time.perf_counter()
            out = gen("The history of the city", max_tokens=64, temperature=0.0)
            dt = time.perf_counter() - t0
            n = out["usage"]["completion_tokens"]
            print(f"{ty:<6} {os.path.getsize(path) / 1e6:7.1f} {ppl:14.4f} {(ppl - ref['ppl']) / ref['ppl']:10.2e} "
                  f"{same:>9}/20 {n / dt:13.1f}")


if __name__ == "__main__":
    main()
