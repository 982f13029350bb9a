//! `spp eval tasks`: request strings equal lm-evaluation-harness's (golden file written by
//! scripts/golden/make_task_golden.py with lm_eval from PyPI), the packed and prefix-shared
//! scoring equals a one-request-at-a-time reference on a real (tiny, random) model with the
//! LLaMA-2 tokenizer, and the metrics follow the harness's definitions.

mod common;

use spp::eval::tasks::{self, Doc};
use spp::eval::zeroshot::{self, Encoded, ScoreOptions};
use spp::model::{load_model, DTypeChoice, Llama};
use spp::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn eval_dir() -> PathBuf {
    root().join("../shared/data/eval")
}

/// The 1-layer LLaMA-2 GGUF of ../shared/data converted to a model directory (f32).
fn tiny(tmp: &Path, dev: &candle_core::Device) -> (Llama, Tokenizer) {
    let dir = tmp.join("tiny");
    spp::gguf::convert(
        &root().join("../shared/data/models/llama-2-tiny-random.gguf"),
        &dir,
        candle_core::DType::F32,
        false,
        spp::model::checkpoint::DEFAULT_MAX_SHARD_BYTES,
    )
    .unwrap();
    let model = load_model(&dir, DTypeChoice::F32, dev).unwrap().model;
    let tok = Tokenizer::load(&dir, &model.cfg).unwrap();
    (model, tok)
}

/// A few documents of every task shape: shared contexts with long and one-token continuations,
/// WinoGrande's shared continuation.
fn some_docs() -> Vec<Doc> {
    ["hellaswag", "boolq", "winogrande", "arc_challenge"]
        .iter()
        .flat_map(|t| tasks::load(t, &eval_dir(), Some(3)).unwrap().docs)
        .collect()
}

