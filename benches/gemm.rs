//! `cargo bench --bench gemm`: f32 GEMM throughput for SmolLM2's linear shapes (2047 tokens),
//! candle's matmul against faer's, both on all of rayon's threads.

use candle_core::{Device, Tensor};
use std::time::Instant;

fn gflops(m: usize, k: usize, n: usize, secs: f64) -> f64 {
    2.0 * (m * k * n) as f64 / secs / 1e9
}

fn main() {
    let shapes = [
        (2047, 576, 576),
        (2047, 576, 1536),
        (2047, 1536, 576),
        (512, 576, 49152),
    ];
    println!("| m×k·(n×k)ᵀ | candle GFLOP/s | faer GFLOP/s |");
    println!("|---|---|---|");
    for (m, k, n) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let reps = 8;
        let _ = x.matmul(&w.t().unwrap()).unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            let _ = x.matmul(&w.t().unwrap()).unwrap();
        }
        let c = gflops(m, k, n, t.elapsed().as_secs_f64() / reps as f64);
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let xa = faer::MatRef::from_row_major_slice(&xv, m, k);
        let wa = faer::MatRef::from_row_major_slice(&wv, n, k);
        let mut out = faer::Mat::<f32>::zeros(m, n);
        let par = faer::Par::rayon(0);
        let run = |out: &mut faer::Mat<f32>| {
            faer::linalg::matmul::matmul(
                out.as_mut(),
                faer::Accum::Replace,
                xa,
                wa.transpose(),
                1.0f32,
                par,
            );
        };
        run(&mut out);
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut out);
        }
        let f = gflops(m, k, n, t.elapsed().as_secs_f64() / reps as f64);
        println!("| {m}×{k}·({n}×{k})ᵀ | {c:.1} | {f:.1} |");
    }
}
