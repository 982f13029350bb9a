//! Attention of new tokens against a KV cache held on the CPU (generation).
//!
//! Each block's rotated keys and values live in one buffer per KV head that grows by doubling,
//! so a decode step appends one row per head instead of concatenating the whole cache into new
//! tensors (and copying it again into contiguous views) in every block. A step's few queries are
//! then one dot product per visible key and one `axpy` per key into the output row, with the
//! softmax's division applied to the `D`-wide row at the end. A prompt (many tokens on an empty
//! cache) runs the fused attention of [`super::attention`] and only stores its keys and values.

use super::attention::{attention, rope_row, Heads, Visibility};
use super::kernels::{axpys, dots, exp_shifted};
use super::{f32_tensor, with_f32};
use crate::error::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// More new tokens than this on an empty cache run the fused (GEMM) attention.
const FEW_TOKENS: usize = 16;

/// Below this many multiply-adds (queries × visible keys × D) a step runs on one thread: handing
/// the rows to the pool costs more than it saves.
const PARALLEL_WORK: usize = 1 << 16;

/// Rotated keys and values of one block's past positions, `[KV head][capacity][D]` each.
#[derive(Debug, Clone, Default)]
pub struct KvRows {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    cap: usize,
    n_kv: usize,
    d: usize,
}

impl KvRows {
    pub fn new(n_kv: usize, d: usize) -> Self {
        Self {
            n_kv,
            d,
            ..Self::default()
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for `extra` more positions (the capacity at least doubles when it grows).
    fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.cap {
            return;
        }
        let cap = need.max(2 * self.cap).max(64);
        let (n_kv, d, len, old_cap) = (self.n_kv, self.d, self.len, self.cap);
        let grow = |old: &[f32]| {
            let mut new = vec![0f32; n_kv * cap * d];
            for g in 0..n_kv {
                new[g * cap * d..][..len * d].copy_from_slice(&old[g * old_cap * d..][..len * d]);
            }
            new
        };
        self.k = grow(&self.k);
        self.v = grow(&self.v);
        self.cap = cap;
    }

    /// Appends `t` positions: `k` and `v` `[t, KV·D]` as projected, the keys rotated by the
    /// tables `cos`, `sin` (`[t, D/2]`) of their positions.
    fn append(&mut self, k: &[f32], v: &[f32], cos: &[f32], sin: &[f32]) {
        let (n_kv, d, half) = (self.n_kv, self.d, self.d / 2);
        let t = k.len() / (n_kv * d);
        self.reserve(t);
        for i in 0..t {
            for g in 0..n_kv {
                let (at, src) = ((g * self.cap + self.len + i) * d, (i * n_kv + g) * d);
                let (c, s) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                rope_row(&k[src..][..d], &mut self.k[at..][..d], c, s, 1.0, 1.0);
                self.v[at..][..d].copy_from_slice(&v[src..][..d]);
            }
        }
        self.len += t;
    }

    /// Keys (or values) `from .. to` of KV head `g`, `D` floats each.
    fn rows<'a>(&self, of: &'a [f32], g: usize, from: usize, to: usize) -> &'a [f32] {
        &of[(g * self.cap + from) * self.d..(g * self.cap + to) * self.d]
    }
}

