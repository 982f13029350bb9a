#!/usr/bin/env python3
"""Golden token ids for `tests/gguf_tokenizer.rs`: tokenizers rebuilt from GGUF metadata.

How it was run (from the crate root), and with what:

    /work/venv/bin/python scripts/golden/make_tokenizer_golden.py \
        --llama ../shared/data/models/llama-2-tiny-random.gguf \
        --smollm2 /work/dl/SmolLM2-135M-Instruct.Q4_1.gguf

    Python 3.11.7, transformers 5.24.0, tokenizers 0.23.3, sentencepiece 0.2.3, gguf 0.19.0,
    protobuf 7.36.2. (The exact versions of a run are also written into each JSON file.)

It writes:

* `tests/data/tokenizer/llama2_tiny.json` -- the LLaMA-2 SentencePiece vocabulary of
  `llama-2-tiny-random.gguf` (32000 pieces with scores and types). Three references per string:
    - `sentencepiece`: a SentencePiece `ModelProto` assembled from the GGUF pieces, scores and types
      with LLaMA-2's own settings (BPE, byte_fallback, add_dummy_prefix, no extra-whitespace removal,
      identity normalizer), loaded by the `sentencepiece` library, BOS (id 1) prepended as
      `LlamaTokenizer` does by default. This is the tokenizer LLaMA-2 was trained with. It knows
      nothing of special-token *text*: "<s>" in the input is three plain characters.
    - `transformers_gguf`: `AutoTokenizer.from_pretrained(dir, gguf_file=name)`.
    - `hf_llama_legacy`: the tokenizer of the published Llama-2 `tokenizer.json` (what
      `LlamaTokenizerFast` used through transformers 4.x): transformers' vocabulary and merges from
      the GGUF, with the normalizer Prepend("▁") + Replace(" ", "▁") and no pre-tokenizer.
  `expected` = `hf_llama_legacy`. Why not `transformers_gguf`: transformers 5 replaced that
  normalizer by `Metaspace(prepend_scheme="first")`, which adds no "▁" to text that already starts
  with a space (" Hello" -> "▁Hello", SentencePiece: "▁▁Hello"); the legacy form agrees with
  SentencePiece on every string without special-token text.
* `tests/data/tokenizer/smollm2.json` -- the GPT-2-style byte-level BPE of SmolLM2-135M-Instruct
  (`tokenizer.ggml.pre = "smollm"`). Two references per string:
    - `transformers_gguf`: `AutoTokenizer.from_pretrained(dir, gguf_file=name)`; transformers 5.24
      ignores `tokenizer.ggml.pre = "smollm"` and uses plain GPT-2 `ByteLevel` splitting.
    - `smollm_pre`: the same vocabulary and merges with SmolLM2's own pre-tokenizer (that of its
      published `tokenizer.json`, and of llama.cpp's "smollm" pre-type): every number character is
      split off alone (`Digits(individual_digits=True)`) before `ByteLevel`.
  `expected` = `smollm_pre`. The two differ where whitespace meets digits ("x  1", "\n\n123").

Each file lists every string on which the references disagree, under `disagreements`; the script
prints them too. `decoded` is the backend tokenizer's `decode(expected, skip_special_tokens=True)`
and `decoded_with_special` the same with special tokens kept.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

CRATE_ROOT = Path(__file__).resolve().parents[2]

TEXTS = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "Hello  world   three    spaces",
    "trailing space ",
    "tab\tseparated\tvalues\t",
    "line1\nline2\n\nline4\n",
    "\n\n\nstarts with newlines",
    "\r\n windows line end\r\n",
    "12345 3.14159",
    "x  1",
    "Line\n\n123",
    "  42 is the answer",
    "phone: +1 (555) 010-9999, 1,000,000 and 0.5%",
    "The year 2024 had 366 days.",
    "café naïve résumé Ångström façade",
    "日本語のテキストです。",
    "中文测试，标点！",
    "한국어 텍스트",
    "Привет, мир! Ελληνικά",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧",
    "math: ∑ x² ≤ ∞, ½ ⅓ ٣ ①",
    "def f(x):\n    return x**2  # square\n",
    'fn main() {\n\tprintln!("{}", 1 + 2);\n}',
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside",
    "<|im_start|>",
    "<s>",
    "<s>Hello</s>",
    "Hello <s> world </s> <unk>",
    "don't you're I'll we've he'd",
    "UPPER lower MiXeD CamelCase snake_case",
    "a\u00a0non-breaking space and zero\u200bwidth",
    "control \u0001 char and \u007f del",
    "http://example.com/path?query=1&b=2#frag",
    "ĠĊ ÿ <0x41> ▁ ▁▁x",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again, "
    "and again, and again!",
]

SPECIAL_TEXTS_LLAMA = ("<s>", "</s>", "<unk>")


def versions():
    out = {"python": platform.python_version()}
    for pkg in ["transformers", "tokenizers", "sentencepiece", "gguf", "protobuf"]:
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_tokenizer_fields(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields

    def get(key):
        field = fields.get(key)
        return None if field is None else field.contents()

    return {
        "tokens": get("tokenizer.ggml.tokens"),
        "scores": get("tokenizer.ggml.scores"),
        "token_type": get("tokenizer.ggml.token_type"),
        "bos": get("tokenizer.ggml.bos_token_id"),
        "eos": get("tokenizer.ggml.eos_token_id"),
        "unk": get("tokenizer.ggml.unknown_token_id"),
    }


def hf_from_gguf(path):
    from transformers import AutoTokenizer

    path = Path(path).resolve()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def sentencepiece_from_gguf(fields):
    """LLaMA-2's tokenizer.model, rebuilt from the GGUF vocabulary.

    Settings are those of Meta's LLaMA-2 `tokenizer.model` (trainer_spec / normalizer_spec); only
    the ones that matter when encoding are load-bearing.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    for piece, score, kind in zip(fields["tokens"], fields["scores"], fields["token_type"]):
        p = proto.pieces.add()
        p.piece = piece
        p.score = score
        p.type = kind  # GGUF token types use SentencePiece's numbering (1 normal .. 6 byte)
    ts = proto.trainer_spec
    ts.model_type = sp_pb2.TrainerSpec.BPE
    ts.vocab_size = len(fields["tokens"])
    ts.byte_fallback = True
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.max_sentencepiece_length = 16
    ts.unk_id = fields["unk"] if fields["unk"] is not None else 0
    ts.bos_id = fields["bos"] if fields["bos"] is not None else 1
    ts.eos_id = fields["eos"] if fields["eos"] is not None else 2
    ts.pad_id = -1
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def backend_copy(hf_tokenizer):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())


