#!/usr/bin/env python3
"""Golden Wanda scores and masks: `tests/data/prune/wanda_golden.safetensors`.

Run from the crate root:

    /work/venv/bin/python scripts/golden/make_wanda_golden.py

A tiny, independent check of the Wanda selection of docs/METHOD.md §5.3, computed in
float64 with numpy (no spp code):

* `W` f32 [24, 32]: seeded normal weights, then edited so that exact ties sit where they decide
  the selection (see `plant_ties`): equal |W| (of either sign) in columns whose activation norms
  are exactly equal, straddling the cut of the 0.5-per-row, 2:4 and 4:8 selections.
* `X` f32 [3, 16, 32] (samples x tokens x in_features): seeded normal activations; column 13 is
  all zeros (a dead input); columns 7, 21 and 26 are the negations of columns 6, 20 and 10, so
  their norms are bit-for-bit equal in any precision and summation order.
* `norms` f64 [32]: sqrt(sum over all 48 tokens of x_j^2).
* `scores` f64 [24, 32]: |W_ij| * norms_j.
* `mask_0.5` u8 [24, 32]: 1 = pruned; per output row the floor(32 * 0.5) = 16 lowest scores.
* `mask_2_4`, `mask_4_8` u8 [24, 32]: 1 = pruned; N:M counts KEPT weights, so each group of M
  consecutive columns of a row has its M - N lowest scores pruned.
Every selection is a stable sort: ties go to the lowest column index first.

The masks are also recomputed from f32 scores (|W| * sqrt(sum x^2) in f32, as spp computes them);
the script fails unless both agree, so a correct f32 implementation must reproduce them exactly.
"""

import os
import platform
import sys

import numpy as np
import safetensors
from safetensors.numpy import save_file

ROWS, COLS = 24, 32
SAMPLES, TOKENS = 3, 16
SEED = 20240607
DEAD = 13
PAIRS = [(6, 7), (20, 21), (10, 26)]  # (a, b): X[..., b] = -X[..., a]
OUT = "tests/data/prune/wanda_golden.safetensors"


