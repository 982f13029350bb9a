//! The LoRA linear (`docs/METHOD.md` §3) as one candle custom op with its own backward, and
//! the plain composition of candle ops it is tested against.
//!
//! Notation: W `[m, n]` frozen, A `[r, n]`, B `[m, r]`, scale s, `xd = dropout(x)`,
//! `u = xd·Aᵀ` `[t, r]`. Forward `y = x·Wᵀ + s·u·Bᵀ`; backward for the output gradient G
//! `[t, m]`, with `v = s·G·B` `[t, r]`: `dx = G·W + mask ⊙ (v·A)`, `dA = vᵀ·xd`,
//! `dB = s·Gᵀ·u`.
//!
//! The composition of candle ops keeps, per linear and until the backward, the dropout mask and
//! `xd` (`[t, n]` each), the frozen product, `u·Bᵀ` and its scaled copy (`[t, m]` each). The op
//! keeps only its inputs (x, already alive as the layer's input, A and B) and recomputes `xd`
//! and `u` (`[t, r]`, small) in the backward: the same memory as the SPP op, and the two large
//! GEMMs (`x·Wᵀ`, `G·W`) per layer and step that a frozen linear costs, plus rank-`r` ones.

use super::dropped_rows;
use super::op::{gemm, Dims, Frozen};
use crate::cpu::{f32_slice, f32_tensor, gemm_lhs_abt_many, with_f32, Lhs, Weight};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;
use std::borrow::Cow;

/// `x ⊙ dropout_mask(seed, t·n, p)` ([`super::dropout_mask`]) built without the mask: kept
/// entries times `1/(1−p)`, dropped ones 0.
fn dropped(x: &[f32], n: usize, dropout: Option<(u64, f32)>) -> Cow<'_, [f32]> {
    let Some((seed, p)) = dropout else {
        return Cow::Borrowed(x);
    };
    let keep = 1.0 / (1.0 - p);
    let rows = dropped_rows(seed, x.len() / n, n, p);
    let mut xd: Vec<f32> = x.par_iter().map(|v| v * keep).collect();
    xd.par_chunks_mut(n).zip(&rows).for_each(|(row, d)| {
        for &j in d {
            row[j as usize] = 0.0;
        }
    });
    Cow::Owned(xd)
}

/// `u = xd·Aᵀ` `[t, r]`.
fn low_rank_input(xd: &[f32], a: &[f32], d: Dims) -> Vec<f32> {
    let mut u = vec![0f32; d.t * d.r];
    gemm(
        MatMut::from_row_major_slice_mut(&mut u, d.t, d.r),
        Accum::Replace,
        MatRef::from_row_major_slice(xd, d.t, d.n),
        MatRef::from_row_major_slice(a, d.r, d.n).transpose(),
    );
    u
}

/// `y = x·Wᵀ + s·(xd·Aᵀ)·Bᵀ` `[t, m]`, row-major.
pub(crate) fn forward(
    x: &[f32],
    w: Weight,
    a: &[f32],
    b: &[f32],
    d: Dims,
    scale: f32,
    dropout: Option<(u64, f32)>,
) -> Vec<f32> {
    let Dims { t, n, m, r } = d;
    // The frozen product through the same GEMM as a linear without adapter.
    let mut y = gemm_lhs_abt_many(Lhs::Rows(x), t, n, &[(w, m)]).remove(0);
    let mut u = low_rank_input(&dropped(x, n, dropout), a, d);
    u.iter_mut().for_each(|v| *v *= scale);
    gemm(
        MatMut::from_row_major_slice_mut(&mut y, t, m),
        Accum::Add,
        MatRef::from_row_major_slice(&u, t, r),
        MatRef::from_row_major_slice(b, m, r).transpose(),
    );
    y
}