/// Attention output `[1, T, H·D]` of `T` new tokens of one sequence at the positions after those
/// `cache` holds, whose projections `q` `[1, T, H·D]`, `k`, `v` `[1, T, KV·D]` (before RoPE) are
/// given with the rotary tables `cos`, `sin` `[T, D/2]` of their positions; their keys and values
/// are appended to the cache. A query sees every earlier position and itself, or the last
/// `window` of them. `visible` is the same rule for the fused path of a prompt.
#[allow(clippy::too_many_arguments)]
pub fn attend_cached(
    cache: &mut KvRows,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    window: Option<usize>,
    visible: Visibility,
) -> Result<Tensor> {
    let (_, t, hd) = q.dims3()?;
    let table =
        |x: &Tensor| -> Result<Vec<f32>> { Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
    let (c, s) = (table(cos)?, table(sin)?);
    with_f32(k, |k| with_f32(v, |v| cache.append(k, v, &c, &s)))??;
    if t > FEW_TOKENS && cache.len() == t {
        return attention(q, k, v, cos, sin, heads, visible);
    }
    let out = with_f32(q, |q| attend(cache, q, &c, &s, heads, window))?;
    Ok(f32_tensor(out, (1, t, hd))?)
}

/// [`attend_cached`]'s few-token product once the cache holds the new positions: `q` `[T, H·D]`.
fn attend(
    cache: &KvRows,
    q: &[f32],
    cos: &[f32],
    sin: &[f32],
    heads: Heads,
    window: Option<usize>,
) -> Vec<f32> {
    let (h, _, d, rep) = heads.split();
    let half = d / 2;
    let t = q.len() / (h * d);
    let first = cache.len - t;
    let scale = 1.0 / (d as f32).sqrt();
    // Output row r is (token r / h, head r % h).
    let row = |r: usize, o: &mut [f32], scores: &mut Vec<f32>, qr: &mut Vec<f32>| {
        let (i, j) = (r / h, r % h);
        let pos = first + i;
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        qr.resize(d, 0.0);
        let (c, s) = (&cos[i * half..][..half], &sin[i * half..][..half]);
        rope_row(&q[r * d..][..d], qr, c, s, scale, 1.0);
        let g = j / rep;
        let keys = cache.rows(&cache.k, g, lo, pos + 1);
        scores.resize(pos + 1 - lo, 0.0);
        dots(qr, keys, scores);
        let sum = exp_shifted(scores);
        o.fill(0.0);
        axpys(o, scores, cache.rows(&cache.v, g, lo, pos + 1));
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x *= inv);
    };
    let mut out = vec![0f32; t * h * d];
    if t * h * cache.len * d < PARALLEL_WORK {
        let (mut scores, mut qr) = (Vec::new(), Vec::new());
        for (r, o) in out.chunks_exact_mut(d).enumerate() {
            row(r, o, &mut scores, &mut qr);
        }
    } else {
        out.par_chunks_exact_mut(d).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, qr), (r, o)| row(r, o, scores, qr),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform in [-1, 1).
    fn random(n: usize, mut seed: u64) -> Vec<f32> {
        (0..n)
            .map(|_| (crate::rng::splitmix64(&mut seed) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    /// Tokens appended one or a few at a time give the outputs the fused attention gives the
    /// whole sequence at once, with and without a sliding window.
    #[test]
    fn steps_match_the_whole_sequence() {
        let heads = Heads {
            n_heads: 6,
            n_kv: 2,
            head_dim: 16,
        };
        let (h, kvh, d, t) = (6, 2, 16, 41);
        let (half, dev) = (d / 2, candle_core::Device::Cpu);
        let q = Tensor::from_vec(random(t * h * d, 1), (1, t, h * d), &dev).unwrap();
        let k = Tensor::from_vec(random(t * kvh * d, 2), (1, t, kvh * d), &dev).unwrap();
        let v = Tensor::from_vec(random(t * kvh * d, 3), (1, t, kvh * d), &dev).unwrap();
        let angles: Vec<f32> = (0..t * half)
            .map(|x| (x / half) as f32 * 0.3 / (1 + x % half) as f32)
            .collect();
        let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect(), (t, half), &dev);
        let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect(), (t, half), &dev);
        let (cos, sin) = (cos.unwrap(), sin.unwrap());
        for window in [None, Some(7)] {
            let visible = |at: usize, n: usize| match window {
                Some(w) => Visibility::Causal.windowed(at, n, w),
                None => Visibility::Causal,
            };
            let whole = attention(&q, &k, &v, &cos, &sin, heads, visible(0, t)).unwrap();
            let whole: Vec<f32> = whole.flatten_all().unwrap().to_vec1().unwrap();
            // A prompt of 20 (fused path), then steps of 1, 3 and 1 … tokens (the few-token path).
            let mut cache = KvRows::new(kvh, d);
            let mut got = Vec::new();
            let mut at = 0;
            for (n, step) in [20usize, 1, 3, 1, 5, 1, 10].into_iter().enumerate() {
                let part = |x: &Tensor| x.narrow(1, at, step).unwrap();
                let tables = |x: &Tensor| x.narrow(0, at, step).unwrap();
                let y = attend_cached(
                    &mut cache,
                    &part(&q),
                    &part(&k),
                    &part(&v),
                    &tables(&cos),
                    &tables(&sin),
                    heads,
                    window,
                    visible(at, step),
                )
                .unwrap();
                got.extend(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                at += step;
                assert_eq!(cache.len(), at, "step {n}");
            }
            assert_eq!(got.len(), whole.len());
            let worst = got
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "window {window:?}: max |diff| {worst}");
        }
    }
}
