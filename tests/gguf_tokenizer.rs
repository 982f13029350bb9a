//! `spp::gguf::tokenizer`: tokenizers rebuilt from GGUF metadata against golden ids.
//!
//! Golden files: `tests/data/tokenizer/*.json`, written by `scripts/golden/make_tokenizer_golden.py`
//! (its docstring says how it was run; each file records the package versions and the GGUF's
//! sha256). `expected` is what we must produce; the other arrays are the references it was checked
//! against (SentencePiece itself for LLaMA-2, transformers' GGUF loader for both).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::gguf_file::{self, Content, Value};
use serde_json::Value as Json;
use spp::gguf::tokenizer::{tokenizer_files, TokenizerFiles};
use tokenizers::Tokenizer;

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_gguf(path: &Path) -> Content {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_golden(name: &str) -> Json {
    let path = crate_root().join("tests/data/tokenizer").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn build(content: &Content) -> (TokenizerFiles, Tokenizer) {
    let files = tokenizer_files(content).expect("tokenizer_files");
    let json = serde_json::to_string(&files.tokenizer_json).unwrap();
    let tokenizer = Tokenizer::from_str(&json).expect("tokenizer.json must load in `tokenizers`");
    (files, tokenizer)
}

/// Encode every golden string (special tokens added, as `AutoTokenizer.encode` does) and decode
/// it back. Returns the number of strings checked.
fn check_golden(
    tokenizer: &Tokenizer,
    golden: &Json,
    also_equal_to: &dyn Fn(&str) -> Option<&'static str>,
) -> usize {
    let cases = golden["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 30,
        "golden file has only {} strings",
        cases.len()
    );
    let mut failures = vec![];
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["expected"]);
        let got = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        if got != expected {
            failures.push(format!("{text:?}: got {got:?}, expected {expected:?}"));
            continue;
        }
        if let Some(reference) = also_equal_to(text) {
            let other = ids(&case[reference]);
            if got != other {
                failures.push(format!(
                    "{text:?}: got {got:?}, {reference} gives {other:?}"
                ));
            }
        }
        let decoded = tokenizer.decode(&got, true).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!(
                "{text:?}: decode gives {decoded:?}, golden {:?}",
                case["decoded"]
            ));
        }
        let with_special = tokenizer.decode(&got, false).unwrap();
        if with_special != case["decoded_with_special"].as_str().unwrap() {
            failures.push(format!(
                "{text:?}: decode(skip_special_tokens=false) gives {with_special:?}, golden {:?}",
                case["decoded_with_special"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} strings differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn llama2_sentencepiece_vocab_matches_golden() {
    let path = crate_root().join("../shared/data/models/llama-2-tiny-random.gguf");
    let (files, tokenizer) = build(&read_gguf(&path));
    let golden = load_golden("llama2_tiny.json");
    assert_eq!(tokenizer.get_vocab_size(true), 32000);
    assert_eq!(files.bos_token_id, Some(1));
    assert_eq!(files.eos_token_id, Some(2));
    // SentencePiece reads "<s>" in text as plain characters; we (like every HF Llama tokenizer) as
    // the special token. Everywhere else SentencePiece's ids are ours.
    let sentencepiece = |text: &str| {
        (!["<s>", "</s>", "<unk>"].iter().any(|s| text.contains(s))).then_some("sentencepiece")
    };
    let n = check_golden(&tokenizer, &golden, &sentencepiece);

    // Plain text survives a round trip (a literal "▁" cannot: it is the space marker).
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        if sentencepiece(text).is_some() && !text.contains('▁') {
            let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(tokenizer.decode(&ids, true).unwrap(), text);
        }
    }

    let config = &files.tokenizer_config;
    assert_eq!(config["bos_token"], "<s>");
    assert_eq!(config["eos_token"], "</s>");
    assert_eq!(config["unk_token"], "<unk>");
    assert_eq!(config["add_bos_token"], true);
    assert_eq!(config["add_eos_token"], false);
    assert_eq!(config["model_max_length"], 4096);
    assert_eq!(config["clean_up_tokenization_spaces"], false);
    assert!(config.get("pad_token").is_none());
    assert!(config["tokenizer_class"].is_string());
    println!("llama-2-tiny-random.gguf: {n} golden strings match");
}

fn smollm2_path() -> Option<PathBuf> {
    let path = std::env::var_os("SPP_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("SPP_REQUIRE_REAL_MODEL").as_deref() == Ok("1") {
        panic!(
            "SPP_REQUIRE_REAL_MODEL=1 but the SmolLM2 GGUF is not at {} (set SPP_SMOLLM2_GGUF; \
             ../shared/data/README.md says how to get it)",
            path.display()
        );
    }
    println!(
        "skipped: SmolLM2 GGUF not found at {} (set SPP_SMOLLM2_GGUF to run this test)",
        path.display()
    );
    None
}

#[test]
fn smollm2_byte_level_vocab_matches_golden() {
    let Some(path) = smollm2_path() else { return };
    let (files, tokenizer) = build(&read_gguf(&path));
    let golden = load_golden("smollm2.json");
    assert_eq!(tokenizer.get_vocab_size(true), 49152);
    assert_eq!(
        files.tokenizer_json["model"]["merges"]
            .as_array()
            .unwrap()
            .len(),
        48900
    );
    assert_eq!(files.bos_token_id, Some(1));
    assert_eq!(files.eos_token_id, Some(2));
    let n = check_golden(&tokenizer, &golden, &|_| None);

    // Digits are split one by one; no BOS is added by default.
    assert_eq!(tokenizer.encode("12345", true).unwrap().get_ids().len(), 5);
    // Control tokens are matched whole and are special.
    let im_start = tokenizer.encode("<|im_start|>", true).unwrap();
    assert_eq!(im_start.get_ids(), &[1]);
    assert_eq!(tokenizer.decode(&[1, 2], true).unwrap(), "");

    let config = &files.tokenizer_config;
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["unk_token"], "<|endoftext|>");
    assert_eq!(config["pad_token"], "<|im_end|>");
    assert_eq!(config["add_bos_token"], false);
    assert_eq!(config["model_max_length"], 8192);
    assert!(config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    println!("{}: {n} golden strings match", path.display());
}

/// A GGUF with only tokenizer metadata, written with candle's writer and read back.
fn gguf_with(metadata: &[(&str, Value)]) -> Content {
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &refs, &[]).unwrap();
    buf.set_position(0);
    Content::read(&mut buf).unwrap()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

fn error_of(content: &Content) -> String {
    match tokenizer_files(content) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_tokenizer_model_is_a_clear_error() {
    let content = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("bert".into())),
        ("tokenizer.ggml.tokens", strings(&["[PAD]", "[UNK]", "a"])),
    ]);
    let msg = error_of(&content);
    assert!(msg.contains("\"bert\""), "{msg}");
    assert!(msg.contains("llama") && msg.contains("gpt2"), "{msg}");
}