/// Returns `(dx [t, n], dA [r, n], dB [m, r])` for the output gradient `g` `[t, m]`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    g: &[f32],
    d: Dims,
    scale: f32,
    dropout: Option<(u64, f32)>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { t, n, m, r } = d;
    let (gm, am) = (
        MatRef::from_row_major_slice(g, t, m),
        MatRef::from_row_major_slice(a, r, n),
    );
    let xd = dropped(x, n, dropout);
    // v = s·G·B.
    let mut v = vec![0f32; t * r];
    gemm(
        MatMut::from_row_major_slice_mut(&mut v, t, r),
        Accum::Replace,
        gm,
        MatRef::from_row_major_slice(b, m, r),
    );
    v.iter_mut().for_each(|e| *e *= scale);
    // dx = G·W + mask ⊙ (v·A).
    let mut dx = vec![0f32; t * n];
    gemm(
        MatMut::from_row_major_slice_mut(&mut dx, t, n),
        Accum::Replace,
        gm,
        MatRef::from_row_major_slice(w, m, n),
    );
    let mut va = vec![0f32; t * n];
    gemm(
        MatMut::from_row_major_slice_mut(&mut va, t, n),
        Accum::Replace,
        MatRef::from_row_major_slice(&v, t, r),
        am,
    );
    match dropout {
        None => dx.par_iter_mut().zip(&va).for_each(|(d, e)| *d += e),
        Some((seed, p)) => {
            let keep = 1.0 / (1.0 - p);
            let rows = dropped_rows(seed, t, n, p);
            dx.par_chunks_mut(n)
                .zip(va.par_chunks_mut(n))
                .zip(&rows)
                .for_each(|((dx, va), dr)| {
                    for &j in dr {
                        va[j as usize] = 0.0;
                    }
                    dx.iter_mut()
                        .zip(va.iter())
                        .for_each(|(d, e)| *d += keep * e);
                });
        }
    }
    drop(va);
    // dA = vᵀ·xd.
    let mut da = vec![0f32; r * n];
    gemm(
        MatMut::from_row_major_slice_mut(&mut da, r, n),
        Accum::Replace,
        MatRef::from_row_major_slice(&v, t, r).transpose(),
        MatRef::from_row_major_slice(&xd, t, n),
    );
    // dB = s·Gᵀ·u, u recomputed.
    let u = low_rank_input(&xd, a, d);
    let mut db = vec![0f32; m * r];
    gemm(
        MatMut::from_row_major_slice_mut(&mut db, m, r),
        Accum::Replace,
        gm.transpose(),
        MatRef::from_row_major_slice(&u, t, r),
    );
    db.iter_mut().for_each(|e| *e *= scale);
    (dx, da, db)
}

/// The LoRA linear as a candle op on `(x [t, n], A [r, n], B [m, r])`, holding the frozen
/// weight (dense in any dtype, or packed; widened to f32 one call at a time, never kept).
pub struct LoraOp {
    pub w: Frozen,
    pub scale: f32,
    /// `(seed, p)` of the adapter's dropout, `None` when off.
    pub dropout: Option<(u64, f32)>,
}

impl LoraOp {
    fn dims(&self, x: &Shape, a: &Shape, b: &Shape) -> candle_core::Result<Dims> {
        let (t, n) = x.dims2()?;
        let (r, n2) = a.dims2()?;
        let (m, r2) = b.dims2()?;
        let (m2, n3) = self.w.dims()?;
        if n != n2 || n != n3 || m != m2 || r != r2 {
            candle_core::bail!(
                "lora: x {:?}, A {:?}, B {:?} and W {:?} do not fit",
                x.dims(),
                a.dims(),
                b.dims(),
                (m2, n3)
            );
        }
        Ok(Dims { t, n, m, r })
    }
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let (x, a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let y = self
            .w
            .with_weight(|w| forward(x, w, a, b, d, self.scale, self.dropout))?;
        Ok((CpuStorage::F32(y), Shape::from((d.t, d.m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(x.shape(), a.shape(), b.shape())?;
        let (dx, da, db) = with_f32(x, |x| {
            self.w.with_dense(|w| {
                with_f32(a, |a| {
                    with_f32(b, |b| {
                        with_f32(grad, |g| {
                            backward(x, w, a, b, g, d, self.scale, self.dropout)
                        })
                    })
                })
            })
        })?????;
        Ok((
            Some(f32_tensor(dx, (d.t, d.n))?),
            Some(f32_tensor(da, (d.r, d.n))?),
            Some(f32_tensor(db, (d.m, d.r))?),
        ))
    }
}

/// The LoRA forward as a composition of candle ops, `x·Wᵀ + s·(x ⊙ mask)·Aᵀ·Bᵀ` (`mask` the
/// dropout mask, if any): the reference the op is tested against, and the path on other
/// devices. Its autograd graph keeps two `[t, n]` and three `[t, m]` tensors per linear.
pub fn lora_naive(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let base = crate::cpu::frozen_matmul(x, w)?;
    let xd = match mask {
        Some(m) => (x * m)?,
        None => x.clone(),
    };
    let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
    Ok((base + (xd.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?)?)
}
