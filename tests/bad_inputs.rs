//! Bad inputs against the real binary, as a table: broken model files, GGUF files, data files,
//! flags, recipes and output paths. Each case must exit non-zero with an `error:` message
//! holding an expected phrase, never panic, and leave its output location as it was (no
//! output, no `.NAME.partial-*` / `.NAME.old-*` leftovers).

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
    let m = s(&fx.model);
    let text = s(&fx.text);
    let data = s(&fx.data);
    let calib = s(&fx.calib);
    let adapter = s(&fx.adapter);
    let gguf = s(&fx.gguf);
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &str, args: &[&str], expect: &[&str], out: Option<&Path>| {
        cases.push(Case {
            name: name.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            expect: expect.iter().map(|e| e.to_string()).collect(),
            out: out.map(Path::to_path_buf),
        });
    };

    // ---- Model directories: every loading command sees the same checks. ----
    let st = std::fs::read(fx.model.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap());
    let mut models: Vec<(&str, String, Vec<&str>)> = vec![
        ("missing dir", s(&fx.p("nope")), vec!["does not exist"]),
        ("file as dir", text.clone(), vec!["is not a directory"]),
        (
            "no weights",
            fx.variant("noweights", |d| {
                std::fs::remove_file(d.join("model.safetensors")).unwrap()
            }),
            vec!["no *.safetensors weights found", "convert gguf"],
        ),
        (
            "no config",
            fx.variant("noconfig", |d| {
                std::fs::remove_file(d.join("config.json")).unwrap()
            }),
            vec!["config.json is missing"],
        ),
        (
            "config not JSON",
            fx.variant("cfgjson", |d| {
                std::fs::write(d.join("config.json"), "{ not json").unwrap()
            }),
            vec!["config.json", "invalid JSON"],
        ),
        (
            "config empty object",
            fx.variant("cfgempty", |d| {
                std::fs::write(d.join("config.json"), "{}").unwrap()
            }),
            vec!["not a valid LLaMA config.json", "hidden_size"],
        ),
        (
            "config wrong intermediate_size",
            fx.variant("cfginter", |d| {
                edit_config(d, |c| c["intermediate_size"] = 48.into())
            }),
            vec!["mlp.gate_proj.weight", "[32, 8]", "[48, 8]"],
        ),
        (
            "config wrong vocab_size",
            fx.variant("cfgvocab", |d| {
                edit_config(d, |c| c["vocab_size"] = 1000.into())
            }),
            vec!["embed_tokens.weight", "config.json implies"],
        ),
        (
            "config more layers than tensors",
            fx.variant("cfglayers", |d| {
                edit_config(d, |c| c["num_hidden_layers"] = 2.into())
            }),
            vec!["model.layers.1.", "is missing"],
        ),
        (
            "config heads do not divide hidden",
            fx.variant("cfgheads", |d| {
                edit_config(d, |c| c["num_attention_heads"] = 3.into())
            }),
            vec!["not divisible by num_attention_heads"],
        ),
        (
            "config kv heads do not divide heads",
            fx.variant("cfgkv", |d| {
                edit_config(d, |c| c["num_key_value_heads"] = 3.into())
            }),
            vec!["num_key_value_heads"],
        ),
        (
            "config zero layers",
            fx.variant("cfgzero", |d| {
                edit_config(d, |c| c["num_hidden_layers"] = 0.into())
            }),
            vec!["must be positive"],
        ),
        (
            "config other architecture",
            fx.variant("cfgarch", |d| {
                edit_config(d, |c| {
                    c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
                })
            }),
            vec!["unsupported architecture", "GPT2LMHeadModel"],
        ),
        (
            "config other activation",
            fx.variant("cfgact", |d| {
                edit_config(d, |c| c["hidden_act"] = "gelu".into())
            }),
            vec!["unsupported hidden_act"],
        ),
        (
            "config absurd max_position_embeddings",
            fx.variant("cfgrope", |d| {
                edit_config(d, |c| {
                    c["max_position_embeddings"] = 1_000_000_000_000u64.into()
                })
            }),
            vec!["max_position_embeddings 1000000000000", "GiB"],
        ),
        (
            "config absurd num_hidden_layers",
            fx.variant("cfgmanylayers", |d| {
                edit_config(d, |c| c["num_hidden_layers"] = 1_000_000_000_000u64.into())
            }),
            vec!["num_hidden_layers 1000000000000", "corrupt"],
        ),
        (
            "config negative rope_theta",
            fx.variant("cfgtheta", |d| {
                edit_config(d, |c| c["rope_theta"] = (-1.0).into())
            }),
            vec!["rope_theta -1", "> 0"],
        ),
        (
            "config negative rms_norm_eps",
            fx.variant("cfgeps", |d| {
                edit_config(d, |c| c["rms_norm_eps"] = (-1.0).into())
            }),
            vec!["rms_norm_eps -1"],
        ),
        (
            "config zero context",
            fx.variant("cfgctx", |d| {
                edit_config(d, |c| c["max_position_embeddings"] = 0.into())
            }),
            vec!["max_position_embeddings must be at least 1"],
        ),
        (
            "config zero rope factor",
            fx.variant("cfgfactor", |d| {
                edit_config(d, |c| {
                    c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 0.0})
                })
            }),
            vec!["rope_scaling.factor 0"],
        ),
        (
            "config negative size",
            fx.variant("cfgneg", |d| {
                edit_config(d, |c| c["hidden_size"] = (-8).into())
            }),
            vec!["not a valid LLaMA config.json"],
        ),
        (
            "safetensors truncated in half",
            fx.variant("sthalf", |d| {
                std::fs::write(d.join("model.safetensors"), &st[..st.len() / 2]).unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "safetensors 5 bytes",
            fx.variant("st5", |d| {
                std::fs::write(d.join("model.safetensors"), &st[..5]).unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "safetensors empty",
            fx.variant("st0", |d| {
                std::fs::write(d.join("model.safetensors"), b"").unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "safetensors header cut",
            fx.variant("sthdr", |d| {
                std::fs::write(
                    d.join("model.safetensors"),
                    &st[..8 + header_len as usize / 2],
                )
                .unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "safetensors header length huge",
            fx.variant("sthuge", |d| {
                std::fs::write(d.join("model.safetensors"), with_header_len(&st, u64::MAX)).unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "safetensors header garbage",
            fx.variant("stgarbage", |d| {
                let mut b = st.clone();
                for x in &mut b[8..8 + header_len as usize] {
                    *x = b'#';
                }
                std::fs::write(d.join("model.safetensors"), b).unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "safetensors random bytes",
            fx.variant("strandom", |d| {
                let b: Vec<u8> = (0..4096u32)
                    .map(|i| ((i * 2654435761u32) >> 24) as u8)
                    .collect();
                std::fs::write(d.join("model.safetensors"), b).unwrap()
            }),
            vec!["truncated or corrupt"],
        ),
        (
            "tensor missing",
            fx.variant("stmissing", |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.remove("model.layers.0.mlp.up_proj.weight");
                })
            }),
            vec!["model.layers.0.mlp.up_proj.weight", "is missing"],
        ),
        (
            "tensor transposed",
            fx.variant("sttrans", |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    let k = "model.layers.0.mlp.down_proj.weight".to_string();
                    let w = t[&k].t().unwrap().contiguous().unwrap();
                    t.insert(k, w);
                })
            }),
            vec!["down_proj.weight", "has shape [32, 8]"],
        ),
        (
            "integer tensor",
            fx.variant("stint", |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    let k = "model.norm.weight".to_string();
                    let w = t[&k].to_dtype(candle_core::DType::I64).unwrap();
                    t.insert(k, w);
                })
            }),
            vec!["model.norm.weight", "dtype"],
        ),
        (
            "index names a missing shard",
            fx.variant("idxmissing", |d| {
                std::fs::write(
                    d.join("model.safetensors.index.json"),
                    r#"{"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
                )
                .unwrap()
            }),
            vec!["model-00002-of-00002.safetensors", "missing"],
        ),
        (
            "index not JSON",
            fx.variant("idxjson", |d| {
                std::fs::write(d.join("model.safetensors.index.json"), "[").unwrap()
            }),
            vec!["model.safetensors.index.json", "invalid JSON"],
        ),
        (
            "index without weight_map",
            fx.variant("idxnomap", |d| {
                std::fs::write(d.join("model.safetensors.index.json"), "{}").unwrap()
            }),
            vec!["weight_map"],
        ),
    ];
    for (label, tensor, value) in [
        (
            "NaN in q_proj",
            "model.layers.0.self_attn.q_proj.weight",
            f32::NAN,
        ),
        (
            "NaN in down_proj",
            "model.layers.0.mlp.down_proj.weight",
            f32::NAN,
        ),
        (
            "inf in k_proj",
            "model.layers.0.self_attn.k_proj.weight",
            f32::INFINITY,
        ),
        (
            "-inf in embeddings",
            "model.embed_tokens.weight",
            f32::NEG_INFINITY,
        ),
        (
            "NaN in a norm",
            "model.layers.0.input_layernorm.weight",
            f32::NAN,
        ),
        ("NaN in lm_head", "lm_head.weight", f32::NAN),
    ] {
        let dir = fx.variant(&label.replace(' ', "_"), |d| {
            edit_tensors(&d.join("model.safetensors"), |t| {
                let w = poisoned(&t[tensor], value);
                t.insert(tensor.to_string(), w);
            })
        });
        models.push((label, dir, vec![tensor, "NaN or infinite"]));
    }
    for (label, dir, expect) in &models {
        add(
            &format!("inspect: {label}"),
            &["inspect", "--model", dir],
            expect,
            None,
        );
    }
    // The same models through the commands that write: nothing may appear at --out.
    for (i, (label, dir, expect)) in models.iter().enumerate() {
        let out = fx.p(&format!("pruned-{i}"));
        if i % 2 == 0 {
            add(
                &format!("prune: {label}"),
                &[
                    "prune",
                    "--model",
                    dir,
                    "--method",
                    "magnitude",
                    "--sparsity",
                    "0.5",
                    "--out",
                    &s(&out),
                ],
                expect,
                Some(&out),
            );
        } else {
            add(
                &format!("eval ppl: {label}"),
                &[
                    "eval", "ppl", "--model", dir, "--text", &text, "--seqlen", "16",
                ],
                expect,
                None,
            );
        }
    }
    let nan_q = s(&fx.p("NaN_in_q_proj"));
    let out = fx.p("merged-nanq");
    add(
        "merge onto NaN model",
        &[
            "merge",
            "--model",
            &nan_q,
            "--adapter",
            &adapter,
            "--out",
            &s(&out),
            "--force",
        ],
        &["q_proj", "NaN or infinite"],
        Some(&out),
    );

    // ---- Adapters. ----
    // A copy of the trained adapter whose tensors `f` changes.
    let adapter_variant =
        |name: &str, f: &dyn Fn(&mut std::collections::HashMap<String, Tensor>)| {
            let d = fx.p(name);
            std::fs::create_dir(&d).unwrap();
            for e in std::fs::read_dir(&fx.adapter).unwrap() {
                let e = e.unwrap();
                if e.path().is_file() {
                    std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
                }
            }
            edit_tensors(&d.join("adapter_model.safetensors"), f);
            s(&d)
        };
    let first_of = |t: &std::collections::HashMap<String, Tensor>, part: &str| {
        let mut k: Vec<&String> = t.keys().filter(|k| k.contains(part)).collect();
        k.sort();
        k[0].clone()
    };
    let nan_adapter = adapter_variant("nan-adapter", &|t| {
        let k = first_of(t, "spp_b");
        let w = poisoned(&t[&k], f32::NAN);
        t.insert(k, w);
    });
    // Finite, but the merged weight overflows: A[0, 0] = 10, b[0] = 3e38.
    let huge_adapter = adapter_variant("huge-adapter", &|t| {
        let (ka, kb) = (first_of(t, "spp_A"), first_of(t, "spp_b"));
        assert_eq!(ka.replace("spp_A", "spp_b"), kb);
        let (a, b) = (poisoned(&t[&ka], 10.0), poisoned(&t[&kb], 3e38));
        t.insert(ka, a);
        t.insert(kb, b);
    });
    for (label, dir, expect) in [
        (
            "merge of a NaN adapter",
            &nan_adapter,
            vec!["spp_b", "NaN or infinite", "adapter is corrupt"],
        ),
        (
            "merge of an overflowing adapter",
            &huge_adapter,
            vec!["merged weight holds NaN or infinite", "nothing was written"],
        ),
    ] {
        let out = fx.p(&format!("merged-{}", label.len()));
        add(
            label,
            &["merge", "--model", &m, "--adapter", dir, "--out", &s(&out)],
            &expect,
            Some(&out),
        );
    }
    add(
        "eval with a NaN adapter",
        &[
            "eval",
            "ppl",
            "--model",
            &m,
            "--adapter",
            &nan_adapter,
            "--text",
            &text,
            "--seqlen",
            "16",
        ],
        &["spp_b", "NaN or infinite"],
        None,
    );
    let out = fx.p("merged-x");
    add(
        "merge: adapter missing",
        &[
            "merge",
            "--model",
            &m,
            "--adapter",
            &s(&fx.p("noadapter")),
            "--out",
            &s(&out),
        ],
        &["noadapter"],
        Some(&out),
    );
    add(
        "merge: a model dir as adapter",
        &["merge", "--model", &m, "--adapter", &m, "--out", &s(&out)],
        &["adapter_config.json"],
        Some(&out),
    );

    // ---- GGUF files. ----
    let g = std::fs::read(&fx.gguf).unwrap();
    let ggufs: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not a readable GGUF"),
        ("magic only", b"GGUF".to_vec(), "not a readable GGUF"),
        (
            "wrong magic",
            [b"GGML".as_slice(), &g[4..]].concat(),
            "not a readable GGUF",
        ),
        (
            "cut after header fields",
            g[..24].to_vec(),
            "not a readable GGUF",
        ),
        (
            "cut at 1/10",
            g[..g.len() / 10].to_vec(),
            "truncated or corrupt",
        ),
        (
            "cut at 1/3",
            g[..g.len() / 3].to_vec(),
            "truncated or corrupt",
        ),
        (
            "cut 1 byte short",
            g[..g.len() - 1].to_vec(),
            "remaining in file",
        ),
        (
            "garbage",
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a readable GGUF",
        ),
        (
            "huge tensor count",
            [&g[..8], u64::MAX.to_le_bytes().as_slice(), &g[16..]].concat(),
            "not a readable GGUF",
        ),
        (
            "huge metadata count",
            [&g[..16], u64::MAX.to_le_bytes().as_slice(), &g[24..]].concat(),
            "not a readable GGUF",
        ),
        (
            "huge first key length",
            [&g[..24], u64::MAX.to_le_bytes().as_slice(), &g[32..]].concat(),
            "not a readable GGUF",
        ),
        (
            "version 1",
            [&g[..4], 1u32.to_le_bytes().as_slice(), &g[8..]].concat(),
            "not a readable GGUF",
        ),
        (
            "a NaN token score",
            nan_score(&g),
            "tokenizer.ggml.scores[0]",
        ),
    ];
    for (i, (label, bytes, expect)) in ggufs.into_iter().enumerate() {
        let f = fx.write(&format!("bad-{i}.gguf"), bytes);
        let out = fx.p(&format!("from-gguf-{i}"));
        add(
            &format!("gguf: {label}"),
            &["convert", "gguf", &f, "--out", &s(&out)],
            &["bad-", expect],
            Some(&out),
        );
    }
    let out = fx.p("from-missing");
    add(
        "gguf: missing file",
        &[
            "convert",
            "gguf",
            &s(&fx.p("missing.gguf")),
            "--out",
            &s(&out),
        ],
        &["missing.gguf"],
        Some(&out),
    );
    add(
        "gguf: a directory",
        &["convert", "gguf", &m, "--out", &s(&out)],
        &["tiny"],
        Some(&out),
    );

    // ---- Data files. ----
    let d = |name: &str, body: &str| fx.write(name, body);
    let train_out = fx.p("train-out");
    let train = |data: &str| -> Vec<String> {
        [
            "train",
            "--model",
            &m,
            "--data",
            data,
            "--out",
            &s(&train_out),
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--val-size",
            "2",
            "--r",
            "4",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let mut train_case = |name: &str, data: String, expect: &[&str]| {
        let args = train(&data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(name, &args, expect, Some(&train_out));
    };
    train_case(
        "train: data missing",
        s(&fx.p("nodata.json")),
        &["nodata.json"],
    );
    train_case("train: data empty", d("empty.json", ""), &["empty.json"]);
    train_case(
        "train: data not JSON",
        d("bad.json", "[{"),
        &["bad.json", "invalid JSON"],
    );
    train_case(
        "train: record without output",
        d("noout.json", r#"[{"instruction": "a", "input": ""}]"#),
        &["noout.json", "output"],
    );
    train_case(
        "train: output not a string",
        d(
            "numout.json",
            r#"[{"instruction": "a", "input": "", "output": 3}]"#,
        ),
        &["numout.json", "must be a string"],
    );
    train_case(
        "train: JSONL bad line",
        d("badline.jsonl", "{\"text\": \"a b c\"}\n{oops\n"),
        &["badline.jsonl", "invalid JSON"],
    );
    train_case(
        "train: empty array",
        d("none.json", "[]"),
        &["none.json", "no records"],
    );
    train_case(
        "train: too few examples for the validation split",
        d(
            "two.json",
            r#"[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "", "output": "d"}]"#,
        ),
        &["--val-size"],
    );
    train_case("train: data is a directory", m.clone(), &["tiny"]);

    let ppl = |name: &str, file: String, expect: &[&str], add: &mut AddCase| {
        add(
            name,
            &[
                "eval", "ppl", "--model", &m, "--text", &file, "--seqlen", "16",
            ],
            expect,
            None,
        );
    };
    ppl(
        "ppl: text missing",
        s(&fx.p("notext.txt")),
        &["notext.txt"],
        &mut add,
    );
    ppl(
        "ppl: text empty",
        d("empty.txt", ""),
        &["fewer than one window"],
        &mut add,
    );
    ppl(
        "ppl: text too short",
        d("short.txt", "tiny"),
        &["fewer than one window"],
        &mut add,
    );
    ppl(
        "ppl: JSONL without text",
        d("notext.jsonl", "{\"body\": \"x\"}\n"),
        &["notext.jsonl:1", "\"text\""],
        &mut add,
    );
    ppl("ppl: text is a directory", m.clone(), &["tiny"], &mut add);

    let prune_out = fx.p("prune-out");
    let prune_calib = |name: &str, file: String, expect: &[&str], add: &mut AddCase| {
        add(
            name,
            &[
                "prune",
                "--model",
                &m,
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--calib",
                &file,
                "--nsamples",
                "2",
                "--seqlen",
                "16",
                "--out",
                &s(&prune_out),
            ],
            expect,
            Some(&prune_out),
        );
    };
    prune_calib(
        "prune: calib missing",
        s(&fx.p("nocalib.jsonl")),
        &["nocalib.jsonl"],
        &mut add,
    );
    prune_calib(
        "prune: calib JSONL without text",
        d("calibnotext.jsonl", "{\"body\": 1}\n"),
        &["calibnotext.jsonl:1", "\"text\""],
        &mut add,
    );
    prune_calib(
        "prune: calib empty",
        d("calibempty.jsonl", ""),
        &["calib"],
        &mut add,
    );

    let tasks_out = fx.p("tasks-out.json");
    let eval_dir = fx.p("evaldata");
    std::fs::create_dir(&eval_dir).unwrap();
    std::fs::write(
        eval_dir.join("rte_validation.jsonl"),
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 7}\n",
    )
    .unwrap();
    std::fs::write(eval_dir.join("boolq_validation.jsonl"), "{\"question\": \n").unwrap();
    for (name, task, dir, expect) in [
        (
            "tasks: data dir missing",
            "rte",
            s(&fx.p("noeval")),
            vec!["rte_validation.jsonl", "missing"],
        ),
        (
            "tasks: label out of range",
            "rte",
            s(&eval_dir),
            vec!["rte_validation.jsonl:1", "out of range"],
        ),
        (
            "tasks: bad JSON line",
            "boolq",
            s(&eval_dir),
            vec!["boolq_validation.jsonl:1"],
        ),
        (
            "tasks: unknown task",
            "hellaswg",
            shared("eval"),
            vec!["hellaswg", "hellaswag"],
        ),
    ] {
        add(
            name,
            &[
                "eval",
                "tasks",
                "--model",
                &m,
                "--tasks",
                task,
                "--data-dir",
                &dir,
                "--out",
                &s(&tasks_out),
            ],
            &expect,
            Some(&tasks_out),
        );
    }

    // ---- Flags: ranges checked where they enter. ----
    let tr = |extra: &[&str]| -> Vec<String> { with_flags(train(&data), extra) };
    for (flag, value, expect) in [
        ("--lr", "-1", "learning rate"),
        ("--lr", "0", "learning rate"),
        ("--lr", "nan", "not a finite number"),
        ("--lr", "inf", "not a finite number"),
        ("--lr", "fast", "not a number"),
        ("--dropout", "1.5", "[0, 1)"),
        ("--dropout", "-0.1", "[0, 1)"),
        ("--dropout", "1", "[0, 1)"),
        ("--max-steps", "0", "at least one step"),
        ("--max-steps", "-3", "not a whole number"),
        ("--epochs", "0", "at least one epoch"),
        ("--batch-size", "0", "at least 1"),
        ("--micro-batch-size", "0", "at least 1"),
        ("--batch-size", "6", "multiple of --micro-batch-size"),
        ("--cutoff", "0", "at least 1"),
        (
            "--cutoff",
            "5000",
            "exceeds the model's max_position_embeddings 4096",
        ),
        ("--warmup-ratio", "1.5", "[0, 1]"),
        ("--weight-decay", "-1", "0 or more"),
        ("--scale", "-2", "greater than 0"),
        ("--lora-alpha", "0", "greater than 0"),
        ("--r", "0", "at least 1"),
        ("--r", "3", "not divisible by the SPP rows r = 3"),
        ("--eval-every", "0", "at least 1"),
        ("--save-every", "0", "at least 1"),
        ("--max-grad-norm", "0", "greater than 0"),
        ("--schedule", "step", "linear or cosine"),
        ("--method", "qlora", "qlora"),
        ("--targets", "q,xyz", "unknown target"),
        ("--seed", "-1", "'-1'"),
        ("--val-size", "100", "--val-size 100"),
        ("--train-on-inputs", "maybe", "maybe"),
    ] {
        let args = tr(&[flag, value]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(
            &format!("train {flag} {value}"),
            &args,
            &[expect],
            Some(&train_out),
        );
    }
    for (flag, value, expect) in [
        ("--nsamples", "0", "at least 1"),
        ("--nsamples", "100000000", "at most 1000000"),
        ("--seqlen", "1", "at least 2"),
        ("--seqlen", "100000", "max_position_embeddings"),
        ("--blocksize", "0", "at least 1"),
        ("--percdamp", "-1", "[0, 1]"),
        ("--percdamp", "nan", "not a finite number"),
        ("--sparsity", "1.5", "1.5"),
        ("--sparsity", "5:4", "5:4"),
        ("--sparsity", "half", "half"),
        ("--method", "random", "random"),
        ("--targets", "", "no targets"),
        ("--dtype", "f8", "unknown dtype"),
        ("--device", "tpu", "tpu"),
    ] {
        let po = s(&prune_out);
        let base = [
            "prune",
            "--model",
            &m,
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            &calib,
            "--nsamples",
            "2",
            "--seqlen",
            "16",
            "--out",
            &po,
        ];
        let args = with_flags(base.iter().map(|x| x.to_string()).collect(), &[flag, value]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(
            &format!("prune {flag} {value}"),
            &args,
            &[expect],
            Some(&prune_out),
        );
    }
    add(
        "prune whose calibration cannot fit in memory",
        &[
            "prune",
            "--model",
            &m,
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            &calib,
            "--nsamples",
            "1000000",
            "--seqlen",
            "4096",
            "--out",
            &s(&prune_out),
        ],
        &["this machine has", "--nsamples"],
        Some(&prune_out),
    );
    add(
        "prune with an adapter",
        &[
            "prune",
            "--model",
            &m,
            "--adapter",
            &adapter,
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--out",
            &s(&prune_out),
        ],
        &["merge the adapter first"],
        Some(&prune_out),
    );
    for (extra, expect) in [
        (vec!["--max-windows", "0"], "at least one window"),
        (vec!["--seqlen", "0"], "at least 1"),
        (vec!["--seqlen", "1"], "at least 2"),
        (vec!["--seqlen", "100000"], "max_position_embeddings"),
    ] {
        let mut args = vec!["eval", "ppl", "--model", &m, "--text", &text];
        args.extend(extra.iter().copied());
        add(&format!("ppl {}", extra.join(" ")), &args, &[expect], None);
    }
    for (extra, expect) in [
        (vec!["--limit", "0"], "at least 1"),
        (vec!["--batch-size", "0"], "at least 1"),
        (vec!["--batch-tokens", "0"], "at least 1"),
    ] {
        let mut args = vec!["eval", "tasks", "--model", &m, "--tasks", "rte", "--out"];
        let to = s(&tasks_out);
        args.push(&to);
        args.extend(extra.iter().copied());
        add(
            &format!("tasks {}", extra.join(" ")),
            &args,
            &[expect],
            Some(&tasks_out),
        );
    }
    for (extra, expect) in [
        (vec!["--temperature", "-1"], "0 or more"),
        (vec!["--top-p", "0"], "(0, 1]"),
        (vec!["--top-p", "1.5"], "(0, 1]"),
        (vec!["-n", "many"], "many"),
    ] {
        let mut args = vec!["generate", "--model", &m, "--prompt", "Hi"];
        args.extend(extra.iter().copied());
        add(
            &format!("generate {}", extra.join(" ")),
            &args,
            &[expect],
            None,
        );
    }
    add(
        "generate without prompt",
        &["generate", "--model", &m],
        &["--prompt"],
        None,
    );

    // ---- Output paths. ----
    let existing_file = fx.p("existing.json");
    std::fs::write(&existing_file, "{\"keep\": true}").unwrap();
    let existing_dir = fx.p("existing-dir");
    std::fs::create_dir(&existing_dir).unwrap();
    std::fs::write(existing_dir.join("keep.txt"), "keep").unwrap();
    let gguf_copy = fx.p("copy.gguf");
    std::fs::copy(&fx.gguf, &gguf_copy).unwrap();
    let holder = fx.p("holder");
    std::fs::create_dir(&holder).unwrap();
    let held_gguf = holder.join("held.gguf");
    std::fs::copy(&fx.gguf, &held_gguf).unwrap();
    let ef = s(&existing_file);
    let ed = s(&existing_dir);
    let prune = |out: &str, force: bool| -> Vec<String> {
        let mut v: Vec<String> = [
            "prune",
            "--model",
            &m,
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--out",
            out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if force {
            v.push("--force".into());
        }
        v
    };
    let merge = |out: &str, force: bool| -> Vec<String> {
        let mut v: Vec<String> = ["merge", "--model", &m, "--adapter", &adapter, "--out", out]
            .iter()
            .map(|x| x.to_string())
            .collect();
        if force {
            v.push("--force".into());
        }
        v
    };
    let mut paths: Vec<(&str, Vec<String>, &str, PathBuf)> = vec![
        (
            "convert onto its own gguf",
            vec![
                "convert".into(),
                "gguf".into(),
                s(&gguf_copy),
                "--out".into(),
                s(&gguf_copy),
                "--force".into(),
            ],
            "is a file",
            gguf_copy.clone(),
        ),
        (
            "convert onto an existing file",
            vec![
                "convert".into(),
                "gguf".into(),
                gguf.clone(),
                "--out".into(),
                ef.clone(),
            ],
            "is a file",
            existing_file.clone(),
        ),
        (
            "convert onto an existing dir",
            vec![
                "convert".into(),
                "gguf".into(),
                gguf.clone(),
                "--out".into(),
                ed.clone(),
            ],
            "already exists",
            existing_dir.clone(),
        ),
        (
            "convert into the dir holding the gguf",
            vec![
                "convert".into(),
                "gguf".into(),
                s(&held_gguf),
                "--out".into(),
                s(&holder),
                "--force".into(),
            ],
            "contains the input",
            holder.clone(),
        ),
        (
            "prune onto its model",
            prune(&m, true),
            "is the input",
            fx.model.clone(),
        ),
        (
            "prune inside its model",
            prune(&s(&fx.model.join("sub")), true),
            "inside the input",
            fx.model.clone(),
        ),
        (
            "prune onto the model's parent",
            prune(&s(&fx.root), true),
            "contains the input",
            fx.model.clone(),
        ),
        (
            "prune onto a file",
            prune(&ef, true),
            "is a file",
            existing_file.clone(),
        ),
        (
            "prune onto an existing dir",
            prune(&ed, false),
            "already exists",
            existing_dir.clone(),
        ),
        (
            "merge onto its model",
            merge(&m, true),
            "is the input",
            fx.model.clone(),
        ),
        (
            "merge onto its adapter",
            merge(&adapter, true),
            "is the input",
            fx.adapter.clone(),
        ),
        (
            "merge inside its adapter",
            merge(&s(&fx.adapter.join("m")), true),
            "inside the input",
            fx.adapter.clone(),
        ),
        (
            "merge onto a file",
            merge(&ef, true),
            "is a file",
            existing_file.clone(),
        ),
        (
            "merge onto an existing dir",
            merge(&ed, false),
            "already exists",
            existing_dir.clone(),
        ),
        (
            "train into the model dir",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = m.clone();
                v
            },
            "is the input",
            fx.model.clone(),
        ),
        (
            "train into a non-empty dir",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = ed.clone();
                v
            },
            "not empty",
            existing_dir.clone(),
        ),
        (
            "train into a file",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = ef.clone();
                v
            },
            "is a file",
            existing_file.clone(),
        ),
        (
            "train again into a finished run",
            {
                let mut v = tr(&[]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = adapter.clone();
                v
            },
            "--resume",
            fx.adapter.clone(),
        ),
        (
            "train --resume without a checkpoint",
            {
                let mut v = tr(&["--resume"]);
                let i = v.iter().position(|x| x == "--out").unwrap();
                v[i + 1] = s(&fx.p("fresh"));
                v
            },
            "no checkpoint",
            fx.p("fresh"),
        ),
    ];
    for (label, out, force, expect, watched) in [
        (
            "tasks onto an existing file",
            ef.clone(),
            false,
            "already exists",
            existing_file.clone(),
        ),
        (
            "tasks onto a directory",
            ed.clone(),
            true,
            "is a directory",
            existing_dir.clone(),
        ),
        (
            "tasks onto the model's weights",
            s(&fx.model.join("model.safetensors")),
            true,
            "inside the input",
            fx.model.clone(),
        ),
        (
            "tasks into the model dir",
            s(&fx.model.join("tasks.json")),
            false,
            "inside the input",
            fx.model.clone(),
        ),
    ] {
        let mut v: Vec<String> = [
            "eval",
            "tasks",
            "--model",
            &m,
            "--tasks",
            "rte",
            "--limit",
            "1",
            "--data-dir",
            &shared("eval"),
            "--out",
            &out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if force {
            v.push("--force".into());
        }
        paths.push((label, v, expect, watched));
    }
    for (label, args, expect, watched) in &paths {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        add(label, &args, &[*expect], Some(watched));
    }

    // ---- Recipes: every problem at once, before anything runs. ----
    let good = format!(
        "name = \"r\"\nmodel = {m:?}\n[train]\ndata = {data:?}\nmax_steps = 1\nbatch_size = 4\nval_size = 2\n"
    );
    let recipes: Vec<(&str, String, Vec<&str>)> = vec![
        ("invalid TOML", "name = ".into(), vec!["invalid TOML"]),
        ("no model", "name = \"x\"\n".into(), vec!["needs model"]),
        (
            "model missing",
            "model = \"/nonexistent/model\"\n".into(),
            vec!["no config.json"],
        ),
        (
            "model not a string",
            "model = 3\n".into(),
            vec!["needs model"],
        ),
        ("unknown top key", good.clone(), vec![]),
        (
            "max_steps a word",
            good.replace("max_steps = 1", "max_steps = \"two\""),
            vec!["train.max_steps = \"two\"", "whole number"],
        ),
        (
            "r negative",
            format!("{good}r = -4\n"),
            vec!["train.r = -4"],
        ),
        (
            "r does not divide",
            format!("{good}r = 3\n"),
            vec!["train.r = 3", "does not divide"],
        ),
        (
            "lr negative",
            format!("{good}lr = -1.0\n"),
            vec!["train.lr = -1.0", "learning rate"],
        ),
        (
            "dropout 2",
            format!("{good}dropout = 2\n"),
            vec!["train.dropout = 2", "[0, 1)"],
        ),
        (
            "epochs 0",
            format!("{good}epochs = 0\n"),
            vec!["train.epochs = 0"],
        ),
        (
            "schedule unknown",
            format!("{good}schedule = \"step\"\n"),
            vec!["linear or cosine"],
        ),
        (
            "switch not a bool",
            format!("{good}grad_checkpoint = \"yes\"\n"),
            vec!["train.grad_checkpoint", "true or false"],
        ),
        (
            "data missing",
            good.replace(&format!("data = {data:?}"), "data = \"/nonexistent.json\""),
            vec!["train.data", "does not exist"],
        ),
        (
            "train method unknown",
            format!("{good}method = \"qlora\"\n"),
            vec!["train.method", "qlora"],
        ),
        (
            "name escapes",
            good.replace("name = \"r\"", "name = \"../escape\""),
            vec!["name = \"../escape\"", "one plain name"],
        ),
        (
            "name with a slash",
            good.replace("name = \"r\"", "name = \"a/b\""),
            vec!["one plain name"],
        ),
        (
            "name hidden",
            good.replace("name = \"r\"", "name = \".hidden\""),
            vec!["one plain name"],
        ),
        (
            "prune not a table",
            format!("prune = 3\n{good}"),
            vec!["[prune] must be a table"],
        ),
        (
            "prune without sparsity",
            format!("{good}[prune]\nmethod = \"wanda\"\n"),
            vec!["needs method and sparsity"],
        ),
        (
            "prune sparsity unknown",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = \"lots\"\n"),
            vec!["prune.sparsity"],
        ),
        (
            "prune N:M against widths",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = \"3:16\"\n"),
            vec!["3:16"],
        ),
        (
            "prune nsamples 0",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = 0.5\nnsamples = 0\n"),
            vec!["prune.nsamples = 0"],
        ),
        (
            "prune percdamp negative",
            format!("{good}[prune]\nmethod = \"wanda\"\nsparsity = 0.5\npercdamp = -0.5\n"),
            vec!["prune.percdamp"],
        ),
        (
            "eval tasks unknown",
            format!("{good}[eval]\ntasks = \"mmlu\"\n"),
            vec!["eval.tasks", "mmlu"],
        ),
        (
            "eval limit without tasks",
            format!("{good}[eval]\nlimit = 3\n"),
            vec!["without eval.tasks"],
        ),
        (
            "eval max_windows 0",
            format!("{good}[eval]\nppl_text = {text:?}\nmax_windows = 0\n"),
            vec!["eval.max_windows = 0"],
        ),
        (
            "eval seqlen a word",
            format!("{good}[eval]\nppl_text = {text:?}\nseqlen = \"long\"\n"),
            vec!["eval.seqlen"],
        ),
        (
            "dtype unknown",
            format!("dtype = \"f8\"\n{good}"),
            vec!["dtype", "f8"],
        ),
        (
            "many problems at once",
            format!("bogus = 1\n{good}max_step = 2\nlr = 0\n")
                .replace("max_steps = 1", "max_steps = \"two\""),
            vec![
                "bogus",
                "train.max_step (did you mean train.max_steps?)",
                "train.lr = 0",
                "train.max_steps = \"two\"",
            ],
        ),
    ];
    for (i, (label, body, expect)) in recipes.into_iter().enumerate() {
        let body = if label == "unknown top key" {
            format!("colour = \"red\"\n{body}")
        } else {
            body
        };
        let expect = if label == "unknown top key" {
            vec!["unknown recipe keys: colour"]
        } else {
            expect
        };
        let f = fx.write(&format!("recipe-{i}.toml"), body);
        let out = fx.p(&format!("run-{i}"));
        add(
            &format!("recipe: {label}"),
            &["run", &f, "--out", &s(&out)],
            &expect,
            Some(&out),
        );
    }
    let good_recipe = fx.write("good.toml", &good);
    add(
        "recipe: missing file",
        &[
            "run",
            &s(&fx.p("none.toml")),
            "--out",
            &s(&fx.p("run-none")),
        ],
        &["none.toml"],
        Some(&fx.p("run-none")),
    );
    add(
        "run: --out is a file",
        &["run", &good_recipe, "--out", &ef],
        &["is a file"],
        Some(&existing_file),
    );
    add(
        "run: --out holds something else",
        &["run", &good_recipe, "--out", &ed],
        &["already holds a run", "--resume"],
        Some(&existing_dir),
    );
    add(
        "run: --resume on a directory that is no run",
        &["run", &good_recipe, "--out", &ed, "--resume"],
        &["not a run directory"],
        Some(&existing_dir),
    );
    let locked = fx.p("locked-run");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("run.json"), "{}").unwrap();
    std::fs::write(locked.join(".spp-run.lock"), std::process::id().to_string()).unwrap();
    add(
        "run: directory in use by a live run",
        &["run", &good_recipe, "--out", &s(&locked), "--resume"],
        &[
            "in use by another spp run",
            &format!("pid {}", std::process::id()),
        ],
        Some(&locked),
    );

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
