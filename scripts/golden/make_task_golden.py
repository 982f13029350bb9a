#!/usr/bin/env python3
"""Golden files for `spp eval tasks`: the requests lm-evaluation-harness builds, and its tokenisation.

Run from the crate root (offline; needs the local eval data and models/smollm2-135m):

    /work/venv/bin/python scripts/golden/make_task_golden.py --data-dir ../shared/data/eval \
        --model models/smollm2-135m

It writes:

* `tests/data/task_requests.json` -- for each of boolq, rte, hellaswag, winogrande, arc_easy,
  arc_challenge, openbookqa and two documents (doc 0 and one chosen for the task's tricky path, see
  DOCS below), the harness's own 0-shot requests, built by the harness's task objects
  (scripts/ref/lm_eval_local.py: the registered YAML configs, pointed at our JSONL files):
      {"index": i, "gold": g, "choices": [doc_to_choice strings],
       "requests": [[context, continuation], ...]}
  `requests` are `Instance.arguments` in request order (`Instance.idx`); continuations include
  the target delimiter " ". For winogrande the choices are the partial sentences (the *contexts*)
  and every request has the same continuation; `gold` is what `process_results` uses
  (doc_to_text for multiple-input tasks, doc_to_target otherwise).
* `tests/data/encode_pair_smollm2.json` -- `HFLM._encode_pair(context, continuation)` of a real
  `lm_eval.models.huggingface.HFLM` on models/smollm2-135m (device cpu, float32, default
  add_bos_token=None, i.e. the tokenizer's own default, which adds no BOS for this model) for a
  set of varied pairs: {"context", "continuation", "context_ids", "continuation_ids"}. Note
  `_encode_pair` moves *all* trailing whitespace of the context (str.rstrip: spaces, "\\n", "\\t")
  to the front of the continuation, then encodes context alone and context+continuation whole;
  context_ids = encode(context), continuation_ids = encode(whole)[len(context_ids):]. Where the
  boundary merges into one token ("I do" + "n't know") context_ids + continuation_ids is NOT the
  whole encoding.

Both files carry a header: made_by, lm_eval_version, transformers / tokenizers versions, date.
"""
import argparse
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
import lm_eval_local as L  # noqa: E402  (sets the HF offline variables)

# The second document of each task, and why.
DOCS = {
    "boolq": (5, "passage with non-ASCII IPA (/ˈbɑːrks/)"),
    "rte": (47, "double space inside sentence2 ('is  harvested')"),
    "hellaswag": (3243, "first WikiHow doc: [header]/[title]/[step]/[substeps] brackets, empty ctx_b"),
    "winogrande": (156, "double space in the sentence; blank followed by ' .' (continuation ' .')"),
    "arc_easy": (93, "3 choices"),
    "arc_challenge": (121, "3 choices"),
    "openbookqa": (1, "question_stem ending in ':'"),
}

PAIRS = [
    ("Answer:", " yes"),
    ("Answer: ", "yes"),                       # trailing space moves to the continuation
    ("Question: Is it?\nAnswer:  ", "no"),     # two trailing spaces move
    ("The end.\n", "Next line"),               # trailing newline moves too (str.rstrip)
    ("Tabs\t", " and spaces"),
    ("Double  spaces  inside", "  here"),
    ("naïve café — 東京", " は大きい"),
    ("Emoji time 🎉", " 👍🏽 ok"),
    ("The year 1234 and", " 5678 apples"),
    ("def f(x):\n    return", " x ** 2  # square"),
    ("Answer: ", " "),                         # empty-ish continuation
    ("I do", "n't know"),                      # boundary merges: context_ids + cont != whole
    ("x =", "= 1"),
    ("hel", "lo world"),
    ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
]


def header(script_rel):
    import lm_eval
    import tokenizers
    import transformers

    return {
        "made_by": script_rel,
        "lm_eval_version": lm_eval.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("SPP_EVAL_DIR", "../shared/data/eval"))
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--out-dir", default="tests/data")
    args = ap.parse_args()

    hdr = header("scripts/golden/make_task_golden.py")
    tasks = L.build_tasks(args.data_dir, L.TASKS)
    out = dict(hdr, data="local JSONL files of ../shared/data/eval through scripts/ref/lm_eval_local.py; 0-shot",
               second_doc={k: f"{i}: {why}" for k, (i, why) in DOCS.items()}, tasks={})
    for name in L.TASKS:
        task = tasks[name]
        extra = DOCS[name][0]
        per_doc = L.build_instances(task, limit=extra + 1)
        out["tasks"][name] = [L.doc_requests(task, i, per_doc) for i in (0, extra)]
        print(f"{name}: docs 0 and {extra}", file=sys.stderr)
    path = os.path.join(args.out_dir, "task_requests.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)

    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=args.model, device="cpu", dtype="float32", batch_size=1)
    entries = []
    for ctx, cont in PAIRS:
        c_ids, k_ids = lm._encode_pair(ctx, cont)
        entries.append({"context": ctx, "continuation": cont, "context_ids": list(map(int, c_ids)),
                        "continuation_ids": list(map(int, k_ids))})
    enc = dict(hdr, model=args.model, add_bos_token=lm.add_bos_token, backend=lm.backend,
               max_length=lm.max_length, prefix_token_id=lm.prefix_token_id,
               note="HFLM._encode_pair: n = len(ctx) - len(ctx.rstrip()); ctx[-n:] is moved to the front of "
                    "the continuation; context_ids = tok_encode(ctx); continuation_ids = "
                    "tok_encode(ctx + cont)[len(context_ids):]",
               pairs=entries)
    path = os.path.join(args.out_dir, "encode_pair_smollm2.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(enc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
