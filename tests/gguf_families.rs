//! GGUF import of the llama.cpp architectures qwen2, qwen3 and llama with LLaMA-3.1 rope
//! scaling: config, every tensor and the tokenizer against the transformers model each tiny file
//! was written from, and the converted model's logits against transformers'.
//! Golden files: tests/data/gguf/families.json and friends
//! (scripts/golden/make_gguf_families_golden.py).

mod common;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const MODELS: [&str; 3] = ["qwen2_tiny", "qwen3_tiny", "llama31_tiny"];

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf")
        .join(p)
}

fn golden(model: &str) -> Json {
    let text = std::fs::read_to_string(data("families.json")).unwrap();
    let all: Json = serde_json::from_str(&text).unwrap();
    all["models"][model].clone()
}

fn expected(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data(&format!("{model}_expected.safetensors")), &Device::Cpu)
        .unwrap()
}

fn header(model: &str) -> (Content, std::fs::File) {
    spp::gguf::read_header(&data(&format!("{model}.gguf"))).unwrap()
}

/// transformers 5 keeps rope_theta and the scaling in `rope_parameters`.
fn rope(hf: &Json) -> &Json {
    &hf["rope_parameters"]
}

#[test]
fn config_has_the_family_and_sizes_of_the_hf_model() {
    for model in MODELS {
        let g = golden(model);
        let hf = &g["hf_config"];
        let (content, mut file) = header(model);
        let cfg = spp::gguf::config_from_gguf(&content, &mut file).unwrap();
        let ours = serde_json::to_value(&cfg).unwrap();
        for k in [
            "model_type",
            "architectures",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
        ] {
            assert_eq!(ours[k], hf[k], "{model}: {k}");
        }
        let hf_head_dim = hf["head_dim"].as_u64().map(|d| d as usize);
        assert_eq!(
            cfg.head_dim(),
            hf_head_dim.unwrap_or(cfg.hidden_size / cfg.num_attention_heads),
            "{model}: head_dim"
        );
        if model.starts_with("qwen") {
            // transformers' Qwen attention cannot read "head_dim": null.
            assert!(cfg.head_dim.is_some(), "{model}: head_dim written");
        }
        if model == "qwen3_tiny" {
            assert_eq!(
                cfg.head_dim(),
                32,
                "Qwen3's head_dim is not hidden / heads here"
            );
        }
        if let Some(bias) = hf["attention_bias"].as_bool() {
            assert_eq!(cfg.attention_bias, bias, "{model}: attention_bias");
        }
        assert_eq!(cfg.rope_theta, rope(hf)["rope_theta"].as_f64().unwrap());
        let eps = hf["rms_norm_eps"].as_f64().unwrap();
        assert!((cfg.rms_norm_eps - eps).abs() <= eps * 1e-6, "{model}: eps");
        // No sliding window in these files, so none in the config either.
        assert!((0..cfg.num_hidden_layers).all(|l| cfg.sliding_window(l).is_none()));
        let want_rope = rope(hf)["rope_type"].as_str().unwrap();
        match &cfg.rope_scaling {
            None => assert_eq!(want_rope, "default", "{model}"),
            Some(rs) => {
                assert_eq!(rs.rope_type, want_rope, "{model}");
                assert_eq!(rs.factor, rope(hf)["factor"].as_f64());
                assert_eq!(rs.low_freq_factor, rope(hf)["low_freq_factor"].as_f64());
                assert_eq!(rs.high_freq_factor, rope(hf)["high_freq_factor"].as_f64());
                assert_eq!(
                    rs.original_max_position_embeddings,
                    rope(hf)["original_max_position_embeddings"]
                        .as_u64()
                        .map(|x| x as usize)
                );
            }
        }
    }
    let (content, mut file) = header("qwen2_tiny");
    let cfg = spp::gguf::config_from_gguf(&content, &mut file).unwrap();
    assert_eq!(cfg.attention_biases(), (true, false));
    let (content, mut file) = header("qwen3_tiny");
    assert!(spp::gguf::config_from_gguf(&content, &mut file)
        .unwrap()
        .qk_norm());
}

