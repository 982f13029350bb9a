//! Writes a random, seeded LLaMA-shaped checkpoint of a published size for scale tests, one
//! tensor at a time (memory: the largest tensor, about 0.5 GB for the 13B shape), with the
//! tokenizer files of a real model so that the text pipeline runs on it.
//!
//! ```sh
//! cargo run --release --example synth_checkpoint -- --shape llama-2-13b \
//!     --tokenizer-from models/smollm2-135m --out /tmp/llama-13b-synth [--layers N] [--seed S]
//! ```
//!
//! `--adapter-for MODEL_DIR --out DIR [--r 16]` writes a random SPP adapter (every linear, A and b
//! non-zero) for a model instead; its base hash is not the model's, so merge it with `--force`.
//!
//! The shapes are the published configs of LLaMA-2 7B / 13B / 70B, except the vocabulary, which is
//! the tokenizer's (SmolLM2's 49152 instead of 32000). Weights are uniform with standard deviation
//! 0.02 (norms 1), stored in bf16; the values depend only on the seed and the tensor's name.

use candle_core::{DType, Device, Tensor};
use half::bf16;
use rayon::prelude::*;
use spp::model::checkpoint::{copy_side_files, write_config, write_dir_atomically};
use spp::model::stream::layout;
use spp::model::{LlamaConfig, ShardWriter};
use std::path::PathBuf;

struct Args {
    shape: String,
    tokenizer_from: PathBuf,
    out: PathBuf,
    layers: Option<usize>,
    seed: u64,
    max_shard: u64,
    adapter_for: Option<PathBuf>,
    r: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        shape: "llama-2-7b".into(),
        tokenizer_from: PathBuf::from("models/smollm2-135m"),
        out: PathBuf::new(),
        layers: None,
        seed: 0,
        max_shard: 5_000_000_000,
        adapter_for: None,
        r: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--shape" => a.shape = val()?,
            "--tokenizer-from" => a.tokenizer_from = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--layers" => a.layers = Some(val()?.parse().map_err(|e| format!("--layers: {e}"))?),
            "--adapter-for" => a.adapter_for = Some(val()?.into()),
            "--r" => a.r = val()?.parse().map_err(|e| format!("--r: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--max-shard-size" => {
                a.max_shard = val()?.parse::<spp::model::checkpoint::ByteSize>()?.0
            }
            _ => {
                return Err(format!(
                "unknown flag {flag}: see the comment at the top of examples/synth_checkpoint.rs"
            ))
            }
        }
    }
    if a.out.as_os_str().is_empty() {
        return Err("--out DIR is required".into());
    }
    Ok(a)
}

/// (hidden, intermediate, layers, heads, kv heads) of the published LLaMA-2 configs.
fn shape(name: &str) -> Option<(usize, usize, usize, usize, usize)> {
    Some(match name {
        "llama-2-7b" => (4096, 11008, 32, 32, 32),
        "llama-2-13b" => (5120, 13824, 40, 40, 40),
        "llama-2-70b" => (8192, 28672, 80, 64, 8),
        _ => return None,
    })
}

fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform values with standard deviation `std`, seeded by `seed` and the chunk index.
fn random(n: usize, seed: u64, std: f32) -> Vec<bf16> {
    const CHUNK: usize = 1 << 16;
    let bound = std * 3f32.sqrt();
    let mut v = vec![bf16::ZERO; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut s = seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for x in out {
            let u = (splitmix64(&mut s) >> 40) as f32 / (1u64 << 24) as f32;
            *x = bf16::from_f32((u * 2.0 - 1.0) * bound);
        }
    });
    v
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = parse()?;
    if let Some(model) = &a.adapter_for {
        return adapter(&a, model).map_err(|e| e.to_string());
    }
    let Some((hidden, inter, layers, heads, kv)) = shape(&a.shape) else {
        return Err(format!(
            "unknown --shape {}: use llama-2-7b, llama-2-13b or llama-2-70b",
            a.shape
        ));
    };
    let tok_cfg_path = a.tokenizer_from.join("config.json");
    let tok_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&tok_cfg_path)
            .map_err(|e| format!("{}: {e}", tok_cfg_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", tok_cfg_path.display()))?;
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tok_cfg["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": a.layers.unwrap_or(layers),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": false,
        "bos_token_id": tok_cfg["bos_token_id"],
        "eos_token_id": tok_cfg["eos_token_id"],
    }))
    .map_err(|e| format!("config: {e}"))?;
    let t0 = std::time::Instant::now();
    let tensors = layout(&cfg);
    let params: usize = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    write_dir_atomically(&a.out, false, |tmp| {
        write_config(tmp, &cfg, DType::BF16)?;
        let plan = tensors
            .iter()
            .map(|(n, s)| (n.clone(), DType::BF16, s.clone()))
            .collect();
        let mut w = ShardWriter::new(tmp, plan, a.max_shard)?;
        for (k, (name, shape)) in tensors.iter().enumerate() {
            let n: usize = shape.iter().product();
            let std = if name.ends_with("norm.weight") {
                0.0
            } else {
                0.02
            };
            let mut seed = a.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut v = random(n, splitmix64(&mut seed), std);
            if std == 0.0 {
                v.fill(bf16::ONE);
            }
            w.write(name, &Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)?;
            if name.ends_with("post_attention_layernorm.weight") {
                eprint!("\rwrote {name} ({:.0} s)", t0.elapsed().as_secs_f64());
            }
        }
        w.finish()?;
        copy_side_files(&a.tokenizer_from, tmp)
    })
    .map_err(|e| e.to_string())?;
    eprintln!();
    println!(
        "wrote {} ({}, {} layers, {:.2} B parameters, bf16) in {:.0} s",
        a.out.display(),
        a.shape,
        cfg.num_hidden_layers,
        params as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A random SPP adapter of rank `a.r` on every linear of the model in `model`.
fn adapter(a: &Args, model: &std::path::Path) -> spp::Result<()> {
    use spp::adapter::{AdapterConfig, AdapterSpec, Method};
    let sm = spp::model::StreamedModel::open(model, spp::model::DTypeChoice::Auto, &Device::Cpu)?;
    let cfg = sm.cfg();
    let spec = AdapterSpec {
        method: Method::Spp,
        targets: spp::prune::parse_targets("all")?,
        r: a.r,
        scale: 2.0,
        dropout: 0.0,
    };
    // The config describes the model through a shell with the same config and no blocks.
    let mut acfg = AdapterConfig::new(&spec, sm.shell(), model, "synthetic".into());
    acfg.num_layers = cfg.num_hidden_layers;
    let mut tensors = Vec::new();
    let mut k = 0u64;
    for i in 0..cfg.num_hidden_layers {
        for (full, rows, cols) in spp::model::stream::linear_shapes(cfg) {
            let p = format!("base_model.model.model.layers.{i}.{full}");
            for (name, shape) in [
                (format!("{p}.spp_A.weight"), (a.r, cols)),
                (format!("{p}.spp_b.weight"), (rows, 1)),
            ] {
                k += 1;
                let v: Vec<f32> = random(shape.0 * shape.1, a.seed ^ k, 0.01)
                    .iter()
                    .map(|x| x.to_f32())
                    .collect();
                tensors.push((name, Tensor::from_vec(v, shape, &Device::Cpu)?));
            }
        }
    }
    write_dir_atomically(&a.out, false, |tmp| {
        spp::adapter::write_files(&acfg, &tensors, tmp)
    })?;
    println!(
        "wrote a random SPP adapter (r {}) for {} to {}",
        a.r,
        model.display(),
        a.out.display()
    );
    Ok(())
}
