//! The x86-64 kernels of the packed product (AVX-512F, AVX2 + FMA).

use super::{PackedMatrix, PackedValues, SparseLayout};
use std::arch::x86_64::*;

/// Stored values as f32: sixteen (AVX-512) or eight (AVX2) from a pointer.
trait Load {
    type T;
    unsafe fn load16(p: *const Self::T) -> __m512;
    unsafe fn load8(p: *const Self::T) -> __m256;
}
struct F32s;
struct Bf16s;
struct F16s;
struct I8s;
impl Load for F32s {
    type T = f32;
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}
impl Load for Bf16s {
    type T = u16;
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
}
impl Load for F16s {
    type T = u16;
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}
impl Load for I8s {
    type T = i8;
    #[inline(always)]
    unsafe fn load16(p: *const i8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn load8(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }
}

/// One instruction set's inner loops over sixteen lanes (one AVX-512 register, or two AVX2
/// registers holding lanes 0–7 and 8–15). Each returns the columns it did.
trait Isa {
    type Acc: Copy;
    unsafe fn zero() -> Self::Acc;
    unsafe fn nm24<L: Load, const R: usize>(
        x: &[f32],
        codes: [*const u8; R],
        vals: [*const L::T; R],
        acc: &mut [Self::Acc; R],
    ) -> usize;
    unsafe fn bitmask<L: Load, const R: usize>(
        x: &[f32],
        masks: [*const u8; R],
        vals: [*const L::T; R],
        acc: &mut [Self::Acc; R],
    ) -> usize;
    unsafe fn dense<L: Load, const R: usize>(
        x: &[f32],
        vals: [*const L::T; R],
        acc: &mut [Self::Acc; R],
    ) -> usize;
    /// The lanes summed as [`super::reduce16`] sums them.
    unsafe fn reduce(a: Self::Acc) -> f32;
    unsafe fn spill(a: Self::Acc) -> [f32; 16];
}

/// The sum of eight lanes `s8[l]` (already `a[l] + a[l + 8]`): 4, 2 then 1 apart.
#[inline(always)]
unsafe fn reduce8(s8: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// The rows of the next group are fetched ahead: rows are short (a few cache lines), too
/// short for the hardware prefetcher to catch up.
#[inline(always)]
unsafe fn prefetch<T>(p: *const T) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
}

/// [`prefetch`] of `p`, the data of block `b` of a row (ahead), when that block starts a new
/// 64-byte line: blocks of `per` elements narrower than a line (8-bit values, the codes) share one
/// prefetch between them instead of spending a load slot each.
#[inline(always)]
unsafe fn prefetch_block<T>(p: *const T, b: usize, per: usize) {
    let bytes = per * std::mem::size_of::<T>();
    if bytes >= 64 || (b * bytes) % 64 < bytes {
        prefetch(p)
    }
}

struct Avx512;
impl Isa for Avx512 {
    type Acc = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    /// 32 columns (eight groups, sixteen values, four bytes of codes) per step, the inputs
    /// picked by a two-register permute.
    #[inline(always)]
    unsafe fn nm24<L: Load, const R: usize>(
        x: &[f32],
        codes: [*const u8; R],
        vals: [*const L::T; R],
        acc: &mut [__m512; R],
    ) -> usize {
        let blocks = x.len() / 32;
        let lane = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
        let three = _mm512_set1_epi32(3);
        let (ahead_v, ahead_c) = (R * x.len() / 2, R * x.len() / 8);
        for b in 0..blocks {
            let xp = x.as_ptr().add(32 * b);
            let (lo, hi) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
            for k in 0..R {
                prefetch_block(vals[k].add(ahead_v + 16 * b), b, 16);
                prefetch_block(codes[k].add(ahead_c + 4 * b), b, 4);
                let c = (codes[k].add(4 * b) as *const i32).read_unaligned();
                let pos = _mm512_add_epi32(
                    base,
                    _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(c), lane), three),
                );
                let xs = _mm512_permutex2var_ps(lo, pos, hi);
                acc[k] = _mm512_fmadd_ps(L::load16(vals[k].add(16 * b)), xs, acc[k]);
            }
        }
        blocks * 32
    }
    /// Sixteen columns per step, the kept values expanded into the mask's lanes.
    #[inline(always)]
    unsafe fn bitmask<L: Load, const R: usize>(
        x: &[f32],
        masks: [*const u8; R],
        mut vals: [*const L::T; R],
        acc: &mut [__m512; R],
    ) -> usize {
        let blocks = x.len() / 16;
        let (ahead_v, ahead_m) = (R * x.len() / 2, R * x.len().div_ceil(8));
        for b in 0..blocks {
            let xv = _mm512_loadu_ps(x.as_ptr().add(16 * b));
            for k in 0..R {
                prefetch_block(vals[k].add(ahead_v), b, 8);
                prefetch_block(masks[k].add(ahead_m + 2 * b), b, 2);
                let m = (masks[k].add(2 * b) as *const u16).read_unaligned();
                let v = _mm512_maskz_expand_ps(m, L::load16(vals[k]));
                vals[k] = vals[k].add(m.count_ones() as usize);
                acc[k] = _mm512_fmadd_ps(v, xv, acc[k]);
            }
        }
        blocks * 16
    }
    /// Sixteen columns per step.
    #[inline(always)]
    unsafe fn dense<L: Load, const R: usize>(
        x: &[f32],
        vals: [*const L::T; R],
        acc: &mut [__m512; R],
    ) -> usize {
        let blocks = x.len() / 16;
        for b in 0..blocks {
            let xv = _mm512_loadu_ps(x.as_ptr().add(16 * b));
            for k in 0..R {
                prefetch_block(vals[k].add(R * x.len() + 16 * b), b, 16);
                acc[k] = _mm512_fmadd_ps(L::load16(vals[k].add(16 * b)), xv, acc[k]);
            }
        }
        blocks * 16
    }
    #[inline(always)]
    unsafe fn reduce(a: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(a);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
        reduce8(_mm256_add_ps(lo, hi))
    }
    #[inline(always)]
    unsafe fn spill(a: __m512) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), a);
        out
    }
}

