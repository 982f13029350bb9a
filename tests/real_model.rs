//! Cheap checks on the real SmolLM2-135M-Instruct (converted by scripts/setup.sh into
//! models/smollm2-135m). Skipped when the model is absent, unless SPP_REQUIRE_REAL_MODEL=1 (CI).
//! Golden values: tests/data/smollm2 (scripts/golden/make_smollm2_golden.py, transformers).

mod common;

use candle_core::{DType, Device};
use spp::model::{load_model, DTypeChoice};
use std::path::PathBuf;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var("SPP_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m"));
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    if std::env::var("SPP_REQUIRE_REAL_MODEL").as_deref() == Ok("1") {
        panic!("{} not found: run scripts/setup.sh", dir.display());
    }
    eprintln!("skipped: {} not found (run scripts/setup.sh)", dir.display());
    None
}

#[test]
fn logits_match_transformers() {
    let Some(dir) = model_dir() else { return };
    let g = candle_core::safetensors::load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2/golden.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let m = load_model(&dir, DTypeChoice::F32, &Device::Cpu).unwrap().model;
    let logits = m.forward(&g["input_ids"]).unwrap();
    let v = logits.dims()[2];
    let head = logits.narrow(2, 0, 1024).unwrap();
    let tail = logits.narrow(2, v - 1024, 1024).unwrap();
    let dh = common::max_diff(&head, &g["logits_head"]);
    let dt = common::max_diff(&tail, &g["logits_tail"]);
    assert!(dh <= 1e-3 && dt <= 1e-3, "max |Δlogits| head {dh} tail {dt}");
    // Summaries of the whole vocabulary: log-partition and argmax per position.
    let max = logits.max_keepdim(2).unwrap();
    let lse = (logits.broadcast_sub(&max).unwrap().exp().unwrap().sum_keepdim(2).unwrap().log().unwrap() + max)
        .unwrap()
        .squeeze(2)
        .unwrap();
    assert!(common::max_diff(&lse, &g["logsumexp"]) <= 1e-3);
    let am = logits.argmax(2).unwrap().to_dtype(DType::I64).unwrap();
    let want = g["argmax"].to_dtype(DType::I64).unwrap();
    assert_eq!(am.to_vec2::<i64>().unwrap(), want.to_vec2::<i64>().unwrap());
}

#[test]
fn greedy_completion_names_paris() {
    let Some(dir) = model_dir() else { return };
    let m = load_model(&dir, DTypeChoice::F32, &Device::Cpu).unwrap().model;
    let tok = spp::tokenizer::Tokenizer::load(&dir, &m.cfg).unwrap();
    let ids = tok.encode("The capital of France is", true).unwrap();
    let mut out = vec![];
    let opts = spp::generate::SamplingOptions { max_new_tokens: 6, ..Default::default() };
    spp::generate::generate(&m, &ids, &tok.eos_ids, &opts, &mut |t| {
        out.push(t);
        Ok(())
    })
    .unwrap();
    let text = tok.decode(&out).unwrap();
    assert!(text.contains("Paris"), "greedy continuation: {text:?}");
}
