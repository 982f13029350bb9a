//! The SPP layer's arithmetic (`docs/METHOD.md` §2) on raw f32 buffers, and the candle
//! custom op that trains with it.
//!
//! Notation: W `[m, n]` frozen, A `[r, n]`, b `[m]`, scale s, blocks of `m/r` rows, row `i` in
//! block `k(i)`; the adapter sees `xd = dropout(x)`; `S_i = A_{k(i)} ⊙ W_i` (the scaled rows) and
//! `Wa_i = s·b_i·S_i` (the adapter's weight, `s·(M ⊙ W)` in `docs/METHOD.md` §2.2).
//!
//! Two forms, same arithmetic:
//!
//! - **per block** (the memory-efficient form of `docs/METHOD.md` §2.4, kept as the plain
//!   reference): one GEMM per block with inner or outer dimension `m/r`:
//!   `z_k = (xd ⊙ A_k)·W_kᵀ`, `y = x·Wᵀ + s·(z ⊙ bᵀ)`; backward with `H = s·(G ⊙ bᵀ)`,
//!   `U_k = H_k·W_k`: `dx = G·W + mask ⊙ Σ_k U_k ⊙ A_k`, `dA_k = Σ_tokens xd ⊙ U_k`,
//!   `db = s·Σ_tokens G ⊙ z` (z recomputed);
//! - **per row group** (what the op runs), on as many whole blocks as fit a fixed 4 MiB
//!   scratch at a time. An inverted-dropout mask is `c` (= 1/(1−p)) except on the dropped set D,
//!   so `xd = c·x − e` with `e = x` on D and 0 elsewhere (5% of the entries at p = 0.05), and
//!   with the merged weight `Wc = W + c·Wa` every pair of GEMMs becomes one plus a sparse term:
//!   `y = x·Wcᵀ − e·Waᵀ` (one AXPY of a row of `Waᵀ` per dropped entry), backward
//!   `dx = G·Wc − c·1_D ⊙ (G·Wa)` (one dot product per dropped entry), `P = Gᵀ·xd` `[m, n]`,
//!   and from `Q_i = W_i ⊙ P_i`: `dA_k = s·Σ_{i∈k} b_i·Q_i`, `db_i = s·A_{k(i)}·Q_i`. That is
//!   three GEMMs per layer and step where the plain form takes five; without dropout D is
//!   empty and c = 1.
//!
//! Nothing but x (already alive as the layer input) is kept for the backward, and no buffer grows
//! with m·n beyond the fixed scratch.

use super::dropped_rows;
use crate::cpu::{axpy, dot, f32_slice, f32_tensor, with_f32, PackedMatrix, Weight};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;

/// Rows handled by one rayon task in the element-wise passes.
const ROWS_PER_TASK: usize = 16;

/// `dst (+)= lhs · rhs` through faer on rayon's threads.
pub(super) fn gemm(dst: MatMut<'_, f32>, accum: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, 1.0f32, Par::rayon(0));
}

/// Shapes of one SPP or LoRA product: `t` tokens, `n` inputs, `m` outputs, `r` rows of A (SPP's
/// r, LoRA's rank).
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

/// Scratch budget (elements) for the adapter rows of one row group.
const GROUP_ELEMS: usize = 1 << 20;

/// Rows per group: whole blocks of `m/r` rows, as many as fit in [`GROUP_ELEMS`] (at least one).
fn group_rows(d: Dims) -> usize {
    let blk = d.m / d.r;
    (GROUP_ELEMS / (blk * d.n)).clamp(1, d.r) * blk
}

/// Element-wise sum of two partial vectors (the reduce step of the parallel column sums).
fn add_into(mut s: Vec<f32>, p: Vec<f32>) -> Vec<f32> {
    s.iter_mut().zip(&p).for_each(|(s, p)| *s += p);
    s
}