#[test]
fn missing_or_mistyped_metadata_is_a_clear_error() {
    let no_tokens = gguf_with(&[("tokenizer.ggml.model", Value::String("llama".into()))]);
    let msg = error_of(&no_tokens);
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");

    let no_model = gguf_with(&[("tokenizer.ggml.tokens", strings(&["a"]))]);
    assert!(error_of(&no_model).contains("tokenizer.ggml.model"));

    let mistyped = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::U32(3)),
    ]);
    let msg = error_of(&mistyped);
    assert!(
        msg.contains("tokenizer.ggml.tokens") && msg.contains("u32"),
        "{msg}"
    );

    let bad_bos = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(7)),
    ]);
    let msg = error_of(&bad_bos);
    assert!(
        msg.contains("tokenizer.ggml.bos_token_id") && msg.contains('7'),
        "{msg}"
    );

    let unknown_pre = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("deepseek-llm".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ]);
    let msg = error_of(&unknown_pre);
    assert!(
        msg.contains("\"deepseek-llm\"") && msg.contains("smollm") && msg.contains("qwen2"),
        "{msg}"
    );

    let foreign_merge = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a c"])),
    ]);
    let msg = error_of(&foreign_merge);
    assert!(msg.contains("\"c\""), "{msg}");

    let llama_without_scores = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "a"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
    ]);
    assert!(error_of(&llama_without_scores).contains("tokenizer.ggml.scores"));
}

