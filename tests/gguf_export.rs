//! `spp export gguf`: Q8_0 blocks equal llama.cpp's Python quantiser's
//! (tests/data/gguf/q8_0_golden.json, made by scripts/golden/make_q8_0_golden.py); an export
//! read back by `spp convert gguf` gives the original directory byte for byte (F32: SmolLM2's
//! byte-level vocabulary, the tiny LLaMA-2's SentencePiece one); the 16-bit and Q8_0 exports
//! give the model back within their rounding; bad requests are refused without output.

mod common;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use common::{s, spp};
use spp::gguf::export::quantize_q8_0;
use spp::model::{load_model, DTypeChoice};
use std::path::Path;

fn ok(args: &[&str]) -> std::process::Output {
    let o = spp(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn q8_0_blocks_equal_llama_cpps() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/q8_0_golden.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let values: Vec<f32> = g["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let hex: String = quantize_q8_0(&values)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, g["bytes"].as_str().unwrap());
}

/// Export `model` as `ty`, convert it back as f32; the converted directory.
fn round_trip(model: &Path, tmp: &Path, ty: &str) -> std::path::PathBuf {
    let file = tmp.join(format!("{ty}.gguf"));
    let back = tmp.join(format!("back-{ty}"));
    ok(&[
        "export",
        "gguf",
        "--model",
        &s(model),
        "--out",
        &s(&file),
        "--type",
        ty,
    ]);
    let (content, _) = spp::gguf::read_header(&file).unwrap();
    let arch = &content.metadata["general.architecture"];
    assert!(format!("{arch:?}").contains("llama"), "{arch:?}");
    ok(&["convert", "gguf", &s(&file), "--out", &s(&back)]);
    back
}

fn same_files(a: &Path, b: &Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{f} differs after export + convert ({})",
            a.display()
        );
    }
}

#[test]
fn f32_export_converts_back_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = common::converted_tiny(tmp.path());
    same_files(&tiny, &round_trip(&tiny, tmp.path(), "f32"));
    if let Some(real) = common::smollm2_dir() {
        let t = tmp.path().join("real");
        std::fs::create_dir(&t).unwrap();
        same_files(&real, &round_trip(&real, &t, "f32"));
    }
}

#[test]
fn narrow_exports_give_the_model_back_within_their_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = common::converted_tiny(tmp.path());
    let ids = Tensor::new(common::ids(48, 1000, 3).as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = |dir: &Path| {
        load_model(dir, DTypeChoice::F32, &Device::Cpu)
            .unwrap()
            .model
            .forward(&ids)
            .unwrap()
    };
    let want = logits(&tiny);
    let scale = common::max_abs(&want);
    for (ty, tol) in [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 3e-2)] {
        let back = round_trip(&tiny, tmp.path(), ty);
        let d = common::max_diff(&logits(&back), &want);
        // The tiny model is stored in f16: its f16 export is exact, the others round.
        assert!(
            d <= tol * scale && (d > 0.0) == (ty != "f16"),
            "{ty}: logits off by {d} (scale {scale})"
        );
        // The tensor types llama.cpp will see: 2-D weights narrowed, norms kept in f32.
        let mut f = std::fs::File::open(tmp.path().join(format!("{ty}.gguf"))).unwrap();
        let c = Content::read(&mut f).unwrap();
        let norm = &c.tensor_infos["blk.0.attn_norm.weight"];
        assert_eq!(format!("{:?}", norm.ggml_dtype), "F32");
        // Q8_0 needs rows of whole 32-blocks: ffn_down's 32 inputs have one, attn_q's 8 fall back
        // to f16 as llama.cpp's converter does.
        let ty_of = |n: &str| format!("{:?}", c.tensor_infos[n].ggml_dtype).to_lowercase();
        assert_eq!(ty_of("blk.0.ffn_down.weight"), ty);
        let q = if ty == "q8_0" { "f16" } else { ty };
        assert_eq!(ty_of("blk.0.attn_q.weight"), q);
    }
}

