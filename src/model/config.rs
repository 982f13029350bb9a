//! `config.json` of a Hugging Face LLaMA-family directory (LLaMA 1–3, Mistral, Qwen2 / Qwen2.5,
//! Qwen3), mirrored with serde. Keys we do not use are kept in `extra` so that a load → save
//! round trip loses nothing; the few family-specific keys (sliding windows) are read from there.

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

/// The LLaMA-family architectures spp runs. They share the decoder (RMSNorm, RoPE, grouped-query
/// attention, SwiGLU) and the checkpoint names, and differ in a few details listed per method of
/// [`LlamaConfig`] (`attention_biases`, `qk_norm`, `sliding_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3];

    /// `model_type` in config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// `architectures[0]` in config.json.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The supported `model_type`s, quoted, for messages.
    pub fn supported() -> String {
        Family::ALL
            .map(|f| format!("{:?}", f.model_type()))
            .join(", ")
    }
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
        self.family()?;
        if self.extra.get("sliding_window").and_then(|v| v.as_u64()) == Some(0) {
            bail!("sliding_window 0 would let a token attend to nothing; it must be at least 1");
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

    /// The family, from `model_type` (or, without it, the first architecture); the two must
    /// agree when both are given.
    pub fn family(&self) -> Result<Family> {
        let by_arch = match self.architectures.first() {
            Some(a) => Some(
                Family::ALL
                    .into_iter()
                    .find(|f| f.architecture() == a)
                    .ok_or_else(|| {
                        crate::Error::Msg(format!(
                            "unsupported architecture {a:?}: spp runs the LLaMA family ({})",
                            Family::ALL.map(|f| f.architecture()).join(", ")
                        ))
                    })?,
            ),
            None => None,
        };
        let by_type = match &self.model_type {
            Some(t) => Some(
                Family::ALL
                    .into_iter()
                    .find(|f| f.model_type() == t)
                    .ok_or_else(|| {
                        crate::Error::Msg(format!(
                            "unsupported model_type {t:?}: spp runs the LLaMA family ({})",
                            Family::supported()
                        ))
                    })?,
            ),
            None => None,
        };
        match (by_type, by_arch) {
            (Some(t), Some(a)) if t != a => bail!(
                "model_type {:?} and architecture {:?} name different families; fix config.json",
                t.model_type(),
                a.architecture()
            ),
            (t, a) => Ok(t.or(a).unwrap_or(Family::Llama)),
        }
    }

    /// The family of a validated config.
    fn family_checked(&self) -> Family {
        self.family().unwrap_or(Family::Llama)
    }

    /// Biases of (q, k, v) and of o_proj: LLaMA and Qwen3 have both or neither
    /// (`attention_bias`), Qwen2 has q/k/v biases only, Mistral none.
    pub fn attention_biases(&self) -> (bool, bool) {
        match self.family_checked() {
            Family::Llama | Family::Qwen3 => (self.attention_bias, self.attention_bias),
            Family::Qwen2 => (true, false),
            Family::Mistral => (false, false),
        }
    }

    /// Biases on gate/up/down: only LLaMA has the option (`mlp_bias`).
    pub fn mlp_biases(&self) -> bool {
        self.family_checked() == Family::Llama && self.mlp_bias
    }

    /// Whether the linear `name` (e.g. `self_attn.o_proj`) of every block has a bias.
    pub fn has_bias(&self, name: &str) -> bool {
        let (qkv, o) = self.attention_biases();
        match name {
            "self_attn.o_proj" => o,
            n if n.starts_with("self_attn.") => qkv,
            _ => self.mlp_biases(),
        }
    }

    /// Qwen3 normalises every query and key head (RMSNorm over head_dim) before RoPE.
    pub fn qk_norm(&self) -> bool {
        self.family_checked() == Family::Qwen3
    }

    /// The number of most recent keys block `layer` attends to (itself included), `None` for
    /// full causal attention: Mistral's `sliding_window` on every block; Qwen's when
    /// `use_sliding_window` is on, on the blocks `layer_types` marks `sliding_attention` (by
    /// default those from `max_window_layers` on).
    pub fn sliding_window(&self, layer: usize) -> Option<usize> {
        let key = |k: &str| self.extra.get(k).filter(|v| !v.is_null());
        let window = key("sliding_window")
            .and_then(|v| v.as_u64())
            .map(|w| w as usize);
        match self.family_checked() {
            Family::Llama => None,
            Family::Mistral => window,
            Family::Qwen2 | Family::Qwen3 => {
                if !key("use_sliding_window")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false)
                {
                    return None;
                }
                let sliding = match key("layer_types").and_then(|v| v.as_array()) {
                    Some(types) => {
                        types.get(layer).and_then(|t| t.as_str()) == Some("sliding_attention")
                    }
                    None => {
                        let from = key("max_window_layers")
                            .and_then(|v| v.as_u64())
                            .unwrap_or(28);
                        layer as u64 >= from
                    }
                };
                window.filter(|_| sliding)
            }
        }
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
