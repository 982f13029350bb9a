#!/usr/bin/env python3
"""Independent PyTorch reference for spp's pruning (magnitude / Wanda / SparseGPT).

Written from docs/METHOD.md §5 and the published algorithms of Wanda
(locuslab/wanda) and SparseGPT (IST-DASLab/sparsegpt); no code is shared with spp (Rust) and none
was copied from those repositories. It runs a Hugging Face LLaMA checkpoint with transformers'
`LlamaForCausalLM`, one decoder layer at a time.

Usage (from the crate root):

    /work/venv/bin/python scripts/ref/prune_ref.py --model models/smollm2-135m \
        --method wanda --sparsity 0.5 --calib OUT_OF_SPP/calibration.safetensors --out /tmp/ref \
        --threads 2 --eval-text ../shared/data/wikitext2/wiki.test.raw --eval-windows 8 --seqlen 2048

    # windows made here instead of read from spp's calibration file:
    ... --calib-from-c4 ../shared/data/c4/c4_sample.jsonl --nsamples 128 --seqlen 2048 --seed 0

Protocol (what must agree with spp):

* Sparsity: a ratio (`0.5`: zero this fraction) or `N:M` (`2:4`: KEEP N of every M consecutive
  input columns of a row; the reference repositories' `prune_n` counts pruned weights instead).
  Every selection is exact: the k lowest scores by a stable sort (ties -> lowest index).
* Calibration: `--calib FILE.safetensors` with `input_ids` int64 [nsamples, seqlen] (the file spp
  writes as `calibration.safetensors`), or `--calib-from-c4 JSONL`: every document's `text` is
  tokenised without special tokens, documents are concatenated in file order with one EOS token
  after each, and `nsamples` windows of `seqlen` tokens start at
  `random.Random(seed).randint(0, len(stream) - seqlen)` (drawn one after the other). The windows
  are written to `OUT/calibration.safetensors`.
* Blocks one after another: the inputs of block i are the outputs of the already-pruned blocks
  0..i-1 (each sample its own sequence, positions 0..seqlen-1, causal mask). Within a block, one
  forward pass of the unpruned block over all samples gathers the statistics of all seven linears
  (forward hooks, f32), then all seven are pruned, then the block outputs are recomputed with the
  pruned weights. Embeddings, norms and lm_head are never pruned.
* magnitude: score |W|; unstructured: one group per whole matrix, exactly floor(numel * ratio)
  lowest (row-major index breaks ties); N:M: the M-N lowest of each group. No calibration.
* wanda: S_ij = |W_ij| * sqrt(sum over all calibration tokens of x_j^2) (f32); unstructured: per
  output row the floor(cols * ratio) lowest; N:M: the M-N lowest of each group.
* sparsegpt: H = 2/N_tok * sum x x^T as a running average (f32); dead inputs (H_jj = 0) get
  H_jj = 1 and a zeroed column; H += percdamp * mean(diag H) * I; Hinv = upper Cholesky factor of
  H^-1 (cholesky -> cholesky_inverse -> cholesky upper). Columns in blocks of `--blocksize`;
  unstructured: at the start of each block, the floor(rows * count * ratio) lowest w^2/d^2 of the
  whole rows x count block (stable, row-major); N:M: at each column i = 0 mod M (of the current,
  already-updated weights) per row the M-N lowest w^2/d^2 of columns i..i+M-1. Column loop with
  the OBS update err = (w - q) / d, W[:, i:blk_end] -= err x Hinv[i, i:blk_end], then the lazy
  update W[:, blk_end:] -= Err x Hinv[blk, blk_end:].
  (The reference code scales H by 2/nsamples with nsamples = sequences; a constant factor changes
  neither the mask nor the update.)
* Perplexity (spp's protocol, docs/METHOD.md §6.1): file content with "\\r\\n" -> "\\n", tokenised
  once with the tokenizer's defaults (no BOS for SmolLM2), non-overlapping windows of
  `--eval-seqlen` (default `--seqlen`) tokens, tail dropped; the model sees tokens[0:L-1] of each
  window, cross-entropy against tokens[1:L]; ppl = exp(mean over all scored positions). The first
  `--eval-windows` windows (0 = all).

Output: a summary on stdout and a JSON file (`--json-out`, default OUT/prune_ref.json) with ppl,
pruning wall time (excluding model load and evaluation; torch.set_num_threads(--threads)),
per-linear sparsity and checks, and peak RSS. `--save-model` also writes the pruned model to OUT
with save_pretrained.
"""

import argparse
import inspect
import json
import math
import os
import platform
import random
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaForCausalLM

LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