/// A dropout mask as `c − c'·1_D`: `c` its largest entry, and per token the inputs `j` where it
/// differs from `c`, each with `c − mask` (exact for any mask; for inverted dropout D is the
/// dropped set and the difference is `c`).
struct Sparse {
    c: f32,
    offsets: Vec<usize>,
    entries: Vec<(u32, f32)>,
}

impl Sparse {
    fn new(mask: Option<&[f32]>, t: usize, n: usize) -> Self {
        let Some(mask) = mask else {
            return Sparse {
                c: 1.0,
                offsets: vec![0; t + 1],
                entries: Vec::new(),
            };
        };
        let c = mask.par_iter().copied().reduce(|| 0f32, f32::max);
        let rows: Vec<Vec<(u32, f32)>> = mask
            .par_chunks(n)
            .map(|row| {
                let mut e = Vec::new();
                for (j, &v) in row.iter().enumerate() {
                    if v != c {
                        e.push((j as u32, c - v));
                    }
                }
                e
            })
            .collect();
        Self::from_rows(c, rows)
    }

    /// The same for [`super::dropout_mask`]`(seed, t·n, p)`, drawn directly (no mask is built).
    fn dropout(seed: u64, p: f32, t: usize, n: usize) -> Self {
        let c = 1.0 / (1.0 - p);
        let rows = dropped_rows(seed, t, n, p)
            .into_iter()
            .map(|r| r.into_iter().map(|j| (j, c)).collect())
            .collect();
        Self::from_rows(c, rows)
    }

    fn from_rows(c: f32, rows: Vec<Vec<(u32, f32)>>) -> Self {
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        offsets.push(0);
        for r in &rows {
            offsets.push(offsets[offsets.len() - 1] + r.len());
        }
        Sparse {
            c,
            offsets,
            entries: rows.concat(),
        }
    }

    fn row(&self, t: usize) -> &[(u32, f32)] {
        &self.entries[self.offsets[t]..self.offsets[t + 1]]
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `x ⊙ mask` for `x` `[t, n]`.
    fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut xd: Vec<f32> = x.par_iter().map(|v| v * self.c).collect();
        xd.par_chunks_mut(n).enumerate().for_each(|(t, row)| {
            for &(j, v) in self.row(t) {
                row[j as usize] = x[t * n + j as usize] * (self.c - v);
            }
        });
        xd
    }
}

/// The frozen weight as the row-group form reads it: a row segment at a time, from f32 rows or
/// from a packed matrix (16-bit values, sparse layouts) unpacked segment by segment.
#[derive(Clone, Copy)]
enum Rows<'a> {
    F32(&'a [f32]),
    Packed(&'a PackedMatrix),
}

thread_local! {
    /// One unpacked row segment of a [`Rows::Packed`] weight.
    static SEGMENT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Rows<'_> {
    /// `f` of columns `j0 .. j0 + len` of row `i` (rows of `n` columns).
    fn with_row<R>(
        self,
        (i, j0, len): (usize, usize, usize),
        n: usize,
        f: impl FnOnce(&[f32]) -> R,
    ) -> R {
        match self {
            Rows::F32(w) => f(&w[i * n + j0..][..len]),
            Rows::Packed(p) => SEGMENT.with_borrow_mut(|seg| {
                seg.resize(len, 0.0);
                p.unpack_segment(i, j0, &mut seg[..len]);
                f(&seg[..len])
            }),
        }
    }
}

/// The adapter's weight `Wa_i = s·b_i·A_{k(i)} ⊙ W_i`, built a row group at a time.
struct Adapter<'a> {
    w: Rows<'a>,
    a: &'a [f32],
    b: &'a [f32],
    scale: f32,
    d: Dims,
}

