//! `cargo bench --bench spp`: one SPP linear, forward + backward, on SmolLM2's shapes
//! (512 tokens = micro-batch 4 × cutoff 128, r = 16): the block-form custom op against the naive
//! `R(A)⊙b⊙W` composition and against the frozen linear alone.

use candle_core::{Device, Tensor, Var};
use spp::adapter::{op, spp_naive};
use std::time::Instant;

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64 * 1e3
}

fn main() {
    let (t, r) = (512, 16);
    println!("| shape (m×n) | frozen fwd+bwd ms | SPP per-block op ms | SPP row-group op ms | SPP naive (candle) ms |");
    println!("|---|---|---|---|---|");
    for (m, n) in [(576, 576), (192, 576), (1536, 576), (576, 1536)] {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (t, n), &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.05, (r, n), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.05, (m, 1), &dev).unwrap()).unwrap();
        let reps = 5;
        let frozen = time(reps, || {
            let y = spp::model::ops::frozen_matmul(x.as_tensor(), &w).unwrap();
            let _ = y.sum_all().unwrap().backward().unwrap();
        });
        let spp_op = |grouped: bool| {
            time(reps, || {
                let o = op::SppOp {
                    w: w.clone(),
                    scale: 2.0,
                    dropout: Some((7, 0.05)),
                    z: Default::default(),
                    grouped,
                };
                let y = x
                    .as_tensor()
                    .apply_op3(a.as_tensor(), &b.as_tensor().flatten_all().unwrap(), o)
                    .unwrap();
                let _ = y.sum_all().unwrap().backward().unwrap();
            })
        };
        let (block, grouped) = (spp_op(false), spp_op(true));
        let naive = time(reps, || {
            let y = spp_naive(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), 2.0, None).unwrap();
            let _ = y.sum_all().unwrap().backward().unwrap();
        });
        println!("| {m}×{n} | {frozen:.2} | {block:.2} | {grouped:.2} | {naive:.2} |");
    }
}
