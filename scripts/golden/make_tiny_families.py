"""Make tiny random checkpoints of the other LLaMA-family architectures + golden outputs.

Output: tests/data/tiny/<name>/{config.json, generation_config.json, model.safetensors,
golden.safetensors} for the names in MODELS below, and tests/data/tiny/FAMILIES.md (how they
were made, versions, what each one exercises, how far off a model that ignored it would be).

How it was run (from the repository root, CPU only, deterministic):

    /work/venv/bin/python scripts/golden/make_tiny_families.py

Each model is transformers' own class for the family (MistralForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM, LlamaForCausalLM), float32, attn_implementation="eager", with the random
weights of make_tiny_llama.py (N(0, 0.1); RMSNorm weights, q_norm / k_norm included,
1 + 0.2 N(0,1); biases 0.1 N(0,1)).

tokenizer.json: a byte-level BPE over the printable ASCII characters (no merges: one token per
character), `<unk>` `<s>` `</s>` at ids 0, 1, 2 and `<s>` put in front of every text, so the CLI
(prune with calibration text, train, generate) runs on these models; the goldens use ids only.

golden.safetensors holds what make_tiny_llama.py's goldens hold (input_ids [2, 40], logits,
logits_prefix [1, 17, V], logits_incremental through transformers' KV cache) plus
  nll     float32 [2, 39]   −log p(input_ids[:, t+1]) from the full forward (a perplexity window)
  greedy  int64   [1, 23]   transformers' generate(do_sample=False) from input_ids[0, :17],
                            23 new tokens (the prompt and continuation span 40 > every window)
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

sys.path.insert(0, os.path.dirname(__file__))
from make_tiny_llama import BASE, BATCH, OUT, PREFIX, SEQ, VERSIONS, forward, incremental, maxdiff, randomise  # noqa: E402

NEW_TOKENS = SEQ - PREFIX

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# name -> (seed, transformers config class, model class, overrides, what it exercises,
#          an override that ignores that detail: the logits' distance to it shows the test sees it)
MODELS = {
    "mistral-window": (
        2001,
        transformers.MistralConfig,
        transformers.MistralForCausalLM,
        dict(sliding_window=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "Mistral: a sliding window of 8 keys on every block, shorter than the 40-token sequence",
        dict(sliding_window=None),
    ),
    "qwen2-tied": (
        2002,
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        "Qwen2: q/k/v biases without an o_proj bias, tied head, a window of 8 on block 1 only "
        "(use_sliding_window, max_window_layers 1)",
        dict(use_sliding_window=False),
    ),
    "qwen3-headdim": (
        2003,
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "Qwen3: RMSNorm of every query and key head (q_norm, k_norm) and head_dim 32 with "
        "hidden 64 and 4 heads",
        None,
    ),
    "llama32-tied": (
        2004,
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(tie_word_embeddings=True, max_position_embeddings=256, rope_parameters=LLAMA3_ROPE),
        "Llama 3.2: llama3 rope scaling (factor 32) with a tied head",
        dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    ),
}


def tokenizer():
    """Byte-level BPE, one token per printable ASCII character (as ByteLevel spells it)."""
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in [chr(b) for b in range(33, 127)] + ["\u0120", "\u010a"]:  # + space, newline
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok.encode("Hi there!\n").tokens == ["<s>", "H", "i", "\u0120", "t", "h", "e", "r", "e", "!", "\u010a"]
    return tok


def make(config_cls, overrides):
    kw = {k: v for k, v in BASE.items() if k not in ("attention_bias", "mlp_bias")}
    kw.update(overrides)
    if config_cls is transformers.LlamaConfig:
        kw.update(attention_bias=False, mlp_bias=False)
    cfg = config_cls(**kw)
    cfg._attn_implementation = "eager"
    return cfg


@torch.no_grad()
def nll(model, ids):
    logp = torch.log_softmax(forward(model, ids), dim=-1)
    return -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]


@torch.no_grad()
def greedy(model, prompt):
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        pad_token_id=0,
    )
    return out[:, prompt.shape[1]:]


def build(name, seed, config_cls, model_cls, overrides, what, ignore):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for fn in os.listdir(d):
        os.remove(os.path.join(d, fn))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = make(config_cls, overrides)
    model = model_cls(cfg).to(torch.float32).eval()
    randomise(model, gen)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen, dtype=torch.int64)
    logits = forward(model, ids)
    logits_prefix = forward(model, ids[0:1, :PREFIX])
    logits_inc = incremental(model, ids[0:1])
    d_inc = maxdiff(logits_inc[0], logits[0])
    assert maxdiff(logits_prefix[0], logits[0, :PREFIX]) < 1e-4 and d_inc < 1e-4, d_inc
    cont = greedy(model, ids[0:1, :PREFIX])
    # The greedy continuation is what the full forward's argmax gives, token by token.
    seq = torch.cat([ids[0:1, :PREFIX], cont], dim=1)
    assert torch.equal(forward(model, seq)[0, PREFIX - 1 : -1].argmax(-1), cont[0])

    model.save_pretrained(d, safe_serialization=True)
    tokenizer().save(os.path.join(d, "tokenizer.json"))
    re = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    assert maxdiff(forward(re, ids), logits) == 0.0

    ignored = None
    if ignore is not None:
        alt = model_cls(make(config_cls, {**overrides, **ignore})).eval()
        alt.load_state_dict(model.state_dict())
        ignored = maxdiff(forward(alt, ids), logits)

    meta = {"golden": json.dumps({"versions": VERSIONS, "script": "scripts/golden/make_tiny_families.py",
                                  "seed": seed, "prefix_len": PREFIX}, sort_keys=True)}
    save_file(
        {
            "input_ids": ids.contiguous(),
            "logits": logits.contiguous(),
            "logits_prefix": logits_prefix.contiguous(),
            "logits_incremental": logits_inc.contiguous(),
            "nll": nll(model, ids).contiguous(),
            "greedy": cont.contiguous(),
        },
        os.path.join(d, "golden.safetensors"),
        metadata=meta,
    )
    for fn in os.listdir(d):
        assert fn in ("config.json", "generation_config.json", "model.safetensors", "golden.safetensors",
                      "tokenizer.json"), fn
    files = {fn: os.path.getsize(os.path.join(d, fn)) for fn in sorted(os.listdir(d))}
    print(name, what, "ignored:", ignored, files)
    return cfg, what, ignored, d_inc, files


def main():
    print("versions:", VERSIONS)
    torch.set_num_threads(1)
    lines = [
        "# Tiny random checkpoints of the other LLaMA-family architectures",
        "",
        "Made by `scripts/golden/make_tiny_families.py` (run from the repo root with",
        "`/work/venv/bin/python scripts/golden/make_tiny_families.py`, CPU, deterministic seeds);",
        "the script's docstring lists what `golden.safetensors` holds.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in VERSIONS.items()),
        "",
    ]
    for name, (seed, ccls, mcls, over, what, ignore) in MODELS.items():
        cfg, what, ignored, d_inc, files = build(name, seed, ccls, mcls, over, what, ignore)
        lines.append(f"## `{name}` ({cfg.model_type}, seed {seed})")
        lines.append("")
        lines.append(f"- {what}.")
        lines.append(
            f"- vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
            f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, head_dim "
            f"{getattr(cfg, 'head_dim', None)}; KV-cached vs full logits {d_inc:.1e}"
        )
        if ignored is not None:
            lines.append(f"- a model that ignored this would be off by up to {ignored:.3f} in the logits")
        lines.append("- files: " + ", ".join(f"`{k}` {v} B" for k, v in files.items()))
        lines.append("")
    with open(os.path.join(OUT, "FAMILIES.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
