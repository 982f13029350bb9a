"""Make tiny random LLaMA checkpoints + golden logits for the Rust model tests.

Output: tests/data/tiny/<name>/{config.json, generation_config.json, model.safetensors,
golden.safetensors} for name in {gqa-untied, gqa-tied-bias, llama3-rope}, plus
tests/data/tiny/README.md (how they were made, versions, sensitivity numbers).

How it was run (from the repository root, CPU only, deterministic):

    /work/venv/bin/python scripts/golden/make_tiny_llama.py

Versions used when the committed files were made: torch 2.15.0+cu132, transformers 5.24.0,
safetensors 0.8.0, numpy 2.4.6 (Python 3.11). The script prints the versions it runs with and
writes them into tests/data/tiny/README.md and into golden.safetensors' metadata.

Models are transformers' own `LlamaForCausalLM` (float32, attn_implementation="eager"), with
weights N(0, 0.1) (initializer_range=0.1), RMSNorm weights 1 + 0.2*N(0,1), biases 0.1*N(0,1),
so the logits are far from trivial.

golden.safetensors holds:
  input_ids          int64   [2, 40]       random ids in [0, vocab) (seeded)
  logits             float32 [2, 40, V]    full causal forward of the batch, no mask/padding
  logits_prefix      float32 [1, 17, V]    forward of input_ids[0:1, :17] alone
  logits_incremental float32 [1, 40, V]    row 0 through HF's KV cache: prefix of 17 in one
                                           call, then tokens 17..39 one at a time
                                           (rows 0..16 = logits_prefix)

config.json: transformers 5.x writes RoPE settings only as `rope_parameters`
({"rope_type", "rope_theta", ...}); real-world (4.x-era) checkpoints use top-level
`rope_theta` and `rope_scaling`. This script adds the legacy keys `rope_theta` and
`rope_scaling` next to `rope_parameters` (same values), so either parser finds them, and checks
that transformers reloads the edited config to bit-identical logits.
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
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "tiny")

BATCH, SEQ, PREFIX = 2, 40, 17

VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}

BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.1,
    hidden_act="silu",
)

# name -> (seed, config overrides, rope_theta, legacy rope_scaling or None)
MODELS = {
    "gqa-untied": (1001, {}, 10000.0, None),
    "gqa-tied-bias": (
        1002,
        dict(
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rms_norm_eps=1e-6,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=8,
        ),
        500000.0,
        None,
    ),
    # NOTE original_max_position_embeddings = 64 (not 32): with head_dim 16 and theta 5e5 the
    # RoPE wavelengths are 2*pi*5e5^(i/8) = 6.3, 32.4, 167, ...  With 64 the band
    # [orig/high_freq_factor, orig/low_freq_factor] = [16, 64] contains 32.4, so all three
    # llama3 branches (kept / smoothly interpolated / divided by factor) are exercised.  With
    # 32 the band [8, 32] would contain no wavelength and the smooth branch would go untested.
    "llama3-rope": (
        1003,
        dict(max_position_embeddings=256),
        500000.0,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
}


def make_config(overrides, rope_theta, rope_scaling):
    kw = dict(BASE)
    kw.update(overrides)
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling is not None:
        rope = dict(rope_scaling)
        rope["rope_theta"] = rope_theta
    cfg = LlamaConfig(rope_parameters=rope, **kw)
    cfg._attn_implementation = "eager"
    return cfg


def randomise(model, gen):
    """Wider-than-default random weights: normal std 0.1 comes from initializer_range;
    RMSNorm weights ~ 1 + 0.2 N(0,1); biases ~ 0.1 N(0,1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def forward(model, ids):
    return model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def incremental(model, ids_row):
    out = model(input_ids=ids_row[:, :PREFIX], use_cache=True)
    past = out.past_key_values
    chunks = [out.logits]
    for t in range(PREFIX, ids_row.shape[1]):
        out = model(input_ids=ids_row[:, t : t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        chunks.append(out.logits)
    return torch.cat(chunks, dim=1).float()


def maxdiff(a, b):
    return float((a - b).abs().max())


def build(name, seed, overrides, rope_theta, rope_scaling, report):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = make_config(overrides, rope_theta, rope_scaling)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    assert model.config._attn_implementation == "eager"
    randomise(model, gen)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen, dtype=torch.int64)
    logits = forward(model, ids)
    logits_prefix = forward(model, ids[0:1, :PREFIX])
    logits_inc = incremental(model, ids[0:1])

    # self-consistency: causal prefix and KV-cache decoding agree with the full forward
    d_prefix = maxdiff(logits_prefix[0], logits[0, :PREFIX])
    d_inc = maxdiff(logits_inc[0], logits[0])
    assert d_prefix < 1e-4 and d_inc < 1e-4, (d_prefix, d_inc)

    model.save_pretrained(d, safe_serialization=True)

    # add legacy rope keys next to transformers 5.x's rope_parameters
    cpath = os.path.join(d, "config.json")
    with open(cpath) as f:
        cj = json.load(f)
    cj["rope_theta"] = rope_theta
    cj["rope_scaling"] = rope_scaling
    with open(cpath, "w") as f:
        json.dump(cj, f, indent=2, sort_keys=True)
        f.write("\n")

    # reload with from_pretrained: identical logits
    re = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    assert re.config._attn_implementation == "eager"
    d_reload = maxdiff(forward(re, ids), logits)
    assert d_reload == 0.0, d_reload

    # also: a config with only the legacy keys (what 4.x checkpoints look like) gives the same
    legacy = {k: v for k, v in cj.items() if k != "rope_parameters"}
    legacy_cfg = LlamaConfig.from_dict(legacy)
    legacy_cfg._attn_implementation = "eager"
    lm = LlamaForCausalLM(legacy_cfg).eval()
    lm.load_state_dict(model.state_dict())
    d_legacy = maxdiff(forward(lm, ids), logits)
    assert d_legacy == 0.0, (name, d_legacy, legacy_cfg.rope_parameters)

    # sensitivity: how far off would a wrong RoPE be?
    sens = {}
    alts = [
        ("plain RoPE, theta 10000", {"rope_type": "default", "rope_theta": 10000.0}),
        ("plain RoPE, theta x 2", {"rope_type": "default", "rope_theta": rope_theta * 2}),
    ]
    if rope_scaling is not None:
        alts.append(("plain RoPE, same theta (llama3 scaling ignored)",
                     {"rope_type": "default", "rope_theta": rope_theta}))
    for label, alt_rope in alts:
        if rope_scaling is None and alt_rope["rope_theta"] == rope_theta:
            continue
        alt_cfg = make_config(overrides, rope_theta, rope_scaling)
        alt_cfg.rope_parameters = alt_rope
        alt = LlamaForCausalLM(alt_cfg).eval()
        alt.load_state_dict(model.state_dict())
        sens[label] = maxdiff(forward(alt, ids), logits)

    # one metadata key only: several keys are written in hash order (file bytes would vary)
    meta = {"golden": json.dumps({"versions": VERSIONS, "script": "scripts/golden/make_tiny_llama.py",
                                  "seed": seed, "prefix_len": PREFIX}, sort_keys=True)}
    save_file(
        {
            "input_ids": ids.contiguous(),
            "logits": logits.contiguous(),
            "logits_prefix": logits_prefix.contiguous(),
            "logits_incremental": logits_inc.contiguous(),
        },
        os.path.join(d, "golden.safetensors"),
        metadata=meta,
    )
    # drop anything else save_pretrained may have left
    for fn in os.listdir(d):
        assert fn in ("config.json", "generation_config.json", "model.safetensors", "golden.safetensors"), fn

    stats = {
        "logits_std": float(logits.std()),
        "logits_absmax": float(logits.abs().max()),
        "prefix_vs_full_maxdiff": d_prefix,
        "kv_incremental_vs_full_maxdiff": d_inc,
        "reload_maxdiff": d_reload,
        "sensitivity_maxdiff": sens,
        "files": {fn: os.path.getsize(os.path.join(d, fn)) for fn in sorted(os.listdir(d))},
    }
    print(name, json.dumps(stats, indent=1))
    report[name] = (cfg, stats, seed)


README_HEAD = """# Tiny random LLaMA checkpoints with golden logits

Made by `scripts/golden/make_tiny_llama.py` (run from the repo root with
`/work/venv/bin/python scripts/golden/make_tiny_llama.py`, CPU, deterministic seeds).

Versions: {versions}

Each directory is a `save_pretrained(dir, safe_serialization=True)` of transformers'
`LlamaForCausalLM` (float32, `attn_implementation="eager"`) with random weights:
Linear/Embedding ~ N(0, 0.1), RMSNorm weights ~ 1 + 0.2 N(0,1), biases ~ 0.1 N(0,1).
Tied models have no `lm_head.weight` in `model.safetensors` (use `model.embed_tokens.weight`).

`config.json`: transformers 5.x writes RoPE settings only inside `rope_parameters`
(`{{"rope_type", "rope_theta", ...}}`). The script adds the 4.x-style keys `rope_theta` and
`rope_scaling` (same values; `rope_scaling` is null for plain RoPE) so a parser that only knows
the legacy keys works too. The script checks that transformers reloads this config to
bit-identical logits, and that a config with only the legacy keys gives identical logits.

`golden.safetensors` (metadata key `golden`: JSON with versions and seed):

| tensor | dtype | shape | what |
|---|---|---|---|
| `input_ids` | int64 | [2, 40] | random ids in [0, vocab), seeded |
| `logits` | f32 | [2, 40, vocab] | full causal forward of the batch, no attention mask / padding |
| `logits_prefix` | f32 | [1, 17, vocab] | forward of `input_ids[0:1, :17]` alone |
| `logits_incremental` | f32 | [1, 40, vocab] | row 0 through HF's KV cache: the 17-token prefix in one call, then tokens 17..39 one at a time |

In the script, `logits_prefix` and `logits_incremental` agree with `logits[0]` to < 1e-4 (numbers
below). Suggested tolerance for a Rust f32 implementation: max abs diff ~1e-4.

## Models
"""


def main():
    print("versions:", VERSIONS)
    torch.set_num_threads(1)  # deterministic CPU reductions
    report = {}
    for name, (seed, overrides, theta, scaling) in MODELS.items():
        build(name, seed, overrides, theta, scaling, report)

    lines = [README_HEAD.format(versions=", ".join(f"{k} {v}" for k, v in VERSIONS.items()))]
    for name, (cfg, stats, seed) in report.items():
        lines.append(f"### `{name}` (seed {seed})\n")
        lines.append(
            f"- vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
            f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, "
            f"head_dim {cfg.head_dim}, rms_norm_eps {cfg.rms_norm_eps}, max_position_embeddings "
            f"{cfg.max_position_embeddings}, tie_word_embeddings {cfg.tie_word_embeddings}, "
            f"attention_bias {cfg.attention_bias}, mlp_bias {cfg.mlp_bias}"
        )
        lines.append(f"- rope_parameters: `{json.dumps(cfg.rope_parameters, sort_keys=True)}`")
        lines.append(
            f"- logits std {stats['logits_std']:.3f}, abs max {stats['logits_absmax']:.3f}; "
            f"prefix-vs-full max diff {stats['prefix_vs_full_maxdiff']:.2e}; "
            f"KV-incremental-vs-full {stats['kv_incremental_vs_full_maxdiff']:.2e}; "
            f"reload diff {stats['reload_maxdiff']}"
        )
        for k, v in stats["sensitivity_maxdiff"].items():
            lines.append(f"- a wrong RoPE ({k}) changes logits by up to {v:.3f}")
        lines.append("- files: " + ", ".join(f"`{k}` {v} B" for k, v in stats["files"].items()))
        lines.append("")
    lines.append(
        "Note on `llama3-rope`: `original_max_position_embeddings` is 64 so that, with head_dim 16 and\n"
        "theta 5e5 (wavelengths 6.3, 32.4, 167, ...), all three llama3 branches are exercised: the\n"
        "first frequency is kept (wavelength < 64/4), the second is smoothly interpolated\n"
        "(16 <= 32.4 <= 64), the rest are divided by `factor`.\n"
    )
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print("wrote", os.path.join(OUT, "README.md"))


if __name__ == "__main__":
    sys.exit(main())
