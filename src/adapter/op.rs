//! The SPP layer's arithmetic (`../shared/docs/SPP.md` §2) on raw f32 buffers, and the candle
//! custom op that trains with it.
//!
//! Forward, in the memory-efficient block form (W split into `r` blocks of `m/r` rows; the
//! adapter sees `xd = dropout(x)`):
//!
//! ```text
//! z_k = (xd ⊙ A_k) · W_kᵀ          y = x·Wᵀ + s · (z ⊙ bᵀ)
//! ```
//!
//! Backward with `G = dL/dy`, `H = s·(G ⊙ bᵀ)`, `U_k = H_k · W_k`:
//!
//! ```text
//! dx = G·W + mask ⊙ Σ_k U_k ⊙ A_k      dA_k = Σ_tokens xd ⊙ U_k      db = s·Σ_tokens G ⊙ z
//! ```
//!
//! Two ways to run each pass, same arithmetic: per block (one GEMM with inner or outer dimension
//! m/r per block, scratch `[T, n]`), and per row group (the scaled rows `S_i = A_{k(i)} ⊙ W_i` of
//! as many whole blocks as fit a fixed 4 MiB scratch, then wide GEMMs: `z_g = xd·S_gᵀ`,
//! `dxa += H_g·S_g`, `dA` from `H_gᵀ·xd`). The op runs the row-group forward, and the per-block
//! backward when blocks have at least [`MIN_BLOCK_ROWS`] rows (`cargo bench --bench spp`).
//! No buffer grows with m·n beyond that fixed scratch, nothing `[m, n]` is kept for the backward:
//! the graph keeps x (already alive as the layer input) and z (`[T, m]`).

use super::dropout_mask;
use crate::model::ops::{f32_slice, f32_tensor, with_f32};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Mutex;

/// Rows handled by one rayon task in the element-wise passes.
const ROWS_PER_TASK: usize = 16;

fn gemm(dst: MatMut<'_, f32>, accum: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, 1.0f32, Par::rayon(0));
}

/// Shapes of one SPP product: `t` tokens, `n` inputs, `m` outputs, `r` rows of A.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub t: usize,
    pub n: usize,
    pub m: usize,
    pub r: usize,
}

/// `x ⊙ mask` when dropout is on.
fn dropped<'a>(x: &'a [f32], mask: Option<&[f32]>) -> Cow<'a, [f32]> {
    match mask {
        Some(m) => Cow::Owned(x.par_iter().zip(m.par_iter()).map(|(a, b)| a * b).collect()),
        None => Cow::Borrowed(x),
    }
}

/// How a pass is organised (same arithmetic): per block of `m/r` rows, or per row group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Blocks,
    RowGroups,
}

/// Block height below which the per-block backward's GEMMs (inner dimension m/r) are too thin.
const MIN_BLOCK_ROWS: usize = 32;

/// Scratch budget (elements) for the scaled weight rows `A_{k(i)} ⊙ W_i` of one row group.
const GROUP_ELEMS: usize = 1 << 20;

/// Rows per group: whole blocks of `m/r` rows, as many as fit in [`GROUP_ELEMS`] (at least one).
fn group_rows(d: Dims) -> usize {
    let blk = d.m / d.r;
    (GROUP_ELEMS / (blk * d.n)).clamp(1, d.r) * blk
}

/// `S[i − i0, j] = A[⌊i/blk⌋, j] · W[i, j]` for rows `i0 .. i0 + rows`.
fn scaled_rows(w: &[f32], a: &[f32], d: Dims, i0: usize, rows: usize, s: &mut [f32]) {
    let (n, blk) = (d.n, d.m / d.r);
    s[..rows * n]
        .par_chunks_mut(n)
        .zip(w[i0 * n..(i0 + rows) * n].par_chunks(n))
        .enumerate()
        .for_each(|(i, (s, w))| {
            let ak = &a[((i0 + i) / blk) * n..][..n];
            for ((s, w), a) in s.iter_mut().zip(w).zip(ak) {
                *s = w * a;
            }
        });
}

/// Element-wise sum of two partial vectors (the reduce step of the parallel column sums).
fn add_into(mut s: Vec<f32>, p: Vec<f32>) -> Vec<f32> {
    s.iter_mut().zip(&p).for_each(|(s, p)| *s += p);
    s
}

/// Returns `(y, z)`, both `[t, m]` row-major: `y = x·Wᵀ + s·(z ⊙ bᵀ)`.
pub fn forward(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    d: Dims,
    scale: f32,
    mask: Option<&[f32]>,
    form: Form,
) -> (Vec<f32>, Vec<f32>) {
    let Dims { t, n, m, .. } = d;
    let wm = MatRef::from_row_major_slice(w, m, n);
    let mut y = vec![0f32; t * m];
    gemm(
        MatMut::from_row_major_slice_mut(&mut y, t, m),
        Accum::Replace,
        MatRef::from_row_major_slice(x, t, n),
        wm.transpose(),
    );
    let xd = dropped(x, mask);
    let z = match form {
        Form::Blocks => z_blocks(&xd, w, a, d),
        Form::RowGroups => z_groups(&xd, w, a, d),
    };
    y.par_chunks_mut(m).zip(z.par_chunks(m)).for_each(|(y, z)| {
        for ((y, z), b) in y.iter_mut().zip(z).zip(b) {
            *y += scale * z * b;
        }
    });
    (y, z)
}

