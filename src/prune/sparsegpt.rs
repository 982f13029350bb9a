//! SparseGPT: one-shot pruning with weight reconstruction (Frantar & Alistarh 2023,
//! <https://arxiv.org/abs/2301.00774>), as specified in `docs/METHOD.md` §5.4 and written in
//! the reference code (IST-DASLab/sparsegpt, `SparseGPT.fasterprune`).
//!
//! Notation: one linear `y = W x`, W `[rows, cols]`; X the calibration inputs; H = 2·XᵀX/N the
//! Hessian of the layer-wise loss ‖WX − ŴX‖²_F (the same for every row, which is what makes this
//! affordable); `Hinv` the **upper** Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU). Columns are fixed left
//! to right. Once columns < i are fixed, the inverse Hessian of the remaining ones is what
//! Gaussian elimination leaves of H⁻¹, and row i of U is exactly that matrix's row i divided by
//! √(its diagonal): so `err = (w − q)/U_ii` and `W[:, i:] −= err ⊗ U[i, i:]` is the OBS update
//! that compensates zeroing `w − q` in column i, with one factorisation for the whole sweep.
//! Precision: H is accumulated in f32 (like the reference); the factorisations run in f64 (faer)
//! up to [`F64_MAX_INPUTS`] inputs and, wider, in f32 in place (see [`InverseFactor`]); U is
//! stored in f32 and the column sweep runs in f32, like the reference.
//!
//! Divergences from the reference code, on purpose:
//! - Unstructured: the reference prunes `tmp <= sorted[⌊numel·ratio⌋]`, i.e. at least one entry
//!   more than ⌊numel·ratio⌋ and more on ties. We prune exactly ⌊rows·count·ratio⌋ per block,
//!   ties by lowest index (`mask::select`).
//! - N:M counts kept weights (2:4 keeps 2); the reference's `topk(prune_n)` counts pruned ones.
//!   Ties inside a group go to the lowest index (`topk` leaves them unspecified).
//! - A Cholesky failure is retried with 10× the damping (3 times) instead of raising.

use crate::bail;
use crate::cpu::syrk_lower;
use crate::error::Result;
use crate::prune::mask::{self, Sparsity};
use candle_core::{DType, Tensor};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

/// Damping retries (each ×10) after the first Cholesky failure.
const RETRIES: usize = 3;

/// Running Hessian estimate H = (2/N) Σ XᵀX over N calibration samples, kept as the reference's
/// running average so it never needs the final N: each `add` of a sample of T tokens does
/// H ← H·N/(N+1) + (2/(N+1))·XᵀX, N ← N+1. (With samples of T tokens this is T times the
/// per-token average of `docs/METHOD.md` §5.4; the scale cancels in the pruning update and only
/// scales `obs_loss`.)
pub struct Hessian {
    /// Input features (columns of the weight).
    pub n: usize,
    /// Samples added so far.
    pub samples: usize,
    /// n×n, row-major, f32.
    pub h: Vec<f32>,
}

impl Hessian {
    pub fn new(n: usize) -> Self {
        Hessian {
            n,
            samples: 0,
            h: vec![0.0; n * n],
        }
    }

    /// Adds one sample: `x` is `[tokens, n]` row-major.
    pub fn add(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let n = self.n;
        if tokens == 0 {
            bail!("SparseGPT Hessian: a calibration sample has no tokens");
        }
        if tokens.checked_mul(n) != Some(x.len()) {
            bail!("SparseGPT Hessian: a sample of {tokens} tokens × {n} inputs needs {} values, got {}", tokens * n, x.len());
        }
        if let Some(p) = x.iter().position(|v| !v.is_finite()) {
            bail!(
                "SparseGPT Hessian: calibration input is not finite ({}) at token {}, input {}: the unpruned model overflows on the calibration data (try f32/bf16 instead of f16)",
                x[p], p / n, p % n
            );
        }
        let k = self.samples as f64;
        let (keep, scale) = ((k / (k + 1.0)) as f32, (2.0 / (k + 1.0)) as f32);
        // H ← keep·H + scale·xᵀx on the lower triangle, with half the arithmetic of a full
        // product (faer's took 36% of a SparseGPT prune of SmolLM2 at 32 × 2048 windows), read
        // straight from x by spp's GEMM; the upper triangle mirrored.
        for (i, row) in self.h.chunks_exact_mut(n).enumerate() {
            row[..=i].iter_mut().for_each(|h| *h *= keep);
        }
        syrk_lower(x, (tokens, n), &mut self.h, scale);
        mirror_lower(&mut self.h, n);
        self.samples += 1;
        Ok(())
    }

