#!/usr/bin/env python3
"""Independent PyTorch reference for spp's fine-tuning (SPP / LoRA / LoRA + mask adapters).

Written from docs/METHOD.md §2-§4 and docs/TRAINING.md; no code is shared with spp
(Rust) or with prune_ref.py, and none was copied from the SPP, PEFT or alpaca-lora repositories.
The model is transformers' `LlamaForCausalLM` in float32 with attn_implementation="sdpa" (no
attention mask is passed, so SDPA runs with is_causal); every base weight is frozen
(requires_grad False) and only the adapters train. CPU only.

Usage (from the crate root):

    /work/venv/bin/python scripts/ref/spp_ref.py --model models/smollm2-135m-wanda-2-4 \
        --data ../shared/data/alpaca/alpaca_gpt4_en_demo.json --out /tmp/spp_ref \
        --method spp --batch-size 128 --micro-batch-size 4 --cutoff 256 --epochs 3 --threads 2 \
        --eval-text ../shared/data/wikitext2/wiki.test.raw --eval-windows 8 --eval-seqlen 2048

    # a short smoke run, starting from the adapter values spp wrote:
    ... --max-steps 6 --batch-size 8 --micro-batch-size 4 --cutoff 128 --val-size 16 --eval-every 3 \
        --init-adapter OUT_OF_SPP/adapter_init.safetensors

    # baselines on the same pruned model (LoRA r 8, alpha 16; lora-mask trains identically and only
    # masks the update when merging):
    ... --method lora --lr 4e-4        ... --method lora-mask

Protocol (what must agree with `spp train`; docs/TRAINING.md is the authority):

* Records: `.json` = a JSON array of objects, `.jsonl` = one object per non-empty line. The first
  record decides the kind: `instruction` -> Alpaca (instruction and output required strings,
  input a string, missing or null = ""), `text` -> text. A bad record is an error naming the file
  and the record index (JSON, 0-based) or line (JSONL, 1-based).
* Alpaca: prompt = the docs/METHOD.md §4.1 template (the "### Input:" paragraph when input != "");
  ids = tokenizer(prompt + output) with the default special tokens (BOS for LLaMA, none for
  SmolLM2), cut to the first `--cutoff` tokens; EOS (tokenizer.eos_token_id) appended when
  len < cutoff and the last id is not EOS. `--train-on-inputs false`: the first
  min(len(tokenizer(prompt)), len(ids)) tokens are not targets; true (default): all are.
* Text: every `text` tokenised with the defaults plus EOS, all concatenated in file order, cut into
  consecutive blocks of `--cutoff` tokens, the partial tail dropped; every token is a target.
* Split and order: splitmix64 / permutation(n, seed) exactly as TRAINING.md (all arithmetic
  & 0xFFFFFFFFFFFFFFFF). val = the first val_size entries of permutation(n_examples, seed) (in
  that order; default val_size = min(2000, n // 10)); train = the other indices ascending. Epoch
  e visits train[permutation(len(train), seed + 1 + e)]; the epochs form one stream; a micro-batch
  is the next `--micro-batch-size` examples of the stream (it may straddle epochs); a step takes
  batch / micro_batch micro-batches. Steps = --max-steps, else max(1, epochs * (len(train) //
  batch)).
* Batches: right padding to the longest example of the micro-batch (pad = tokenizer.pad_token_id,
  else EOS), positions 0..L-1, no attention mask (causal only; right padding does not change what
  real tokens compute). Position t predicts t+1; a target counts when t+1 is a real token of the
  example and a target token. Micro-batch loss = mean f32 cross-entropy over its counted targets;
  backward on loss / (batch / micro_batch). Logged step loss = mean of its micro-batch losses.
  Validation loss = mean over val micro-batches (size micro_batch, val order, the last may be
  shorter) of their losses; dropout off, no grad. At every `--eval-every` steps and after the last.
  (A micro-batch with no counted target, possible only with --train-on-inputs false, adds no
  gradient and is left out of the means; it is counted in the JSON as `empty_micro_batches`.)
* Schedule: warmup = ceil(warmup_ratio * steps); lr_at(s) for the step after s completed steps:
  lr * s / warmup while s < warmup, then linear lr * (steps - s) / (steps - warmup) or cosine
  lr * 0.5 * (1 + cos(pi * (s - warmup) / (steps - warmup))) (denominators max(1, .), results
  max(0, .)); the first step has lr 0 when warmup > 0. Written here as a pure function and checked
  bit for bit against transformers' get_{linear,cosine}_schedule_with_warmup at start-up. The
  logged lr of step k (1-based) is lr_at(k - 1), the lr that step used.
* Optimizer: torch.optim.AdamW, betas (0.9, 0.999), eps 1e-8, --weight-decay on every adapter
  parameter (decoupled: p -= lr * wd * p, then Adam with bias correction); param_group lr set from
  lr_at before each step. --max-grad-norm clips the global L2 norm (off by default; note that the
  paper's HF Trainer default was 1.0). The logged grad_norm is the norm before clipping.
* Adapters (on the `--targets` linears of every decoder layer; created in layer order, then
  q,k,v,o,gate,up,down order, after torch.manual_seed(seed), which also seeds dropout):
  - spp (the naive form of the official code): A [rows, in] kaiming-uniform a=sqrt(5)
    (= U(-1/sqrt(in), 1/sqrt(in))), b [out, 1] zeros; M = A.repeat_interleave(out // rows, 0) * b;
    y = W x + scale * ((M * W) dropout(x)). out % rows != 0 is an error naming the layer.
  - lora / lora-mask: A [r, in] kaiming-uniform a=sqrt(5), B [out, r] zeros;
    y = W x + (alpha / r) * B A dropout(x).
  `--init-adapter FILE` loads the initial values instead (names below; shapes checked, every
  adapted linear must be present, unknown names are an error).
* Merge after training: spp W' = W * (1 + scale * M); lora W' = W + s B A; lora-mask
  W' = W + s (B A) * (W != 0). Zeros of every targeted linear are counted before and after;
  `zeros_kept` = every zero of W is still zero in W'. The merged model is checked against the
  unmerged one (max |logit difference| on the first validation or training example).
* Perplexity (docs/METHOD.md §6.1, the prune_ref.py protocol): file content with "\\r\\n" -> "\\n",
  tokenised once with the defaults, non-overlapping windows of `--eval-seqlen` tokens, tail
  dropped; the model sees tokens[0:L-1] of a window and is scored against tokens[1:L];
  ppl = exp(mean over all scored positions); the first `--eval-windows` windows (0 = all).
  After training on the merged model; with --eval-before also on the model as it starts (and the
  validation loss at step 0).
* Timing: torch.set_num_threads(--threads). A step's time runs from taking its first micro-batch
  to the end of optimizer.step() (validation excluded); tok/s = real (non-pad) tokens of the
  step's micro-batches / that time. Throughput = real tokens / time summed over the steps after
  the first --timing-skip. Peak memory = ru_maxrss (peak RSS); the RSS and peak right after the
  model load (every weight page touched, as from_pretrained may mmap the file) are recorded too,
  so the training part can be separated. The naive SPP form keeps R(A) and M*W ([out, in] each)
  per adapted linear for the backward, so its peak is well above the block form's.

Output: one line per optimizer step on stderr (`step 12/300 loss 1.9312 lr 3.90e-03 1450 tok/s`),
OUT/metrics.jsonl (per step: step, loss, lr, tokens, targets, grad_norm, seconds, epoch,
peak_rss_gib; validation entries: step, val_loss, seconds), OUT/adapter_model.safetensors with the final (unmerged) adapter
under the names
`base_model.model.model.layers.{i}.{self_attn|mlp}.{q_proj|...}.{spp_A|spp_b|lora_A|lora_B}.weight`
([rows, in], [out, 1], [r, in], [out, r]), OUT/adapter_config.json that says what the adapter is,
and the JSON summary (--json-out, default OUT/spp_ref.json): settings, versions, losses,
perplexities, throughput, memory, sparsity before/after merge.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

import prune_ref  # scripts/ref/prune_ref.py: the shared perplexity protocol
from transformers import AutoTokenizer, LlamaForCausalLM

MASK64 = 0xFFFFFFFFFFFFFFFF

# (short name, module path inside a decoder layer), in the canonical creation order
TARGETS = [
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
]

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

NAME_PREFIX = "base_model.model.model.layers"


# ----------------------------------------------------------------------------------------------
# Order: splitmix64 and the permutation of TRAINING.md
# ----------------------------------------------------------------------------------------------


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def permutation(n, seed):
    p = list(range(n))
    rng = SplitMix64(seed)
    for i in range(n - 1, 0, -1):
        j = rng.next() % (i + 1)
        p[i], p[j] = p[j], p[i]
    return p


def check_splitmix():
    # Published first outputs of splitmix64 from state 0 (Vigna's reference implementation).
    r = SplitMix64(0)
    got = [r.next() for _ in range(3)]
    want = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    if got != want:
        raise SystemExit(f"splitmix64 self-check failed: {[hex(g) for g in got]}")


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------


def warmup_steps(warmup_ratio, steps):
    return int(math.ceil(warmup_ratio * steps))


def lr_at(s, lr, steps, warmup, schedule):
    """Learning rate of the optimizer step that follows s completed steps (pure function)."""
    if s < warmup:
        return lr * (float(s) / float(max(1, warmup)))
    den = float(max(1, steps - warmup))
    if schedule == "linear":
        return lr * max(0.0, float(steps - s) / den)
    progress = float(s - warmup) / den
    return lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def check_schedule(lr, steps, warmup, schedule):
    """Compare lr_at with transformers' scheduler over all steps; returns the max |difference|."""
    import warnings

    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    make = get_linear_schedule_with_warmup if schedule == "linear" else get_cosine_schedule_with_warmup
    sch = make(opt, warmup, steps)
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(steps):
            worst = max(worst, abs(sch.get_last_lr()[0] - lr_at(s, lr, steps, warmup, schedule)))
            opt.step()
            sch.step()
    return worst


