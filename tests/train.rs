//! Training: data protocol, schedule, the loop on a tiny model (overfitting one batch, frozen
//! base weights, bit-identical resume, NaN handling).

mod common;

use candle_core::{Device, Tensor};
use spp::adapter::{self, Method};
use spp::train::data::{self, Dataset, Example, Kind};
use spp::train::{lr_at, Schedule, TrainOptions, Trainer};
use std::path::Path;

#[test]
fn alpaca_prompt_is_the_papers_template() {
    assert_eq!(
        data::alpaca_prompt("Add.", "2+2"),
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2+2\n\n### Response:\n"
    );
    assert_eq!(
        data::alpaca_prompt("Say hi.", ""),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    );
}

#[test]
fn order_is_a_seeded_permutation_and_validation_is_disjoint() {
    let p = data::permutation(50, 42);
    let mut sorted = p.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(p, data::permutation(50, 42));
    assert_ne!(p, data::permutation(50, 43));
    // splitmix64 from state 0 (the published first output of the generator).
    assert_eq!(adapter::splitmix64(&mut 0u64), 0xE220_A839_7B1D_CDAF);
    let (train, val) = data::split(50, 5, 42);
    assert_eq!(val, p[..5].to_vec());
    assert_eq!(train.len(), 45);
    assert!(train.windows(2).all(|w| w[0] < w[1]) && train.iter().all(|t| !val.contains(t)));
    // The stream visits every training example once per epoch.
    let mut s = data::Stream::new(train.clone(), 42);
    let mut first: Vec<usize> = (0..45).map(|i| s.get(i)).collect();
    let second: Vec<usize> = (45..90).map(|i| s.get(i)).collect();
    assert_ne!(first, second);
    first.sort();
    assert_eq!(first, train);
}

#[test]
fn batches_pack_examples_into_one_row_and_targets_stay_in_their_example() {
    let a = Example {
        ids: vec![5, 6, 7, 8],
        first_target: 0,
    };
    let b = Example {
        ids: vec![9, 10],
        first_target: 0,
    };
    let c = Example {
        ids: vec![1, 2, 3, 4],
        first_target: 3,
    };
    let bt = data::batch(&[&a, &b, &c], &Device::Cpu).unwrap();
    // One row, no padding: a at 0..4, b at 4..6, c at 6..10.
    assert_eq!(
        bt.ids.to_vec2::<u32>().unwrap(),
        vec![vec![5, 6, 7, 8, 9, 10, 1, 2, 3, 4]]
    );
    // Row r predicts token r+1 of its example: a → 6,7,8; b → 10; c → only its token 3 (4).
    assert_eq!(bt.positions.to_vec1::<u32>().unwrap(), vec![0, 1, 2, 4, 8]);
    assert_eq!(bt.targets.to_vec1::<u32>().unwrap(), vec![6, 7, 8, 10, 4]);
    assert_eq!(bt.tokens, 10);
}

#[test]
fn a_packed_batch_scores_each_example_as_if_alone() {
    // The mean loss over a packed batch equals the target-weighted mean of each example's loss
    // computed on its own: no token sees another example (fused and reference attention).
    for dev in common::devices() {
        packed_batch_body(&dev);
    }
}

fn packed_batch_body(dev: &Device) {
    let mut model = common::tiny_model(false, true, dev);
    let examples: Vec<Example> = [(37, 0), (20, 5), (52, 9)]
        .iter()
        .enumerate()
        .map(|(i, &(len, first_target))| Example {
            ids: common::ids(len, model.cfg.vocab_size, 11 + i as u64),
            first_target,
        })
        .collect();
    for reference in [false, true] {
        model.set_reference_attention(reference);
        let loss = |exs: &[&Example]| {
            let b = data::batch(exs, dev).unwrap();
            let l = spp::train::micro_loss(&model, &b).unwrap();
            (l.to_scalar::<f32>().unwrap() as f64, b.n_targets as f64)
        };
        let (packed, n) = loss(&examples.iter().collect::<Vec<_>>());
        let alone: f64 = examples
            .iter()
            .map(|e| {
                let (l, k) = loss(&[e]);
                l * k
            })
            .sum::<f64>()
            / n;
        assert!(
            (packed - alone).abs() < 1e-5,
            "reference {reference}: packed {packed} vs alone {alone}"
        );
    }
}

