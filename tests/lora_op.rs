//! The fused LoRA op against the composition of candle ops (forward, and the gradients of x, A
//! and B), with and without dropout, and on a model: LoRA trains through the op.

mod common;

use candle_core::{Device, Tensor, Var};
use spp::adapter::{dropout_mask, lora, op};

fn rand(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = common::ids(n, 10_000, seed)
        .iter()
        .map(|&i| i as f32 / 5000.0 - 1.0)
        .collect();
    (Tensor::from_vec(v, shape, &Device::Cpu).unwrap() * scale).unwrap()
}

/// `|p − q| ≤ tol·(1 + max |q|)` everywhere.
fn close(p: &Tensor, q: &Tensor, tol: f32) -> bool {
    common::max_diff(p, q) <= tol * (1.0 + common::max_abs(q))
}

#[test]
fn lora_op_equals_naive_form_forward_and_gradients() {
    // (t, n, m, r): square, wide, narrow, rank 1, and SmolLM2's down_proj with one micro-batch row.
    for (t, n, m, r) in [
        (9, 24, 32, 4),
        (5, 16, 96, 8),
        (17, 64, 12, 2),
        (3, 7, 5, 1),
        (31, 1536, 576, 8),
    ] {
        let w = rand(&[m, n], 1, 0.3);
        for drop in [None, Some((11u64, 0.3f32)), Some((5u64, 0.05f32))] {
            let x = Var::from_tensor(&rand(&[t, n], 2, 1.0)).unwrap();
            let a = Var::from_tensor(&rand(&[r, n], 3, 0.5)).unwrap();
            let b = Var::from_tensor(&rand(&[m, r], 4, 0.5)).unwrap();
            let op = lora::LoraOp {
                w: op::Frozen::Dense(w.clone()),
                scale: 1.7,
                dropout: drop,
            };
            let fast = x
                .as_tensor()
                .apply_op3(a.as_tensor(), b.as_tensor(), op)
                .unwrap();
            let mask = drop.map(|(s, p)| {
                Tensor::from_vec(dropout_mask(s, t * n, p), (t, n), &Device::Cpu).unwrap()
            });
            let slow = lora::lora_naive(
                x.as_tensor(),
                &w,
                a.as_tensor(),
                b.as_tensor(),
                1.7,
                mask.as_ref(),
            )
            .unwrap();
            let what = format!("t {t} n {n} m {m} r {r}, dropout {drop:?}");
            assert_eq!(fast.dims(), [t, m]);
            assert!(close(&fast, &slow, 1e-5), "forward, {what}");
            let weight = rand(&[t, m], 5, 1.0);
            let loss = |y: Tensor| (y * &weight).unwrap().sum_all().unwrap();
            let gf = loss(fast).backward().unwrap();
            let gs = loss(slow).backward().unwrap();
            for (name, v) in [("x", &x), ("A", &a), ("B", &b)] {
                let (f, s) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gs.get(v.as_tensor()).unwrap(),
                );
                assert_eq!(f.dims(), s.dims(), "d{name}, {what}");
                assert!(
                    close(f, s, 1e-5),
                    "d{name}: {} ({what})",
                    common::max_diff(f, s)
                );
            }
        }
    }
}

#[test]
fn lora_op_refuses_shapes_that_do_not_fit() {
    let op = lora::LoraOp {
        w: op::Frozen::Dense(rand(&[6, 4], 1, 1.0)),
        scale: 1.0,
        dropout: None,
    };
    let e = rand(&[3, 4], 2, 1.0)
        .apply_op3(&rand(&[2, 4], 3, 1.0), &rand(&[5, 2], 4, 1.0), op)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit"), "{e}");
}
