//! Rotary position embedding: the inverse frequencies `transformers` computes (with the `linear`
//! and `llama3` scalings) and the tables of every position.

use super::config::LlamaConfig;
use crate::bail;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Rotary tables for every position up to `max_position_embeddings`, `[positions, head_dim/2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// What `cfg`'s rope scaling divides each base frequency by (llama.cpp's `rope_freqs`): the
/// unscaled frequencies over the scaled ones.
pub fn frequency_divisors(cfg: &LlamaConfig) -> Vec<f32> {
    let unscaled = inv_freq(&LlamaConfig {
        rope_scaling: None,
        ..cfg.clone()
    });
    unscaled
        .iter()
        .zip(inv_freq(cfg))
        .map(|(b, s)| b / s)
        .collect()
}

/// Inverse frequencies as `transformers` computes them (in f32), with the configured scaling.
pub fn inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let d = cfg.head_dim();
    let base = cfg.rope_theta as f32;
    let mut inv: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / d as f32))
        .collect();
    if let Some(rs) = &cfg.rope_scaling {
        let factor = rs.factor.unwrap_or(1.0) as f32;
        match rs.rope_type.as_str() {
            "linear" => inv.iter_mut().for_each(|f| *f /= factor),
            "llama3" => {
                let low = rs.low_freq_factor.unwrap_or(1.0) as f32;
                let high = rs.high_freq_factor.unwrap_or(4.0) as f32;
                let old_ctx = rs.original_max_position_embeddings.unwrap_or(8192) as f32;
                let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        // Medium band: interpolate between the scaled and the original frequency.
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            _ => {}
        }
    }
    inv
}

/// The most positions a rotary table is built for (2²⁰: 0.5 GiB of tables at head_dim 128).
pub const MAX_ROPE_POSITIONS: usize = 1 << 20;

impl Rope {
    pub fn new(cfg: &LlamaConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let inv = inv_freq(cfg);
        let n = cfg.max_position_embeddings.max(1);
        let half = inv.len();
        if n > MAX_ROPE_POSITIONS {
            bail!(
                "config.json: max_position_embeddings {n} would need rotary tables of {:.1} GiB; spp supports up to {MAX_ROPE_POSITIONS} positions — set max_position_embeddings to the context you use",
                (8.0 * n as f64 * half as f64) / (1u64 << 30) as f64
            );
        }
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), dev)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// The tables `[T, D/2]` of positions `offset .. offset + T`.
    pub(super) fn tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        if offset + t > self.cos.dims()[0] {
            bail!(
                "position {} is beyond max_position_embeddings {}: use a shorter sequence",
                offset + t,
                self.cos.dims()[0]
            );
        }
        Ok((
            self.cos.narrow(0, offset, t)?,
            self.sin.narrow(0, offset, t)?,
        ))
    }

    /// The tables `[T, D/2]` of the given positions (`[T]`, u32).
    pub(super) fn tables_at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    /// Rotates `x` of shape `[B, H, T, D]` for positions `offset .. offset + T`.
    pub(super) fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (cos, sin) = self.tables(offset, x.dims()[2])?;
        crate::cpu::rope(x, &cos, &sin)
    }

    /// Rotates `x` of shape `[B, H, T, D]` for the given positions (`[T]`, u32).
    pub(super) fn apply_at(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (cos, sin) = self.tables_at(positions)?;
        crate::cpu::rope(x, &cos, &sin)
    }
}
