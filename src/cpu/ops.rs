//! Fused CPU kernels for the element-wise parts of the forward pass that candle runs on one
//! thread or in several passes: `silu(g)·u`, the causal softmax of attention scores, and the
//! per-token negative log-likelihood. Each has a plain composition of candle ops beside it
//! (`*_reference`), used on other devices and dtypes and as the check in the tests.
//! The CPU ops carry their backward, so autograd keeps working through them (candle's own fused
//! RMSNorm and RoPE have none, which training needs).

use super::gemm::{Lhs, Weight};
use super::kernels::{exp_fast, logsumexp, rms_row, silu_mul_chunk, softmax_row};
use super::{f32_slice, f32_tensor, fast_path, par_fill, with_f32, PackedMatrix};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

// ---------------------------------------------------------------- frozen linear

/// `y = x·Wᵀ` for x `[rows, in]` and a frozen weight W `[out, in]`, through spp's GEMM
/// (`gemm.rs`; faster than candle's on these shapes: `cargo bench --bench gemm`). The backward
/// returns the input gradient only: a frozen weight never gets an `[out, in]` gradient.
struct FrozenMatmul;

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (rows, k) = l1.shape().dims2()?;
        let (out, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-matmul: input has {k} features, weight expects {k2}");
        }
        let y = super::gemm::gemm_abt_many(x, rows, k, &[(w, out)]).remove(0);
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // `G·W` through spp's GEMM too (candle's matmul takes an AVX2 kernel even on AVX-512).
        let ((rows, out), (_, k)) = (grad.dims2()?, w.dims2()?);
        let dx = with_f32(grad, |g| {
            with_f32(w, |w| super::gemm::gemm_ab(g, w, rows, out, k))
        })??;
        Ok((Some(f32_tensor(dx, (rows, k))?), None))
    }
}

/// `x·Wᵀ` for x `[rows, in]`, W `[out, in]`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fast_path(x) && w.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op2(&w.contiguous()?, FrozenMatmul)?);
    }
    frozen_matmul_reference(x, w)
}

/// `[x·W₁ᵀ, x·W₂ᵀ, …]` for weights that share their input (q, k, v; gate, up): one GEMM over all
/// their columns when no gradient is needed, else one [`frozen_matmul`] each.
pub fn frozen_matmul_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let fused = fast_path(x)
        && !x.track_op()
        && x.rank() == 2
        && ws
            .iter()
            .all(|w| fast_path(w) && w.rank() == 2 && w.dim(1).ok() == x.dim(1).ok());
    if !fused {
        return ws.iter().map(|w| frozen_matmul(x, w)).collect();
    }
    let (rows, k) = x.dims2()?;
    let ts = std::iter::once(x)
        .chain(ws.iter().copied())
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(c) => f32_slice(c, l),
            _ => candle_core::bail!("frozen-matmul: expected CPU tensors"),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let bs: Vec<(&[f32], usize)> = slices[1..]
        .iter()
        .zip(&ts[1..])
        .map(|(b, w)| (*b, w.dims()[0]))
        .collect();
    let outs = super::gemm::gemm_abt_many(slices[0], rows, k, &bs);
    outs.into_iter()
        .zip(bs)
        .map(|(y, (_, n))| Ok(f32_tensor(y, (rows, n))?))
        .collect()
}

/// `(silu(g) ⊙ u)·Wᵀ` for g, u `[rows, in]`: the SwiGLU MLP's down projection. Without a
/// gradient to track, the product computes `silu(g) ⊙ u` while packing its left operand (the
/// `[rows, in]` hidden state is never stored); else [`silu_mul`] then [`frozen_matmul`].
pub fn frozen_matmul_silu(g: &Tensor, u: &Tensor, w: &Tensor) -> Result<Tensor> {
    let fused = fast_path(w) && w.rank() == 2 && silu_fusable(g, u, w.dim(1)?);
    if !fused {
        return frozen_matmul(&silu_mul(g, u)?, w);
    }
    let n = w.dim(0)?;
    with_f32(w, |ws| silu_product(g, u, Weight::F32(ws), n))?
}

/// [`frozen_matmul_silu`] for a packed weight (many rows: its rows are unpacked as the product
/// packs them; else the packed product of `silu(g) ⊙ u`).
pub fn packed_matmul_silu(g: &Tensor, u: &Tensor, w: &PackedMatrix) -> Result<Tensor> {
    if g.dims().first().is_some_and(|&t| t < super::UNPACK_ROWS) || !silu_fusable(g, u, w.cols) {
        return super::packed_matmul(&silu_mul(g, u)?, w);
    }
    silu_product(g, u, Weight::Packed(w), w.rows)
}