#[test]
fn every_tensor_equals_the_hf_models_bit_for_bit() {
    for model in MODELS {
        let want = expected(model);
        let (content, mut file) = header(model);
        let cfg = spp::gguf::config_from_gguf(&content, &mut file).unwrap();
        let got = spp::gguf::hf_tensors(&content, &mut file, &cfg, DType::F32).unwrap();
        let mut want_names: Vec<&String> = want
            .keys()
            .filter(|k| !matches!(k.as_str(), "input_ids" | "logits"))
            .collect();
        want_names.sort();
        let mut got_names: Vec<&String> = got.keys().collect();
        got_names.sort();
        assert_eq!(got_names, want_names, "{model}: tensor names");
        for name in want_names {
            let w = want[name].to_dtype(DType::F32).unwrap();
            assert_eq!(got[name].dims(), w.dims(), "{model}: {name}");
            let d = common::max_diff(&got[name], &w);
            assert_eq!(d, 0.0, "{model}: {name} differs by {d}");
        }
    }
    // The llama file's q/k rows and biases are permuted on disk: the check above can fail.
    let (content, mut file) = header("llama31_tiny");
    let raw = content
        .tensor(&mut file, "blk.0.attn_q.bias", &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    let want = expected("llama31_tiny");
    assert!(common::max_diff(&raw, &want["model.layers.0.self_attn.q_proj.bias"]) > 0.0);
}

#[test]
fn tokenizer_encodes_like_the_reference_tokenizer() {
    for model in MODELS {
        let g = golden(model);
        let (content, _) = header(model);
        let files = spp::gguf::tokenizer::tokenizer_files(&content).unwrap();
        let json = serde_json::to_string(&files.tokenizer_json).unwrap();
        let tok = tokenizers::Tokenizer::from_str(&json).unwrap();
        let cases = g["tokenizer_cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        let mut failures = vec![];
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, true).unwrap().get_ids().to_vec();
            if got != want {
                failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
                continue;
            }
            let decoded = tok.decode(&got, false).unwrap();
            if decoded != case["decoded"].as_str().unwrap() {
                failures.push(format!("{text:?}: decodes to {decoded:?}"));
            }
        }
        assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
        let template = &g["tokenizer_config"]["chat_template"];
        assert_eq!(
            &files.tokenizer_config["chat_template"], template,
            "{model}"
        );
    }
    // Qwen's NFC: a decomposed "é" encodes as the composed one.
    let (content, _) = header("qwen2_tiny");
    let files = spp::gguf::tokenizer::tokenizer_files(&content).unwrap();
    let tok = tokenizers::Tokenizer::from_str(&files.tokenizer_json.to_string()).unwrap();
    let ids = |s: &str| tok.encode(s, true).unwrap().get_ids().to_vec();
    assert_eq!(ids("cafe\u{301}"), ids("caf\u{e9}"));
}

fn convert(model: &str, out: &Path) -> spp::gguf::ConvertReport {
    spp::gguf::convert(
        &data(&format!("{model}.gguf")),
        out,
        DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES,
    )
    .unwrap()
}

/// Converts, loads the directory and compares spp's logits with transformers'.
fn logits_match(model: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let report = convert(model, &out);
    assert_eq!(report.tokenizer, "gpt2");
    let want = expected(model);
    let m = spp::model::load_model(&out, spp::model::DTypeChoice::Auto, &Device::Cpu)
        .unwrap()
        .model;
    let logits = m.forward(&want["input_ids"]).unwrap();
    let d = common::max_diff(&logits, &want["logits"]);
    let scale = common::max_abs(&want["logits"]);
    println!("{model}: logits differ from transformers' by {d} at most (|max| {scale})");
    assert!(d <= 1e-4, "{model}: logits differ by {d} (|max| {scale})");
}

#[test]
fn llama31_converted_model_reproduces_transformers_logits() {
    logits_match("llama31_tiny");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    convert("llama31_tiny", &out);
    let cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(cfg["rope_scaling"]["factor"], 8.0);
    // rope_freqs became config, not a weight.
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.keys().all(|k| !k.contains("rope")));
}

