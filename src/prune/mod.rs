//! Post-training pruning (`../shared/docs/SPP.md` §4): magnitude, Wanda and SparseGPT,
//! unstructured or N:M, block by block.

pub mod mask;
pub mod sparsegpt;
