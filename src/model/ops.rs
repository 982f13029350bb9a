//! Fused CPU kernels for the element-wise parts of the forward pass that candle runs on one
//! thread or in several passes: `silu(g)·u`, the causal softmax of attention scores, and the
//! per-token negative log-likelihood. Each has a plain composition of candle ops beside it
//! (`*_reference`), used on other devices and dtypes and as the check in the tests.
//! The CPU ops carry their backward, so autograd keeps working through them (candle's own fused
//! RMSNorm and RoPE have none, which training needs).

use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fused op: expected a contiguous f32 tensor"),
    }
}

/// A pointer that tasks writing disjoint rows may share.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: the users (attention tasks, GEMM threads) each write a disjoint set of elements.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY (of the callers): offsets stay inside the buffer the pointer came from.
        self.0.wrapping_add(offset)
    }
}

/// `n` floats computed chunk by chunk in parallel, without zero-filling the buffer first:
/// `vec![0.0; n]` is a pass over memory on the calling thread alone, while the workers wait (about
/// 3% of a packed forward, `perf record` of `spp eval tasks`). `fill(i, dst)` gets chunk `i`
/// (`chunk` floats, the last one shorter).
///
/// # Safety
/// `fill` writes every element of `dst` before reading it.
pub(crate) unsafe fn par_fill(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, dst)| {
            // SAFETY: f32 has no invalid bit patterns and `fill` only writes before it reads.
            let dst = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(i, dst)
        });
    // SAFETY: every chunk was written by `fill` (the caller's promise).
    unsafe { v.set_len(n) };
    v
}

/// Runs `f` on the contiguous f32 data of a tensor: in place for a contiguous f32 CPU tensor,
/// else on a copy (strided, another dtype or another device).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => Ok(f(f32_slice(c, l)?)),
        _ => candle_core::bail!("fused op: expected a CPU tensor"),
    }
}

/// A new f32 CPU tensor from a buffer.
pub(crate) fn f32_tensor(v: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// `eˣ` without a libm call, so that loops over it vectorise: `2^k · e^r` with `k` rounded by the
/// 1.5·2²³ trick, `r = x − k·ln 2` in `[−ln2/2, ln2/2]` (ln 2 split in two for accuracy) and a
/// degree-6 Taylor polynomial (relative error < 2e-7; checked against `f32::exp` in the tests).
/// Inputs are clamped to [−87.3, 88.7], the range of normal f32 results.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.7);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `shifted`'s low mantissa bits hold k exactly (its ulp is 1), so 2^k is built with integer
    // lanes; a float-to-int `as` cast would not vectorise (it saturates and maps NaN to 0).
    let two_k = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(two_k)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// Maximum of a slice, eight lanes at a time so that it vectorises.
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Sum of a slice with eight partial sums.
#[inline(always)]
fn sum_of(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn softmax_row_body(x: &[f32], o: &mut [f32]) {
    let max = max_of(x);
    for (o, &v) in o.iter_mut().zip(x) {
        *o = exp_fast(v - max);
    }
    let inv = 1.0 / sum_of(o);
    o.iter_mut().for_each(|v| *v *= inv);
}

/// `x ← exp(x − max x)` in one pass after the max, returning the sum of the new values.
#[inline(always)]
fn exp_shifted_body(x: &mut [f32]) -> f32 {
    let max = max_of(x);
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp_fast(c[i] - max);
            lanes[i] += c[i];
        }
    }
    let mut rest = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_fast(*v - max);
        rest += *v;
    }
    lanes.iter().sum::<f32>() + rest
}

#[inline(always)]
fn softmax_inplace_body(x: &mut [f32]) {
    let inv = 1.0 / exp_shifted_body(x);
    x.iter_mut().for_each(|v| *v *= inv);
}

#[inline(always)]
fn silu_mul_body(g: &[f32], u: &[f32], o: &mut [f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

/// `log Σ exp(row)`: the max, then the exponentials summed in eight lanes (nothing written).
#[inline(always)]
fn logsumexp_body(row: &[f32]) -> f32 {
    let max = max_of(row);
    let mut lanes = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|&z| exp_fast(z - max)).sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += exp_fast(c[i] - max);
        }
    }
    (lanes.iter().sum::<f32>() + rest).ln() + max
}