# ----------------------------------------------------------------------------------------------
# Sparsity patterns and exact selection
# ----------------------------------------------------------------------------------------------


class Sparsity:
    def __init__(self, text):
        self.text = text
        if ":" in text:
            n, m = text.split(":")
            self.n, self.m = int(n), int(m)
            if not 0 < self.n < self.m:
                raise SystemExit(f"sparsity {text}: N:M keeps N of every M and needs 0 < N < M")
            self.ratio = 1.0 - self.n / self.m
            self.nm = True
        else:
            self.ratio = float(text)
            if not 0.0 < self.ratio < 1.0:
                raise SystemExit(f"sparsity ratio {text} is outside (0, 1)")
            self.nm = False
            self.n = self.m = None

    def to_json(self):
        if self.nm:
            return {"kind": "nm", "n": self.n, "m": self.m, "ratio": self.ratio}
        return {"kind": "unstructured", "ratio": self.ratio}


def lowest_k_mask(scores, k):
    """Bool mask of the k lowest entries along the last dim (stable: ties -> lowest index)."""
    order = torch.sort(scores, dim=-1, stable=True).indices[..., :k]
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask


def select(scores, sp, group):
    """Prune mask (True = zero) of a [rows, cols] score matrix.

    group: "matrix" (one group per matrix) or "row" for unstructured; ignored for N:M.
    """
    rows, cols = scores.shape
    if sp.nm:
        if cols % sp.m:
            raise SystemExit(f"in_features {cols} is not divisible by M = {sp.m}")
        g = scores.reshape(rows, cols // sp.m, sp.m)
        return lowest_k_mask(g, sp.m - sp.n).reshape(rows, cols)
    if group == "row":
        return lowest_k_mask(scores, int(math.floor(cols * sp.ratio)))
    k = int(math.floor(scores.numel() * sp.ratio))
    return lowest_k_mask(scores.reshape(-1), k).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------
# Statistics (forward hooks)
# ----------------------------------------------------------------------------------------------


class WandaStats:
    def __init__(self, cols):
        self.sumsq = torch.zeros(cols, dtype=torch.float32)
        self.tokens = 0

    def add(self, x):
        x = x.reshape(-1, x.shape[-1]).float()
        self.sumsq += (x * x).sum(0)
        self.tokens += x.shape[0]


class HessianStats:
    """H = 2/N_tok * sum x x^T, kept as a running average (f32)."""

    def __init__(self, cols):
        self.H = torch.zeros(cols, cols, dtype=torch.float32)
        self.tokens = 0

    def add(self, x):
        x = x.reshape(-1, x.shape[-1]).float()
        t = x.shape[0]
        self.H *= self.tokens / (self.tokens + t)
        self.tokens += t
        x = math.sqrt(2.0 / self.tokens) * x
        self.H += x.t() @ x


# ----------------------------------------------------------------------------------------------
# Pruning of one linear
# ----------------------------------------------------------------------------------------------


def prune_magnitude(W, sp):
    Wf = W.float()
    mask = select(Wf.abs(), sp, "matrix")
    return Wf.masked_fill(mask, 0.0), {}


def prune_wanda(W, sp, stats):
    Wf = W.float()
    norms = torch.sqrt(stats.sumsq)
    scores = Wf.abs() * norms.reshape(1, -1)
    mask = select(scores, sp, "row")
    return Wf.masked_fill(mask, 0.0), {"dead_inputs": int((stats.sumsq == 0).sum())}


def prune_sparsegpt(W, sp, stats, blocksize, percdamp, hinv_dtype):
    W = W.float().clone()
    rows, cols = W.shape
    H = stats.H.clone().to(hinv_dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(cols)
    H[idx, idx] += damp
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        Hinv = torch.linalg.cholesky(Hinv, upper=True)
    except torch.linalg.LinAlgError as e:
        raise SystemExit(f"Cholesky failed ({e}); try a larger --percdamp")
    Hinv = Hinv.float()
    if sp.nm:
        if cols % sp.m or blocksize % sp.m:
            raise SystemExit(f"cols {cols} and --blocksize {blocksize} must be multiples of M = {sp.m}")
    loss = 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        if not sp.nm:
            tmp = W1 ** 2 / (d1.reshape(1, -1) ** 2)
            k = int(math.floor(tmp.numel() * sp.ratio))
            mask1 = lowest_k_mask(tmp.reshape(-1), k).reshape(rows, count)
        else:
            mask1 = torch.zeros(rows, count, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if sp.nm and i % sp.m == 0:
                tmp = W1[:, i:i + sp.m] ** 2 / (d1[i:i + sp.m].reshape(1, -1) ** 2)
                mask1[:, i:i + sp.m] = lowest_k_mask(tmp, sp.m - sp.n)
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d
            loss += float(((w - q) ** 2 / d ** 2).sum()) / 2.0
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, {"dead_inputs": int(dead.sum()), "obs_loss": loss}


# ----------------------------------------------------------------------------------------------
# Running decoder layers one at a time (transformers 5.x)
# ----------------------------------------------------------------------------------------------


def causal_mask_for(model, x, pos):
    """The model's own causal mask for one unpadded sequence (None under SDPA = is_causal)."""
    from transformers.masking_utils import create_causal_mask

    params = inspect.signature(create_causal_mask).parameters
    kw = dict(config=model.config, inputs_embeds=x, attention_mask=None, position_ids=pos)
    if "cache" in params:
        kw["cache"] = None
    elif "past_key_values" in params:
        kw["past_key_values"] = None
    if "cache_position" in params:  # older 4.x/early 5.x signatures
        kw["cache_position"] = pos[0]
    return create_causal_mask(**kw)


class LayerRunner:
    def __init__(self, model, seqlen, dtype):
        self.model = model
        x = torch.zeros(1, seqlen, model.config.hidden_size, dtype=dtype)
        self.pos = torch.arange(seqlen).unsqueeze(0)
        self.pe = model.model.rotary_emb(x, position_ids=self.pos)
        self.mask = causal_mask_for(model, x, self.pos)

    def __call__(self, layer, h):
        out = layer(h, attention_mask=self.mask, position_ids=self.pos, position_embeddings=self.pe)
        return out[0] if isinstance(out, tuple) else out


# ----------------------------------------------------------------------------------------------
# Calibration data
# ----------------------------------------------------------------------------------------------


def calib_from_c4(path, tok, eos_id, nsamples, seqlen, seed):
    stream = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            text = json.loads(line)["text"].replace("\r\n", "\n")
            stream.extend(tok(text, add_special_tokens=False)["input_ids"])
            stream.append(eos_id)
    if len(stream) < seqlen + 1:
        raise SystemExit(f"{path}: {len(stream)} tokens, fewer than one window of {seqlen}")
    rng = random.Random(seed)
    rows = []
    for _ in range(nsamples):
        s = rng.randint(0, len(stream) - seqlen)
        rows.append(stream[s:s + seqlen])
    return torch.tensor(rows, dtype=torch.int64), len(stream)


# ----------------------------------------------------------------------------------------------
# Perplexity
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(model, ids, seqlen, max_windows):
    available = len(ids) // seqlen
    if available == 0:
        raise SystemExit(f"eval text has {len(ids)} tokens, fewer than one window of {seqlen}")
    windows = available if max_windows <= 0 else min(max_windows, available)
    total = 0.0
    t0 = time.time()
    for w in range(windows):
        win = torch.tensor(ids[w * seqlen:(w + 1) * seqlen], dtype=torch.int64)
        logits = model(win[:-1].unsqueeze(0)).logits[0].float()
        total += float(F.cross_entropy(logits, win[1:], reduction="sum").double())
    scored = windows * (seqlen - 1)
    mean = total / scored
    return {
        "ppl": math.exp(mean),
        "mean_nll": mean,
        "windows": windows,
        "seqlen": seqlen,
        "stride": seqlen,
        "scored_tokens": scored,
        "text_tokens": len(ids),
        "seconds": time.time() - t0,
    }


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def linear_report(W, sp, method):
    rows, cols = W.shape
    zero = W == 0
    rep = {"shape": [rows, cols], "sparsity": float(zero.float().mean())}
    row_zeros = zero.sum(1)
    rep["row_zeros_min"] = int(row_zeros.min())
    rep["row_zeros_max"] = int(row_zeros.max())
    if sp.nm:
        nz = (~zero).reshape(rows, cols // sp.m, sp.m).sum(-1)
        rep["nm_valid"] = bool((nz <= sp.n).all())
    elif method == "wanda":
        rep["rows_exact"] = bool((row_zeros >= int(math.floor(cols * sp.ratio))).all())
    elif method == "magnitude":
        rep["count_exact"] = bool(int(zero.sum()) >= int(math.floor(W.numel() * sp.ratio)))
    return rep


@torch.no_grad()
def check_layerwise(model, runner, ids):
    """Max |difference| of logits: layer-by-layer run vs the model's own forward."""
    h = model.model.embed_tokens(ids)
    for layer in model.model.layers:
        h = runner(layer, h)
    a = model.lm_head(model.model.norm(h))
    b = model(ids).logits
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face LLaMA directory")
    ap.add_argument("--method", required=True, choices=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--sparsity", required=True, help="ratio (0.5) or N:M kept (2:4, 4:8)")
    ap.add_argument("--calib", help="safetensors file with input_ids int64 [nsamples, seqlen]")
    ap.add_argument("--calib-from-c4", metavar="JSONL", nargs="?", const="/work/shared/data/c4/c4_sample.jsonl",
                    help="make windows from this C4 JSONL (default the shared sample)")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048, help="calibration (with --calib-from-c4) and eval seqlen")
    ap.add_argument("--eval-seqlen", type=int, help="eval window (default --seqlen)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--json-out", help="result JSON (default OUT/prune_ref.json)")
    ap.add_argument("--save-model", action="store_true", help="save_pretrained the pruned model into OUT")
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--hinv-dtype", choices=["float32", "float64"], default="float32",
                    help="dtype of SparseGPT's Cholesky/inverse (the reference uses float32)")
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers' attention (the same arithmetic up to rounding: comparing the two shows "
                         "how far rounding alone moves a result)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto", help="model dtype: auto|float32|bfloat16|float16")
    ap.add_argument("--eval-text", help="WikiText-2 test file (wiki.test.raw)")
    ap.add_argument("--eval-windows", type=int, default=8, help="0 = all windows")
    ap.add_argument("--eval-dense", action="store_true", help="also evaluate the unpruned model")
    ap.add_argument("--check-layerwise", action="store_true",
                    help="check the layer-by-layer forward against the model's own (calibration sample 0)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    sp = Sparsity(args.sparsity)
    os.makedirs(args.out, exist_ok=True)
    json_out = args.json_out or os.path.join(args.out, "prune_ref.json")

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    t_load = time.time()
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn_implementation)
    model.eval()
    model.config.use_cache = False
    tok = AutoTokenizer.from_pretrained(args.model)
    mdtype = next(model.parameters()).dtype
    print(f"loaded {args.model} ({mdtype}, attn {model.config._attn_implementation}) in {time.time() - t_load:.1f}s",
          flush=True)

    result = {
        "tool": "scripts/ref/prune_ref.py",
        "model": os.path.abspath(args.model),
        "method": args.method,
        "sparsity": sp.to_json(),
        "sparsity_text": args.sparsity,
        "magnitude_group": "matrix" if args.method == "magnitude" else None,
        "wanda_group": "row" if args.method == "wanda" else None,
        "threads": args.threads,
        "dtype": str(mdtype),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }
    if args.method == "sparsegpt":
        result["sparsegpt"] = {"blocksize": args.blocksize, "percdamp": args.percdamp,
                               "hinv_dtype": args.hinv_dtype}

    # Calibration windows.
    calib = None
    if args.calib:
        calib = load_file(args.calib)["input_ids"].to(torch.int64)
        result["calib"] = {"source": os.path.abspath(args.calib)}
    elif args.calib_from_c4:
        eos = tok.eos_token_id if tok.eos_token_id is not None else model.config.eos_token_id
        calib, stream_len = calib_from_c4(args.calib_from_c4, tok, eos, args.nsamples, args.seqlen, args.seed)
        path = os.path.join(args.out, "calibration.safetensors")
        save_file({"input_ids": calib.contiguous()}, path)
        result["calib"] = {"source": os.path.abspath(args.calib_from_c4), "written": os.path.abspath(path),
                           "seed": args.seed, "eos_id": int(eos), "stream_tokens": stream_len,
                           "windows": "documents concatenated, EOS after each; random.Random(seed).randint"}
    elif args.method != "magnitude":
        raise SystemExit("--calib FILE or --calib-from-c4 is needed for wanda / sparsegpt")
    if calib is not None:
        if calib.dim() != 2:
            raise SystemExit(f"input_ids must be [nsamples, seqlen], got {list(calib.shape)}")
        result["calib"].update({"nsamples": calib.shape[0], "seqlen": calib.shape[1]})
        print(f"calibration: {calib.shape[0]} x {calib.shape[1]} tokens", flush=True)

    if args.check_layerwise and calib is not None:
        runner = LayerRunner(model, calib.shape[1], mdtype)
        diff = check_layerwise(model, runner, calib[:1])
        result["layerwise_check_max_abs_logit_diff"] = diff
        print(f"layer-by-layer vs model forward: max |logit diff| = {diff:.3e}", flush=True)

    eval_ids = None
    eval_seqlen = args.eval_seqlen or args.seqlen
    if args.eval_text:
        with open(args.eval_text, encoding="utf-8", newline="") as f:
            text = f.read().replace("\r\n", "\n")
        eval_ids = tok(text)["input_ids"]
        result["eval_bos"] = bool(tok.bos_token_id is not None and eval_ids[0] == tok.bos_token_id)
        if args.eval_dense:
            r = perplexity(model, eval_ids, eval_seqlen, args.eval_windows)
            result["dense_ppl"] = r
            print(f"dense ppl {r['ppl']:.4f} ({r['windows']} windows of {r['seqlen']}, {r['seconds']:.1f}s)",
                  flush=True)

    # ------------------------------------------------------------------ pruning
    rss_before = peak_rss_mb()
    result["loadavg_before_prune"] = os.getloadavg()
    t0 = time.time()
    layers = model.model.layers
    reports = {}
    per_layer_seconds = []
    if args.method == "magnitude":
        for li, layer in enumerate(layers):
            tl = time.time()
            for name in LINEARS:
                lin = layer.get_submodule(name)
                Wn, extra = prune_magnitude(lin.weight.data, sp)
                lin.weight.data.copy_(Wn.to(lin.weight.dtype))
                reports[f"model.layers.{li}.{name}"] = {**linear_report(lin.weight.data, sp, args.method), **extra}
            per_layer_seconds.append(time.time() - tl)
    else:
        ns, seqlen = calib.shape
        runner = LayerRunner(model, seqlen, mdtype)
        inps = torch.empty(ns, seqlen, model.config.hidden_size, dtype=mdtype)
        for s in range(ns):
            inps[s] = model.model.embed_tokens(calib[s:s + 1])[0]
        outs = torch.empty_like(inps)
        for li, layer in enumerate(layers):
            tl = time.time()
            stats = {}
            hooks = []
            for name in LINEARS:
                lin = layer.get_submodule(name)
                st = WandaStats(lin.in_features) if args.method == "wanda" else HessianStats(lin.in_features)
                stats[name] = st
                hooks.append(lin.register_forward_hook(lambda m, inp, out, st=st: st.add(inp[0].detach())))
            for s in range(ns):
                runner(layer, inps[s:s + 1])
            for h in hooks:
                h.remove()
            for name in LINEARS:
                lin = layer.get_submodule(name)
                if args.method == "wanda":
                    Wn, extra = prune_wanda(lin.weight.data, sp, stats[name])
                else:
                    Wn, extra = prune_sparsegpt(lin.weight.data, sp, stats[name], args.blocksize, args.percdamp,
                                                getattr(torch, args.hinv_dtype))
                lin.weight.data.copy_(Wn.to(lin.weight.dtype))
                extra["calib_tokens"] = stats[name].tokens
                reports[f"model.layers.{li}.{name}"] = {**linear_report(lin.weight.data, sp, args.method), **extra}
            del stats
            for s in range(ns):
                outs[s:s + 1] = runner(layer, inps[s:s + 1])
            inps, outs = outs, inps
            per_layer_seconds.append(time.time() - tl)
            print(f"  layer {li:3d}: {per_layer_seconds[-1]:.2f}s", flush=True)
    prune_seconds = time.time() - t0
    result["prune_seconds"] = prune_seconds
    result["loadavg_after_prune"] = os.getloadavg()
    result["per_layer_seconds"] = per_layer_seconds
    if calib is not None and args.method != "magnitude":
        result["prune_seconds_per_sample"] = prune_seconds / calib.shape[0]
    result["peak_rss_mb_before_prune"] = rss_before
    result["peak_rss_mb_after_prune"] = peak_rss_mb()

    sps = [r["sparsity"] for r in reports.values()]
    total_zero = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in reports.values())
    total = sum(r["shape"][0] * r["shape"][1] for r in reports.values())
    summary = {"linears": len(reports), "overall": total_zero / total, "min": min(sps), "max": max(sps)}
    for key in ["nm_valid", "rows_exact", "count_exact"]:
        vals = [r[key] for r in reports.values() if key in r]
        if vals:
            summary[key] = all(vals)
    result["sparsity_summary"] = summary
    result["linears"] = reports
    print(f"pruned {args.method} {args.sparsity} in {prune_seconds:.1f}s; linear sparsity {summary}", flush=True)

    if eval_ids is not None:
        r = perplexity(model, eval_ids, eval_seqlen, args.eval_windows)
        result["ppl"] = r
        print(f"pruned ppl {r['ppl']:.4f} ({r['windows']} windows of {r['seqlen']}, {r['seconds']:.1f}s)",
              flush=True)

    if args.save_model:
        model.save_pretrained(args.out)
        tok.save_pretrained(args.out)
    result["peak_rss_mb"] = peak_rss_mb()
    with open(json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB; wrote {json_out}", flush=True)


if __name__ == "__main__":
    main()
