#!/usr/bin/env python3
"""Golden Wanda statistics and masks of a whole model: `tests/data/prune/model_wanda_golden.safetensors`.

Run from the crate root (torch, transformers, safetensors in a venv outside the repo):

    /work/venv/bin/python scripts/golden/make_prune_stats_golden.py

An independent, layer-by-layer Wanda prune of `tests/data/tiny/gqa-untied` (2 layers, GQA,
untied) written with transformers' own `LlamaDecoderLayer`s and forward hooks (no spp code),
following docs/METHOD.md §5.1 and §5.3:

* calibration: `CALIB_SAMPLES` seeded windows of `CALIB_TOKENS` ids, each sample run alone
  through the layer (a causal mask, positions 0..T-1);
* statistics: a forward hook on every linear sums x_j^2 over all calibration tokens in float64;
  `norm_j = sqrt(sum)`. Every linear's input is what the hook sees, so `o_proj` gets the attention
  output (heads concatenated, before o_proj) and `down_proj` gets silu(gate) * up;
* `true_sequential = false`: one pass over the unpruned layer collects all seven linears'
  statistics, then all seven are pruned; `true = true`: four passes, the statistics of
  [q, k, v], [o], [gate, up], [down] each collected from the layer as pruned so far;
* selection: score |W_ij| * norm_j (float64); unstructured 0.5 prunes the floor(cols/2) lowest
  of each row; 2:4 the 2 lowest of each group of 4 columns of a row (stable: ties to the lowest
  index);
* the next layer's inputs are the outputs of the pruned layer.

Tensors (f64 norms, u8 masks with 1 = pruned), for each mode S in {seq0, seq1}, pattern P in
{0_5, 2_4}, layer L and linear N (q_proj, ..., down_proj):
  `input_ids`                  int64 [CALIB_SAMPLES, CALIB_TOKENS]
  `norms.S.P.L.N`              f64 [in_features]
  `mask.S.P.L.N`               u8  [out_features, in_features]
  `gap.S.P.L.N`                f64 [out_features, groups]: per row (0.5: one group) or group of
                               4 (2:4), (lowest kept − highest pruned score) / lowest kept score

A selection whose gap is below ~1e-5 is a near-tie that f32 arithmetic may decide either way; a
test may accept a different choice there and nowhere else. The script refuses to write unless
true_sequential changes the masks of o_proj, gate_proj and down_proj in layer 0 (so the test
tells the two modes apart).
"""

import json
import os
import platform
import sys

import numpy as np
import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

MODEL = "tests/data/tiny/gqa-untied"
OUT = "tests/data/prune/model_wanda_golden.safetensors"
CALIB_SAMPLES, CALIB_TOKENS = 3, 24
SEED = 515
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
GROUPS_SEQ = [LINEARS[0:3], LINEARS[3:4], LINEARS[4:6], LINEARS[6:7]]


def select(scores, pattern):
    """Bool mask (True = pruned) and each row's / group's relative gap at its boundary."""
    rows, cols = scores.shape
    if pattern == "0.5":
        groups, k = scores.reshape(rows, 1, cols), cols // 2
    else:
        groups, k = scores.reshape(rows, cols // 4, 4), 2
    order = np.argsort(groups, axis=-1, kind="stable")
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :k], True, axis=-1)
    s = np.take_along_axis(groups, order, axis=-1)
    hi_pruned, lo_kept = s[..., k - 1], s[..., k]
    gap = (lo_kept - hi_pruned) / np.maximum(lo_kept, 1e-300)
    return mask.reshape(rows, cols), gap


def run_layer(layer, xs, rope):
    T = xs[0].shape[1]
    causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
    ys = []
    with torch.no_grad():
        for x in xs:
            y = layer(x, attention_mask=causal, position_embeddings=rope)
            ys.append(y[0] if isinstance(y, tuple) else y)
    return ys


def prune_model(ids, pattern, true_sequential):
    model = LlamaForCausalLM.from_pretrained(MODEL, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    with torch.no_grad():
        xs = [model.model.embed_tokens(ids[i:i + 1]) for i in range(ids.shape[0])]
        pos = torch.arange(ids.shape[1])[None]
        rope = model.model.rotary_emb(xs[0], pos)
    out, gaps = {}, []
    for li, layer in enumerate(model.model.layers):
        groups = GROUPS_SEQ if true_sequential else [LINEARS]
        for group in groups:
            sums = {}
            hooks = []
            for name in group:
                lin = layer.get_submodule(name)
                sums[name] = torch.zeros(lin.in_features, dtype=torch.float64)

                def hook(mod, inp, _out, name=name):
                    x = inp[0].detach().double().reshape(-1, inp[0].shape[-1])
                    sums[name] += (x * x).sum(0)
                hooks.append(lin.register_forward_hook(hook))
            run_layer(layer, xs, rope)
            for h in hooks:
                h.remove()
            for name in group:
                lin = layer.get_submodule(name)
                norms = sums[name].sqrt().numpy()
                w = lin.weight.detach().double().numpy()
                mask, gap = select(np.abs(w) * norms[None, :], pattern)
                gaps.append((float(gap.min()), li, name))
                with torch.no_grad():
                    lin.weight[torch.from_numpy(mask)] = 0.0
                key = f"seq{int(true_sequential)}.{pattern.replace(':', '_').replace('.', '_')}.{li}.{name.split('.')[-1]}"
                out[f"norms.{key}"] = torch.from_numpy(norms.copy())
                out[f"mask.{key}"] = torch.from_numpy(mask.astype(np.uint8))
                out[f"gap.{key}"] = torch.from_numpy(gap.reshape(w.shape[0], -1).copy())
        xs = run_layer(layer, xs, rope)
    return out, gaps


def main():
    if not os.path.isdir(MODEL):
        sys.exit(f"run from the crate root: {MODEL} not found")
    torch.manual_seed(SEED)
    ids = torch.randint(0, 256, (CALIB_SAMPLES, CALIB_TOKENS), dtype=torch.int64)
    tensors = {"input_ids": ids}
    worst = []
    for pattern in ["0.5", "2:4"]:
        for seq in [False, True]:
            t, gaps = prune_model(ids, pattern, seq)
            tensors.update(t)
            worst.append(min(gaps))
    g = min(worst)
    for pattern in ["0_5", "2_4"]:
        for li in range(2):
            for n in ["o_proj", "gate_proj", "down_proj"]:
                a = tensors[f"mask.seq0.{pattern}.{li}.{n}"]
                b = tensors[f"mask.seq1.{pattern}.{li}.{n}"]
                if li == 0 and torch.equal(a, b):
                    sys.exit(f"true_sequential does not change {pattern} layer {li} {n}: change SEED")
    meta = {
        "how": "scripts/golden/make_prune_stats_golden.py",
        "model": MODEL,
        "seed": SEED,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "min_relative_gap": g[0],
    }
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, OUT,
              metadata={"golden": json.dumps(meta, sort_keys=True)})
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); smallest selection gap {g[0]:.2e} "
          f"(layer {g[1]} {g[2]}); {json.dumps(meta, sort_keys=True)}")


if __name__ == "__main__":
    main()
