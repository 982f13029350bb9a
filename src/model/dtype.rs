//! The dtype a model is loaded in, and the names `config.json` gives dtypes.

use super::config::LlamaConfig;
use candle_core::DType;

/// The dtype a model is loaded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// The dtype of the weights on disk.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype {s:?}: use auto, f32, f16 or bf16")),
        }
    }
}

impl DTypeChoice {
    pub fn resolve(self, on_disk: DType) -> DType {
        match self {
            Self::Auto => on_disk,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// The dtype activations are computed in for weights stored in `dtype` on `device`: f32 on the
/// CPU, whose fused kernels work in f32 (16-bit weights are widened as the products read them, so
/// they cost half the bytes and no precision beyond their own rounding); the weights' dtype
/// elsewhere.
pub fn compute_dtype(dtype: DType, device: &candle_core::Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        dtype
    }
}

/// The name transformers uses for a dtype in `config.json`.
pub fn torch_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Records `d` under both names transformers has used for it (`torch_dtype` < 5, `dtype` ≥ 5).
pub fn set_dtype(cfg: &mut LlamaConfig, d: DType) {
    cfg.torch_dtype = Some(torch_dtype_name(d).to_string());
    cfg.extra.insert("dtype".into(), torch_dtype_name(d).into());
}
