#!/usr/bin/env python3
"""Golden sampling distributions: `tests/data/generate/sampler_golden.json`.

Run from the crate root:

    /work/venv/bin/python scripts/golden/make_sampler_golden.py

Python 3.11.7, torch 2.15.0+cu132, transformers 5.25.0, numpy 2.4.6 (the versions of a run are
also written into the file).

What is computed: for a few logit vectors (f32 values; seeded normal draws, or built by hand to
put ties and single dominant tokens where they decide the result), the distribution the next
token is drawn from, as transformers' sampling computes it: `TemperatureLogitsWarper(t)`, then
`TopPLogitsWarper(top_p, min_tokens_to_keep=1)` when top_p is given, then softmax. spp has no
top-k, so there is none here. Temperature 0 means greedy: a one-hot at `torch.argmax` (the first
maximum on ties).

The warpers run in float64 on the f32 logits (exactly representable); the stored probabilities
are those. They run again in float32 (what `generate` feeds them) and the script fails unless
both keep the same tokens and agree to 1e-6. It also fails when the probability of the tokens
before some token (in descending order) lies within 1e-6 of top_p (where rounding, not the rule,
would decide), so a correct implementation in either precision must reproduce the kept set. The
one exception, `exact_boundary`, has only dyadic probabilities (eight equal logits, top_p = 3/8),
so the partial sums hit top_p exactly in any precision and order: it pins the rule's `<`.

Ties: `TopPLogitsWarper` sorts ascending; when equal probabilities straddle the top-p boundary,
which of them it keeps follows the sort's order of equal elements (on this CPU: the highest
ids), which no one documents or promises. Each case lists its `tie_groups` (ids with bit-equal
logits); only the multiset of probabilities within a group is meant to be compared.
"""

import json
import platform
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

CRATE_ROOT = Path(__file__).resolve().parents[2]
OUT = CRATE_ROOT / "tests/data/generate/sampler_golden.json"
SEED = 20240611
MARGIN = 1e-6


