//! Mutation fuzzing of the parsers that read untrusted files: the safetensors header (through
//! the whole model load), GGUF, recipes and the training / evaluation data files. Each
//! iteration mutates a valid file (flipped, overwritten, inserted and deleted bytes, truncation,
//! numbers set to extremes) with a seeded generator and parses it in this process: an error is
//! fine, a panic is a failure (an abort, such as a failed huge allocation, ends the test).
//!
//! `SPP_FUZZ_ITERS` sets the iterations per parser (default 150, a few seconds), or
//! `SPP_FUZZ_SECONDS` a time per parser instead (long runs: `SPP_FUZZ_SECONDS=600 cargo test
//! --release --test fuzz_parsers -- --test-threads 1 --nocapture`); `SPP_FUZZ_ONLY` a comma-separated list of the parsers to
//! run (the names printed); `SPP_FUZZ_SEED` the seed, so a failure is reproduced by its seed and
//! iteration.

mod common;

use candle_core::{DType, Device};
use common::{s, shared, spp, tiny_config, tiny_model};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that tend to break length and count fields.
const EXTREMES: [u64; 8] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    1 << 40,
];

/// One to four mutations of `input`, mostly inside its first `focus` bytes (the header).
fn mutate(input: &[u8], focus: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = focus.min(b.len()).max(1);
        let at = rng.below(span);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            2 => {
                let v = EXTREMES[rng.below(EXTREMES.len())].to_le_bytes();
                for (i, x) in v.iter().enumerate().take(1 + rng.below(8)) {
                    if let Some(y) = b.get_mut(at + i) {
                        *y = *x;
                    }
                }
            }
            3 => {
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let at = at.min(b.len());
                b.splice(at..at, bytes);
            }
            4 if !b.is_empty() => {
                let at = at.min(b.len() - 1);
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            5 => b.truncate(rng.below(b.len().max(1))),
            _ => {
                // A copy of one slice over another: structure-preserving nonsense.
                if b.len() > 2 {
                    let from = rng.below(b.len() - 1);
                    let n = rng.below(32).min(b.len() - from);
                    let chunk = b[from..from + n].to_vec();
                    for (i, x) in chunk.into_iter().enumerate() {
                        if let Some(y) = b.get_mut(at + i) {
                            *y = x;
                        }
                    }
                }
            }
        }
    }
    b
}

