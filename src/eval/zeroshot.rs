//! Zero-shot multiple-choice scoring with lm-evaluation-harness's conventions (0-shot, no BOS):
//! each choice's summed log-likelihood of the continuation given the context; `acc` takes the
//! argmax, `acc_norm` the argmax of the log-likelihood over the choice's length in characters.
//!
//! Tokenisation is the harness's: trailing whitespace of the context moves to the continuation,
//! context + continuation are encoded together and split at the context's token count, and a
//! request longer than the model's context keeps its last `max_len + 1` tokens.
//!
//! Beyond the harness, nothing is computed twice or padded: the inputs of a document's requests
//! share their longest common token prefix (the context, or for WinoGrande the sentence up to the
//! blank), which is computed once; each request's remaining tokens follow it in the same packed
//! row, attending to the prefix and to themselves; several documents are packed side by side
//! into one forward pass ([`crate::model::Packing`]). `share: false` packs every request whole,
//! which is what the harness computes; both give the same scores.

use super::tasks::{Doc, Task};
use crate::bail;
use crate::error::Result;
use crate::model::{Llama, PackedRow, Packing};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Tensor};

/// The harness's context/continuation split (`_encode_pair`), without special tokens.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    // The context's trailing whitespace belongs to the continuation: the whole string is encoded
    // as given, the context without it.
    let whole = tok.encode(&format!("{context}{continuation}"), false)?;
    let ctx = tok.encode(context.trim_end_matches(super::tasks::py_space), false)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// A request as token ids, after the harness's left truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
    pub truncated: bool,
}

/// Encodes a request and keeps its last `max_len + 1` tokens as the harness does.
pub fn encode_request(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
    max_len: usize,
) -> Result<Encoded> {
    let (mut ctx, cont) = encode_pair(tok, context, continuation)?;
    if cont.is_empty() {
        bail!(
            "the continuation {continuation:?} encodes to no tokens after the context {:?}",
            short(context)
        );
    }
    if ctx.is_empty() {
        bail!(
            "the context {:?} encodes to no tokens: nothing to condition on",
            short(context)
        );
    }
    if cont.len() >= max_len {
        bail!(
            "a continuation of {} tokens does not fit the model's context of {max_len} tokens",
            cont.len()
        );
    }
    let truncated = ctx.len() + cont.len() > max_len + 1;
    if truncated {
        ctx.drain(..ctx.len() + cont.len() - (max_len + 1));
    }
    Ok(Encoded {
        context: ctx,
        continuation: cont,
        truncated,
    })
}

fn short(s: &str) -> String {
    let head: String = s.chars().take(60).collect();
    if head.len() < s.len() {
        format!("{head}…")
    } else {
        head
    }
}

/// The slow obvious version of the scoring, one request at a time: the whole sequence through
/// [`Llama::forward`], log-softmax over the vocabulary, the continuation's tokens summed.
pub fn loglikelihood_reference(model: &Llama, r: &Encoded) -> Result<f64> {
    let ids: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    let n = ids.len() - 1;
    let input = Tensor::from_vec(ids[..n].to_vec(), (1, n), model.device())?;
    let logits = model.forward(&input)?.squeeze(0)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, 1)?.to_vec2::<f32>()?;
    let c = r.context.len();
    Ok((c..=n).map(|i| logp[i - 1][ids[i] as usize] as f64).sum())
}

/// The model input of a request: context + continuation without its last token.
fn input(r: &Encoded) -> impl Iterator<Item = u32> + '_ {
    r.context
        .iter()
        .chain(&r.continuation[..r.continuation.len() - 1])
        .copied()
}

/// Requests packed together: their inputs' longest common prefix once, then each request's
/// remaining tokens as a branch that attends to the prefix and to itself. A document's choices
/// share at least the context (WinoGrande's share the sentence up to the blank).
struct Group<'a> {
    /// (request number, request)
    requests: Vec<(usize, &'a Encoded)>,
    prefix: usize,
}