def warp(logits, temperature, top_p, dtype):
    scores = torch.tensor(np.asarray(logits, dtype=np.float32), dtype=dtype)[None, :]
    if temperature == 0:
        out = torch.zeros_like(scores)
        out[0, torch.argmax(scores[0])] = 1
        return out[0].numpy()
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p, min_tokens_to_keep=1)(None, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


def check_margin(name, logits, temperature, top_p, exact=False):
    """Fails if the probability of the tokens before some token (descending order) lies within
    MARGIN of top_p: that token is kept exactly when it is below."""
    if top_p is None or temperature == 0:
        return np.inf
    x = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    before = np.concatenate([[0.0], np.cumsum(np.sort(p)[::-1])[:-1]])
    margin = float(np.min(np.abs(before - top_p)))
    assert exact or margin > MARGIN, f"{name}: a cumulative probability is {margin:.2e} from top_p"
    return margin


def tie_groups(logits):
    groups = {}
    for i, v in enumerate(np.asarray(logits, dtype=np.float32).tolist()):
        groups.setdefault(v, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def cases():
    rng = np.random.default_rng(SEED)

    def normal(n, std):
        return (rng.standard_normal(n) * std).astype(np.float32)

    out = []

    def add(name, what, logits, temperature, top_p, exact=False):
        out.append(dict(name=name, what=what, logits=np.asarray(logits, np.float32),
                        temperature=temperature, top_p=top_p, exact=exact))

    a = normal(32, 2.0)
    add("temperature_only", "seeded normal x2, no top-p", a, 0.7, None)
    add("hot_temperature_only", "the same logits, flattened", a, 1.7, None)
    add("top_p_t1", "seeded normal x2, top-p alone (temperature 1)", a, 1.0, 0.9)
    b = normal(64, 2.5)
    add("t0.6_top_p0.8", "temperature sharpens first, so fewer tokens reach 0.8", b, 0.6, 0.8)
    add("t1.5_top_p0.5", "temperature flattens first, so more tokens are needed", b, 1.5, 0.5)
    add("top_p_1", "top_p = 1 keeps every token", b, 1.2, 1.0)
    c = normal(16, 0.5)
    c[5] = 4.0
    add("first_token_exceeds", "token 5 alone has p > top_p: one-hot", c, 1.0, 0.7)
    d = normal(16, 0.5)
    d[11] = 2.5
    add(
        "first_exceeds_after_temperature",
        "token 11 has p < top_p at temperature 1 but > top_p at 0.5",
        d, 0.5, 0.7,
    )
    # p ~ [0.4, 0.2, 0.2, 0.2] on ids 6 | 1, 4, 9 plus eight far smaller tokens.
    e = np.full(12, -6.0, np.float32)
    e[6] = np.log(0.4)
    e[[1, 4, 9]] = np.log(0.2)
    e[[0, 3]] = -7.0
    add("tie_straddles_boundary", "three equal tokens, the cut falls after the first", e, 1.0, 0.5)
    add("tie_two_of_three", "three equal tokens, the cut falls after the second", e, 1.0, 0.7)
    # p ~ [0.33, 0.22, 0.22, 0.11, 0.11] on ids 2 | 7, 13 | 8, 17, the rest < 0.001 each.
    f = normal(20, 0.2) - 8.0
    f[[2, 13, 7, 17, 8]] = np.log([0.3, 0.2, 0.2, 0.1, 0.1])
    add("tie_both_kept", "two equal tokens, both needed", f, 1.0, 0.6)
    add("tie_one_of_two_low", "two equal smaller tokens, one needed", f, 1.0, 0.8)
    # Eight equal logits: every probability (1/8) and partial sum is exact in any precision and
    # order, so the cut lands exactly on top_p = 3/8: the tokens before the fourth already
    # reach it, so three are kept (a strict `>` would keep four).
    add("exact_boundary", "eight equal tokens, top_p = 3/8 exactly", np.zeros(8), 1.0, 0.375,
        exact=True)
    g = normal(512, 3.0)
    add("vocab_512", "seeded normal x3 over 512 tokens", g, 0.9, 0.95)
    h = normal(64, 1.0)
    add("low_temperature", "temperature 0.05: underflow, nearly one-hot", h, 0.05, 0.9)
    k = normal(16, 1.0)
    k[[3, 9]] = 3.0
    add("greedy_tie", "temperature 0: argmax, tie between 3 and 9", k, 0.0, None)
    add("greedy_ignores_top_p", "temperature 0 with top_p set", b, 0.0, 0.5)
    return out


def main():
    result = []
    for c in cases():
        logits, t, top_p = c["logits"], c["temperature"], c["top_p"]
        margin = check_margin(c["name"], logits, t, top_p, c["exact"])
        p64 = warp(logits, t, top_p, torch.float64)
        p32 = warp(logits, t, top_p, torch.float32)
        assert ((p64 > 0) == (p32 > 0)).all(), f"{c['name']}: f32 and f64 keep different tokens"
        assert np.abs(p64 - p32).max() < 1e-6, c["name"]
        kept = int((p64 > 0).sum())
        print(f"{c['name']:34} kept {kept:3}/{len(logits)}  margin {margin:.3g}")
        result.append({
            "name": c["name"],
            "what": c["what"],
            "temperature": t,
            "top_p": top_p,
            "logits": [float(v) for v in logits],
            "tie_groups": tie_groups(logits),
            "kept": kept,
            "probs": [float(v) for v in p64],
        })
    out = {
        "generated_by": "scripts/golden/make_sampler_golden.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": metadata.version("transformers"),
            "numpy": np.__version__,
        },
        "seed": SEED,
        "rule": "TemperatureLogitsWarper, then TopPLogitsWarper(min_tokens_to_keep=1), softmax; "
        "float64 on f32 logits; temperature 0 = one-hot argmax",
        "cases": result,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=1)
    # Number lists on one line each.
    text = re.sub(
        r"\[\s+(-?[\d.e+-]+(?:,\s+-?[\d.e+-]+)*)\s+\]",
        lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]",
        text,
    )
    OUT.write_text(text + "\n")
    print(f"wrote {OUT.relative_to(CRATE_ROOT)} ({OUT.stat().st_size} B)")


if __name__ == "__main__":
    main()
