//! The fused CPU kernels against their plain candle compositions, forward and backward.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use spp::cpu as ops;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = common::ids(n, 10_000, seed)
        .iter()
        .map(|&i| i as f32 / 1000.0 - 5.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn silu_mul_matches_reference_with_gradients() {
    let g = Var::from_tensor(&rand(&[7, 33], 1)).unwrap();
    let u = Var::from_tensor(&rand(&[7, 33], 2)).unwrap();
    let fast = ops::silu_mul(g.as_tensor(), u.as_tensor()).unwrap();
    let slow = ops::silu_mul_reference(g.as_tensor(), u.as_tensor()).unwrap();
    assert!(common::max_diff(&fast, &slow) < 1e-5);
    let w = rand(&[7, 33], 3);
    let gf = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&g, &u] {
        let (a, b) = (
            gf.get(v.as_tensor()).unwrap(),
            gs.get(v.as_tensor()).unwrap(),
        );
        assert!(common::max_diff(a, b) < 1e-4);
    }
}

#[test]
fn causal_softmax_matches_reference_with_gradients() {
    // Two chunks of a 3-query-head, 2-KV-head layout: rows (rep, c), queries from position 5.
    for (first, c, end) in [(0, 6, 6), (5, 4, 9), (9, 1, 10)] {
        let x = Var::from_tensor(&rand(&[2, 3, c, end], first as u64)).unwrap();
        let fast = ops::causal_softmax(x.as_tensor(), first).unwrap();
        let slow = ops::causal_softmax_reference(x.as_tensor(), first).unwrap();
        assert!(common::max_diff(&fast, &slow) < 1e-6, "first {first}");
        // Rows sum to one and masked entries are exactly zero.
        let rows: Vec<Vec<f32>> = fast.reshape((2 * 3 * c, end)).unwrap().to_vec2().unwrap();
        for (r, row) in rows.iter().enumerate() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(row[(first + r % c + 1).min(end)..]
                .iter()
                .all(|&v| v == 0.0));
        }
        let w = rand(&[2, 3, c, end], 99);
        let gf = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            common::max_diff(
                gf.get(x.as_tensor()).unwrap(),
                gs.get(x.as_tensor()).unwrap()
            ) < 1e-5
        );
    }
}

#[test]
fn token_nll_matches_reference() {
    let logits = (rand(&[9, 1000], 4) * 3.0).unwrap();
    let t = Tensor::new(&common::ids(9, 1000, 5)[..], &Device::Cpu).unwrap();
    let fast = ops::token_nll(&logits, &t).unwrap();
    let slow = ops::token_nll_reference(&logits, &t).unwrap();
    assert_eq!(fast.dtype(), DType::F32);
    assert!(common::max_diff(&fast, &slow) < 1e-4);
    let bad = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7, 1000], &Device::Cpu).unwrap();
    assert!(ops::token_nll(&logits, &bad).is_err());
}

#[test]
fn frozen_matmul_matches_reference_and_freezes_the_weight() {
    let x = Var::from_tensor(&rand(&[13, 24], 6)).unwrap();
    let w = Var::from_tensor(&rand(&[40, 24], 7)).unwrap();
    let fast = ops::frozen_matmul(x.as_tensor(), w.as_tensor()).unwrap();
    let slow = ops::frozen_matmul_reference(x.as_tensor(), w.as_tensor()).unwrap();
    assert!(common::max_diff(&fast, &slow) < 1e-3);
    let r = rand(&[13, 40], 8);
    let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (slow * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        common::max_diff(
            gf.get(x.as_tensor()).unwrap(),
            gs.get(x.as_tensor()).unwrap()
        ) < 1e-3
    );
    assert!(
        gf.get(w.as_tensor()).is_none(),
        "the frozen weight must not receive a gradient"
    );
    assert!(gs.get(w.as_tensor()).is_some());
}