/// Whether `silu(g) ⊙ u` can be computed while a product packs it: f32 on the CPU, no gradient,
/// `[rows, k]` both.
fn silu_fusable(g: &Tensor, u: &Tensor, k: usize) -> bool {
    fast_path(g)
        && fast_path(u)
        && !g.track_op()
        && !u.track_op()
        && g.rank() == 2
        && g.dims() == u.dims()
        && g.dims()[1] == k
}

fn silu_product(g: &Tensor, u: &Tensor, w: Weight, n: usize) -> Result<Tensor> {
    let (rows, k) = g.dims2()?;
    let y = with_f32(g, |g| {
        with_f32(u, |u| {
            super::gemm::gemm_lhs_abt_many(Lhs::SiluMul(g, u), rows, k, &[(w, n)]).remove(0)
        })
    })??;
    Ok(f32_tensor(y, (rows, n))?)
}

pub fn frozen_matmul_reference(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

// ---------------------------------------------------------------- silu(g) · u

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        const CHUNK: usize = 4096;
        // SAFETY: silu_mul_chunk writes all of `o`.
        let out = unsafe {
            par_fill(g.len(), CHUNK, |i, o| {
                let at = i * CHUNK..i * CHUNK + o.len();
                silu_mul_chunk(&g[at.clone()], &u[at], o)
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
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
        out.par_chunks_mut(end)
            .zip(x.par_chunks(end))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let visible = (first + r % c + 1).min(end);
                softmax_row(&x[..visible], &mut o[..visible]);
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

/// The same with an additive −∞ mask and candle's softmax (computed in f32). The mask is built on
/// the scores' device from two index ranges, not written on the host and copied to a GPU for
/// every chunk of every layer.
pub fn causal_softmax_reference(scores: &Tensor, first: usize) -> Result<Tensor> {
    let dims = scores.dims();
    let (c, end) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let dev = scores.device();
    let query = Tensor::arange(first as u32, (first + c) as u32, dev)?.reshape((c, 1))?;
    let key = Tensor::arange(0u32, end as u32, dev)?.reshape((1, end))?;
    let hidden = key.broadcast_gt(&query)?;
    let mask = hidden.where_cond(
        &Tensor::new(f32::NEG_INFINITY, dev)?.broadcast_as((c, end))?,
        &Tensor::zeros((c, end), DType::F32, dev)?,
    )?;
    masked_softmax(scores, &mask)
}

/// Softmax over the last dimension of `scores` `[..., c, end]` plus an additive f32 mask
/// `[c, end]` (0 or −∞), computed in f32 and returned in the scores' dtype.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    let x = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
    // candle's fused softmax_last_dim has no backward: the composed softmax where gradients flow.
    // On a GPU the composed one is five kernels, 45% of an inference forward's kernel time (ncu,
    // SmolLM2-135M on an H200; the mask's addition another 16%).
    let p = if x.track_op() {
        candle_nn::ops::softmax(&x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&x)?
    };
    Ok(p.to_dtype(dtype)?)
}

// ---------------------------------------------------------------- token NLL

/// `−log softmax(logits)[target]` per row, for logits `[T, V]` and u32 targets `[T]`.
struct TokenNll;

impl CustomOp2 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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
            .map(|(row, &t)| logsumexp(row) - row[t as usize])
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(tgt.len())))
    }
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let v = logits.dims()[1];
        let tgt = targets.to_vec1::<u32>()?;
        let g = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let out = with_f32(logits, |l| TokenNll::grad(l, &tgt, &g, v))?;
        Ok((Some(f32_tensor(out, logits.dims())?), None))
    }
}

/// Per-token negative log-likelihood: logits `[T, V]`, targets `[T]` → `[T]` (f32);
/// differentiable with respect to the logits.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    if fast_path(logits) {
        return Ok(logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TokenNll)?);
    }
    token_nll_reference(logits, &targets)
}

/// Rows of the LM head computed at once by [`lm_head_nll`]: the logits of one chunk exist at a
/// time, at most `LM_HEAD_LOGITS` floats (64 MiB) and 64–512 rows (SmolLM2: 341).
/// More rows per chunk let the GEMM reuse each streamed weight row more often.
const LM_HEAD_LOGITS: usize = 1 << 24;

/// `−log softmax(h·Wᵀ)[target]` per row for hidden states `[T, H]`, the output embedding W
/// `[V, H]` and u32 targets `[T]`, without autograd: the logits of a chunk of rows at a
/// time into one reused buffer (no fresh pages per chunk), then the log-sum-exp of each row.
/// Same result as `token_nll(frozen_matmul(h, W), targets)`, which runs where this does not
/// (other devices and dtypes, or when `h` needs a gradient).
pub fn lm_head_nll(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    if !(fast_path(h) && w.dtype() == DType::F32 && !h.track_op()) {
        return token_nll(&frozen_matmul(h, w)?, &targets);
    }
    with_f32(w, |ws| head_nll(h, Weight::F32(ws), w.dims2()?, &targets))?
}