#[test]
fn schedule_warms_up_from_zero_then_decays() {
    let lr = |s| lr_at(s, 100, 3, 4e-3, Schedule::Linear);
    assert_eq!(lr(0), 0.0);
    assert!((lr(1) - 4e-3 / 3.0).abs() < 1e-12);
    assert!((lr(3) - 4e-3).abs() < 1e-12);
    assert!((lr(50) - 4e-3 * 50.0 / 97.0).abs() < 1e-12);
    assert_eq!(lr(100), 0.0);
    let cos = |s| lr_at(s, 100, 0, 1.0, Schedule::Cosine);
    assert!(
        (cos(0) - 1.0).abs() < 1e-12 && (cos(50) - 0.5).abs() < 1e-12 && cos(100).abs() < 1e-12
    );
}

fn dataset(n: usize, len: usize) -> Dataset {
    let examples = (0..n)
        .map(|i| Example {
            ids: common::ids(len - i % 3, 96, i as u64 + 1),
            first_target: 0,
        })
        .collect();
    Dataset {
        kind: Kind::Text,
        examples,
        records: n,
        truncated: 0,
    }
}

fn opts(method: Method, steps: usize, lr: f64, batch: usize) -> TrainOptions {
    TrainOptions {
        method,
        targets: ["q", "k", "v", "o", "gate", "up", "down"]
            .map(String::from)
            .to_vec(),
        r: 4,
        scale: 2.0,
        dropout: 0.05,
        lr,
        warmup_ratio: 0.1,
        schedule: Schedule::Linear,
        weight_decay: 0.001,
        epochs: 1,
        max_steps: Some(steps),
        batch_size: batch,
        micro_batch_size: 2,
        cutoff: 32,
        train_on_inputs: true,
        val_size: 0,
        eval_every: 0,
        save_every: 0,
        max_grad_norm: None,
        seed: 7,
        grad_checkpoint: false,
    }
}

fn run(
    model: &mut spp::model::Llama,
    ds: &Dataset,
    o: &TrainOptions,
    out: &Path,
    resume: bool,
    stop: Option<usize>,
) -> spp::Result<spp::train::TrainReport> {
    Trainer {
        weights: spp::train::Weights::Resident,
        model,
        data: ds,
        opts: o,
        out: out.to_path_buf(),
        base_path: out.to_path_buf(),
        resume,
        stop_after: stop,
    }
    .run(&mut ())
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

#[test]
fn a_tiny_model_overfits_one_batch_and_base_weights_stay_frozen() {
    for dev in common::devices() {
        overfit_body(&dev);
    }
}

fn overfit_body(dev: &Device) {
    for method in [Method::Spp, Method::Lora] {
        let tmp = tempfile::tempdir().unwrap();
        let mut model = common::tiny_model(false, false, dev);
        let before: Vec<(String, Tensor)> = model.named_tensors().unwrap();
        let ds = dataset(4, 16);
        let report = run(
            &mut model,
            &ds,
            &opts(method, 40, 3e-2, 4),
            tmp.path(),
            false,
            None,
        )
        .unwrap();
        let l = losses(tmp.path());
        assert_eq!(l.len(), 40);
        assert!(l[39] < 0.5 * l[0], "{method}: loss {} -> {}", l[0], l[39]);
        assert_eq!(report.steps, 40);
        for ((name, a), (_, b)) in before.iter().zip(model.named_tensors().unwrap()) {
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name} changed"
            );
        }
        for f in [
            "adapter_config.json",
            "adapter_model.safetensors",
            "metrics.jsonl",
            "loss.svg",
        ] {
            assert!(tmp.path().join(f).exists(), "{f}");
        }
        assert!(std::fs::read_to_string(tmp.path().join("loss.svg"))
            .unwrap()
            .contains("<polyline"));
    }
}

