//! Pruning on tiny models built in code: exact counts, N:M validity, ties, Wanda against an
//! independent golden (tests/data/prune, scripts/golden/make_wanda_golden.py), sequential
//! propagation between blocks, and the reconstruction ordering SparseGPT < Wanda < magnitude.

mod common;

use candle_core::{Device, Tensor};
use spp::prune::mask::{select, Sparsity};
use spp::prune::{magnitude, prune_model, wanda, PruneMethod, PruneOptions};

fn opts(method: PruneMethod, sparsity: &str) -> PruneOptions {
    PruneOptions {
        method,
        sparsity: sparsity.parse().unwrap(),
        targets: spp::prune::parse_targets("all").unwrap(),
        true_sequential: false,
        blocksize: 16,
        percdamp: 0.01,
    }
}

fn calib(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| common::ids(len, 96, 100 + i as u64))
        .collect()
}

fn weights(l: &spp::model::SparseLinear) -> Vec<f32> {
    l.weight.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn sparsity_parsing_and_errors() {
    assert_eq!(
        "2:4".parse::<Sparsity>().unwrap(),
        Sparsity::NM { n: 2, m: 4 }
    );
    assert_eq!(
        "0.5".parse::<Sparsity>().unwrap(),
        Sparsity::Unstructured { ratio: 0.5 }
    );
    for bad in ["1.5", "0", "4:4", "0:4", "5:4", "x", "2:"] {
        assert!(bad.parse::<Sparsity>().is_err(), "{bad} should be rejected");
    }
    let err = Sparsity::NM { n: 2, m: 8 }
        .check_layer("model.layers.0.mlp.down_proj", 36)
        .unwrap_err()
        .to_string();
    assert!(err.contains("down_proj") && err.contains("36"), "{err}");
}

#[test]
fn selection_is_exact_and_stable() {
    // Ties: equal scores are pruned lowest index first.
    let s = [1.0, 0.5, 0.5, 0.5, 2.0, 0.1];
    let p = select(&s, 1, 6, &Sparsity::Unstructured { ratio: 0.5 }, true);
    assert_eq!(p, vec![false, true, true, false, false, true]);
    // Per-row counts are ⌊n·ratio⌋ in every row; per-matrix is ⌊numel·ratio⌋ overall.
    let scores: Vec<f32> = common::ids(7 * 40, 1000, 9)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let p = select(&scores, 7, 40, &Sparsity::Unstructured { ratio: 0.7 }, true);
    for r in 0..7 {
        assert_eq!(p[r * 40..(r + 1) * 40].iter().filter(|b| **b).count(), 28);
    }
    let p = select(
        &scores,
        7,
        40,
        &Sparsity::Unstructured { ratio: 0.7 },
        false,
    );
    assert_eq!(p.iter().filter(|b| **b).count(), 196);
    let p = select(&scores, 7, 40, &Sparsity::NM { n: 2, m: 4 }, true);
    assert!(p.chunks(4).all(|g| g.iter().filter(|b| **b).count() == 2));
}

#[test]
fn wanda_matches_the_independent_golden() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/prune/wanda_golden.safetensors");
    let g = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let w: Vec<f32> = g["W"]
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (rows, cols) = g["W"].dims2().unwrap();
    let x = g["X"].to_dtype(candle_core::DType::F32).unwrap();
    let mut norms = wanda::InputNorms::new(cols);
    let n = x.dims()[0];
    for i in 0..n {
        norms.add(
            &x.get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    let want_norms: Vec<f64> = g["norms"]
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in norms.sumsq.iter().map(|s| s.sqrt()).zip(&want_norms) {
        assert!((a - b).abs() <= 1e-5 * b.max(1.0), "norm {a} vs {b}");
    }
    let want_scores: Vec<f64> = g["scores"]
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in wanda::scores(&w, cols, &norms).iter().zip(&want_scores) {
        assert!((*a as f64 - b).abs() <= 1e-5 * b.max(1.0));
    }
    for (key, sp) in [
        ("mask_0.5", "0.5"),
        ("mask_2_4", "2:4"),
        ("mask_4_8", "4:8"),
    ] {
        let sp: Sparsity = sp.parse().unwrap();
        let want: Vec<u8> = g[key]
            .to_dtype(candle_core::DType::U8)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // The golden mask marks pruned weights with 1 (W itself holds a few kept zeros).
        let mask = select(&wanda::scores(&w, cols, &norms), rows, cols, &sp, true);
        assert_eq!(
            mask.iter().map(|&b| u8::from(b)).collect::<Vec<_>>(),
            want,
            "{key}"
        );
        let pruned = wanda::prune(&w, rows, cols, &norms, &sp);
        for ((p, o), m) in pruned.iter().zip(&w).zip(&mask) {
            assert_eq!(*p, if *m { 0.0 } else { *o });
        }
    }
}

fn run(method: PruneMethod, sparsity: &str, dev: &Device) -> spp::model::Llama {
    let mut m = common::tiny_model(false, false, dev);
    prune_model(&mut m, &calib(4, 48), &opts(method, sparsity), &mut |_| {}).unwrap();
    m
}

fn exact_counts_body(dev: &Device) {
    for method in [
        PruneMethod::Magnitude,
        PruneMethod::Wanda,
        PruneMethod::SparseGpt,
    ] {
        let m = run(method, "0.5", dev);
        for b in &m.layers {
            for (name, l) in b.linears() {
                let w = weights(l);
                let (rows, cols) = (l.out_features(), l.in_features());
                match method {
                    PruneMethod::Wanda => {
                        for r in 0..rows {
                            assert_eq!(
                                w[r * cols..(r + 1) * cols]
                                    .iter()
                                    .filter(|v| **v == 0.0)
                                    .count(),
                                cols / 2,
                                "{name} row {r}"
                            );
                        }
                    }
                    PruneMethod::Magnitude => assert_eq!(
                        w.iter().filter(|v| **v == 0.0).count(),
                        rows * cols / 2,
                        "{name}"
                    ),
                    // SparseGPT: exactly half of every rows × 16 block.
                    PruneMethod::SparseGpt => {
                        for c0 in (0..cols).step_by(16) {
                            let zeros = (0..rows)
                                .flat_map(|r| (c0..c0 + 16).map(move |c| (r, c)))
                                .filter(|(r, c)| w[r * cols + c] == 0.0)
                                .count();
                            assert_eq!(zeros, rows * 8, "{name} block {c0}");
                        }
                    }
                }
            }
        }
        for sp in ["2:4", "4:8"] {
            let m = run(method, sp, dev);
            let r = spp::inspect::inspect(&m).unwrap();
            assert!(
                (r.linear_sparsity - 0.5).abs() < 1e-12,
                "{method:?} {sp}: {}",
                r.linear_sparsity
            );
            assert!(
                if sp == "2:4" {
                    r.all_linears_2_4
                } else {
                    r.all_linears_4_8
                },
                "{method:?} {sp}"
            );
        }
    }
}

#[test]
fn exact_counts_and_patterns() {
    for dev in common::devices() {
        exact_counts_body(&dev);
    }
}

#[test]
fn block_inputs_come_from_the_pruned_blocks_before() {
    let dev = Device::Cpu;
    let base = common::tiny_model(false, false, &dev);
    let cal = calib(3, 40);
    let o = opts(PruneMethod::Wanda, "0.5");
    let mut pruned = base.clone();
    prune_model(&mut pruned, &cal, &o, &mut |_| {}).unwrap();
    // Recompute block 1's statistics by hand, from the outputs of the *pruned* block 0 ...
    let stats_after = |model: &spp::model::Llama| {
        let mut n = wanda::InputNorms::new(32);
        for w in &cal {
            let x = model
                .embed(
                    &Tensor::new(w.as_slice(), &dev)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                )
                .unwrap();
            let y = model.block_forward(0, &x).unwrap();
            let taps = model.block_taps(1, &y).unwrap();
            n.add(
                &taps
                    .attn_in
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
        n
    };
    let mut half = base.clone();
    half.layers[0] = pruned.layers[0].clone();
    let from_pruned = stats_after(&half);
    let from_dense = stats_after(&base);
    assert_ne!(
        from_pruned.sumsq, from_dense.sumsq,
        "pruning block 0 must change what block 1 sees"
    );
    let q = &base.layers[1].self_attn.q_proj;
    let sp: Sparsity = "0.5".parse().unwrap();
    let (rows, cols) = (q.out_features(), q.in_features());
    let want = wanda::prune(&weights(q), rows, cols, &from_pruned, &sp);
    assert_eq!(
        weights(&pruned.layers[1].self_attn.q_proj),
        want,
        "block 1 must be pruned on the pruned block 0's outputs"
    );
    assert_ne!(
        wanda::prune(&weights(q), rows, cols, &from_dense, &sp),
        want
    );
}

/// ‖W X − Ŵ X‖² over the q_proj input of block 0 (identical across methods, block 0 sees the embeddings).
fn recon_error(dense: &spp::model::Llama, pruned: &spp::model::Llama, cal: &[Vec<u32>]) -> f64 {
    let mut e = 0.0;
    for w in cal {
        let x = dense
            .embed(
                &Tensor::new(w.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap();
        let taps = dense.block_taps(0, &x).unwrap();
        let a = dense.layers[0].mlp.gate_proj.forward(&taps.mlp_in).unwrap();
        let b = pruned.layers[0]
            .mlp
            .gate_proj
            .forward(&taps.mlp_in)
            .unwrap();
        e += (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
    }
    e
}

#[test]
fn sparsegpt_reconstructs_best() {
    let dev = Device::Cpu;
    let dense = common::tiny_model(false, false, &dev);
    let cal = calib(4, 48);
    for sp in ["0.5", "2:4"] {
        let err = |method| {
            let mut m = dense.clone();
            // Only block 0's gate_proj, so every method sees the same input statistics.
            let mut o = opts(method, sp);
            o.targets = vec!["gate".into()];
            prune_model(&mut m, &cal, &o, &mut |_| {}).unwrap();
            recon_error(&dense, &m, &cal)
        };
        let (s, w, mg) = (
            err(PruneMethod::SparseGpt),
            err(PruneMethod::Wanda),
            err(PruneMethod::Magnitude),
        );
        assert!(
            s < w && s < mg,
            "{sp}: sparsegpt {s} wanda {w} magnitude {mg}"
        );
    }
}

#[test]
fn magnitude_prunes_per_matrix() {
    let w: Vec<f32> = vec![5.0, 4.0, 3.0, 2.0, 0.1, 0.2, 0.3, 0.4];
    let p = magnitude::prune(&w, 2, 4, &"0.5".parse().unwrap());
    assert_eq!(
        p,
        vec![5.0, 4.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0],
        "one threshold for the whole matrix"
    );
}

#[test]
fn bad_options_are_rejected_before_pruning() {
    let mut m = common::tiny_model(false, false, &Device::Cpu);
    let before = weights(&m.layers[0].mlp.up_proj);
    // hidden 32 is not divisible by 64.
    let err = prune_model(
        &mut m,
        &calib(1, 16),
        &opts(PruneMethod::Wanda, "2:64"),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not divisible by M = 64") && err.contains("model.layers.0."),
        "{err}"
    );
    assert_eq!(
        weights(&m.layers[0].mlp.up_proj),
        before,
        "nothing may be pruned after a rejected option"
    );
    let err = prune_model(&mut m, &[], &opts(PruneMethod::Wanda, "0.5"), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("calibration"), "{err}");
    assert!(spp::prune::parse_targets("q,attn").is_err());
}

#[test]
fn statistics_reduced_on_the_device_equal_the_host_ones() {
    // Wanda's column norms and SparseGPT's running Hessian as a GPU accumulates them (candle ops
    // on the tensors' device), against the CPU accumulators, over three samples of a [2, T, n]
    // tap (a 1e-3 offset keeps the running average's weights visible).
    let n = 24;
    let samples: Vec<Vec<f32>> = (0..3u64)
        .map(|s| {
            common::ids(2 * 19 * n, 1000, 40 + s)
                .iter()
                .map(|&v| v as f32 / 250.0 - 2.0 + 1e-3 * s as f32)
                .collect()
        })
        .collect();
    let mut norms = spp::prune::wanda::InputNorms::new(n);
    let mut hess = spp::prune::sparsegpt::Hessian::new(n);
    for x in &samples {
        norms.add(x);
        hess.add(x, 2 * 19).unwrap();
    }
    for dev in common::devices() {
        let mut dn = spp::prune::wanda::InputNorms::new(n);
        let mut dh = spp::prune::sparsegpt::DeviceHessian::new(n);
        for x in &samples {
            let t = Tensor::from_vec(x.clone(), (2, 19, n), &dev).unwrap();
            dn.add_on_device(&t).unwrap();
            dh.add(&t).unwrap();
        }
        for (a, b) in dn.sumsq.iter().zip(&norms.sumsq) {
            assert!((a - b).abs() <= 1e-9 * b.abs(), "{dev:?}: norms {a} vs {b}");
        }
        let dh = dh.finish().unwrap();
        assert_eq!((dh.n, dh.samples), (n, 3));
        for (i, (a, b)) in dh.h.iter().zip(&hess.h).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{dev:?}: H[{}, {}] {a} vs {b}",
                i / n,
                i % n
            );
        }
    }
}
