//! Text generation: a prefill of the prompt, then one KV-cached step per token; greedy at
//! temperature 0, otherwise temperature sampling with optional nucleus (top-p) truncation.

use crate::bail;
use crate::error::Result;
use crate::model::{KvCache, Llama};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: None,
            seed: 0,
        }
    }
}

pub struct Sampler {
    rng: rand::rngs::StdRng,
    temperature: f64,
    top_p: Option<f64>,
}

impl Sampler {
    pub fn new(opts: &SamplingOptions) -> Result<Self> {
        if opts.temperature.is_nan() || opts.temperature < 0.0 {
            bail!("--temperature must be ≥ 0 (got {})", opts.temperature);
        }
        if let Some(p) = opts.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1] (got {p})");
            }
        }
        Ok(Self {
            rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
            temperature: opts.temperature,
            top_p: opts.top_p,
        })
    }

    /// Picks the next token from logits `[vocab]`: greedy at temperature 0, else a draw from
    /// [`distribution`].
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
        if logits.is_empty() {
            bail!("empty logits");
        }
        let probs = distribution(&logits, self.temperature, self.top_p);
        if self.temperature == 0.0 {
            return Ok(probs[0].0);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f64>() * total;
        for &(i, p) in &probs {
            if r < p {
                return Ok(i);
            }
            r -= p;
        }
        Ok(probs.last().map(|p| p.0).unwrap_or(0))
    }
}

/// The distribution the next token is drawn from, as `(token, probability)` for every token
/// that can be drawn, in draw order; the probabilities sum to 1.
///
/// Temperature 0: the argmax alone (ties go to the lowest id). Otherwise
/// `softmax(logits / temperature)`; with `top_p`, only the most probable tokens up to and
/// including the first whose cumulative probability reaches `top_p` are kept (equal
/// probabilities in id order), and renormalised. `temperature` ≥ 0 and `top_p` in (0, 1] are
/// checked by [`Sampler::new`].
pub fn distribution(logits: &[f32], temperature: f64, top_p: Option<f64>) -> Vec<(u32, f64)> {
    if logits.is_empty() {
        return Vec::new();
    }
    if temperature == 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return vec![(best as u32, 1.0)];
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    if let Some(top_p) = top_p {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (k, p) in probs.iter().enumerate() {
            acc += p.1;
            if acc >= top_p {
                keep = k + 1;
                break;
            }
        }
        probs.truncate(keep);
        let kept: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= kept);
    }
    probs
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stopped_at_eos: bool,
    pub prefill_seconds: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    /// Bytes of weights each decode step reads ([`Llama::decode_weight_bytes`]).
    pub weight_bytes_per_token: u64,
}

impl GenerationStats {
    /// `[N prompt tokens, M generated, prefill S s (P tok/s), decode T tok/s, W MB of weights per
    /// token, G GB/s]`.
    pub fn line(&self) -> String {
        let mb = self.weight_bytes_per_token as f64 / 1e6;
        format!(
            "[{} prompt tokens, {} generated{}, prefill {:.2} s ({:.1} tok/s), decode {:.1} tok/s, \
             {mb:.1} MB of weights per token, {:.2} GB/s]",
            self.prompt_tokens,
            self.generated_tokens,
            if self.stopped_at_eos {
                ", stopped at EOS"
            } else {
                ""
            },
            self.prefill_seconds,
            self.prefill_tokens_per_second,
            self.decode_tokens_per_second,
            mb * self.decode_tokens_per_second / 1e3
        )
    }
}

/// Generates after `prompt`, calling `on_token` with each new token (EOS is not passed on).
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    eos: &[u32],
    opts: &SamplingOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<GenerationStats> {
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenisation: give some text");
    }
    let max_pos = model.cfg.max_position_embeddings;
    if prompt.len() >= max_pos {
        bail!(
            "the prompt has {} tokens; the model's context is {max_pos}",
            prompt.len()
        );
    }
    let mut sampler = Sampler::new(opts)?;
    let mut cache = KvCache::new(model.layers.len());
    let t0 = std::time::Instant::now();
    let mut logits = model.forward_step(
        &Tensor::new(prompt, model.device())?.unsqueeze(0)?,
        &mut cache,
    )?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut generated = 0;
    let mut stopped_at_eos = false;
    let budget = opts.max_new_tokens.min(max_pos - prompt.len());
    while generated < budget {
        let next = sampler.sample(&logits.squeeze(0)?)?;
        generated += 1;
        if eos.contains(&next) {
            stopped_at_eos = true;
            break;
        }
        on_token(next)?;
        if generated == budget {
            break;
        }
        logits = model.forward_step(
            &Tensor::new(&[next], model.device())?.unsqueeze(0)?,
            &mut cache,
        )?;
    }
    Ok(GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: generated,
        stopped_at_eos,
        prefill_seconds,
        prefill_tokens_per_second: prompt.len() as f64 / prefill_seconds.max(1e-9),
        decode_tokens_per_second: generated as f64 / t1.elapsed().as_secs_f64().max(1e-9),
        weight_bytes_per_token: model.decode_weight_bytes(),
    })
}