/// For each 8-bit mask: where each lane's value sits among the kept ones (the number of
/// mask bits below the lane), and whether the lane is kept (all ones) or not.
static EXPAND: [([i32; 8], [i32; 8]); 256] = {
    let mut t = [([0i32; 8], [0i32; 8]); 256];
    let mut m = 0;
    while m < 256 {
        let (mut l, mut below) = (0, 0);
        while l < 8 {
            t[m].0[l] = below;
            if m >> l & 1 == 1 {
                t[m].1[l] = -1;
                below += 1;
            }
            l += 1;
        }
        m += 1;
    }
    t
};

struct Avx2;
impl Avx2 {
    /// `x[pos]` for positions 0–15 held in `a` (0–7) and `b` (8–15).
    #[inline(always)]
    unsafe fn pick(a: __m256, b: __m256, pos: __m256i) -> __m256 {
        let high = _mm256_castsi256_ps(_mm256_slli_epi32(pos, 28));
        _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(a, pos),
            _mm256_permutevar8x32_ps(b, pos),
            high,
        )
    }
    /// Eight lanes of a bitmask block: the kept values expanded under the 8-bit mask `m`.
    #[inline(always)]
    unsafe fn expand8<L: Load>(vals: &mut *const L::T, m: usize) -> __m256 {
        let (idx, keep) = &EXPAND[m];
        let v = L::load8(*vals);
        *vals = vals.add((m as u32).count_ones() as usize);
        _mm256_and_ps(
            _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(idx.as_ptr() as *const __m256i)),
            _mm256_castsi256_ps(_mm256_loadu_si256(keep.as_ptr() as *const __m256i)),
        )
    }
}
impl Isa for Avx2 {
    type Acc = [__m256; 2];
    #[inline(always)]
    unsafe fn zero() -> [__m256; 2] {
        [_mm256_setzero_ps(); 2]
    }
    /// As [`Avx512::nm24`], lanes 0–7 (columns 0–15) and 8–15 (columns 16–31) apart.
    #[inline(always)]
    unsafe fn nm24<L: Load, const R: usize>(
        x: &[f32],
        codes: [*const u8; R],
        vals: [*const L::T; R],
        acc: &mut [[__m256; 2]; R],
    ) -> usize {
        let blocks = x.len() / 32;
        let lane_lo = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        let lane_hi = _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
        let base = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
        let three = _mm256_set1_epi32(3);
        let (ahead_v, ahead_c) = (R * x.len() / 2, R * x.len() / 8);
        for b in 0..blocks {
            let xp = x.as_ptr().add(32 * b);
            let xs: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xp.add(8 * i)));
            for k in 0..R {
                prefetch_block(vals[k].add(ahead_v + 16 * b), b, 16);
                prefetch_block(codes[k].add(ahead_c + 4 * b), b, 4);
                let c = _mm256_set1_epi32((codes[k].add(4 * b) as *const i32).read_unaligned());
                let pos = |lane| {
                    _mm256_add_epi32(base, _mm256_and_si256(_mm256_srlv_epi32(c, lane), three))
                };
                let v = vals[k].add(16 * b);
                let lo = Self::pick(xs[0], xs[1], pos(lane_lo));
                let hi = Self::pick(xs[2], xs[3], pos(lane_hi));
                acc[k][0] = _mm256_fmadd_ps(L::load8(v), lo, acc[k][0]);
                acc[k][1] = _mm256_fmadd_ps(L::load8(v.add(8)), hi, acc[k][1]);
            }
        }
        blocks * 32
    }
    /// As [`Avx512::bitmask`], the expansion through a table of permutations.
    #[inline(always)]
    unsafe fn bitmask<L: Load, const R: usize>(
        x: &[f32],
        masks: [*const u8; R],
        mut vals: [*const L::T; R],
        acc: &mut [[__m256; 2]; R],
    ) -> usize {
        let blocks = x.len() / 16;
        let (ahead_v, ahead_m) = (R * x.len() / 2, R * x.len().div_ceil(8));
        for b in 0..blocks {
            let xp = x.as_ptr().add(16 * b);
            let (xlo, xhi) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
            for k in 0..R {
                prefetch_block(vals[k].add(ahead_v), b, 8);
                prefetch_block(masks[k].add(ahead_m + 2 * b), b, 2);
                let lo = Self::expand8::<L>(&mut vals[k], *masks[k].add(2 * b) as usize);
                let hi = Self::expand8::<L>(&mut vals[k], *masks[k].add(2 * b + 1) as usize);
                acc[k][0] = _mm256_fmadd_ps(lo, xlo, acc[k][0]);
                acc[k][1] = _mm256_fmadd_ps(hi, xhi, acc[k][1]);
            }
        }
        blocks * 16
    }
    #[inline(always)]
    unsafe fn dense<L: Load, const R: usize>(
        x: &[f32],
        vals: [*const L::T; R],
        acc: &mut [[__m256; 2]; R],
    ) -> usize {
        let blocks = x.len() / 16;
        for b in 0..blocks {
            let xp = x.as_ptr().add(16 * b);
            let (xlo, xhi) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
            for k in 0..R {
                let v = vals[k].add(16 * b);
                prefetch_block(v.add(R * x.len()), b, 16);
                acc[k][0] = _mm256_fmadd_ps(L::load8(v), xlo, acc[k][0]);
                acc[k][1] = _mm256_fmadd_ps(L::load8(v.add(8)), xhi, acc[k][1]);
            }
        }
        blocks * 16
    }
    #[inline(always)]
    unsafe fn reduce(a: [__m256; 2]) -> f32 {
        reduce8(_mm256_add_ps(a[0], a[1]))
    }
    #[inline(always)]
    unsafe fn spill(a: [__m256; 2]) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm256_storeu_ps(out.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), a[1]);
        out
    }
}

