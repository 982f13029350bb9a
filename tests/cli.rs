//! The binary end to end: the happy path on the tiny GGUF from ../shared/data, and bad inputs
//! to each command, each giving one clear error, a non-zero exit and no output.

mod common;

use common::{s, shared, spp};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Fails with a message containing every `needles`, exit code ≠ 0, nothing on stdout.
fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout should be empty: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn converted(tmp: &Path) -> PathBuf {
    let out = tmp.join("tiny");
    let o = spp(&[
        "convert",
        "gguf",
        &shared("models/llama-2-tiny-random.gguf"),
        "--out",
        &s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokenizer"], "llama");
    out
}

#[test]
fn convert_inspect_ppl_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let model = converted(tmp.path());
    let m = s(&model);

    let o = spp(&["inspect", "--model", &m, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["layers"], 1);
    assert_eq!(r["linears"].as_array().unwrap().len(), 7);
    assert_eq!(r["all_linears_2_4"], false);

    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let o = spp(&[
        "eval",
        "ppl",
        "--model",
        &m,
        "--text",
        &s(&text),
        "--seqlen",
        "64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["seqlen"], 64);
    assert_eq!(r["bos"], true, "the LLaMA tokenizer adds BOS");
    assert!(r["ppl"].as_f64().unwrap() > 1.0);
    let o = spp(&[
        "eval",
        "ppl",
        "--model",
        &m,
        "--text",
        &s(&text),
        "--seqlen",
        "64",
        "--max-windows",
        "2",
    ]);
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(
        line.starts_with("ppl ")
            && line.contains("windows 2 seqlen 64")
            && line.contains("tokens 128"),
        "{line}"
    );

    let args = [
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hello",
        "-n",
        "5",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ];
    let o = spp(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = spp(&args);
    assert_eq!(o.stdout, again.stdout, "same seed, same text");
    let o = spp(&[
        "generate", "--model", &m, "--prompt", "Hi", "--chat", "-n", "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_inputs_are_clear_errors_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = converted(tmp.path());
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "short text").unwrap();

    // Missing model directory / file.
    fails_with(
        &spp(&["inspect", "--model", &s(&tmp.path().join("nope"))]),
        &["nope", "does not exist"],
    );
    fails_with(
        &spp(&[
            "eval",
            "ppl",
            "--model",
            &s(&model),
            "--text",
            &s(&tmp.path().join("missing.txt")),
        ]),
        &["missing.txt"],
    );
    fails_with(
        &spp(&[
            "convert",
            "gguf",
            &s(&tmp.path().join("x.gguf")),
            "--out",
            &s(&tmp.path().join("o")),
        ]),
        &["x.gguf"],
    );

    // Text shorter than one window.
    fails_with(
        &spp(&[
            "eval",
            "ppl",
            "--model",
            &s(&model),
            "--text",
            &s(&text),
            "--seqlen",
            "64",
        ]),
        &["fewer than one window"],
    );

    // Truncated safetensors.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), broken.join(f)).unwrap();
    }
    let st = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(broken.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    fails_with(
        &spp(&["inspect", "--model", &s(&broken)]),
        &["broken", "truncated or corrupt"],
    );
    std::fs::write(broken.join("model.safetensors"), &st[..5]).unwrap();
    fails_with(
        &spp(&["inspect", "--model", &s(&broken)]),
        &["truncated or corrupt"],
    );

    // A config whose shapes disagree with the tensors.
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        wrong.join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 48.into();
    std::fs::write(wrong.join("config.json"), cfg.to_string()).unwrap();
    fails_with(
        &spp(&["inspect", "--model", &s(&wrong)]),
        &["mlp.gate_proj.weight", "[32, 8]", "[48, 8]"],
    );

    // Unsupported architecture; missing config.
    cfg["intermediate_size"] = 32.into();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(wrong.join("config.json"), cfg.to_string()).unwrap();
    fails_with(
        &spp(&["inspect", "--model", &s(&wrong)]),
        &["unsupported architecture", "GPT2LMHeadModel"],
    );
    std::fs::remove_file(wrong.join("config.json")).unwrap();
    fails_with(
        &spp(&["inspect", "--model", &s(&wrong)]),
        &["config.json is missing"],
    );

    // Corrupt GGUF: error, and no output directory.
    let gguf = std::fs::read(shared("models/llama-2-tiny-random.gguf")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &gguf[..gguf.len() / 3]).unwrap();
    let out = tmp.path().join("from-cut");
    fails_with(
        &spp(&["convert", "gguf", &s(&cut), "--out", &s(&out)]),
        &["cut.gguf"],
    );
    assert!(!out.exists());

    // Existing output needs --force.
    fails_with(
        &spp(&[
            "convert",
            "gguf",
            &shared("models/llama-2-tiny-random.gguf"),
            "--out",
            &s(&model),
        ]),
        &["already exists", "--force"],
    );

    // Bad flags.
    fails_with(
        &spp(&["inspect", "--model", &s(&model), "--device", "tpu"]),
        &["tpu"],
    );
    fails_with(
        &spp(&[
            "generate",
            "--model",
            &s(&model),
            "--prompt",
            "x",
            "--top-p",
            "1.5",
        ]),
        &["--top-p"],
    );

    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        left.iter().all(|n| !n.contains("partial")),
        "temporary output left behind: {left:?}"
    );
}

#[test]
fn prune_writes_a_model_and_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let model = converted(tmp.path());
    let calib = tmp.path().join("calib.jsonl");
    let docs: Vec<String> = (0..20).map(|i| format!("{{\"text\": \"Document {i} talks about pruning large language models without retraining them.\"}}")).collect();
    std::fs::write(&calib, docs.join("\n")).unwrap();
    let out = tmp.path().join("pruned");
    let o = spp(&[
        "prune",
        "--model",
        &s(&model),
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
        &s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prune block 1/1"), "{err}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("prune.json")).unwrap()).unwrap();
    assert_eq!(rec["options"]["method"], "wanda");
    assert_eq!(rec["calibration"]["nsamples"], 4);
    assert_eq!(rec["calibration"]["seqlen"], 32);
    assert_eq!(rec["result"]["all_linears_2_4"], true);
    assert_eq!(rec["report"]["linears"].as_array().unwrap().len(), 7);
    assert!(out.join("calibration.safetensors").exists() && out.join("tokenizer.json").exists());
    let o = spp(&["inspect", "--model", &s(&out), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["linear_sparsity"], 0.5);
    assert_eq!(r["all_linears_2_4"], true);

    // SparseGPT and magnitude through the CLI too (unstructured).
    for method in ["sparsegpt", "magnitude"] {
        let out = tmp.path().join(method);
        let o = spp(&[
            "prune",
            "--model",
            &s(&model),
            "--method",
            method,
            "--sparsity",
            "0.5",
            "--calib",
            &s(&calib),
            "--nsamples",
            "2",
            "--seqlen",
            "32",
            "--blocksize",
            "8",
            "--out",
            &s(&out),
        ]);
        assert!(
            o.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("sparsity 0.5000"));
    }

    // Bad input: nothing written.
    let bad = tmp.path().join("bad");
    let args = |sp: &'static str, seqlen: &'static str| {
        vec![
            "prune".to_string(),
            "--model".into(),
            s(&model),
            "--method".into(),
            "wanda".into(),
            "--sparsity".into(),
            sp.into(),
            "--calib".into(),
            s(&calib),
            "--nsamples".into(),
            "2".into(),
            "--seqlen".into(),
            seqlen.into(),
            "--out".into(),
            s(&bad),
        ]
    };
    let run = |a: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_spp"))
            .args(a)
            .output()
            .unwrap()
    };
    fails_with(&run(args("1.5", "32")), &["outside (0, 1)"]);
    fails_with(&run(args("4:4", "32")), &["0 < N < M"]);
    fails_with(
        &run(args("8:16", "32")),
        &["not divisible by M = 16", "model.layers.0"],
    );
    fails_with(&run(args("0.5", "100000")), &["--seqlen"]);
    let mut a = args("0.5", "32");
    a[9] = s(&tmp.path().join("missing.jsonl"));
    fails_with(&run(a), &["missing.jsonl"]);
    assert!(!bad.exists());
}

#[test]
fn train_merge_and_run_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    // A 2:4 model, so that keeping its zeros through training and merging means something.
    let dense = converted(tmp.path());
    let model = tmp.path().join("pruned");
    let o = spp(&[
        "prune",
        "--model",
        &s(&dense),
        "--method",
        "magnitude",
        "--sparsity",
        "2:4",
        "--out",
        &s(&model),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = s(&model);
    let records: Vec<serde_json::Value> = (0..12)
        .map(|i| serde_json::json!({"instruction": format!("Count to {i}."), "input": if i % 2 == 0 { "" } else { "slowly" }, "output": "1 2 3 ".repeat(i + 1)}))
        .collect();
    let data = tmp.path().join("alpaca.json");
    std::fs::write(&data, serde_json::to_string(&records).unwrap()).unwrap();
    let out = tmp.path().join("adapter");
    let train = |method: &str, out: &Path| {
        spp(&[
            "train",
            "--model",
            &m,
            "--data",
            &s(&data),
            "--out",
            &s(out),
            "--method",
            method,
            "--r",
            "4",
            "--max-steps",
            "3",
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
            // Large enough that the adapter visibly moves the perplexity checked below.
            "--lr",
            "0.02",
            "--json",
        ])
    };
    let o = train("spp", &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("step 3/3 loss") && err.contains("tok/s") && err.contains("val_loss"),
        "{err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["report"]["steps"], 3);
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "loss.svg",
        "train.json",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["method"], "spp");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["scale"], 2.0);

    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let ppl = |model: &str, adapter: Option<&Path>| {
        let mut args = vec!["eval", "ppl", "--model", model];
        let a = adapter.map(s);
        if let Some(a) = &a {
            args.extend(["--adapter", a]);
        }
        let t = s(&text);
        args.extend(["--text", &t, "--seqlen", "64", "--json"]);
        let o = spp(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ppl"].as_f64().unwrap()
    };
    // Three small steps barely move a random model: merge a copy of the adapter with seeded
    // random values instead (same names, shapes and base model), whose effect is plain to see.
    let moved = tmp.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(out.join(f), moved.join(f)).unwrap();
    }
    let st = moved.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        *t = common::randn(common::seed_of(name), t.dims(), 0.0, 0.5);
    }
    candle_core::safetensors::save(&tensors, &st).unwrap();
    let out = moved;
    let (base, adapted) = (ppl(&m, None), ppl(&m, Some(&out)));

    let merged = tmp.path().join("merged");
    let o = spp(&[
        "merge",
        "--model",
        &m,
        "--adapter",
        &s(&out),
        "--out",
        &s(&merged),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["all_zeros_kept"], true);
    assert!(merged.join("merge.json").exists() && merged.join("tokenizer.json").exists());
    let o = spp(&["inspect", "--model", &s(&merged), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["linear_sparsity"], 0.5, "the merged model lost zeros");
    assert_eq!(r["all_linears_2_4"], true);
    // The merged model computes what base + adapter computes (to f32 rounding, ~1e-6), and the
    // adapter's own effect is over ten times the tolerance, so a merge that does nothing fails.
    let merged_ppl = ppl(&s(&merged), None);
    let tol = 1e-5 * adapted;
    assert!(
        (adapted - base).abs() > 10.0 * tol,
        "the adapter barely moves the perplexity ({base} → {adapted})"
    );
    assert!(
        (adapted - merged_ppl).abs() < tol,
        "unmerged {adapted} vs merged {merged_ppl}"
    );

    // The adapter refuses another model; merging again into an existing directory needs --force.
    let o = spp(&[
        "merge",
        "--model",
        &s(&merged),
        "--adapter",
        &s(&out),
        "--out",
        &s(&tmp.path().join("m2")),
    ]);
    fails_with(&o, &["different model", "--force"]);
    assert!(!tmp.path().join("m2").exists());
    let o = spp(&[
        "merge",
        "--model",
        &m,
        "--adapter",
        &s(&out),
        "--out",
        &s(&merged),
    ]);
    fails_with(&o, &["already exists"]);

    // LoRA merges densify, and say so.
    let lora = tmp.path().join("lora");
    assert!(train("lora", &lora).status.success());
    let o = spp(&[
        "merge",
        "--model",
        &m,
        "--adapter",
        &s(&lora),
        "--out",
        &s(&tmp.path().join("lm")),
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("dense"));
}

#[test]
fn train_bad_inputs_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let model = converted(tmp.path());
    let m = s(&model);
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("o");
    let o = spp(&[
        "train",
        "--model",
        &m,
        "--data",
        &s(&data),
        "--out",
        &s(&out),
        "--max-steps",
        "1",
    ]);
    fails_with(&o, &["line 2", "missing field `output`"]);
    assert!(!out.exists());
    let good = tmp.path().join("good.jsonl");
    std::fs::write(
        &good,
        "{\"text\": \"hello world, hello world\"}\n".repeat(20),
    )
    .unwrap();
    let o = spp(&[
        "train",
        "--model",
        &m,
        "--data",
        &s(&good),
        "--out",
        &s(&out),
        "--max-steps",
        "1",
        "--r",
        "7",
        "--cutoff",
        "8",
        "--val-size",
        "1",
    ]);
    fails_with(&o, &["not divisible", "model.layers.0.self_attn.q_proj"]);
    let o = spp(&[
        "train",
        "--model",
        &m,
        "--data",
        &s(&good),
        "--out",
        &s(&out),
        "--max-steps",
        "1",
        "--batch-size",
        "3",
        "--micro-batch-size",
        "2",
        "--cutoff",
        "8",
    ]);
    fails_with(&o, &["multiple of --micro-batch-size"]);
    let o = spp(&[
        "train",
        "--model",
        &m,
        "--data",
        &s(&good),
        "--out",
        &s(&out),
        "--resume",
        "--cutoff",
        "8",
        "--val-size",
        "1",
        "--r",
        "4",
    ]);
    fails_with(&o, &["no checkpoint"]);
    assert!(!out.exists());
}

#[test]
fn eval_tasks_reports_and_names_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let m = s(&converted(tmp.path()));
    let out = tmp.path().join("tasks.json");
    let o = spp(&[
        "eval",
        "tasks",
        "--model",
        &m,
        "--tasks",
        "rte,winogrande,arc_easy",
        "--limit",
        "3",
        "--data-dir",
        &shared("eval"),
        "--out",
        &s(&out),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for row in [
        "| rte | 3 |",
        "| winogrande | 3 |",
        "| arc_easy | 3 |",
        "| mean |",
    ] {
        assert!(stdout.contains(row), "{stdout}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["settings"]["limit"], 3);
    assert_eq!(v["settings"]["prefix_sharing"], true);
    let arc = &v["tasks"]["arc_easy"];
    assert_eq!(arc["docs"].as_array().unwrap().len(), 3);
    assert_eq!(
        arc["docs"][0]["loglikelihoods"].as_array().unwrap().len(),
        4
    );
    let acc = arc["acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let mean = ["rte", "winogrande", "arc_easy"]
        .map(|t| v["tasks"][t]["acc"].as_f64().unwrap())
        .iter()
        .sum::<f64>()
        / 3.0;
    assert!((v["mean_acc"].as_f64().unwrap() - mean).abs() < 1e-12);

    // Bad input: one clear error each, nothing on stdout, no output file.
    let bad_out = tmp.path().join("bad.json");
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "tasks", "--model", &m, "--out"];
        let b = s(&bad_out);
        args.push(&b);
        args.extend_from_slice(extra);
        spp(&args)
    };
    fails_with(
        &run(&["--tasks", "boolq,hellaswg", "--data-dir", &shared("eval")]),
        &["hellaswg", "known tasks", "hellaswag"],
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(
        &run(&["--tasks", "rte", "--data-dir", &s(&empty)]),
        &["rte_validation.jsonl", "missing", "README"],
    );
    std::fs::write(
        empty.join("rte_validation.jsonl"),
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 0}\n{\"sentence1\": \"a\", \"label\": 1}\n",
    )
    .unwrap();
    fails_with(
        &run(&["--tasks", "rte", "--data-dir", &s(&empty)]),
        &["rte_validation.jsonl:2", "sentence2"],
    );
    std::fs::write(
        empty.join("rte_validation.jsonl"),
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 5}\n",
    )
    .unwrap();
    fails_with(
        &run(&["--tasks", "rte", "--data-dir", &s(&empty)]),
        &["rte_validation.jsonl:1", "out of range"],
    );
    assert!(!bad_out.exists());
}
