//! f32 GEMM for the linear layers' layout: `C = A·Bᵀ` with A `[m, k]` and B `[n, k]` both row-major
//! (B is a weight in Hugging Face's `[out, in]` layout), C `[m, n]` row-major.
//!
//! The fast path is the classic five-loop blocking of BLIS (Goto & van de Geijn, "Anatomy of
//! high-performance matrix multiplication"): B is packed `KC × NC` at a time into panels of 16
//! columns, A once (all rows, in `KC`-deep slices) into panels of 6 rows shared by the threads, and
//! a 6 × 16 AVX2/FMA micro-kernel keeps the whole C tile in 12 registers for the length of a slice
//! (on AVX-512 machines panels of 32 columns and 8 rows, an 8 × 32 tile in 16 registers:
//! [`Kernel`]).
//! Threads split the columns of C (the weight's rows), so each packs only its own part of B.
//! `gemm_abt_reference` is the plain triple loop it is tested against; machines without AVX2/FMA
//! and small `m` go through faer.
//!
//! Where it is used: every frozen linear (`cpu::frozen_matmul`) and the language-model head. The
//! head — a few hundred rows times a very wide weight (SmolLM2: 49,152 × 576) — runs at 1.2–1.4×
//! faer's speed (`cargo bench --bench gemm`: each thread streams its half of the weight once
//! against one shared packed A). On the block linears' shapes the two are within the machine's
//! noise of each other; there [`gemm_abt_many`] wins by what faer cannot do: the linears that
//! read one input (q, k, v; gate, up) run as one product with A packed once, and the outputs are
//! written once instead of zero-filled first (`spp eval tasks` 4–5 % faster, `spp
//! eval ppl` about 3 %, in alternating runs).

use super::PackedMatrix;

/// `c += alpha · xᵀx` on the tiles of the `[n, n]` row-major `c` that reach the diagonal or below
/// it, for `x` a row-major `[t, n]` matrix (rows are samples, columns features): the lower
/// triangle of a Gram matrix for half the arithmetic of a full product, read straight from `x`
/// (its columns are packed as the product's rows; nothing is transposed or allocated beyond the
/// packed panels). The entries above the diagonal are unspecified.
pub fn syrk_lower(x: &[f32], (t, n): (usize, usize), c: &mut [f32], alpha: f32) {
    assert!(
        x.len() >= t * n && c.len() >= n * n,
        "syrk: slice too short"
    );
    if t == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = x86::usable(n, t) {
        let part = [(Rhs::Cols(x, n), n, x86::Out(c.as_mut_ptr()))];
        let a = Lhs::Cols { x, ld: n, alpha };
        return x86::blocked(kernel, a, n, t, &part, Some(0), true);
    }
    let x = faer::MatRef::from_row_major_slice(&x[..t * n], t, n);
    faer::linalg::matmul::matmul(
        faer::MatMut::from_row_major_slice_mut(&mut c[..n * n], n, n),
        faer::Accum::Add,
        x.transpose(),
        x,
        alpha,
        faer::Par::rayon(0),
    );
}

/// `c = a·bᵀ` with a `[m, k]`, b `[n, k]`, c `[m, n]`.
pub fn gemm_abt(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "gemm: slice too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = x86::usable(m, k) {
        let part = [(Rhs::Rows(b), n, x86::Out(c.as_mut_ptr()))];
        return x86::blocked(kernel, Lhs::Rows(a), m, k, &part, None, false);
    }
    faer_abt(a, b, c, m, k, n);
}

/// `a·b` with a `[m, k]` and b `[k, n]` both row-major, as a new `[m, n]` matrix: the columns of b
/// are packed as the product's B rows (no transpose is materialised). The input gradient of a
/// frozen linear, `G·W`.
pub(crate) fn gemm_ab(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "gemm: slice too short"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = x86::usable(m, k).filter(|_| m > 0 && n > 0) {
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        let part = [(Rhs::Cols(b, n), n, x86::Out(c.as_mut_ptr()))];
        x86::blocked(kernel, Lhs::Rows(a), m, k, &part, None, false);
        // SAFETY: `blocked` wrote all m·n elements (the first K slice stores, later ones add).
        unsafe { c.set_len(m * n) };
        return c;
    }
    let mut c = vec![0f32; m * n];
    faer::linalg::matmul::matmul(
        faer::MatMut::from_row_major_slice_mut(&mut c, m, n),
        faer::Accum::Replace,
        faer::MatRef::from_row_major_slice(&a[..m * k], m, k),
        faer::MatRef::from_row_major_slice(&b[..k * n], k, n),
        1.0f32,
        faer::Par::rayon(0),
    );
    c
}

