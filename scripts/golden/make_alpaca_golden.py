#!/usr/bin/env python3
"""Golden Alpaca tokenisation: `tests/data/alpaca/alpaca_golden.json`.

Run from the crate root (after `cargo build --release`, for the LLaMA tokenizer below):

    /work/venv/bin/python scripts/golden/make_alpaca_golden.py

Python 3.11.7, transformers 5.25.0, tokenizers 0.23.3 (the versions of a run are also written
into the file).

What is computed: the training examples of docs/METHOD.md §4.1 for a few Alpaca
records, by an independent re-implementation of alpaca-lora's `generate_and_tokenize_prompt`
(which SPP's fine-tuning code uses), with a transformers tokenizer and no spp code:

* full = prompt + output, where prompt is the template with or without the `### Input:`
  paragraph (without when `input` is empty);
* `input_ids` = `tokenizer(full, truncation=True, max_length=cutoff)["input_ids"]` (special
  tokens as the tokenizer adds them), then EOS appended when the result is shorter than `cutoff`
  and its last token is not already EOS;
* `labels_train_on_inputs` = a copy of `input_ids`;
* `labels_masked` (train_on_inputs = False): the user prompt alone is tokenised the same way
  without the EOS step (`add_eos_token=False`), and the first `len(that)` labels are -100.

Two tokenizers, loaded with `AutoTokenizer.from_pretrained(dir)` (local, offline):

* `smollm2`: `models/smollm2-135m` (byte-level BPE; adds no BOS; EOS `<|im_end|>` = 2);
* `llama2_tiny`: the directory `spp convert gguf` writes for
  ../shared/data/models/llama-2-tiny-random.gguf (LLaMA-2 SentencePiece vocabulary; adds BOS 1;
  EOS `</s>` = 2). Only its `tokenizer.json` and `tokenizer_config.json` are used; that
  conversion is checked on its own by tests/gguf_tokenizer.rs. It is here for BOS handling.

Records: five from ../shared/data/alpaca/alpaca_gpt4_en_demo.json (referred to by index, not
copied: one short without input, one with input, one whose prompt alone is longer than the
small cutoffs, one longer, one far longer than every cutoff) and one made up here whose
output ends with the EOS token's text (so the tokenised example already ends with EOS).
Cutoffs: 64 and 128 for every tokenizer, plus n - 1, n, n + 1 where n is the tokenised length
of the first record (without EOS): cut, exactly full (no room for EOS), and EOS appended.
"""

import argparse
import hashlib
import json
import platform
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from transformers import AutoTokenizer

CRATE_ROOT = Path(__file__).resolve().parents[2]
DATA = CRATE_ROOT / "../shared/data"
ALPACA = "alpaca/alpaca_gpt4_en_demo.json"
OUT = CRATE_ROOT / "tests/data/alpaca/alpaca_golden.json"

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

# Indices into the data file: short/no input, input, prompt alone > 64 tokens, input + longer
# output, far longer than the cutoffs (no input).
PICKED = [1, 8, 35, 139, 0]
SMALL_CUTOFFS = [64, 128]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def user_prompt(rec):
    if rec.get("input"):
        return WITH_INPUT.format(instruction=rec["instruction"], input=rec["input"])
    return NO_INPUT.format(instruction=rec["instruction"])


def tokenize(tok, text, cutoff, add_eos):
    ids = tok(text, truncation=True, max_length=cutoff, padding=False)["input_ids"]
    if add_eos and len(ids) < cutoff and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    return ids


def example(tok, rec, cutoff):
    prompt = user_prompt(rec)
    ids = tokenize(tok, prompt + rec["output"], cutoff, add_eos=True)
    n_prompt = len(tokenize(tok, prompt, cutoff, add_eos=False))
    masked = [-100] * n_prompt + ids[n_prompt:]
    assert len(masked) == len(ids), "the user prompt outgrew the example"
    whole = tok(prompt + rec["output"])["input_ids"]
    return {
        "cutoff": cutoff,
        "truncated": len(whole) > cutoff,
        "input_ids": ids,
        "labels_train_on_inputs": list(ids),
        "labels_masked": masked,
    }


def tokenizer_section(name, tok_dir, source, data):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    eos_text = tok.convert_ids_to_tokens(tok.eos_token_id)
    made_up = {
        "instruction": "Say that the list is complete.",
        "input": "",
        "output": f"The list is complete.{eos_text}",
    }
    records = [{"index": i} for i in PICKED] + [made_up]
    texts = [data[i] for i in PICKED] + [made_up]
    n = len(tok(user_prompt(texts[0]) + texts[0]["output"])["input_ids"])
    cutoffs = sorted(set(SMALL_CUTOFFS + [n - 1, n, n + 1]))
    ends_eos = tok(user_prompt(made_up) + made_up["output"])["input_ids"]
    assert ends_eos[-1] == tok.eos_token_id, "the made-up record must end with EOS"
    cases = []
    for k, rec in enumerate(texts):
        for c in cutoffs:
            cases.append({"record": k, **example(tok, rec, c)})
    return {
        "name": name,
        "source": source,
        "tokenizer_json_sha256": sha256(Path(tok_dir) / "tokenizer.json"),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "adds_bos": tok("x")["input_ids"][0] == tok.bos_token_id,
        "records": records,
        "cutoffs": cutoffs,
        "cases": cases,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spp", default=str(CRATE_ROOT / "target/release/spp"))
    ap.add_argument("--smollm2", default=str(CRATE_ROOT / "models/smollm2-135m"))
    args = ap.parse_args()
    data = json.loads((DATA / ALPACA).read_text())
    gguf = DATA / "models/llama-2-tiny-random.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        llama_dir = Path(tmp) / "tiny"
        subprocess.run(
            [args.spp, "convert", "gguf", str(gguf), "--out", str(llama_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        sections = [
            tokenizer_section("smollm2", args.smollm2, "models/smollm2-135m", data),
            tokenizer_section(
                "llama2_tiny",
                llama_dir,
                "spp convert gguf ../shared/data/models/llama-2-tiny-random.gguf",
                data,
            ),
        ]
    out = {
        "generated_by": "scripts/golden/make_alpaca_golden.py",
        "versions": {
            "python": platform.python_version(),
            "transformers": metadata.version("transformers"),
            "tokenizers": metadata.version("tokenizers"),
        },
        "data": {"file": ALPACA, "sha256": sha256(DATA / ALPACA)},
        "llama2_tiny_gguf_sha256": sha256(gguf),
        "templates": {"with_input": WITH_INPUT, "no_input": NO_INPUT},
        "tokenizers": sections,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # Lists of ids on one line each: small and still diffable.
    text = json.dumps(out, indent=1, ensure_ascii=False)
    text = re.sub(
        r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]",
        lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]",
        text,
    )
    OUT.write_text(text + "\n")
    for s in sections:
        cut = sum(c["truncated"] for c in s["cases"])
        print(f"{s['name']}: {len(s['cases'])} cases ({cut} cut), cutoffs {s['cutoffs']}")
    print(f"wrote {OUT.relative_to(CRATE_ROOT)} ({OUT.stat().st_size} B)")


if __name__ == "__main__":
    main()