/// `Σ a_i·b_i` with sixteen partial sums.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `max[c] ← max(max[c], m[r, c])` over the rows of `m` (`[_, max.len()]`, a multiple of 8
/// columns), in strips of eight columns so that a strip's maxima stay in one register.
#[inline(always)]
fn col_max_body(m: &[f32], max: &mut [f32]) {
    let w = max.len();
    for (s, mx) in max.chunks_exact_mut(8).enumerate() {
        let mut acc: [f32; 8] = (&*mx).try_into().unwrap_or([f32::NEG_INFINITY; 8]);
        for row in m.chunks_exact(w) {
            let r: &[f32; 8] = row[s * 8..s * 8 + 8].try_into().unwrap_or(&[0.0; 8]);
            for i in 0..8 {
                acc[i] = if r[i] > acc[i] { r[i] } else { acc[i] };
            }
        }
        mx.copy_from_slice(&acc);
    }
}

/// `m[r, c] ← exp(m[r, c] − max[c])` and `sum[c] += m[r, c]` over the rows of `m` (a multiple of
/// 8 columns), 32 columns at a time (four vectors of shifts and sums held in registers down the
/// rows), the last columns 8 at a time; a column whose maximum is −∞ (all hidden so far) is
/// shifted by 0 instead, leaving ≈ 0 rather than NaN.
#[inline(always)]
fn col_exp_body(m: &mut [f32], max: &[f32], sum: &mut [f32]) {
    let w = max.len();
    let wide = w - w % 32;
    col_exp_strips::<32>(m, w, 0, &max[..wide], &mut sum[..wide]);
    col_exp_strips::<8>(m, w, wide, &max[wide..], &mut sum[wide..]);
}

/// [`col_exp_body`] on the columns `c0 ..` of `m` (`[_, w]`) in strips of `S`.
#[inline(always)]
fn col_exp_strips<const S: usize>(
    m: &mut [f32],
    w: usize,
    c0: usize,
    max: &[f32],
    sum: &mut [f32],
) {
    for (s, (mx, sm)) in max.chunks_exact(S).zip(sum.chunks_exact_mut(S)).enumerate() {
        let mut shift = [0f32; S];
        for i in 0..S {
            shift[i] = if mx[i] == f32::NEG_INFINITY {
                0.0
            } else {
                mx[i]
            };
        }
        let mut acc = [0f32; S];
        acc.copy_from_slice(sm);
        let at = c0 + s * S;
        for row in m.chunks_exact_mut(w) {
            let r: &mut [f32; S] = (&mut row[at..at + S])
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            for i in 0..S {
                r[i] = exp_fast(r[i] - shift[i]);
                acc[i] += r[i];
            }
        }
        sm.copy_from_slice(&acc);
    }
}

