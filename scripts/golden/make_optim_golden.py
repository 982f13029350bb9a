#!/usr/bin/env python3
"""Golden AdamW steps and gradient clipping: `tests/data/train/optim_golden.safetensors`.

Run from the crate root:

    /work/venv/bin/python scripts/golden/make_optim_golden.py

The reference is PyTorch itself, on the CPU, in float32 (no spp code):

* AdamW: `torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, amsgrad=False, foreach=False,
  fused=False)`, the single-tensor path. Four parameters of different shapes (`a` [3, 4], `b` [5],
  `c` [2, 2, 3], `tiny` [4]) take STEPS steps from the same seeded start with the same seeded
  gradients (set as `p.grad` before each `step()`) and a learning rate that changes every step
  (`param_groups[0]["lr"]` set before each step; the first is 0, as after spp's warm-up start).
  Two runs: weight decay 0.1 (`decay`) and 0 (`nodecay`). Recorded after every step: the
  parameters and the optimizer state `exp_avg`, `exp_avg_sq`.
  The gradients are shaped to expose particular mistakes: `c` changes scale by up to 1e4 between
  steps (the moments must mix steps, not normalise each one), `b` has exact zeros and one all-zero
  step (momentum alone moves it), and `tiny` has gradients of order 1e-8, so eps (and where it is
  added) decides its update.
* Clipping: `torch.nn.utils.clip_grad_norm_(params, max_norm)` (norm_type 2) on three gradient
  tensors ([3, 4], [5], [2, 3]): the global L2 norm of all of them as one vector, then every
  gradient times min(1, max_norm / (norm + 1e-6)). Cases (see CLIP_CASES): the norm above
  max_norm, below it, above it with gradients small enough (norm ~ 5e-4) that the 1e-6 changes
  the scale by ~2e-3, and max_norm inside (norm, norm + 1e-6), where torch still scales (by
  ~1 - 1e-3) although the norm is below max_norm.
"""

import os
import platform

import numpy as np
import safetensors
import torch
from safetensors.numpy import save_file

SEED = 20240611
STEPS = 6
LRS = [0.0, 1e-2, 2e-2, 1.5e-2, 5e-3, 1e-3]
WDS = {"decay": 0.1, "nodecay": 0.0}
BETAS = (0.9, 0.999)
EPS = 1e-8
SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 2, 3), "tiny": (4,)}
C_SCALES = [1.0, 100.0, 0.01, 1.0, 10.0, 0.1]  # gradient scale of `c` per step
B_ZERO_STEP = 3  # 0-based step where all of `b`'s gradient is zero
CLIP_SHAPES = [(3, 4), (5,), (2, 3)]
OUT = "tests/data/train/optim_golden.safetensors"


def adamw_inputs(rng):
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = {n: np.zeros((STEPS, *s), np.float32) for n, s in SHAPES.items()}
    for t in range(STEPS):
        grads["a"][t] = rng.standard_normal(SHAPES["a"])
        g = rng.standard_normal(SHAPES["b"])
        g[t % 5] = 0.0
        grads["b"][t] = 0.0 if t == B_ZERO_STEP else g
        grads["c"][t] = rng.standard_normal(SHAPES["c"]) * C_SCALES[t]
        grads["tiny"][t] = rng.standard_normal(SHAPES["tiny"]) * 1e-8
    return init, grads


def run_adamw(init, grads, wd):
    names = list(SHAPES)
    params = [torch.nn.Parameter(torch.from_numpy(init[n].copy())) for n in names]
    opt = torch.optim.AdamW(
        params, lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=wd, amsgrad=False,
        foreach=False, fused=False,
    )
    out = {f"{k}.{n}": np.zeros((STEPS, *SHAPES[n]), np.float32)
           for k in ["param", "exp_avg", "exp_avg_sq"] for n in names}
    for t in range(STEPS):
        opt.param_groups[0]["lr"] = LRS[t]
        for p, n in zip(params, names):
            p.grad = torch.from_numpy(grads[n][t].copy())
        opt.step()
        for p, n in zip(params, names):
            st = opt.state[p]
            assert int(st["step"]) == t + 1
            out[f"param.{n}"][t] = p.detach().numpy()
            out[f"exp_avg.{n}"][t] = st["exp_avg"].numpy()
            out[f"exp_avg_sq.{n}"][t] = st["exp_avg_sq"].numpy()
    return out


def clip(grads, max_norm):
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0)
    return float(norm), [p.grad.numpy().copy() for p in params]


def main():
    rng = np.random.default_rng(SEED)
    tensors = {"lr": np.array(LRS, np.float64)}
    init, grads = adamw_inputs(rng)
    for n in SHAPES:
        tensors[f"init.{n}"] = init[n]
        tensors[f"grad.{n}"] = grads[n]
    for run, wd in WDS.items():
        tensors[f"{run}.wd"] = np.array([wd], np.float64)
        for k, v in run_adamw(init, grads, wd).items():
            tensors[f"{run}.{k}"] = v
    # The parameters must actually differ between the two runs and from the start.
    assert not np.array_equal(tensors["decay.param.a"], tensors["nodecay.param.a"])

    big = [rng.standard_normal(s).astype(np.float32) for s in CLIP_SHAPES]
    small = [g * np.float32(1e-4) for g in big]
    norm64 = lambda gs: float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in gs)))
    cases = {
        "above": (big, 1.0),
        "below": (big, 10.0),
        "small": (small, 1e-4),
        "window": (small, norm64(small) + 5e-7),
    }
    for case, (gs, max_norm) in cases.items():
        norm, clipped = clip(gs, max_norm)
        if case == "below":
            assert all(np.array_equal(a, b) for a, b in zip(gs, clipped))
        else:
            assert not any(np.array_equal(a, b) for a, b in zip(gs, clipped)), case
        if case == "window":
            assert norm < max_norm < norm + 1e-6, (norm, max_norm)
        tensors[f"clip.{case}.max_norm"] = np.array([max_norm], np.float64)
        tensors[f"clip.{case}.norm"] = np.array([norm], np.float32)
        for i, (g, c) in enumerate(zip(gs, clipped)):
            tensors[f"clip.{case}.grad.{i}"] = g
            tensors[f"clip.{case}.clipped.{i}"] = c

    meta = {
        "script": "scripts/golden/make_optim_golden.py",
        "seed": str(SEED),
        "steps": str(STEPS),
        "betas": str(BETAS),
        "eps": str(EPS),
        "weight_decay": str(WDS),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(tensors)} tensors)")
    for case in cases:
        print(f"  clip.{case}: norm {tensors[f'clip.{case}.norm'][0]:.9g}"
              f" max_norm {tensors[f'clip.{case}.max_norm'][0]:.9g}")
    print("versions:", {k: meta[k] for k in ["python", "torch", "numpy", "safetensors"]})


if __name__ == "__main__":
    main()
