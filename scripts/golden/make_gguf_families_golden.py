"""Make tiny GGUF files of the llama.cpp architectures qwen2, qwen3 and llama (LLaMA-3.1 style,
with rope_freqs), written the way llama.cpp's convert_hf_to_gguf.py writes them, together with
what the Hugging Face model they came from holds, for tests/gguf_families.rs.

Output (tests/data/gguf/):
  <name>.gguf                   the GGUF (2-D weights F16, 1-D tensors F32, as `--outtype f16`)
  <name>_expected.safetensors   the HF model's tensors under HF names (2-D in f16, 1-D in f32:
                                exactly the values the GGUF holds), plus `input_ids` and
                                `logits` (transformers' f32 forward pass of that model)
  families.json                 per model: the HF config, the GGUF metadata written, and
                                tokenizer cases (text -> ids, decoded) from the `tokenizers`
                                library on the reference tokenizer.json
  README_families.md            what was made, how, versions, sizes

Run from the repository root (CPU, deterministic):

    /work/venv/bin/python scripts/golden/make_gguf_families_golden.py

Models (random weights, rounded to f16 so the F16 GGUF stores them exactly):
  qwen2_tiny   Qwen2ForCausalLM, hidden 64, 2 layers, 4 heads / 2 KV heads, q/k/v biases,
               tied embeddings, NFC + Qwen2 regex byte-level BPE ("qwen2")
  qwen3_tiny   Qwen3ForCausalLM, hidden 64, 4 heads of head_dim 32 (not 64 / 4), q/k norms,
               untied head, the same tokenizer
  llama31_tiny LlamaForCausalLM with LLaMA-3.1 rope scaling (llama3, factor 8, low 1, high 4,
               original 8192; head_dim 16 so that the 8 frequencies fall in all three bands),
               attention biases (to check that permuted q/k biases are un-permuted),
               untied head, LLaMA-3 regex byte-level BPE ("llama-bpe") adding BOS

What llama.cpp's converter does and this script repeats (written from its behaviour, not its
code): metadata `{arch}.context_length, embedding_length, feed_forward_length, head_count,
head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon`, `key_length`/`value_length`
only when config.json has `head_dim`, `general.file_type`, and for `llama` also `vocab_size` and
`rope.dimension_count`; no metadata for llama3 rope scaling, only the F32 tensor `rope_freqs`
(the divisor of each frequency, computed in f32 with original context 8192); for `llama` the
rows of q and k (weights and biases) permuted per head from rotate_half to adjacent pairs; the
vocabulary from the tokenizer (added special tokens typed CONTROL) and merges, special ids,
add_bos and the chat template through gguf.SpecialVocab, which is llama.cpp's own code.
"""

import importlib.metadata as im
import json
import math
import os
import platform
import sys
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
import gguf
from safetensors.numpy import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "gguf")
SHARED = os.environ.get("SPP_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
SCRIPT = "scripts/golden/make_gguf_families_golden.py"

VERSIONS = {
    "python": platform.python_version(),
    "gguf": im.version("gguf"),
    "transformers": transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "torch": torch.__version__,
    "numpy": np.__version__,
    "safetensors": safetensors.__version__,
}

# The split regexes of the published tokenizer.json files (facts, not code).
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                   "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}")

# Text the tokenizer tests encode: numbers, contractions, unicode (a decomposed é, which NFC
# composes), whitespace runs, special-token spellings.
CASES = [
    "Hello world",
    " Hello world",
    "The year 2024 had 366 days; 3.14159 and 1234567890.",
    "I'm sure you're right, he'll go, we'd've, they've, it's, DON'T, She'S",
    "naïve café — Ünïcödé façade",
    "cafe\u0301 vs caf\u00e9",
    "日本語のテキストと中文文本",
    "emoji 🦙🚀 mixed ✅ text",
    "a  b   c\t\td\n\n\ne   \n  f",
    "   leading and trailing   ",
    "\n",
    "",
    "x=1;y+=2*(z-3)//4  # code",
    "https://example.com/path?q=1&r=two",
    "ALL CAPS and MiXeD CaSe",
    "tabs\tand\r\nwindows\r\nlines",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|>Hello<|eot_id|>",
    "Numbers: 1 12 123 1234 12345 123456",
    "'quoted' \"double\" `back` ''''",
]

F16_ROUND = lambda t: t.to(torch.float16).to(torch.float32)


