//! `config.json` of a Hugging Face `LlamaForCausalLM` directory, mirrored with serde.
//! Keys we do not use are kept in `extra` so that a load → save round trip loses nothing.

use crate::bail;
use crate::error::{IoContext, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    2048
}

/// More layers than any LLaMA-family model has: a config beyond it is corrupt.
pub const MAX_LAYERS: usize = 1 << 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Every other key of config.json, kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LlamaConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| crate::Error::Msg(format!("{}: invalid JSON ({e})", path.display())))?;
        lift_rope_parameters(&mut value);
        let cfg: LlamaConfig = serde_json::from_value(value).map_err(|e| {
            crate::Error::Msg(format!(
                "{}: not a valid LLaMA config.json ({e}); it needs at least vocab_size, hidden_size, \
                 intermediate_size, num_hidden_layers and num_attention_heads",
                path.display()
            ))
        })?;
        cfg.validate()
            .map_err(|e| crate::Error::Msg(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Checks the architecture and the arithmetic between the sizes.
    pub fn validate(&self) -> Result<()> {
        let known = ["LlamaForCausalLM", "MistralForCausalLM"];
        if let Some(a) = self.architectures.first() {
            if !known.contains(&a.as_str()) {
                bail!(
                    "unsupported architecture {a:?}: spp runs LLaMA-family models ({})",
                    known.join(", ")
                );
            }
        }
        if let Some(t) = &self.model_type {
            if !["llama", "mistral"].contains(&t.as_str()) {
                bail!("unsupported model_type {t:?}: spp runs LLaMA-family models (model_type \"llama\")");
            }
        }
        if self.hidden_act != "silu" {
            bail!(
                "unsupported hidden_act {:?}: LLaMA uses \"silu\"",
                self.hidden_act
            );
        }
        if self.num_attention_heads == 0 || self.num_hidden_layers == 0 || self.hidden_size == 0 {
            bail!("num_attention_heads, num_hidden_layers and hidden_size must be positive");
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            );
        }
        if self.num_hidden_layers > MAX_LAYERS {
            bail!(
                "num_hidden_layers {} is more than any LLaMA-family model has (spp allows up to {MAX_LAYERS}); the config is corrupt",
                self.num_hidden_layers
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!(
                "rope_theta {} must be a finite number > 0 (LLaMA-2 uses 10000)",
                self.rope_theta
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            bail!(
                "rms_norm_eps {} must be a finite number ≥ 0 (e.g. 1e-5)",
                self.rms_norm_eps
            );
        }
        if self.max_position_embeddings == 0 {
            bail!("max_position_embeddings must be at least 1 (the model's context length)");
        }
        if let Some(rs) = &self.rope_scaling {
            for (key, v) in [
                ("factor", rs.factor),
                ("low_freq_factor", rs.low_freq_factor),
                ("high_freq_factor", rs.high_freq_factor),
            ] {
                if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                    bail!("rope_scaling.{key} {v} must be a finite number > 0");
                }
            }
            if rs.original_max_position_embeddings == Some(0) {
                bail!("rope_scaling.original_max_position_embeddings must be at least 1");
            }
            match rs.rope_type.as_str() {
                "default" => {}
                "llama3" => {
                    if rs.factor.is_none() || rs.original_max_position_embeddings.is_none() {
                        bail!("rope_scaling of type llama3 needs factor and original_max_position_embeddings");
                    }
                }
                "linear" => {
                    if rs.factor.is_none() {
                        bail!("rope_scaling of type linear needs factor");
                    }
                }
                other => bail!("unsupported rope_scaling type {other:?}: spp supports default, linear and llama3"),
            }
        }
        Ok(())
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Token ids from `eos_token_id`, which may be a number or a list.
    pub fn eos_ids(&self) -> Vec<u32> {
        ids_of(self.eos_token_id.as_ref())
    }

    pub fn bos_id(&self) -> Option<u32> {
        ids_of(self.bos_token_id.as_ref()).first().copied()
    }
}

/// transformers ≥ 5 writes RoPE settings only inside `rope_parameters`; copy them to the
/// top-level `rope_theta` / `rope_scaling` keys that older versions (and spp) read.
fn lift_rope_parameters(v: &mut serde_json::Value) {
    let Some(obj) = v.as_object_mut() else { return };
    let Some(rp) = obj
        .get("rope_parameters")
        .and_then(|r| r.as_object())
        .cloned()
    else {
        return;
    };
    if !obj.contains_key("rope_theta") {
        if let Some(t) = rp.get("rope_theta") {
            obj.insert("rope_theta".into(), t.clone());
        }
    }
    let kind = rp
        .get("rope_type")
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    if kind != "default" && obj.get("rope_scaling").is_none_or(|s| s.is_null()) {
        let mut rs = rp.clone();
        rs.remove("rope_theta");
        obj.insert("rope_scaling".into(), serde_json::Value::Object(rs));
    }
}

pub(crate) fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}
