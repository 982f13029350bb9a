//! Perplexity with the Wanda / SparseGPT protocol (`docs/METHOD.md` §6.1):
//! the text is tokenised once (with whatever special tokens the tokenizer adds by default, e.g.
//! LLaMA's BOS at the very start, none for SmolLM2), cut into **non-overlapping** windows of
//! `seqlen` tokens (stride = seqlen, the tail shorter than a window dropped), and every position
//! of every window that has a next token inside the window is scored:
//! `ppl = exp(mean over windows and positions of −log p(next token))`.
//! llama.cpp's `perplexity` scores only the second half of each window: a different protocol.

use crate::bail;
use crate::error::Result;
use crate::model::{Llama, StreamedModel};
use candle_core::{DType, Tensor};
use std::path::Path;

pub use crate::data::read_documents;

/// Read back (from `ppl.json`), `null` (an overflowed mean, which JSON cannot hold as a number)
/// is NaN, and a field other than the window counts may be missing (0, false or empty then).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PplResult {
    #[serde(deserialize_with = "crate::record::null_as_nan")]
    pub ppl: f64,
    #[serde(default, deserialize_with = "crate::record::null_as_nan")]
    pub mean_nll: f64,
    pub windows: usize,
    pub seqlen: usize,
    #[serde(default)]
    pub stride: usize,
    /// Positions scored: windows × (seqlen − 1).
    #[serde(default)]
    pub scored_tokens: usize,
    /// Tokens in the windows: windows × seqlen.
    pub tokens: usize,
    /// Tokens in the whole text (the tail beyond the last full window is dropped).
    #[serde(default)]
    pub text_tokens: usize,
    /// Whether the token stream starts with the BOS token.
    #[serde(default)]
    pub bos: bool,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Seconds of each window, in order. On the CPU windows run concurrently (one per core), so
    /// these add up to more than `seconds`.
    #[serde(default)]
    pub window_seconds: Vec<f64>,
}

impl PplResult {
    /// The one-line result naming the protocol.
    pub fn line(&self) -> String {
        format!(
            "ppl {:.4} windows {} seqlen {} stride {} tokens {} scored {} bos {} text_tokens {} protocol non-overlapping-all-positions {:.1} tok/s",
            self.ppl, self.windows, self.seqlen, self.stride, self.tokens, self.scored_tokens, self.bos, self.text_tokens, self.tokens_per_second
        )
    }
}

/// Reads an evaluation text: plain text as is, or the `text` fields of a JSONL file joined by
/// blank lines. CRLF is normalised to LF.
pub fn read_text(path: &Path) -> Result<String> {
    Ok(read_documents(path)?.join("\n\n"))
}