/// Forward and input gradient of a fused op against its reference, under a random weighting.
fn check_grad(x: &Var, fast: Tensor, slow: Tensor, tol: f32) {
    assert!(
        common::max_diff(&fast, &slow) < tol,
        "forward differs by {}",
        common::max_diff(&fast, &slow)
    );
    let w = rand(fast.dims(), 99);
    let gf = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let (a, b) = (
        gf.get(x.as_tensor()).unwrap(),
        gs.get(x.as_tensor()).unwrap(),
    );
    assert!(
        common::max_diff(a, b) < tol * 10.0,
        "gradient differs by {}",
        common::max_diff(a, b)
    );
}

#[test]
fn rms_norm_matches_reference_with_gradients() {
    let x = Var::from_tensor(&rand(&[2, 5, 24], 4)).unwrap();
    let w = rand(&[24], 5);
    check_grad(
        &x,
        ops::rms_norm(x.as_tensor(), &w, 1e-5).unwrap(),
        ops::rms_norm_reference(x.as_tensor(), &w, 1e-5).unwrap(),
        1e-5,
    );
}

#[test]
fn rope_matches_reference_with_gradients() {
    let x = Var::from_tensor(&rand(&[2, 3, 7, 8], 6)).unwrap();
    let cos = (rand(&[7, 4], 7) * 0.1).unwrap().cos().unwrap();
    let sin = (rand(&[7, 4], 7) * 0.1).unwrap().sin().unwrap();
    check_grad(
        &x,
        ops::rope(x.as_tensor(), &cos, &sin).unwrap(),
        ops::rope_reference(x.as_tensor(), &cos, &sin).unwrap(),
        1e-5,
    );
}

#[test]
fn token_nll_gradient_matches_reference() {
    let x = Var::from_tensor(&rand(&[6, 40], 8)).unwrap();
    let t = Tensor::new(&[0u32, 39, 5, 5, 17, 2], &Device::Cpu).unwrap();
    check_grad(
        &x,
        ops::token_nll(x.as_tensor(), &t).unwrap(),
        ops::token_nll_reference(x.as_tensor(), &t).unwrap(),
        1e-4,
    );
}

#[test]
fn gemm_matches_the_triple_loop() {
    use spp::cpu::{gemm_abt, gemm_abt_reference};
    // Partial tiles on both sides, one and two K slices, a thread's columns spanning two packed
    // blocks of B (n > 2 × 1024), a short A that goes to faer, and two K slices over so many rows
    // that the product runs in row blocks (the second one shorter, ending in a partial panel).
    for (i, &(m, k, n)) in [
        (24, 5, 1),
        (37, 1000, 17),
        (100, 64, 130),
        (30, 700, 2100),
        (3, 40, 50),
        (5200, 2000, 24),
    ]
    .iter()
    .enumerate()
    {
        let a: Vec<f32> = rand(&[m * k], 10 + i as u64).to_vec1().unwrap();
        let b: Vec<f32> = rand(&[n * k], 20 + i as u64).to_vec1().unwrap();
        let (mut fast, mut slow) = (vec![f32::NAN; m * n], vec![0f32; m * n]);
        gemm_abt(&a, &b, &mut fast, m, k, n);
        gemm_abt_reference(&a, &b, &mut slow, m, k, n);
        // Entries are in [−5, 5]: f32 rounding over k products of at most 25 stays far below
        // 1e-5 · 25 · k, a wrong index or a missed slice far above it.
        let worst = fast
            .iter()
            .zip(&slow)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let tol = 1e-5 * 25.0 * k as f32;
        assert!(
            worst < tol,
            "{m}×{k}·({n}×{k})ᵀ: error {worst} (tolerance {tol})"
        );
    }
}

