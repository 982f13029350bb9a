//! The bad model directories, adapters and GGUF files of `bad_inputs.rs`.

use crate::*;

/// Broken model directories through every command that loads one, adapters, GGUF files.
pub(crate) fn cases(fx: &Fixture, add: &mut AddCase) {
    let m = s(&fx.model);
    let text = s(&fx.text);
    let adapter = s(&fx.adapter);
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
}
