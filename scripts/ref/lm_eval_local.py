#!/usr/bin/env python3
"""EleutherAI lm-evaluation-harness task objects pointed at our local, offline eval data.

`spp eval tasks` must reproduce the harness exactly, so the references are built by the harness's
*own* task code (its YAML configs, `process_docs`, `doc_to_text` / `doc_to_target` /
`doc_to_choice`, `fewshot_context`, `construct_requests`), not by a re-implementation. Only where the
data come from is changed. Written against lm_eval 0.4.13 (the module checks nothing else).

How (the least invasive approach that works offline in 0.4.13):

* The task's registered YAML is found through `TaskManager()` (its index), loaded with
  `lm_eval.tasks._yaml_loader.load_yaml(path, resolve_func=True)` (so `!function` entries become the
  harness's own callables and `include:` is followed, e.g. arc_challenge includes arc_easy.yaml) and
  then these keys are overridden:
      dataset_path: json, dataset_name: None,
      dataset_kwargs: {data_files: {<eval split>: <jsonl>}},
      training_split / validation_split / test_split: only the split the harness evaluates is kept.
  The full dict is handed to the public `TaskManager.load([cfg])`, which builds a
  `ConfigurableTask` from it (a dict spec with only the overrides would NOT inherit the YAML; the
  0.4.13 factory uses the dict as the whole config).
* Why the other splits are dropped: `ConfigurableTask.__init__` always calls `fewshot_docs()`, which
  indexes `dataset["train"]` (or "validation") when a training/validation split is configured; our
  files hold only the evaluated split, so that would be a KeyError. With 0-shot, the few-shot docs
  are never sampled, so removing those splits changes no prompt. The evaluated split is the one the
  harness uses: validation for boolq / rte / hellaswag / winogrande, test for arc_* / openbookqa.
* boolq (aps/super_glue), rte (nyu-mll/glue), hellaswag (Rowan/hellaswag), winogrande
  (allenai/winogrande winogrande_xl) read our JSONL files directly: their fields are those of the
  HF datasets (extra fields such as boolq's `answer` are ignored by the prompts).
* arc_easy / arc_challenge / openbookqa: our rows are `{id, question, choices: [str], gold: int}`.
  They are converted (same order) in a temporary directory to the HF schema the harness expects:
  ai2_arc `{id, question, choices: {text, label: ["A","B",...]}, answerKey}`, openbookqa
  `{id, question_stem, choices: {text, label}, answerKey}`. The harness never shows the labels in a
  prompt; `doc_to_target` is `choices.label.index(answerKey)`, i.e. our `gold`.

Use from Python (scripts/ is not a package; put scripts/ref on sys.path):

    sys.path.insert(0, "scripts/ref")
    import lm_eval_local as L
    tasks = L.build_tasks("../shared/data/eval", ["boolq", "hellaswag"])
    L.doc_requests(tasks["hellaswag"], 3)
    # -> {"index": 3, "gold": 2, "choices": [...], "requests": [[context, " continuation"], ...]}

Or run it to print one document's requests:

    /work/venv/bin/python scripts/ref/lm_eval_local.py --data-dir ../shared/data/eval --task winogrande --index 0

Environment: sets HF_DATASETS_OFFLINE / HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE = 1 on import.
"""
import argparse
import json
import os
import sys
import tempfile

for _k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_k, "1")

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]

# task -> (our file, the split the harness evaluates, converter or None)
_FILES = {
    "boolq": ("boolq_validation.jsonl", "validation", None),
    "rte": ("rte_validation.jsonl", "validation", None),
    "hellaswag": ("hellaswag_validation.jsonl", "validation", None),
    "winogrande": ("winogrande_xl_validation.jsonl", "validation", None),
    "arc_easy": ("arc_easy_test.jsonl", "test", "arc"),
    "arc_challenge": ("arc_challenge_test.jsonl", "test", "arc"),
    "openbookqa": ("openbookqa_test.jsonl", "test", "obqa"),
}

_tmpdir = None


def _convert(src, kind):
    """Our {id, question, choices: [str], gold} rows -> the HF schema, in a temp dir; returns the path."""
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.TemporaryDirectory(prefix="spp-lm-eval-data-")
    dst = os.path.join(_tmpdir.name, os.path.basename(src))
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            labels = [chr(ord("A") + i) for i in range(len(r["choices"]))]
            out = {"id": r["id"]}
            out["question_stem" if kind == "obqa" else "question"] = r["question"]
            out["choices"] = {"text": list(r["choices"]), "label": labels}
            out["answerKey"] = labels[r["gold"]]
            g.write(json.dumps(out, ensure_ascii=False) + "\n")
    return dst


def task_config(tm, name, data_dir):
    """The harness's full config dict for `name`, with the data source replaced by the local file."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = tm.task_index[name]
    cfg = dict(load_yaml(entry.yaml_path, resolve_func=True))
    for k in ("tag", "group", "task_list"):
        cfg.pop(k, None)
    fname, split, conv = _FILES[name]
    path = os.path.abspath(os.path.join(data_dir, fname))
    if conv:
        path = _convert(path, conv)
    cfg.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: path}},
        training_split=None,
        validation_split=split if split == "validation" else None,
        test_split=split if split == "test" else None,
    )
    assert cfg["task"] == name, (cfg["task"], name)
    return cfg


def build_tasks(data_dir, names=None, task_manager=None):
    """{name: lm_eval ConfigurableTask} for the given task names, reading local data offline."""
    from lm_eval.tasks import TaskManager

    names = list(names or TASKS)
    tm = task_manager or TaskManager()
    cfgs = [task_config(tm, n, data_dir) for n in names]
    built = tm.load(cfgs)["tasks"]
    return {n: built[n] for n in names}


def build_instances(task, limit=None):
    """Build the harness's requests (0-shot, no chat template) for the first `limit` docs and
    return {doc_id: [Instance, ...]} with each doc's instances in request order (Instance.idx)."""
    if task.config.num_fewshot is None:
        task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=limit)
    per_doc = {}
    for inst in task.instances:
        per_doc.setdefault(inst.doc_id, []).append(inst)
    for v in per_doc.values():
        v.sort(key=lambda i: i.idx)
    return per_doc


def gold_index(task, doc):
    """The gold choice index as `ConfigurableTask.process_results` computes it (multiple-input tasks,
    i.e. WinoGrande, take it from doc_to_text)."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    choices = task.doc_to_choice(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -100
    return int(gold)


def doc_requests(task, index, per_doc=None):
    """For doc `index`: {"index", "gold", "choices" (doc_to_choice strings), "requests": [[context,
    continuation], ...]} exactly as the harness builds them (continuation includes the target
    delimiter " ")."""
    if per_doc is None or index not in per_doc:
        per_doc = build_instances(task, limit=index + 1)
    insts = per_doc[index]
    doc = insts[0].doc
    return {
        "index": index,
        "gold": gold_index(task, doc),
        "choices": list(task.doc_to_choice(doc)),
        "requests": [list(i.arguments[:2]) for i in insts],
    }


def eval_docs(task):
    """The processed evaluation docs, in order (what `doc_iterator` enumerates)."""
    return task.eval_docs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("SPP_EVAL_DIR", "../shared/data/eval"))
    ap.add_argument("--task", default="boolq", choices=TASKS)
    ap.add_argument("--index", type=int, default=0)
    args = ap.parse_args()
    task = build_tasks(args.data_dir, [args.task])[args.task]
    json.dump(doc_requests(task, args.index), sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
