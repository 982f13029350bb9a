//! The element-wise kernels on f32 slices: exponentials, softmax rows and columns, `silu(g)·u`,
//! log-sum-exp, dot and axpy, RMSNorm rows. Each is written once as a portable body and compiled
//! for AVX2 + FMA beside it (or hand-written with intrinsics), picked at run time.

/// `eˣ` without a libm call, so that loops over it vectorise: `2^k · e^r` with `k` rounded by the
/// 1.5·2²³ trick, `r = x − k·ln 2` in `[−ln2/2, ln2/2]` (ln 2 split in two for accuracy) and a
/// degree-6 Taylor polynomial (relative error < 2e-7; checked against `f32::exp` in the tests).
/// Inputs are clamped to [−87.3, 88.7], the range of normal f32 results.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
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

/// `s[j] = a·rows[j]` ([`dot_body`]) for consecutive rows of `a.len()` floats.
#[inline(always)]
fn dots_body(a: &[f32], rows: &[f32], s: &mut [f32]) {
    for (s, row) in s.iter_mut().zip(rows.chunks_exact(a.len())) {
        *s = dot_body(a, row);
    }
}

/// `y += p[j]·rows[j]` ([`axpy_body`]) for consecutive rows of `y.len()` floats, in order.
#[inline(always)]
fn axpys_body(y: &mut [f32], p: &[f32], rows: &[f32]) {
    for (&p, row) in p.iter().zip(rows.chunks_exact(y.len())) {
        axpy_body(y, p, row);
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
dispatch!(dots, dots_avx2, dots_body, (a: &[f32], rows: &[f32], s: &mut [f32]) -> ());
dispatch!(axpys, axpys_avx2, axpys_body, (y: &mut [f32], p: &[f32], rows: &[f32]) -> ());

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

#[inline(always)]
fn rms_row_body(x: &[f32], w: &[f32], o: &mut [f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
        *o = x * r * w;
    }
}
dispatch!(rms_row, rms_row_avx2, rms_row_body, (x: &[f32], w: &[f32], o: &mut [f32], eps: f32) -> ());

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

#[cfg(test)]
mod accuracy {
    use super::exp_fast;

    #[test]
    fn exp_fast_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (a, b) = (exp_fast(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(f32::NEG_INFINITY) >= 0.0 && exp_fast(f32::NEG_INFINITY) < 1e-37);
    }
}
