//! `cargo bench --bench gemm`: f32 GEMM throughput for SmolLM2's linear shapes (2047 tokens; the
//! down projection also over 8192, an `eval tasks` pass),
//! candle's matmul, faer's and spp's own (`spp::cpu::gemm_abt`), all on rayon's threads. The three
//! run interleaved, `REPS` rounds each, and the table gives each one's median: this machine's
//! speed drifts from minute to minute, and interleaving exposes all three to the same drift.
//! A second table: SparseGPT's Hessian update xᵀx over one 2048-token window, faer's full
//! product against spp's `syrk_lower` (the lower triangle read straight from x).

use candle_core::{Device, Tensor};
use std::time::Instant;

const REPS: usize = 15;

fn gflops(m: usize, k: usize, n: usize, secs: f64) -> f64 {
    2.0 * (m * k * n) as f64 / secs / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let shapes = [
        (2047, 576, 576),
        (2047, 576, 1536),
        (2047, 1536, 576),
        (8192, 1536, 576),
        (2047, 576, 192),
        (128, 576, 49152),
        (256, 576, 49152),
        (512, 576, 49152),
    ];
    println!("| m×k·(n×k)ᵀ | candle GFLOP/s | faer GFLOP/s | spp GFLOP/s | spp / faer |");
    println!("|---|---|---|---|---|");
    for (m, k, n) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let mut out = vec![0f32; m * n];
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..=REPS {
            for (which, t) in times.iter_mut().enumerate() {
                let s = Instant::now();
                match which {
                    0 => {
                        x.matmul(&w.t().unwrap()).unwrap();
                    }
                    1 => faer::linalg::matmul::matmul(
                        faer::MatMut::from_row_major_slice_mut(&mut out, m, n),
                        faer::Accum::Replace,
                        faer::MatRef::from_row_major_slice(&xv, m, k),
                        faer::MatRef::from_row_major_slice(&wv, n, k).transpose(),
                        1.0f32,
                        faer::Par::rayon(0),
                    ),
                    _ => spp::cpu::gemm_abt(&xv, &wv, &mut out, m, k, n),
                }
                if round > 0 {
                    t.push(gflops(m, k, n, s.elapsed().as_secs_f64()));
                }
            }
        }
        let [c, f, s] = times.map(median);
        println!(
            "| {m}×{k}·({n}×{k})ᵀ | {c:.1} | {f:.1} | {s:.1} | {:.2} |",
            s / f
        );
    }
    println!();
    println!("| xᵀx, x 2048×n | faer full ms | spp syrk_lower ms | faer / spp |");
    println!("|---|---|---|---|");
    for n in [576, 1536] {
        let t = 2048;
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, (t, n), &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut c = vec![0f32; n * n];
        let mut times = [Vec::new(), Vec::new()];
        for round in 0..=REPS {
            for (which, times) in times.iter_mut().enumerate() {
                let s = Instant::now();
                if which == 0 {
                    let x = faer::MatRef::from_row_major_slice(&x, t, n);
                    faer::linalg::matmul::matmul(
                        faer::MatMut::from_row_major_slice_mut(&mut c, n, n),
                        faer::Accum::Replace,
                        x.transpose(),
                        x,
                        1.0f32,
                        faer::Par::rayon(0),
                    );
                } else {
                    spp::cpu::syrk_lower(&x, (t, n), &mut c, 1.0);
                }
                if round > 0 {
                    times.push(s.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let [f, s] = times.map(median);
        println!("| {n} | {f:.2} | {s:.2} | {:.2} |", f / s);
    }
}
