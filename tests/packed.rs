//! Packed models (`spp pack` / `spp unpack`): a packed model computes what the dense one does
//! (through the packed products for a few rows and the unpacked weight for many), unpacks to the
//! same checkpoint, is smaller, and bad packed checkpoints are refused with a clear message.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{s, spp};
use spp::job::{pack, LayoutChoice, Log, PackArgs, ValuesChoice};
use spp::model::checkpoint::{load_model, save_model, SaveOptions};
use spp::model::{DTypeChoice, KvCache, Llama};
use std::path::{Path, PathBuf};

struct Quiet;
impl Log for Quiet {
    fn line(&mut self, _: &str) {}
}

#[derive(Clone, Copy)]
enum Pattern {
    TwoFour,
    Half,
}

/// The tiny model (biases on) with every linear pruned to `pattern` by magnitude, saved in `dir`.
fn pruned_tiny(dir: &Path, pattern: Pattern, tied: bool) -> PathBuf {
    let mut m = common::tiny_model(tied, true, &Device::Cpu);
    for b in &mut m.layers {
        for (_, lin) in b.linears_mut() {
            let (rows, cols) = (lin.out_features(), lin.in_features());
            let mut w: Vec<f32> = lin.weight.flatten_all().unwrap().to_vec1().unwrap();
            let groups: Vec<&mut [f32]> = match pattern {
                Pattern::TwoFour => w.chunks_mut(4).collect(),
                Pattern::Half => w.chunks_mut(cols).collect(),
            };
            for g in groups {
                let mut order: Vec<usize> = (0..g.len()).collect();
                order.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
                for &i in &order[..g.len() / 2] {
                    g[i] = 0.0;
                }
            }
            lin.set_weight(Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let out = dir.join(format!(
        "{}-{}",
        match pattern {
            Pattern::TwoFour => "dense-2-4",
            Pattern::Half => "dense-half",
        },
        if tied { "tied" } else { "untied" }
    ));
    let _ = std::fs::remove_dir_all(&out);
    save_model(&m, &out, &SaveOptions::default()).unwrap();
    out
}

fn packed(src: &Path, out: &Path, layout: LayoutChoice, values: ValuesChoice) -> PathBuf {
    packed_head(src, out, layout, values, false)
}

fn packed_head(
    src: &Path,
    out: &Path,
    layout: LayoutChoice,
    values: ValuesChoice,
    int8_head: bool,
) -> PathBuf {
    let mut a = PackArgs::new(src, out);
    a.layout = layout;
    a.values = values;
    a.int8_head = int8_head;
    pack(&a, &mut Quiet).unwrap();
    out.to_path_buf()
}

fn load(dir: &Path) -> Llama {
    load_model(dir, DTypeChoice::Auto, &Device::Cpu)
        .unwrap()
        .model
}

/// Logits of a 40-token forward (the unpacked path) and of ten cached single-token steps (the
/// packed products), flattened.
fn logits(m: &Llama) -> (Vec<f32>, Vec<f32>) {
    let ids = common::ids(40, m.cfg.vocab_size, 7);
    let full = m
        .forward(
            &Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap();
    let mut cache = KvCache::new(m.layers.len());
    let mut steps = Vec::new();
    for &id in &ids[..10] {
        let l = m
            .forward_step(
                &Tensor::new(&[id], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                &mut cache,
            )
            .unwrap();
        steps.extend(l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (full.flatten_all().unwrap().to_vec1().unwrap(), steps)
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn packed_models_compute_what_the_dense_ones_do() {
    let tmp = tempfile::tempdir().unwrap();
    for (pattern, layout, values, tol) in [
        (
            Pattern::TwoFour,
            LayoutChoice::Auto,
            ValuesChoice::Auto,
            1e-5,
        ),
        (Pattern::Half, LayoutChoice::Auto, ValuesChoice::Auto, 1e-5),
        (
            Pattern::TwoFour,
            LayoutChoice::All(spp::cpu::SparseLayout::Bitmask),
            ValuesChoice::Auto,
            1e-5,
        ),
        (
            Pattern::TwoFour,
            LayoutChoice::Auto,
            ValuesChoice::All(spp::cpu::ValueKind::Bf16),
            2e-2,
        ),
        (
            Pattern::Half,
            LayoutChoice::Auto,
            ValuesChoice::All(spp::cpu::ValueKind::Int8),
            5e-2,
        ),
    ] {
        let dense_dir = pruned_tiny(tmp.path(), pattern, false);
        let out = tmp.path().join("packed");
        let _ = std::fs::remove_dir_all(&out);
        let dir = packed(&dense_dir, &out, layout, values);
        let (dense, pk) = (load(&dense_dir), load(&dir));
        assert!(
            pk.layers[0].self_attn.q_proj.packed.is_some(),
            "the loaded linears are packed"
        );
        let ((df, ds), (pf, ps)) = (logits(&dense), logits(&pk));
        let what = format!("{:?} {:?}", layout, values);
        assert!(
            max_rel(&pf, &df) <= tol,
            "{what}: forward {}",
            max_rel(&pf, &df)
        );
        assert!(
            max_rel(&ps, &ds) <= tol,
            "{what}: cached steps {}",
            max_rel(&ps, &ds)
        );
        if matches!(values, ValuesChoice::Auto) {
            // What is written or hashed is the dense checkpoint.
            assert_eq!(
                spp::model::hash::weights_hash(&pk).unwrap(),
                spp::model::hash::weights_hash(&dense).unwrap()
            );
        }
        // The model's decode reads fewer bytes.
        assert!(pk.decode_weight_bytes() < dense.decode_weight_bytes());
    }
}

#[test]
fn pack_then_unpack_gives_the_checkpoint_back_and_is_smaller() {
    let tmp = tempfile::tempdir().unwrap();
    for pattern in [Pattern::TwoFour, Pattern::Half] {
        let dense = pruned_tiny(tmp.path(), pattern, false);
        let p = tmp.path().join("p");
        let back = tmp.path().join("back");
        for d in [&p, &back] {
            let _ = std::fs::remove_dir_all(d);
        }
        let o = spp(&["pack", "--model", &s(&dense), "--out", &s(&p), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ratio = r["linear_bytes"].as_f64().unwrap() / r["linear_bytes_dense"].as_f64().unwrap();
        assert_eq!(r["packed_linears"], 14);
        assert!(ratio <= 0.57, "{ratio}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap();
        let want = match pattern {
            Pattern::TwoFour => "2:4",
            Pattern::Half => "bitmask",
        };
        assert_eq!(
            cfg["sparsity"]["linears"]["model.layers.1.mlp.down_proj"]["layout"],
            want
        );
        assert_eq!(cfg["custom_key_kept_verbatim"]["nested"][2], 3);
        let o = spp(&["unpack", "--model", &s(&p), "--out", &s(&back)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (load(&dense), load(&back));
        for ((na, ta), (nb, tb)) in a
            .named_tensors()
            .unwrap()
            .iter()
            .zip(b.named_tensors().unwrap())
        {
            assert_eq!(na, &nb);
            let (va, vb): (Vec<f32>, Vec<f32>) = (
                ta.flatten_all().unwrap().to_vec1().unwrap(),
                tb.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            );
            assert!(
                va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{na}"
            );
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
        assert!(cfg.get("sparsity").is_none());
    }
}

fn fails_with(o: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn bad_packed_checkpoints_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let half = pruned_tiny(tmp.path(), Pattern::Half, false);
    // A layout the weights do not fit: nothing is written.
    let out = tmp.path().join("p24");
    fails_with(
        &spp(&[
            "pack",
            "--model",
            &s(&half),
            "--out",
            &s(&out),
            "--layout",
            "2:4",
        ]),
        &[
            "model.layers.0.self_attn.q_proj does not fit 2:4",
            "--layout auto",
        ],
    );
    assert!(!out.exists());
    fails_with(
        &spp(&[
            "pack",
            "--model",
            &s(&half),
            "--out",
            &s(&out),
            "--values",
            "int4",
        ]),
        &["int4"],
    );
    fails_with(
        &spp(&["unpack", "--model", &s(&half), "--out", &s(&out)]),
        &["is not packed"],
    );

    let good = packed(
        &half,
        &tmp.path().join("p"),
        LayoutChoice::Auto,
        ValuesChoice::Auto,
    );
    let cfg_path = good.join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let variant = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let f = "model.safetensors";
        std::fs::copy(good.join(f), dir.join(f)).unwrap();
        let mut c = cfg.clone();
        edit(&mut c);
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        dir
    };
    let run = |dir: &Path| spp(&["inspect", "--model", &s(dir)]);
    fails_with(
        &run(&variant("unknown-linear", &|c| {
            c["sparsity"]["linears"]["model.layers.9.mlp.up_proj"] =
                serde_json::json!({"layout": "2:4", "values": "f32"});
        })),
        &[
            "model.layers.9.mlp.up_proj",
            "not a linear of this model",
            "spp pack",
        ],
    );
    fails_with(
        &run(&variant("bad-version", &|c| {
            c["sparsity"]["version"] = 7.into()
        })),
        &["version"],
    );
    fails_with(
        &run(&variant("wrong-values", &|c| {
            c["sparsity"]["linears"]["model.layers.0.mlp.up_proj"]["values"] = "bf16".into();
        })),
        &["model.layers.0.mlp.up_proj.weight_values", "bf16"],
    );
    // Listed as 2:4 but stored as a bitmask: the index does not fit.
    fails_with(
        &run(&variant("wrong-layout", &|c| {
            c["sparsity"]["linears"]["model.layers.0.mlp.up_proj"]["layout"] = "2:4".into();
        })),
        &["packed linear model.layers.0.mlp.up_proj", "corrupt"],
    );
    // A packed linear missing from the config is read as dense: its weight is missing.
    fails_with(
        &run(&variant("unlisted", &|c| {
            c["sparsity"]["linears"]
                .as_object_mut()
                .unwrap()
                .remove("model.layers.1.self_attn.o_proj");
        })),
        &["model.layers.1.self_attn.o_proj.weight", "missing"],
    );
}

/// The real model, magnitude 2:4 (no calibration, seconds): packed perplexity on one window
/// and a greedy continuation equal the dense model's.
#[test]
fn smollm2_packed_equals_dense() {
    let Some(model) = common::smollm2_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dense = tmp.path().join("m24");
    let o = spp(&[
        "prune",
        "--model",
        &s(&model),
        "--method",
        "magnitude",
        "--sparsity",
        "2:4",
        "--out",
        &s(&dense),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = tmp.path().join("p");
    let o = spp(&["pack", "--model", &s(&dense), "--out", &s(&p)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "The history of the city begins with a small settlement by the river. ".repeat(30),
    )
    .unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "The history of the city\n\nOnce upon a time\nThe capital of France is\n",
    )
    .unwrap();
    let run = |m: &Path| -> (f64, Vec<serde_json::Value>) {
        let o = spp(&[
            "eval",
            "ppl",
            "--model",
            &s(m),
            "--text",
            &s(&text),
            "--seqlen",
            "256",
            "--max-windows",
            "1",
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let g = spp(&[
            "generate",
            "--model",
            &s(m),
            "--prompts",
            &s(&prompts),
            "-n",
            "24",
            "--json",
        ]);
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
        let tokens: Vec<serde_json::Value> = String::from_utf8_lossy(&g.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens"].clone())
            .collect();
        assert_eq!(tokens.len(), 3, "one line per prompt");
        assert_eq!(tokens[0].as_array().unwrap().len(), 24);
        (r["ppl"].as_f64().unwrap(), tokens)
    };
    let ((pd, gd), (pp, gp)) = (run(&dense), run(&p));
    assert!(((pp - pd) / pd).abs() <= 1e-5, "ppl dense {pd} packed {pp}");
    assert_eq!(gd, gp);
}

/// `spp prune --pack` leaves a packed model with its record, which the other jobs read.
#[test]
fn prune_with_pack_writes_a_packed_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dense = common::converted_tiny(tmp.path());
    let out = tmp.path().join("pruned");
    let o = spp(&[
        "prune",
        "--model",
        &s(&dense),
        "--method",
        "magnitude",
        "--sparsity",
        "2:4",
        "--out",
        &s(&out),
        "--pack",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["sparsity"]["linears"].as_object().unwrap().len(), 7);
    for f in ["prune.json", "pack.json", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let o = spp(&["inspect", "--model", &s(&out), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["all_linears_2_4"], true);
    assert_eq!(r["linears"][0]["packed"], "2:4 f32");
}

/// `--int8-head`: the output head in 8 bits, untied and tied (a copy beside the input embedding):
/// logits within int8 rounding, the head's bytes a quarter, and unpacking gives the checkpoint
/// back (a tied model's copy dropped).
#[test]
fn int8_heads_tied_and_untied() {
    let tmp = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let dense_dir = pruned_tiny(tmp.path(), Pattern::TwoFour, tied);
        let out = tmp.path().join(format!("head-{tied}"));
        let dir = packed_head(
            &dense_dir,
            &out,
            LayoutChoice::Auto,
            ValuesChoice::Auto,
            true,
        );
        let (dense, pk) = (load(&dense_dir), load(&dir));
        assert!(pk.lm_head.as_ref().unwrap().packed.is_some());
        let ((df, ds), (pf, ps)) = (logits(&dense), logits(&pk));
        assert!(
            max_rel(&pf, &df) <= 2e-2,
            "tied {tied}: {}",
            max_rel(&pf, &df)
        );
        assert!(
            max_rel(&ps, &ds) <= 2e-2,
            "tied {tied}: {}",
            max_rel(&ps, &ds)
        );
        let head = |m: &Llama| m.decode_weight_bytes();
        assert!(head(&pk) < head(&dense));
        // The blocks are f32 still: the hash over what would be written is the dense model's.
        assert_eq!(
            spp::model::hash::weights_hash(&pk).unwrap()
                == spp::model::hash::weights_hash(&dense).unwrap(),
            tied,
            "a tied model writes its embedding, not the 8-bit head; an untied one writes the head"
        );
        let back = tmp.path().join(format!("back-{tied}"));
        let o = spp(&["unpack", "--model", &s(&dir), "--out", &s(&back)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            load(&back).named_tensors().unwrap().len(),
            dense.named_tensors().unwrap().len()
        );
    }
}
