//! Fused CPU kernels for the element-wise parts of the forward pass that candle runs on one
//! thread or in several passes: `silu(g)·u`, the causal softmax of attention scores, and the
//! per-token negative log-likelihood. Each has a plain composition of candle ops beside it
//! (`*_reference`), used on other devices and dtypes and as the check in the tests.
//! The CPU ops carry their backward, so autograd keeps working through them.

use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fused op: expected a contiguous f32 tensor"),
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------- silu(g) · u

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let s = candle_nn::ops::sigmoid(g)?;
        let silu = (g * &s)?;
        // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
        let dsilu = (&s * ((g * (1.0 - &s)?)? + 1.0)?)?;
        Ok((Some((grad * u)?.mul(&dsilu)?), Some((grad * silu)?)))
    }
}

/// `silu(g) ⊙ u`, the SwiGLU hidden state.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fast_path(g) && g.dims() == u.dims() {
        return Ok(g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)?);
    }
    silu_mul_reference(g, u)
}

pub fn silu_mul_reference(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(g)? * u)?)
}

// ---------------------------------------------------------------- causal softmax

/// Softmax over the last dimension of scores `[..., c, end]` where row `i` (of the `c` rows of
/// each matrix) is the query at absolute position `first + i` and may see keys `0 ..= first + i`.
struct CausalSoftmax {
    first: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let dims = l.shape().dims();
        let (c, end) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let first = self.first;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(end).zip(x.par_chunks(end)).enumerate().for_each(|(r, (o, x))| {
            let visible = (first + r % c + 1).min(end);
            let max = x[..visible].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in o[..visible].iter_mut().zip(&x[..visible]) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o[..visible].iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = y ⊙ (dy − Σ dy ⊙ y); masked entries have y = 0 and so get no gradient.
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * grad.broadcast_sub(&dot)?)?))
    }
}

/// Causal softmax of attention scores `[..., c, end]` for queries at positions `first ..`.
pub fn causal_softmax(scores: &Tensor, first: usize) -> Result<Tensor> {
    if fast_path(scores) {
        return Ok(scores.contiguous()?.apply_op1(CausalSoftmax { first })?);
    }
    causal_softmax_reference(scores, first)
}

/// The same with an additive −∞ mask and candle's softmax (computed in f32).
pub fn causal_softmax_reference(scores: &Tensor, first: usize) -> Result<Tensor> {
    let dims = scores.dims();
    let (c, end) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mask: Vec<f32> =
        (0..c).flat_map(|i| (0..end).map(move |j| if j > first + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (c, end), scores.device())?;
    let dtype = scores.dtype();
    let x = scores.to_dtype(DType::F32)?.broadcast_add(&mask)?;
    // candle_nn::ops::softmax (not the fused softmax_last_dim) so that gradients flow.
    Ok(candle_nn::ops::softmax(&x, D::Minus1)?.to_dtype(dtype)?)
}

// ---------------------------------------------------------------- token NLL

/// `−log softmax(logits)[target]` per row, for logits `[T, V]` and u32 targets `[T]`.
struct TokenNll;

impl CustomOp2 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let tgt = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::U32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("token-nll: targets must be contiguous u32"),
        };
        let v = l1.shape().dims()[1];
        if let Some(bad) = tgt.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("token-nll: target {bad} outside the vocabulary of {v}");
        }
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(tgt.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
                (sum.ln() + max as f64 - row[t as usize] as f64) as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(tgt.len())))
    }
}

/// Per-token negative log-likelihood: logits `[T, V]`, targets `[T]` → `[T]` (f32).
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    if fast_path(logits) {
        return Ok(logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &TokenNll)?);
    }
    token_nll_reference(logits, &targets)
}

pub fn token_nll_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let tgt = shifted.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok((lse - tgt)?.squeeze(1)?)
}
