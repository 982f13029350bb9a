//! `cargo bench --bench train_step [MODEL_DIR]`: one training micro-batch (4 × 256 tokens) on a
//! real model, split into forward and backward, with and without SPP adapters.

use candle_core::{DType, Device};
use spp::adapter::{self, AdapterSpec, Method};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    spp::keep_freed_memory();
    let dir = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "models/smollm2-135m".into());
    let mut model = spp::model::load_model(
        std::path::Path::new(&dir),
        spp::model::DTypeChoice::F32,
        &Device::Cpu,
    )
    .unwrap()
    .model;
    let (b, t) = (4, 256);
    let vocab = model.cfg.vocab_size as u32;
    let examples: Vec<spp::train::data::Example> = (0..b)
        .map(|e| spp::train::data::Example {
            ids: (0..t)
                .map(|i| ((e * t + i) as u32 * 7919) % vocab)
                .collect(),
            first_target: 0,
        })
        .collect();
    let batch =
        spp::train::data::batch(&examples.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap();
    println!("| configuration | forward s | backward s | tok/s |");
    println!("|---|---|---|---|");
    let only = std::env::var("SPP_BENCH_ONLY").ok();
    for method in [None, Some(Method::Spp), Some(Method::Lora)] {
        let name = method.map_or("frozen".to_string(), |m| m.to_string());
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        let mut m = model.clone();
        let spec = AdapterSpec {
            method: method.unwrap_or(Method::Spp),
            targets: ["q", "k", "v", "o", "gate", "up", "down"]
                .map(String::from)
                .to_vec(),
            r: if method == Some(Method::Lora) { 8 } else { 16 },
            scale: 2.0,
            dropout: 0.05,
        };
        if method.is_some() {
            let ctl = adapter::attach(&mut m, &spec, 0).unwrap();
            ctl.train.store(true, std::sync::atomic::Ordering::Relaxed);
        } else {
            // Backward through every layer still runs: the embeddings become the variable.
            m.embed_tokens = candle_core::Var::from_tensor(&m.embed_tokens)
                .unwrap()
                .as_tensor()
                .clone();
        }
        for rep in 0..2 {
            let t0 = Instant::now();
            let loss = spp::train::micro_loss(&m, &batch).unwrap();
            let _ = loss
                .to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let fwd = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let _ = loss.backward().unwrap();
            let bwd = t1.elapsed().as_secs_f64();
            if rep == 1 {
                println!(
                    "| {name} | {fwd:.2} | {bwd:.2} | {:.0} |",
                    (b * t) as f64 / (fwd + bwd)
                );
            }
        }
    }
    model.layers.clear();
}
