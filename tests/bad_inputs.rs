//! Bad inputs against the real binary, as a table: broken model files, GGUF files, data files,
//! flags, recipes and output paths. Each case must exit non-zero with an `error:` message
//! holding an expected phrase, never panic, and leave its output location as it was (no
//! output, no `.NAME.partial-*` / `.NAME.old-*` leftovers).

mod bad_input_cases;
mod common;

use candle_core::{Device, Tensor};
use common::{s, shared, spp};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Adds one case: name, arguments, expected phrases, the output location to watch.
type AddCase<'a> = dyn FnMut(&str, &[&str], &[&str], Option<&Path>) + 'a;

struct Case {
    name: String,
    args: Vec<String>,
    expect: Vec<String>,
    /// Where the command would write: it must look the same afterwards.
    out: Option<PathBuf>,
}

/// A content fingerprint of a file or directory tree (None when absent).
fn snapshot(p: &Path) -> Option<u64> {
    fn walk(p: &Path, h: &mut DefaultHasher) {
        let meta = std::fs::symlink_metadata(p).unwrap();
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for e in entries {
                e.file_name().hash(h);
                walk(&e, h);
            }
        } else {
            std::fs::read(p).unwrap_or_default().hash(h);
        }
    }
    std::fs::symlink_metadata(p).ok()?;
    let mut h = DefaultHasher::new();
    walk(p, &mut h);
    Some(h.finish())
}

/// Temporary siblings of `out` left by a write.
fn leftovers(out: &Path) -> Vec<String> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let parent = out.parent().unwrap();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return vec![];
    };
    rd.filter_map(|e| {
        let n = e.ok()?.file_name().to_string_lossy().into_owned();
        (n.starts_with(&format!(".{name}.partial-")) || n.starts_with(&format!(".{name}.old-")))
            .then_some(n)
    })
    .collect()
}

/// Runs every case on a few threads; returns the failures, each with its name and why.
fn run_all(cases: Vec<Case>) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let before: Vec<Option<u64>> = cases
        .iter()
        .map(|c| c.out.as_deref().and_then(snapshot))
        .collect();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(c) = cases.get(i) else { break };
                let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
                let o = spp(&args);
                let err = String::from_utf8_lossy(&o.stderr);
                let mut why = Vec::new();
                if o.status.success() {
                    why.push("exit code 0".to_string());
                }
                if err.contains("panicked") {
                    why.push("panicked".into());
                }
                if !err.contains("error:") {
                    why.push("no `error:` line".into());
                }
                for e in &c.expect {
                    if !err.contains(e.as_str()) {
                        why.push(format!("stderr lacks {e:?}"));
                    }
                }
                if let Some(out) = &c.out {
                    if snapshot(out) != before[i] {
                        why.push(format!("{} changed", out.display()));
                    }
                    let left = leftovers(out);
                    if !left.is_empty() {
                        why.push(format!("left {left:?}"));
                    }
                }
                if !why.is_empty() {
                    failures.lock().unwrap().push(format!(
                        "[{}] {}: {}\n    stderr: {}",
                        c.name,
                        c.args.join(" "),
                        why.join("; "),
                        err.trim().replace('\n', "\n            ")
                    ));
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    gguf: PathBuf,
    text: PathBuf,
    data: PathBuf,
    calib: PathBuf,
    adapter: PathBuf,
}

impl Fixture {
    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A copy of the tiny model named `name`, changed by `f`.
    fn variant(&self, name: &str, f: impl FnOnce(&Path)) -> String {
        let d = self.p(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&self.model).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        f(&d);
        s(&d)
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let p = self.p(name);
        std::fs::write(&p, bytes).unwrap();
        s(&p)
    }
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let gguf = root.join("tiny.gguf");
    std::fs::copy(shared("models/llama-2-tiny-random.gguf"), &gguf).unwrap();
    let model = root.join("tiny");
    let o = spp(&["convert", "gguf", &s(&gguf), "--out", &s(&model)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = root.join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(60),
    )
    .unwrap();
    let data = root.join("alpaca.json");
    let recs: Vec<serde_json::Value> = (0..24)
        .map(|i| {
            serde_json::json!({"instruction": format!("Say {i}."), "input": "", "output": format!("{i} it is.")})
        })
        .collect();
    std::fs::write(&data, serde_json::to_string(&recs).unwrap()).unwrap();
    let calib = root.join("calib.jsonl");
    let docs: Vec<String> = (0..20)
        .map(|i| format!("{{\"text\": \"Document {i} talks about pruning language models.\"}}"))
        .collect();
    std::fs::write(&calib, docs.join("\n")).unwrap();
    let adapter = root.join("adapter");
    let o = spp(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&adapter),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--r",
        "4",
        "--val-size",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Fixture {
        _tmp: tmp,
        root,
        model,
        gguf,
        text,
        data,
        calib,
        adapter,
    }
}

/// Rewrites the safetensors file at `path` after `f` changed its tensors.
fn edit_tensors(path: &Path, f: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, path).unwrap();
}

