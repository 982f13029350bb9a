use super::*;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A weight with `n` of every `m` values kept (the largest), or with about half zeroed.
fn sparse(rows: usize, cols: usize, layout: SparseLayout, seed: u64) -> Vec<f32> {
    let mut w = values(rows * cols, seed);
    match layout {
        SparseLayout::NM { n, m } => {
            for g in w.chunks_mut(m) {
                let mut order: Vec<usize> = (0..m).collect();
                order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
                for &i in &order[n..] {
                    g[i] = 0.0;
                }
            }
            // Some groups with fewer than n non-zeros, to exercise the stored zeros.
            for v in w.iter_mut().step_by(7) {
                *v = 0.0;
            }
        }
        SparseLayout::Bitmask | SparseLayout::Dense => {
            for (i, v) in w.iter_mut().enumerate() {
                if (i * 2654435761) % 7 < 4 {
                    *v = 0.0;
                }
            }
        }
    }
    w
}

fn dense_product(w: &[f32], x: &[f32], rows: usize, cols: usize, t: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * rows];
    for i in 0..t {
        for r in 0..rows {
            y[i * rows + r] = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[i * cols + c] as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}

const LAYOUTS: [SparseLayout; 5] = [
    SparseLayout::NM { n: 2, m: 4 },
    SparseLayout::NM { n: 4, m: 8 },
    SparseLayout::NM { n: 1, m: 4 },
    SparseLayout::Bitmask,
    SparseLayout::Dense,
];
const KINDS: [ValueKind; 4] = [
    ValueKind::F32,
    ValueKind::Bf16,
    ValueKind::F16,
    ValueKind::Int8,
];

#[test]
fn pack_then_unpack_gives_the_weight_back() {
    // Column counts with and without a whole vector block, and a ragged tail.
    for (rows, cols) in [(5, 64), (3, 40), (7, 8)] {
        for layout in LAYOUTS {
            let w = sparse(rows, cols, layout, 3);
            let p = PackedMatrix::pack(&w, rows, cols, layout, ValueKind::F32).unwrap();
            assert_eq!(p.unpack(), w, "{layout:?} {rows}x{cols}");
            let q =
                PackedMatrix::from_parts(rows, cols, layout, p.values_unpadded(), p.index.clone())
                    .unwrap();
            assert_eq!(q, p);
            for kind in KINDS {
                let p = PackedMatrix::pack(&w, rows, cols, layout, kind).unwrap();
                let tol = if kind == ValueKind::Int8 {
                    1.0 / 127.0
                } else {
                    1e-2
                };
                for (a, b) in p.unpack().iter().zip(&w) {
                    assert!((a - b).abs() <= tol * 1.01, "{kind:?} {a} vs {b}");
                    assert_eq!(
                        *a == 0.0,
                        *b == 0.0 || kind == ValueKind::Int8 && b.abs() < tol
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_gives_the_same_bits_and_the_dense_product() {
    for (rows, cols, t) in [(33, 96, 1), (40, 64, 3), (9, 40, 2), (17, 48, 1)] {
        for layout in LAYOUTS {
            let w = sparse(rows, cols, layout, 11);
            let x = values(t * cols, 5);
            for kind in KINDS {
                let p = PackedMatrix::pack(&w, rows, cols, layout, kind).unwrap();
                let want = dense_product(&p.unpack(), &x, rows, cols, t);
                let outs: Vec<Vec<f32>> = SparseKernel::available()
                    .into_iter()
                    .map(|k| p.matvec(&x, t, Some(k)))
                    .collect();
                for (y, k) in outs.iter().zip(SparseKernel::available()) {
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        outs[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{k:?} {layout:?} {kind:?} {rows}x{cols}"
                    );
                    for (a, b) in y.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{k:?} {layout:?} {kind:?}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn segments_are_the_unpacked_rows() {
    // Segments that start and end inside N:M groups and mask bytes.
    let (rows, cols) = (3, 64);
    for layout in LAYOUTS {
        for kind in KINDS {
            let p = PackedMatrix::pack(&sparse(rows, cols, layout, 7), rows, cols, layout, kind)
                .unwrap();
            let w = p.unpack();
            for (p0, len) in [(0, 64), (0, 13), (5, 30), (17, 47), (63, 1), (8, 16)] {
                for r in 0..rows {
                    let mut seg = vec![f32::NAN; len];
                    p.unpack_segment(r, p0, &mut seg);
                    assert_eq!(
                        seg,
                        w[r * cols + p0..r * cols + p0 + len],
                        "{layout:?} {kind:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn many_rows_multiply_the_packed_rows_as_the_dense_weight() {
    // k = 1208: three K slices of 403 columns, so panels start inside groups and mask bytes.
    use crate::cpu::gemm::{gemm_lhs_abt_many, Lhs, Weight};
    let (m, k, n) = (40, 1208, 70);
    let x = values(m * k, 9);
    for layout in LAYOUTS {
        for kind in KINDS {
            let p = PackedMatrix::pack(&sparse(n, k, layout, 13), n, k, layout, kind).unwrap();
            let dense = p.unpack();
            let want = gemm_lhs_abt_many(Lhs::Rows(&x), m, k, &[(Weight::F32(&dense), n)]);
            let got = gemm_lhs_abt_many(Lhs::Rows(&x), m, k, &[(Weight::Packed(&p), n)]);
            assert_eq!(
                got[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{layout:?} {kind:?}"
            );
        }
    }
}

#[test]
fn bad_parts_are_refused() {
    let layout = SparseLayout::NM { n: 2, m: 4 };
    let w = sparse(2, 8, layout, 1);
    let p = PackedMatrix::pack(&w, 2, 8, layout, ValueKind::F32).unwrap();
    // Too few values, a short index, a repeated position.
    let PackedValues::F32(v) = p.values_unpadded() else {
        unreachable!()
    };
    assert!(PackedMatrix::from_parts(
        2,
        8,
        layout,
        PackedValues::F32(v[1..].to_vec()),
        p.index.clone()
    )
    .is_err());
    assert!(PackedMatrix::from_parts(
        2,
        8,
        layout,
        PackedValues::F32(v.clone()),
        p.index[1..].to_vec()
    )
    .is_err());
    let mut idx = p.index.clone();
    idx[0] = 0; // positions 0 and 0
    assert!(PackedMatrix::from_parts(2, 8, layout, PackedValues::F32(v), idx).is_err());
    // A dense weight does not fit 2:4.
    let dense = values(16, 2);
    assert!(PackedMatrix::pack(&dense, 2, 8, layout, ValueKind::F32).is_err());
}
