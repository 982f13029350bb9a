//! The LLaMA-family architectures besides LLaMA 1/2 (Mistral's sliding window, Qwen2's biases and
//! per-block windows, Qwen3's q/k head norms and head_dim, Llama 3.2's tied head and llama3 RoPE)
//! against what `transformers` computed for the same weights (tests/data/tiny/*, made by
//! scripts/golden/make_tiny_families.py; FAMILIES.md there gives versions and what each model
//! exercises), and the pipeline on each: Wanda 2:4, SPP, merge with every zero kept, the CLI.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{max_diff, s, spp};
use spp::adapter::{self, AdapterSpec, Method as AdapterMethod};
use spp::model::llama::{Llama, PackedRow, Packing};
use spp::model::{load_model, DTypeChoice, KvCache};
use spp::prune::{prune_model, PruneMethod, PruneOptions};
use std::collections::HashMap;
use std::path::PathBuf;

const FAMILIES: [&str; 4] = [
    "mistral-window",
    "qwen2-tied",
    "qwen3-headdim",
    "llama32-tied",
];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny")
        .join(name)
}

fn model(name: &str, dev: &Device) -> Llama {
    load_model(&dir(name), DTypeChoice::F32, dev).unwrap().model
}

fn golden(name: &str, dev: &Device) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir(name).join("golden.safetensors"), dev).unwrap()
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn configs_name_their_family_and_differences() {
    let want = [
        (
            "mistral-window",
            "mistral",
            [Some(8), Some(8)],
            (false, false),
            false,
        ),
        ("qwen2-tied", "qwen2", [None, Some(8)], (true, false), false),
        ("qwen3-headdim", "qwen3", [None, None], (false, false), true),
        ("llama32-tied", "llama", [None, None], (false, false), false),
    ];
    for (name, family, windows, biases, qk_norm) in want {
        let cfg = spp::model::LlamaConfig::load(&dir(name).join("config.json")).unwrap();
        assert_eq!(cfg.family().unwrap().model_type(), family, "{name}");
        assert_eq!(
            [cfg.sliding_window(0), cfg.sliding_window(1)],
            windows,
            "{name}"
        );
        assert_eq!(cfg.attention_biases(), biases, "{name}");
        assert_eq!(cfg.qk_norm(), qk_norm, "{name}");
    }
}

#[test]
fn logits_match_transformers_fused_and_reference() {
    for dev in common::devices() {
        for name in FAMILIES {
            let g = golden(name, &dev);
            let mut m = model(name, &dev);
            for reference in [false, true] {
                m.set_reference_attention(reference);
                let d = max_diff(&m.forward(&g["input_ids"]).unwrap(), &g["logits"]);
                assert!(
                    d <= 1e-4,
                    "{name} (reference {reference}): logits differ by {d}"
                );
            }
        }
    }
}

#[test]
fn kv_cache_and_greedy_continuation_match_transformers() {
    for dev in common::devices() {
        for name in FAMILIES {
            let g = golden(name, &dev);
            let m = model(name, &dev);
            let ids = g["input_ids"].narrow(0, 0, 1).unwrap();
            let mut cache = KvCache::new(m.layers.len());
            let mut got = vec![m
                .forward_cached(&ids.narrow(1, 0, 17).unwrap(), &mut cache)
                .unwrap()];
            for t in 17..40 {
                got.push(
                    m.forward_cached(&ids.narrow(1, t, 1).unwrap(), &mut cache)
                        .unwrap(),
                );
            }
            let d = max_diff(&Tensor::cat(&got, 1).unwrap(), &g["logits_incremental"]);
            assert!(d <= 1e-4, "{name}: KV-cached logits differ by {d}");

            let mut cache = KvCache::new(m.layers.len());
            let mut next = ids.narrow(1, 0, 17).unwrap();
            let mut greedy = Vec::new();
            for _ in 0..ids_of(&g["greedy"]).len() {
                let logits = m.forward_step(&next, &mut cache).unwrap();
                let id = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0];
                greedy.push(id);
                next = Tensor::new(&[[id]], &dev).unwrap();
            }
            assert_eq!(greedy, ids_of(&g["greedy"]), "{name}: greedy continuation");
        }
    }
}

