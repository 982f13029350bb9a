//! Shared test helpers: the devices to run each test body on, and tiny random models built in code.
#![allow(dead_code)]

use candle_core::Device;

/// CPU always; CUDA too when built with `--features cuda` and a GPU is present.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if let Ok(c) = Device::new_cuda(0) {
        d.push(c);
    }
    d
}

use candle_core::{DType, Tensor};
use spp::model::{Llama, LlamaConfig};
use std::collections::HashMap;

/// A tiny LLaMA config: GQA (4 heads over 2 KV heads), dims divisible by 16 and by 4/8.
pub fn tiny_config(tied: bool, bias: bool) -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": tied,
        "attention_bias": bias,
        "mlp_bias": bias,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "custom_key_kept_verbatim": {"nested": [1, 2, 3]}
    }))
    .unwrap()
}

/// Normal draws `mean + std·z`, seeded (StdRng, Box–Muller), as an f32 CPU tensor: the same
/// values on every run and machine, unlike candle's `Tensor::randn` (the thread's RNG).
pub fn randn(seed: u64, shape: &[usize], mean: f32, std: f32) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u: f64 = 1.0 - rng.random::<f64>();
            let a: f64 = rng.random::<f64>();
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * a).cos();
            mean + std * z as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// FNV-1a of a name: a stable seed per tensor.
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Random weights for every tensor `cfg` implies, each seeded by its name ([`randn`]).
pub fn random_tensors(cfg: &LlamaConfig) -> HashMap<String, Tensor> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.num_kv_heads() * cfg.head_dim(),
    );
    let mut m = HashMap::new();
    let mut put = |name: String, shape: &[usize], mean: f32, std: f32| {
        m.insert(name.clone(), randn(seed_of(&name), shape, mean, std));
    };
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 0.5);
    put("model.norm.weight".into(), &[h], 1.0, 0.1);
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), &[v, h], 0.0, 0.3);
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.1,
        );
        let lin = [
            ("self_attn.q_proj", q, h, cfg.attention_bias),
            ("self_attn.k_proj", kv, h, cfg.attention_bias),
            ("self_attn.v_proj", kv, h, cfg.attention_bias),
            ("self_attn.o_proj", h, q, cfg.attention_bias),
            ("mlp.gate_proj", i, h, cfg.mlp_bias),
            ("mlp.up_proj", i, h, cfg.mlp_bias),
            ("mlp.down_proj", h, i, cfg.mlp_bias),
        ];
        for (name, out_f, in_f, bias) in lin {
            put(format!("{p}.{name}.weight"), &[out_f, in_f], 0.0, 0.3);
            if bias {
                put(format!("{p}.{name}.bias"), &[out_f], 0.0, 0.1);
            }
        }
    }
    m
}

pub fn tiny_model(tied: bool, bias: bool, dev: &Device) -> Llama {
    let cfg = tiny_config(tied, bias);
    let t = random_tensors(&cfg);
    Llama::load(cfg, &t, DType::F32, dev).unwrap()
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `n` pseudo-random token ids below `vocab` (a fixed LCG, so tests are reproducible).
pub fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// `../shared/data/<p>` (the project's read-only data), as a command-line argument.
pub fn shared(p: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(p)
        .display()
        .to_string()
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Runs this build's `spp` binary.
pub fn spp(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_spp"))
        .args(args)
        .output()
        .unwrap()
}

/// The tiny LLaMA GGUF of `../shared/data/models` converted into `dir/tiny` by the binary.
pub fn converted_tiny(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("tiny");
    let o = spp(&[
        "convert",
        "gguf",
        &shared("models/llama-2-tiny-random.gguf"),
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The converted real SmolLM2 model (`SPP_SMOLLM2_DIR`, else `models/smollm2-135m`), or `None`
/// with a note when it is absent; absent is a failure under `SPP_REQUIRE_REAL_MODEL=1` (CI).
pub fn smollm2_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var("SPP_SMOLLM2_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m")
        });
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Some(dir);
    }
    if std::env::var("SPP_REQUIRE_REAL_MODEL").as_deref() == Ok("1") {
        panic!("{} not found: run scripts/setup.sh", dir.display());
    }
    eprintln!(
        "skipped: {} not found (run scripts/setup.sh)",
        dir.display()
    );
    None
}

/// Per linear of every block (checkpoint order), 1 where the weight is zero: the mask a
/// sparsity-preserving merge must leave bit-identical.
pub fn zero_masks(model: &Llama) -> Vec<Vec<u8>> {
    model
        .layers
        .iter()
        .flat_map(|b| {
            b.linears().map(|(_, l)| {
                l.weight
                    .eq(0f32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<u8>()
                    .unwrap()
            })
        })
        .collect()
}
