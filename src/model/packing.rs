//! Several sequences in one row of a forward pass: per-token positions and the keys each query
//! sees.

use crate::bail;
use crate::cpu::attention::{Visibility, Visible};
use crate::error::Result;
use candle_core::{Device, Tensor};

/// Several short sequences packed into one row so that one forward pass serves them all: each
/// token has its own position, and query `i` sees exactly the keys `shared.0 .. shared.1` plus
/// `own ..= i` (its own causal segment). With `shared` empty this is plain packing of
/// independent sequences; with `shared` pointing at a context, several continuations share the
/// context's keys without recomputing it (prefix sharing, used by zero-shot evaluation).
#[derive(Debug, Clone)]
pub struct Packing {
    pub(super) positions: Tensor,
    pub(super) rows: Vec<PackedRow>,
    /// The rows' key ranges as the fused attention takes them.
    pub(super) visible: Visibility,
    /// Per attention chunk: its first visible key and its additive mask (built once, used by
    /// every layer).
    pub(super) masks: Vec<(usize, Tensor)>,
}

/// The keys a packed query sees: `shared.0 .. shared.1` and `own ..= itself`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedRow {
    pub position: u32,
    pub shared: (u32, u32),
    pub own: u32,
}

impl Packing {
    pub fn new(rows: Vec<PackedRow>, device: &Device) -> Result<Self> {
        for (i, r) in rows.iter().enumerate() {
            let (i, (s0, s1)) = (i as u32, r.shared);
            if r.own > i || s0 > s1 || (s1 > r.own && s0 < s1) {
                bail!("internal: packed row {i} has an invalid key range {r:?}");
            }
        }
        let positions = Tensor::from_vec(
            rows.iter().map(|r| r.position).collect::<Vec<_>>(),
            rows.len(),
            device,
        )?;
        let visible = Visibility::Rows(
            rows.iter()
                .map(|r| Visible {
                    shared: (r.shared.0 as usize, r.shared.1 as usize),
                    own: r.own as usize,
                })
                .collect(),
        );
        let mut p = Self {
            positions,
            rows,
            visible,
            masks: Vec::new(),
        };
        for c0 in (0..p.rows.len()).step_by(ATTN_CHUNK) {
            let c = ATTN_CHUNK.min(p.rows.len() - c0);
            p.masks.push(p.visible.chunk_mask(0, c0, c, device)?);
        }
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Query rows per attention chunk: keys beyond a chunk's last query are never scored (causal),
/// and the score temporaries stay small (`[H, CHUNK, S]`).
pub(super) const ATTN_CHUNK: usize = 256;