    /// Adds a linear's input `x` (`[..., n]`, any dtype; a GPU's go through [`DeviceHessian`]) as
    /// one sample.
    pub fn add_tensor(&mut self, x: &Tensor) -> Result<()> {
        let tokens = x.elem_count() / self.n.max(1);
        crate::cpu::with_f32(x, |v| self.add(v, tokens))?
    }
}

/// [`Hessian`]'s running average kept on the activations' device (a GPU): each sample's `XᵀX` is
/// the device's matrix product, so neither the activations nor the products cross to the host;
/// [`Self::finish`] copies the n × n result once. Runs on the CPU too (the tests compare it with
/// [`Hessian::add`]).
pub struct DeviceHessian {
    n: usize,
    samples: usize,
    h: Option<Tensor>,
}

impl DeviceHessian {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            samples: 0,
            h: None,
        }
    }

    /// Adds one sample: `x` `[..., n]`, in f32 whatever its dtype.
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        let x = x.to_dtype(DType::F32)?.reshape(((), self.n))?;
        if x.dim(0)? == 0 {
            bail!("SparseGPT Hessian: a calibration sample has no tokens");
        }
        let xtx = x.t()?.matmul(&x)?;
        let k = self.samples as f64;
        let scale = 2.0 / (k + 1.0);
        self.h = Some(match self.h.take() {
            None => (xtx * scale)?,
            Some(h) => ((h * (k / (k + 1.0)))? + (xtx * scale)?)?,
        });
        self.samples += 1;
        Ok(())
    }

    /// The accumulated [`Hessian`] on the host (non-finite entries, from activations that
    /// overflowed, are reported by [`prune`]).
    pub fn finish(self) -> Result<Hessian> {
        let h = match self.h {
            Some(h) => h.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; self.n * self.n],
        };
        Ok(Hessian {
            n: self.n,
            samples: self.samples,
            h,
        })
    }
}

/// Copies the lower triangle of the row-major `[n, n]` matrix `h` onto its upper triangle, in
/// tiles that stay in L1.
fn mirror_lower(h: &mut [f32], n: usize) {
    const TILE: usize = 32;
    for i0 in (0..n).step_by(TILE) {
        for j0 in (i0..n).step_by(TILE) {
            for i in i0..(i0 + TILE).min(n) {
                for j in j0.max(i + 1)..(j0 + TILE).min(n) {
                    h[i * n + j] = h[j * n + i];
                }
            }
        }
    }
}

pub struct SparseGptOutcome {
    /// The pruned and updated `[rows, cols]` row-major weight.
    pub weight: Vec<f32>,
    /// Σ over rows of Σ_i (w_i − q_i)² / Hinv_ii² / 2, as the reference reports.
    pub obs_loss: f64,
    /// The damping finally used (larger than asked when the Hessian needed more).
    pub percdamp_used: f64,
    /// Columns with H_ii = 0 (never active in calibration): zeroed.
    pub dead_inputs: usize,
}