/// Each kernel is compiled twice: for the baseline target and with AVX2 + FMA, picked at run
/// time, so one portable binary still uses 8-wide vectors where the CPU has them. The
/// `hand-written` form picks a kernel of [`simd`] instead of recompiling the body.
macro_rules! dispatch {
    ($name:ident, $avx:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
        dispatch!(hand-written $name, $avx, $body, ($($arg: $ty),*) -> $ret);
    };
    (hand-written $name:ident, $avx:path, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { $avx($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

dispatch!(softmax_row, softmax_row_avx2, softmax_row_body, (x: &[f32], o: &mut [f32]) -> ());
dispatch!(softmax_inplace_fast, softmax_inplace_avx2, softmax_inplace_body, (x: &mut [f32]) -> ());
dispatch!(exp_shifted_fast, exp_shifted_avx2, exp_shifted_body, (x: &mut [f32]) -> f32);
dispatch!(hand-written silu_mul_chunk, simd::silu_mul, silu_mul_body, (g: &[f32], u: &[f32], o: &mut [f32]) -> ());
dispatch!(hand-written logsumexp, simd::logsumexp, logsumexp_body, (row: &[f32]) -> f32);
dispatch!(dot_fast, dot_avx2, dot_body, (a: &[f32], b: &[f32]) -> f32);
dispatch!(col_max_fast, col_max_avx2, col_max_body, (m: &[f32], max: &mut [f32]) -> ());
dispatch!(hand-written col_exp_fast, simd::col_exp, col_exp_body, (m: &mut [f32], max: &[f32], sum: &mut [f32]) -> ());
dispatch!(axpy_fast, axpy_avx2, axpy_body, (y: &mut [f32], a: f32, x: &[f32]) -> ());

/// AVX2 + FMA versions of the kernels whose exponentials dominate them. Written with intrinsics:
/// the compiler does not contract `exp_fast`'s multiply-adds into FMAs, and with four vectors of
/// shifts and sums in flight it spills the polynomial's constants (`perf` of the attention core at
/// T = 2048: the column exponentials 17% of it before, 10% after). The arithmetic is
/// `exp_fast`'s, with each multiply-add fused (one rounding instead of two).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// [`super::exp_fast`] of eight lanes.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let round = _mm256_set1_ps(12_582_912.0);
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.7),
        );
        let shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), round);
        let k = _mm256_sub_ps(shifted, round);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let k_bits = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(round));
        let two_k = _mm256_slli_epi32::<23>(_mm256_add_epi32(k_bits, _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_k))
    }

    /// [`super::col_exp_body`]: 32 columns at a time, then 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn col_exp(m: &mut [f32], max: &[f32], sum: &mut [f32]) {
        let w = max.len();
        let wide = w - w % 32;
        col_exp_strips::<4>(m, w, 0, &max[..wide], &mut sum[..wide]);
        col_exp_strips::<1>(m, w, wide, &max[wide..], &mut sum[wide..]);
    }

    /// Columns `c0 ..` of `m` (`[_, w]`) in strips of `V` vectors.
    #[inline(always)]
    unsafe fn col_exp_strips<const V: usize>(
        m: &mut [f32],
        w: usize,
        c0: usize,
        max: &[f32],
        sum: &mut [f32],
    ) {
        let rows = m.len() / w;
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        for (s, (mx, sm)) in max
            .chunks_exact(8 * V)
            .zip(sum.chunks_exact_mut(8 * V))
            .enumerate()
        {
            let mut shift = [_mm256_setzero_ps(); V];
            let mut acc = [_mm256_setzero_ps(); V];
            for v in 0..V {
                let x = _mm256_loadu_ps(mx.as_ptr().add(8 * v));
                // A column whose maximum is −∞ is shifted by 0.
                shift[v] = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(x, neg_inf), x);
                acc[v] = _mm256_loadu_ps(sm.as_ptr().add(8 * v));
            }
            let mut row = m.as_mut_ptr().add(c0 + s * 8 * V);
            for _ in 0..rows {
                for v in 0..V {
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row.add(8 * v)), shift[v]));
                    _mm256_storeu_ps(row.add(8 * v), e);
                    acc[v] = _mm256_add_ps(acc[v], e);
                }
                row = row.add(w);
            }
            for (v, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(sm.as_mut_ptr().add(8 * v), *a);
            }
        }
    }

    /// [`super::silu_mul_body`]: `g·u / (1 + e^(−g))`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
        let n = o.len().min(g.len()).min(u.len());
        let wide = n - n % 8;
        let one = _mm256_set1_ps(1.0);
        for i in (0..wide).step_by(8) {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let num = _mm256_mul_ps(x, _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(
                o.as_mut_ptr().add(i),
                _mm256_div_ps(num, _mm256_add_ps(one, e)),
            );
        }
        super::silu_mul_body(&g[wide..n], &u[wide..n], &mut o[wide..n]);
    }

    /// [`super::logsumexp_body`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn logsumexp(row: &[f32]) -> f32 {
        let max = super::max_of(row);
        let shift = _mm256_set1_ps(max);
        let chunks = row.chunks_exact(8);
        let rest: f32 = chunks
            .remainder()
            .iter()
            .map(|&z| super::exp_fast(z - max))
            .sum();
        let mut acc = [_mm256_setzero_ps(); 2];
        for (i, c) in chunks.enumerate() {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), shift));
            acc[i % 2] = _mm256_add_ps(acc[i % 2], e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1]));
        (lanes.iter().sum::<f32>() + rest).ln() + max
    }
}

/// `Σ a_i·b_i` over the shorter of the two slices.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_fast(a, b)
}

/// `y += a·x` over the shorter of the two slices.
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_fast(y, a, x)
}

/// Softmax of a row in place (−∞ entries become 0).
pub(crate) fn softmax_inplace(x: &mut [f32]) {
    softmax_inplace_fast(x)
}

/// One block of rows of an online column softmax (the scores of one block of keys, one column
/// per query): with the running column maxima `max` and sums `sum` of the blocks before,
/// `m ← exp(m − new max)`, `sum ← sum·scale + column sums`, `max ← new max`, and `scale` gets
/// `exp(old max − new max)`, the factor by which anything accumulated with the old maxima must be
/// multiplied. Returns whether any scale differs from 1.
pub(crate) fn exp_shifted_cols(
    m: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    scale: &mut [f32],
) -> bool {
    assert!(
        max.len().is_multiple_of(8),
        "column softmax: {} columns, not a multiple of 8",
        max.len()
    );
    scale.copy_from_slice(max);
    col_max_fast(m, max);
    let mut rescale = false;
    for ((sc, &new), s) in scale.iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
        *sc = if *sc == new { 1.0 } else { exp_fast(*sc - new) };
        rescale |= *sc != 1.0;
        *s *= *sc;
    }
    col_exp_fast(m, max, sum);
    rescale
}

