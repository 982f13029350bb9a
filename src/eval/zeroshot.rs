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
//! which is what the harness computes; both give the same scores. On the CPU the passes of all
//! tasks run concurrently, one per core ([`score_tasks`]).

use super::tasks::{Doc, Task};
use crate::bail;
use crate::error::Result;
use crate::model::{Llama, PackedRow, Packing, StreamedModel};
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

/// One forward pass of packed groups: the token row, its packing, the rows whose final hidden
/// states are needed, and what each scored position means.
struct Pass {
    /// The packed token row, as values and as a `[1, N]` tensor.
    tokens: Vec<u32>,
    ids: Tensor,
    packing: Packing,
    /// Distinct rows of the logits that are scored, ascending (u32 tensor and values).
    rows: Tensor,
    row_values: Vec<u32>,
    /// (row of the logits, target token, request)
    scored: Vec<(u32, u32, usize)>,
}

impl Pass {
    fn new(groups: &[Group], dev: &candle_core::Device) -> Result<Self> {
        let mut ids = Vec::new();
        let mut rows = Vec::new();
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
                // Input position p predicts token p + 1; the continuation starts at the
                // context's end.
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
        let n = ids.len();
        // The final hidden states of the scored rows only (a row may score several requests:
        // the one-token answers of BoolQ and RTE).
        let mut row_values: Vec<u32> = scored.iter().map(|s| s.0).collect();
        row_values.sort_unstable();
        row_values.dedup();
        Ok(Self {
            ids: Tensor::from_vec(ids.clone(), (1, n), dev)?,
            tokens: ids,
            packing: Packing::new(rows, dev)?,
            rows: Tensor::from_vec(row_values.clone(), row_values.len(), dev)?,
            row_values,
            scored,
        })
    }

    /// Adds each request's log-likelihood to `out[request]`, from the final hidden states of
    /// the scored rows (`kept`, `[rows, hidden]`) and `head` (the model with its output head).
    fn score(&self, head: &Llama, kept: &Tensor, out: &mut [f64]) -> Result<()> {
        let dev = kept.device();
        let n = self.scored.len();
        let sel: Vec<u32> = self
            .scored
            .iter()
            .map(|s| self.row_values.partition_point(|&r| r < s.0) as u32)
            .collect();
        let tgt: Vec<u32> = self.scored.iter().map(|s| s.1).collect();
        let h = kept.index_select(&Tensor::from_vec(sel, n, dev)?, 0)?;
        let nll = head
            .token_nll(&h, &Tensor::from_vec(tgt, n, dev)?)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        for (s, v) in self.scored.iter().zip(nll) {
            out[s.2] -= v as f64;
        }
        Ok(())
    }
}

/// Summed log-likelihood of each request of `groups`, packed into one forward pass:
/// `out[request]` receives the sum.
fn score_packed(model: &Llama, groups: &[Group], out: &mut [f64]) -> Result<()> {
    let pass = Pass::new(groups, model.device())?;
    let kept = model.hidden_states_packed_at(&pass.ids, &pass.packing, &pass.rows)?;
    pass.score(model, &kept, out)
}

/// How requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// At most this many documents in one forward pass.
    pub batch_docs: usize,
    /// At most this many tokens in one forward pass (a longer document goes alone). Bounds the
    /// activations' memory (on the CPU one pass runs per core); large passes keep the per-pass
    /// costs (packing the weights) small against the arithmetic.
    pub batch_tokens: usize,
    /// Compute the common prefix of a document's requests once.
    pub share: bool,
}