/// The left operand of a product: a row-major `[m, k]` matrix, or `silu(g) ⊙ u` of two such
/// matrices (the MLP's down_proj input), computed while A is packed instead of stored first.
#[derive(Clone, Copy)]
pub(crate) enum Lhs<'a> {
    Rows(&'a [f32]),
    SiluMul(&'a [f32], &'a [f32]),
    /// `alpha` times the transpose of a row-major `[k, ld]` matrix: row i of A is column i of x
    /// ([`syrk_lower`]).
    Cols {
        x: &'a [f32],
        ld: usize,
        alpha: f32,
    },
}

/// A weight `[n, k]` of [`gemm_lhs_abt_many`]: dense f32 rows, or a packed matrix (any layout and
/// value type) whose rows are unpacked a panel's depth at a time while B is packed, so the dense
/// weight never exists as a whole.
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    F32(&'a [f32]),
    Packed(&'a PackedMatrix),
}

impl Weight<'_> {
    fn holds(&self, n: usize, k: usize) -> bool {
        match self {
            Weight::F32(b) => b.len() >= n * k,
            Weight::Packed(p) => p.rows == n && p.cols == k,
        }
    }
}

/// The right operand B `[n, k]` (A·Bᵀ): its rows (dense or packed), or the columns of a
/// row-major `[k, ld]` matrix.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    Rows(&'a [f32]),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Packed(&'a PackedMatrix),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Cols(&'a [f32], usize),
}

impl<'a> Lhs<'a> {
    /// The rows from `r0` on (`k` columns each).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn rows_from(self, r0: usize, k: usize) -> Lhs<'a> {
        match self {
            Lhs::Rows(a) => Lhs::Rows(&a[r0 * k..]),
            Lhs::SiluMul(g, u) => Lhs::SiluMul(&g[r0 * k..], &u[r0 * k..]),
            Lhs::Cols { x, ld, alpha } => Lhs::Cols {
                x: &x[r0..],
                ld,
                alpha,
            },
        }
    }

    /// Whether the slices hold an `[m, k]` operand.
    fn holds(&self, m: usize, k: usize) -> bool {
        match *self {
            Lhs::Rows(a) => a.len() >= m * k,
            Lhs::SiluMul(g, u) => g.len() >= m * k && u.len() >= m * k,
            Lhs::Cols { x, ld, .. } => m <= ld && (k == 0 || x.len() >= (k - 1) * ld + m),
        }
    }
}

/// `a·bᵢᵀ` for several weights `bᵢ` `[nᵢ, k]` (given as `(bᵢ, nᵢ)`) that share the input a
/// `[m, k]`: one product whose columns are the weights' rows one after another (A is packed once,
/// the threads split all the weights' columns), returned as one `[m, nᵢ]` matrix per weight. The
/// outputs are never zero-filled first: every element is written exactly once by the kernel.
pub fn gemm_abt_many(a: &[f32], m: usize, k: usize, bs: &[(&[f32], usize)]) -> Vec<Vec<f32>> {
    let bs: Vec<_> = bs.iter().map(|&(b, n)| (Weight::F32(b), n)).collect();
    gemm_lhs_abt_many(Lhs::Rows(a), m, k, &bs)
}