impl Adapter<'_> {
    /// Rows `i0 .. i0 + rows` of the merged weight `W + c·Wa`, row-major `[rows, n]`.
    fn merged_rows(&self, c: f32, i0: usize, rows: usize, out: &mut [f32]) {
        let (n, blk) = (self.d.n, self.d.m / self.d.r);
        out[..rows * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, o)| {
                let ak = &self.a[((i0 + i) / blk) * n..][..n];
                let sb = c * self.scale * self.b[i0 + i];
                self.w.with_row((i0 + i, 0, n), n, |w| {
                    for ((o, w), a) in o.iter_mut().zip(w).zip(ak) {
                        *o = w * (1.0 + sb * a);
                    }
                });
            });
    }

    /// `Waᵀ` for rows `i0 .. i0 + rows`, row-major `[n, rows]`.
    fn cols(&self, i0: usize, rows: usize, out: &mut [f32]) {
        const J: usize = 16;
        let (n, blk) = (self.d.n, self.d.m / self.d.r);
        out[..rows * n]
            .par_chunks_mut(rows * J)
            .enumerate()
            .for_each(|(jc, o)| {
                let j0 = jc * J;
                let nj = o.len() / rows;
                for ii in 0..rows {
                    let i = i0 + ii;
                    let ak = &self.a[(i / blk) * n + j0..][..nj];
                    let sb = self.scale * self.b[i];
                    self.w.with_row((i, j0, nj), n, |wi| {
                        for jj in 0..nj {
                            o[jj * rows + ii] = sb * ak[jj] * wi[jj];
                        }
                    });
                }
            });
    }
}

/// `y = x·Wᵀ + s·(z ⊙ bᵀ)` `[t, m]`, row-major.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    d: Dims,
    scale: f32,
    mask: Option<&[f32]>,
    form: Form,
) -> Vec<f32> {
    let Dims { t, n, m, .. } = d;
    let (xm, wm) = (
        MatRef::from_row_major_slice(x, t, n),
        MatRef::from_row_major_slice(w, m, n),
    );
    let mut y = vec![0f32; t * m];
    match form {
        Form::Blocks => {
            gemm(
                MatMut::from_row_major_slice_mut(&mut y, t, m),
                Accum::Replace,
                xm,
                wm.transpose(),
            );
            let z = z_blocks(&dropped(x, mask), w, a, d);
            y.par_chunks_mut(m).zip(z.par_chunks(m)).for_each(|(y, z)| {
                for ((y, z), b) in y.iter_mut().zip(z).zip(b) {
                    *y += scale * z * b;
                }
            });
        }
        Form::RowGroups => {
            let ad = Adapter {
                w: Rows::F32(w),
                a,
                b,
                scale,
                d,
            };
            return forward_groups(x, &ad, &Sparse::new(mask, t, n));
        }
    }
    y
}