/// A copy of a golden GGUF with `edit` applied to its bytes.
fn edited_copy(model: &str, dir: &Path, edit: impl FnOnce(&Content, &mut Vec<u8>)) -> PathBuf {
    let src = data(&format!("{model}.gguf"));
    let (content, _) = spp::gguf::read_header(&src).unwrap();
    let mut bytes = std::fs::read(&src).unwrap();
    edit(&content, &mut bytes);
    let path = dir.join(format!("{model}_edited.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn config_error(path: &Path) -> String {
    let (content, mut file) = spp::gguf::read_header(path).unwrap();
    spp::gguf::config_from_gguf(&content, &mut file)
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_architecture_and_foreign_rope_freqs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // general.architecture "qwen2" -> "gemma": same length, so only the value changes.
    let path = edited_copy("qwen2_tiny", tmp.path(), |_, bytes| {
        let at = bytes.windows(5).position(|w| w == b"qwen2").unwrap();
        bytes[at..at + 5].copy_from_slice(b"gemma");
    });
    let err = config_error(&path);
    for arch in ["\"gemma\"", "\"llama\"", "\"qwen2\"", "\"qwen3\""] {
        assert!(err.contains(arch), "{err}");
    }
    let out = tmp.path().join("out");
    let err = spp::gguf::convert(
        &path,
        &out,
        DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not supported") && err.contains("edited.gguf"),
        "{err}"
    );
    assert!(!out.exists());

    // rope_freqs that no LLaMA-3 scaling produces: one divisor changed by a few ulp is accepted,
    // by 1% refused.
    let nudge = |scale: f32| {
        move |c: &Content, bytes: &mut Vec<u8>| {
            let info = &c.tensor_infos["rope_freqs.weight"];
            let at = c.tensor_data_offset as usize + info.offset as usize + 4 * 4;
            let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            bytes[at..at + 4].copy_from_slice(&(v * scale).to_le_bytes());
        }
    };
    let path = edited_copy("llama31_tiny", tmp.path(), nudge(1.0 + 2.0 * f32::EPSILON));
    let (content, mut file) = spp::gguf::read_header(&path).unwrap();
    let cfg = spp::gguf::config_from_gguf(&content, &mut file).unwrap();
    assert_eq!(cfg.rope_scaling.unwrap().factor, Some(8.0));
    let path = edited_copy("llama31_tiny", tmp.path(), nudge(1.01));
    let err = config_error(&path);
    assert!(err.contains("matches no LLaMA-3 rope scaling"), "{err}");
}

#[test]
fn metadata_variants_map_to_their_families() {
    // A llama file with a sliding window describes a Mistral model.
    let (mut content, mut file) = header("qwen3_tiny");
    let (mut llama, mut llama_file) = header("llama31_tiny");
    llama
        .metadata
        .insert("llama.attention.sliding_window".into(), Value::U32(4096));
    let err = spp::gguf::config_from_gguf(&llama, &mut llama_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("biases"), "{err}");
    for bias in ["blk.0.attn_q.bias", "blk.1.attn_q.bias"] {
        llama.tensor_infos.remove(bias);
    }
    let cfg = spp::gguf::config_from_gguf(&llama, &mut llama_file).unwrap();
    assert_eq!(cfg.model_type.as_deref(), Some("mistral"));
    assert_eq!(cfg.architectures, ["MistralForCausalLM"]);
    assert_eq!(cfg.sliding_window(1), Some(4096));

    // Qwen3's attention_bias follows the presence of q biases.
    let info = llama.tensor_infos.remove("blk.0.attn_v.bias").unwrap();
    content
        .tensor_infos
        .insert("blk.0.attn_q.bias".into(), info);
    let cfg = spp::gguf::config_from_gguf(&content, &mut file).unwrap();
    assert!(cfg.attention_bias);
    assert_eq!(cfg.attention_biases(), (true, true));

    // Only llama files carry rope_freqs.
    let freqs = llama.tensor_infos.remove("rope_freqs.weight").unwrap();
    content
        .tensor_infos
        .insert("rope_freqs.weight".into(), freqs);
    let err = spp::gguf::config_from_gguf(&content, &mut file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rope_freqs") && err.contains("qwen3"), "{err}");
}

#[test]
fn qwen_converted_models_reproduce_transformers_logits() {
    logits_match("qwen2_tiny");
    logits_match("qwen3_tiny");
}
