//! `cargo bench --bench forward [-- MODEL_DIR]`: where one 2047-token forward pass of a real model
//! (default `models/smollm2-135m`) spends its time, all layers summed, with the fused CPU attention
//! and with the composed candle reference. `spp eval ppl` is the end-to-end number; this is the
//! breakdown behind it.

use candle_core::{Device, Tensor};
use spp::model::{load_model, DTypeChoice};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn secs(f: impl FnOnce() -> spp::Result<Tensor>) -> f64 {
    let s = Instant::now();
    f().expect("forward part");
    s.elapsed().as_secs_f64()
}

fn main() {
    spp::keep_freed_memory();
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "models/smollm2-135m".into());
    let mut model = match load_model(dir.as_ref(), DTypeChoice::F32, &Device::Cpu) {
        Ok(m) => m.model,
        Err(e) => {
            eprintln!("forward bench: {e} (run scripts/setup.sh or pass a model directory)");
            return;
        }
    };
    let t: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2047);
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919) % 40000).collect();
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    println!("| part (t = {t}, all layers) | fused attention s | reference attention s |");
    println!("|---|---|---|");
    let mut rows: Vec<(String, [f64; 2])> = Vec::new();
    for (col, reference) in [false, true].into_iter().enumerate() {
        model.set_reference_attention(reference);
        let x = model.embed(&ids).unwrap();
        // Warm-up of every code path (page faults of the weights, thread pool).
        model.layers[0].self_attn.q_proj.forward(&x).unwrap();
        let mut parts = [0f64; 4];
        let mut x = x;
        for (i, layer) in model.layers.iter().enumerate() {
            let a = layer.input_layernorm.forward(&x).unwrap();
            parts[0] += secs(|| {
                let (q, k, v) = (
                    &layer.self_attn.q_proj,
                    &layer.self_attn.k_proj,
                    &layer.self_attn.v_proj,
                );
                q.forward(&a)?;
                k.forward(&a)?;
                v.forward(&a)
            });
            parts[1] += secs(|| model.block_forward(i, &x));
            let m = layer.post_attention_layernorm.forward(&x).unwrap();
            parts[2] += secs(|| {
                let mlp = &layer.mlp;
                let h = spp::cpu::silu_mul(&mlp.gate_proj.forward(&m)?, &mlp.up_proj.forward(&m)?)?;
                mlp.down_proj.forward(&h)
            });
            x = model.block_forward(i, &x).unwrap();
        }
        let h = model.norm.forward(&x).unwrap().squeeze(0).unwrap();
        let tgt = ids.squeeze(0).unwrap();
        parts[3] = secs(|| model.token_nll(&h, &tgt));
        let names = [
            "q,k,v projections",
            "whole blocks",
            "MLP (gate, up, silu·mul, down)",
            "lm_head + NLL",
        ];
        for (r, name) in names.iter().enumerate() {
            if col == 0 {
                rows.push((name.to_string(), [0.0; 2]));
            }
            rows[r].1[col] = parts[r];
        }
    }
    for (name, [f, r]) in &rows {
        println!("| {name} | {f:.3} | {r:.3} |");
    }
    println!(
        "| fused attention core alone (RoPE, QKᵀ, softmax, PV; random q/k/v) | {:.3} | |",
        attention_core(&model, t)
    );
    let (bf, br) = (rows[1].1[0], rows[1].1[1]);
    let (qkv, mlp) = (rows[0].1[0], rows[2].1[0]);
    println!(
        "| attention core + o_proj + norms (blocks − qkv − MLP) | {:.3} | {:.3} |",
        bf - qkv - mlp,
        br - rows[0].1[1] - rows[2].1[1]
    );
}

/// All layers' worth of the fused attention kernel alone on random projections of `t` tokens.
fn attention_core(model: &spp::model::Llama, t: usize) -> f64 {
    use spp::cpu::attention::{attention, Heads, Visibility};
    let cfg = &model.cfg;
    let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, t, h * d), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, t, kvh * d), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (1, t, kvh * d), &dev).unwrap();
    let cos = Tensor::ones((t, d / 2), candle_core::DType::F32, &dev).unwrap();
    let sin = Tensor::zeros((t, d / 2), candle_core::DType::F32, &dev).unwrap();
    let heads = Heads {
        n_heads: h,
        n_kv: kvh,
        head_dim: d,
    };
    (0..cfg.num_hidden_layers)
        .map(|_| secs(|| attention(&q, &k, &v, &cos, &sin, heads, Visibility::Causal)))
        .sum()
}
