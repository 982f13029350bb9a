//! Packed sparse weights and the products over them.
//!
//! A [`PackedMatrix`] holds an `[rows, cols]` weight as its kept values plus where they sit:
//! - N:M ([`SparseLayout::NM`]): every group of `m` consecutive columns keeps exactly `n` values
//!   (a group with fewer non-zeros stores explicit zeros), each with its position in the group as
//!   a code of 2 (m ≤ 4), 4 (m ≤ 16) or 8 bits, packed low bits first;
//! - bitmask ([`SparseLayout::Bitmask`]): one bit per column (low bit first) says whether the
//!   column is kept; the kept values follow in column order;
//! - dense ([`SparseLayout::Dense`]): every value, no index (a weight that is not sparse, stored
//!   in 8 bits).
//!
//! Values are f32, bf16, f16, or 8-bit integers with one f32 scale per row (round to nearest of
//! `w / (max|w| / 127)`).
//!
//! Every product sums in one fixed order, whatever the kernel: sixteen lanes, then the lanes
//! pairwise (8, 4, 2, 1 apart). N:M puts the `j`-th kept value of a row in lane `j mod 16`; bitmask
//! puts column `c` in lane `c mod 16` (a dropped column adds `0 · x`). Each step is one fused
//! multiply-add, so the AVX-512 kernel, the AVX2 kernel and the portable loop give the same bits.

use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

/// Where the kept values of a packed weight sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseLayout {
    /// `n` values kept in every group of `m` columns.
    NM { n: usize, m: usize },
    /// One bit per column.
    Bitmask,
    /// Every column, no index.
    Dense,
}

impl SparseLayout {
    /// Bits of one N:M position code.
    pub fn code_bits(m: usize) -> Option<usize> {
        match m {
            2..=4 => Some(2),
            5..=16 => Some(4),
            17..=256 => Some(8),
            _ => None,
        }
    }

    /// Bytes of index (codes or mask bits) per row of `cols` columns.
    pub fn index_bytes(self, cols: usize) -> usize {
        match self {
            SparseLayout::NM { n, m } => {
                (cols / m * n * Self::code_bits(m).unwrap_or(8)).div_ceil(8)
            }
            SparseLayout::Bitmask => cols.div_ceil(8),
            SparseLayout::Dense => 0,
        }
    }
}

/// The kept values, in one of the stored types.
#[derive(Debug, Clone, PartialEq)]
pub enum PackedValues {
    F32(Vec<f32>),
    /// Raw bf16 bits.
    Bf16(Vec<u16>),
    /// Raw f16 bits.
    F16(Vec<u16>),
    /// 8-bit integers, `w ≈ q · scale[row]`.
    I8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
}

/// Values read past the last kept one by the vector kernels (zeros, never part of a product).
const PAD: usize = 16;

impl PackedValues {
    fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Bf16(v) | Self::F16(v) => v.len(),
            Self::I8 { q, .. } => q.len(),
        }
    }

    /// Value `i` as f32 (without the row scale of 8-bit values).
    #[inline(always)]
    fn get(&self, i: usize) -> f32 {
        match self {
            Self::F32(v) => v[i],
            Self::Bf16(v) => f32::from_bits((v[i] as u32) << 16),
            Self::F16(v) => f16::from_bits(v[i]).to_f32(),
            Self::I8 { q, .. } => q[i] as f32,
        }
    }

    fn scale(&self, row: usize) -> f32 {
        match self {
            Self::I8 { scale, .. } => scale[row],
            _ => 1.0,
        }
    }

    /// The stored type's name as config.json records it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::F32(_) => "f32",
            Self::Bf16(_) => "bf16",
            Self::F16(_) => "f16",
            Self::I8 { .. } => "int8",
        }
    }

    /// Bytes per stored value.
    pub fn value_bytes(&self) -> usize {
        match self {
            Self::F32(_) => 4,
            Self::Bf16(_) | Self::F16(_) => 2,
            Self::I8 { .. } => 1,
        }
    }
}

