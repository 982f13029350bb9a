//! Hugging Face directories: save → load is bit-exact, shards round-trip, unknown config keys
//! survive, writes are atomic; long sequences (several attention chunks) agree with the KV cache.

mod common;

use candle_core::{Device, Tensor};
use spp::model::checkpoint::{load_model, save_model, SaveOptions};
use spp::model::{DTypeChoice, KvCache};

fn roundtrip_body(dev: &Device, tied: bool, bias: bool, max_shard_bytes: u64) {
    let m = common::tiny_model(tied, bias, dev);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    save_model(
        &m,
        &out,
        &SaveOptions {
            max_shard_bytes,
            ..Default::default()
        },
    )
    .unwrap();
    let back = load_model(&out, DTypeChoice::Auto, dev).unwrap().model;
    let (a, b) = (m.named_tensors().unwrap(), back.named_tensors().unwrap());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(na, nb);
        let (va, vb): (Vec<f32>, Vec<f32>) = (
            ta.flatten_all().unwrap().to_vec1().unwrap(),
            tb.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} not bit-exact"
        );
    }
    assert_eq!(
        back.cfg.extra.get("custom_key_kept_verbatim"),
        m.cfg.extra.get("custom_key_kept_verbatim")
    );
    assert_eq!(back.cfg.tie_word_embeddings, tied);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "float32");
    // Every safetensors file carries the metadata transformers requires.
    for f in spp::model::checkpoint::weight_files(&out).unwrap() {
        let bytes = std::fs::read(&f).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
    }
    let ids = Tensor::new(&common::ids(12, 96, 3)[..], dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert_eq!(
        common::max_diff(&m.forward(&ids).unwrap(), &back.forward(&ids).unwrap()),
        0.0
    );
}

#[test]
fn save_load_is_bit_exact() {
    for dev in common::devices() {
        roundtrip_body(&dev, false, false, u64::MAX);
        roundtrip_body(&dev, true, true, u64::MAX);
    }
}

