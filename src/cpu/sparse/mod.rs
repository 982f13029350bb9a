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

use super::gemm::{gemm_lhs_abt_many, Lhs, Weight};
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
                    if !cols.is_multiple_of(8) && row[ib - 1] >> (cols % 8) != 0 {
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

    /// A 16-bit (bf16, f16) `[rows, cols]` weight on the CPU as a dense packed matrix of the same
    /// bits, for the packed kernels to read (the decode product at half f32's bytes, the GEMM
    /// widening a panel at a time); `None` for other dtypes and devices.
    pub fn dense16(w: &Tensor) -> crate::error::Result<Option<Self>> {
        if !w.device().is_cpu() || w.rank() != 2 {
            return Ok(None);
        }
        let (rows, cols) = w.dims2()?;
        let values = match w.dtype() {
            DType::BF16 => PackedValues::Bf16(
                w.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .into_iter()
                    .map(|v| v.to_bits())
                    .collect(),
            ),
            DType::F16 => PackedValues::F16(
                w.flatten_all()?
                    .to_vec1::<f16>()?
                    .into_iter()
                    .map(|v| v.to_bits())
                    .collect(),
            ),
            _ => return Ok(None),
        };
        Self::from_parts(rows, cols, SparseLayout::Dense, values, Vec::new())
            .map(Some)
            .map_err(|e| crate::error::Error::Msg(format!("16-bit weight: {e}")))
    }

    /// The tensor [`Self::dense16`] was made from (a dense 16-bit matrix's values as they are).
    pub fn dense16_tensor(&self) -> crate::error::Result<Tensor> {
        let n = self.rows * self.cols;
        let (dev, shape) = (&candle_core::Device::Cpu, (self.rows, self.cols));
        Ok(match (&self.values, self.layout) {
            (PackedValues::Bf16(v), SparseLayout::Dense) => {
                Tensor::from_iter(v[..n].iter().map(|&b| half::bf16::from_bits(b)), dev)?
                    .reshape(shape)?
            }
            (PackedValues::F16(v), SparseLayout::Dense) => {
                Tensor::from_iter(v[..n].iter().map(|&b| f16::from_bits(b)), dev)?.reshape(shape)?
            }
            _ => crate::bail!("internal: not a dense 16-bit matrix"),
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
            .for_each(|(r, row)| self.unpack_segment(r, 0, row));
        w
    }

    /// Columns `[p0, p0 + out.len())` of row `r` of the dense weight.
    pub(crate) fn unpack_segment(&self, r: usize, p0: usize, out: &mut [f32]) {
        let scale = self.values.scale(r);
        // One loop per value type: the type's match stays out of the per-value work.
        match &self.values {
            PackedValues::F32(v) => self.segment_with(r, p0, out, |i| v[i] * scale),
            PackedValues::Bf16(v) => {
                self.segment_with(r, p0, out, |i| f32::from_bits((v[i] as u32) << 16) * scale)
            }
            PackedValues::F16(v) => {
                self.segment_with(r, p0, out, |i| f16::from_bits(v[i]).to_f32() * scale)
            }
            PackedValues::I8 { q, .. } => self.segment_with(r, p0, out, |i| q[i] as f32 * scale),
        }
    }

    /// [`Self::unpack_segment`] with `get(i)` the `i`-th stored value, scaled.
    #[inline(always)]
    fn segment_with(&self, r: usize, p0: usize, out: &mut [f32], get: impl Fn(usize) -> f32) {
        let p1 = p0 + out.len();
        let ib = self.layout.index_bytes(self.cols);
        let idx = &self.index[r * ib..(r + 1) * ib];
        let s0 = self.starts[r];
        match self.layout {
            SparseLayout::Dense => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = get(s0 + p0 + c);
                }
            }
            SparseLayout::NM { n, m } => {
                out.fill(0.0);
                let bits = SparseLayout::code_bits(m).unwrap_or(8);
                for g in p0 / m..p1.div_ceil(m) {
                    for j in g * n..(g + 1) * n {
                        let c = g * m + code(idx, j, bits);
                        if (p0..p1).contains(&c) {
                            out[c - p0] = get(s0 + j);
                        }
                    }
                }
            }
            SparseLayout::Bitmask => {
                out.fill(0.0);
                let before = idx[..p0 / 8]
                    .iter()
                    .map(|b| b.count_ones() as usize)
                    .sum::<usize>();
                let mut i = s0 + before;
                // The set bits of each mask byte, lowest first.
                for (b, &byte) in idx.iter().enumerate().take(p1.div_ceil(8)).skip(p0 / 8) {
                    let mut bits = byte;
                    while bits != 0 {
                        let c = b * 8 + bits.trailing_zeros() as usize;
                        if (p0..p1).contains(&c) {
                            out[c - p0] = get(i);
                        }
                        i += 1;
                        bits &= bits - 1;
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
    // Each weight's output `[rows, t]`, cut into its jobs' chunks in job order.
    let mut by_row: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows * t]).collect();
    let parts: Vec<&mut [f32]> = by_row
        .iter_mut()
        .flat_map(|y| y.chunks_mut(chunk * t))
        .collect();
    jobs.par_iter()
        .zip(parts)
        .for_each(|(&(i, r0, r1), out)| ws[i].rows_into(kernel, (r0, r1), x, t, out));
    if t == 1 {
        return by_row;
    }
    // The result is `[t, rows]`.
    ws.iter()
        .zip(by_row)
        .map(|(w, by_row)| {
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
mod x86;

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
    if t >= UNPACK_ROWS && !x.track_op() && x.device().is_cpu() {
        // One product over all the weights; each B panel is unpacked as it is packed.
        let bs: Vec<_> = ws.iter().map(|w| (Weight::Packed(w), w.rows)).collect();
        let ys = super::with_f32(&x, |xs| gemm_lhs_abt_many(Lhs::Rows(xs), t, cols, &bs))?;
        return ys
            .into_iter()
            .zip(ws)
            .map(|(y, w)| Ok(super::f32_tensor(y, (t, w.rows))?))
            .collect();
    }
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

#[cfg(test)]
mod tests;