def llama_golden(path):
    from tokenizers import normalizers

    fields = gguf_tokenizer_fields(path)
    sp = sentencepiece_from_gguf(fields)
    hf = hf_from_gguf(path)
    legacy = backend_copy(hf)
    legacy.normalizer = normalizers.Sequence(
        [normalizers.Prepend(prepend="\u2581"), normalizers.Replace(pattern=" ", content="\u2581")]
    )
    legacy.pre_tokenizer = None

    bos = fields["bos"]
    cases, disagreements = [], []
    for text in TEXTS:
        sp_ids = [bos] + [int(i) for i in sp.encode(text)]
        tf_ids = hf.encode(text)
        legacy_ids = legacy.encode(text).ids
        case = {
            "text": text,
            "expected": legacy_ids,
            "sentencepiece": sp_ids,
            "transformers_gguf": tf_ids,
            "hf_llama_legacy": legacy_ids,
            "decoded": legacy.decode(legacy_ids, skip_special_tokens=True),
            "decoded_with_special": legacy.decode(legacy_ids, skip_special_tokens=False),
            "sentencepiece_decoded": sp.decode(sp_ids[1:]),
        }
        cases.append(case)
        has_special_text = any(s in text for s in SPECIAL_TEXTS_LLAMA)
        for name in ["sentencepiece", "transformers_gguf"]:
            if case[name] != legacy_ids:
                disagreements.append(
                    {
                        "text": text,
                        "reference": name,
                        "vs": "hf_llama_legacy",
                        "special_token_text": has_special_text,
                        "ids": case[name],
                        "expected": legacy_ids,
                    }
                )
    return {
        "model": "llama",
        "bos_token_id": bos,
        "eos_token_id": fields["eos"],
        "expected_from": "hf_llama_legacy",
        "cases": cases,
        "disagreements": disagreements,
    }


def smollm2_golden(path):
    from tokenizers import pre_tokenizers

    hf = hf_from_gguf(path)
    smollm = backend_copy(hf)
    smollm.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    cases, disagreements = [], []
    for text in TEXTS:
        tf_ids = hf.encode(text)
        ids = smollm.encode(text).ids
        cases.append(
            {
                "text": text,
                "expected": ids,
                "transformers_gguf": tf_ids,
                "smollm_pre": ids,
                "decoded": smollm.decode(ids, skip_special_tokens=True),
                "decoded_with_special": smollm.decode(ids, skip_special_tokens=False),
            }
        )
        if tf_ids != ids:
            disagreements.append(
                {"text": text, "reference": "transformers_gguf", "vs": "smollm_pre", "ids": tf_ids, "expected": ids}
            )
    return {
        "model": "gpt2",
        "pre": "smollm",
        "bos_token_id": hf.convert_tokens_to_ids(hf.bos_token),
        "eos_token_id": hf.convert_tokens_to_ids(hf.eos_token),
        "expected_from": "smollm_pre",
        "cases": cases,
        "disagreements": disagreements,
    }


def write(out_dir, name, gguf_path, golden):
    golden = {
        "generated_by": "scripts/golden/make_tokenizer_golden.py",
        "gguf": os.path.basename(gguf_path),
        "gguf_sha256": sha256(gguf_path),
        "versions": versions(),
        **golden,
    }
    out = out_dir / name
    out.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(golden['cases'])} strings, {len(golden['disagreements'])} disagreements")
    for d in golden["disagreements"]:
        print(f"  {d['reference']} != {d['vs']} on {d['text']!r}: {d['ids']} vs {d['expected']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama", default=str(CRATE_ROOT / "../shared/data/models/llama-2-tiny-random.gguf"))
    ap.add_argument(
        "--smollm2",
        default=os.environ.get("SPP_SMOLLM2_GGUF", str(CRATE_ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf")),
    )
    ap.add_argument("--out", default=str(CRATE_ROOT / "tests/data/tokenizer"))
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    write(out_dir, "llama2_tiny.json", args.llama, llama_golden(args.llama))
    if os.path.exists(args.smollm2):
        write(out_dir, "smollm2.json", args.smollm2, smollm2_golden(args.smollm2))
    else:
        print(f"SmolLM2 GGUF not found at {args.smollm2}: smollm2.json not written", file=sys.stderr)


if __name__ == "__main__":
    main()