/// SparseGPT on one linear: `weight` `[rows, cols]` row-major f32, `hessian` cols×cols. Factorises
/// a copy of the Hessian; [`prune_factored`] takes a factor made once for several linears.
pub fn prune(
    weight: &[f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    sparsity: &Sparsity,
    blocksize: usize,
    percdamp: f64,
) -> Result<SparseGptOutcome> {
    if hessian.n != cols || hessian.h.len() != cols * cols {
        bail!(
            "SparseGPT: the Hessian is for {} inputs ({} values) but the weight has {cols} columns",
            hessian.n,
            hessian.h.len()
        );
    }
    let copy = Hessian {
        n: hessian.n,
        samples: hessian.samples,
        h: hessian.h.clone(),
    };
    let factor = InverseFactor::new(copy, percdamp)?;
    prune_factored(weight.to_vec(), rows, cols, &factor, sparsity, blocksize)
}

/// SparseGPT on one linear whose input's [`InverseFactor`] is made: `weight` `[rows, cols]`
/// row-major f32, updated in place and returned in the outcome.
pub fn prune_factored(
    mut w: Vec<f32>,
    rows: usize,
    cols: usize,
    factor: &InverseFactor,
    sparsity: &Sparsity,
    blocksize: usize,
) -> Result<SparseGptOutcome> {
    let sparsity = *sparsity;
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(w.len()) {
        bail!(
            "SparseGPT: weight has {} values, not rows {rows} × cols {cols}",
            w.len()
        );
    }
    if factor.n != cols {
        bail!(
            "SparseGPT: the Hessian is for {} inputs but the weight has {cols} columns",
            factor.n
        );
    }
    if blocksize == 0 {
        bail!("SparseGPT: blocksize must be at least 1");
    }
    match sparsity {
        Sparsity::Unstructured { ratio } if !(ratio > 0.0 && ratio < 1.0) => {
            bail!("SparseGPT: sparsity ratio {ratio} is outside (0, 1)")
        }
        Sparsity::NM { n, m } if n == 0 || n >= m => bail!("SparseGPT: {n}:{m} needs 0 < N < M"),
        Sparsity::NM { n, m } if !cols.is_multiple_of(m) => {
            bail!("SparseGPT: {cols} input columns are not divisible by M = {m}, so {n}:{m} cannot be applied")
        }
        // Groups restart at each block start, so a block must hold whole groups.
        Sparsity::NM { n, m } if !blocksize.is_multiple_of(m) => {
            bail!("SparseGPT: blocksize {blocksize} is not a multiple of M = {m} (needed for {n}:{m}); use e.g. 128")
        }
        _ => {}
    }
    if let Some(p) = w.iter().position(|v| !v.is_finite()) {
        bail!(
            "SparseGPT: the weight has a non-finite value at ({}, {})",
            p / cols,
            p % cols
        );
    }

    // Dead inputs carry no information about W: H_ii = 1 keeps H invertible, and their weights
    // can be zeroed for free (their input was always 0).
    let dead = &factor.dead;
    for row in w.chunks_mut(cols) {
        row.iter_mut()
            .zip(dead)
            .filter(|(_, &d)| d)
            .for_each(|(v, _)| *v = 0.0);
    }
    let (hinv, percdamp_used) = (&factor.u, factor.percdamp_used);

    let mut err_buf = vec![0f32; rows * blocksize.min(cols)];
    let mut loss_rows = vec![0f64; rows];
    for i1 in (0..cols).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(cols);
        let count = i2 - i1;
        let d: Vec<f32> = (i1..i2).map(|j| hinv[j * cols + j]).collect();
        // Unstructured: one adaptive mask for the whole block, from the block-start weights
        // (uniform per block, not per row). N:M is chosen inside the sweep.
        let mut prune_mask = match sparsity {
            Sparsity::Unstructured { .. } => {
                let mut scores = vec![0f32; rows * count];
                for (s, row) in scores.chunks_mut(count).zip(w.chunks(cols)) {
                    for j in 0..count {
                        s[j] = row[i1 + j] * row[i1 + j] / (d[j] * d[j]);
                    }
                }
                mask::select(&scores, rows, count, &sparsity, false)
            }
            Sparsity::NM { .. } => vec![false; rows * count],
        };
        let err = &mut err_buf[..rows * count];
        // Within a block, rows are independent (H is shared, the mask is fixed or per row).
        w.par_chunks_mut(cols)
            .zip(err.par_chunks_mut(count))
            .zip(prune_mask.par_chunks_mut(count))
            .zip(loss_rows.par_iter_mut())
            .for_each(|(((row, e), pm), loss)| {
                let row = &mut row[i1..i2];
                let mut group = Vec::new();
                for i in 0..count {
                    if let Sparsity::NM { n, m } = sparsity {
                        if i % m == 0 {
                            // From the current, already-updated weights, as the reference does.
                            group.clear();
                            group.extend((i..i + m).map(|j| row[j] * row[j] / (d[j] * d[j])));
                            mask::mark_lowest(&group, m - n, &mut pm[i..i + m]);
                        }
                    }
                    let wv = row[i];
                    let q = if pm[i] { 0.0 } else { wv };
                    let ei = (wv - q) / d[i];
                    if ei != 0.0 {
                        let hrow = &hinv[(i1 + i) * cols + i1..(i1 + i) * cols + i2];
                        for j in i + 1..count {
                            row[j] -= ei * hrow[j];
                        }
                        *loss += f64::from((wv - q) * (wv - q) / (d[i] * d[i]));
                    }
                    row[i] = q;
                    e[i] = ei;
                }
            });
        // Lazy batch update of the columns right of the block: one GEMM instead of `count`
        // rank-1 updates.
        if i2 < cols {
            let (_, right) =
                MatMut::from_row_major_slice_mut(&mut w, rows, cols).split_at_col_mut(i2);
            let em = MatRef::from_row_major_slice(err, rows, count);
            let hm =
                MatRef::from_row_major_slice(hinv, cols, cols).submatrix(i1, i2, count, cols - i2);
            matmul(right, Accum::Add, em, hm, -1.0f32, Par::rayon(0));
        }
    }
    // Exact arithmetic keeps dead columns at 0 (their rows of Hinv are 0); make it certain.
    for row in w.chunks_mut(cols) {
        row.iter_mut()
            .zip(dead)
            .filter(|(_, &d)| d)
            .for_each(|(v, _)| *v = 0.0);
    }
    if w.iter().any(|v| !v.is_finite()) {
        bail!("SparseGPT: the update overflowed (non-finite weights) with percdamp {percdamp_used}; the Hessian is nearly singular: raise percdamp or use more calibration samples");
    }
    Ok(SparseGptOutcome {
        weight: w,
        obs_loss: loss_rows.iter().sum::<f64>() / 2.0,
        percdamp_used,
        dead_inputs: dead.iter().filter(|&&d| d).count(),
    })
}