#[test]
fn syrk_adds_the_lower_triangle_of_the_gram_matrix() {
    use spp::cpu::{gemm_abt_reference, syrk_lower};
    // x `[t, n]`: partial tiles, several K slices over so many columns that the product runs in
    // row blocks (the diagonal offset carried into each), and a width short enough for faer.
    for (i, &(t, n)) in [(50, 37), (1000, 100), (1300, 2600), (40, 17)]
        .iter()
        .enumerate()
    {
        let x: Vec<f32> = rand(&[t * n], 30 + i as u64).to_vec1().unwrap();
        let xt: Vec<f32> = (0..n * t).map(|e| x[(e % t) * n + e / t]).collect();
        let mut gram = vec![0f32; n * n];
        gemm_abt_reference(&xt, &xt, &mut gram, n, t, n);
        let before: Vec<f32> = rand(&[n * n], 60 + i as u64).to_vec1().unwrap();
        let mut c = before.clone();
        syrk_lower(&x, (t, n), &mut c, 0.5);
        for r in 0..n {
            for j in 0..=r {
                let (got, want) = (c[r * n + j], before[r * n + j] + 0.5 * gram[r * n + j]);
                // Terms up to 25 in magnitude cancel in sums of t of them.
                assert!(
                    (got - want).abs() <= 1e-5 * t as f32,
                    "t {t}, n {n}: ({r}, {j}) {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn down_projection_with_silu_in_the_packing_matches_silu_then_matmul() {
    // `(silu(g) ⊙ u)·Wᵀ` with the product formed while packing: three K slices (1200 > 576) and
    // partial panels (m = 40, n = 37), the same over 7001 rows (three row blocks), one slice, a
    // short input that goes to faer (7 rows), and a tracked input (the unfused path, which keeps
    // the gradient).
    for (i, &(m, k, n)) in [(40, 1200, 37), (7001, 1200, 9), (30, 64, 48), (7, 40, 16)]
        .iter()
        .enumerate()
    {
        let seed = 60 + 3 * i as u64;
        let (g, u, w) = (
            rand(&[m, k], seed),
            rand(&[m, k], seed + 1),
            rand(&[n, k], seed + 2),
        );
        let want =
            ops::frozen_matmul_reference(&ops::silu_mul_reference(&g, &u).unwrap(), &w).unwrap();
        let got = ops::frozen_matmul_silu(&g, &u, &w).unwrap();
        assert_eq!(got.dims(), [m, n]);
        // f32 sums of k products: rounding grows with k and the outputs' size.
        let (d, scale) = (common::max_diff(&got, &want), common::max_abs(&want));
        assert!(
            d < 1e-6 * k as f32 * scale,
            "{m}×{k}·({n}×{k})ᵀ: differs by {d} (outputs up to {scale})"
        );
        // silu(g)·u, not g·u or silu(u)·g: the wrong product must show.
        let wrong = ops::frozen_matmul_reference(&(&g * &u).unwrap(), &w).unwrap();
        assert!(common::max_diff(&got, &wrong) > 1e-2);
    }
    let (g, u, w) = (
        rand(&[30, 24], 70),
        rand(&[30, 24], 71),
        rand(&[20, 24], 72),
    );
    let var = Var::from_tensor(&g).unwrap();
    let y = ops::frozen_matmul_silu(var.as_tensor(), &u, &w).unwrap();
    let want = ops::frozen_matmul_reference(&ops::silu_mul_reference(&g, &u).unwrap(), &w).unwrap();
    assert!(common::max_diff(&y, &want) < 1e-4);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(
        grads.get(var.as_tensor()).is_some(),
        "the tracked input lost its gradient"
    );
}

#[test]
fn gemm_over_several_weights_matches_one_product_each() {
    use spp::cpu::{gemm_abt_many, gemm_abt_reference};
    // Widths that leave partial panels inside each weight (17, 5) beside a whole one (32), one
    // and two K slices, two slices over enough rows for row blocks, and a short A (7 rows) that
    // goes to faer.
    for (i, &(m, k)) in [(30, 64), (45, 700), (6001, 1200), (7, 40)]
        .iter()
        .enumerate()
    {
        let a: Vec<f32> = rand(&[m * k], 30 + i as u64).to_vec1().unwrap();
        let ns = [17, 32, 5];
        let bs: Vec<Vec<f32>> = ns
            .iter()
            .enumerate()
            .map(|(j, &n)| rand(&[n * k], 40 + j as u64).to_vec1().unwrap())
            .collect();
        let parts: Vec<(&[f32], usize)> = bs.iter().map(|b| &b[..]).zip(ns).collect();
        let outs = gemm_abt_many(&a, m, k, &parts);
        assert_eq!(outs.len(), ns.len());
        for ((c, b), n) in outs.iter().zip(&bs).zip(ns) {
            let mut slow = vec![0f32; m * n];
            gemm_abt_reference(&a, b, &mut slow, m, k, n);
            assert_eq!(c.len(), m * n);
            let worst = c
                .iter()
                .zip(&slow)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-5 * 25.0 * k as f32,
                "{m}×{k}, weight of {n}: error {worst}"
            );
        }
    }
    // Through tensors: the fused path (no gradient) and the per-weight one (a tracked input) give
    // the same outputs as x·Wᵀ, and the tracked one still carries the input's gradient.
    let x = rand(&[40, 24], 7);
    let ws = [rand(&[48, 24], 8), rand(&[16, 24], 9)];
    let wr: Vec<&Tensor> = ws.iter().collect();
    let var = Var::from_tensor(&x).unwrap();
    for (ys, tracked) in [
        (ops::frozen_matmul_many(&x, &wr).unwrap(), false),
        (ops::frozen_matmul_many(var.as_tensor(), &wr).unwrap(), true),
    ] {
        for (y, w) in ys.iter().zip(&ws) {
            let d = common::max_diff(y, &ops::frozen_matmul_reference(&x, w).unwrap());
            assert!(d < 1e-4, "tracked {tracked}: differs by {d}");
        }
        if tracked {
            let g = (&ys[0].sum_all().unwrap() + &ys[1].sum_all().unwrap())
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                g.get(var.as_tensor()).is_some(),
                "the tracked input lost its gradient"
            );
        }
    }
}

/// Attention the obvious way, in f64: per (sequence, head, query), RoPE, scores over the keys
/// `visible` allows, softmax, weighted sum of values.
fn attention_by_definition(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (cos, sin): (&[f32], &[f32]),
    (b, t, h, kvh, d): (usize, usize, usize, usize, usize),
    visible: impl Fn(usize, usize) -> bool,
) -> Vec<f32> {
    let half = d / 2;
    let rope = |x: &[f32], pos: usize| -> Vec<f64> {
        let mut o = vec![0f64; d];
        for i in 0..half {
            let (c, s) = (cos[pos * half + i] as f64, sin[pos * half + i] as f64);
            let (a, z) = (x[i] as f64, x[i + half] as f64);
            o[i] = a * c - z * s;
            o[i + half] = z * c + a * s;
        }
        o
    };
    let mut out = vec![0f32; b * t * h * d];
    for bi in 0..b {
        for hh in 0..h {
            let g = hh / (h / kvh);
            for i in 0..t {
                let qi = rope(&q[(bi * t + i) * h * d + hh * d..][..d], i);
                let keys: Vec<usize> = (0..t).filter(|&j| visible(i, j)).collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kj = rope(&k[(bi * t + j) * kvh * d + g * d..][..d], j);
                        qi.iter().zip(&kj).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ps: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = ps.iter().sum();
                for e in 0..d {
                    let o: f64 = keys
                        .iter()
                        .zip(&ps)
                        .map(|(&j, p)| p * v[(bi * t + j) * kvh * d + g * d + e] as f64)
                        .sum();
                    out[(bi * t + i) * h * d + hh * d + e] = (o / z) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn fused_attention_matches_the_definition_with_wide_heads() {
    // Head size 64 (the micro-kernel path where the CPU has AVX2/FMA), 6 heads over 2 KV heads,
    // 600 tokens: several blocks of keys, a last query chunk of 24; causal over two sequences,
    // then packed: a 250-token document, a 300-token one, and a 50-token continuation sharing the
    // second one's first 100 tokens. Then head size 640 (deeper than one of the GEMM's 576-deep
    // slices) over 40 tokens, where every row falls in the first segment.
    for (t, h, kvh, d) in [(600, 6, 2, 64), (40, 2, 1, 640)] {
        wide_heads_case(t, h, kvh, d);
    }
}

/// One shape of [`fused_attention_matches_the_definition_with_wide_heads`] (head sizes above
/// the GEMM's 576-deep slices included).
fn wide_heads_case(t: usize, h: usize, kvh: usize, d: usize) {
    use spp::cpu::attention::{attention, Heads, Visibility, Visible};
    let heads = Heads {
        n_heads: h,
        n_kv: kvh,
        head_dim: d,
    };
    let angles = rand(&[t * d / 2], 50);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let (cv, sv): (Vec<f32>, Vec<f32>) = (cos.to_vec1().unwrap(), sin.to_vec1().unwrap());
    let (cos, sin) = (
        cos.reshape((t, d / 2)).unwrap(),
        sin.reshape((t, d / 2)).unwrap(),
    );
    let segs: Vec<Visible> = (0..t)
        .map(|i| match i {
            0..250 => Visible {
                shared: (0, 0),
                own: 0,
            },
            250..550 => Visible {
                shared: (0, 0),
                own: 250,
            },
            _ => Visible {
                shared: (250, 350),
                own: 550,
            },
        })
        .collect();
    for (b, packed) in [(2, false), (1, true)] {
        let q = rand(&[b, t, h * d], 51);
        let k = rand(&[b, t, kvh * d], 52);
        let v = rand(&[b, t, kvh * d], 53);
        let visibility = if packed {
            Visibility::Rows(segs.clone().into())
        } else {
            Visibility::Causal
        };
        let fused = attention(&q, &k, &v, &cos, &sin, heads, visibility).unwrap();
        let flat = |x: &Tensor| -> Vec<f32> { x.flatten_all().unwrap().to_vec1().unwrap() };
        let expected = attention_by_definition(
            &flat(&q),
            &flat(&k),
            &flat(&v),
            (&cv, &sv),
            (b, t, h, kvh, d),
            |i, j| {
                let s = segs[i];
                j <= i && (!packed || (j >= s.own || (s.shared.0..s.shared.1).contains(&j)))
            },
        );
        let worst = flat(&fused)
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "packed {packed}: differs from the definition by {worst}"
        );
    }
}

#[test]
fn fused_attention_and_lm_head_nll_match_the_reference() {
    // Two sequences of 100 tokens: several query chunks, the last one partial; GQA (4 heads over
    // 2 KV heads) and, with the untied head, a plain MHA-shaped projection check through logits.
    for tied in [false, true] {
        let mut model = common::tiny_model(tied, true, &Device::Cpu);
        let vocab = model.cfg.vocab_size;
        let ids: Vec<u32> = [common::ids(100, vocab, 1), common::ids(100, vocab, 2)].concat();
        let ids = Tensor::from_vec(ids, (2, 100), &Device::Cpu).unwrap();
        let fused = model.forward(&ids).unwrap();
        let hidden = model.hidden_states(&ids, None).unwrap();
        model.set_reference_attention(true);
        let reference = model.forward(&ids).unwrap();
        let d = common::max_diff(&fused, &reference);
        assert!(
            d < 1e-4,
            "tied {tied}: fused vs reference attention logits differ by {d}"
        );
        // A changed attention must show: the reference of another sequence differs a lot.
        let other = Tensor::from_vec(common::ids(200, vocab, 3), (2, 100), &Device::Cpu).unwrap();
        assert!(common::max_diff(&fused, &model.forward(&other).unwrap()) > 0.1);

        // The fused LM head + NLL (no gradient) against logits then token_nll.
        let h = hidden.reshape((200, model.cfg.hidden_size)).unwrap();
        let targets = Tensor::from_vec(common::ids(200, vocab, 4), 200, &Device::Cpu).unwrap();
        let fused = model.token_nll(&h, &targets).unwrap();
        let reference = ops::token_nll_reference(&model.logits(&h).unwrap(), &targets).unwrap();
        let d = common::max_diff(&fused, &reference);
        assert!(d < 1e-4, "tied {tied}: fused LM-head NLL differs by {d}");
    }
}

#[test]
fn fused_attention_gradients_match_the_reference() {
    // The gradient of a weighted sum of the final hidden states with respect to the embeddings
    // runs back through every layer's attention: causal over two sequences, and packed (two
    // sequences plus a continuation that shares the first one's 30-token prefix).
    use spp::model::{PackedRow, Packing};
    let mut model = common::tiny_model(false, true, &Device::Cpu);
    let emb = Var::from_tensor(&model.embed_tokens).unwrap();
    model.embed_tokens = emb.as_tensor().clone();
    let vocab = model.cfg.vocab_size;
    let hs = model.cfg.hidden_size;
    let ids = Tensor::from_vec(common::ids(200, vocab, 5), (2, 100), &Device::Cpu).unwrap();
    let row = |position: u32, shared: (u32, u32), own: u32| PackedRow {
        position,
        shared,
        own,
    };
    let rows: Vec<PackedRow> = (0..60)
        .map(|i| row(i, (0, 0), 0))
        .chain((0..40).map(|i| row(i, (0, 0), 60)))
        .chain((0..10).map(|i| row(30 + i, (0, 30), 100)))
        .collect();
    let packing = Packing::new(rows, &Device::Cpu).unwrap();
    let packed_ids = Tensor::from_vec(common::ids(110, vocab, 6), (1, 110), &Device::Cpu).unwrap();
    let (w, wp) = (rand(&[2, 100, hs], 7), rand(&[1, 110, hs], 8));
    let grads = |model: &spp::model::Llama| {
        let causal = model.hidden_states(&ids, None).unwrap();
        let packed = model.hidden_states_packed(&packed_ids, &packing).unwrap();
        [(causal, &w), (packed, &wp)].map(|(h, w)| {
            let loss = (h * w).unwrap().sum_all().unwrap();
            loss.backward()
                .unwrap()
                .get(emb.as_tensor())
                .unwrap()
                .clone()
        })
    };
    let fused = grads(&model);
    model.set_reference_attention(true);
    let reference = grads(&model);
    for (name, f, r) in [
        ("causal", &fused[0], &reference[0]),
        ("packed", &fused[1], &reference[1]),
    ] {
        let scale = common::max_abs(r);
        let d = common::max_diff(f, r);
        assert!(scale > 1e-3, "{name}: the gradient vanished ({scale})");
        assert!(
            d < 1e-4 * scale,
            "{name}: fused attention gradient differs by {d} (scale {scale})"
        );
    }
}

#[test]
fn hidden_states_at_some_rows_equal_the_full_packed_forward() {
    // The last block computes o_proj and the MLP for the selected rows only; the result must be
    // the full forward's rows, in the order asked (repeats allowed).
    use spp::model::{PackedRow, Packing};
    let model = common::tiny_model(false, true, &Device::Cpu);
    let vocab = model.cfg.vocab_size;
    let rows: Vec<PackedRow> = (0..60)
        .map(|i| PackedRow {
            position: i,
            shared: (0, 0),
            own: 0,
        })
        .chain((0..10).map(|i| PackedRow {
            position: 30 + i,
            shared: (0, 30),
            own: 60,
        }))
        .collect();
    let packing = Packing::new(rows, &Device::Cpu).unwrap();
    let ids = Tensor::from_vec(common::ids(70, vocab, 9), (1, 70), &Device::Cpu).unwrap();
    let full = model
        .hidden_states_packed(&ids, &packing)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let want: Vec<u32> = vec![69, 0, 29, 64, 64, 59];
    let sel = Tensor::from_vec(want.clone(), want.len(), &Device::Cpu).unwrap();
    let some = model.hidden_states_packed_at(&ids, &packing, &sel).unwrap();
    let expected = full.index_select(&sel, 0).unwrap();
    assert_eq!(some.dims(), expected.dims());
    let d = common::max_diff(&some, &expected);
    assert!(
        d < 1e-5,
        "selected rows differ from the full forward by {d}"
    );
    // Rows differ from one another, so a wrong selection would show.
    let shifted: Vec<u32> = want.iter().map(|r| (r + 1) % 70).collect();
    let other = full
        .index_select(&Tensor::from_vec(shifted, 6, &Device::Cpu).unwrap(), 0)
        .unwrap();
    assert!(common::max_diff(&some, &other) > 1e-2);
}