impl<'a> Group<'a> {
    fn new(requests: Vec<(usize, &'a Encoded)>) -> Self {
        let first: Vec<u32> = input(requests[0].1).collect();
        let prefix = requests[1..].iter().fold(first.len(), |n, (_, r)| {
            input(r)
                .zip(&first[..n])
                .take_while(|(a, b)| a == *b)
                .count()
        });
        Self { requests, prefix }
    }

    /// Tokens this group puts into the packed row.
    fn len(&self) -> usize {
        self.prefix
            + self
                .requests
                .iter()
                .map(|(_, r)| r.context.len() + r.continuation.len() - 1 - self.prefix)
                .sum::<usize>()
    }
}

/// One group per document (`share`), or one per request.
fn groups(requests: &[Encoded], first: usize, share: bool) -> Vec<Group<'_>> {
    let numbered = requests.iter().enumerate().map(|(i, r)| (first + i, r));
    if share {
        vec![Group::new(numbered.collect())]
    } else {
        numbered.map(|r| Group::new(vec![r])).collect()
    }
}

/// Summed log-likelihood of each request of `groups`, packed into one forward pass:
/// `out[request]` receives the sum.
fn score_packed(model: &Llama, groups: &[Group], out: &mut [f64]) -> Result<()> {
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    // (row of the logits, target token, request)
    let mut scored: Vec<(u32, u32, usize)> = Vec::new();
    for g in groups {
        let start = ids.len() as u32;
        let shared: Vec<u32> = input(g.requests[0].1).take(g.prefix).collect();
        for (p, &id) in shared.iter().enumerate() {
            ids.push(id);
            rows.push(PackedRow {
                position: p as u32,
                shared: (0, 0),
                own: start,
            });
        }
        for &(req, r) in &g.requests {
            let own = ids.len() as u32;
            for (p, id) in input(r).enumerate().skip(g.prefix) {
                ids.push(id);
                rows.push(PackedRow {
                    position: p as u32,
                    shared: (start, start + g.prefix as u32),
                    own,
                });
            }
            // Input position p predicts token p + 1; the continuation starts at the context's end.
            let row_of = |p: usize| {
                if p < g.prefix {
                    start + p as u32
                } else {
                    own + (p - g.prefix) as u32
                }
            };
            let c = r.context.len();
            for (j, &target) in r.continuation.iter().enumerate() {
                scored.push((row_of(c - 1 + j), target, req));
            }
        }
    }
    let dev = model.device();
    let n = ids.len();
    let packing = Packing::new(rows, dev)?;
    // The final hidden states of the scored rows only (a row may score several requests: the
    // one-token answers of BoolQ and RTE).
    let mut rows: Vec<u32> = scored.iter().map(|s| s.0).collect();
    rows.sort_unstable();
    rows.dedup();
    let kept = model.hidden_states_packed_at(
        &Tensor::from_vec(ids, (1, n), dev)?,
        &packing,
        &Tensor::from_vec(rows.clone(), rows.len(), dev)?,
    )?;
    let sel: Vec<u32> = scored
        .iter()
        .map(|s| rows.partition_point(|&r| r < s.0) as u32)
        .collect();
    let tgt: Vec<u32> = scored.iter().map(|s| s.1).collect();
    let h = kept.index_select(&Tensor::from_vec(sel, scored.len(), dev)?, 0)?;
    let nll = model
        .token_nll(&h, &Tensor::from_vec(tgt, scored.len(), dev)?)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    for (s, v) in scored.iter().zip(nll) {
        out[s.2] -= v as f64;
    }
    Ok(())
}

/// How requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// At most this many documents in one forward pass.
    pub batch_docs: usize,
    /// At most this many tokens in one forward pass (a longer document goes alone). Bounds the
    /// activations' memory; large passes keep the per-pass costs (packing the weights, starting
    /// the threads) small against the arithmetic.
    pub batch_tokens: usize,
    /// Compute the common prefix of a document's requests once.
    pub share: bool,
}

/// Per-task result with the harness's metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskResult {
    pub task: String,
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
    pub seconds: f64,
    /// Requests whose context was cut from the left to fit the model.
    pub truncated: usize,
    pub requests: usize,
    /// Tokens run through the model (after prefix sharing).
    pub tokens: usize,
    pub docs: Vec<DocResult>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DocResult {
    pub index: usize,
    pub gold: usize,
    pub pred: usize,
    pub pred_norm: usize,
    pub loglikelihoods: Vec<f64>,
}

