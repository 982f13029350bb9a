//! Wanda — "A Simple and Effective Pruning Approach for Large Language Models"
//! (Sun, Liu, Bair, Kolter; arXiv 2306.11695).
//!
//! Score `S_ij = |W_ij| · ‖X_j‖₂`, where `‖X_j‖₂² = Σ x_j²` over every calibration token of the
//! linear's input. Comparison group: each **output row** for unstructured ratios (exactly
//! ⌊n·ratio⌋ zeroed per row), each group of M inputs of a row for N:M. No weight update.

use super::mask::{select, Sparsity};
use crate::error::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Per-input sums of squares `Σ x_j²`, accumulated in f64 over calibration samples.
#[derive(Debug, Clone)]
pub struct InputNorms {
    pub sumsq: Vec<f64>,
}

impl InputNorms {
    pub fn new(n: usize) -> Self {
        Self {
            sumsq: vec![0.0; n],
        }
    }

    /// Adds the squared column sums of `x` (`[tokens, n]`, row-major): one partial sum per
    /// thread over its share of the tokens, then added in order.
    pub fn add(&mut self, x: &[f32]) {
        let n = self.sumsq.len();
        if n == 0 {
            return;
        }
        let rows = x.len() / n;
        let per_thread = rows.div_ceil(rayon::current_num_threads()).max(1);
        let parts: Vec<Vec<f64>> = x[..rows * n]
            .par_chunks(per_thread * n)
            .map(|part| {
                let mut s = vec![0f64; n];
                for row in part.chunks_exact(n) {
                    for (s, &v) in s.iter_mut().zip(row) {
                        *s += (v as f64) * (v as f64);
                    }
                }
                s
            })
            .collect();
        for part in parts {
            self.add_sums(&part);
        }
    }

    fn add_sums(&mut self, part: &[f64]) {
        for (s, p) in self.sumsq.iter_mut().zip(part) {
            *s += p;
        }
    }

    /// Adds a linear's input `x` (`[..., n]`) wherever it lives: [`Self::add`] on the CPU's f32
    /// data, [`Self::add_on_device`] elsewhere.
    pub fn add_tensor(&mut self, x: &Tensor) -> Result<()> {
        if x.device().is_cpu() {
            return Ok(crate::cpu::with_f32(x, |v| self.add(v))?);
        }
        self.add_on_device(x)
    }

    /// The same sums reduced on `x`'s own device (in f64), so that only `n` numbers cross to the
    /// host rather than every activation (a GPU's path; it runs on the CPU too).
    pub fn add_on_device(&mut self, x: &Tensor) -> Result<()> {
        let n = self.sumsq.len();
        let sums = x
            .to_dtype(DType::F64)?
            .reshape(((), n))?
            .sqr()?
            .sum(0)?
            .to_vec1::<f64>()?;
        self.add_sums(&sums);
        Ok(())
    }
}

/// Wanda scores `|W_ij| · ‖X_j‖₂` for `w` `[rows, cols]`.
pub fn scores(w: &[f32], cols: usize, norms: &InputNorms) -> Vec<f32> {
    let norm: Vec<f64> = norms.sumsq.iter().map(|s| s.sqrt()).collect();
    w.iter()
        .enumerate()
        .map(|(k, &v)| (v.abs() as f64 * norm[k % cols]) as f32)
        .collect()
}

/// Returns `w` with the lowest-scored weights zeroed.
pub fn prune(
    w: &[f32],
    rows: usize,
    cols: usize,
    norms: &InputNorms,
    sparsity: &Sparsity,
) -> Vec<f32> {
    let drop = select(&scores(w, cols, norms), rows, cols, sparsity, true);
    w.iter()
        .zip(drop)
        .map(|(&v, d)| if d { 0.0 } else { v })
        .collect()
}