# ----------------------------------------------------------------------------------------------
# Records and examples
# ----------------------------------------------------------------------------------------------


def read_records(path):
    """[(where, record)] with where = 'FILE record i' or 'FILE line n'."""
    out = []
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {n}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{where}: invalid JSON ({e})")
                out.append((where, rec))
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise SystemExit(f"{path}: a .json data file must hold a JSON array of objects")
        out = [(f"{path} record {i}", rec) for i, rec in enumerate(data)]
    if not out:
        raise SystemExit(f"{path}: no records")
    for where, rec in out:
        if not isinstance(rec, dict):
            raise SystemExit(f"{where}: not a JSON object")
    return out


def need_str(rec, key, where, optional=False):
    v = rec.get(key)
    if v is None and optional:
        return ""
    if not isinstance(v, str):
        raise SystemExit(f"{where}: field '{key}' is {'missing' if v is None else 'not a string'}")
    return v


def build_examples(records, tok, eos_id, cutoff, train_on_inputs):
    """Returns (kind, [(ids, n_not_target)], info)."""
    first = records[0][1]
    if "instruction" in first:
        kind = "alpaca"
    elif "text" in first:
        kind = "text"
    else:
        raise SystemExit(f"{records[0][0]}: neither 'instruction' (Alpaca) nor 'text' record")
    examples = []
    info = {"kind": kind, "records": len(records)}
    if kind == "alpaca":
        truncated = with_input = 0
        for where, rec in records:
            ins = need_str(rec, "instruction", where)
            inp = need_str(rec, "input", where, optional=True)
            outp = need_str(rec, "output", where)
            if inp:
                prompt = PROMPT_INPUT.format(instruction=ins, input=inp)
                with_input += 1
            else:
                prompt = PROMPT_NO_INPUT.format(instruction=ins)
            full = tok(prompt + outp)["input_ids"]
            if len(full) > cutoff:
                truncated += 1
            ids = full[:cutoff]
            if len(ids) < cutoff and (not ids or ids[-1] != eos_id):
                ids.append(eos_id)
            if train_on_inputs:
                skip = 0
            else:
                skip = min(len(tok(prompt)["input_ids"]), len(ids))
            examples.append((ids, skip))
        info.update({"truncated": truncated, "with_input": with_input})
    else:
        stream = []
        for where, rec in records:
            stream.extend(tok(need_str(rec, "text", where))["input_ids"])
            stream.append(eos_id)
        for s in range(0, len(stream) - cutoff + 1, cutoff):
            examples.append((stream[s:s + cutoff], 0))
        info.update({"stream_tokens": len(stream), "dropped_tail_tokens": len(stream) - len(examples) * cutoff})
    if not examples:
        raise SystemExit("no training examples (text shorter than one block of --cutoff tokens?)")
    lens = [len(e[0]) for e in examples]
    info.update({"examples": len(examples), "tokens": sum(lens), "min_len": min(lens), "max_len": max(lens),
                 "mean_len": sum(lens) / len(lens)})
    return kind, examples, info


