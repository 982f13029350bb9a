//! The perplexity protocol on models whose answer is known.

mod common;

use candle_core::{DType, Device, Tensor};
use spp::eval::perplexity::{perplexity, read_text};

fn uniform_body(dev: &Device) {
    // An untied head of zeros gives uniform logits: perplexity = vocabulary size, whatever the text.
    let cfg = common::tiny_config(false, false);
    let mut t = common::random_tensors(&cfg);
    t.insert(
        "lm_head.weight".into(),
        Tensor::zeros((96, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let m = spp::model::Llama::load(cfg, &t, DType::F32, dev).unwrap();
    let ids = common::ids(1000, 96, 1);
    let r = perplexity(&m, &ids, 128, None, None, &mut |_, _| {}).unwrap();
    assert!((r.ppl - 96.0).abs() < 1e-3, "ppl {}", r.ppl);
    assert_eq!(
        (r.windows, r.tokens, r.scored_tokens, r.stride),
        (7, 7 * 128, 7 * 127, 128)
    );
    // One time per window, each positive and within the whole (windows may run concurrently).
    assert_eq!(r.window_seconds.len(), 7);
    assert!(
        r.window_seconds.iter().all(|&s| s > 0.0 && s <= r.seconds),
        "{:?} vs {}",
        r.window_seconds,
        r.seconds
    );
}

#[test]
fn uniform_logits_give_the_vocabulary_size() {
    for dev in common::devices() {
        uniform_body(&dev);
    }
}

#[test]
fn windows_are_non_overlapping_and_scored_independently() {
    let m = common::tiny_model(true, false, &Device::Cpu);
    let ids = common::ids(700, 96, 2);
    let mut calls = vec![];
    let all = perplexity(&m, &ids, 100, None, None, &mut |d, n| calls.push((d, n))).unwrap();
    assert_eq!(calls.last(), Some(&(7, 7)));
    // The mean over windows equals the mean of per-window runs (stride = seqlen, no context carried).
    let mut sum = 0.0;
    for w in 0..7 {
        let r = perplexity(
            &m,
            &ids[w * 100..(w + 1) * 100],
            100,
            None,
            None,
            &mut |_, _| {},
        )
        .unwrap();
        sum += r.mean_nll;
    }
    assert!((sum / 7.0 - all.mean_nll).abs() < 1e-5);
    // Direct computation of window 0 from the logits.
    let x = Tensor::new(&ids[..99], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logp = candle_nn::ops::log_softmax(&m.forward(&x).unwrap().squeeze(0).unwrap(), 1).unwrap();
    let logp: Vec<Vec<f32>> = logp.to_vec2().unwrap();
    let nll: f64 = (0..99)
        .map(|i| -logp[i][ids[i + 1] as usize] as f64)
        .sum::<f64>()
        / 99.0;
    let first = perplexity(&m, &ids[..100], 100, Some(1), None, &mut |_, _| {}).unwrap();
    assert!(
        (first.mean_nll - nll).abs() < 1e-5,
        "{} vs {nll}",
        first.mean_nll
    );
    // --max-windows limits the count.
    assert_eq!(
        perplexity(&m, &ids, 100, Some(3), None, &mut |_, _| {})
            .unwrap()
            .windows,
        3
    );
}

#[test]
fn too_short_text_is_a_clear_error() {
    let m = common::tiny_model(true, false, &Device::Cpu);
    let err = perplexity(&m, &common::ids(50, 96, 3), 128, None, None, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("50 tokens") && err.contains("--seqlen 128"),
        "{err}"
    );
    let err = perplexity(
        &m,
        &common::ids(5000, 96, 3),
        2048,
        None,
        None,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

#[test]
fn text_files_are_read_as_the_protocol_says() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("a.txt");
    std::fs::write(&plain, " = Title = \r\n Body text .\r\n").unwrap();
    assert_eq!(read_text(&plain).unwrap(), " = Title = \n Body text .\n");
    let jsonl = tmp.path().join("b.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"one\\r\\ntwo\"}\n\n{\"text\": \"three\", \"url\": \"x\"}\n",
    )
    .unwrap();
    assert_eq!(read_text(&jsonl).unwrap(), "one\ntwo\n\nthree");
    std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
    let err = read_text(&jsonl).unwrap_err().to_string();
    assert!(
        err.contains("b.jsonl:2") && err.contains("\"text\""),
        "{err}"
    );
}
