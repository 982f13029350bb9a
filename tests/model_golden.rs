//! The model against logits that `transformers` computed for the same weights
//! (tests/data/tiny, made by scripts/golden/make_tiny_llama.py; its README gives the versions).

mod common;

use candle_core::{DType, Device, Tensor};
use spp::model::{load_model, DTypeChoice, KvCache};
use std::path::PathBuf;

const TINY: [&str; 3] = ["gqa-untied", "gqa-tied-bias", "llama3-rope"];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny")
        .join(name)
}

fn golden(name: &str, dev: &Device) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir(name).join("golden.safetensors"), dev).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn full_forward_body(dev: &Device) {
    for name in TINY {
        let m = load_model(&dir(name), DTypeChoice::Auto, dev)
            .unwrap()
            .model;
        let g = golden(name, dev);
        let logits = m.forward(&g["input_ids"]).unwrap();
        let d = max_diff(&logits, &g["logits"]);
        assert!(d < 1e-4, "{name}: max |logits - transformers| = {d}");
    }
}

fn kv_cache_body(dev: &Device) {
    for name in TINY {
        let m = load_model(&dir(name), DTypeChoice::Auto, dev)
            .unwrap()
            .model;
        let g = golden(name, dev);
        let ids = g["input_ids"].narrow(0, 0, 1).unwrap();
        let mut cache = KvCache::new(m.layers.len());
        let prefix = m
            .forward_cached(&ids.narrow(1, 0, 17).unwrap(), &mut cache)
            .unwrap();
        assert!(
            max_diff(&prefix, &g["logits_prefix"]) < 1e-4,
            "{name}: prefix"
        );
        let full = g["logits"].narrow(0, 0, 1).unwrap();
        for t in 17..40 {
            let step = m
                .forward_step(&ids.narrow(1, t, 1).unwrap(), &mut cache)
                .unwrap();
            let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            let d = max_diff(&step, &want);
            assert!(d < 1e-4, "{name}: cached step {t} differs by {d}");
        }
        assert_eq!(cache.len(), 40);
    }
}

#[test]
fn logits_match_transformers() {
    for dev in common::devices() {
        full_forward_body(&dev);
    }
}

#[test]
fn kv_cache_matches_full_forward() {
    for dev in common::devices() {
        kv_cache_body(&dev);
    }
}

#[test]
fn bf16_is_close_to_f32() {
    let g = golden("gqa-untied", &Device::Cpu);
    let m = load_model(&dir("gqa-untied"), DTypeChoice::Bf16, &Device::Cpu)
        .unwrap()
        .model;
    let logits = m.forward(&g["input_ids"]).unwrap();
    // Weights held in bf16, activations computed in f32 on the CPU.
    assert_eq!((m.dtype(), logits.dtype()), (DType::BF16, DType::F32));
    let d = max_diff(&logits.to_dtype(DType::F32).unwrap(), &g["logits"]);
    assert!(d < 0.15 && d > 0.0, "bf16 drift {d}");
}