fn iterations() -> usize {
    std::env::var("SPP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

fn seconds() -> Option<f64> {
    std::env::var("SPP_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn seed() -> u64 {
    std::env::var("SPP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

/// Runs `parse` on `iterations()` mutations of `valid` written to `file`; returns the panics.
fn fuzz(
    what: &str,
    valid: &[u8],
    focus: usize,
    file: &Path,
    parse: impl Fn() -> Result<(), String>,
) -> Vec<String> {
    if std::env::var("SPP_FUZZ_ONLY").is_ok_and(|only| !only.split(',').any(|w| w == what)) {
        return Vec::new();
    }
    let mut rng = Rng(seed() ^ what.len() as u64);
    let mut panics = Vec::new();
    let mut errors = 0;
    let (start, limit, iters) = (std::time::Instant::now(), seconds(), iterations());
    let mut i = 0;
    while match limit {
        Some(l) => start.elapsed().as_secs_f64() < l,
        None => i < iters,
    } {
        i += 1;
        let bytes = mutate(valid, focus, &mut rng);
        std::fs::write(file, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(&parse)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                assert!(!e.trim().is_empty(), "{what} #{i}: an empty error message");
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                std::fs::write(file.with_extension(format!("panic-{i}")), &bytes).unwrap();
                panics.push(format!("{what} #{i} (seed {}): {msg}", seed()));
            }
        }
    }
    eprintln!(
        "{what}: {i} inputs in {:.0} s, {errors} errors, {} panics",
        start.elapsed().as_secs_f64(),
        panics.len()
    );
    panics
}

#[test]
fn model_files_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let model = tiny_model(false, false, &Device::Cpu);
    spp::model::save_model(&model, &dir, &Default::default()).unwrap();
    let st = dir.join("model.safetensors");
    let valid = std::fs::read(&st).unwrap();
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let mut panics = fuzz("safetensors", &valid, header, &st, || {
        spp::model::load_model(&dir, spp::model::DTypeChoice::Auto, &Device::Cpu)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    std::fs::write(&st, &valid).unwrap();
    let cfg_path = dir.join("config.json");
    let cfg = serde_json::to_vec_pretty(&tiny_config(false, false)).unwrap();
    panics.extend(fuzz("config.json", &cfg, cfg.len(), &cfg_path, || {
        spp::model::load_model(&dir, spp::model::DTypeChoice::Auto, &Device::Cpu)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }));
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

#[test]
fn gguf_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = std::fs::read(shared("models/llama-2-tiny-random.gguf")).unwrap();
    let file = tmp.path().join("x.gguf");
    let out = tmp.path().join("out");
    // The header (metadata and vocabulary) is the first ~0.7 MB; mutations go anywhere in it.
    let panics = fuzz("gguf", &valid, 720_000, &file, || {
        let r = spp::gguf::convert(&file, &out, DType::F32, true, 1 << 30)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&out);
        r
    });
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

#[test]
fn recipes_and_data_files_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    let o = spp(&[
        "convert",
        "gguf",
        &shared("models/llama-2-tiny-random.gguf"),
        "--out",
        &s(&model),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = tmp.path().join("alpaca.json");
    let recs: Vec<serde_json::Value> = (0..6)
        .map(|i| serde_json::json!({"instruction": format!("Say {i}."), "input": "x", "output": "ok"}))
        .collect();
    let alpaca = serde_json::to_vec(&recs).unwrap();
    std::fs::write(&data, &alpaca).unwrap();

    let recipe = tmp.path().join("r.toml");
    let text = String::from(
        "name = \"r\"\nmodel = \"tiny\"\n[prune]\nmethod = [\"wanda\", \"magnitude\"]\nsparsity = [0.5, \"2:4\"]\nnsamples = 4\n\
         [train]\nmethod = \"spp\"\ndata = \"alpaca.json\"\nmax_steps = 3\nr = 4\nlr = 4e-3\ndropout = 0.05\n\
         [eval]\nppl_text = \"alpaca.json\"\nseqlen = 32\ntasks = [\"rte\"]\nlimit = 2\n"
    );
    let mut panics = fuzz("recipe", text.as_bytes(), text.len(), &recipe, || {
        spp::run::recipe::Recipe::load(&recipe)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });

    let cfg = spp::model::LlamaConfig::load(&model.join("config.json")).unwrap();
    let tok = spp::tokenizer::Tokenizer::load(&model, &cfg).unwrap();
    let train_file = tmp.path().join("train.json");
    panics.extend(fuzz(
        "alpaca json",
        &alpaca,
        alpaca.len(),
        &train_file,
        || {
            spp::train::data::load(&train_file, &tok, 64, false)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    ));
    let jsonl: Vec<u8> = recs
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect::<String>()
        .into_bytes();
    let jsonl_file = tmp.path().join("train.jsonl");
    panics.extend(fuzz(
        "alpaca jsonl",
        &jsonl,
        jsonl.len(),
        &jsonl_file,
        || {
            spp::train::data::load(&jsonl_file, &tok, 64, true)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    ));
    let text_file = tmp.path().join("docs.jsonl");
    let docs = b"{\"text\": \"one document\"}\n{\"text\": \"another one\"}\n".to_vec();
    panics.extend(fuzz("text jsonl", &docs, docs.len(), &text_file, || {
        spp::eval::perplexity::read_documents(&text_file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }));
    let eval_dir = tmp.path().join("eval");
    std::fs::create_dir(&eval_dir).unwrap();
    for (task, file) in [
        ("rte", "rte_validation.jsonl"),
        ("hellaswag", "hellaswag_validation.jsonl"),
        ("arc_easy", "arc_easy_test.jsonl"),
        ("winogrande", "winogrande_xl_validation.jsonl"),
    ] {
        let full = std::fs::read_to_string(Path::new(&shared("eval")).join(file)).unwrap();
        let head: String = full.lines().take(3).map(|l| format!("{l}\n")).collect();
        let path = eval_dir.join(file);
        panics.extend(fuzz(task, head.as_bytes(), head.len(), &path, || {
            spp::eval::tasks::load(task, &eval_dir, None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }));
    }
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}