/// What type to store the kept values in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    F32,
    Bf16,
    F16,
    Int8,
}

/// A packed `[rows, cols]` weight (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub layout: SparseLayout,
    /// Kept values of every row, one row after the other, plus [`PAD`] zeros.
    pub values: PackedValues,
    /// `index_bytes` per row.
    pub index: Vec<u8>,
    /// Where each row's values start (`rows + 1` entries).
    starts: Vec<usize>,
}

impl PackedMatrix {
    /// Packs a row-major f32 weight. Errors say why the layout does not fit.
    pub fn pack(
        w: &[f32],
        rows: usize,
        cols: usize,
        layout: SparseLayout,
        kind: ValueKind,
    ) -> Result<Self, String> {
        if w.len() != rows * cols {
            return Err(format!("{} values for a [{rows}, {cols}] weight", w.len()));
        }
        let ib = layout.index_bytes(cols);
        let mut index = vec![0u8; rows * ib];
        let mut kept: Vec<f32> = Vec::new();
        let mut starts = Vec::with_capacity(rows + 1);
        match layout {
            SparseLayout::NM { n, m } => {
                let bits = SparseLayout::code_bits(m)
                    .ok_or_else(|| format!("N:M with M = {m}: M must be 2 to 256"))?;
                if n == 0 || n > m || !cols.is_multiple_of(m) {
                    return Err(format!(
                        "{n}:{m} needs 0 < N ≤ M and columns ({cols}) a multiple of M"
                    ));
                }
                kept.reserve(rows * cols / m * n);
                for (r, row) in w.chunks_exact(cols).enumerate() {
                    starts.push(kept.len());
                    let codes = &mut index[r * ib..(r + 1) * ib];
                    let mut j = 0;
                    for (g, group) in row.chunks_exact(m).enumerate() {
                        let nz: Vec<usize> = (0..m).filter(|&i| group[i] != 0.0).collect();
                        if nz.len() > n {
                            return Err(format!(
                                "row {r}, columns {}..{}: {} non-zeros where {n}:{m} keeps at most {n}",
                                g * m,
                                (g + 1) * m,
                                nz.len()
                            ));
                        }
                        // Positions: the non-zeros, then the first free slots (as zeros).
                        let mut pos = nz.clone();
                        pos.extend((0..m).filter(|i| !nz.contains(i)).take(n - nz.len()));
                        pos.sort_unstable();
                        for p in pos {
                            kept.push(group[p]);
                            let bit = j * bits;
                            codes[bit / 8] |= (p as u8) << (bit % 8);
                            j += 1;
                        }
                    }
                }
            }
            SparseLayout::Dense => {
                for row in w.chunks_exact(cols) {
                    starts.push(kept.len());
                    kept.extend_from_slice(row);
                }
            }
            SparseLayout::Bitmask => {
                for (r, row) in w.chunks_exact(cols).enumerate() {
                    starts.push(kept.len());
                    let mask = &mut index[r * ib..(r + 1) * ib];
                    for (c, &v) in row.iter().enumerate() {
                        if v != 0.0 {
                            mask[c / 8] |= 1 << (c % 8);
                            kept.push(v);
                        }
                    }
                }
            }
        }
        starts.push(kept.len());
        let nnz = kept.len();
        kept.resize(nnz + PAD, 0.0);
        let values = match kind {
            ValueKind::F32 => PackedValues::F32(kept),
            ValueKind::Bf16 => PackedValues::Bf16(
                kept.iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            ),
            ValueKind::F16 => {
                PackedValues::F16(kept.iter().map(|&v| f16::from_f32(v).to_bits()).collect())
            }
            ValueKind::Int8 => {
                let scale: Vec<f32> = (0..rows)
                    .map(|r| {
                        let max = kept[starts[r]..starts[r + 1]]
                            .iter()
                            .fold(0f32, |a, v| a.max(v.abs()));
                        max / 127.0
                    })
                    .collect();
                let mut q = vec![0i8; nnz + PAD];
                for r in 0..rows {
                    for i in starts[r]..starts[r + 1] {
                        if scale[r] > 0.0 {
                            q[i] = (kept[i] / scale[r]).round().clamp(-127.0, 127.0) as i8;
                        }
                    }
                }
                PackedValues::I8 { q, scale }
            }
        };
        Ok(Self {
            rows,
            cols,
            layout,
            values,
            index,
            starts,
        })
    }