/// [`gemm_abt_many`] for any [`Lhs`].
pub(crate) fn gemm_lhs_abt_many(
    a: Lhs,
    m: usize,
    k: usize,
    bs: &[(Weight, usize)],
) -> Vec<Vec<f32>> {
    assert!(
        a.holds(m, k) && bs.iter().all(|(b, n)| b.holds(*n, k)),
        "gemm: slice too short"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = x86::usable(m, k).filter(|_| m > 0) {
        let mut outs: Vec<Vec<f32>> = bs.iter().map(|(_, n)| Vec::with_capacity(m * n)).collect();
        let parts: Vec<_> = bs
            .iter()
            .zip(&mut outs)
            .map(|(&(b, n), c)| {
                let rhs = match b {
                    Weight::F32(b) => Rhs::Rows(b),
                    Weight::Packed(p) => Rhs::Packed(p),
                };
                (rhs, n, x86::Out(c.as_mut_ptr()))
            })
            .collect();
        x86::blocked(kernel, a, m, k, &parts, None, false);
        for (c, (_, n)) in outs.iter_mut().zip(bs) {
            // SAFETY: `blocked` wrote all m·n elements of every output (the first K slice
            // stores, later ones accumulate).
            unsafe { c.set_len(m * n) };
        }
        return outs;
    }
    let materialised: Vec<f32>;
    let a = match a {
        Lhs::Rows(a) => a,
        Lhs::SiluMul(g, u) => {
            let mut h = vec![0f32; m * k];
            super::kernels::silu_mul_chunk(&g[..m * k], &u[..m * k], &mut h);
            materialised = h;
            &materialised
        }
        Lhs::Cols { x, ld, alpha } => {
            materialised = (0..m * k)
                .map(|e| alpha * x[(e % k) * ld + e / k])
                .collect();
            &materialised
        }
    };
    bs.iter()
        .map(|&(b, n)| {
            let mut c = vec![0f32; m * n];
            match b {
                Weight::F32(b) => faer_abt(a, b, &mut c, m, k, n),
                Weight::Packed(p) => faer_abt(a, &p.unpack(), &mut c, m, k, n),
            }
            c
        })
        .collect()
}

fn faer_abt(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    faer::linalg::matmul::matmul(
        faer::MatMut::from_row_major_slice_mut(&mut c[..m * n], m, n),
        faer::Accum::Replace,
        faer::MatRef::from_row_major_slice(&a[..m * k], m, k),
        faer::MatRef::from_row_major_slice(&b[..n * k], n, k).transpose(),
        1.0f32,
        faer::Par::rayon(0),
    );
}

/// spp's register-tile micro-kernels, by instruction set. All accumulate every element of C in
/// the same order (one FMA per step of the depth, slices added the same way), so they give the
/// same bits; the AVX-512 ones issue half the instructions per FMA and read B once per eight or
/// twelve rows instead of six.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// 6 × 16 tiles in twelve 256-bit registers (AVX2 and FMA).
    Avx2,
    /// 8 × 32 tiles in sixteen 512-bit registers (AVX-512F).
    Avx512x8,
    /// 12 × 32 tiles in twenty-four 512-bit registers (AVX-512F): 2–3% faster than 8 × 32 on the
    /// block's products on Sapphire Rapids (`cargo bench --bench peak`, alternating), the same
    /// results to the bit.
    Avx512,
}

impl Kernel {
    /// The kernels this CPU runs, narrowest first.
    pub(crate) fn available() -> Vec<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let mut all = Vec::new();
            if has!("avx2") && has!("fma") {
                all.push(Kernel::Avx2);
                if has!("avx512f") {
                    all.push(Kernel::Avx512x8);
                    all.push(Kernel::Avx512);
                }
            }
            all
        }
        #[cfg(not(target_arch = "x86_64"))]
        Vec::new()
    }

    /// The widest kernel this CPU runs, or the one `SPP_KERNEL` (`avx2`, `avx512`) names, for
    /// comparing them; `None` where there is none (faer takes every product).
    pub(crate) fn best() -> Option<Kernel> {
        static BEST: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Kernel::available();
            let Ok(name) = std::env::var("SPP_KERNEL") else {
                return all.last().copied();
            };
            let wanted = all.iter().find(|k| k.name() == name).copied();
            if wanted.is_none() {
                eprintln!(
                    "spp: SPP_KERNEL={name:?} is not a kernel this CPU runs ({}); using the default",
                    all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                );
            }
            wanted.or(all.last().copied())
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Avx2 => "avx2",
            Kernel::Avx512x8 => "avx512-8x32",
            Kernel::Avx512 => "avx512",
        }
    }
}