#[test]
fn bad_exports_are_refused_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = common::converted_tiny(tmp.path());
    let out = tmp.path().join("x.gguf");
    let fails = |args: &[&str], needle: &str| {
        let o = spp(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    let (m, o) = (s(&tiny), s(&out));
    fails(
        &[
            "export", "gguf", "--model", &m, "--out", &o, "--type", "q4_k",
        ],
        "q8_0",
    );
    // A pre-tokenizer llama.cpp would not reproduce.
    let odd = tmp.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    for f in std::fs::read_dir(&tiny).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, odd.join(f.file_name().unwrap())).unwrap();
    }
    let smol = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny/qwen2-tied/tokenizer.json"),
    )
    .unwrap();
    let mut t: serde_json::Value = serde_json::from_str(&smol).unwrap();
    t["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    std::fs::write(odd.join("tokenizer.json"), t.to_string()).unwrap();
    fails(
        &["export", "gguf", "--model", &s(&odd), "--out", &o],
        "pre-tokenizer",
    );
    assert!(!out.exists());
    ok(&["export", "gguf", "--model", &m, "--out", &o]);
    fails(&["export", "gguf", "--model", &m, "--out", &o], "exists");
    ok(&["export", "gguf", "--model", &m, "--out", &o, "--force"]);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The other families through export + convert: the same logits (f32, exactly), the same token
/// ids. Sliding windows, which llama.cpp's `llama` and `qwen2` architectures do not have, are
/// named in a warning and lost: the logits agree over the first window only.
#[test]
fn families_survive_export_and_convert() {
    let tmp = tempfile::tempdir().unwrap();
    // Characters of the tiny vocabulary only (it has no byte tokens for the others).
    let text = "Hello there, 123 apples!\n  Spaces   and more.";
    for (name, arch) in [
        ("qwen2-tied", "qwen2"),
        ("qwen3-headdim", "qwen3"),
        ("llama32-tied", "llama"),
        ("mistral-window", "llama"),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/tiny")
            .join(name);
        let file = tmp.path().join(format!("{name}.gguf"));
        let back = tmp.path().join(name);
        let o = ok(&[
            "export",
            "gguf",
            "--model",
            &s(&dir),
            "--out",
            &s(&file),
            "--type",
            "f32",
            "--json",
        ]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["architecture"], arch, "{name}");
        let warned = String::from_utf8_lossy(&o.stderr).contains("sliding window");
        let window = a_window(&dir);
        assert_eq!(warned, window.is_some(), "{name}");
        ok(&["convert", "gguf", &s(&file), "--out", &s(&back)]);
        let load = |d: &Path| load_model(d, DTypeChoice::F32, &Device::Cpu).unwrap();
        let (a, b) = (load(&dir), load(&back));
        let ids = Tensor::new(common::ids(12, 256, 4).as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let n = window.unwrap_or(12);
        let logits = |m: &spp::model::Llama| m.forward(&ids).unwrap().narrow(1, 0, n).unwrap();
        let d = common::max_diff(&logits(&a.model), &logits(&b.model));
        assert_eq!(
            d, 0.0,
            "{name}: logits differ by {d} after export + convert"
        );
        let enc = |d: &Path, cfg| {
            spp::tokenizer::Tokenizer::load(d, cfg)
                .unwrap()
                .encode(text, true)
                .unwrap()
        };
        assert_eq!(
            enc(&dir, &a.model.cfg),
            enc(&back, &b.model.cfg),
            "{name}: token ids"
        );
    }
}

/// The sliding window of some block of the model in `dir`, if any.
fn a_window(dir: &Path) -> Option<usize> {
    let cfg = spp::model::LlamaConfig::load(&dir.join("config.json")).unwrap();
    (0..cfg.num_hidden_layers).find_map(|i| cfg.sliding_window(i))
}
