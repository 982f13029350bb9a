//! Sparsity patterns and the selection of which weights to zero.
//!
//! "N:M" counts **kept** weights, as the literature writes 2:4: at most N non-zeros in every group
//! of M consecutive input columns of one output row (the reference Wanda/SparseGPT code's
//! `prune_n` counts pruned weights instead; the two agree only at 50%). Selections are exact:
//! the lowest scores go first, ties broken by the lowest index (a stable order).

use crate::bail;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sparsity {
    /// Zero this fraction of each comparison group (0 < ratio < 1).
    Unstructured { ratio: f64 },
    /// Keep at most `n` of every `m` consecutive inputs of a row.
    NM { n: usize, m: usize },
}

impl std::str::FromStr for Sparsity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some((n, m)) = s.split_once(':') {
            let (n, m): (usize, usize) = match (n.trim().parse(), m.trim().parse()) {
                (Ok(n), Ok(m)) => (n, m),
                _ => bail!("cannot read sparsity {s:?}: N:M needs two integers, e.g. 2:4"),
            };
            if n == 0 || n >= m {
                bail!("sparsity {s}: N:M keeps N of every M weights and needs 0 < N < M (e.g. 2:4, 4:8)");
            }
            return Ok(Sparsity::NM { n, m });
        }
        match s.trim().parse::<f64>() {
            Ok(r) if r > 0.0 && r < 1.0 => Ok(Sparsity::Unstructured { ratio: r }),
            Ok(r) => bail!("sparsity ratio {r} is outside (0, 1): give the fraction of weights to zero, e.g. 0.5"),
            Err(_) => bail!("cannot read sparsity {s:?}: use a ratio such as 0.5 or a pattern such as 2:4"),
        }
    }
}

impl std::fmt::Display for Sparsity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sparsity::Unstructured { ratio } => write!(f, "{ratio}"),
            Sparsity::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl Sparsity {
    /// The fraction of weights this pattern zeroes.
    pub fn ratio(&self) -> f64 {
        match *self {
            Sparsity::Unstructured { ratio } => ratio,
            Sparsity::NM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }

    /// Checks that a linear of `in_features` inputs can carry this pattern.
    pub fn check_layer(&self, name: &str, in_features: usize) -> Result<()> {
        if let Sparsity::NM { n, m } = *self {
            if in_features % m != 0 {
                bail!("{name}: in_features {in_features} is not divisible by M = {m}, so {n}:{m} cannot be applied");
            }
        }
        Ok(())
    }
}

/// Indices of `scores` in increasing order, ties by lowest index.
pub fn stable_order(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx
}

/// Marks (sets `true` in `prune`) the `k` lowest of `scores`.
pub fn mark_lowest(scores: &[f32], k: usize, prune: &mut [bool]) {
    for &i in stable_order(scores).iter().take(k) {
        prune[i] = true;
    }
}

/// Which weights of a `[rows, cols]` matrix to zero, given per-weight scores (lower = pruned
/// first) and the comparison group: one row (`per_row`) or the whole matrix for unstructured;
/// each group of M inputs of a row for N:M.
pub fn select(
    scores: &[f32],
    rows: usize,
    cols: usize,
    sparsity: &Sparsity,
    per_row: bool,
) -> Vec<bool> {
    let mut prune = vec![false; rows * cols];
    match *sparsity {
        Sparsity::Unstructured { ratio } if per_row => {
            let k = (cols as f64 * ratio).floor() as usize;
            for r in 0..rows {
                mark_lowest(
                    &scores[r * cols..(r + 1) * cols],
                    k,
                    &mut prune[r * cols..(r + 1) * cols],
                );
            }
        }
        Sparsity::Unstructured { ratio } => {
            let k = (scores.len() as f64 * ratio).floor() as usize;
            mark_lowest(scores, k, &mut prune);
        }
        Sparsity::NM { n, m } => {
            for g in (0..rows * cols).step_by(m) {
                mark_lowest(&scores[g..g + m], m - n, &mut prune[g..g + m]);
            }
        }
    }
    prune
}