/// Inputs up to which [`InverseFactor`] follows the reference's three steps (cholesky → inverse →
/// cholesky) in f64, holding up to three n × n matrices besides the Hessian (1.5 GiB at 8192);
/// wider inputs (LLaMA's `down_proj`: 11008 at 7B, 13824 at 13B, 28672 at 70B) are factorised in
/// f32 inside the Hessian's own buffer, as the reference code works in f32, so that SparseGPT
/// never needs a second matrix of that size.
pub const F64_MAX_INPUTS: usize = 8192;

/// The precision of [`InverseFactor`]'s factorisations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    /// f64 up to [`F64_MAX_INPUTS`] inputs, f32 in place above.
    pub fn for_inputs(n: usize) -> Self {
        if n <= F64_MAX_INPUTS {
            Precision::F64
        } else {
            Precision::F32
        }
    }
}

/// `Hinv` of one input: the upper Cholesky factor U of the damped H⁻¹ (H⁻¹ = UᵀU), which depends
/// on the Hessian only, so the linears that share an input (q/k/v, gate/up) share one.
pub struct InverseFactor {
    /// Input features.
    pub n: usize,
    /// n×n row-major f32: U on and above the diagonal, zeros below.
    pub u: Vec<f32>,
    /// The damping finally used (larger than asked when the Hessian needed more).
    pub percdamp_used: f64,
    /// Inputs with H_ii = 0 (never active in calibration): their weights are zeroed.
    pub dead: Vec<bool>,
}

impl InverseFactor {
    /// Factorises `hessian` (consumed: in f32 its buffer becomes U) in [`Precision::for_inputs`].
    pub fn new(hessian: Hessian, percdamp: f64) -> Result<Self> {
        let p = Precision::for_inputs(hessian.n);
        Self::with_precision(hessian, percdamp, p)
    }