    /// Rebuilds a packed weight from its stored parts (`values` holds exactly the kept values),
    /// checking that they fit together.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        layout: SparseLayout,
        mut values: PackedValues,
        index: Vec<u8>,
    ) -> Result<Self, String> {
        let ib = layout.index_bytes(cols);
        if index.len() != rows * ib {
            return Err(format!(
                "index has {} bytes, a [{rows}, {cols}] weight in this layout needs {}",
                index.len(),
                rows * ib
            ));
        }
        let mut starts = Vec::with_capacity(rows + 1);
        let mut at = 0usize;
        for r in 0..rows {
            starts.push(at);
            at += match layout {
                SparseLayout::NM { n, m } => {
                    if m == 0 || !cols.is_multiple_of(m) || n == 0 || n > m {
                        return Err(format!("{n}:{m} does not fit {cols} columns"));
                    }
                    cols / m * n
                }
                SparseLayout::Bitmask => {
                    let row = &index[r * ib..(r + 1) * ib];
                    if cols % 8 != 0 && row[ib - 1] >> (cols % 8) != 0 {
                        return Err(format!("row {r}: mask bits set past column {cols}"));
                    }
                    row.iter().map(|b| b.count_ones() as usize).sum()
                }
                SparseLayout::Dense => cols,
            };
        }
        starts.push(at);
        if values.len() != at {
            return Err(format!(
                "{} values stored, the index keeps {at}",
                values.len()
            ));
        }
        if let SparseLayout::NM { n, m } = layout {
            let bits = SparseLayout::code_bits(m).unwrap_or(8);
            // Positions within a group must be distinct and below m.
            for r in 0..rows {
                let codes = &index[r * ib..(r + 1) * ib];
                for g in 0..cols / m {
                    let mut seen = 0u64;
                    for k in 0..n {
                        let p = code(codes, g * n + k, bits);
                        if p >= m || (m <= 64 && seen & (1 << p) != 0) {
                            return Err(format!(
                                "row {r}, group {g}: position {p} repeated or not below {m}"
                            ));
                        }
                        if m <= 64 {
                            seen |= 1 << p;
                        }
                    }
                }
            }
        }
        match &mut values {
            PackedValues::F32(v) => v.resize(at + PAD, 0.0),
            PackedValues::Bf16(v) | PackedValues::F16(v) => v.resize(at + PAD, 0),
            PackedValues::I8 { q, scale } => {
                if scale.len() != rows {
                    return Err(format!("{} scales for {rows} rows", scale.len()));
                }
                q.resize(at + PAD, 0)
            }
        }
        Ok(Self {
            rows,
            cols,
            layout,
            values,
            index,
            starts,
        })
    }

    /// Number of stored values (explicit zeros of N:M groups included).
    pub fn stored(&self) -> usize {
        self.starts[self.rows]
    }

    /// The stored values without the padding, for writing.
    pub fn values_unpadded(&self) -> PackedValues {
        let n = self.stored();
        match &self.values {
            PackedValues::F32(v) => PackedValues::F32(v[..n].to_vec()),
            PackedValues::Bf16(v) => PackedValues::Bf16(v[..n].to_vec()),
            PackedValues::F16(v) => PackedValues::F16(v[..n].to_vec()),
            PackedValues::I8 { q, scale } => PackedValues::I8 {
                q: q[..n].to_vec(),
                scale: scale.clone(),
            },
        }
    }

    /// Bytes a product reads: values, index and scales.
    pub fn bytes(&self) -> u64 {
        let scales = match &self.values {
            PackedValues::I8 { scale, .. } => scale.len() * 4,
            _ => 0,
        };
        (self.stored() * self.values.value_bytes() + self.index.len() + scales) as u64
    }

    /// Column of the `j`-th kept value of row `r`'s N:M codes.
    fn nm_col(&self, codes: &[u8], j: usize, n: usize, m: usize, bits: usize) -> usize {
        j / n * m + code(codes, j, bits)
    }

    /// The dense row-major f32 weight.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        w.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| self.unpack_row(r, row));
        w
    }

    fn unpack_row(&self, r: usize, row: &mut [f32]) {
        let ib = self.layout.index_bytes(self.cols);
        let idx = &self.index[r * ib..(r + 1) * ib];
        let (s0, s1) = (self.starts[r], self.starts[r + 1]);
        let scale = self.values.scale(r);
        match self.layout {
            SparseLayout::NM { n, m } => {
                let bits = SparseLayout::code_bits(m).unwrap_or(8);
                for j in 0..s1 - s0 {
                    row[self.nm_col(idx, j, n, m, bits)] = self.values.get(s0 + j) * scale;
                }
            }
            SparseLayout::Dense => {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = self.values.get(s0 + c) * scale;
                }
            }
            SparseLayout::Bitmask => {
                let mut i = s0;
                for (c, v) in row.iter_mut().enumerate() {
                    if idx[c / 8] >> (c % 8) & 1 == 1 {
                        *v = self.values.get(i) * scale;
                        i += 1;
                    }
                }
            }
        }
    }

    /// `y[t, r] = Σ_c w[r, c] · x[t, c]` for `x` `[t, cols]` (row-major), in the fixed order of
    /// the module documentation, on the fastest kernel this CPU has (`kernel` forces one).
    pub fn matvec(&self, x: &[f32], t: usize, kernel: Option<SparseKernel>) -> Vec<f32> {
        matvec_many(&[self], x, t, kernel).remove(0)
    }

    /// Rows `r0..r1` against the `t` rows of `x` into `out` (`[r1 - r0, t]`).
    fn rows_into(
        &self,
        kernel: SparseKernel,
        (r0, r1): (usize, usize),
        x: &[f32],
        t: usize,
        out: &mut [f32],
    ) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `best` / `available` only offer kernels the CPU runs; the values are padded
            // by PAD for the vector loads.
            SparseKernel::Avx512 => unsafe { x86::rows512(self, r0, r1, x, t, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            SparseKernel::Avx2 => unsafe { x86::rows256(self, r0, r1, x, t, out) },
            _ => {
                for r in r0..r1 {
                    for i in 0..t {
                        let xi = &x[i * self.cols..(i + 1) * self.cols];
                        out[(r - r0) * t + i] = self.finish_row(r, xi, 0, [0.0; 16]);
                    }
                }
            }
        }
    }

    /// Row `r` against `x`, from the lanes `acc` that hold the columns before `from`.
    fn finish_row(&self, r: usize, x: &[f32], from: usize, mut acc: [f32; 16]) -> f32 {
        let ib = self.layout.index_bytes(self.cols);
        let idx = &self.index[r * ib..(r + 1) * ib];
        self.row_portable(idx, self.starts[r], x, from, &mut acc);
        reduce16(acc) * self.values.scale(r)
    }

    /// The fixed-order loop over the columns from `from` on (a multiple of the vector blocks).
    fn row_portable(&self, idx: &[u8], s0: usize, x: &[f32], from: usize, acc: &mut [f32; 16]) {
        match self.layout {
            SparseLayout::NM { n, m } => {
                let bits = SparseLayout::code_bits(m).unwrap_or(8);
                let per_row = self.cols / m * n;
                for j in from / m * n..per_row {
                    let c = self.nm_col(idx, j, n, m, bits);
                    acc[j % 16] = self.values.get(s0 + j).mul_add(x[c], acc[j % 16]);
                }
            }
            SparseLayout::Bitmask => {
                let mut i = s0
                    + idx[..from / 8]
                        .iter()
                        .map(|b| b.count_ones() as usize)
                        .sum::<usize>();
                for c in from..self.cols {
                    let v = if idx[c / 8] >> (c % 8) & 1 == 1 {
                        i += 1;
                        self.values.get(i - 1)
                    } else {
                        0.0
                    };
                    acc[c % 16] = v.mul_add(x[c], acc[c % 16]);
                }
            }
            SparseLayout::Dense => {
                for c in from..self.cols {
                    acc[c % 16] = self.values.get(s0 + c).mul_add(x[c], acc[c % 16]);
                }
            }
        }
    }
}

