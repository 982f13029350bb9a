//! Block-streamed jobs against the in-memory model: the checkpoint layout, the shard writer, and
//! `spp prune` / `spp eval ppl` / `spp inspect` (which read one block at a time) giving exactly
//! what the library computes with every block in memory.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{s, shared, spp};
use spp::model::stream::{layout, ShardWriter, StreamedModel};
use spp::model::{load_model, save_model, DTypeChoice, SaveOptions};
use std::path::{Path, PathBuf};

fn tensors_of(dir: &Path) -> Vec<(String, Tensor)> {
    load_model(dir, DTypeChoice::Auto, &Device::Cpu)
        .unwrap()
        .model
        .named_tensors()
        .unwrap()
}

fn assert_same_tensors(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dims(), tb.dims(), "{na}");
        let (va, vb) = (
            ta.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            tb.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        let same = va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{na} differs");
    }
}

#[test]
fn layout_is_the_order_of_named_tensors() {
    for (tied, bias) in [(false, false), (true, true)] {
        let m = common::tiny_model(tied, bias, &Device::Cpu);
        let named: Vec<(String, Vec<usize>)> = m
            .named_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
        assert_eq!(layout(&m.cfg), named, "tied {tied} bias {bias}");
    }
}

#[test]
fn shard_writer_writes_planned_shards_and_refuses_surprises() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::tiny_model(false, true, &Device::Cpu);
    // Shards of at most 20 KB: the tiny model takes several, with an index.
    let out = tmp.path().join("sharded");
    let opts = SaveOptions {
        max_shard_bytes: 20_000,
        ..Default::default()
    };
    save_model(&m, &out, &opts).unwrap();
    let shards: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert!(shards.len() > 2, "{} shards", shards.len());
    for e in &shards {
        let len = e.metadata().unwrap().len();
        // A shard holds at most the limit of data, unless it is a single larger tensor.
        let bytes = std::fs::read(e.path()).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header % 8, 0, "data 8-aligned");
        assert!(len - 8 - header <= 20_000 || len < 40_000, "{len}");
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        m.named_tensors().unwrap().len()
    );
    // transformers' reader is the safetensors library: every shard must parse with it.
    for e in &shards {
        let bytes = std::fs::read(e.path()).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap();
    }
    assert_same_tensors(&tensors_of(&out), &m.named_tensors().unwrap());

    // Out of order, wrong shape, too many, too few: errors, never a malformed file.
    let dir = tmp.path().join("w");
    std::fs::create_dir(&dir).unwrap();
    let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let plan = vec![
        ("a".to_string(), DType::F32, vec![2, 3]),
        ("b".to_string(), DType::F32, vec![2, 3]),
    ];
    let mut w = ShardWriter::new(&dir, plan.clone(), 1 << 20).unwrap();
    assert!(w.write("b", &a).is_err());
    let mut w = ShardWriter::new(&dir, plan.clone(), 1 << 20).unwrap();
    assert!(w
        .write(
            "a",
            &Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap()
        )
        .is_err());
    let mut w = ShardWriter::new(&dir, plan.clone(), 1 << 20).unwrap();
    w.write("a", &a).unwrap();
    assert!(w.finish().is_err(), "b was never written");
    let mut w = ShardWriter::new(&dir, plan, 1 << 20).unwrap();
    w.write("a", &a).unwrap();
    w.write("b", &a).unwrap();
    assert!(w.write("c", &a).is_err());
    w.finish().unwrap();
}

/// The tiny GGUF model, the tiny Qwen2 (biases, a windowed block) and Qwen3 (q/k norms) models,
/// and the real SmolLM2 model when it exists (scripts/setup.sh makes it).
fn model_dirs(tmp: &Path) -> Vec<PathBuf> {
    let mut v = vec![common::converted_tiny(tmp)];
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny");
    v.extend(["qwen2-tied", "qwen3-headdim"].map(|f| tiny.join(f)));
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m");
    if real.join("model.safetensors").exists() {
        v.push(real);
    } else if std::env::var_os("SPP_REQUIRE_REAL_MODEL").is_some() {
        panic!("models/smollm2-135m is missing: run scripts/setup.sh");
    }
    v
}

