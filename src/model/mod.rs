//! The LLaMA model, its linears and its checkpoints.

pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod hash;
mod kv_cache;
pub mod layout;
pub mod linear;
pub mod llama;
pub mod packed;
pub mod packing;
pub mod rope;
pub mod shards;
pub mod source;
pub mod stream;

pub use checkpoint::{load_model, save_model, LoadedModel, SaveOptions};
pub use config::LlamaConfig;
pub use dtype::DTypeChoice;
pub use linear::{LinearAdapter, SparseLinear, LINEARS};
pub use llama::{Block, KvCache, Llama, Taps, TensorSource};
pub use packing::{PackedRow, Packing};
pub use shards::ShardWriter;
pub use stream::StreamedModel;