#[test]
fn perplexity_window_matches_transformers() {
    for name in FAMILIES {
        let g = golden(name, &Device::Cpu);
        let m = model(name, &Device::Cpu);
        let want: Vec<Vec<f32>> = g["nll"].to_vec2().unwrap();
        for (row, want) in want.iter().enumerate() {
            let ids = g["input_ids"].narrow(0, row, 1).unwrap();
            let hidden = m.hidden_states(&ids, None).unwrap().squeeze(0).unwrap();
            let targets = ids.squeeze(0).unwrap().narrow(0, 1, 39).unwrap();
            let nll: Vec<f32> = m
                .token_nll(&hidden.narrow(0, 0, 39).unwrap(), &targets)
                .unwrap()
                .to_vec1()
                .unwrap();
            let ppl = |v: &[f32]| (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64).exp();
            let (got, want) = (ppl(&nll), ppl(want));
            assert!(
                ((got - want) / want).abs() <= 1e-5,
                "{name} row {row}: perplexity {got} vs transformers {want}"
            );
        }
    }
}

/// Packed rows as zero-shot evaluation builds them: a context, then a continuation that sees
/// the context as a shared prefix. Under a sliding window the continuation must see exactly
/// what it would in one plain sequence.
#[test]
fn packed_shared_context_respects_the_window() {
    for name in ["mistral-window", "qwen2-tied"] {
        let m = model(name, &Device::Cpu);
        let ids = common::ids(30, 256, 5);
        let (ctx, cont) = (&ids[..14], &ids[14..]);
        let mut rows: Vec<PackedRow> = (0..14)
            .map(|i| PackedRow {
                position: i,
                shared: (0, 0),
                own: 0,
            })
            .collect();
        rows.extend((0..cont.len() as u32).map(|j| PackedRow {
            position: 14 + j,
            shared: (0, 14),
            own: 14,
        }));
        let packing = Packing::new(rows, &Device::Cpu).unwrap();
        let packed_ids = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let plain = Tensor::new([ctx, cont].concat().as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = m.hidden_states(&plain, None).unwrap();
        for reference in [false, true] {
            let mut m = m.clone();
            m.set_reference_attention(reference);
            let got = m.hidden_states_packed(&packed_ids, &packing).unwrap();
            let d = max_diff(&got, &want);
            assert!(
                d <= 1e-5,
                "{name} (reference {reference}): packed vs plain {d}"
            );
        }
    }
}

fn spec() -> AdapterSpec {
    AdapterSpec {
        method: AdapterMethod::Spp,
        targets: ["q", "k", "v", "o", "gate", "up", "down"]
            .map(String::from)
            .to_vec(),
        r: 4,
        scale: 2.0,
        dropout: 0.0,
    }
}

/// Gradients through the fused attention kernel (windowed rows, q/k norms) equal those of the
/// composed reference, on packed training rows.
#[test]
fn adapter_gradients_equal_the_reference_path() {
    for name in FAMILIES {
        let mut m = model(name, &Device::Cpu);
        adapter::attach(&mut m, &spec(), 7).unwrap();
        for (i, (n, v)) in adapter::trainable(&m).into_iter().enumerate() {
            if n.ends_with("spp_b.weight") {
                v.set(&common::randn(50 + i as u64, v.dims(), 0.0, 0.3))
                    .unwrap();
            }
        }
        let rows: Vec<PackedRow> = (0..36u32)
            .map(|i| {
                let own = if i < 20 { 0 } else { 20 };
                PackedRow {
                    position: i - own,
                    shared: (0, 0),
                    own,
                }
            })
            .collect();
        let packing = Packing::new(rows, &Device::Cpu).unwrap();
        let ids = Tensor::new(common::ids(36, 256, 11).as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let probe = common::randn(3, &[1, 36, 64], 0.0, 1.0);
        let grads = |m: &Llama| {
            let loss = (m.hidden_states_packed(&ids, &packing).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            adapter::trainable(m)
                .into_iter()
                .map(|(_, v)| g.get(v.as_tensor()).unwrap().clone())
                .collect::<Vec<_>>()
        };
        let fused = grads(&m);
        m.set_reference_attention(true);
        let reference = grads(&m);
        for (a, b) in fused.iter().zip(&reference) {
            let d = max_diff(a, b);
            let scale = common::max_abs(b).max(1e-3);
            assert!(
                d <= 1e-4 * scale.max(1.0),
                "{name}: gradient differs by {d} (scale {scale})"
            );
        }
    }
}

/// Wanda 2:4 with calibration, SPP adapters made active, the merge: every zero kept, the 2:4
/// pattern valid, the merged model computing what the adapted one did, biases and q/k norms
/// untouched throughout.
#[test]
fn wanda_2_4_spp_merge_round_trip_keeps_every_zero() {
    for name in FAMILIES {
        let mut m = model(name, &Device::Cpu);
        let frozen = |m: &Llama| -> Vec<Tensor> {
            m.layers
                .iter()
                .flat_map(|b| {
                    let a = &b.self_attn;
                    b.linears()
                        .into_iter()
                        .filter_map(|(_, l)| l.bias.clone())
                        .chain(
                            [&a.q_norm, &a.k_norm]
                                .into_iter()
                                .flatten()
                                .map(|n| n.weight.clone()),
                        )
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let before = frozen(&m);
        let calib: Vec<Vec<u32>> = (0..4).map(|i| common::ids(32, 256, 100 + i)).collect();
        let opts = PruneOptions {
            method: PruneMethod::Wanda,
            sparsity: "2:4".parse().unwrap(),
            targets: spp::prune::parse_targets("all").unwrap(),
            true_sequential: true,
            blocksize: 128,
            percdamp: 0.01,
        };
        prune_model(&mut m, &calib, &opts, &mut |_| {}).unwrap();
        let mask = common::zero_masks(&m);
        adapter::attach(&mut m, &spec(), 3).unwrap();
        for (i, (n, v)) in adapter::trainable(&m).into_iter().enumerate() {
            if n.ends_with("spp_b.weight") {
                v.set(&common::randn(200 + i as u64, v.dims(), 0.0, 0.3))
                    .unwrap();
            }
        }
        let ids = Tensor::new(common::ids(24, 256, 9).as_slice(), &Device::Cpu)
            .unwrap()
            .reshape((2, 12))
            .unwrap();
        let adapted = m.forward(&ids).unwrap();
        let merged = adapter::merge(&mut m).unwrap();
        assert!(
            merged.iter().all(|l| l.zeros_kept),
            "{name}: a zero was lost"
        );
        assert_eq!(
            mask,
            common::zero_masks(&m),
            "{name}: the merged mask must be bit-identical"
        );
        assert!(m.layers.iter().all(|b| b
            .linears()
            .iter()
            .all(|(_, l)| l.satisfies_n_m(2, 4).unwrap())));
        let d = max_diff(&adapted, &m.forward(&ids).unwrap());
        assert!(d <= 1e-4, "{name}: merged vs adapted {d}");
        for (a, b) in before.iter().zip(frozen(&m)) {
            assert_eq!(max_diff(a, &b), 0.0, "{name}: a bias or head norm changed");
        }
    }
}

/// The command line on each family: prune (Wanda 2:4 on text), train SPP, merge, perplexity,
/// generation, inspect; the written checkpoints keep the family's tensors and config.
#[test]
fn cli_pipeline_runs_on_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "The quick brown fox jumps over the lazy dog. 12 + 30 = 42!\n".repeat(40);
    let calib = tmp.path().join("calib.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| serde_json::json!({ "text": format!("{i}: {text}") }).to_string())
        .collect();
    std::fs::write(&calib, lines.join("\n")).unwrap();
    let wiki = tmp.path().join("wiki.raw");
    std::fs::write(&wiki, &text).unwrap();
    let records: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"instruction": format!("Count to {i}."), "input": "", "output": "1 2 3 ".repeat(i + 1)}))
        .collect();
    let data = tmp.path().join("alpaca.json");
    std::fs::write(&data, serde_json::to_string(&records).unwrap()).unwrap();
    let ok = |args: &[&str]| {
        let o = spp(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    for name in FAMILIES {
        let out = tmp.path().join(name);
        let (pruned, adapter, merged) =
            (out.join("pruned"), out.join("adapter"), out.join("merged"));
        let model = s(&dir(name));
        ok(&[
            "prune",
            "--model",
            &model,
            "--method",
            "wanda",
            "--sparsity",
            "2:4",
            "--calib",
            &s(&calib),
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            &s(&pruned),
        ]);
        // SPP, and LoRA with the pruning mask: each trained and merged, every zero kept.
        let (lora, lora_merged) = (out.join("lora"), out.join("lora-merged"));
        for (method, adapter, merged) in [
            ("spp", &adapter, &merged),
            ("lora-mask", &lora, &lora_merged),
        ] {
            ok(&[
                "train",
                "--model",
                &s(&pruned),
                "--data",
                &s(&data),
                "--out",
                &s(adapter),
                "--method",
                method,
                "--r",
                "4",
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--micro-batch-size",
                "2",
                "--cutoff",
                "48",
                "--val-size",
                "0",
            ]);
            ok(&[
                "merge",
                "--model",
                &s(&pruned),
                "--adapter",
                &s(adapter),
                "--out",
                &s(merged),
            ]);
        }
        let o = ok(&["inspect", "--model", &s(&lora_merged), "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            r["all_linears_2_4"], true,
            "{name}: LoRA + mask merge lost 2:4"
        );
        let o = ok(&["inspect", "--model", &s(&merged), "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let family = spp::model::LlamaConfig::load(&dir(name).join("config.json"))
            .unwrap()
            .family()
            .unwrap();
        assert_eq!(r["family"], family.model_type(), "{name}");
        assert_eq!(r["all_linears_2_4"], true, "{name}: merged model lost 2:4");
        let cfg = spp::model::LlamaConfig::load(&merged.join("config.json")).unwrap();
        assert_eq!(cfg.family().unwrap(), family, "{name}: written config");
        assert_eq!(
            (cfg.sliding_window(1), cfg.qk_norm(), cfg.attention_biases()),
            {
                let c = spp::model::LlamaConfig::load(&dir(name).join("config.json")).unwrap();
                (c.sliding_window(1), c.qk_norm(), c.attention_biases())
            },
            "{name}: written config"
        );
        ok(&[
            "eval",
            "ppl",
            "--model",
            &s(&merged),
            "--text",
            &s(&wiki),
            "--seqlen",
            "64",
            "--max-windows",
            "2",
        ]);
        let o = ok(&[
            "generate",
            "--model",
            &s(&merged),
            "--prompt",
            "The quick",
            "--max-new-tokens",
            "5",
        ]);
        assert!(!o.stdout.is_empty(), "{name}: generate printed nothing");
    }
}

/// `spp run` on a family with windows and biases: Wanda and SparseGPT 2:4, SPP, merge, perplexity
/// and zero-shot tasks, the report.
#[test]
fn a_recipe_runs_on_qwen2() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("recipe.toml");
    let text = format!(
        r#"name = "qwen2-tiny"
model = "{model}"

[prune]
method = ["wanda", "sparsegpt"]
sparsity = "2:4"
calib = "{calib}"
nsamples = 2
seqlen = 32

[train]
method = "spp"
data = "{alpaca}"
max_steps = 2
batch_size = 2
micro_batch_size = 2
cutoff = 48
val_size = 0
r = 4

[eval]
ppl_text = "{wiki}"
seqlen = 32
max_windows = 2
tasks = ["rte", "arc_easy"]
limit = 2
data_dir = "{eval}"
"#,
        model = s(&dir("qwen2-tied")),
        calib = common::shared("c4/c4_sample.jsonl"),
        alpaca = common::shared("alpaca/alpaca_gpt4_en_demo.json"),
        wiki = common::shared("wikitext2/wiki.test.raw"),
        eval = common::shared("eval"),
    );
    std::fs::write(&recipe, text).unwrap();
    let out = tmp.path().join("run");
    let o = spp(&["run", &s(&recipe), "--out", &s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "wanda 2:4 + spp",
        "sparsegpt 2:4 + spp",
        "every zero kept",
        "11 of 11 done",
    ] {
        assert!(report.contains(needle), "report lacks {needle}:\n{report}");
    }
}

#[test]
fn written_configs_name_the_family_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(dir("qwen3-headdim").join("config.json")).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        edit(v.as_object_mut().unwrap());
        let p = tmp.path().join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        spp::model::LlamaConfig::load(&p)
    };
    // Either key alone names the family, and the writer fills in the other.
    for (drop, family) in [("architectures", "qwen3"), ("model_type", "qwen3")] {
        let cfg = with(&|m| {
            m.remove(drop);
        })
        .unwrap();
        let out = tmp.path().join(format!("w-{drop}"));
        std::fs::create_dir_all(&out).unwrap();
        spp::model::checkpoint::write_config(&out, &cfg, DType::F32).unwrap();
        let back = spp::model::LlamaConfig::load(&out.join("config.json")).unwrap();
        assert_eq!(back.model_type.as_deref(), Some(family));
        assert_eq!(back.architectures, ["Qwen3ForCausalLM"]);
    }
    let err = with(&|m| {
        m.insert("model_type".into(), "gemma2".into());
        m.remove("architectures");
    })
    .unwrap_err()
    .to_string();
    for needle in ["gemma2", "\"llama\", \"mistral\", \"qwen2\", \"qwen3\""] {
        assert!(err.contains(needle), "{err}");
    }
    let err = with(&|m| {
        m.insert("model_type".into(), "qwen2".into());
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("different families"), "{err}");
}

/// What `spp generate` reports as the weights one decode step reads: every weight once (a tied
/// head is the embedding table) plus one embedding row.
#[test]
fn decode_reads_every_weight_once_and_one_embedding_row() {
    for name in ["qwen2-tied", "qwen3-headdim"] {
        let m = model(name, &Device::Cpu);
        let cfg = &m.cfg;
        let total: usize = spp::model::stream::layout(cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let embedding = cfg.vocab_size * cfg.hidden_size;
        let read = if cfg.tie_word_embeddings {
            total
        } else {
            total - embedding
        };
        assert_eq!(
            m.decode_weight_bytes(),
            4 * (read + cfg.hidden_size) as u64,
            "{name}"
        );
    }
}