#[test]
fn request_strings_equal_the_harness() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/task_requests.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for (name, entries) in golden["tasks"].as_object().unwrap() {
        for e in entries.as_array().unwrap() {
            let index = e["index"].as_u64().unwrap() as usize;
            let task = tasks::load(name, &eval_dir(), Some(index + 1)).unwrap();
            let doc = &task.docs[index];
            let want: Vec<(String, String)> =
                serde_json::from_value(e["requests"].clone()).unwrap();
            assert_eq!(doc.requests, want, "{name} doc {index}");
            let choices: Vec<String> = serde_json::from_value(e["choices"].clone()).unwrap();
            assert_eq!(doc.choices, choices, "{name} doc {index}");
            assert_eq!(
                doc.gold as u64,
                e["gold"].as_u64().unwrap(),
                "{name} doc {index}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 14, "two documents for each of the seven tasks");
}

/// Every packing of `encoded` (per document, shared or not, several batch sizes) gives the
/// one-request-at-a-time reference's scores; sharing computes fewer tokens.
/// Packed and shared scores, with the fused CPU attention and with the composed reference,
/// against one request at a time through the reference attention.
fn packings_match_reference(model: &Llama, encoded: &[Vec<Encoded>]) {
    let mut slow = model.clone();
    slow.set_reference_attention(true);
    let reference: Vec<Vec<f64>> = encoded
        .iter()
        .map(|d| {
            d.iter()
                .map(|r| zeroshot::loglikelihood_reference(&slow, r).unwrap())
                .collect()
        })
        .collect();
    let mut tokens = Vec::new();
    // (documents, tokens per pass): a token budget of 1 runs every document alone, 250 a few.
    for ((batch_docs, batch_tokens), share, fused) in [
        ((1, 10_000), false, true),
        ((1, 10_000), true, true),
        ((2, 10_000), true, true),
        ((5, 10_000), false, true),
        ((12, 10_000), true, true),
        ((12, 1), true, true),
        ((12, 250), false, true),
        ((2, 10_000), true, false),
        ((5, 10_000), false, false),
    ] {
        let opts = ScoreOptions {
            batch_docs,
            batch_tokens,
            share,
        };
        let m = if fused { model } else { &slow };
        let mut passes = Vec::new();
        let (lls, n) =
            zeroshot::loglikelihoods(m, encoded, opts, &mut |done, _| passes.push(done)).unwrap();
        // Every document once, in order, and no pass over its limits (one document may exceed
        // the token budget alone).
        assert_eq!(passes.last(), Some(&encoded.len()));
        let sizes: Vec<usize> = std::iter::once(0)
            .chain(passes.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        assert!(
            sizes.iter().all(|&k| k >= 1 && k <= batch_docs),
            "{sizes:?}"
        );
        if batch_tokens == 1 {
            assert_eq!(passes.len(), encoded.len());
        }
        for (d, (got, want)) in lls.iter().zip(&reference).enumerate() {
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "doc {d} batch {batch_docs} share {share} fused {fused}: {g} vs reference {w}"
                );
            }
        }
        tokens.push((share, n));
    }
    let unshared = tokens.iter().find(|t| !t.0).unwrap().1;
    let shared = tokens.iter().find(|t| t.0).unwrap().1;
    assert!(shared < unshared, "shared {shared} tokens vs {unshared}");
}

/// The passes of several tasks run together (concurrently on a 2-thread CPU pool) give each
/// task the scores it gets alone, and progress comes per task, in order.
#[test]
fn tasks_scored_together_equal_each_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tok) = tiny(tmp.path(), &candle_core::Device::Cpu);
    let max = model.cfg.max_position_embeddings;
    let tasks: Vec<Vec<Vec<Encoded>>> = ["boolq", "hellaswag", "winogrande"]
        .iter()
        .map(|t| {
            let docs = tasks::load(t, &eval_dir(), Some(7)).unwrap().docs;
            zeroshot::encode_docs(&tok, &docs, max).unwrap()
        })
        .collect();
    let slices: Vec<&[Vec<Encoded>]> = tasks.iter().map(Vec::as_slice).collect();
    let opts = ScoreOptions {
        batch_docs: 3,
        batch_tokens: 4096,
        share: true,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut events = Vec::new();
    let together = pool
        .install(|| {
            zeroshot::score_tasks(&model, &slices, opts, &mut |t, done, total| {
                events.push((t, done, total))
            })
        })
        .unwrap();
    // Per task, in task order: three passes (the fewest for 7 documents, 3 at most per pass).
    assert_eq!(events.len(), 9, "{events:?}");
    for (t, passes) in events.chunks(3).enumerate() {
        let mut last = 0;
        for &(task, done, total) in passes {
            assert_eq!((task, total), (t, 7), "{events:?}");
            assert!((1..=3).contains(&(done - last)), "{events:?}");
            last = done;
        }
        assert_eq!(last, 7, "{events:?}");
    }
    for (docs, got) in tasks.iter().zip(&together) {
        let (alone, tokens) = zeroshot::loglikelihoods(&model, docs, opts, &mut |_, _| {}).unwrap();
        assert_eq!(got.loglikelihoods, alone);
        assert_eq!(got.tokens, tokens);
        assert!(got.seconds > 0.0);
    }
}

#[test]
fn packed_and_shared_scores_equal_the_reference() {
    for dev in common::devices() {
        packed_scores_body(&dev);
    }
}

