//! GGUF import: dequantised values against the `gguf` Python package, q/k un-permuted as
//! transformers does, config from metadata, and the converted directory loads and runs.
//! Golden files: tests/data/gguf (scripts/golden/make_gguf_golden.py).

mod common;

use candle_core::{DType, Device};
use std::path::PathBuf;

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn shared(p: &str) -> PathBuf {
    data("../shared/data").join(p)
}

#[test]
fn dequantisation_matches_gguf_package() {
    let expected = candle_core::safetensors::load(
        data("tests/data/gguf/quants_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (content, mut file) = spp::gguf::read_header(&data("tests/data/gguf/quants.gguf")).unwrap();
    let mut checked = 0;
    for (name, want) in &expected {
        let got = content
            .tensor(&mut file, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        let d = common::max_diff(&got, want);
        let scale = common::max_abs(want);
        assert!(
            d <= scale * 1e-6,
            "{name}: max diff {d} (values up to {scale})"
        );
        checked += 1;
    }
    for t in [
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k",
    ] {
        assert!(expected.contains_key(t), "golden lacks {t}");
    }
    assert_eq!(checked, 13);
}

#[test]
fn llama2_tiny_converts_like_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let report = spp::gguf::convert(
        &shared("models/llama-2-tiny-random.gguf"),
        &out,
        DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES,
    )
    .unwrap();
    assert_eq!(report.tokenizer, "llama");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let want = candle_core::safetensors::load(
        data("tests/data/gguf/llama2_tiny_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let got = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    // transformers' own GGUF loader un-permutes q and k; we must agree exactly.
    for (ours, theirs) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "hf.model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            "hf.model.layers.0.self_attn.k_proj.weight",
        ),
    ] {
        assert_eq!(common::max_diff(&got[ours], &want[theirs]), 0.0, "{ours}");
    }
    // The permutation is not the identity here, so the check above can fail.
    assert!(
        common::max_diff(
            &got["model.layers.0.self_attn.q_proj.weight"],
            &want["blk.0.attn_q.weight"]
        ) > 0.0
    );
    for (ours, theirs) in [
        (
            "model.layers.0.self_attn.v_proj.weight",
            "blk.0.attn_v.weight",
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            "blk.0.attn_output.weight",
        ),
        (
            "model.layers.0.mlp.gate_proj.weight",
            "blk.0.ffn_gate.weight",
        ),
        ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"),
        (
            "model.layers.0.mlp.down_proj.weight",
            "blk.0.ffn_down.weight",
        ),
        (
            "model.layers.0.input_layernorm.weight",
            "blk.0.attn_norm.weight",
        ),
        (
            "model.layers.0.post_attention_layernorm.weight",
            "blk.0.ffn_norm.weight",
        ),
        ("model.norm.weight", "output_norm.weight"),
    ] {
        assert_eq!(common::max_diff(&got[ours], &want[theirs]), 0.0, "{ours}");
    }
    let emb = got["model.embed_tokens.weight"].narrow(0, 0, 8).unwrap();
    assert_eq!(common::max_diff(&emb, &want["token_embd.weight[0:8]"]), 0.0);
    let head = got["lm_head.weight"].narrow(0, 0, 8).unwrap();
    assert_eq!(common::max_diff(&head, &want["output.weight[0:8]"]), 0.0);

    // Config from metadata, as transformers derives it.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data("tests/data/gguf/llama2_tiny_meta.json")).unwrap(),
    )
    .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let hf = &meta["hf_config"];
    for k in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
    ] {
        assert_eq!(cfg[k], hf[k], "config key {k}");
    }
    assert!(
        (cfg["rms_norm_eps"].as_f64().unwrap() - hf["rms_norm_eps"].as_f64().unwrap()).abs() < 1e-9
    );

    // The converted directory loads and reproduces transformers' logits on the GGUF model.
    let m = spp::model::load_model(&out, spp::model::DTypeChoice::Auto, &Device::Cpu)
        .unwrap()
        .model;
    let ids = want["hf.input_ids"].clone();
    let logits = m.forward(&ids).unwrap().narrow(2, 0, 512).unwrap();
    let d = common::max_diff(&logits, &want["hf.logits[..., 0:512]"]);
    assert!(d < 1e-5, "logits differ by {d}");
}

#[test]
fn corrupt_or_unsupported_gguf_is_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = std::fs::read(shared("models/llama-2-tiny-random.gguf")).unwrap();
    // Truncated in the middle of the header.
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &src[..2000]).unwrap();
    let out = tmp.path().join("out");
    let err = spp::gguf::convert(
        &cut,
        &out,
        DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated or corrupt"),
        "{err}"
    );
    assert!(!out.exists());
    // Not a GGUF at all.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not gguf").unwrap();
    assert!(spp::gguf::convert(
        &junk,
        &out,
        DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES
    )
    .is_err());
    // A quant test file has no llama metadata: it must say what is missing.
    let err = spp::gguf::convert(
        &data("tests/data/gguf/quants.gguf"),
        &out,
        DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("llama.embedding_length") || err.contains("token_embd"),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.iter().all(|n| !n.contains("partial")), "{left:?}");
}