/// Rows `r0..r1` of `p` against the `t` rows of `x` into `out` (`[r1 - r0, t]`).
///
/// # Safety
/// The CPU runs AVX-512F and POPCNT; `x` holds `t · p.cols` values; the values are padded.
#[target_feature(enable = "avx512f,popcnt")]
pub(super) unsafe fn rows512(
    p: &PackedMatrix,
    r0: usize,
    r1: usize,
    x: &[f32],
    t: usize,
    out: &mut [f32],
) {
    by_values::<Avx512>(p, r0, r1, x, t, out)
}

/// [`rows512`] on AVX2.
///
/// # Safety
/// The CPU runs AVX2, FMA, F16C and POPCNT; as [`rows512`] otherwise.
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
pub(super) unsafe fn rows256(
    p: &PackedMatrix,
    r0: usize,
    r1: usize,
    x: &[f32],
    t: usize,
    out: &mut [f32],
) {
    by_values::<Avx2>(p, r0, r1, x, t, out)
}

#[inline(always)]
unsafe fn by_values<I: Isa>(
    p: &PackedMatrix,
    r0: usize,
    r1: usize,
    x: &[f32],
    t: usize,
    out: &mut [f32],
) {
    match &p.values {
        PackedValues::F32(v) => rows::<I, F32s>(p, v.as_ptr(), r0, r1, x, t, out),
        PackedValues::Bf16(v) => rows::<I, Bf16s>(p, v.as_ptr(), r0, r1, x, t, out),
        PackedValues::F16(v) => rows::<I, F16s>(p, v.as_ptr(), r0, r1, x, t, out),
        PackedValues::I8 { q, .. } => rows::<I, I8s>(p, q.as_ptr(), r0, r1, x, t, out),
    }
}