class Stream:
    """The continuous stream of training examples over epochs."""

    def __init__(self, train, seed):
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.pos = 0
        self.consumed = 0
        self.order = self._order(0)

    def _order(self, e):
        return [self.train[i] for i in permutation(len(self.train), self.seed + 1 + e)]

    def take(self, k):
        out = []
        while len(out) < k:
            if self.pos == len(self.order):
                self.epoch += 1
                self.pos = 0
                self.order = self._order(self.epoch)
            out.append(self.order[self.pos])
            self.pos += 1
        self.consumed += k
        return out


def collate(examples, idx, pad_id):
    """ids [B, L] right-padded, labels [B, L] (-100 = not counted), real tokens, counted targets."""
    L = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), L), pad_id, dtype=torch.int64)
    labels = torch.full((len(idx), L), -100, dtype=torch.int64)
    real = 0
    for b, i in enumerate(idx):
        seq, skip = examples[i]
        n = len(seq)
        real += n
        ids[b, :n] = torch.tensor(seq, dtype=torch.int64)
        # position t predicts t+1; counted when t+1 < n and t+1 >= skip
        t0 = max(skip - 1, 0)
        if n - 1 > t0:
            labels[b, t0:n - 1] = ids[b, t0 + 1:n]
    return ids, labels, real, int((labels != -100).sum())