/// `z_k = (xd ⊙ A_k) · W_kᵀ`, one GEMM per block.
fn z_blocks(xd: &[f32], w: &[f32], a: &[f32], d: Dims) -> Vec<f32> {
    let Dims { t, n, m, r } = d;
    let blk = m / r;
    let wm = MatRef::from_row_major_slice(w, m, n);
    let mut z = vec![0f32; t * m];
    let mut p = vec![0f32; t * n];
    for k in 0..r {
        let ak = &a[k * n..(k + 1) * n];
        p.par_chunks_mut(n)
            .zip(xd.par_chunks(n))
            .for_each(|(p, x)| {
                for ((p, x), a) in p.iter_mut().zip(x).zip(ak) {
                    *p = x * a;
                }
            });
        let zk = MatMut::from_row_major_slice_mut(&mut z, t, m).subcols_mut(k * blk, blk);
        gemm(
            zk,
            Accum::Replace,
            MatRef::from_row_major_slice(&p, t, n),
            wm.subrows(k * blk, blk).transpose(),
        );
    }
    z
}

/// `z_g = xd · S_gᵀ` per row group, with the scaled rows `S_g` in a bounded scratch buffer, so
/// each GEMM is wide.
fn z_groups(xd: &[f32], w: &[f32], a: &[f32], d: Dims) -> Vec<f32> {
    let Dims { t, n, m, .. } = d;
    let xm = MatRef::from_row_major_slice(xd, t, n);
    let gr = group_rows(d);
    let mut s = vec![0f32; gr * n];
    let mut z = vec![0f32; t * m];
    for i0 in (0..m).step_by(gr) {
        let rows = gr.min(m - i0);
        scaled_rows(w, a, d, i0, rows, &mut s);
        let zg = MatMut::from_row_major_slice_mut(&mut z, t, m).subcols_mut(i0, rows);
        gemm(
            zg,
            Accum::Replace,
            xm,
            MatRef::from_row_major_slice(&s[..rows * n], rows, n).transpose(),
        );
    }
    z
}

/// Returns `(dx [t, n], dA [r, n], db [m])`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    z: &[f32],
    g: &[f32],
    d: Dims,
    scale: f32,
    mask: Option<&[f32]>,
    form: Form,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { t, n, m, .. } = d;
    let mut dx = vec![0f32; t * n];
    gemm(
        MatMut::from_row_major_slice_mut(&mut dx, t, n),
        Accum::Replace,
        MatRef::from_row_major_slice(g, t, m),
        MatRef::from_row_major_slice(w, m, n),
    );
    let h: Vec<f32> = g
        .par_chunks(m)
        .flat_map_iter(|g| g.iter().zip(b).map(|(g, b)| scale * g * b))
        .collect();
    let xd = dropped(x, mask);
    let (dxa, da) = match form {
        Form::Blocks => adapter_grads_blocks(&h, &xd, w, a, d),
        Form::RowGroups => adapter_grads_groups(&h, &xd, w, a, d),
    };
    let dxa = dropped(&dxa, mask);
    dx.par_iter_mut()
        .zip(dxa.par_iter())
        .for_each(|(d, a)| *d += a);
    let db = g
        .par_chunks(m * ROWS_PER_TASK)
        .zip(z.par_chunks(m * ROWS_PER_TASK))
        .map(|(g, z)| {
            let mut acc = vec![0f32; m];
            for (g, z) in g.chunks(m).zip(z.chunks(m)) {
                for i in 0..m {
                    acc[i] += g[i] * z[i];
                }
            }
            acc
        })
        .reduce(|| vec![0f32; m], add_into);
    (dx, da, db.into_iter().map(|v| v * scale).collect())
}

/// Per block, with `U_k = H_k · W_k`: `dxa = Σ_k U_k ⊙ A_k` and `dA_k = Σ_tokens xd ⊙ U_k`.
fn adapter_grads_blocks(
    h: &[f32],
    xd: &[f32],
    w: &[f32],
    a: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let Dims { t, n, m, r } = d;
    let blk = m / r;
    let (hm, wm) = (
        MatRef::from_row_major_slice(h, t, m),
        MatRef::from_row_major_slice(w, m, n),
    );
    let mut dxa = vec![0f32; t * n];
    let mut da = vec![0f32; r * n];
    let mut u = vec![0f32; t * n];
    let chunk = n * ROWS_PER_TASK;
    for k in 0..r {
        let ak = &a[k * n..(k + 1) * n];
        gemm(
            MatMut::from_row_major_slice_mut(&mut u, t, n),
            Accum::Replace,
            hm.subcols(k * blk, blk),
            wm.subrows(k * blk, blk),
        );
        // One pass over U_k for both.
        let sum = dxa
            .par_chunks_mut(chunk)
            .zip(u.par_chunks(chunk))
            .zip(xd.par_chunks(chunk))
            .map(|((dxa, u), xd)| {
                let mut acc = vec![0f32; n];
                for ((dxa, u), xd) in dxa.chunks_mut(n).zip(u.chunks(n)).zip(xd.chunks(n)) {
                    for j in 0..n {
                        dxa[j] += u[j] * ak[j];
                        acc[j] += xd[j] * u[j];
                    }
                }
                acc
            })
            .reduce(|| vec![0f32; n], add_into);
        da[k * n..(k + 1) * n].copy_from_slice(&sum);
    }
    (dxa, da)
}