/// First index of the maximum (numpy's `argmax`).
fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// A document's predictions from its log-likelihoods: `pred` the argmax, `pred_norm` the argmax
/// of the log-likelihood over the choice's length in characters (Unicode scalar values, as
/// Python's `len`), as the harness's `process_results`.
pub fn score_doc(doc: &Doc, loglikelihoods: Vec<f64>) -> DocResult {
    let pred = argmax(loglikelihoods.iter().copied());
    let pred_norm = argmax(
        loglikelihoods
            .iter()
            .zip(&doc.choices)
            .map(|(l, c)| l / c.chars().count() as f64),
    );
    DocResult {
        index: doc.index,
        gold: doc.gold,
        pred,
        pred_norm,
        loglikelihoods,
    }
}

/// Mean and the harness's standard error (sample standard deviation / √n).
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Encodes every request of every document.
pub fn encode_docs(tok: &Tokenizer, docs: &[Doc], max_len: usize) -> Result<Vec<Vec<Encoded>>> {
    docs.iter()
        .map(|d| {
            d.requests
                .iter()
                .map(|(c, x)| encode_request(tok, c, x, max_len))
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// Scores `docs` (already encoded): the log-likelihood of every request, per document.
/// `progress(done, total)` is called after each batch.
pub fn loglikelihoods(
    model: &Llama,
    docs: &[Vec<Encoded>],
    opts: ScoreOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Vec<f64>>, usize)> {
    let mut out: Vec<Vec<f64>> = docs.iter().map(|d| vec![0.0; d.len()]).collect();
    let mut tokens = 0;
    let mut first = 0;
    while first < docs.len() {
        // Documents first.. go into one pass while they fit both limits; requests are numbered
        // across the pass: document first + d's start at offsets[d].
        let mut packed: Vec<Group> = Vec::new();
        let (mut offsets, mut n, mut len) = (Vec::new(), 0, 0);
        for d in &docs[first..] {
            let gs = groups(d, n, opts.share);
            let more = gs.iter().map(Group::len).sum::<usize>();
            if !offsets.is_empty()
                && (offsets.len() == opts.batch_docs.max(1) || len + more > opts.batch_tokens)
            {
                break;
            }
            offsets.push(n);
            packed.extend(gs);
            n += d.len();
            len += more;
        }
        tokens += len;
        let mut sums = vec![0.0; n];
        score_packed(model, &packed, &mut sums)?;
        for (slot, o) in out[first..].iter_mut().zip(&offsets) {
            let k = slot.len();
            slot.copy_from_slice(&sums[*o..*o + k]);
        }
        first += offsets.len();
        progress(first, docs.len());
    }
    Ok((out, tokens))
}

/// Scores one task and computes `acc` and `acc_norm` with their standard errors.
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    task: &Task,
    opts: ScoreOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<TaskResult> {
    let start = std::time::Instant::now();
    let max_len = model.cfg.max_position_embeddings;
    let encoded = encode_docs(tok, &task.docs, max_len)?;
    let truncated = encoded.iter().flatten().filter(|e| e.truncated).count();
    let (lls, tokens) = loglikelihoods(model, &encoded, opts, progress)?;
    let docs: Vec<DocResult> = task
        .docs
        .iter()
        .zip(lls)
        .map(|(d, ll)| score_doc(d, ll))
        .collect();
    let hits = |f: fn(&DocResult) -> usize| -> Vec<f64> {
        docs.iter().map(|d| (f(d) == d.gold) as u8 as f64).collect()
    };
    let (acc, acc_stderr) = mean_stderr(&hits(|d| d.pred));
    let (acc_norm, acc_norm_stderr) = mean_stderr(&hits(|d| d.pred_norm));
    Ok(TaskResult {
        task: task.name.to_string(),
        n: docs.len(),
        acc,
        acc_stderr,
        acc_norm,
        acc_norm_stderr,
        seconds: start.elapsed().as_secs_f64(),
        truncated,
        requests: encoded.iter().map(Vec::len).sum(),
        tokens,
        docs,
    })
}