#[inline(always)]
unsafe fn rows<I: Isa, L: Load>(
    p: &PackedMatrix,
    vals: *const L::T,
    r0: usize,
    r1: usize,
    x: &[f32],
    t: usize,
    out: &mut [f32],
) {
    // Four rows at a time: four independent chains of multiply-adds.
    let mut r = r0;
    while r + 4 <= r1 {
        group::<I, L, 4>(p, vals, r, x, t, &mut out[(r - r0) * t..]);
        r += 4;
    }
    while r < r1 {
        group::<I, L, 1>(p, vals, r, x, t, &mut out[(r - r0) * t..]);
        r += 1;
    }
}

#[inline(always)]
unsafe fn group<I: Isa, L: Load, const R: usize>(
    p: &PackedMatrix,
    vals: *const L::T,
    r: usize,
    x: &[f32],
    t: usize,
    out: &mut [f32],
) {
    let ib = p.layout.index_bytes(p.cols);
    let codes: [*const u8; R] = std::array::from_fn(|k| p.index.as_ptr().add((r + k) * ib));
    let starts: [*const L::T; R] = std::array::from_fn(|k| vals.add(p.starts[r + k]));
    for i in 0..t {
        let xi = &x[i * p.cols..(i + 1) * p.cols];
        let mut acc = [I::zero(); R];
        let done = match p.layout {
            SparseLayout::NM { n: 2, m: 4 } => I::nm24::<L, R>(xi, codes, starts, &mut acc),
            SparseLayout::Bitmask => I::bitmask::<L, R>(xi, codes, starts, &mut acc),
            SparseLayout::Dense => I::dense::<L, R>(xi, starts, &mut acc),
            SparseLayout::NM { .. } => 0,
        };
        for k in 0..R {
            out[k * t + i] = if done == p.cols {
                I::reduce(acc[k]) * p.values.scale(r + k)
            } else {
                p.finish_row(r + k, xi, done, I::spill(acc[k]))
            };
        }
    }
}