/// Per row group: `dxa += H_g · S_g` and `dA_k = Σ_{i∈k} W_i ⊙ (H_gᵀ · xd)_i`.
fn adapter_grads_groups(
    h: &[f32],
    xd: &[f32],
    w: &[f32],
    a: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let Dims { t, n, m, r } = d;
    let blk = m / r;
    let (hm, xm) = (
        MatRef::from_row_major_slice(h, t, m),
        MatRef::from_row_major_slice(xd, t, n),
    );
    let gr = group_rows(d);
    let (mut s, mut q) = (vec![0f32; gr * n], vec![0f32; gr * n]);
    let mut dxa = vec![0f32; t * n];
    let mut da = vec![0f32; r * n];
    for i0 in (0..m).step_by(gr) {
        let rows = gr.min(m - i0);
        scaled_rows(w, a, d, i0, rows, &mut s);
        let hg = hm.subcols(i0, rows);
        gemm(
            MatMut::from_row_major_slice_mut(&mut dxa, t, n),
            Accum::Add,
            hg,
            MatRef::from_row_major_slice(&s[..rows * n], rows, n),
        );
        gemm(
            MatMut::from_row_major_slice_mut(&mut q[..rows * n], rows, n),
            Accum::Replace,
            hg.transpose(),
            xm,
        );
        da[(i0 / blk) * n..((i0 + rows) / blk) * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(kk, dak)| {
                for i in kk * blk..(kk + 1) * blk {
                    let (wi, qi) = (&w[(i0 + i) * n..][..n], &q[i * n..][..n]);
                    for j in 0..n {
                        dak[j] += wi[j] * qi[j];
                    }
                }
            });
    }
    (dxa, da)
}

/// The SPP linear as a candle op on `(x [T, n], A [r, n], b [m])`, holding the frozen weight.
/// `z` is kept from the forward for the backward of b.
pub struct SppOp {
    pub w: Tensor,
    pub scale: f32,
    /// `(seed, p)` of the adapter's dropout, `None` when off.
    pub dropout: Option<(u64, f32)>,
    pub z: Mutex<Vec<f32>>,
}

impl SppOp {
    fn dims(&self, x: &Shape, a: &Shape) -> candle_core::Result<Dims> {
        let (t, n) = x.dims2()?;
        let (r, n2) = a.dims2()?;
        let (m, n3) = self.w.dims2()?;
        if n != n2 || n != n3 || r == 0 || m % r != 0 {
            candle_core::bail!(
                "spp: x {:?}, A {:?} and W {:?} do not fit",
                x.dims(),
                a.dims(),
                self.w.dims()
            );
        }
        Ok(Dims { t, n, m, r })
    }

    fn mask(&self, len: usize) -> Option<Vec<f32>> {
        self.dropout.map(|(seed, p)| dropout_mask(seed, len, p))
    }
}

impl CustomOp3 for SppOp {
    fn name(&self) -> &'static str {
        "spp-linear"
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
        let d = self.dims(l1.shape(), l2.shape())?;
        let (x, a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let mask = self.mask(x.len());
        let (y, z) = with_f32(&self.w, |w| {
            forward(x, w, a, b, d, self.scale, mask.as_deref(), Form::RowGroups)
        })?;
        *self
            .z
            .lock()
            .map_err(|_| candle_core::Error::Msg("spp: poisoned lock".into()))? = z;
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
        let d = self.dims(x.shape(), a.shape())?;
        let mask = self.mask(d.t * d.n);
        let z = self
            .z
            .lock()
            .map_err(|_| candle_core::Error::Msg("spp: poisoned lock".into()))?;
        // Measured (`cargo bench --bench spp`): the per-block backward wins while the blocks are
        // tall enough for a GEMM; below that, row groups.
        let form = if d.m / d.r >= MIN_BLOCK_ROWS {
            Form::Blocks
        } else {
            Form::RowGroups
        };
        let (dx, da, db) = with_f32(x, |x| {
            with_f32(&self.w, |w| {
                with_f32(a, |a| {
                    with_f32(b, |b| {
                        with_f32(grad, |g| {
                            backward(x, w, a, b, &z, g, d, self.scale, mask.as_deref(), form)
                        })
                    })
                })
            })
        })?????;
        Ok((
            Some(f32_tensor(dx, (d.t, d.n))?),
            Some(f32_tensor(da, (d.r, d.n))?),
            Some(f32_tensor(db, d.m)?),
        ))
    }
}