/// A micro-kernel's signature: `C[0..MR, 0..NR] (+)= Σ_p a[p·lda + i] · b[p·ldb + j]` for `kc`
/// steps `p`, overwriting C when the flag (`first`) is set; `ldc` is C's row stride.
#[cfg(target_arch = "x86_64")]
pub(crate) type MicroKernel =
    unsafe fn(usize, *const f32, usize, *const f32, usize, *mut f32, usize, bool);

/// The micro-kernels, for callers that lay out their own operands (attention).
#[cfg(target_arch = "x86_64")]
pub(crate) use super::microkernel::{kernel_12x32, kernel_6x16, kernel_8x32};

/// The blocked GEMM's panel packing, for callers that lay out their own operands (attention's
/// Q and K panels).
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::pack as pack_panel;

/// The obvious triple loop (f64 accumulation), the check for [`gemm_abt`].
pub fn gemm_abt_reference(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| a[i * k + p] as f64 * b[j * k + p] as f64)
                .sum();
            c[i * n + j] = s as f32;
        }
    }
}

/// The blocked implementation (x86-64 with AVX2 and FMA, or AVX-512F).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{kernel_12x32, kernel_6x16, kernel_8x32, Kernel, MicroKernel};
    use crate::cpu::kernels::silu_mul_chunk;
    use rayon::prelude::*;

    /// Longest depth of one packed slice (SmolLM2's 576 in one, 1536 in three of 512). Chosen by
    /// `cargo bench --bench gemm` on Zen 3 among 192–768.
    const KC: usize = 576;
    /// Rows of A run against one packed slice of B before moving on (`MC · KC` floats, ≤ 110 KiB:
    /// L2-resident); chosen among 36–288. A multiple of both kernels' rows.
    const MC: usize = 48;
    /// Columns of B packed at once (`KC · NC` floats).
    const NC: usize = 1024;

    /// The cache blocking: `(KC, MC, NC)` above, or `SPP_GEMM_BLOCKING=KC,MC,NC` (to measure
    /// others on a host; MC is rounded up to a multiple of 24, both kernels' rows).
    fn blocking() -> (usize, usize, usize) {
        static B: std::sync::OnceLock<(usize, usize, usize)> = std::sync::OnceLock::new();
        *B.get_or_init(|| {
            let Ok(v) = std::env::var("SPP_GEMM_BLOCKING") else {
                return (KC, MC, NC);
            };
            let parts: Vec<usize> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            match parts[..] {
                [kc, mc, nc] if kc > 0 && mc > 0 && nc >= 32 => {
                    (kc, mc.next_multiple_of(24), nc.next_multiple_of(32))
                }
                _ => {
                    eprintln!("spp: SPP_GEMM_BLOCKING={v:?} is not KC,MC,NC; using {KC},{MC},{NC}");
                    (KC, MC, NC)
                }
            }
        })
    }
    /// Most bytes of A and C one multi-slice product works on at once (of a 32 MiB L3 cache):
    /// SmolLM2's down projection runs 2047 rows in one block, 8192 in four.
    const ROW_BLOCK_BYTES: usize = 20 << 20;
    /// Below this many rows of A the product is weight-bound (a GEMV in generation): packing B would
    /// double its memory traffic, so faer's kernels take it.
    pub(super) const MIN_ROWS: usize = 24;

    /// The kernel that takes an `m`-row product, if the blocked path does (else faer).
    pub(super) fn usable(m: usize, k: usize) -> Option<Kernel> {
        Kernel::best().filter(|_| m >= MIN_ROWS && k > 0)
    }

    /// Where one output matrix starts (row-major, its weight's `n` columns); the threads write
    /// disjoint column ranges of it.
    pub(super) use crate::cpu::SharedOut as Out;

    /// `c = a·bᵀ` (`c += a·bᵀ` when `accumulate`) for each part `(b, n, c)`; every element of
    /// every `c` is written. With `lower = Some(r)` only the tiles that reach column `r + i` in
    /// some row `i` of theirs ([`super::syrk_lower`]).
    pub(super) fn blocked(
        kernel: Kernel,
        a: super::Lhs,
        m: usize,
        k: usize,
        parts: &[(super::Rhs, usize, Out)],
        lower: Option<usize>,
        accumulate: bool,
    ) {
        match kernel {
            Kernel::Avx2 => tiles::<6, 16>(kernel_6x16, a, m, k, parts, lower, accumulate),
            Kernel::Avx512x8 => tiles::<8, 32>(kernel_8x32, a, m, k, parts, lower, accumulate),
            Kernel::Avx512 => tiles::<12, 32>(kernel_12x32, a, m, k, parts, lower, accumulate),
        }
    }

    /// [`blocked`] on the `MR × NR` kernel `kern`.
    fn tiles<const MR: usize, const NR: usize>(
        kern: MicroKernel,
        a: super::Lhs,
        m: usize,
        k: usize,
        parts: &[(super::Rhs, usize, Out)],
        lower: Option<usize>,
        accumulate: bool,
    ) {
        let (kc_max, mc_rows, nc_cols) = blocking();
        // Equal K slices no longer than KC (576 = 3 × 192, not 256 + 256 + 64).
        let slices = k.div_ceil(kc_max);
        // Several slices add into C: with many rows, A and C outgrow the L3 cache and every slice
        // after the first re-reads both from memory (8192 × 1536 · (576 × 1536)ᵀ, the down
        // projection of an `eval tasks` pass, ran at 122 GFLOP/s against 146 in four blocks of
        // 2048 rows). So such products run in row blocks whose A and C fit in ROW_BLOCK_BYTES.
        let n_all: usize = parts.iter().map(|p| p.1).sum();
        let most = (ROW_BLOCK_BYTES / (4 * (k + n_all))).max(mc_rows);
        if slices > 1 && m > most {
            let blocks = m.div_ceil(most);
            let rows = m.div_ceil(blocks).next_multiple_of(MR);
            for r0 in (0..m).step_by(rows) {
                let block: Vec<_> = parts
                    .iter()
                    .map(|&(b, n, c)| (b, n, Out(c.at(r0 * n))))
                    .collect();
                tiles::<MR, NR>(
                    kern,
                    a.rows_from(r0, k),
                    rows.min(m - r0),
                    k,
                    &block,
                    lower.map(|d| d + r0),
                    accumulate,
                );
            }
            return;
        }
        let kc = k.div_ceil(slices);
        let kc_of = |s: usize| kc.min(k - s * kc);
        // All of A packed once, shared by the threads: slice s, row panel q at (s·mp + q)·kc·MR.
        let mp = m.div_ceil(MR);
        // SAFETY: pack writes the first kc_of(s)·MR floats of each panel, the rest is zeroed.
        let ap = unsafe {
            crate::cpu::par_fill(slices * mp * kc * MR, kc * MR, |i, panel| {
                let (s, q) = (i / mp, i % mp);
                let (r0, rows, p0, kcs) = (q * MR, MR.min(m - q * MR), s * kc, kc_of(s));
                match a {
                    super::Lhs::Rows(a) => pack::<MR>(a, k, r0, rows, p0, kcs, panel),
                    super::Lhs::SiluMul(g, u) => SILU.with_borrow_mut(|h| {
                        // The panel's rows of silu(g)·u, kc apart, then packed as usual.
                        h.resize(MR * kc, 0.0);
                        for (i, row) in h.chunks_exact_mut(kc).take(rows).enumerate() {
                            let at = (r0 + i) * k + p0..(r0 + i) * k + p0 + kcs;
                            silu_mul_chunk(&g[at.clone()], &u[at], &mut row[..kcs]);
                        }
                        pack::<MR>(h, kc, 0, rows, 0, kcs, panel)
                    }),
                    super::Lhs::Cols { x, ld, alpha } => {
                        pack_cols::<MR>(x, ld, r0, rows, p0, kcs, alpha, panel)
                    }
                }
                panel[kcs * MR..].fill(0.0);
            })
        };
        // The columns of all parts in panels of up to NR, each inside one part: (part, column).
        let panels: Vec<(usize, usize)> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, &(_, n, _))| (0..n).step_by(NR).map(move |j| (i, j)))
            .filter(|&(_, j)| lower.is_none_or(|d| j < d + m)) // else no tile of it is wanted
            .collect();
        let threads = rayon::current_num_threads().clamp(1, panels.len().max(1));
        // Contiguous runs of panels with equal work: with `lower`, panel j has the rows from
        // about j on.
        let work = |&(_, j): &(usize, usize)| lower.map_or(1, |d| (d + m).saturating_sub(j).max(1));
        let total: usize = panels.iter().map(work).sum();
        let mut cuts = vec![0];
        let mut done = 0;
        for (i, p) in panels.iter().enumerate() {
            done += work(p);
            if done * threads >= total * cuts.len() && cuts.len() < threads {
                cuts.push(i + 1);
            }
        }
        cuts.resize(threads, panels.len());
        cuts.push(panels.len());
        let ap = &ap;
        let panels = &panels;
        let cuts = &cuts;
        (0..threads).into_par_iter().for_each(|t| {
            let mine = &panels[cuts[t]..cuts[t + 1]];
            BUFFER.with(|buf| {
                let bp = &mut *buf.borrow_mut();
                bp.resize(nc_cols * kc, 0.0);
                for group in mine.chunks(nc_cols / NR) {
                    for s in 0..slices {
                        let kcs = kc_of(s);
                        let first = s == 0 && !accumulate;
                        for (&(i, j), panel) in group.iter().zip(bp.chunks_exact_mut(kcs * NR)) {
                            match parts[i] {
                                (super::Rhs::Rows(b), n, _) => {
                                    pack::<NR>(b, k, j, NR.min(n - j), s * kc, kcs, panel)
                                }
                                (super::Rhs::Packed(w), n, _) => {
                                    pack_packed::<NR>(w, j, NR.min(n - j), s * kc, kcs, panel)
                                }
                                (super::Rhs::Cols(..), ..) => {}
                            }
                        }
                        // Columns of x (syrk_lower's one part): a row of x at a time for all
                        // the group's panels.
                        if let super::Rhs::Cols(x, ld) = parts[group[0].0].0 {
                            pack_cols_group::<NR>(x, ld, group, s * kc, kcs, bp);
                        }
                        for ic in (0..m).step_by(mc_rows) {
                            let mc = mc_rows.min(m - ic);
                            for (q, &(i, j)) in group.iter().enumerate() {
                                let (_, n, c) = parts[i];
                                let nr = NR.min(n - j);
                                let bpp = bp[q * kcs * NR..].as_ptr();
                                for ir in (ic..ic + mc).step_by(MR) {
                                    let mr = MR.min(m - ir);
                                    if lower.is_some_and(|d| j >= d + ir + mr) {
                                        continue; // wholly above the diagonal
                                    }
                                    let app = ap[(s * mp + ir / MR) * kc * MR..].as_ptr();
                                    // SAFETY: the tile [ir.., j..] of size mr × nr lies inside
                                    // this part's c (m × n) and in this thread's panels; the
                                    // packed panels hold kcs · MR and kcs · NR floats.
                                    unsafe {
                                        tile::<MR, NR>(
                                            kern,
                                            kcs,
                                            app,
                                            bpp,
                                            c.at(ir * n + j),
                                            n,
                                            (mr, nr),
                                            first,
                                        )
                                    };
                                }
                            }
                        }
                    }
                }
            });
        });
    }

    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        /// Rows of `silu(g)·u` for one A panel ([`super::Lhs::SiluMul`]).
        static SILU: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        /// Unpacked row segments of one B panel ([`super::Rhs::Packed`]).
        static SEGMENTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// [`pack`] of rows `[r0, r0 + rows)`, columns `[p0, p0 + kc)` of a packed weight: each row's
    /// segment unpacked (the values [`PackedMatrix::unpack`] gives), then laid out as `pack` does.
    fn pack_packed<const W: usize>(
        w: &crate::cpu::PackedMatrix,
        r0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        SEGMENTS.with_borrow_mut(|seg| {
            seg.resize(W * kc, 0.0);
            for (i, row) in seg.chunks_exact_mut(kc).take(rows).enumerate() {
                w.unpack_segment(r0 + i, p0, row);
            }
            pack::<W>(seg, kc, 0, rows, 0, kc, out)
        })
    }

    /// Rows `[r0, r0 + rows)`, columns `[p0, p0 + kc)` of the row-major `[_, k]` matrix `x` as one
    /// panel of `W` rows, transposed: element (row, p) at `p·W + row`; rows past `rows` are zero.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pack<const W: usize>(
        x: &[f32],
        k: usize,
        r0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        let out = &mut out[..kc * W];
        if rows == 0 {
            out.fill(0.0);
            return;
        }
        // Lanes past `rows` read the last row (any depth kc works, as the attention's head size
        // needs) and are zeroed afterwards.
        let src: [&[f32]; W] = std::array::from_fn(|i| &x[(r0 + i.min(rows - 1)) * k + p0..][..kc]);
        for (p, dst) in out.chunks_exact_mut(W).enumerate() {
            for i in 0..W {
                // SAFETY: every src[i] holds kc floats and p < kc.
                dst[i] = unsafe { *src[i].get_unchecked(p) };
            }
        }
        if rows < W {
            out.chunks_exact_mut(W)
                .for_each(|dst| dst[rows..].fill(0.0));
        }
    }

    /// Columns `[r0, r0 + rows)`, rows `[p0, p0 + kc)` of the row-major `[_, ld]` matrix `x`,
    /// times `alpha`, as one panel of `W` rows of its transpose: element (r, p) at `p·W + r`, the
    /// layout [`pack`] gives (each step is a contiguous run of one row of x); rows past `rows`
    /// are zero.
    #[allow(clippy::too_many_arguments)]
    fn pack_cols<const W: usize>(
        x: &[f32],
        ld: usize,
        r0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        alpha: f32,
        out: &mut [f32],
    ) {
        for (p, dst) in out[..kc * W].chunks_exact_mut(W).enumerate() {
            let src = &x[(p0 + p) * ld + r0..][..rows];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = alpha * v;
            }
            dst[rows..].fill(0.0);
        }
    }

    /// The B panels `group` (columns `j..j + NR` of the row-major `[_, ld]` matrix `x`, one
    /// `(part, j)` each), rows `[p0, p0 + kc)`, into `out` as [`pack_cols`] lays them out one
    /// after another, filled a row of x at a time across all of them: x is read in contiguous
    /// runs (panel by panel, every step would read 64 bytes from a different row of x).
    fn pack_cols_group<const NR: usize>(
        x: &[f32],
        ld: usize,
        group: &[(usize, usize)],
        p0: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        for p in 0..kc {
            let row = &x[(p0 + p) * ld..][..ld];
            for (q, &(_, j)) in group.iter().enumerate() {
                let dst = &mut out[(q * kc + p) * NR..][..NR];
                let cols = NR.min(ld - j);
                dst[..cols].copy_from_slice(&row[j..j + cols]);
                dst[cols..].fill(0.0);
            }
        }
    }

    /// One mr × nr tile of C (mr ≤ MR, nr ≤ NR) from packed panels; partial tiles go through a
    /// scratch tile so the kernel itself is always full-size.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NR: usize>(
        kern: MicroKernel,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        (mr, nr): (usize, usize),
        first: bool,
    ) {
        if mr == MR && nr == NR {
            kern(kc, a, MR, b, NR, c, ldc, first);
            return;
        }
        let mut t = [0f32; 12 * 32];
        debug_assert!(MR * NR <= t.len());
        kern(kc, a, MR, b, NR, t.as_mut_ptr(), NR, true);
        for i in 0..mr {
            for j in 0..nr {
                let dst = c.add(i * ldc + j);
                *dst = if first {
                    t[i * NR + j]
                } else {
                    *dst + t[i * NR + j]
                };
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Entries in [−5, 5) from a fixed linear congruential sequence.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 * 10.0 - 5.0
            })
            .collect()
    }

    /// The largest `|a_i − b_i|`.
    pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// Every kernel this CPU runs, through the whole blocked driver (partial tiles on both sides,
    /// several K slices, two weights in one product, the lower-triangle mode), gives the triple
    /// loop's result, and all kernels give the same bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_kernel_matches_the_triple_loop_and_the_others() {
        let kernels = Kernel::available();
        for (i, &(m, k, n)) in [(37, 1000, 17), (100, 64, 130), (50, 1300, 70)]
            .iter()
            .enumerate()
        {
            let a = values(m * k, 1 + i as u32);
            let b = values(n * k, 11 + i as u32);
            let (b0, b1) = b.split_at(n / 2 * k);
            let mut want = vec![0f32; m * n];
            gemm_abt_reference(&a, &b, &mut want, m, k, n);
            let mut first: Option<Vec<f32>> = None;
            for &kernel in &kernels {
                let (n0, n1) = (n / 2, n - n / 2);
                let (mut c0, mut c1) = (vec![f32::NAN; m * n0], vec![f32::NAN; m * n1]);
                let parts = [
                    (Rhs::Rows(b0), n0, x86::Out(c0.as_mut_ptr())),
                    (Rhs::Rows(b1), n1, x86::Out(c1.as_mut_ptr())),
                ];
                x86::blocked(kernel, Lhs::Rows(&a), m, k, &parts, None, false);
                let got: Vec<f32> = (0..m)
                    .flat_map(|r| c0[r * n0..][..n0].iter().chain(&c1[r * n1..][..n1]))
                    .copied()
                    .collect();
                let worst = max_abs_diff(&got, &want);
                assert!(
                    worst < 1e-5 * 25.0 * k as f32,
                    "{kernel:?} {m}×{k}·({n}×{k})ᵀ: error {worst}"
                );
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(f == &got, "{kernel:?} differs from {:?}", kernels[0]),
                }
            }
        }
        // The lower triangle of xᵀx, x `[t, n]`.
        let (t, n) = (300, 90);
        let x = values(t * n, 7);
        let mut results = Vec::new();
        for &kernel in &kernels {
            let mut c = vec![0f32; n * n];
            let part = [(Rhs::Cols(&x, n), n, x86::Out(c.as_mut_ptr()))];
            let a = Lhs::Cols {
                x: &x,
                ld: n,
                alpha: 1.0,
            };
            x86::blocked(kernel, a, n, t, &part, Some(0), true);
            for r in 0..n {
                for col in 0..=r {
                    let want: f64 = (0..t)
                        .map(|p| x[p * n + r] as f64 * x[p * n + col] as f64)
                        .sum();
                    let got = c[r * n + col] as f64;
                    assert!(
                        (got - want).abs() < 1e-2,
                        "{kernel:?} ({r}, {col}): {got} vs {want}"
                    );
                }
            }
            results.push(
                (0..n)
                    .flat_map(|r| c[r * n..][..=r].to_vec())
                    .collect::<Vec<_>>(),
            );
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn untransposed_right_operands_equal_explicit_transposes() {
        // b `[k, n]` row-major against the reference on bᵀ: the blocked path (m ≥ 24, n not a
        // multiple of a panel) and the faer one (m < 24).
        for (i, &(m, k, n)) in [(50, 70, 45), (5, 9, 11)].iter().enumerate() {
            let a = values(m * k, 90 + i as u32);
            let b = values(k * n, 100 + i as u32);
            let bt: Vec<f32> = (0..n * k).map(|e| b[(e % k) * n + e / k]).collect();
            let mut want = vec![0f32; m * n];
            gemm_abt_reference(&a, &bt, &mut want, m, k, n);
            let got = gemm_ab(&a, &b, m, k, n);
            assert_eq!(got.len(), m * n);
            let worst = max_abs_diff(&got, &want);
            assert!(worst <= 1e-3, "m {m}: max |diff| {worst}");
        }
    }

    #[test]
    fn transposed_left_operands_equal_explicit_transposes() {
        // A = 0.5·xᵀ read from x `[k, ld]` (its first m columns): the blocked path (m ≥ 24) and the
        // faer one (m < 24).
        for (i, &(m, k, ld, n)) in [(40, 30, 50, 20), (7, 12, 9, 5)].iter().enumerate() {
            let x = values(k * ld, 70 + i as u32);
            let b = values(n * k, 80 + i as u32);
            let a: Vec<f32> = (0..m * k).map(|e| 0.5 * x[(e % k) * ld + e / k]).collect();
            let mut want = vec![0f32; m * n];
            gemm_abt_reference(&a, &b, &mut want, m, k, n);
            let cols = Lhs::Cols {
                x: &x,
                ld,
                alpha: 0.5,
            };
            let got = gemm_lhs_abt_many(cols, m, k, &[(Weight::F32(&b), n)]).remove(0);
            for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-3,
                    "m {m}: ({}, {}) {g} vs {w}",
                    e / n,
                    e % n
                );
            }
        }
    }
}
