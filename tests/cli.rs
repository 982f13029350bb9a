//! The binary end to end: the happy path on the tiny GGUF from ../shared/data, and every bad
//! input of the foundation issue giving one clear error, a non-zero exit and no output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spp"))
        .args(args)
        .output()
        .unwrap()
}

fn shared(p: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(p)
        .display()
        .to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

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

    let o = spp(&[
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
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = spp(&[
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
    ]);
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