/// [`PackedMatrix::matvec`] of several weights that read the same input (q, k, v; gate, up) in
/// one parallel pass: one hand-out of tasks instead of one per weight.
pub fn matvec_many(
    ws: &[&PackedMatrix],
    x: &[f32],
    t: usize,
    kernel: Option<SparseKernel>,
) -> Vec<Vec<f32>> {
    for w in ws {
        assert_eq!(x.len(), t * w.cols, "packed product: input shape");
    }
    let kernel = kernel.unwrap_or_else(SparseKernel::best);
    // Output rows in a few chunks per thread (each task costs about a microsecond to hand out, a
    // 576-row 2:4 linear takes about twenty); each chunk runs every input row against its weight
    // rows while they are in cache.
    let rows: usize = ws.iter().map(|w| w.rows).sum();
    let chunk = rows
        .div_ceil(4 * rayon::current_num_threads())
        .next_multiple_of(4)
        .max(16);
    let jobs: Vec<(usize, usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            (0..w.rows)
                .step_by(chunk)
                .map(move |r0| (i, r0, (r0 + chunk).min(w.rows)))
        })
        .collect();
    let parts: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(i, r0, r1)| {
            let mut out = vec![0f32; (r1 - r0) * t];
            ws[i].rows_into(kernel, (r0, r1), x, t, &mut out);
            out
        })
        .collect();
    // Each weight's chunks in order give `[rows, t]`; the result is `[t, rows]`.
    let mut parts = jobs.iter().zip(parts);
    ws.iter()
        .enumerate()
        .map(|(i, w)| {
            let by_row: Vec<f32> = parts
                .by_ref()
                .take(w.rows.div_ceil(chunk))
                .flat_map(|((j, _, _), p)| {
                    debug_assert_eq!(*j, i);
                    p
                })
                .collect();
            if t == 1 {
                return by_row;
            }
            let mut y = vec![0f32; t * w.rows];
            for r in 0..w.rows {
                for k in 0..t {
                    y[k * w.rows + r] = by_row[r * t + k];
                }
            }
            y
        })
        .collect()
}