# ----------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------


class Weight(nn.Module):
    """Holds one parameter as `.weight` so the state-dict names end in `spp_A.weight` etc."""

    def __init__(self, t):
        super().__init__()
        self.weight = nn.Parameter(t)


def kaiming_a_sqrt5(rows, cols):
    t = torch.empty(rows, cols, dtype=torch.float32)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # U(-1/sqrt(cols), 1/sqrt(cols))
    return t


class SPPLinear(nn.Module):
    def __init__(self, base, rows, scale, dropout, name):
        super().__init__()
        out_f, in_f = base.weight.shape
        if out_f % rows:
            raise SystemExit(f"{name}: out_features {out_f} is not divisible by --rows {rows}")
        self.base = base
        self.rows = rows
        self.scale = scale
        self.spp_A = Weight(kaiming_a_sqrt5(rows, in_f))
        self.spp_b = Weight(torch.zeros(out_f, 1, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self):
        """M = R(A) * b  ([out, in]); R repeats each row of A out/rows times contiguously."""
        W = self.base.weight
        return self.spp_A.weight.repeat_interleave(W.shape[0] // self.rows, dim=0) * self.spp_b.weight

    def forward(self, x):
        W = self.base.weight
        # f32 adapters; on bf16 weights the branch runs in the activations' dtype (a no-op in f32).
        return self.base(x) + self.scale * F.linear(self.dropout(x), (self.delta() * W).to(x.dtype))

    @torch.no_grad()
    def merged(self):
        W = self.base.weight
        return W * (1.0 + self.scale * self.delta())

    def names(self):
        return {"spp_A": self.spp_A.weight, "spp_b": self.spp_b.weight}


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha, dropout, mask_merge):
        super().__init__()
        out_f, in_f = base.weight.shape
        self.base = base
        self.scale = alpha / r
        self.mask_merge = mask_merge
        self.lora_A = Weight(kaiming_a_sqrt5(r, in_f))
        self.lora_B = Weight(torch.zeros(out_f, r, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        h = F.linear(self.dropout(x), self.lora_A.weight.to(x.dtype))
        return self.base(x) + self.scale * F.linear(h, self.lora_B.weight.to(x.dtype))

    @torch.no_grad()
    def merged(self):
        W = self.base.weight
        d = self.scale * (self.lora_B.weight @ self.lora_A.weight)
        if self.mask_merge:
            d = d * (W != 0)
        return W + d

    def names(self):
        return {"lora_A": self.lora_A.weight, "lora_B": self.lora_B.weight}


def parse_targets(text):
    short = {s: p for s, p in TARGETS}
    full = {p.split(".")[1]: p for _, p in TARGETS}
    chosen = set()
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        if t in short:
            chosen.add(short[t])
        elif t in full:
            chosen.add(full[t])
        else:
            raise SystemExit(f"--targets: unknown module '{t}' (use q,k,v,o,gate,up,down)")
    if not chosen:
        raise SystemExit("--targets is empty")
    return [p for _, p in TARGETS if p in chosen]


def attach_adapters(model, args, targets):
    """Replaces the targeted linears; returns [(state-dict-style name, module)] in creation order."""
    torch.manual_seed(args.seed)
    wrapped = []
    for li, layer in enumerate(model.model.layers):
        for path in targets:
            parent_name, child = path.split(".")
            parent = getattr(layer, parent_name)
            base = getattr(parent, child)
            name = f"model.layers.{li}.{path}"
            if args.method == "spp":
                mod = SPPLinear(base, args.rows, args.scale, args.dropout, name)
            else:
                mod = LoRALinear(base, args.lora_r, args.lora_alpha, args.dropout, args.method == "lora-mask")
            setattr(parent, child, mod)
            wrapped.append((name, mod, parent, child))
    return wrapped


def adapter_tensors(wrapped):
    out = {}
    for name, mod, _, _ in wrapped:
        for k, p in mod.names().items():
            out[f"base_model.model.{name}.{k}.weight"] = p.detach().contiguous().clone()
    return out


@torch.no_grad()
def load_init_adapter(path, wrapped):
    tensors = load_file(path)
    used = set()
    for name, mod, _, _ in wrapped:
        for k, p in mod.names().items():
            key = f"base_model.model.{name}.{k}.weight"
            if key not in tensors:
                raise SystemExit(f"{path}: missing {key}")
            t = tensors[key]
            if list(t.shape) != list(p.shape):
                raise SystemExit(f"{path}: {key} has shape {list(t.shape)}, expected {list(p.shape)}")
            p.copy_(t.to(torch.float32))
            used.add(key)
    extra = sorted(set(tensors) - used)
    if extra:
        raise SystemExit(f"{path}: {len(extra)} unexpected tensors, e.g. {extra[0]}")
    return len(used)


# ----------------------------------------------------------------------------------------------
# Loss, validation, perplexity
# ----------------------------------------------------------------------------------------------


def micro_loss(model, ids, labels):
    logits = model(input_ids=ids).logits.float()
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="mean")


@torch.no_grad()
def validate(model, examples, val, mb, pad_id):
    model.eval()
    losses = []
    for s in range(0, len(val), mb):
        ids, labels, _, n_t = collate(examples, val[s:s + mb], pad_id)
        if n_t == 0:
            continue
        losses.append(float(micro_loss(model, ids, labels)))
    model.train()
    return sum(losses) / len(losses) if losses else float("nan"), len(losses)


def perplexity(model, ids, seqlen, max_windows):
    """The pruning reference's perplexity (one protocol for both), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return prune_ref.perplexity(model, ids, seqlen, max_windows)
    finally:
        if was_training:
            model.train()


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0)  # KiB on Linux


def current_rss_gib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / (1024.0 * 1024.0)
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_bool(text):
    t = text.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face LLaMA directory (f32)")
    ap.add_argument("--data", required=True, help="Alpaca or text records (.json array or .jsonl)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--method", choices=["spp", "lora", "lora-mask"], default="spp")
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--rows", type=int, default=16, help="SPP rows r of A")
    ap.add_argument("--scale", type=float, default=2.0, help="SPP scale s")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    ap.add_argument("--weight-decay", type=float, default=0.001)
    ap.add_argument("--max-grad-norm", type=float, default=None, help="clip the global grad norm (off)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--train-on-inputs", type=parse_bool, default=True)
    ap.add_argument("--val-size", type=int, default=None, help="default min(2000, n // 10)")
    ap.add_argument("--eval-every", type=int, default=200, help="0 = only after the last step")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-text", help="WikiText-2 test file (wiki.test.raw)")
    ap.add_argument("--eval-windows", type=int, default=8, help="0 = all windows")
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--eval-before", action="store_true", help="perplexity and val loss also before training")
    ap.add_argument("--timing-skip", type=int, default=2, help="warm-up steps left out of the throughput")
    ap.add_argument("--json-out", help="summary JSON (default OUT/spp_ref.json)")
    ap.add_argument("--init-adapter", help="safetensors with the initial adapter values")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="the frozen model's dtype (bf16: PyTorch's own bf16 CPU path; adapters stay f32)")
    args = ap.parse_args()

    if args.batch_size <= 0 or args.micro_batch_size <= 0 or args.batch_size % args.micro_batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} must be a positive multiple of --micro-batch-size "
                         f"{args.micro_batch_size}")
    if args.cutoff < 2:
        raise SystemExit("--cutoff must be at least 2")
    if args.max_steps is not None and args.max_steps <= 0:
        raise SystemExit("--max-steps must be positive")
    check_splitmix()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    json_out = args.json_out or os.path.join(args.out, "spp_ref.json")
    targets = parse_targets(args.targets)

    # ------------------------------------------------------------------ model
    t_load = time.time()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(args.model)
    eos_id = tok.eos_token_id
    if eos_id is None:
        raise SystemExit("the tokenizer has no EOS token")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    with torch.no_grad():  # the weights may be mmapped: touch every page so the load RSS is the model's
        for p in model.parameters():
            p.sum()
    load_seconds = time.time() - t_load
    rss_after_load = current_rss_gib()
    peak_after_load = peak_rss_gib()
    print(f"loaded {args.model} (float32, attn {model.config._attn_implementation}) in {load_seconds:.1f}s; "
          f"RSS {rss_after_load:.2f} GiB", flush=True)

    # ------------------------------------------------------------------ data
    t_data = time.time()
    records = read_records(args.data)
    kind, examples, data_info = build_examples(records, tok, eos_id, args.cutoff, args.train_on_inputs)
    n = len(examples)
    val_size = min(2000, n // 10) if args.val_size is None else args.val_size
    if not 0 <= val_size < n:
        raise SystemExit(f"--val-size {val_size} must be in [0, {n - 1}] for {n} examples")
    perm = permutation(n, args.seed)
    val = perm[:val_size]
    val_set = set(val)
    train = [i for i in range(n) if i not in val_set]
    steps = args.max_steps if args.max_steps is not None else max(1, args.epochs * (len(train) // args.batch_size))
    warmup = warmup_steps(args.warmup_ratio, steps)
    accum = args.batch_size // args.micro_batch_size
    sched_diff = check_schedule(args.lr, steps, warmup, args.schedule)
    data_info["seconds"] = time.time() - t_data
    print(f"data: {kind}, {n} examples ({data_info['tokens']} tokens), train {len(train)}, val {len(val)}; "
          f"{steps} steps x {accum} micro-batches of {args.micro_batch_size}, warmup {warmup}; "
          f"lr_at vs transformers max |diff| {sched_diff:.3g}", flush=True)
    if sched_diff != 0.0:
        print("WARNING: lr_at differs from transformers' scheduler", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ adapters
    wrapped = attach_adapters(model, args, targets)
    init_source = "seed"
    if args.init_adapter:
        cnt = load_init_adapter(args.init_adapter, wrapped)
        init_source = os.path.abspath(args.init_adapter)
        print(f"initial adapter: {cnt} tensors from {args.init_adapter}", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_base = sum(p.numel() for n_, p in model.named_parameters() if not p.requires_grad)
    print(f"{args.method}: {len(wrapped)} adapted linears, {n_trainable} trainable parameters", flush=True)
    model.train()

    result = {
        "tool": "scripts/ref/spp_ref.py",
        "model": os.path.abspath(args.model),
        "data": os.path.abspath(args.data),
        "settings": {k: v for k, v in vars(args).items()},
        "targets": [p.split(".")[1] for p in targets],
        "attn_implementation": model.config._attn_implementation,
        "dtype": "float32",
        "device": "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
        },
        "tokenizer": {"eos_id": eos_id, "pad_id": pad_id, "bos_id": tok.bos_token_id,
                      "adds_bos": bool(tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id])},
        "data_info": data_info,
        "val_size": len(val),
        "train_size": len(train),
        "val_first": val[:8],
        "steps": steps,
        "warmup": warmup,
        "micro_batches_per_step": accum,
        "lr_schedule_max_abs_diff_vs_transformers": sched_diff,
        "adapter_init": init_source,
        "adapted_linears": len(wrapped),
        "trainable_params": n_trainable,
        "base_params": n_base,
        "load_seconds": load_seconds,
        "rss_gib_after_load": rss_after_load,
        "peak_rss_gib_after_load": peak_after_load,
    }
    if args.method == "spp":
        result["adapter"] = {"rows": args.rows, "scale": args.scale, "dropout": args.dropout}
    else:
        result["adapter"] = {"r": args.lora_r, "alpha": args.lora_alpha, "scale": args.lora_alpha / args.lora_r,
                             "dropout": args.dropout, "merge_mask": args.method == "lora-mask"}

    eval_ids = None
    if args.eval_text:
        with open(args.eval_text, encoding="utf-8", newline="") as f:
            text = f.read().replace("\r\n", "\n")
        eval_ids = tok(text)["input_ids"]
        result["eval_bos"] = bool(tok.bos_token_id is not None and eval_ids[0] == tok.bos_token_id)
        if args.eval_before:
            r = perplexity(model, eval_ids, args.eval_seqlen, args.eval_windows)
            result["ppl_before"] = r
            print(f"ppl before training {r['ppl']:.4f} ({r['windows']} windows of {r['seqlen']}, "
                  f"{r['seconds']:.1f}s)", flush=True)
    val_before = None
    if args.eval_before and val:
        tv = time.perf_counter()
        vl, nb = validate(model, examples, val, args.micro_batch_size, pad_id)
        val_before = {"step": 0, "val_loss": vl, "seconds": time.perf_counter() - tv}
        print(f"val step 0 loss {vl:.4f} ({nb} micro-batches)", file=sys.stderr, flush=True)
    result["peak_rss_gib_before_train"] = peak_rss_gib()

    # ------------------------------------------------------------------ training
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    stream = Stream(train, args.seed)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    losses, val_losses, step_times, step_tokens = [], [], [], []
    if val_before is not None:
        val_losses.append({"step": 0, "val_loss": val_before["val_loss"]})
        metrics.write(json.dumps(val_before) + "\n")
    empty_micro = 0
    t_train = time.time()
    for k in range(1, steps + 1):
        t0 = time.perf_counter()
        lr_k = lr_at(k - 1, args.lr, steps, warmup, args.schedule)
        for g in opt.param_groups:
            g["lr"] = lr_k
        opt.zero_grad(set_to_none=True)
        mlosses = []
        real = targets_k = 0
        for _ in range(accum):
            idx = stream.take(args.micro_batch_size)
            ids, labels, r_, t_ = collate(examples, idx, pad_id)
            real += r_
            targets_k += t_
            if t_ == 0:
                empty_micro += 1
                continue
            loss = micro_loss(model, ids, labels)
            (loss / accum).backward()
            mlosses.append(float(loss.detach()))
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
            if grads else 0.0
        if args.max_grad_norm is not None and grads:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        dt = time.perf_counter() - t0
        step_loss = sum(mlosses) / len(mlosses) if mlosses else float("nan")
        losses.append(step_loss)
        step_times.append(dt)
        step_tokens.append(real)
        print(f"step {k}/{steps} loss {step_loss:.4f} lr {lr_k:.2e} {real / dt:.0f} tok/s", file=sys.stderr,
              flush=True)
        metrics.write(json.dumps({"step": k, "loss": step_loss, "lr": lr_k, "tokens": real, "targets": targets_k,
                                  "grad_norm": gnorm, "seconds": dt, "epoch": stream.consumed / len(train),
                                  "peak_rss_gib": peak_rss_gib()}) + "\n")
        metrics.flush()
        if val and ((args.eval_every > 0 and k % args.eval_every == 0) or k == steps):
            tv = time.perf_counter()
            vl, nb = validate(model, examples, val, args.micro_batch_size, pad_id)
            tv = time.perf_counter() - tv
            val_losses.append({"step": k, "val_loss": vl})
            print(f"val step {k} loss {vl:.4f} ({nb} micro-batches, {tv:.1f}s)", file=sys.stderr, flush=True)
            metrics.write(json.dumps({"step": k, "val_loss": vl, "seconds": tv}) + "\n")
            metrics.flush()
    metrics.close()
    train_wall = time.time() - t_train
    peak_after_train = peak_rss_gib()

    skip = args.timing_skip if steps > args.timing_skip else 0
    t_sum = sum(step_times[skip:])
    tok_sum = sum(step_tokens[skip:])
    finite = [l for l in losses if l == l]
    result["train"] = {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "min_loss": min(finite) if finite else None,
        "losses": losses,
        "val_losses": val_losses,
        "best_val": min(val_losses, key=lambda v: v["val_loss"]) if val_losses else None,
        "epochs_seen": stream.consumed / len(train),
        "empty_micro_batches": empty_micro,
        "timing_skip_applied": skip,
        "timed_steps": steps - skip,
        "tokens_per_second": tok_sum / t_sum if t_sum > 0 else None,
        "seconds_per_step": t_sum / (steps - skip),
        "real_tokens": sum(step_tokens),
        "wall_seconds_incl_validation": train_wall,
        "loadavg_after": os.getloadavg(),
    }
    result["peak_rss_gib_after_train"] = peak_after_train
    result["peak_rss_gib_train_minus_load"] = peak_after_train - peak_after_load

    # ------------------------------------------------------------------ save the adapter
    save_file(adapter_tensors(wrapped), os.path.join(args.out, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    cfg = {"method": args.method, "target_modules": [p.split(".")[1] for p in targets], "dropout": args.dropout,
           "names": f"{NAME_PREFIX}.{{i}}.{{self_attn|mlp}}.{{module}}."
                    + ("{spp_A|spp_b}.weight" if args.method == "spp" else "{lora_A|lora_B}.weight")}
    cfg.update(result["adapter"])
    with open(os.path.join(args.out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)

    # ------------------------------------------------------------------ merge
    model.eval()
    check_idx = val[:1] if val else train[:1]
    check_ids = torch.tensor(examples[check_idx[0]][0], dtype=torch.int64).unsqueeze(0)
    with torch.no_grad():
        logits_unmerged = model(input_ids=check_ids).logits.float()
    per_linear = {}
    zb_total = za_total = numel_total = new_zeros = 0
    kept_all = True
    with torch.no_grad():
        for name, mod, parent, child in wrapped:
            W = mod.base.weight
            Wm = mod.merged()
            zb = W == 0
            za = Wm == 0
            kept = bool(za[zb].all())
            kept_all = kept_all and kept
            nz = int((za & ~zb).sum())
            per_linear[name] = {"zeros_before": int(zb.sum()), "zeros_after": int(za.sum()), "numel": W.numel(),
                                "zeros_kept": kept}
            zb_total += int(zb.sum())
            za_total += int(za.sum())
            numel_total += W.numel()
            new_zeros += nz
            mod.base.weight.data.copy_(Wm)
            setattr(parent, child, mod.base)
        logits_merged = model(input_ids=check_ids).logits.float()
    merge_diff = float((logits_unmerged - logits_merged).abs().max())
    result["merge"] = {
        "formula": {"spp": "W * (1 + s*M)", "lora": "W + s*B@A", "lora-mask": "W + s*(B@A)*(W != 0)"}[args.method],
        "zeros_kept": kept_all,
        "sparsity_before": zb_total / numel_total,
        "sparsity_after": za_total / numel_total,
        "zeros_before": zb_total,
        "zeros_after": za_total,
        "new_zeros": new_zeros,
        "numel": numel_total,
        "max_abs_logit_diff_merged_vs_unmerged": merge_diff,
        "check_tokens": check_ids.shape[1],
        "linears": per_linear,
    }
    print(f"merged ({result['merge']['formula']}): sparsity {zb_total / numel_total:.4f} -> {za_total / numel_total:.4f}, "
          f"zeros kept {kept_all}; max |logit diff| merged vs unmerged {merge_diff:.3e}", flush=True)

    if eval_ids is not None:
        r = perplexity(model, eval_ids, args.eval_seqlen, args.eval_windows)
        result["ppl_after"] = r
        print(f"ppl after training (merged) {r['ppl']:.4f} ({r['windows']} windows of {r['seqlen']}, "
              f"{r['seconds']:.1f}s)", flush=True)

    result["peak_rss_gib"] = peak_rss_gib()
    with open(json_out, "w") as f:
        json.dump(result, f, indent=1)
    tr = result["train"]
    min_loss = float("nan") if tr["min_loss"] is None else tr["min_loss"]
    print(f"train loss {tr['first_loss']:.4f} -> {tr['last_loss']:.4f} (min {min_loss:.4f}); "
          f"{tr['tokens_per_second']:.0f} tok/s, {tr['seconds_per_step']:.2f} s/step over {tr['timed_steps']} steps; "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB (after load {peak_after_load:.2f}); wrote {json_out}",
          flush=True)


if __name__ == "__main__":
    main()