/// A bf16 model on the CPU holds its linears as their own 16 bits (products widen them as they
/// read them), computes in f32, and saves bf16 tensors that load back to the same logits.
#[test]
fn bf16_weights_stay_16_bit_and_round_trip() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let (f32_dir, out) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    for tied in [false, true] {
        let m = common::tiny_model(tied, true, &dev);
        save_model(
            &m,
            &f32_dir,
            &SaveOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        let m16 = load_model(&f32_dir, DTypeChoice::Bf16, &dev).unwrap().model;
        for (name, lin) in m16.layers[0].linears() {
            let n = (lin.out_features() * lin.in_features()) as u64;
            assert_eq!(lin.weight_bytes(), 2 * n, "{name} held in 16 bits");
            assert!(
                lin.packed.is_some() && lin.stored_packed().is_none(),
                "{name}"
            );
        }
        save_model(
            &m16,
            &out,
            &SaveOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        let back = load_model(&out, DTypeChoice::Auto, &dev).unwrap().model;
        assert_eq!(back.dtype(), candle_core::DType::BF16);
        for ((na, ta), (_, tb)) in m16
            .named_tensors()
            .unwrap()
            .iter()
            .zip(back.named_tensors().unwrap().iter())
        {
            assert_eq!(ta.dtype(), candle_core::DType::BF16, "{na} saved in bf16");
            assert_eq!(common::max_diff(ta, tb), 0.0, "{na}");
        }
        let ids = Tensor::new(&common::ids(12, 96, 3)[..], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (a, b) = (m16.forward(&ids).unwrap(), back.forward(&ids).unwrap());
        assert_eq!(a.dtype(), candle_core::DType::F32);
        assert_eq!(common::max_diff(&a, &b), 0.0);
        // The same rounded weights held in f32 give the same logits up to the order of sums.
        let wide = load_model(&out, DTypeChoice::F32, &dev).unwrap().model;
        let c = wide.forward(&ids).unwrap();
        let d = common::max_diff(&a, &c);
        assert!(d <= 1e-4 * common::max_abs(&c), "bf16 weights drift {d}");
    }
}

#[test]
fn sharded_save_loads_back() {
    let dev = Device::Cpu;
    roundtrip_body(&dev, false, true, 20_000);
    let m = common::tiny_model(false, false, &dev);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sharded");
    save_model(
        &m,
        &out,
        &SaveOptions {
            max_shard_bytes: 20_000,
            ..Default::default()
        },
    )
    .unwrap();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let files: std::collections::BTreeSet<_> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(files.len() > 2, "expected several shards, got {files:?}");
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn existing_output_needs_force_and_failures_leave_nothing() {
    let dev = Device::Cpu;
    let m = common::tiny_model(true, false, &dev);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    save_model(&m, &out, &SaveOptions::default()).unwrap();
    let err = save_model(&m, &out, &SaveOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    save_model(
        &m,
        &out,
        &SaveOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    // A failing writer leaves neither the output nor a temporary directory.
    let target = tmp.path().join("never");
    let r = spp::model::checkpoint::write_dir_atomically(&target, false, |d| {
        std::fs::write(d.join("half.txt"), "x").unwrap();
        Err(spp::Error::Msg("boom".into()))
    });
    assert!(r.is_err());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("m")],
        "left behind: {left:?}"
    );
}

/// 600 positions span three attention chunks; prefill + single steps chunk differently.
fn long_sequence_body(dev: &Device) {
    let m = common::tiny_model(false, true, dev);
    let ids = common::ids(600, 96, 7);
    let all = Tensor::new(&ids[..], dev).unwrap().unsqueeze(0).unwrap();
    let full = m.forward(&all).unwrap();
    let mut cache = KvCache::new(m.layers.len());
    let pre = m
        .forward_cached(&all.narrow(1, 0, 300).unwrap(), &mut cache)
        .unwrap();
    assert!(common::max_diff(&pre, &full.narrow(1, 0, 300).unwrap()) < 1e-4);
    for t in 300..600 {
        let step = m
            .forward_step(&all.narrow(1, t, 1).unwrap(), &mut cache)
            .unwrap();
        let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
        let d = common::max_diff(&step, &want);
        assert!(d < 1e-4, "position {t}: {d}");
    }
    // The same causal model must not let position t see position t+1.
    let mut changed = ids.clone();
    changed[400] = (changed[400] + 1) % 96;
    let other = m
        .forward(
            &Tensor::new(&changed[..], dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        common::max_diff(
            &other.narrow(1, 0, 400).unwrap(),
            &full.narrow(1, 0, 400).unwrap()
        ),
        0.0
    );
    assert!(
        common::max_diff(
            &other.narrow(1, 400, 1).unwrap(),
            &full.narrow(1, 400, 1).unwrap()
        ) > 0.0
    );
}

#[test]
fn long_sequences_agree_with_the_kv_cache() {
    for dev in common::devices() {
        long_sequence_body(&dev);
    }
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let cfg = common::tiny_config(false, false);
    let mut t = common::random_tensors(&cfg);
    t.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = spp::model::Llama::load(cfg.clone(), &t, candle_core::DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("[8, 8]"),
        "{err}"
    );
    t.remove("model.layers.1.mlp.up_proj.weight");
    let err = spp::model::Llama::load(cfg, &t, candle_core::DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing") && err.contains("up_proj"), "{err}");
}

#[test]
fn copy_checked_copies_exactly_and_finds_any_non_finite_value() {
    use spp::cpu::copy_checked;
    // More than one 65536-value chunk, so the bad value may sit in any chunk.
    let n = 150_001;
    let f: Vec<f32> = (0..n).map(|i| (i as f32 - 7.5) * 0.37).collect();
    let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (out, bad) = copy_checked::<4, f32>(&bytes, 0x7f80_0000, f32::from_bits);
    assert!(!bad);
    assert!(out.iter().zip(&f).all(|(a, b)| a.to_bits() == b.to_bits()));
    for at in [0, 65_535, 65_536, n - 1] {
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut g = f.clone();
            g[at] = v;
            let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!(
                copy_checked::<4, f32>(&bytes, 0x7f80_0000, f32::from_bits).1,
                "{v} at {at}"
            );
        }
    }
    for (exp, nan) in [
        (0x7f80u32, half::bf16::NAN.to_bits()),
        (0x7c00, half::f16::NAN.to_bits()),
    ] {
        let h: Vec<u16> = (0..n).map(|i| (i % 30000) as u16).collect();
        let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (out, bad) = copy_checked::<2, u16>(&bytes, exp, |b| b as u16);
        assert!(!bad && out == h);
        let mut g = h.clone();
        g[n - 1] = nan;
        let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(copy_checked::<2, u16>(&bytes, exp, |b| b as u16).1);
    }
}