def lowest_mask(scores, k):
    """Bool mask of the k lowest of each row of `scores` (stable: ties -> lowest index)."""
    order = np.argsort(scores, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def masks(scores):
    rows, cols = scores.shape
    out = {"mask_0.5": lowest_mask(scores, int(np.floor(cols * 0.5)))}
    for n, m in [(2, 4), (4, 8)]:
        g = scores.reshape(rows, cols // m, m)
        out[f"mask_{n}_{m}"] = lowest_mask(g, m - n).reshape(rows, cols)
    return out


def plant_ties(W, norms):
    """Edits rows of W so that exact score ties fall on the selection boundaries.

    Returns a list of (row, description) for the README.
    """
    notes = []

    def set_pair_at_rank(r, a, b, rank, lo, hi):
        """Sets |W[r,a]| = |W[r,b]| (opposite signs) so that, among columns lo..hi-1, the pair
        takes ranks `rank` and `rank + 1` of the ascending scores."""
        others = [j for j in range(lo, hi) if j not in (a, b)]
        s = np.sort(np.abs(W[r, others]).astype(np.float64) * norms[others])
        low = s[rank - 1] if rank > 0 else 0.0
        high = s[rank] if rank < len(s) else low * 2 + 1
        v = np.float32((low + high) / 2 / norms[a])
        W[r, a], W[r, b] = v, -v

    # Unstructured 0.5 per row: the pair at ranks 15/16 -> a pruned, b kept.
    for r, (a, b) in zip([0, 1, 2], PAIRS):
        set_pair_at_rank(r, a, b, 15, 0, COLS)
        notes.append((r, f"0.5: cols {a},{b} tie at ranks 15/16 (col {a} pruned, col {b} kept)"))
    # 2:4, group 4..7: cols 6,7 tie at ranks 1/2 -> 6 pruned, 7 kept.
    set_pair_at_rank(3, 6, 7, 1, 4, 8)
    notes.append((3, "2:4 group 4..7: cols 6,7 tie at ranks 1/2 (6 pruned, 7 kept)"))
    # 2:4, group 20..23: cols 20,21 tie at ranks 1/2.
    set_pair_at_rank(4, 20, 21, 1, 20, 24)
    notes.append((4, "2:4 group 20..23: cols 20,21 tie at ranks 1/2 (20 pruned, 21 kept)"))
    # 4:8, group 0..7: cols 6,7 tie at ranks 3/4 -> 6 pruned, 7 kept.
    set_pair_at_rank(5, 6, 7, 3, 0, 8)
    notes.append((5, "4:8 group 0..7: cols 6,7 tie at ranks 3/4 (6 pruned, 7 kept)"))
    # 4:8, group 8..15 holds the dead column 13: zero weights in 12, 14, 15 make four zero
    # scores (12, 13, 14, 15) -> 2:4 group 12..15 prunes 12, 13 and keeps 14, 15.
    W[6, 12] = W[6, 14] = W[6, 15] = 0.0
    notes.append((6, "zero scores at cols 12,13(dead),14,15: 2:4 prunes 12,13; 4:8 prunes all four"))
    # Zero score ties in 4:8 group 8..15: 5 zero scores (9,11,12,13,15) -> 4 lowest = 9,11,12,13.
    W[7, 9] = W[7, 11] = W[7, 12] = W[7, 15] = 0.0
    notes.append((7, "5 zero scores in 4:8 group 8..15 (9,11,12,13,15): 15 kept"))
    # Plain equal |W| in a row (ties in |W|, not in scores, unless the norms are equal).
    W[8, 0] = W[8, 1] = W[8, 2] = np.float32(0.25)
    W[8, 3] = np.float32(-0.25)
    notes.append((8, "|W| = 0.25 in cols 0..3 (score ties only where norms agree)"))
    # Unstructured: the 16 lowest include the dead column; pair (10, 26) straddles rank 15/16 with
    # both signs.
    set_pair_at_rank(9, 26, 10, 15, 0, COLS)
    notes.append((9, "0.5: cols 26 (+v), 10 (-v) tie at ranks 15/16 -> the lower index 10 is pruned"))
    return notes


def main():
    rng = np.random.default_rng(SEED)
    W = rng.standard_normal((ROWS, COLS)).astype(np.float32) * np.float32(0.05)
    X = rng.standard_normal((SAMPLES, TOKENS, COLS)).astype(np.float32)
    X[..., DEAD] = 0.0
    for a, b in PAIRS:
        X[..., b] = -X[..., a]
    X2 = X.reshape(-1, COLS).astype(np.float64)
    norms = np.sqrt((X2 * X2).sum(0))
    assert all(norms[a] == norms[b] for a, b in PAIRS)
    notes = plant_ties(W, norms)

    scores = np.abs(W.astype(np.float64)) * norms[None, :]
    ref = masks(scores)

    # f32 path, as spp computes it: the masks must agree.
    Xf = X.reshape(-1, COLS)
    norms32 = np.sqrt((Xf * Xf).sum(0, dtype=np.float32)).astype(np.float32)
    scores32 = np.abs(W) * norms32[None, :]
    got32 = masks(scores32)
    for k in ref:
        if not np.array_equal(ref[k], got32[k]):
            sys.exit(f"{k}: f32 and f64 selections differ; change SEED")

    # Sanity: counts and the planted ties.
    assert (ref["mask_0.5"].sum(1) == 16).all()
    assert (ref["mask_2_4"].reshape(ROWS, -1, 4).sum(-1) == 2).all()
    assert (ref["mask_4_8"].reshape(ROWS, -1, 8).sum(-1) == 4).all()
    m5, m24, m48 = ref["mask_0.5"], ref["mask_2_4"], ref["mask_4_8"]
    for r, (a, b) in zip([0, 1, 2], PAIRS):
        assert scores[r, a] == scores[r, b] and m5[r, a] and not m5[r, b], r
    assert scores[3, 6] == scores[3, 7] and m24[3, 6] and not m24[3, 7]
    assert scores[4, 20] == scores[4, 21] and m24[4, 20] and not m24[4, 21]
    assert scores[5, 6] == scores[5, 7] and m48[5, 6] and not m48[5, 7]
    assert list(m24[6, 12:16]) == [True, True, False, False]
    assert m48[6, 12:16].all()
    assert list(np.nonzero(m48[7, 8:16])[0] + 8) == [9, 11, 12, 13]
    assert scores[9, 10] == scores[9, 26] and m5[9, 10] and not m5[9, 26]
    assert m5[:, DEAD].all()

    tensors = {
        "W": W,
        "X": X,
        "norms": norms,
        "scores": scores,
        "mask_0.5": m5.astype(np.uint8),
        "mask_2_4": m24.astype(np.uint8),
        "mask_4_8": m48.astype(np.uint8),
    }
    meta = {
        "script": "scripts/golden/make_wanda_golden.py",
        "seed": str(SEED),
        "mask_meaning": "1 = pruned (zeroed); N:M counts kept weights; ties -> lowest index",
        "dead_column": str(DEAD),
        "equal_norm_pairs": str(PAIRS),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    for r, note in notes:
        print(f"  row {r}: {note}")
    print("versions:", {k: meta[k] for k in ["python", "numpy", "safetensors"]})


if __name__ == "__main__":
    main()