/// Code `j` of `bits` bits (2, 4 or 8) in a row's codes.
#[inline(always)]
fn code(codes: &[u8], j: usize, bits: usize) -> usize {
    let bit = j * bits;
    ((codes[bit / 8] >> (bit % 8)) as usize) & ((1 << bits) - 1)
}

/// The lanes summed pairwise: 8, 4, 2 then 1 apart.
#[inline(always)]
fn reduce16(mut a: [f32; 16]) -> f32 {
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            a[l] += a[l + w];
        }
    }
    a[0]
}

/// The kernels of the packed product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseKernel {
    /// The fixed-order loop, on any CPU.
    Portable,
    /// AVX2 + FMA: the same lanes in two registers; 2:4 by permutes and a blend, bitmask by
    /// a table of expanding permutations.
    Avx2,
    /// AVX-512F: 2:4 by a two-register permute of the inputs, bitmask by expanding the values.
    Avx512,
}

impl SparseKernel {
    /// The kernels this CPU runs, portable first.
    pub fn available() -> Vec<SparseKernel> {
        let mut all = vec![SparseKernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") && has!("popcnt") {
                all.push(SparseKernel::Avx2);
                if has!("avx512f") {
                    all.push(SparseKernel::Avx512);
                }
            }
        }
        all
    }

    fn name(self) -> &'static str {
        match self {
            SparseKernel::Portable => "portable",
            SparseKernel::Avx2 => "avx2",
            SparseKernel::Avx512 => "avx512",
        }
    }

    /// The widest kernel this CPU runs, or the one `SPP_KERNEL` (`portable`, `avx2`, `avx512`)
    /// names, for comparing them.
    pub fn best() -> SparseKernel {
        static BEST: std::sync::OnceLock<SparseKernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Self::available();
            let widest = *all.last().unwrap_or(&SparseKernel::Portable);
            match std::env::var("SPP_KERNEL") {
                Ok(name) => all.into_iter().find(|k| k.name() == name).unwrap_or(widest),
                Err(_) => widest,
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
                    prefetch(vals[k].add(ahead_v + 16 * b));
                    prefetch(codes[k].add(ahead_c + 4 * b));
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
                    prefetch(vals[k].add(ahead_v));
                    prefetch(masks[k].add(ahead_m + 2 * b));
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
                    prefetch(vals[k].add(R * x.len() + 16 * b));
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
                    prefetch(vals[k].add(ahead_v + 16 * b));
                    prefetch(codes[k].add(ahead_c + 4 * b));
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
                    prefetch(vals[k].add(ahead_v));
                    prefetch(masks[k].add(ahead_m + 2 * b));
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
                    prefetch(v.add(R * x.len()));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A weight with `n` of every `m` values kept (the largest), or with about half zeroed.
    fn sparse(rows: usize, cols: usize, layout: SparseLayout, seed: u64) -> Vec<f32> {
        let mut w = values(rows * cols, seed);
        match layout {
            SparseLayout::NM { n, m } => {
                for g in w.chunks_mut(m) {
                    let mut order: Vec<usize> = (0..m).collect();
                    order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
                    for &i in &order[n..] {
                        g[i] = 0.0;
                    }
                }
                // Some groups with fewer than n non-zeros, to exercise the stored zeros.
                for v in w.iter_mut().step_by(7) {
                    *v = 0.0;
                }
            }
            SparseLayout::Bitmask | SparseLayout::Dense => {
                for (i, v) in w.iter_mut().enumerate() {
                    if (i * 2654435761) % 7 < 4 {
                        *v = 0.0;
                    }
                }
            }
        }
        w
    }

    fn dense_product(w: &[f32], x: &[f32], rows: usize, cols: usize, t: usize) -> Vec<f32> {
        let mut y = vec![0f32; t * rows];
        for i in 0..t {
            for r in 0..rows {
                y[i * rows + r] = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[i * cols + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    const LAYOUTS: [SparseLayout; 5] = [
        SparseLayout::NM { n: 2, m: 4 },
        SparseLayout::NM { n: 4, m: 8 },
        SparseLayout::NM { n: 1, m: 4 },
        SparseLayout::Bitmask,
        SparseLayout::Dense,
    ];
    const KINDS: [ValueKind; 4] = [
        ValueKind::F32,
        ValueKind::Bf16,
        ValueKind::F16,
        ValueKind::Int8,
    ];

    #[test]
    fn pack_then_unpack_gives_the_weight_back() {
        // Column counts with and without a whole vector block, and a ragged tail.
        for (rows, cols) in [(5, 64), (3, 40), (7, 8)] {
            for layout in LAYOUTS {
                let w = sparse(rows, cols, layout, 3);
                let p = PackedMatrix::pack(&w, rows, cols, layout, ValueKind::F32).unwrap();
                assert_eq!(p.unpack(), w, "{layout:?} {rows}x{cols}");
                let q = PackedMatrix::from_parts(
                    rows,
                    cols,
                    layout,
                    p.values_unpadded(),
                    p.index.clone(),
                )
                .unwrap();
                assert_eq!(q, p);
                for kind in KINDS {
                    let p = PackedMatrix::pack(&w, rows, cols, layout, kind).unwrap();
                    let tol = if kind == ValueKind::Int8 {
                        1.0 / 127.0
                    } else {
                        1e-2
                    };
                    for (a, b) in p.unpack().iter().zip(&w) {
                        assert!((a - b).abs() <= tol * 1.01, "{kind:?} {a} vs {b}");
                        assert_eq!(
                            *a == 0.0,
                            *b == 0.0 || kind == ValueKind::Int8 && b.abs() < tol
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_gives_the_same_bits_and_the_dense_product() {
        for (rows, cols, t) in [(33, 96, 1), (40, 64, 3), (9, 40, 2), (17, 48, 1)] {
            for layout in LAYOUTS {
                let w = sparse(rows, cols, layout, 11);
                let x = values(t * cols, 5);
                for kind in KINDS {
                    let p = PackedMatrix::pack(&w, rows, cols, layout, kind).unwrap();
                    let want = dense_product(&p.unpack(), &x, rows, cols, t);
                    let outs: Vec<Vec<f32>> = SparseKernel::available()
                        .into_iter()
                        .map(|k| p.matvec(&x, t, Some(k)))
                        .collect();
                    for (y, k) in outs.iter().zip(SparseKernel::available()) {
                        assert_eq!(
                            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            outs[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{k:?} {layout:?} {kind:?} {rows}x{cols}"
                        );
                        for (a, b) in y.iter().zip(&want) {
                            assert!(
                                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                                "{k:?} {layout:?} {kind:?}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_parts_are_refused() {
        let layout = SparseLayout::NM { n: 2, m: 4 };
        let w = sparse(2, 8, layout, 1);
        let p = PackedMatrix::pack(&w, 2, 8, layout, ValueKind::F32).unwrap();
        // Too few values, a short index, a repeated position.
        let PackedValues::F32(v) = p.values_unpadded() else {
            unreachable!()
        };
        assert!(PackedMatrix::from_parts(
            2,
            8,
            layout,
            PackedValues::F32(v[1..].to_vec()),
            p.index.clone()
        )
        .is_err());
        assert!(PackedMatrix::from_parts(
            2,
            8,
            layout,
            PackedValues::F32(v.clone()),
            p.index[1..].to_vec()
        )
        .is_err());
        let mut idx = p.index.clone();
        idx[0] = 0; // positions 0 and 0
        assert!(PackedMatrix::from_parts(2, 8, layout, PackedValues::F32(v), idx).is_err());
        // A dense weight does not fit 2:4.
        let dense = values(16, 2);
        assert!(PackedMatrix::pack(&dense, 2, 8, layout, ValueKind::F32).is_err());
    }
}

/// Below this many input rows the packed product runs on the packed values ([`PackedMatrix::matvec`],
/// where the weight's bytes dominate); from it on the weight is unpacked and multiplied densely.
pub const UNPACK_ROWS: usize = 24;

/// `x·Wᵀ` for x `[rows, cols]` and a packed `W`, as an f32 tensor `[rows, W.rows]`. Few rows
/// (decoding) run on the packed values; many rows, or an input that needs a gradient, on the
/// unpacked weight.
pub fn packed_matmul(x: &Tensor, w: &PackedMatrix) -> crate::error::Result<Tensor> {
    Ok(packed_matmul_many(x, &[w])?.remove(0))
}

/// [`packed_matmul`] of several weights that read `x`, in one pass when they run packed.
pub fn packed_matmul_many(x: &Tensor, ws: &[&PackedMatrix]) -> crate::error::Result<Vec<Tensor>> {
    let (t, cols) = x.dims2()?;
    if let Some(w) = ws.iter().find(|w| w.cols != cols) {
        crate::bail!(
            "packed product: input has {cols} features, weight expects {}",
            w.cols
        );
    }
    let x = x.to_dtype(DType::F32)?;
    if t >= UNPACK_ROWS || x.track_op() || !x.device().is_cpu() {
        return ws
            .iter()
            .map(|w| {
                let dense =
                    super::f32_tensor(w.unpack(), (w.rows, w.cols))?.to_device(x.device())?;
                super::frozen_matmul(&x, &dense)
            })
            .collect();
    }
    let ys = super::with_f32(&x, |xs| matvec_many(ws, xs, t, None))?;
    ys.into_iter()
        .zip(ws)
        .map(|(y, w)| Ok(super::f32_tensor(y, (t, w.rows))?))
        .collect()
}
