//! spp: prune LLaMA-family models, fine-tune them with sparsity-preserving (SPP) adapters, merge,
//! evaluate and generate — one library and one binary.
//!
//! The library computes and returns values; only the binary (`src/main.rs`) prints and exits.

pub mod adapter;
pub mod cpu;
pub mod data;
pub mod error;
pub mod fsio;
pub mod gguf;
pub mod model;
pub mod outpath;
pub mod par;
pub mod rng;
pub mod sys;

pub use cpu::{keep_freed_memory, return_freed_memory};
pub use error::{Error, Result};
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod job;
pub mod prune;
pub mod record;
pub mod report;
pub mod run;
pub mod shell;
pub mod tokenizer;
pub mod train;
pub mod validate;