    /// Dampens H by `percdamp` × its mean diagonal (dead inputs' diagonal set to 1), retrying with
    /// 10× the damping when it is not positive definite. In f64, the reference's three steps; in
    /// f32, U without any second n × n matrix: with J the reversal permutation and
    /// L̃ L̃ᵀ = J H J, H⁻¹ = (J L̃⁻¹ J)ᵀ (J L̃⁻¹ J), and J L̃⁻¹ J is upper triangular with a positive
    /// diagonal, so it is U. J·M·J of a row-major matrix is its buffer reversed.
    pub fn with_precision(hessian: Hessian, percdamp: f64, precision: Precision) -> Result<Self> {
        let n = hessian.n;
        if hessian.samples == 0 {
            bail!("SparseGPT: the Hessian has no calibration samples");
        }
        if n == 0 || hessian.h.len() != n * n {
            bail!(
                "SparseGPT: the Hessian holds {} values, not {n} × {n}",
                hessian.h.len()
            );
        }
        if !(percdamp.is_finite() && percdamp >= 0.0) {
            bail!(
                "SparseGPT: percdamp {percdamp} must be a finite number ≥ 0 (the usual value is 0.01)"
            );
        }
        let mut h = hessian.h;
        if let Some(p) = h.iter().position(|v| !v.is_finite()) {
            bail!(
                "SparseGPT: the Hessian has a non-finite value at ({}, {})",
                p / n,
                p % n
            );
        }
        let dead: Vec<bool> = (0..n).map(|j| h[j * n + j] == 0.0).collect();
        let diag: Vec<f64> = (0..n)
            .map(|j| {
                if dead[j] {
                    1.0
                } else {
                    f64::from(h[j * n + j])
                }
            })
            .collect();
        let mean = diag.iter().sum::<f64>() / n as f64;
        let mut tried = Vec::new();
        for k in 0..=RETRIES as i32 {
            // A zero damping cannot grow by ×10: its retries start from 1e-4.
            let p = if k == 0 {
                percdamp
            } else if percdamp == 0.0 {
                1e-4 * 10f64.powi(k - 1)
            } else {
                percdamp * 10f64.powi(k)
            };
            tried.push(format!("{p:.1e}"));
            let damp = p * mean;
            match precision {
                Precision::F64 => {
                    // Only the lower triangle is read by the factorisation.
                    let hd = Mat::<f64>::from_fn(n, n, |i, j| {
                        if i == j {
                            diag[i] + damp
                        } else {
                            f64::from(h[i * n + j])
                        }
                    });
                    if let Some(u) = upper_factor_of_inverse(hd) {
                        return Ok(InverseFactor {
                            n,
                            u,
                            percdamp_used: p,
                            dead,
                        });
                    }
                }
                // A successful factorisation has a positive diagonal (the inverses of the
                // Cholesky pivots).
                Precision::F32 => {
                    if upper_factor_in_place(&mut h, n, |i| (diag[i] + damp) as f32) {
                        for (i, row) in h.chunks_exact_mut(n).enumerate() {
                            row[..i].fill(0.0);
                        }
                        return Ok(InverseFactor {
                            n,
                            u: h,
                            percdamp_used: p,
                            dead,
                        });
                    }
                }
            }
        }
        bail!(
            "SparseGPT: the Hessian ({n}×{n}, mean diagonal {mean:.3e}) is not positive definite even with percdamp {}; the calibration inputs are degenerate: use more or more varied calibration samples, or a larger percdamp",
            tried.join(", ")
        )
    }
}

