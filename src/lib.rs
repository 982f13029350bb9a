//! spp: prune LLaMA-family models, fine-tune them with sparsity-preserving (SPP) adapters, merge,
//! evaluate and generate — one library and one binary.
//!
//! The library computes and returns values; only the binary (`src/main.rs`) prints and exits.

pub mod adapter;
pub mod error;
pub mod gguf;
pub mod model;

pub use error::{Error, Result};
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod prune;
pub mod report;
pub mod run;
pub mod tokenizer;
pub mod train;
