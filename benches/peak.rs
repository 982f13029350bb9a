//! `cargo bench --bench peak`: what this host's cores can do, and how much of it spp's products
//! get. Prints the CPU's name and vector extensions, then the multiply-add peak of every thread
//! (rayon's) measured with independent register chains — f32 FMAs (AVX-512 or AVX2) and, where the
//! CPU has AVX512-BF16, `vdpbf16ps` (two bf16 products per f32 lane) — and the GEMM on SmolLM2's
//! block shapes (2047 tokens) with f32 weights and with bf16 weights widened while packing, as
//! GFLOP/s and as a fraction of the f32 peak. Medians of interleaved rounds.

use spp::cpu::{gemm_abt, packed_matmul, PackedMatrix, SparseLayout, ValueKind};
use std::time::Instant;

const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The model name and the vector flags of the first processor in /proc/cpuinfo.
fn host() -> (String, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let flags: Vec<String> = field("flags")
        .split_whitespace()
        .filter(|f| f.starts_with("avx") || f.starts_with("amx") || *f == "fma" || *f == "f16c")
        .map(str::to_string)
        .collect();
    (field("model name"), flags.join(" "))
}

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::x86_64::*;

    /// Multiply-adds per call of [`fma512`] / [`dpbf16`] / [`fma256`].
    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> f32 {
        let (b, c) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.5));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(b, c, *a);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iters: usize) -> f32 {
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let c: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f00_3f00));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, b, c);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> f32 {
        let (b, c) = (_mm256_set1_ps(1.0001), _mm256_set1_ps(0.5));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(b, c, *a);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        let mut out = [0f32; 8];
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}

/// GFLOP/s (2 per multiply-add) of `f` run on every rayon thread at once, each doing `flops`.
fn all_threads(flops: f64, f: impl Fn() -> f32 + Sync) -> f64 {
    let threads = rayon::current_num_threads();
    let times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let s = Instant::now();
            let sink: f32 = rayon::broadcast(|_| f()).into_iter().sum();
            std::hint::black_box(sink);
            s.elapsed().as_secs_f64()
        })
        .collect();
    flops * threads as f64 / median(times) / 1e9
}

fn main() {
    let (name, flags) = host();
    println!(
        "host: {name}; {} threads; {flags}",
        rayon::current_num_threads()
    );
    let mut peak = f64::NAN;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let iters = 20_000_000;
        let chains = probe::CHAINS as f64 * iters as f64;
        println!("| instruction | multiply-adds per instruction | GFLOP/s (all threads) |");
        println!("|---|---:|---:|");
        if has!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            let g = all_threads(2.0 * 16.0 * chains, || unsafe { probe::fma512(iters) });
            println!("| vfmadd231ps zmm (f32) | 16 | {g:.0} |");
            peak = g;
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            let g = all_threads(2.0 * 8.0 * chains, || unsafe { probe::fma256(iters) });
            println!("| vfmadd231ps ymm (f32) | 8 | {g:.0} |");
            if peak.is_nan() {
                peak = g;
            }
        }
        if has!("avx512f") && has!("avx512bf16") {
            // SAFETY: the CPU has AVX-512F and AVX512-BF16.
            let g = all_threads(2.0 * 32.0 * chains, || unsafe { probe::dpbf16(iters) });
            println!("| vdpbf16ps zmm (bf16 pairs → f32) | 32 | {g:.0} |");
        }
    }
    println!();
    println!("| m×k·(n×k)ᵀ | f32 weights GFLOP/s | of the f32 peak | bf16 weights GFLOP/s | of the f32 peak |");
    println!("|---|---:|---:|---:|---:|");
    let m = 2047;
    for (k, n) in [(576, 576), (576, 1536), (1536, 576)] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w16 = PackedMatrix::pack(&w, n, k, SparseLayout::Dense, ValueKind::Bf16).unwrap();
        let xt =
            candle_core::Tensor::from_vec(x.clone(), (m, k), &candle_core::Device::Cpu).unwrap();
        let mut out = vec![0f32; m * n];
        let (mut t32, mut t16) = (Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            let s = Instant::now();
            gemm_abt(&x, &w, &mut out, m, k, n);
            let a = s.elapsed().as_secs_f64();
            let s = Instant::now();
            std::hint::black_box(packed_matmul(&xt, &w16).unwrap());
            let b = s.elapsed().as_secs_f64();
            if round > 0 {
                t32.push(a);
                t16.push(b);
            }
        }
        let flops = 2.0 * (m * k * n) as f64;
        let (g32, g16) = (flops / median(t32) / 1e9, flops / median(t16) / 1e9);
        println!(
            "| {m}×{k}·({n}×{k})ᵀ | {g32:.0} | {:.0}% | {g16:.0} | {:.0}% |",
            100.0 * g32 / peak,
            100.0 * g16 / peak
        );
    }
}
