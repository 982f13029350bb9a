//! Perplexity with the Wanda / SparseGPT protocol (`../shared/docs/SPP.md` §5):
//! the text is tokenised once (with whatever special tokens the tokenizer adds by default, e.g.
//! LLaMA's BOS at the very start, none for SmolLM2), cut into **non-overlapping** windows of
//! `seqlen` tokens (stride = seqlen, the tail shorter than a window dropped), and every position
//! of every window that has a next token inside the window is scored:
//! `ppl = exp(mean over windows and positions of −log p(next token))`.
//! llama.cpp's `perplexity` scores only the second half of each window: a different protocol.

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::model::Llama;
use candle_core::{DType, Tensor};
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PplResult {
    pub ppl: f64,
    pub mean_nll: f64,
    pub windows: usize,
    pub seqlen: usize,
    pub stride: usize,
    /// Positions scored: windows × (seqlen − 1).
    pub scored_tokens: usize,
    /// Tokens in the windows: windows × seqlen.
    pub tokens: usize,
    /// Tokens in the whole text (the tail beyond the last full window is dropped).
    pub text_tokens: usize,
    /// Whether the token stream starts with the BOS token.
    pub bos: bool,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// Seconds of each window, in order. On the CPU windows run concurrently (one per core), so
    /// these add up to more than `seconds`.
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

/// The documents of a text file: the whole file for plain text, one per line's `text` field for
/// JSONL (`.jsonl`). CRLF is normalised to LF.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let raw = std::fs::read_to_string(path).at(path)?;
    if path.extension().is_none_or(|e| e != "jsonl") {
        return Ok(vec![raw.replace("\r\n", "\n")]);
    }
    let mut docs = Vec::new();
    for (i, line) in raw
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Msg(format!("{}:{}: invalid JSON ({e})", path.display(), i + 1)))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => docs.push(t.replace("\r\n", "\n")),
            None => bail!("{}:{}: no string field \"text\"", path.display(), i + 1),
        }
    }
    Ok(docs)
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
    if seqlen < 2 {
        bail!("--seqlen must be at least 2 (got {seqlen})");
    }
    if seqlen > model.cfg.max_position_embeddings {
        bail!(
            "--seqlen {seqlen} exceeds the model's max_position_embeddings {}: choose a smaller --seqlen",
            model.cfg.max_position_embeddings
        );
    }
    let available = ids.len() / seqlen;
    if available == 0 {
        bail!(
            "the text has {} tokens, fewer than one window of --seqlen {seqlen}: use a longer text or a smaller --seqlen",
            ids.len()
        );
    }
    let windows = max_windows.map_or(available, |m| m.min(available)).max(1);
    let start = std::time::Instant::now();
    let mut total = 0f64;
    let mut window_seconds = Vec::with_capacity(windows);
    // Windows are independent: on the CPU several run at once, one per core (crate::par); the
    // sum still adds them up in window order.
    let window = |w: usize| -> Result<(f64, f64)> {
        let t = std::time::Instant::now();
        let win = &ids[w * seqlen..(w + 1) * seqlen];
        let input = Tensor::new(&win[..seqlen - 1], model.device())?.unsqueeze(0)?;
        let targets = Tensor::new(&win[1..], model.device())?;
        let hidden = model.hidden_states(&input, None)?.squeeze(0)?;
        let nll = model
            .token_nll(&hidden, &targets)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        Ok((nll, t.elapsed().as_secs_f64()))
    };
    let sink = |w: usize, (nll, secs): (f64, f64)| {
        total += nll;
        window_seconds.push(secs);
        progress(w + 1, windows);
        Ok(())
    };
    crate::par::items_in_order(model.device().is_cpu(), windows, window, sink)?;
    let seconds = start.elapsed().as_secs_f64();
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
        window_seconds,
    })
}
