//! The names and shapes of a checkpoint's tensors, which follow from `config.json`.

use super::config::LlamaConfig;
use candle_core::DType;

/// Name and shape of every tensor of a checkpoint with `cfg`, in the order spp writes them:
/// embeddings, each block (input norm, the seven linears with their biases, post-attention
/// norm), final norm, head (absent when tied).
pub fn layout(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (hd, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, hd])];
    for i in 0..cfg.num_hidden_layers {
        out.extend(block_layout(cfg, i));
    }
    out.push(("model.norm.weight".into(), vec![hd]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, hd]));
    }
    out
}

fn block_layout(cfg: &LlamaConfig, i: usize) -> Vec<(String, Vec<usize>)> {
    let p = format!("model.layers.{i}");
    let hd = cfg.hidden_size;
    let mut out = vec![(format!("{p}.input_layernorm.weight"), vec![hd])];
    for (name, rows, cols) in linear_shapes(cfg) {
        out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
        if cfg.has_bias(name) {
            out.push((format!("{p}.{name}.bias"), vec![rows]));
        }
        if name == "self_attn.o_proj" && cfg.qk_norm() {
            for norm in ["q_norm", "k_norm"] {
                out.push((format!("{p}.self_attn.{norm}.weight"), vec![cfg.head_dim()]));
            }
        }
    }
    out.push((format!("{p}.post_attention_layernorm.weight"), vec![hd]));
    out
}

/// The seven linears of a block with `cfg`: name, out features, in features.
pub fn linear_shapes(cfg: &LlamaConfig) -> [(&'static str, usize, usize); 7] {
    let (hd, im) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim();
    let kv = cfg.num_kv_heads() * cfg.head_dim();
    let shapes = [
        (q, hd),
        (kv, hd),
        (kv, hd),
        (hd, q),
        (im, hd),
        (im, hd),
        (hd, im),
    ];
    std::array::from_fn(|i| (super::LINEARS[i].1, shapes[i].0, shapes[i].1))
}

/// Bytes of one block's weights with `cfg` in `dtype`.
pub fn block_bytes(cfg: &LlamaConfig, dtype: DType) -> u64 {
    let n: usize = block_layout(cfg, 0)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    (n * dtype.size_in_bytes()) as u64
}