/// [`lm_head_nll`] for a packed head (its rows unpacked as the products pack them).
pub fn lm_head_nll_packed(h: &Tensor, w: &PackedMatrix, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    if !fast_path(h) || h.track_op() {
        return token_nll(&super::packed_matmul(h, w)?, &targets);
    }
    head_nll(h, Weight::Packed(w), (w.rows, w.cols), &targets)
}

fn head_nll(h: &Tensor, w: Weight, (v, hd2): (usize, usize), targets: &Tensor) -> Result<Tensor> {
    let (t, hd) = h.dims2()?;
    if hd != hd2 || targets.dims() != [t] {
        crate::bail!(
            "lm-head NLL: hidden {:?}, weight {:?} and targets {:?} do not fit",
            h.dims(),
            (v, hd2),
            targets.dims()
        );
    }
    let tgt = targets.to_vec1::<u32>()?;
    if let Some(bad) = tgt.iter().find(|&&x| x as usize >= v) {
        crate::bail!("target token {bad} is outside the vocabulary of {v}");
    }
    let out = with_f32(h, |h| {
        let rows = (LM_HEAD_LOGITS / v).clamp(64, 512);
        let mut out = Vec::with_capacity(t);
        for (hc, tc) in h.chunks(rows * hd).zip(tgt.chunks(rows)) {
            let n = tc.len();
            let logits = super::gemm::gemm_lhs_abt_many(Lhs::Rows(hc), n, hd, &[(w, v)]);
            out.par_extend(
                logits[0]
                    .par_chunks(v)
                    .zip(tc.par_iter())
                    .map(|(row, &t)| logsumexp(row) - row[t as usize]),
            );
        }
        out
    })?;
    Ok(f32_tensor(out, t)?)
}

pub fn token_nll_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let tgt = shifted.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok((lse - tgt)?.squeeze(1)?)
}

impl TokenNll {
    fn grad(logits: &[f32], tgt: &[u32], g: &[f32], v: usize) -> Vec<f32> {
        let mut out = vec![0f32; logits.len()];
        out.par_chunks_mut(v)
            .zip(logits.par_chunks(v))
            .zip(tgt.par_iter().zip(g.par_iter()))
            .for_each(|((o, row), (&t, &g))| {
                // d/dz (lse(z) − z_t) = softmax(z) − onehot(t)
                let lse = logsumexp(row);
                for (o, &z) in o.iter_mut().zip(row) {
                    *o = exp_fast(z - lse) * g;
                }
                o[t as usize] -= g;
            });
        out
    }
}

// ---------------------------------------------------------------- RMSNorm

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension; the weight is frozen (no gradient).
struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = w.len();
        // SAFETY: rms_row writes all of its row `o`.
        let out = unsafe { par_fill(x.len(), d, |i, o| rms_row(&x[i * d..][..d], w, o, self.eps)) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // y = x·r·w with r = (mean(x²) + eps)^(−1/2): dx = r·(gw − x·r²·mean(gw·x)).
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?
            .sqrt()?
            .recip()?;
        let gw = grad.broadcast_mul(w)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let dx = gw
            .broadcast_sub(&x.broadcast_mul(&(r.sqr()? * dot)?)?)?
            .broadcast_mul(&r)?;
        Ok((Some(dx), None))
    }
}

/// RMSNorm over the last dimension with a frozen weight.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fast_path(x) && w.dtype() == DType::F32 {
        return Ok(x
            .contiguous()?
            .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })?);
    }
    if x.track_op() {
        return Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?);
    }
    Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
}

pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?)
}

// ---------------------------------------------------------------- RoPE

/// Rotary embedding in the `rotate_half` layout for x `[B, H, T, D]` and tables `[T, D/2]`:
/// `y₁ = x₁·cos − x₂·sin`, `y₂ = x₂·cos + x₁·sin`. It is a rotation, so the backward is the same
/// op with `−sin`.
struct RopeOp {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let dims = l.shape().dims();
        let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let half = d / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                out.par_chunks_mut(d)
                    .zip(x.par_chunks(d))
                    .enumerate()
                    .for_each(|(row, (o, x))| {
                        let p = (row % t) * half;
                        let (c, s) = (&cos[p..p + half], &sin[p..p + half]);
                        for i in 0..half {
                            let (a, b, s) = (x[i], x[i + half], sign * s[i]);
                            o[i] = a * c[i] - b * s;
                            o[i + half] = b * c[i] + a * s;
                        }
                    });
            })
        })??;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let inv = RopeOp {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1(inv)?))
    }
}

/// RoPE of x `[B, H, T, D]` with tables `[T, D/2]`, differentiable on every device.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fast_path(x) && cos.dtype() == DType::F32 {
        let op = RopeOp {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            inverse: false,
        };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    if x.track_op() {
        return rope_reference(x, cos, sin);
    }
    Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
}

pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope_slow(x, cos, sin)?)
}