/// The row-group forward: `y = x·(W + c·Wa)ᵀ − e·Waᵀ`.
fn forward_groups(x: &[f32], ad: &Adapter, sp: &Sparse) -> Vec<f32> {
    let Dims { t, n, m, .. } = ad.d;
    let xm = MatRef::from_row_major_slice(x, t, n);
    let mut y = vec![0f32; t * m];
    let gr = group_rows(ad.d);
    let (mut wc, mut wat) = (vec![0f32; gr * n], Vec::new());
    for i0 in (0..m).step_by(gr) {
        let rows = gr.min(m - i0);
        ad.merged_rows(sp.c, i0, rows, &mut wc);
        gemm(
            MatMut::from_row_major_slice_mut(&mut y, t, m).subcols_mut(i0, rows),
            Accum::Replace,
            xm,
            MatRef::from_row_major_slice(&wc[..rows * n], rows, n).transpose(),
        );
        if sp.is_empty() {
            continue;
        }
        wat.resize(gr * n, 0.0);
        ad.cols(i0, rows, &mut wat);
        y.par_chunks_mut(m).enumerate().for_each(|(ti, y)| {
            let (y, x) = (&mut y[i0..i0 + rows], &x[ti * n..][..n]);
            for &(j, v) in sp.row(ti) {
                axpy(y, -v * x[j as usize], &wat[j as usize * rows..][..rows]);
            }
        });
    }
    y
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

/// Returns `(dx [t, n], dA [r, n], db [m])` for the output gradient `g` `[t, m]`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    g: &[f32],
    d: Dims,
    scale: f32,
    mask: Option<&[f32]>,
    form: Form,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match form {
        Form::Blocks => backward_blocks(&dropped(x, mask), w, a, b, g, d, scale, mask),
        Form::RowGroups => backward_groups(
            x,
            &Adapter {
                w: Rows::F32(w),
                a,
                b,
                scale,
                d,
            },
            g,
            &Sparse::new(mask, d.t, d.n),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_blocks(
    xd: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    g: &[f32],
    d: Dims,
    scale: f32,
    mask: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { t, n, m, r } = d;
    let blk = m / r;
    let wm = MatRef::from_row_major_slice(w, m, n);
    let mut dx = vec![0f32; t * n];
    gemm(
        MatMut::from_row_major_slice_mut(&mut dx, t, n),
        Accum::Replace,
        MatRef::from_row_major_slice(g, t, m),
        wm,
    );
    let h: Vec<f32> = g
        .par_chunks(m)
        .flat_map_iter(|g| g.iter().zip(b).map(|(g, b)| scale * g * b))
        .collect();
    let hm = MatRef::from_row_major_slice(&h, t, m);
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
    let dxa = dropped(&dxa, mask);
    dx.par_iter_mut()
        .zip(dxa.par_iter())
        .for_each(|(d, a)| *d += a);
    let z = z_blocks(xd, w, a, d);
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

/// The row-group backward: `dx = G·(W + c·Wa) − c·1_D ⊙ (G·Wa)`, `P = Gᵀ·xd`, dA and db from P.
fn backward_groups(
    x: &[f32],
    ad: &Adapter,
    g: &[f32],
    sp: &Sparse,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, w, a, b, scale) = (ad.d, ad.w, ad.a, ad.b, ad.scale);
    let Dims { t, n, m, r } = d;
    let blk = m / r;
    let xd = sp.apply(x, n);
    let (gm, xdm) = (
        MatRef::from_row_major_slice(g, t, m),
        MatRef::from_row_major_slice(&xd, t, n),
    );
    let mut dx = vec![0f32; t * n];
    let gr = group_rows(d);
    let (mut wc, mut p, mut wat) = (vec![0f32; gr * n], vec![0f32; gr * n], Vec::new());
    let mut da = vec![0f32; r * n];
    let mut db = vec![0f32; m];
    for i0 in (0..m).step_by(gr) {
        let rows = gr.min(m - i0);
        ad.merged_rows(sp.c, i0, rows, &mut wc);
        let gg = gm.subcols(i0, rows);
        gemm(
            MatMut::from_row_major_slice_mut(&mut dx, t, n),
            if i0 == 0 { Accum::Replace } else { Accum::Add },
            gg,
            MatRef::from_row_major_slice(&wc[..rows * n], rows, n),
        );
        if !sp.is_empty() {
            wat.resize(gr * n, 0.0);
            ad.cols(i0, rows, &mut wat);
            dx.par_chunks_mut(n).enumerate().for_each(|(ti, dx)| {
                let g = &g[ti * m + i0..][..rows];
                for &(j, v) in sp.row(ti) {
                    dx[j as usize] -= v * dot(g, &wat[j as usize * rows..][..rows]);
                }
            });
        }
        gemm(
            MatMut::from_row_major_slice_mut(&mut p[..rows * n], rows, n),
            Accum::Replace,
            gg.transpose(),
            xdm,
        );
        // Per block of this group: dA_k and the block's db from Q_i = W_i ⊙ P_i.
        da[(i0 / blk) * n..((i0 + rows) / blk) * n]
            .par_chunks_mut(n)
            .zip(db[i0..i0 + rows].par_chunks_mut(blk))
            .enumerate()
            .for_each(|(kk, (dak, dbk))| {
                let ak = &a[(i0 / blk + kk) * n..][..n];
                for (ii, dbi) in dbk.iter_mut().enumerate() {
                    let i = kk * blk + ii;
                    let pi = &p[i * n..][..n];
                    let sb = scale * b[i0 + i];
                    let acc = w.with_row((i0 + i, 0, n), n, |wi| {
                        let mut acc = 0f32;
                        for j in 0..n {
                            let q = wi[j] * pi[j];
                            dak[j] += sb * q;
                            acc += ak[j] * q;
                        }
                        acc
                    });
                    *dbi = scale * acc;
                }
            });
    }
    (dx, da, db)
}

/// The frozen weight an [`SppOp`] holds: a dense tensor (a 16-bit one widened to f32 inside
/// each call), or a packed matrix whose rows are unpacked as the row groups read them (the
/// weight is never widened or copied whole).
#[derive(Clone)]
pub enum Frozen {
    Dense(Tensor),
    Packed(Arc<PackedMatrix>),
}

impl Frozen {
    pub(crate) fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Frozen::Dense(w) => w.dims2(),
            Frozen::Packed(p) => Ok((p.rows, p.cols)),
        }
    }

    /// `f` of the weight as dense f32 rows (widened, or unpacked, for this call only).
    pub(crate) fn with_dense<R>(&self, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
        match self {
            Frozen::Dense(w) => with_f32(w, f),
            Frozen::Packed(p) => Ok(f(&p.unpack())),
        }
    }

    /// `f` of the weight as a GEMM operand (a packed one is unpacked a panel at a time).
    pub(crate) fn with_weight<R>(&self, f: impl FnOnce(Weight) -> R) -> candle_core::Result<R> {
        match self {
            Frozen::Dense(w) => with_f32(w, |w| f(Weight::F32(w))),
            Frozen::Packed(p) => Ok(f(Weight::Packed(p))),
        }
    }
}

/// The SPP linear as a candle op on `(x [T, n], A [r, n], b [m])`, holding the frozen weight.
pub struct SppOp {
    pub w: Frozen,
    pub scale: f32,
    /// `(seed, p)` of the adapter's dropout, `None` when off.
    pub dropout: Option<(u64, f32)>,
}

impl SppOp {
    fn dims(&self, x: &Shape, a: &Shape) -> candle_core::Result<Dims> {
        let (t, n) = x.dims2()?;
        let (r, n2) = a.dims2()?;
        let (m, n3) = self.w.dims()?;
        if n != n2 || n != n3 || r == 0 || m % r != 0 {
            candle_core::bail!(
                "spp: x {:?}, A {:?} and W {:?} do not fit",
                x.dims(),
                a.dims(),
                (m, n3)
            );
        }
        Ok(Dims { t, n, m, r })
    }

    /// `f` of the frozen weight's rows.
    fn with_rows<R>(&self, f: impl FnOnce(Rows) -> R) -> candle_core::Result<R> {
        match &self.w {
            Frozen::Dense(w) => with_f32(w, |w| f(Rows::F32(w))),
            Frozen::Packed(p) => Ok(f(Rows::Packed(p))),
        }
    }

    fn sparse(&self, d: Dims) -> Sparse {
        match self.dropout {
            Some((seed, p)) => Sparse::dropout(seed, p, d.t, d.n),
            None => Sparse::new(None, d.t, d.n),
        }
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
        let sp = self.sparse(d);
        let scale = self.scale;
        let y = self.with_rows(|w| forward_groups(x, &Adapter { w, a, b, scale, d }, &sp))?;
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
        let (sp, scale) = (self.sparse(d), self.scale);
        let (dx, da, db) = with_f32(x, |x| {
            self.with_rows(|w| {
                with_f32(a, |a| {
                    with_f32(b, |b| {
                        with_f32(grad, |g| {
                            backward_groups(x, &Adapter { w, a, b, scale, d }, g, &sp)
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