#[test]
fn streamed_prune_equals_the_in_memory_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let text = shared("wikitext2/wiki.test.raw");
    for (k, model) in model_dirs(tmp.path()).into_iter().enumerate() {
        // SparseGPT on the real model adds half a minute and nothing the tiny one does not test.
        let methods: &[(&str, &str)] = if k == 0 {
            &[("wanda", "2:4"), ("sparsegpt", "0.5")]
        } else {
            &[("wanda", "2:4")]
        };
        for &(method, sparsity) in methods {
            let out = tmp.path().join(format!("pruned-{k}-{method}"));
            let o = spp(&[
                "prune",
                "--model",
                &s(&model),
                "--method",
                method,
                "--sparsity",
                sparsity,
                "--calib",
                &text,
                "--nsamples",
                "2",
                "--seqlen",
                "64",
                "--max-shard-size",
                "3MB",
                "--out",
                &s(&out),
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("predicted peak memory"), "{err}");
            // The same calibration windows, pruned with every block in memory.
            let calib =
                candle_core::safetensors::load(out.join("calibration.safetensors"), &Device::Cpu)
                    .unwrap();
            let ids = calib["input_ids"]
                .to_dtype(DType::U32)
                .unwrap()
                .to_vec2::<u32>()
                .unwrap();
            let mut m = load_model(&model, DTypeChoice::Auto, &Device::Cpu)
                .unwrap()
                .model;
            let opts = spp::prune::PruneOptions {
                method: method.parse().unwrap(),
                sparsity: sparsity.parse().unwrap(),
                targets: spp::prune::parse_targets("all").unwrap(),
                true_sequential: false,
                blocksize: 128,
                percdamp: 0.01,
            };
            spp::prune::prune_model(&mut m, &ids, &opts, &mut |_| {}).unwrap();
            assert_same_tensors(&tensors_of(&out), &m.named_tensors().unwrap());
            let rec: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("prune.json")).unwrap())
                    .unwrap();
            let summary = spp::inspect::inspect(&m).unwrap();
            assert_eq!(rec["result"]["linear_sparsity"], summary.linear_sparsity);
            assert!(rec["peak_anon_bytes"].as_u64().unwrap() > 0);

            // Perplexity: the streamed command against the in-memory library call.
            let o = spp(&[
                "eval",
                "ppl",
                "--model",
                &s(&out),
                "--text",
                &text,
                "--seqlen",
                "128",
                "--max-windows",
                "3",
                "--json",
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let tok = spp::tokenizer::Tokenizer::load(&model, &m.cfg).unwrap();
            let ids = tok
                .encode(
                    &spp::eval::perplexity::read_text(Path::new(&text)).unwrap(),
                    true,
                )
                .unwrap();
            let r = spp::eval::perplexity::perplexity(
                &m,
                &ids,
                128,
                Some(3),
                tok.bos_id,
                &mut |_, _| {},
            )
            .unwrap();
            assert_eq!(
                v["mean_nll"].as_f64().unwrap().to_bits(),
                r.mean_nll.to_bits()
            );

            // inspect reads one block at a time and reports what the in-memory model says.
            let o = spp(&["inspect", "--model", &s(&out), "--json"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v, serde_json::to_value(&summary).unwrap());
        }
    }
}

#[test]
fn streamed_perplexity_in_groups_equals_one_group() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::tiny_model(false, false, &Device::Cpu);
    let dir = tmp.path().join("m");
    save_model(&m, &dir, &SaveOptions::default()).unwrap();
    let sm = StreamedModel::open(&dir, DTypeChoice::Auto, &Device::Cpu).unwrap();
    let ids = common::ids(16 * 7, m.cfg.vocab_size, 3);
    let whole =
        spp::eval::perplexity::perplexity(&m, &ids, 16, None, None, &mut |_, _| {}).unwrap();
    // A budget of one window's hidden states: seven groups, each reading the blocks again.
    for budget in [1, 16 * 32 * 4 * 2, u64::MAX] {
        let r = spp::eval::perplexity::perplexity_streamed(
            &sm,
            &ids,
            16,
            None,
            None,
            budget,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(r.windows, 7);
        assert_eq!(
            r.mean_nll.to_bits(),
            whole.mean_nll.to_bits(),
            "budget {budget}"
        );
        assert_eq!(r.window_seconds.len(), 7);
    }
}

#[test]
fn streamed_merge_equals_the_in_memory_merge() {
    use spp::adapter::{AdapterConfig, AdapterSpec, Method};
    let tmp = tempfile::tempdir().unwrap();
    for method in [Method::Spp, Method::LoraMask] {
        // A pruned base (so that keeping the zeros means something) with a trained-looking
        // adapter: every A and b / B entry non-zero.
        let mut m = common::tiny_model(false, false, &Device::Cpu);
        let ids: Vec<Vec<u32>> = (0..2)
            .map(|k| common::ids(16, m.cfg.vocab_size, k))
            .collect();
        let opts = spp::prune::PruneOptions {
            method: spp::prune::PruneMethod::Wanda,
            sparsity: "2:4".parse().unwrap(),
            targets: spp::prune::parse_targets("all").unwrap(),
            true_sequential: false,
            blocksize: 16,
            percdamp: 0.01,
        };
        spp::prune::prune_model(&mut m, &ids, &opts, &mut |_| {}).unwrap();
        let base = tmp.path().join(format!("base-{method}"));
        save_model(&m, &base, &SaveOptions::default()).unwrap();
        let spec = AdapterSpec {
            method,
            targets: spp::prune::parse_targets("all").unwrap(),
            r: 4,
            scale: 2.0,
            dropout: 0.0,
        };
        let hash = spp::adapter::weights_hash(&m).unwrap();
        spp::adapter::attach(&mut m, &spec, 7).unwrap();
        for (k, (_, v)) in spp::adapter::trainable(&m).into_iter().enumerate() {
            let t = (common::randn(k as u64, v.as_tensor().dims(), 0.0, 0.3) + 0.05 * k as f64)
                .unwrap();
            v.set(&t).unwrap();
        }
        let cfg = AdapterConfig::new(&spec, &m, &base, hash);
        let adapter = tmp.path().join(format!("adapter-{method}"));
        spp::adapter::save(&m, &cfg, &adapter, false).unwrap();
        let linears = spp::adapter::merge(&mut m).unwrap();
        assert!(linears.iter().all(|l| l.zeros_kept));

        let out = tmp.path().join(format!("merged-{method}"));
        let o = spp(&[
            "merge",
            "--model",
            &s(&base),
            "--adapter",
            &s(&adapter),
            "--out",
            &s(&out),
            "--max-shard-size",
            "30KB",
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(rec["all_zeros_kept"], true);
        assert!(out.join("model.safetensors.index.json").exists(), "sharded");
        assert_same_tensors(&tensors_of(&out), &m.named_tensors().unwrap());

        // An adapter for other weights: refused after the pass that computes the hash, and
        // nothing is left behind.
        let other = tmp.path().join(format!("other-{method}"));
        save_model(
            &common::tiny_model(false, false, &Device::Cpu),
            &other,
            &SaveOptions::default(),
        )
        .unwrap();
        let bad = tmp.path().join(format!("bad-{method}"));
        let o = spp(&[
            "merge",
            "--model",
            &s(&other),
            "--adapter",
            &s(&adapter),
            "--out",
            &s(&bad),
        ]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("different model"));
        assert!(!bad.exists());
        let leftovers = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .count();
        assert_eq!(leftovers, 0);
    }
}

#[test]
fn training_with_streamed_blocks_equals_resident_checkpointed_training() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::converted_tiny(tmp.path());
    let records: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"instruction": format!("Count to {i}."), "input": "", "output": "1 2 3 ".repeat(i + 1)}))
        .collect();
    let data = tmp.path().join("alpaca.json");
    std::fs::write(&data, serde_json::to_string(&records).unwrap()).unwrap();
    let mut adapters = Vec::new();
    // Streamed with the block read for every pass, and with the default (this one-block model
    // fits, so it is kept in memory): both equal resident checkpointed training.
    let runs: Vec<(&str, &[&str])> = vec![
        ("spp", &["--grad-checkpoint"]),
        ("spp", &["--stream-blocks", "--keep-blocks", "0"]),
        ("spp", &["--stream-blocks"]),
        ("lora-mask", &["--grad-checkpoint"]),
        ("lora-mask", &["--stream-blocks", "--keep-blocks", "0"]),
        ("lora-mask", &["--stream-blocks"]),
    ];
    for (k, (method, flags)) in runs.into_iter().enumerate() {
        let out = tmp.path().join(format!("adapter-{k}"));
        let o = spp(&[
            "train",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--out",
            &s(&out),
            "--method",
            method,
            "--r",
            "4",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "1",
            "--cutoff",
            "48",
            "--val-size",
            "2",
            "--eval-every",
            "2",
            "--dropout",
            "0.1",
        ]
        .into_iter()
        .chain(flags.iter().copied())
        .collect::<Vec<_>>());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        let streamed = flags[0] == "--stream-blocks";
        assert_eq!(err.contains("stay on disk"), streamed, "{err}");
        if streamed {
            let kept = flags.get(2).map_or("1", |k| k);
            assert!(err.contains(&format!("keeps {kept} of 1 blocks")), "{err}");
        }
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let t = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
        let mut t: Vec<(String, Tensor)> = t.into_iter().collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        adapters.push((cfg["base_model_hash"].clone(), t));
    }
    for group in adapters.chunks(3) {
        for other in &group[1..] {
            assert_eq!(
                group[0].0, other.0,
                "the streamed base hash is the resident one"
            );
            assert_same_tensors(&group[0].1, &other.1);
        }
    }
}