/// A tiny SentencePiece vocabulary in memory: merges come from the scores, special tokens and
/// user-defined tokens are matched whole, BOS/EOS follow the add flags.
#[test]
fn small_sentencepiece_vocab_in_memory() {
    let tokens = [
        "<unk>", "<s>", "</s>", "<0x21>", "▁", "a", "b", "ab", "▁ab", "<tool>",
    ];
    let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0];
    let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 4];
    let content = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
    ]);
    let (files, tokenizer) = build(&content);
    let vocab: HashMap<String, u32> = tokenizer.get_vocab(true);
    assert_eq!(vocab["<tool>"], 9);
    let merges: Vec<(String, String)> =
        serde_json::from_value(files.tokenizer_json["model"]["merges"].clone()).unwrap();
    // "ab" (score -4) is merged before "▁ab" (-5), which has the one split "▁" + "ab".
    assert_eq!(
        merges,
        vec![("a".into(), "b".into()), ("▁".into(), "ab".into())]
    );
    let enc = tokenizer.encode("ab!<tool>b", true).unwrap();
    // <s> ▁ab <0x21>(byte fallback) <tool> ▁ b </s>: text after an added token gets its own "▁",
    // as in the published Llama-2 tokenizer.json.
    assert_eq!(enc.get_ids(), &[1, 8, 3, 9, 4, 6, 2]);
    assert_eq!(
        tokenizer.decode(enc.get_ids(), true).unwrap(),
        "ab!<tool> b"
    );
    let added = files.tokenizer_json["added_tokens"].as_array().unwrap();
    let special: Vec<(&str, bool)> = added
        .iter()
        .map(|t| {
            (
                t["content"].as_str().unwrap(),
                t["special"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        special,
        vec![
            ("<unk>", true),
            ("<s>", true),
            ("</s>", true),
            ("<tool>", false)
        ]
    );
    assert_eq!(files.tokenizer_config["add_eos_token"], true);
    assert!(files.tokenizer_config.get("model_max_length").is_none());
}

/// Every `tokenizer.ggml.pre` value we accept yields a `tokenizer.json` that `tokenizers` loads
/// (the LLaMA-3 regex needs look-ahead, which the `fancy-regex` backend must compile).
#[test]
fn byte_level_pre_tokenizers_load() {
    for pre in [
        None,
        Some("default"),
        Some("gpt2"),
        Some("smollm"),
        Some("starcoder"),
        Some("llama-bpe"),
    ] {
        let mut metadata = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            (
                "tokenizer.ggml.tokens",
                strings(&["a", "b", "ab", "Ġ", "1", "2"]),
            ),
            ("tokenizer.ggml.merges", strings(&["a b"])),
        ];
        if let Some(pre) = pre {
            metadata.push(("tokenizer.ggml.pre", Value::String(pre.into())));
        }
        let (files, tokenizer) = build(&gguf_with(&metadata));
        let ids = tokenizer.encode("ab 12", true).unwrap().get_ids().to_vec();
        assert_eq!(ids, [2, 3, 4, 5], "pre = {pre:?}");
        assert_eq!(
            tokenizer.decode(&ids, true).unwrap(),
            "ab 12",
            "pre = {pre:?}"
        );
        assert_eq!(files.tokenizer_config["add_bos_token"], false);
    }
}
