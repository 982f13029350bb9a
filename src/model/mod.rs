//! The LLaMA model, its linears and its checkpoints.

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod linear;
pub mod llama;
pub mod stream;

pub use checkpoint::{load_model, save_model, DTypeChoice, LoadedModel, SaveOptions};
pub use config::LlamaConfig;
pub use linear::SparseLinear;
pub use llama::{Block, KvCache, Llama, PackedRow, Packing, Taps, TensorSource};
pub use stream::{ShardWriter, StreamedModel};
