//! Generation's cache of past keys and values, one entry per block.

use crate::cpu::decode::KvRows;
use candle_core::Tensor;

/// Keys and values of past positions, one entry per block.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(super) kv: Vec<Option<Kv>>,
}

/// One block's cache: growing buffers on the CPU (f32, one sequence), else tensors
/// `[B, KV, T, D]` that each step concatenates to.
#[derive(Debug, Clone)]
pub(super) enum Kv {
    Cpu(KvRows),
    Tensors(Tensor, Tensor),
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            kv: vec![None; n_layers],
        }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.kv
            .first()
            .and_then(|e| e.as_ref())
            .map(|kv| match kv {
                Kv::Cpu(rows) => rows.len(),
                Kv::Tensors(k, _) => k.dims()[2],
            })
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