def corpus():
    path = os.path.join(SHARED, "wikitext2", "wiki.test.raw")
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f.read().replace("\r\n", "\n").split("\n") if l.strip()]
    return lines[:1500] + CASES


def make_tokenizer(kind, texts):
    """A small byte-level BPE shaped like Qwen2's ("qwen2") or LLaMA-3's ("llama-bpe") tokenizer.json."""
    qwen = kind == "qwen2"
    tok = Tokenizer(models.BPE(ignore_merges=not qwen))
    if qwen:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT if qwen else LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=not qwen, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # Special tokens come after the learned vocabulary, as in Qwen's and LLaMA-3's.
    if qwen:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok.add_special_tokens(specials)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok_cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "unk_token": None, "chat_template": CHATML, "tokenizer_class": "Qwen2Tokenizer",
                   "add_prefix_space": False, "errors": "replace"}
        ids = {"bos_token_id": tok.token_to_id("<|endoftext|>"), "eos_token_id": tok.token_to_id("<|im_end|>")}
    else:
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok.add_special_tokens(specials)
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
        tok_cfg = {"bos_token": bos, "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}
        ids = {"bos_token_id": tok.token_to_id(bos), "eos_token_id": tok.token_to_id("<|eot_id|>")}
    return tok, tok_cfg, ids


def randomise(model, seed):
    """Weights of a size that makes every part of the forward pass matter, rounded to f16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 0.5 if "embed" in name or "lm_head" in name else 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:  # RMSNorm weights, q/k norms included
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.2)
            p.copy_(F16_ROUND(p))


def permute_rows(w, n_head):
    """rotate_half rows -> llama.cpp's adjacent pairs, per head (weights and biases alike)."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_divisors(theta, head_dim, rope):
    """The divisor of each inverse frequency under LLaMA-3 scaling, in f32 like llama.cpp's
    converter (which takes the original context from config.json's top level, default 8192)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, low, high, old = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"], 8192
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            s = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return np.array([float(x) for x in out], dtype=np.float32)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"


def write_gguf(path, arch, name, cfg, hf_cfg_json, sd, tok, tok_dir):
    w = gguf.GGUFWriter(path, arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    rope = hf_cfg_json["rope_parameters"]  # transformers 5 keeps rope_theta and the scaling here
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if "head_dim" in hf_cfg_json:
        w.add_key_length(hf_cfg_json["head_dim"])
        w.add_value_length(hf_cfg_json["head_dim"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    head_dim = hf_cfg_json.get("head_dim") or cfg.hidden_size // cfg.num_attention_heads
    if arch == "llama":
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # Vocabulary as llama.cpp's _set_vocab_gpt2 stores it.
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    specials = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    tensors = []
    if rope.get("rope_type") == "llama3":
        tensors.append(("rope_freqs.weight", llama3_rope_divisors(rope["rope_theta"], head_dim, rope)))
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for hf, t in sd.items():
        a = t.numpy()
        if arch == "llama" and ".q_proj." in hf:
            a = permute_rows(a, n_head)
        elif arch == "llama" and ".k_proj." in hf:
            a = permute_rows(a, n_kv)
        a = a.astype(np.float16 if a.ndim == 2 else np.float32)
        tensors.append((gguf_name(hf), np.ascontiguousarray(a)))
    for n, a in tensors:
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [n for n, _ in tensors]


def make_model(name, arch, config_cls, seed, tok_kind, texts, **kw):
    tok, tok_cfg, ids = make_tokenizer(tok_kind, texts)
    cfg = config_cls(vocab_size=tok.get_vocab_size(with_added_tokens=True), **ids, **kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomise(model, seed)
    cfg.architectures = [type(model).__name__]  # what save_pretrained would record
    hf_cfg_json = json.loads(cfg.to_json_string())
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)

    with tempfile.TemporaryDirectory() as d:
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tok_cfg, f)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(hf_cfg_json, f)
        path = os.path.join(OUT, f"{name}.gguf")
        gguf_tensors = write_gguf(path, arch, name, cfg, hf_cfg_json, sd, tok, d)

    cases = []
    for text in CASES:
        enc = tok.encode(text)
        cases.append({"text": text, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
    input_ids = torch.tensor([tok.encode(CASES[2] + " " + CASES[3]).ids[:24]], dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits.float()

    out = {k: (v.numpy().astype(np.float16) if v.dim() == 2 else v.numpy().astype(np.float32))
           for k, v in sd.items()}
    for k, v in sd.items():  # the f16 copy is exact
        assert np.array_equal(out[k].astype(np.float32), v.numpy()), k
    out["input_ids"] = input_ids.numpy()
    out["logits"] = np.ascontiguousarray(logits.numpy())
    save_file(out, os.path.join(OUT, f"{name}_expected.safetensors"),
              metadata={"golden": json.dumps({"script": SCRIPT, "versions": VERSIONS}, sort_keys=True)})

    # Re-read the GGUF: what was written is what llama.cpp would have.
    r = gguf.GGUFReader(os.path.join(OUT, f"{name}.gguf"))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.model", "tokenizer.ggml.pre") \
                and not k.endswith("_id") and not k.startswith("tokenizer.ggml.add_"):
            meta[k + ".len"] = len(f.data)
            continue
        v = f.contents()
        meta[k] = v.item() if hasattr(v, "item") else v
    print(f"{name}: {len(gguf_tensors)} tensors, vocab {cfg.vocab_size}, logits |max| {logits.abs().max():.3f}")
    return {
        "gguf": f"{name}.gguf",
        "hf_config": hf_cfg_json,
        "gguf_metadata": meta,
        "gguf_tensors": gguf_tensors,
        "tokenizer_config": tok_cfg,
        "tokenizer_cases": cases,
        "logits_absmax": float(logits.abs().max()),
    }


README = """# GGUF golden files: qwen2, qwen3, LLaMA-3.1 (`families.json` and friends)

Made by `{script}` (run from the repo root with `/work/venv/bin/python {script}`; CPU,
deterministic). Its docstring says what each model is and what of llama.cpp's converter it
repeats.

Versions: {versions}

| file | bytes |
|---|---|
{sizes}

Per model `<name>`: `<name>.gguf` (GGUF v3 written with `gguf.GGUFWriter`, llama.cpp's names and
metadata, 2-D weights F16 and 1-D tensors F32), `<name>_expected.safetensors` (the transformers
model's tensors under Hugging Face names, 2-D in f16 and 1-D in f32, which are exactly its
values since they were rounded to f16; `input_ids` [1, 24]; `logits` [1, 24, vocab], f32, from
transformers' eager forward pass of that model). `families.json` holds, per model, the HF config
(`config.to_json_string()`), the GGUF metadata (vocabulary arrays as their lengths), the GGUF
tensor names and the tokenizer cases: each text with the ids and decoded text that the
`tokenizers` library gives on the reference `tokenizer.json` (special tokens added, as
`Tokenizer.encode` does by default).

The tokenizers are trained by `tokenizers`' BPE trainer on the first 1500 non-empty lines of
`../shared/data/wikitext2/wiki.test.raw` plus the test texts (vocabulary 384 + special tokens),
with the normalizer / split / byte-level steps of Qwen2's and LLaMA-3's published
`tokenizer.json`.
"""


def main():
    print("versions:", VERSIONS)
    torch.set_num_threads(1)
    texts = corpus()
    common = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
    golden = {"script": SCRIPT, "versions": VERSIONS, "models": {}}
    golden["models"]["qwen2_tiny"] = make_model(
        "qwen2_tiny", "qwen2", transformers.Qwen2Config, 1, "qwen2", texts, **common,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
        tie_word_embeddings=True, use_sliding_window=False)
    golden["models"]["qwen3_tiny"] = make_model(
        "qwen3_tiny", "qwen3", transformers.Qwen3Config, 2, "qwen2", texts, **common, head_dim=32,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
        tie_word_embeddings=False, attention_bias=False, use_sliding_window=False)
    golden["models"]["llama31_tiny"] = make_model(
        "llama31_tiny", "llama", transformers.LlamaConfig, 3, "llama-bpe", texts, **common,
        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, attention_bias=True)
    with open(os.path.join(OUT, "families.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    files = ["families.json"] + [f"{n}{s}" for n in golden["models"] for s in (".gguf", "_expected.safetensors")]
    sizes = {n: os.path.getsize(os.path.join(OUT, n)) for n in files}
    for n, s in sizes.items():
        print(f"{n}: {s} bytes")
    with open(os.path.join(OUT, "README_families.md"), "w") as f:
        f.write(README.format(script=SCRIPT, versions=", ".join(f"{k} {v}" for k, v in VERSIONS.items()),
                              sizes="\n".join(f"| `{n}` | {s} |" for n, s in sizes.items())))


if __name__ == "__main__":
    sys.exit(main())