#[test]
fn streamed_zero_shot_scores_equal_the_resident_ones() {
    let tmp = tempfile::tempdir().unwrap();
    for model in model_dirs(tmp.path()) {
        let run = |extra: &[&str]| {
            let mut args = vec![
                "eval",
                "tasks",
                "--model",
                model.to_str().unwrap(),
                "--limit",
                "6",
                "--data-dir",
            ];
            let data = shared("eval");
            args.push(&data);
            // Small passes: several of them go through each block.
            args.extend(["--batch-tokens", "256", "--json"]);
            args.extend(extra);
            let o = spp(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v["tasks"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, t)| (name.clone(), t["docs"].clone(), t["acc"].clone()))
                .collect::<Vec<_>>()
        };
        let resident = run(&[]);
        assert_eq!(resident.len(), 7);
        assert_eq!(run(&["--stream-blocks"]), resident, "{}", model.display());
    }
}

#[test]
fn streamed_zero_shot_in_groups_of_passes_equals_one_group() {
    use spp::eval::zeroshot::{score_tasks, score_tasks_streamed, ScoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    let model = common::converted_tiny(tmp.path());
    let m = load_model(&model, DTypeChoice::Auto, &Device::Cpu)
        .unwrap()
        .model;
    let sm = StreamedModel::open(&model, DTypeChoice::Auto, &Device::Cpu).unwrap();
    let tok = spp::tokenizer::Tokenizer::load(&model, &m.cfg).unwrap();
    let encoded: Vec<_> = ["arc_easy", "winogrande"]
        .iter()
        .map(|t| {
            let task = spp::eval::tasks::load(t, Path::new(&shared("eval")), Some(6)).unwrap();
            spp::eval::zeroshot::encode_docs(&tok, &task.docs, m.cfg.max_position_embeddings)
                .unwrap()
        })
        .collect();
    let slices: Vec<&[_]> = encoded.iter().map(Vec::as_slice).collect();
    let opts = ScoreOptions {
        batch_docs: 2,
        batch_tokens: 128,
        share: true,
    };
    let resident = score_tasks(&m, &slices, opts, &mut |_, _, _| {}).unwrap();
    // A budget of one byte: every pass is a group of its own and reads the blocks again.
    for budget in [1, u64::MAX] {
        let streamed = score_tasks_streamed(&sm, &slices, opts, budget, &mut |_, _, _| {}).unwrap();
        for (a, b) in resident.iter().zip(&streamed) {
            let bits = |s: &spp::eval::zeroshot::Scores| -> Vec<u64> {
                s.loglikelihoods
                    .iter()
                    .flatten()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(a), bits(b), "budget {budget}");
            assert_eq!(a.tokens, b.tokens);
        }
    }
}