/// The softmax of a row without its division: `x ← exp(x − max x)`; returns the sum to divide by.
pub(crate) fn exp_shifted(x: &mut [f32]) -> f32 {
    exp_shifted_fast(x)
}

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
        Ok((Some(grad.matmul(w)?), None))
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
    let fused = fast_path(g)
        && fast_path(u)
        && fast_path(w)
        && !g.track_op()
        && !u.track_op()
        && g.rank() == 2
        && g.dims() == u.dims()
        && w.rank() == 2
        && w.dim(1)? == g.dim(1)?;
    if !fused {
        return frozen_matmul(&silu_mul(g, u)?, w);
    }
    let ((rows, k), n) = (g.dims2()?, w.dim(0)?);
    let y = with_f32(g, |g| {
        with_f32(u, |u| {
            with_f32(w, |w| {
                let lhs = super::gemm::Lhs::SiluMul(g, u);
                super::gemm::gemm_lhs_abt_many(lhs, rows, k, &[(w, n)]).remove(0)
            })
        })
    })???;
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

/// Rows of the LM head computed at once by [`lm_head_nll`]: their logits live in one buffer reused
/// for every chunk, at most `LM_HEAD_LOGITS` floats (64 MiB) and 64–512 rows (SmolLM2: 341).
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
    let ((t, hd), (v, hd2)) = (h.dims2()?, w.dims2()?);
    if hd != hd2 || targets.dims() != [t] {
        crate::bail!(
            "lm-head NLL: hidden {:?}, weight {:?} and targets {:?} do not fit",
            h.dims(),
            w.dims(),
            targets.dims()
        );
    }
    let tgt = targets.to_vec1::<u32>()?;
    if let Some(bad) = tgt.iter().find(|&&x| x as usize >= v) {
        crate::bail!("target token {bad} is outside the vocabulary of {v}");
    }
    let out = with_f32(h, |h| {
        with_f32(w, |w| {
            let rows = (LM_HEAD_LOGITS / v).clamp(64, 512);
            let mut logits = vec![0f32; rows.min(t) * v];
            let mut out = Vec::with_capacity(t);
            for (hc, tc) in h.chunks(rows * hd).zip(tgt.chunks(rows)) {
                let (n, buf) = (tc.len(), &mut logits[..tc.len() * v]);
                super::gemm::gemm_abt(hc, w, buf, n, hd, v);
                out.par_extend(
                    buf.par_chunks(v)
                        .zip(tc.par_iter())
                        .map(|(row, &t)| logsumexp(row) - row[t as usize]),
                );
            }
            out
        })
    })??;
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

#[inline(always)]
fn rms_row_body(x: &[f32], w: &[f32], o: &mut [f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
        *o = x * r * w;
    }
}
dispatch!(rms_row, rms_row_avx2, rms_row_body, (x: &[f32], w: &[f32], o: &mut [f32], eps: f32) -> ());

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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn avx2_fma() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Values over exp's whole range (and past it), from a fixed pseudo-random sequence.
    fn values(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.0 * scale)
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], rel: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= rel * y.abs().max(1e-30),
                "element {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn hand_written_kernels_equal_the_portable_ones() {
        if !avx2_fma() {
            return;
        }
        // Column exponentials: 40 columns (one 32-wide strip, one 8-wide), one column hidden.
        let (rows, w) = (7, 40);
        let mut m = values(rows * w, 30.0);
        for r in 0..rows {
            m[r * w + 33] = f32::NEG_INFINITY;
        }
        let mut max = vec![f32::NEG_INFINITY; w];
        col_max_body(&m, &mut max);
        let (mut m1, mut m2) = (m.clone(), m);
        let (mut s1, mut s2) = (values(w, 1.0), values(w, 1.0));
        col_exp_body(&mut m1, &max, &mut s1);
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { simd::col_exp(&mut m2, &max, &mut s2) };
        assert_close(&m2, &m1, 1e-6);
        assert_close(&s2, &s1, 1e-6);
        assert!(m2.iter().all(|v| v.is_finite()) && m2[33] < 1e-37);

        // silu(g)·u over 8-lane chunks and a tail of 5.
        let (g, u) = (values(45, 40.0), values(45, 3.0));
        let (mut o1, mut o2) = (vec![0f32; 45], vec![0f32; 45]);
        silu_mul_body(&g, &u, &mut o1);
        unsafe { simd::silu_mul(&g, &u, &mut o2) };
        assert_close(&o2, &o1, 1e-6);

        // log Σ exp over a vocabulary-like row with a tail.
        let row = values(1003, 25.0);
        let (a, b) = (logsumexp_body(&row), unsafe { simd::logsumexp(&row) });
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    }
}