/// `t` with its first element set to `v`.
fn poisoned(t: &Tensor, v: f32) -> Tensor {
    let shape = t.dims().to_vec();
    let dtype = t.dtype();
    let mut x: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    x[0] = v;
    Tensor::from_vec(x, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// `args` with each `--flag value` pair of `extra` replacing the flag's earlier value (or
/// appended when the flag is not there yet).
fn with_flags(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    for pair in extra.chunks(2) {
        match (args.iter().position(|a| a == pair[0]), pair.get(1)) {
            (Some(at), Some(v)) => args[at + 1] = v.to_string(),
            _ => args.extend(pair.iter().map(|x| x.to_string())),
        }
    }
    args
}

/// The GGUF with the first entry of `tokenizer.ggml.scores` (an f32 array) set to NaN.
fn nan_score(g: &[u8]) -> Vec<u8> {
    let key = b"tokenizer.ggml.scores";
    let at = g.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type (u32, 9 = array), element type (u32, 6 = f32), length (u64), then the values.
    assert_eq!(g[at..at + 8], [9, 0, 0, 0, 6, 0, 0, 0]);
    let first = at + 16;
    let mut b = g.to_vec();
    b[first..first + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    b
}

/// The safetensors header length field set to `n`.
fn with_header_len(bytes: &[u8], n: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[..8].copy_from_slice(&n.to_le_bytes());
    b
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing() {
    let fx = fixture();
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &str, args: &[&str], expect: &[&str], out: Option<&Path>| {
        cases.push(Case {
            name: name.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            expect: expect.iter().map(|e| e.to_string()).collect(),
            out: out.map(Path::to_path_buf),
        });
    };

    bad_input_cases::artifacts::cases(&fx, &mut add);
    let gguf_copy = bad_input_cases::invocations::cases(&fx, &mut add);

    let n = cases.len();
    let t = std::time::Instant::now();
    let failures = run_all(cases);
    eprintln!("{n} cases in {:.1} s", t.elapsed().as_secs_f64());
    assert!(n >= 100, "only {n} cases");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The fixture's model, adapter and gguf are untouched by it all.
    assert!(
        fx.model.join("model.safetensors").exists()
            && fx.adapter.join("adapter_model.safetensors").exists()
    );
    assert_eq!(
        std::fs::read(&gguf_copy).unwrap(),
        std::fs::read(&fx.gguf).unwrap()
    );
}

#[test]
fn leftovers_of_interrupted_writes_are_removed_on_the_next_write() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    // A dead writer's partial directory and moved-away old output (pid far above pid_max).
    let partial = tmp.path().join(".m.partial-4000000000-abc");
    let old = tmp.path().join(".m.old-4000000001");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), "half").unwrap();
    std::fs::create_dir(&old).unwrap();
    let o = spp(&[
        "convert",
        "gguf",
        &shared("models/llama-2-tiny-random.gguf"),
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("model.safetensors").exists());
    assert!(!partial.exists() && !old.exists());
}

#[test]
fn a_closed_pipe_ends_generation_quietly() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    let o = spp(&[
        "convert",
        "gguf",
        &shared("models/llama-2-tiny-random.gguf"),
        "--out",
        &s(&model),
    ]);
    assert!(o.status.success());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spp"))
        .args([
            "generate",
            "--model",
            &s(&model),
            "--prompt",
            "Hello",
            "-n",
            "400",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone now (stdout dropped).
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 1),
        "{:?} {err}",
        out.status
    );
}
