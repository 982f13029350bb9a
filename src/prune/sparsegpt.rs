//! SparseGPT (placeholder: being written).