/// Per-task result with the harness's metrics. Read back (from `tasks.json`), a metric that JSON
/// held as `null` (not finite) is NaN, and the other fields may be missing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskResult {
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub n: usize,
    #[serde(
        default = "crate::record::nan",
        deserialize_with = "crate::record::null_as_nan"
    )]
    pub acc: f64,
    #[serde(
        default = "crate::record::nan",
        deserialize_with = "crate::record::null_as_nan"
    )]
    pub acc_stderr: f64,
    #[serde(
        default = "crate::record::nan",
        deserialize_with = "crate::record::null_as_nan"
    )]
    pub acc_norm: f64,
    #[serde(
        default = "crate::record::nan",
        deserialize_with = "crate::record::null_as_nan"
    )]
    pub acc_norm_stderr: f64,
    /// Compute time of the task's passes ([`Scores::seconds`]).
    #[serde(default)]
    pub seconds: f64,
    /// Requests whose context was cut from the left to fit the model.
    #[serde(default)]
    pub truncated: usize,
    #[serde(default)]
    pub requests: usize,
    /// Tokens run through the model (after prefix sharing).
    #[serde(default)]
    pub tokens: usize,
    #[serde(default)]
    pub docs: Vec<DocResult>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DocResult {
    pub index: usize,
    pub gold: usize,
    pub pred: usize,
    pub pred_norm: usize,
    #[serde(deserialize_with = "crate::record::nulls_as_nan")]
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

/// Encodes every request of every document (documents in parallel).
pub fn encode_docs(tok: &Tokenizer, docs: &[Doc], max_len: usize) -> Result<Vec<Vec<Encoded>>> {
    use rayon::prelude::*;
    docs.par_iter()
        .map(|d| {
            d.requests
                .iter()
                .map(|(c, x)| encode_request(tok, c, x, max_len))
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// Tokens a document puts into a pass.
fn doc_len(d: &[Encoded], share: bool) -> usize {
    groups(d, 0, share).iter().map(Group::len).sum()
}

/// Documents in order, each pass as many as fit in `cap` tokens and `batch_docs` documents (a
/// document longer than `cap` alone).
fn greedy(lens: &[usize], cap: usize, batch_docs: usize) -> Vec<std::ops::Range<usize>> {
    let mut passes = Vec::new();
    let (mut first, mut len) = (0, 0);
    for (d, &l) in lens.iter().enumerate() {
        if d > first && (d - first == batch_docs || len + l > cap) {
            passes.push(first..d);
            (first, len) = (d, 0);
        }
        len += l;
    }
    if first < lens.len() {
        passes.push(first..lens.len());
    }
    passes
}

/// One task's passes: as few as `opts`' limits allow, and among those the largest as small as
/// possible (the smallest token cap that needs no more passes than `batch_tokens` does), so the
/// token counts come out about even. Even passes keep the cores busy to the end when they run
/// concurrently.
fn passes(docs: &[Vec<Encoded>], opts: ScoreOptions) -> Vec<std::ops::Range<usize>> {
    let lens: Vec<usize> = docs.iter().map(|d| doc_len(d, opts.share)).collect();
    let batch_docs = opts.batch_docs.max(1);
    let fewest = greedy(&lens, opts.batch_tokens, batch_docs).len();
    let (mut lo, mut hi) = (1, opts.batch_tokens.max(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if greedy(&lens, mid, batch_docs).len() <= fewest {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    greedy(&lens, lo, batch_docs)
}

/// The log-likelihoods of one task's requests, per document.
#[derive(Debug, Clone)]
pub struct Scores {
    pub loglikelihoods: Vec<Vec<f64>>,
    /// Tokens run through the model (after prefix sharing).
    pub tokens: usize,
    /// Compute time of this task's passes. On the CPU passes run concurrently (one per core), so
    /// the tasks' times add up to more than the wall time.
    pub seconds: f64,
}

/// Scores the documents of several tasks (already encoded): each task is cut into passes
/// ([`passes`]) and the passes of all tasks run concurrently on the CPU, one per core
/// ([`crate::par`]), so no core idles at a task's end. `progress(task, done, total)` is called
/// after each pass, in order.
pub fn score_tasks(
    model: &Llama,
    tasks: &[&[Vec<Encoded>]],
    opts: ScoreOptions,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<Vec<Scores>> {
    let plan = plan(tasks, opts);
    // Requests are numbered across the pass, documents in order.
    let run = |i: usize| -> Result<(Vec<f64>, usize, f64)> {
        let start = std::time::Instant::now();
        let (packed, n) = pass_groups(tasks, &plan[i], opts);
        let mut sums = vec![0.0; n];
        score_packed(model, &packed, &mut sums)?;
        let len = packed.iter().map(Group::len).sum();
        Ok((sums, len, start.elapsed().as_secs_f64()))
    };
    let mut out = empty_scores(tasks);
    crate::par::items_in_order(model.device().is_cpu(), plan.len(), run, |i, r| {
        place(tasks, &plan[i], r, &mut out, progress);
        Ok(())
    })?;
    Ok(out)
}

/// Bytes of hidden states per packed token in [`score_tasks_streamed`].
pub fn token_bytes(model: &StreamedModel) -> u64 {
    (model.cfg().hidden_size * model.dtype().size_in_bytes()) as u64
}

/// [`score_tasks`] of a model whose blocks stay on disk: the passes' hidden states walk through
/// the blocks, one block in memory at a time (two while the next is read), in groups of passes
/// whose hidden states fit in `activation_budget` bytes; each group reads the blocks once. Every
/// pass computes exactly what [`score_tasks`] computes, so the scores are identical.
pub fn score_tasks_streamed(
    model: &StreamedModel,
    tasks: &[&[Vec<Encoded>]],
    opts: ScoreOptions,
    activation_budget: u64,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<Vec<Scores>> {
    let plan = plan(tasks, opts);
    let shell = model.shell();
    let dev = shell.device().clone();
    let cpu = dev.is_cpu();
    let per_token = token_bytes(model);
    // (groups, requests, tokens) of every pass.
    let sized: Vec<(Vec<Group>, usize, usize)> = plan
        .iter()
        .map(|item| {
            let (packed, n) = pass_groups(tasks, item, opts);
            let len = packed.iter().map(Group::len).sum();
            (packed, n, len)
        })
        .collect();
    let mut out = empty_scores(tasks);
    let mut first = 0;
    while first < plan.len() {
        // As many passes as fit the budget (at least one).
        let mut end = first;
        let mut bytes = 0u64;
        while end < plan.len() {
            let len = sized[end].2 as u64 * per_token;
            if end > first && bytes + len > activation_budget {
                break;
            }
            bytes += len;
            end += 1;
        }
        let t = std::time::Instant::now();
        let counts: Vec<(usize, usize)> = sized[first..end].iter().map(|s| (s.1, s.2)).collect();
        let passes = sized[first..end]
            .iter()
            .map(|(packed, _, _)| Pass::new(packed, &dev))
            .collect::<Result<Vec<_>>>()?;
        let tokens: Vec<&[u32]> = passes.iter().map(|p| p.tokens.as_slice()).collect();
        let mut xs = model.embed_windows(&tokens)?;
        let mut secs = vec![t.elapsed().as_secs_f64() / passes.len() as f64; passes.len()];
        let mut blocks = model.blocks();
        let n_layers = model.n_layers();
        for i in 0..n_layers {
            let block = blocks.next_block()?;
            let out = crate::par::map_owned(cpu, std::mem::take(&mut xs), |k, x| {
                let t = std::time::Instant::now();
                let p = &passes[k];
                let y = if i + 1 == n_layers {
                    shell.run_block_at(&block, &x, &p.packing, &p.rows)?
                } else {
                    shell.run_block_packed(&block, &x, &p.packing)?
                };
                Ok((y, t.elapsed().as_secs_f64()))
            })?;
            for (k, (y, s)) in out.into_iter().enumerate() {
                secs[k] += s;
                xs.push(y);
            }
        }
        let head = model.with_head()?;
        crate::par::items_in_order(
            cpu,
            passes.len(),
            |k| {
                let t = std::time::Instant::now();
                let p = &passes[k];
                let mut x = xs[k].clone();
                if n_layers == 0 {
                    x = x.index_select(&p.rows, 1)?;
                }
                let kept = head.norm.forward(&x)?.squeeze(0)?;
                let mut sums = vec![0.0; counts[k].0];
                p.score(&head, &kept, &mut sums)?;
                Ok((sums, counts[k].1, secs[k] + t.elapsed().as_secs_f64()))
            },
            |k, r| {
                place(tasks, &plan[first + k], r, &mut out, progress);
                Ok(())
            },
        )?;
        first = end;
    }
    Ok(out)
}

type PlanItem = (usize, std::ops::Range<usize>);

/// The passes of every task: (task, range of its documents).
fn plan(tasks: &[&[Vec<Encoded>]], opts: ScoreOptions) -> Vec<PlanItem> {
    tasks
        .iter()
        .enumerate()
        .flat_map(|(t, docs)| passes(docs, opts).into_iter().map(move |r| (t, r)))
        .collect()
}

/// The groups of one pass and its number of requests.
fn pass_groups<'a>(
    tasks: &[&'a [Vec<Encoded>]],
    (t, range): &PlanItem,
    opts: ScoreOptions,
) -> (Vec<Group<'a>>, usize) {
    let mut packed = Vec::new();
    let mut n = 0;
    for d in &tasks[*t][range.clone()] {
        packed.extend(groups(d, n, opts.share));
        n += d.len();
    }
    (packed, n)
}

fn empty_scores(tasks: &[&[Vec<Encoded>]]) -> Vec<Scores> {
    tasks
        .iter()
        .map(|docs| Scores {
            loglikelihoods: docs.iter().map(|d| vec![0.0; d.len()]).collect(),
            tokens: 0,
            seconds: 0.0,
        })
        .collect()
}

/// Puts one pass's (sums, tokens, seconds) into its task's scores.
fn place(
    tasks: &[&[Vec<Encoded>]],
    (t, range): &PlanItem,
    (sums, len, seconds): (Vec<f64>, usize, f64),
    out: &mut [Scores],
    progress: &mut dyn FnMut(usize, usize, usize),
) {
    let o = &mut out[*t];
    let mut k = 0;
    for slot in &mut o.loglikelihoods[range.clone()] {
        let n = slot.len();
        slot.copy_from_slice(&sums[k..k + n]);
        k += n;
    }
    o.tokens += len;
    o.seconds += seconds;
    progress(*t, range.end, tasks[*t].len());
}

/// Scores one task's documents (already encoded): the log-likelihood of every request, per
/// document, and the tokens run. `progress(done, total)` is called after each pass.
pub fn loglikelihoods(
    model: &Llama,
    docs: &[Vec<Encoded>],
    opts: ScoreOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Vec<f64>>, usize)> {
    let mut scores = score_tasks(model, &[docs], opts, &mut |_, done, total| {
        progress(done, total)
    })?;
    let s = scores.remove(0);
    Ok((s.loglikelihoods, s.tokens))
}

/// Scores tasks and computes `acc` and `acc_norm` with their standard errors, per task. The
/// passes of all tasks run together ([`score_tasks`]); `progress(task, done, total)` is called
/// after each pass.
pub fn evaluate(
    model: Model,
    tok: &Tokenizer,
    tasks: &[Task],
    opts: ScoreOptions,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<Vec<TaskResult>> {
    let max_len = match model {
        Model::Resident(m) => m.cfg.max_position_embeddings,
        Model::Streamed(m, _) => m.cfg().max_position_embeddings,
    };
    let encoded = tasks
        .iter()
        .map(|t| encode_docs(tok, &t.docs, max_len))
        .collect::<Result<Vec<_>>>()?;
    let slices: Vec<&[Vec<Encoded>]> = encoded.iter().map(Vec::as_slice).collect();
    let scores = match model {
        Model::Resident(m) => score_tasks(m, &slices, opts, progress)?,
        Model::Streamed(m, budget) => score_tasks_streamed(m, &slices, opts, budget, progress)?,
    };
    Ok(tasks
        .iter()
        .zip(&encoded)
        .zip(scores)
        .map(|((task, encoded), s)| task_result(task, encoded, s))
        .collect())
}

/// The model [`evaluate`] scores with: every block in memory, or blocks read from disk one at a
/// time with hidden states of at most the given bytes at once.
#[derive(Clone, Copy)]
pub enum Model<'a> {
    Resident(&'a Llama),
    Streamed(&'a StreamedModel, u64),
}

/// A task's metrics from its scores.
fn task_result(task: &Task, encoded: &[Vec<Encoded>], s: Scores) -> TaskResult {
    let docs: Vec<DocResult> = task
        .docs
        .iter()
        .zip(s.loglikelihoods)
        .map(|(d, ll)| score_doc(d, ll))
        .collect();
    let hits = |f: fn(&DocResult) -> usize| -> Vec<f64> {
        docs.iter().map(|d| (f(d) == d.gold) as u8 as f64).collect()
    };
    let (acc, acc_stderr) = mean_stderr(&hits(|d| d.pred));
    let (acc_norm, acc_norm_stderr) = mean_stderr(&hits(|d| d.pred_norm));
    TaskResult {
        task: task.name.to_string(),
        n: docs.len(),
        acc,
        acc_stderr,
        acc_norm,
        acc_norm_stderr,
        seconds: s.seconds,
        truncated: encoded.iter().flatten().filter(|e| e.truncated).count(),
        requests: encoded.iter().map(Vec::len).sum(),
        tokens: s.tokens,
        docs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Documents of one request each, `len` input tokens apiece.
    fn docs(lens: &[usize]) -> Vec<Vec<Encoded>> {
        lens.iter()
            .map(|&l| {
                vec![Encoded {
                    context: vec![1; l],
                    continuation: vec![2],
                    truncated: false,
                }]
            })
            .collect()
    }

    fn opts(batch_docs: usize, batch_tokens: usize) -> ScoreOptions {
        ScoreOptions {
            batch_docs,
            batch_tokens,
            share: true,
        }
    }

    #[test]
    fn passes_are_as_few_as_greedy_and_even() {
        // Greedy at 30 tokens: 30 + 20; even: 25 + 25.
        assert_eq!(passes(&docs(&[5; 10]), opts(100, 30)), vec![0..5, 5..10]);
        // The document limit sets the count: 4 passes for 10 documents, 3 each at most.
        assert_eq!(
            passes(&docs(&[5; 10]), opts(3, 1000)),
            vec![0..3, 3..6, 6..9, 9..10]
        );
        // A document longer than the budget goes alone; the rest are split evenly.
        assert_eq!(
            passes(&docs(&[4, 4, 50, 4, 4, 4, 4]), opts(100, 12)),
            vec![0..2, 2..3, 3..5, 5..7]
        );
        // Every document once, in order, each pass within both limits.
        let lens: Vec<usize> = (0..57).map(|i| 1 + (i * 37) % 23).collect();
        for (batch_docs, batch_tokens) in [(1, 1000), (4, 60), (100, 45), (100, 1)] {
            let p = passes(&docs(&lens), opts(batch_docs, batch_tokens));
            let greedy_count = greedy(&lens, batch_tokens, batch_docs).len();
            assert_eq!(p.len(), greedy_count);
            assert_eq!(p.first().map(|r| r.start), Some(0));
            assert_eq!(p.last().map(|r| r.end), Some(lens.len()));
            for w in p.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            for r in &p {
                let tokens: usize = lens[r.clone()].iter().sum();
                assert!(r.len() <= batch_docs);
                assert!(r.len() == 1 || tokens <= batch_tokens, "{r:?}: {tokens}");
            }
        }
    }
}