fn packed_scores_body(dev: &candle_core::Device) {
    // Real task requests through the real tokenizer (1-layer random model).
    let tmp = tempfile::tempdir().unwrap();
    let (model, tok) = tiny(tmp.path(), dev);
    let encoded =
        zeroshot::encode_docs(&tok, &some_docs(), model.cfg.max_position_embeddings).unwrap();
    let one_token = encoded
        .iter()
        .any(|d| d.iter().all(|r| r.continuation.len() == 1));
    let long = encoded
        .iter()
        .any(|d| d.iter().any(|r| r.continuation.len() > 4));
    assert!(
        one_token && long,
        "one-token and long continuations are covered"
    );
    packings_match_reference(&model, &encoded);

    // A 2-layer model whose attention matters, with contexts longer than an attention chunk
    // (256 queries in the reference, 32 in the fused kernel), so that packed rows straddle chunks.
    let model = common::tiny_model(false, true, dev);
    let vocab = model.cfg.vocab_size;
    let encoded: Vec<Vec<Encoded>> = [(7, 3, 1), (300, 4, 9), (40, 2, 20), (1, 4, 2), (130, 1, 5)]
        .iter()
        .enumerate()
        .map(|(d, &(ctx_len, choices, cont_len))| {
            let context = common::ids(ctx_len, vocab, d as u64);
            (0..choices)
                .map(|c| Encoded {
                    context: context.clone(),
                    continuation: common::ids(cont_len + c, vocab, 100 + (d * 10 + c) as u64),
                    truncated: false,
                })
                .collect()
        })
        .collect();
    packings_match_reference(&model, &encoded);
}

#[test]
fn long_requests_are_cut_from_the_left_like_the_harness() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tok) = tiny(tmp.path(), &candle_core::Device::Cpu);
    let doc = &tasks::load("boolq", &eval_dir(), Some(1)).unwrap().docs[0];
    let (ctx, cont) = &doc.requests[1];
    let full = zeroshot::encode_request(&tok, ctx, cont, 100_000).unwrap();
    assert!(!full.truncated);
    let cut = zeroshot::encode_request(&tok, ctx, cont, 32).unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.context.len() + cut.continuation.len(), 33);
    assert_eq!(cut.continuation, full.continuation);
    assert!(full.context.ends_with(&cut.context));
    let mut small = model.clone();
    small.cfg.max_position_embeddings = 32;
    let task = tasks::Task {
        name: "boolq",
        file: PathBuf::new(),
        docs: vec![doc.clone()],
    };
    let opts = ScoreOptions {
        batch_docs: 4,
        batch_tokens: 4096,
        share: true,
    };
    let r = &zeroshot::evaluate(
        zeroshot::Model::Resident(&small),
        &tok,
        &[task],
        opts,
        &mut |_, _, _| {},
    )
    .unwrap()[0];
    assert_eq!((r.truncated, r.requests), (2, 2));
    let want = zeroshot::loglikelihood_reference(&model, &cut).unwrap();
    assert!((r.docs[0].loglikelihoods[1] - want).abs() < 1e-4);
    // A continuation that cannot fit is an error, not a wrong number.
    let e = zeroshot::encode_request(&tok, ctx, &" yes".repeat(40), 32).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn acc_norm_divides_by_characters_and_ties_go_to_the_first() {
    let doc = Doc {
        index: 0,
        requests: vec![],
        // 1 character (2 bytes) and 2 characters: per character −10 vs −5.25, per byte −5 vs −5.25.
        choices: vec!["é".into(), "ab".into()],
        gold: 1,
    };
    let r = zeroshot::score_doc(&doc, vec![-10.0, -10.5]);
    assert_eq!((r.pred, r.pred_norm), (0, 1));
    let r = zeroshot::score_doc(&doc, vec![-3.0, -3.0]);
    assert_eq!(r.pred, 0, "numpy's argmax takes the first maximum");
    let (m, se) = zeroshot::mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
    assert!(
        (m - 0.75).abs() < 1e-12 && (se - 0.25).abs() < 1e-12,
        "{m} {se}"
    );
}

#[test]
fn encoded_requests_keep_context_and_continuation_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, tok) = tiny(tmp.path(), &candle_core::Device::Cpu);
    // Trailing spaces of the context move into the continuation before encoding.
    let a = zeroshot::encode_request(&tok, "Answer: ", "yes", 1000).unwrap();
    let b = zeroshot::encode_request(&tok, "Answer:", " yes", 1000).unwrap();
    assert_eq!(a, b);
    let whole = tok.encode("Answer: yes", false).unwrap();
    let Encoded {
        context,
        continuation,
        ..
    } = a;
    assert_eq!([context, continuation].concat(), whole);
}
