//! The GEMM's register-tile micro-kernels (x86-64): `C[0..MR, 0..NR] (+)= Σ_p A_p ⊗ B_p` over
//! packed panels, one FMA per element and step of the depth, so every kernel gives the same bits.

/// Asks for every cache line of a kernel's C tile (`ROWS` rows of `COLS` floats, `ldc`
/// apart): C's rows are far apart (and often out of cache), so the read-modify-write at the
/// end of the kernel does not stall on them.
#[inline(always)]
unsafe fn prefetch_rows<const ROWS: usize, const COLS: usize>(c: *const f32, ldc: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for i in 0..ROWS {
        let row = c.add(i * ldc) as *const i8;
        // Each 64-byte step, and the last float (the tile need not start on a line).
        let mut off = 0;
        while off < COLS * 4 {
            _mm_prefetch(row.add(off), _MM_HINT_T0);
            off += 64;
        }
        _mm_prefetch(row.add(COLS * 4 - 4), _MM_HINT_T0);
    }
}

/// `C[0..6, 0..16] (+)= Σ_p a[p·lda + i] · b[p·ldb + j]` (packed panels: lda = 6, ldb = 16).
///
/// # Safety
/// AVX2 and FMA are available; a and b hold kc steps of their strides; c holds 6 rows of
/// ldc floats, 16 of them writable (and initialised unless `first`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_6x16(
    kc: usize,
    mut a: *const f32,
    lda: usize,
    mut b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    prefetch_rows::<MR, 16>(c, ldc);
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for i in 0..MR {
            let x = _mm256_broadcast_ss(&*a.add(i));
            acc[2 * i] = _mm256_fmadd_ps(x, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(x, b1, acc[2 * i + 1]);
        }
        a = a.add(lda);
        b = b.add(ldb);
    }
    for i in 0..MR {
        let row = c.add(i * ldc);
        let (mut lo, mut hi) = (acc[2 * i], acc[2 * i + 1]);
        if !first {
            lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
            hi = _mm256_add_ps(hi, _mm256_loadu_ps(row.add(8)));
        }
        _mm256_storeu_ps(row, lo);
        _mm256_storeu_ps(row.add(8), hi);
    }
}

/// `C[0..8, 0..32] (+)= Σ_p a[p·lda + i] · b[p·ldb + j]` (packed panels: lda = 8, ldb = 32):
/// [`kernel_6x16`] in 512-bit registers, eight rows of two registers each.
///
/// # Safety
/// AVX-512F is available; a and b hold kc steps of their strides; c holds 8 rows of ldc
/// floats, 32 of them writable (and initialised unless `first`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_8x32(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    kernel_rx32::<8>(kc, a, lda, b, ldb, c, ldc, first)
}

/// [`kernel_8x32`] with twelve rows (24 accumulators).
///
/// # Safety
/// As [`kernel_8x32`], with 12 rows of C.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_12x32(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    kernel_rx32::<12>(kc, a, lda, b, ldb, c, ldc, first)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_rx32<const MR: usize>(
    kc: usize,
    mut a: *const f32,
    lda: usize,
    mut b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    prefetch_rows::<MR, 32>(c, ldc);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(i));
            acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
        }
        a = a.add(lda);
        b = b.add(ldb);
    }
    for (i, &[mut lo, mut hi]) in acc.iter().enumerate() {
        let row = c.add(i * ldc);
        if !first {
            lo = _mm512_add_ps(lo, _mm512_loadu_ps(row));
            hi = _mm512_add_ps(hi, _mm512_loadu_ps(row.add(16)));
        }
        _mm512_storeu_ps(row, lo);
        _mm512_storeu_ps(row.add(16), hi);
    }
}
