//! Sparsity patterns and the selection of which weights to zero.
//!
//! "N:M" counts **kept** weights, as the literature writes 2:4: at most N non-zeros in every group
//! of M consecutive input columns of one output row (the reference Wanda/SparseGPT code's
//! `prune_n` counts pruned weights instead; the two agree only at 50%). Selections are exact:
//! the lowest scores go first, ties broken by the lowest index (a stable order).

use crate::bail;
use crate::error::{Error, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
            if !in_features.is_multiple_of(m) {
                bail!("{name}: in_features {in_features} is not divisible by M = {m}, so {n}:{m} cannot be applied");
            }
        }
        Ok(())
    }
}

/// Marks (sets `true` in `prune`) the `k` lowest of `scores`, ties by lowest index: a selection
/// (`select_nth_unstable_by`, linear time) under the total order (score, index), so the marked
/// set is the one a stable sort would put first.
pub fn mark_lowest(scores: &[f32], k: usize, prune: &mut [bool]) {
    mark_lowest_in(scores, k, prune, &mut Vec::new());
}

/// [`mark_lowest`] with a reusable index buffer.
fn mark_lowest_in(scores: &[f32], k: usize, prune: &mut [bool], idx: &mut Vec<usize>) {
    let k = k.min(scores.len());
    if k == 0 {
        return;
    }
    idx.clear();
    idx.extend(0..scores.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            scores[a].total_cmp(&scores[b]).then(a.cmp(&b))
        });
    }
    for &i in &idx[..k] {
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
    // Rows are independent comparison groups (or hold whole N:M groups): one task per row.
    // `f(scores of a row, its prune flags, scratch)`.
    type RowFn<'a> = dyn Fn(&[f32], &mut [bool], &mut Vec<usize>) + Sync + 'a;
    let by_row = |prune: &mut [bool], f: &RowFn| {
        prune
            .par_chunks_mut(cols.max(1))
            .zip(scores.par_chunks(cols.max(1)))
            .for_each_init(Vec::new, |idx, (p, s)| f(s, p, idx));
    };
    match *sparsity {
        Sparsity::Unstructured { ratio } if per_row => {
            let k = (cols as f64 * ratio).floor() as usize;
            by_row(&mut prune, &|s, p, idx| mark_lowest_in(s, k, p, idx));
        }
        Sparsity::Unstructured { ratio } => {
            let k = (scores.len() as f64 * ratio).floor() as usize;
            mark_lowest(scores, k, &mut prune);
        }
        Sparsity::NM { n, m } => by_row(&mut prune, &|s, p, idx| {
            for (sg, pg) in s.chunks(m).zip(p.chunks_mut(m)) {
                mark_lowest_in(sg, m - n, pg, idx);
            }
        }),
    }
    prune
}
