//! `cargo bench --bench packed`: the decode product (one token) over every block linear of a
//! SmolLM2-135M-shaped model (30 × 7 linears, 425 MB in f32: more than the caches), dense through
//! `spp::cpu::gemm_abt` (faer's matrix × vector) against the packed forms (2:4 and bitmask with
//! f32 values, 2:4 with bf16 and int8 values). Rounds interleave the variants; the table gives each
//! one's median time per pass, the weight bytes it read and the bandwidth that makes.
//!
//! A second table: the prefill product (2047 tokens) over one block's seven linears, dense against
//! each packed form, as the model runs it (`spp::cpu::packed_matmul`: the GEMM unpacks each B
//! panel as it packs it) and as it ran before (the whole weight unpacked, then the dense GEMM).

use spp::cpu::{PackedMatrix, SparseLayout, ValueKind};
use std::time::Instant;

const ROUNDS: usize = 7;
const LAYERS: usize = 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Deterministic values in [-1, 1), `keep` of every 4 kept (2:4), or half of each row at random
/// positions (unstructured).
fn weight(rows: usize, cols: usize, seed: u64, two_four: bool) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    for (i, g) in w.chunks_mut(4).enumerate() {
        if two_four {
            g[(i % 3) + 1] = 0.0;
            g[0] = 0.0;
        }
    }
    if !two_four {
        for v in w.iter_mut() {
            if next() < 0.0 {
                *v = 0.0;
            }
        }
    }
    w
}

fn main() {
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let dense: Vec<(Vec<f32>, usize, usize)> = (0..LAYERS)
        .flat_map(|l| {
            shapes
                .iter()
                .enumerate()
                .map(move |(i, &(r, c))| (l, i, r, c))
        })
        .map(|(l, i, r, c)| (weight(r, c, (l * 7 + i) as u64, true), r, c))
        .collect();
    let packed = |layout, kind, two_four: bool| -> Vec<PackedMatrix> {
        dense
            .iter()
            .enumerate()
            .map(|(i, (w, r, c))| {
                let w = if two_four {
                    w.clone()
                } else {
                    weight(*r, *c, i as u64, false)
                };
                PackedMatrix::pack(&w, *r, *c, layout, kind).unwrap()
            })
            .collect()
    };
    let nm = SparseLayout::NM { n: 2, m: 4 };
    let variants: Vec<(&str, Vec<PackedMatrix>)> = vec![
        ("2:4 f32", packed(nm, ValueKind::F32, true)),
        (
            "bitmask 50% f32",
            packed(SparseLayout::Bitmask, ValueKind::F32, false),
        ),
        ("2:4 bf16", packed(nm, ValueKind::Bf16, true)),
        ("2:4 int8", packed(nm, ValueKind::Int8, true)),
    ];
    let x: Vec<f32> = (0..1536).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut times = vec![Vec::new(); variants.len() + 1];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for (w, r, c) in &dense {
            let mut y = vec![0f32; *r];
            spp::cpu::gemm_abt(&x[..*c], w, &mut y, 1, *c, *r);
            std::hint::black_box(&y);
        }
        times[0].push(t.elapsed().as_secs_f64());
        for (k, (_, ms)) in variants.iter().enumerate() {
            let t = Instant::now();
            for m in ms {
                std::hint::black_box(m.matvec(&x[..m.cols], 1, None));
            }
            times[k + 1].push(t.elapsed().as_secs_f64());
        }
    }
    prefill(&dense[..shapes.len()], &variants);
    let dense_bytes: u64 = dense.iter().map(|(w, _, _)| w.len() as u64 * 4).sum();
    let base = median(times[0].clone());
    println!("| weights | MB read | ms per pass | GB/s | × dense |");
    println!("|---|---|---|---|---|");
    println!(
        "| dense f32 | {:.1} | {:.2} | {:.2} | 1.00 |",
        dense_bytes as f64 / 1e6,
        base * 1e3,
        dense_bytes as f64 / base / 1e9
    );
    for (k, (name, ms)) in variants.iter().enumerate() {
        let bytes: u64 = ms.iter().map(|m| m.bytes()).sum();
        let t = median(times[k + 1].clone());
        println!(
            "| {name} | {:.1} | {:.2} | {:.2} | {:.2} |",
            bytes as f64 / 1e6,
            t * 1e3,
            bytes as f64 / t / 1e9,
            base / t
        );
    }
}

/// The prefill table: one block's linears (`dense`, and the first seven of each variant) against
/// 2047 rows of input.
fn prefill(dense: &[(Vec<f32>, usize, usize)], variants: &[(&str, Vec<PackedMatrix>)]) {
    const T: usize = 2047;
    let x: Vec<f32> = (0..T * 1536).map(|i| (i as f32 * 0.37).sin()).collect();
    let tensor = |c: usize| {
        candle_core::Tensor::from_vec(x[..T * c].to_vec(), (T, c), &candle_core::Device::Cpu)
            .unwrap()
    };
    let inputs = [tensor(576), tensor(1536)];
    let input = |c: usize| &inputs[usize::from(c == 1536)];
    // Per round: dense, then per variant its panels path and the unpack-first path.
    let mut times = vec![Vec::new(); 1 + 2 * variants.len()];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for (w, r, c) in dense {
            let mut y = vec![0f32; T * r];
            spp::cpu::gemm_abt(&x[..T * c], w, &mut y, T, *c, *r);
            std::hint::black_box(&y);
        }
        times[0].push(t.elapsed().as_secs_f64());
        for (k, (_, ms)) in variants.iter().enumerate() {
            let t = Instant::now();
            for m in &ms[..dense.len()] {
                std::hint::black_box(spp::cpu::packed_matmul(input(m.cols), m).unwrap());
            }
            times[1 + 2 * k].push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for m in &ms[..dense.len()] {
                let mut y = vec![0f32; T * m.rows];
                spp::cpu::gemm_abt(&x[..T * m.cols], &m.unpack(), &mut y, T, m.cols, m.rows);
                std::hint::black_box(&y);
            }
            times[2 + 2 * k].push(t.elapsed().as_secs_f64());
        }
    }
    let base = median(times[0].clone());
    println!("| one block's linears × {T} rows | ms | × dense | unpacked first: ms | × dense |");
    println!("|---|---|---|---|---|");
    println!("| dense f32 | {:.1} | 1.00 | | |", base * 1e3);
    for (k, (name, _)) in variants.iter().enumerate() {
        let (a, b) = (
            median(times[1 + 2 * k].clone()),
            median(times[2 + 2 * k].clone()),
        );
        println!(
            "| {name} | {:.1} | {:.2} | {:.1} | {:.2} |",
            a * 1e3,
            base / a,
            b * 1e3,
            base / b
        );
    }
    println!();
}
