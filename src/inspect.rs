//! What a user checks after pruning: architecture, parameter counts, dtype, per-linear sparsity
//! and whether each linear satisfies the 2:4 and 4:8 patterns.

use crate::error::Result;
use crate::model::{Block, Llama, LlamaConfig, StreamedModel};
use candle_core::DType;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub shape: [usize; 2],
    pub sparsity: f64,
    pub n2m4: bool,
    pub n4m8: bool,
    /// How the weight is stored when packed: its layout and value type (`2:4 f32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The architecture's `model_type` (llama, mistral, qwen2, qwen3).
    pub family: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tied_embeddings: bool,
    /// The linears (short names, e.g. `q_proj`) that carry a bias.
    pub biases: Vec<String>,
    /// Qwen3's RMSNorm of query and key heads.
    pub qk_norm: bool,
    /// The sliding window, when some blocks have one, and how many do.
    pub sliding_window: Option<usize>,
    pub sliding_window_blocks: usize,
    pub dtype: String,
    /// Every parameter (a tied head counted once).
    pub parameters: usize,
    /// Parameters of the seven linears of every block (what pruning touches).
    pub linear_parameters: usize,
    pub linear_zeros: usize,
    pub linear_sparsity: f64,
    pub all_linears_2_4: bool,
    pub all_linears_4_8: bool,
    pub linears: Vec<LinearReport>,
}

/// Rows of the linears table that `spp inspect` prints without `--all`.
const SHOWN_LINEARS: usize = 7;

impl Report {
    /// The text `spp inspect` prints for the model at `model`: the summary and the first
    /// linears (every one with `all`).
    pub fn text(&self, model: &std::path::Path, all: bool) -> String {
        use std::fmt::Write;
        let r = self;
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut s = String::new();
        let _ = writeln!(s, "model       {}", model.display());
        let _ = writeln!(s, "arch        {}", r.arch_line());
        let _ = writeln!(s, "dtype       {}", r.dtype);
        let _ = writeln!(
            s,
            "parameters  {} total, {} in block linears",
            r.parameters, r.linear_parameters
        );
        let _ = writeln!(
            s,
            "sparsity    {:.4} of block-linear weights are zero ({} zeros); 2:4 {}; 4:8 {}",
            r.linear_sparsity,
            r.linear_zeros,
            yes(r.all_linears_2_4),
            yes(r.all_linears_4_8)
        );
        let shown = if all { r.linears.len() } else { SHOWN_LINEARS };
        let _ = writeln!(
            s,
            "{:<40} {:>12} {:>9} {:>5} {:>5}  stored",
            "linear", "shape", "sparsity", "2:4", "4:8"
        );
        for l in r.linears.iter().take(shown) {
            let _ = writeln!(
                s,
                "{:<40} {:>12} {:>9.4} {:>5} {:>5}  {}",
                l.name,
                format!("{}x{}", l.shape[0], l.shape[1]),
                l.sparsity,
                yes(l.n2m4),
                yes(l.n4m8),
                l.packed.as_deref().unwrap_or("dense")
            );
        }
        if r.linears.len() > shown {
            let _ = writeln!(
                s,
                "… {} more linears (--all to list them)",
                r.linears.len() - shown
            );
        }
        s
    }
}

pub fn inspect(model: &Llama) -> Result<Report> {
    let mut linears = Vec::new();
    for (i, block) in model.layers.iter().enumerate() {
        linears.extend(block_linears(i, block)?);
    }
    Ok(summarize(&model.cfg, model.dtype(), linears))
}

/// [`inspect`] of a model on disk, one block in memory at a time. The embeddings and head are
/// read too, so that their values are checked like the blocks'.
pub fn inspect_streamed(model: &StreamedModel) -> Result<Report> {
    drop(model.with_embeddings()?);
    let mut linears = Vec::new();
    let mut blocks = model.blocks();
    for i in 0..model.n_layers() {
        linears.extend(block_linears(i, &blocks.next_block()?)?);
    }
    Ok(summarize(model.cfg(), model.dtype(), linears))
}

/// The sparsity report of the seven linears of block `i`.
pub fn block_linears(i: usize, block: &Block) -> Result<Vec<LinearReport>> {
    block
        .linears()
        .into_iter()
        .map(|(name, lin)| {
            Ok(LinearReport {
                name: format!("model.layers.{i}.{name}"),
                shape: [lin.out_features(), lin.in_features()],
                sparsity: lin.sparsity()?,
                n2m4: lin.satisfies_n_m(2, 4)?,
                n4m8: lin.satisfies_n_m(4, 8)?,
                packed: lin.stored_packed().map(|p| {
                    format!(
                        "{} {}",
                        crate::model::packed::layout_name(p.layout),
                        p.values.kind()
                    )
                }),
            })
        })
        .collect()
}

impl Report {
    /// The architecture in one line.
    pub fn arch_line(&self) -> String {
        let mut s = format!(
            "{}: {} layers, hidden {}, mlp {}, {} heads / {} kv heads (head dim {}), vocab {}, context {}, rope theta {}, tied {}",
            self.family,
            self.layers,
            self.hidden_size,
            self.intermediate_size,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.vocab_size,
            self.max_position_embeddings,
            self.rope_theta,
            self.tied_embeddings
        );
        if !self.biases.is_empty() {
            s += &format!("; biases on {}", self.biases.join(", "));
        }
        if self.qk_norm {
            s += "; q/k head norms";
        }
        if let Some(w) = self.sliding_window {
            s += &format!(
                "; sliding window of {w} on {} of {} blocks",
                self.sliding_window_blocks, self.layers
            );
        }
        s
    }
}

/// The whole report of a model with `cfg` stored in `dtype` from its linears' reports.
pub fn summarize(cfg: &LlamaConfig, dtype: DType, linears: Vec<LinearReport>) -> Report {
    let parameters = crate::model::stream::layout(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let (mut lin_params, mut zeros) = (0usize, 0f64);
    for l in &linears {
        let n = l.shape[0] * l.shape[1];
        lin_params += n;
        zeros += l.sparsity * n as f64;
    }
    let linear_zeros = zeros.round() as usize;
    let windows: Vec<usize> = (0..cfg.num_hidden_layers)
        .filter_map(|i| cfg.sliding_window(i))
        .collect();
    Report {
        family: cfg.family().map_or("llama", |f| f.model_type()).into(),
        layers: cfg.num_hidden_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_kv_heads(),
        head_dim: cfg.head_dim(),
        vocab_size: cfg.vocab_size,
        max_position_embeddings: cfg.max_position_embeddings,
        rope_theta: cfg.rope_theta,
        tied_embeddings: cfg.tie_word_embeddings,
        biases: crate::model::stream::linear_shapes(cfg)
            .into_iter()
            .filter(|(name, _, _)| cfg.has_bias(name))
            .map(|(name, _, _)| name.rsplit('.').next().unwrap_or(name).to_string())
            .collect(),
        qk_norm: cfg.qk_norm(),
        sliding_window: windows.first().copied(),
        sliding_window_blocks: windows.len(),
        dtype: format!("{dtype:?}").to_lowercase(),
        parameters,
        linear_parameters: lin_params,
        linear_zeros,
        linear_sparsity: linear_zeros as f64 / lin_params.max(1) as f64,
        all_linears_2_4: linears.iter().all(|l| l.n2m4),
        all_linears_4_8: linears.iter().all(|l| l.n4m8),
        linears,
    }
}
