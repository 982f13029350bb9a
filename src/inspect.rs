//! What a user checks after pruning: architecture, parameter counts, dtype, per-linear sparsity
//! and whether each linear satisfies the 2:4 and 4:8 patterns.

use crate::error::Result;
use crate::model::Llama;

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinearReport {
    pub name: String,
    pub shape: [usize; 2],
    pub sparsity: f64,
    pub n2m4: bool,
    pub n4m8: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
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

pub fn inspect(model: &Llama) -> Result<Report> {
    let cfg = &model.cfg;
    let parameters = model
        .named_tensors()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    let mut linears = Vec::new();
    let (mut lin_params, mut zeros) = (0usize, 0f64);
    for (i, block) in model.layers.iter().enumerate() {
        for (name, lin) in block.linears() {
            let sparsity = lin.sparsity()?;
            let n = lin.weight.elem_count();
            lin_params += n;
            zeros += sparsity * n as f64;
            linears.push(LinearReport {
                name: format!("model.layers.{i}.{name}"),
                shape: [lin.out_features(), lin.in_features()],
                sparsity,
                n2m4: lin.satisfies_n_m(2, 4)?,
                n4m8: lin.satisfies_n_m(4, 8)?,
            });
        }
    }
    let linear_zeros = zeros.round() as usize;
    Ok(Report {
        layers: cfg.num_hidden_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_kv_heads(),
        head_dim: cfg.head_dim(),
        vocab_size: cfg.vocab_size,
        max_position_embeddings: cfg.max_position_embeddings,
        rope_theta: cfg.rope_theta,
        tied_embeddings: model.lm_head.is_none(),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        parameters,
        linear_parameters: lin_params,
        linear_zeros,
        linear_sparsity: linear_zeros as f64 / lin_params.max(1) as f64,
        all_linears_2_4: linears.iter().all(|l| l.n2m4),
        all_linears_4_8: linears.iter().all(|l| l.n4m8),
        linears,
    })
}
