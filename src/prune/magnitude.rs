//! Magnitude pruning, the baseline: score `|W|`. Comparison group: the **whole matrix** for
//! unstructured ratios (one threshold per matrix, as in the Wanda repository's baseline),
//! each group of M inputs of a row for N:M. No calibration, no weight update.

use super::mask::{select, Sparsity};

/// Returns `w` (`[rows, cols]`, row-major) with the lowest-magnitude weights zeroed.
pub fn prune(w: &[f32], rows: usize, cols: usize, sparsity: &Sparsity) -> Vec<f32> {
    let scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let drop = select(&scores, rows, cols, sparsity, false);
    w.iter()
        .zip(drop)
        .map(|(&v, d)| if d { 0.0 } else { v })
        .collect()
}