/// cholesky(H) → H⁻¹ → upper cholesky(H⁻¹) (= transpose of its lower factor), or None when a
/// pivot is not positive or the result is not finite.
fn upper_factor_of_inverse(hd: Mat<f64>) -> Option<Vec<f32>> {
    let n = hd.nrows();
    // Drop each input as soon as it is consumed: at most two n×n f64 matrices live at once.
    let llt = hd.llt(Side::Lower).ok()?;
    drop(hd);
    let inv = llt.inverse();
    drop(llt);
    let llt = inv.llt(Side::Lower).ok()?;
    drop(inv);
    let l = llt.L();
    let mut u = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = l[(j, i)] as f32;
        }
    }
    let ok = u.iter().all(|v| v.is_finite()) && (0..n).all(|i| u[i * n + i] > 0.0);
    ok.then_some(u)
}

/// `b`: a symmetric row-major n×n matrix whose diagonal `diag(i)` replaces. On success, U (the
/// upper Cholesky factor of the inverse, see [`InverseFactor::with_precision`]) is on and above
/// the diagonal and the matrix's strict lower triangle is unchanged. On failure (a pivot not
/// positive, a non-finite result) the matrix is symmetric again, its diagonal aside.
fn upper_factor_in_place(b: &mut [f32], n: usize, diag: impl Fn(usize) -> f32) -> bool {
    for i in 0..n {
        b[i * n + i] = diag(i);
    }
    b.reverse();
    let par = Par::rayon(0);
    let ok = {
        let mut m = MatMut::from_row_major_slice_mut(b, n, n);
        let mut mem = faer::dyn_stack::MemBuffer::new(
            faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f32>(
                n,
                par,
                Default::default(),
            ),
        );
        let stack = faer::dyn_stack::MemStack::new(&mut mem);
        // Only the lower triangle is read and written; the strict upper keeps J·H·J.
        faer::linalg::cholesky::llt::factor::cholesky_in_place(
            m.rb_mut(),
            Default::default(),
            par,
            stack,
            Default::default(),
        )
        .is_ok()
            && {
                invert_lower_in_place(m.rb_mut(), par);
                (0..n).all(|i| (0..=i).all(|j| m[(i, j)].is_finite()))
            }
    };
    // Reversed, the lower triangle just computed (J L̃⁻¹ J) is the upper one, and the untouched
    // strict upper triangle of J·H·J is H's strict lower one.
    b.reverse();
    if !ok {
        mirror_lower(b, n);
    }
    ok
}

/// Replaces the lower triangle of `a` (a lower-triangular matrix with a non-zero diagonal) by its
/// inverse; the strict upper triangle is neither read nor written. Recursively, for
/// L = [[A, 0], [B, C]], L⁻¹ = [[A⁻¹, 0], [−C⁻¹ B A⁻¹, C⁻¹]]: B is replaced by −C⁻¹ B A⁻¹ with
/// two triangular solves while A and C are still intact, then A and C are inverted in place.
fn invert_lower_in_place(mut a: MatMut<'_, f32>, par: Par) {
    let n = a.nrows();
    if n <= 32 {
        // Column by column: X_jj = 1/L_jj, X_ij = −(Σ_{j≤k<i} L_ik X_kj)/L_ii; X_ij overwrites
        // L_ij, which nothing later reads.
        for j in 0..n {
            a[(j, j)] = 1.0 / a[(j, j)];
            for i in j + 1..n {
                let mut s = a[(i, j)] * a[(j, j)];
                for k in j + 1..i {
                    s += a[(i, k)] * a[(k, j)];
                }
                a[(i, j)] = -s / a[(i, i)];
            }
        }
        return;
    }
    let mid = n / 2;
    let (mut tl, _, mut bl, mut br) = a.split_at_mut(mid, mid);
    // B ← B·A⁻¹: X·A = B ⇔ Aᵀ·Xᵀ = Bᵀ, Aᵀ upper triangular.
    faer::linalg::triangular_solve::solve_upper_triangular_in_place(
        tl.rb().transpose(),
        bl.rb_mut().transpose_mut(),
        par,
    );
    // B ← −C⁻¹·B.
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(br.rb(), bl.rb_mut(), par);
    for j in 0..bl.ncols() {
        for i in 0..bl.nrows() {
            bl[(i, j)] = -bl[(i, j)];
        }
    }
    invert_lower_in_place(tl.rb_mut(), par);
    invert_lower_in_place(br.rb_mut(), par);
}