#[test]
fn resume_is_bit_identical() {
    let ds = dataset(10, 12);
    let mut o = opts(Method::Spp, 6, 1e-2, 4);
    o.val_size = 2;
    o.eval_every = 2;
    let base = common::tiny_model(false, false, &Device::Cpu);
    let straight = tempfile::tempdir().unwrap();
    run(&mut base.clone(), &ds, &o, straight.path(), false, None).unwrap();
    let split = tempfile::tempdir().unwrap();
    run(&mut base.clone(), &ds, &o, split.path(), false, Some(3)).unwrap();
    let e = run(&mut base.clone(), &ds, &o, split.path(), false, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let mut other = o.clone();
    other.lr = 2e-2;
    let e = run(&mut base.clone(), &ds, &other, split.path(), true, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another configuration") && e.contains("lr"),
        "{e}"
    );
    let r = run(&mut base.clone(), &ds, &o, split.path(), true, None).unwrap();
    assert_eq!(r.resumed_from, Some(3));
    assert_eq!(losses(straight.path()), losses(split.path()));
    for f in ["adapter_model.safetensors", "checkpoint/model.safetensors"] {
        assert_eq!(
            std::fs::read(straight.path().join(f)).unwrap(),
            std::fs::read(split.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_nan_loss_stops_with_the_step_and_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = common::tiny_model(false, false, &Device::Cpu);
    let w = &mut model.layers[0].mlp.down_proj.weight;
    *w = (w.clone() * f64::NAN).unwrap();
    let e = run(
        &mut model,
        &dataset(4, 8),
        &opts(Method::Spp, 3, 1e-2, 2),
        tmp.path(),
        false,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("step 1") && e.contains("NaN") && e.contains("checkpoint"),
        "{e}"
    );
}

#[test]
fn gradient_checkpointing_gives_the_same_training() {
    let ds = dataset(8, 12);
    let base = common::tiny_model(false, false, &Device::Cpu);
    let adapters = |checkpoint: bool| {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts(Method::Spp, 3, 1e-2, 4);
        o.grad_checkpoint = checkpoint;
        run(&mut base.clone(), &ds, &o, tmp.path(), false, None).unwrap();
        (
            candle_core::safetensors::load(
                tmp.path().join("adapter_model.safetensors"),
                &Device::Cpu,
            )
            .unwrap(),
            losses(tmp.path()),
        )
    };
    let ((plain, lp), (ckpt, lc)) = (adapters(false), adapters(true));
    assert_eq!(lp, lc, "the forward is the same computation");
    assert_eq!(plain.len(), ckpt.len());
    for (name, t) in &plain {
        let d = common::max_diff(t, &ckpt[name]);
        assert!(d < 1e-5, "{name}: {d}");
    }
}

/// The range test sees what training sees: its first step (adapters as initialised, the same
/// examples and dropout seeds) has training's first loss exactly; its lr rises geometrically;
/// it writes its record and no adapter; and `--lr-from` trains with the suggestion.
#[test]
fn the_range_test_starts_where_training_starts_and_feeds_lr_from() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::converted_tiny(tmp.path());
    let common_args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            &common::s(&model),
            "--data",
            &common::shared("alpaca/alpaca_gpt4_en_demo.json"),
            "--out",
            &common::s(out),
            "--batch-size",
            "2",
            "--micro-batch-size",
            "1",
            "--cutoff",
            "48",
            "--val-size",
            "4",
            "--r",
            "4",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = common::spp(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (t, f, g) = (
        tmp.path().join("t"),
        tmp.path().join("f"),
        tmp.path().join("g"),
    );
    let mut a = common_args(&t);
    a.extend(["--max-steps", "1"].map(String::from));
    run(a);
    let mut a = common_args(&f);
    a.extend(
        [
            "--find-lr",
            "--find-lr-steps",
            "6",
            "--lr-min",
            "1e-4",
            "--lr-max",
            "1e-1",
        ]
        .map(String::from),
    );
    let printed = run(a);
    let metrics = std::fs::read_to_string(t.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("lr_find.json")).unwrap()).unwrap();
    let points = rec["report"]["points"].as_array().unwrap();
    assert_eq!(
        points[0]["loss"], first["loss"],
        "step 1: the same batch, dropout and adapters"
    );
    for (i, p) in points.iter().enumerate() {
        let want = 1e-4 * 1000f64.powf(i as f64 / 5.0);
        assert!((p["lr"].as_f64().unwrap() / want - 1.0).abs() < 1e-12);
    }
    let suggested = rec["report"]["suggested_lr"].as_f64().unwrap();
    assert!(printed.contains("suggested lr"), "{printed}");
    assert!(!f.join("adapter_model.safetensors").exists() && !f.join("checkpoint").exists());
    let mut a = common_args(&g);
    a.extend(["--max-steps", "1", "--lr-from"].map(String::from));
    a.push(common::s(&f.join("lr_find.json")));
    run(a);
    let train: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("train.json")).unwrap()).unwrap();
    assert_eq!(train["options"]["lr"].as_f64().unwrap(), suggested);
    assert!(train["lr_from"].as_str().unwrap().ends_with("lr_find.json"));
}
