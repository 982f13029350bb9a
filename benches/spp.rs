//! `cargo bench --bench spp`: one SPP linear on SmolLM2's shapes (1024 tokens = micro-batch 4 ×
//! cutoff 256, r = 16, dropout on): the frozen GEMM alone, the per-block and row-group forms of
//! the forward and backward (`spp::adapter::op`), the row-group form without dropout (one GEMM
//! per pair through the merged weight), and the naive `R(A)⊙b⊙W` composition in candle.

use candle_core::{Device, Tensor, Var};
use spp::adapter::op::{self, Dims, Form};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let s = Instant::now();
    for _ in 0..5 {
        f();
    }
    s.elapsed().as_secs_f64() / 5.0 * 1e3
}

fn main() {
    spp::keep_freed_memory();
    let (t, r) = (1024, 16);
    println!("| m×n | frozen GEMM ms | fwd per-block | fwd row-group | bwd per-block | bwd row-group | row-group fwd+bwd, no dropout | naive fwd+bwd (candle) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (m, n) in [(576usize, 576usize), (192, 576), (1536, 576), (576, 1536)] {
        let x: Vec<f32> = (0..t * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let w: Vec<f32> = (0..m * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0)
            .collect();
        let a: Vec<f32> = (0..r * n)
            .map(|i| ((i * 31) % 100) as f32 / 100.0)
            .collect();
        let b: Vec<f32> = (0..m).map(|i| i as f32 / m as f32).collect();
        let g: Vec<f32> = (0..t * m)
            .map(|i| ((i * 13) % 100) as f32 / 100.0)
            .collect();
        let d = Dims { t, n, m, r };
        let mask = spp::adapter::dropout_mask(3, t * n, 0.05);
        let base = time(|| {
            let mut y = vec![0f32; t * m];
            let (xm, wm) = (
                faer::MatRef::from_row_major_slice(&x, t, n),
                faer::MatRef::from_row_major_slice(&w, m, n),
            );
            faer::linalg::matmul::matmul(
                faer::MatMut::from_row_major_slice_mut(&mut y, t, m),
                faer::Accum::Replace,
                xm,
                wm.transpose(),
                1.0f32,
                faer::Par::rayon(0),
            );
        });
        let fwd = |form, mask| time(|| drop(op::forward(&x, &w, &a, &b, d, 2.0, mask, form)));
        let bwd = |form, mask| time(|| drop(op::backward(&x, &w, &a, &b, &g, d, 2.0, mask, form)));
        let on = Some(&mask[..]);
        let (fb, fg) = (fwd(Form::Blocks, on), fwd(Form::RowGroups, on));
        let (bb, bg) = (bwd(Form::Blocks, on), bwd(Form::RowGroups, on));
        let merged = fwd(Form::RowGroups, None) + bwd(Form::RowGroups, None);
        let dev = Device::Cpu;
        let tensor = |v: &[f32], s: (usize, usize)| Tensor::from_slice(v, s, &dev).unwrap();
        let (xv, av, bv) = (
            Var::from_tensor(&tensor(&x, (t, n))).unwrap(),
            Var::from_tensor(&tensor(&a, (r, n))).unwrap(),
            Var::from_tensor(&tensor(&b, (m, 1))).unwrap(),
        );
        let (wt, mt) = (tensor(&w, (m, n)), tensor(&mask, (t, n)));
        let naive = time(|| {
            let y = spp::adapter::spp_naive(
                xv.as_tensor(),
                &wt,
                av.as_tensor(),
                bv.as_tensor(),
                2.0,
                Some(&mt),
            )
            .unwrap();
            drop(y.sum_all().unwrap().backward().unwrap());
        });
        println!("| {m}×{n} | {base:.2} | {fb:.2} | {fg:.2} | {bb:.2} | {bg:.2} | {merged:.2} | {naive:.2} |");
    }
}