/// Perplexity of `ids` under `model`; `progress(done, total)` is called after each window.
pub fn perplexity(
    model: &Llama,
    ids: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    bos_id: Option<u32>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplResult> {
    let windows = window_count(ids.len(), seqlen, max_windows, &model.cfg)?;
    let start = std::time::Instant::now();
    let mut nlls = Vec::with_capacity(windows);
    // Windows at once, one per core, each with its kernels serial (crate::par); the NLL is summed
    // in window order below, so the result does not depend on the thread count.
    let window = |w: usize| -> Result<(f64, f64)> {
        let t = std::time::Instant::now();
        let (input, targets) = window_tensors(ids, w, seqlen, model.device())?;
        let hidden = model.hidden_states(&input, None)?.squeeze(0)?;
        Ok((
            window_nll(model, &hidden, &targets)?,
            t.elapsed().as_secs_f64(),
        ))
    };
    let sink = |w: usize, r: (f64, f64)| {
        nlls.push(r);
        progress(w + 1, windows);
        Ok(())
    };
    crate::par::items_in_order(model.device().is_cpu(), windows, window, sink)?;
    finish(nlls, ids, seqlen, bos_id, start.elapsed().as_secs_f64())
}

/// Hidden states of at most this many bytes go through the blocks together in
/// [`perplexity_streamed`] (more windows are taken in several groups).
pub const ACTIVATION_BUDGET: u64 = 1 << 30;

/// Bytes of the hidden states one window holds between blocks in [`perplexity_streamed`].
pub fn window_bytes(cfg: &crate::model::LlamaConfig, dtype: DType, seqlen: usize) -> u64 {
    (seqlen * cfg.hidden_size * dtype.size_in_bytes()) as u64
}

/// [`perplexity`] of a model whose blocks stay on disk: the windows' hidden states walk through
/// the blocks, one block in memory at a time (two while the next is read). Windows are taken in
/// groups whose hidden states fit in `activation_budget` bytes; each group reads the blocks once.
/// Every window computes exactly what [`perplexity`] computes, so the results are identical.
pub fn perplexity_streamed(
    model: &StreamedModel,
    ids: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    bos_id: Option<u32>,
    activation_budget: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplResult> {
    let windows = window_count(ids.len(), seqlen, max_windows, model.cfg())?;
    let per_window = window_bytes(model.cfg(), model.compute_dtype(), seqlen).max(1);
    let group = ((activation_budget / per_window) as usize).clamp(1, windows);
    let shell = model.shell();
    let dev = shell.device().clone();
    let start = std::time::Instant::now();
    let mut nlls = Vec::with_capacity(windows);
    let steps = windows.div_ceil(group) * (model.n_layers() + 2);
    let mut step = 0;
    for first in (0..windows).step_by(group) {
        let ws: Vec<usize> = (first..(first + group).min(windows)).collect();
        let mut secs = vec![0f64; ws.len()];
        let t = std::time::Instant::now();
        let inputs = ws
            .iter()
            .map(|&w| window_tensors(ids, w, seqlen, &dev))
            .collect::<Result<Vec<_>>>()?;
        let tokens: Vec<&[u32]> = ws
            .iter()
            .map(|&w| &ids[w * seqlen..(w + 1) * seqlen - 1])
            .collect();
        let mut xs = model.embed_windows(&tokens)?;
        let share = t.elapsed().as_secs_f64() / ws.len() as f64;
        secs.iter_mut().for_each(|s| *s += share);
        step += 1;
        progress(step, steps);
        let mut blocks = model.blocks();
        for _ in 0..model.n_layers() {
            let block = blocks.next_block()?;
            let out = crate::par::map_owned(dev.is_cpu(), std::mem::take(&mut xs), |_, x| {
                let t = std::time::Instant::now();
                Ok((shell.run_block(&block, &x)?, t.elapsed().as_secs_f64()))
            })?;
            for (k, (y, s)) in out.into_iter().enumerate() {
                secs[k] += s;
                xs.push(y);
            }
            step += 1;
            progress(step, steps);
        }
        let head = model.with_head()?;
        let mut group_nll = Vec::with_capacity(ws.len());
        crate::par::items_in_order(
            dev.is_cpu(),
            ws.len(),
            |k| {
                let t = std::time::Instant::now();
                let hidden = head.norm.forward(&xs[k])?.squeeze(0)?;
                Ok((
                    window_nll(&head, &hidden, &inputs[k].1)?,
                    t.elapsed().as_secs_f64(),
                ))
            },
            |k, (nll, s)| {
                group_nll.push((nll, secs[k] + s));
                Ok(())
            },
        )?;
        nlls.extend(group_nll);
        step += 1;
        progress(step, steps);
    }
    finish(nlls, ids, seqlen, bos_id, start.elapsed().as_secs_f64())
}

/// The number of windows to score, after checking the protocol's preconditions.
fn window_count(
    tokens: usize,
    seqlen: usize,
    max_windows: Option<usize>,
    cfg: &crate::model::LlamaConfig,
) -> Result<usize> {
    if seqlen < 2 {
        bail!("--seqlen must be at least 2 (got {seqlen})");
    }
    if seqlen > cfg.max_position_embeddings {
        bail!(
            "--seqlen {seqlen} exceeds the model's max_position_embeddings {}: choose a smaller --seqlen",
            cfg.max_position_embeddings
        );
    }
    let available = tokens / seqlen;
    if available == 0 {
        bail!(
            "the text has {tokens} tokens, fewer than one window of --seqlen {seqlen}: use a longer text or a smaller --seqlen"
        );
    }
    Ok(max_windows.map_or(available, |m| m.min(available)).max(1))
}

/// Inputs `[1, seqlen − 1]` and targets `[seqlen − 1]` of window `w`.
fn window_tensors(
    ids: &[u32],
    w: usize,
    seqlen: usize,
    dev: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let win = &ids[w * seqlen..(w + 1) * seqlen];
    Ok((
        Tensor::new(&win[..seqlen - 1], dev)?.unsqueeze(0)?,
        Tensor::new(&win[1..], dev)?,
    ))
}

/// The summed NLL of a window from its final hidden states `[T, hidden]`.
fn window_nll(model: &Llama, hidden: &Tensor, targets: &Tensor) -> Result<f64> {
    Ok(model
        .token_nll(hidden, targets)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// The result from each window's (NLL, compute seconds), in window order.
fn finish(
    nlls: Vec<(f64, f64)>,
    ids: &[u32],
    seqlen: usize,
    bos_id: Option<u32>,
    seconds: f64,
) -> Result<PplResult> {
    let windows = nlls.len();
    let total: f64 = nlls.iter().map(|(n, _)| n).sum();
    let scored = windows * (seqlen - 1);
    let mean_nll = total / scored as f64;
    if !mean_nll.is_finite() {
        bail!(
            "the mean negative log-likelihood is {mean_nll}: the model produced non-finite logits"
        );
    }
    Ok(PplResult {
        ppl: mean_nll.exp(),
        mean_nll,
        windows,
        seqlen,
        stride: seqlen,
        scored_tokens: scored,
        tokens: windows * seqlen,
        text_tokens: ids.len(),
        bos: bos_id.is_some() && ids.first() == bos_id.as_ref(),
        seconds,
        tokens_per_second: (windows * seqlen) as f64 / seconds.max(1e-9),
        window_seconds: nlls.into_iter().map(|(_, s)| s).collect(),
    })
}
