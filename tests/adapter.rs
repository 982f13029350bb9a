//! The SPP layer (block / row-group custom op against the naive `R(A)⊙b⊙W` form, gradients
//! against finite differences), adapters on a model, save/load and the sparsity-preserving merge.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use spp::adapter::{self, dropout_mask, lora, op, spp_naive, AdapterSpec, Method};
use spp::model::Llama;

fn rand(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = common::ids(n, 10_000, seed)
        .iter()
        .map(|&i| i as f32 / 5000.0 - 1.0)
        .collect();
    (Tensor::from_vec(v, shape, &Device::Cpu).unwrap() * scale).unwrap()
}

#[test]
fn spp_op_equals_naive_form_forward_and_gradients() {
    // Blocks of 8 and of 64 rows.
    for (m, r) in [(32, 4), (128, 2)] {
        let (t, n) = (9, 24);
        let w = rand(&[m, n], 1, 1.0);
        for drop in [None, Some((11u64, 0.3f32))] {
            let x = Var::from_tensor(&rand(&[t, n], 2, 1.0)).unwrap();
            let a = Var::from_tensor(&rand(&[r, n], 3, 0.5)).unwrap();
            let b = Var::from_tensor(&rand(&[m, 1], 4, 0.5)).unwrap();
            let o = op::SppOp {
                w: op::Frozen::Dense(w.clone()),
                scale: 1.7,
                dropout: drop,
            };
            let fast = x
                .as_tensor()
                .apply_op3(a.as_tensor(), &b.as_tensor().flatten_all().unwrap(), o)
                .unwrap();
            let mask = drop.map(|(s, p)| {
                Tensor::from_vec(dropout_mask(s, t * n, p), (t, n), &Device::Cpu).unwrap()
            });
            let slow = spp_naive(
                x.as_tensor(),
                &w,
                a.as_tensor(),
                b.as_tensor(),
                1.7,
                mask.as_ref(),
            )
            .unwrap();
            assert!(
                common::max_diff(&fast, &slow) < 1e-4,
                "forward, m {m}, dropout {drop:?}"
            );
            let weight = rand(&[t, m], 5, 1.0);
            let gf = (fast * &weight)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gs = (slow * &weight)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("A", &a), ("b", &b)] {
                let (f, s) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gs.get(v.as_tensor()).unwrap(),
                );
                assert_eq!(f.dims(), s.dims());
                assert!(
                    common::max_diff(f, s) < 1e-4,
                    "d{name}: {} (m {m}, dropout {drop:?})",
                    common::max_diff(f, s)
                );
            }
        }
    }
}

/// SPP's and LoRA's ops on a packed weight (a sparse layout, or 16-bit values) read it as it is
/// (SPP a row at a time, LoRA through the GEMM and an unpacked copy in its backward) and give the
/// bits they give on the unpacked dense weight: forward and every gradient, with and without
/// dropout. 30 tokens: LoRA's product takes the blocked GEMM.
#[test]
fn fused_ops_on_packed_weights_equal_the_dense_weight() {
    use spp::cpu::{PackedMatrix, SparseLayout, ValueKind};
    let (m, r, t, n) = (32, 4, 30, 24);
    // Two of every four inputs zero, so every layout fits.
    let w = rand(&[m, n], 1, 1.0)
        .mul(
            &Tensor::from_iter((0..m * n).map(|i| (i % 4 < 2) as u8 as f32), &Device::Cpu)
                .unwrap()
                .reshape((m, n))
                .unwrap(),
        )
        .unwrap();
    let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    let layouts = [
        (SparseLayout::NM { n: 2, m: 4 }, ValueKind::F32),
        (SparseLayout::Bitmask, ValueKind::F16),
        (SparseLayout::Dense, ValueKind::Bf16),
    ];
    let bits = |t: &Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    };
    for (layout, kind) in layouts {
        let p = PackedMatrix::pack(&wv, m, n, layout, kind).unwrap();
        let dense = Tensor::from_vec(p.unpack(), (m, n), &Device::Cpu).unwrap();
        for (lora, drop) in [false, true]
            .into_iter()
            .flat_map(|l| [(l, None), (l, Some((11u64, 0.3f32)))])
        {
            let run = |w: op::Frozen| {
                let x = Var::from_tensor(&rand(&[t, n], 2, 1.0)).unwrap();
                let a = Var::from_tensor(&rand(&[r, n], 3, 0.5)).unwrap();
                let b_shape = if lora { vec![m, r] } else { vec![m] };
                let b = Var::from_tensor(&rand(&b_shape, 4, 0.5)).unwrap();
                let (scale, dropout) = (1.7, drop);
                let (x_, a_, b_) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
                let y = match lora {
                    true => x_.apply_op3(a_, b_, lora::LoraOp { w, scale, dropout }),
                    false => x_.apply_op3(a_, b_, op::SppOp { w, scale, dropout }),
                }
                .unwrap();
                let g = (&y * rand(&[t, m], 5, 1.0))
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let mut out = vec![bits(&y)];
                for v in [&x, &a, &b] {
                    out.push(bits(g.get(v.as_tensor()).unwrap()));
                }
                out
            };
            let packed = run(op::Frozen::Packed(std::sync::Arc::new(p.clone())));
            assert_eq!(
                packed,
                run(op::Frozen::Dense(dense.clone())),
                "lora {lora}: {layout:?} {kind:?} {drop:?}"
            );
        }
    }
}

#[test]
fn per_block_and_row_group_forms_agree() {
    // The second shape needs two row groups (1 Mi-element scratch, two blocks of 256 × 2048).
    for (t, n, m, r) in [(7, 16, 48, 4), (3, 2048, 1024, 4)] {
        forms_agree(t, n, m, r);
    }
}

fn forms_agree(t: usize, n: usize, m: usize, r: usize) {
    let v = |len: usize, seed| rand(&[len], seed, 1.0).to_vec1::<f32>().unwrap();
    let (x, w, a, b, g) = (v(t * n, 1), v(m * n, 2), v(r * n, 3), v(m, 4), v(t * m, 5));
    let d = op::Dims { t, n, m, r };
    let mask = dropout_mask(9, t * n, 0.2);
    let close = |p: &[f32], q: &[f32]| {
        p.iter()
            .zip(q)
            .all(|(p, q)| (p - q).abs() < 1e-4 * (1.0 + p.abs()))
    };
    // With dropout, and without (where the row-group form merges W and the adapter's weight).
    for mask in [Some(&mask[..]), None] {
        let fwd = |form| op::forward(&x, &w, &a, &b, d, 1.5, mask, form);
        assert!(close(&fwd(op::Form::Blocks), &fwd(op::Form::RowGroups)));
        let bwd = |form| op::backward(&x, &w, &a, &b, &g, d, 1.5, mask, form);
        let (g1, g2) = (bwd(op::Form::Blocks), bwd(op::Form::RowGroups));
        assert!(close(&g1.0, &g2.0) && close(&g1.1, &g2.1) && close(&g1.2, &g2.2));
    }
}

#[test]
fn naive_form_gradients_match_finite_differences() {
    let (t, n, m, r) = (5, 6, 8, 2);
    let f64t = |shape: &[usize], seed| rand(shape, seed, 1.0).to_dtype(DType::F64).unwrap();
    let (w, x0, a0, b0, weight) = (
        f64t(&[m, n], 1),
        f64t(&[t, n], 2),
        f64t(&[r, n], 3),
        f64t(&[m, 1], 4),
        f64t(&[t, m], 5),
    );
    let loss = |x: &Tensor, a: &Tensor, b: &Tensor| -> Tensor {
        (spp_naive(x, &w, a, b, 2.0, None).unwrap() * &weight)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let (x, a, b) = (
        Var::from_tensor(&x0).unwrap(),
        Var::from_tensor(&a0).unwrap(),
        Var::from_tensor(&b0).unwrap(),
    );
    let grads = loss(x.as_tensor(), a.as_tensor(), b.as_tensor())
        .backward()
        .unwrap();
    let eps = 1e-6;
    for which in 0..3 {
        let base = [&x0, &a0, &b0][which];
        let analytic: Vec<f64> = grads
            .get([&x, &a, &b][which].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..flat.len() {
            let at = |d: f64| {
                let mut v = flat.clone();
                v[i] += d;
                let p = Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap();
                let args = match which {
                    0 => (p, a0.clone(), b0.clone()),
                    1 => (x0.clone(), p, b0.clone()),
                    _ => (x0.clone(), a0.clone(), p),
                };
                loss(&args.0, &args.1, &args.2).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "arg {which} entry {i}: {numeric} vs {}",
                analytic[i]
            );
        }
    }
}

#[test]
fn dropped_rows_are_the_zeros_of_the_dropout_mask() {
    // Rows of 7 entries: the 4-entry draw groups straddle rows.
    for (seed, rows, n, p) in [(3u64, 50, 7, 0.3f32), (9, 4, 1536, 0.05), (1, 3, 8, 0.0)] {
        let mask = dropout_mask(seed, rows * n, p);
        let want: Vec<Vec<u32>> = mask
            .chunks(n)
            .map(|r| (0..n as u32).filter(|&j| r[j as usize] == 0.0).collect())
            .collect();
        assert_eq!(
            adapter::dropped_rows(seed, rows, n, p),
            want,
            "seed {seed}, n {n}"
        );
    }
}

#[test]
fn dropout_mask_is_seeded_and_has_the_right_rate() {
    let a = dropout_mask(5, 100_000, 0.05);
    assert_eq!(a, dropout_mask(5, 100_000, 0.05));
    assert_ne!(a, dropout_mask(6, 100_000, 0.05));
    let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
    assert!((dropped - 0.05).abs() < 0.005, "{dropped}");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.95).abs() < 1e-6));
}

/// Zeroes weights so that every linear is 2:4 (`nm`) or 50% unstructured (a scattered pattern).
fn prune_tiny(model: &mut Llama, nm: bool) {
    for block in &mut model.layers {
        for (_, lin) in block.linears_mut() {
            let (m, n) = (lin.out_features(), lin.in_features());
            let keep: Vec<f32> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    let drop = if nm {
                        c % 4 == 1 || c % 4 == 2
                    } else {
                        (r * 7 + c * 3) % 4 < 2
                    };
                    if drop {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            lin.weight = (&lin.weight
                * Tensor::from_vec(keep, (m, n), lin.weight.device()).unwrap())
            .unwrap();
        }
    }
}

fn spec(method: Method, r: usize, scale: f64) -> AdapterSpec {
    AdapterSpec {
        method,
        targets: ["q", "k", "v", "o", "gate", "up", "down"]
            .map(String::from)
            .to_vec(),
        r,
        scale,
        dropout: 0.05,
    }
}

/// Gives every adapter's second factor (b / B) random values, so that the adapter is active.
fn randomise(model: &Llama) {
    for (i, (name, v)) in adapter::trainable(model).into_iter().enumerate() {
        if name.ends_with("spp_b.weight") || name.ends_with("lora_B.weight") {
            let r = rand(v.dims(), 100 + i as u64, 0.3);
            v.set(&r.to_device(v.device()).unwrap()).unwrap();
        }
    }
}

fn logits(model: &Llama) -> Tensor {
    let ids = Tensor::from_vec(common::ids(24, 96, 9), (2, 12), model.device()).unwrap();
    model.forward(&ids).unwrap()
}

#[test]
fn zero_init_adapter_keeps_the_pruned_model() {
    let mut model = common::tiny_model(false, false, &Device::Cpu);
    prune_tiny(&mut model, true);
    let base = logits(&model);
    adapter::attach(&mut model, &spec(Method::Spp, 4, 2.0), 1).unwrap();
    assert!(common::max_diff(&base, &logits(&model)) < 1e-6);
    assert_eq!(adapter::trainable(&model).len(), 2 * 7 * 2);
}

#[test]
fn spp_merge_equals_adapted_model_and_keeps_every_zero() {
    for dev in common::devices() {
        merge_body(&dev);
    }
}

fn merge_body(dev: &Device) {
    for nm in [true, false] {
        let mut model = common::tiny_model(true, false, dev);
        prune_tiny(&mut model, nm);
        let (base, mask) = (logits(&model), common::zero_masks(&model));
        adapter::attach(&mut model, &spec(Method::Spp, 4, 1.7), 3).unwrap();
        randomise(&model);
        let adapted = logits(&model);
        assert!(
            common::max_diff(&base, &adapted) > 1e-2,
            "the adapter must change the model"
        );
        let report = adapter::merge(&mut model).unwrap();
        assert_eq!(report.len(), 14);
        assert!(report
            .iter()
            .all(|l| l.zeros_kept && l.zeros_after == l.zeros_before));
        assert!(model
            .layers
            .iter()
            .all(|b| b.linears().iter().all(|(_, l)| l.adapter.is_none())));
        assert!(
            common::max_diff(&adapted, &logits(&model)) <= 1e-4,
            "merged vs adapted: {}",
            common::max_diff(&adapted, &logits(&model))
        );
        assert_eq!(
            mask,
            common::zero_masks(&model),
            "the merged mask must be bit-identical"
        );
        if nm {
            assert!(model.layers.iter().all(|b| b
                .linears()
                .iter()
                .all(|(_, l)| l.satisfies_n_m(2, 4).unwrap())));
        }
    }
}

#[test]
fn lora_mask_merge_keeps_zeros_and_plain_lora_does_not() {
    for method in [Method::Lora, Method::LoraMask] {
        let mut model = common::tiny_model(false, false, &Device::Cpu);
        prune_tiny(&mut model, false);
        let mask = common::zero_masks(&model);
        adapter::attach(&mut model, &spec(method, 4, 2.0), 5).unwrap();
        randomise(&model);
        let adapted = logits(&model);
        let report = adapter::merge(&mut model).unwrap();
        if method == Method::Lora {
            assert!(report
                .iter()
                .all(|l| !l.zeros_kept && l.zeros_after < l.zeros_before));
            assert!(common::max_diff(&adapted, &logits(&model)) <= 1e-4);
        } else {
            assert!(report.iter().all(|l| l.zeros_kept));
            assert_eq!(mask, common::zero_masks(&model));
        }
    }
}

#[test]
fn rows_must_divide_out_features_and_the_error_names_the_layer() {
    let mut model = common::tiny_model(false, false, &Device::Cpu);
    let e = adapter::attach(&mut model, &spec(Method::Spp, 5, 2.0), 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj") && e.contains("not divisible"),
        "{e}"
    );
}

#[test]
fn saved_adapter_loads_back_and_refuses_another_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    let mut model = common::tiny_model(false, false, &Device::Cpu);
    prune_tiny(&mut model, true);
    let plain = model.clone();
    adapter::attach(&mut model, &spec(Method::Spp, 4, 2.0), 1).unwrap();
    randomise(&model);
    let hash = adapter::weights_hash(&plain).unwrap();
    let cfg = adapter::AdapterConfig::new(&spec(Method::Spp, 4, 2.0), &plain, tmp.path(), hash);
    adapter::save(&model, &cfg, &dir, false).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(written["r"], 4);
    assert_eq!(written["peft_type"], "SPP");
    assert_eq!(written["target_modules"].as_array().unwrap().len(), 7);

    let mut again = plain.clone();
    let (loaded, warning) = adapter::load(&mut again, &dir, false).unwrap();
    assert!(warning.is_none());
    assert_eq!(loaded.method, Method::Spp);
    assert!(common::max_diff(&logits(&model), &logits(&again)) < 1e-6);
    // Attached for training, the forward records a graph for the backward; loaded to be applied,
    // none (it would keep every activation of an evaluation alive).
    assert!(logits(&model).track_op());
    assert!(!logits(&again).track_op());

    let mut other = common::tiny_model(true, false, &Device::Cpu);
    let e = adapter::load(&mut other, &dir, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("different model") && e.contains("--force"),
        "{e}"
    );
    let (_, warning) = adapter::load(&mut other, &dir, true).unwrap();
    assert!(warning.is_some());
}

/// SPP on bf16 weights runs the fused op in f32, one linear widened at a time, and activations
/// are f32 on the CPU: the same logits as the f32 model holding the same (bf16-rounded) weights
/// up to the order of f32 sums, and gradients reach every A and b.
#[test]
fn spp_and_lora_on_bf16_weights_match_f32_and_train() {
    let cfg = common::tiny_config(false, false);
    let t = common::random_tensors(&cfg);
    let rounded: std::collections::HashMap<String, Tensor> = t
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
        })
        .collect();
    // SPP and LoRA both run their fused op in f32 on 16-bit weights.
    for method in [Method::Spp, Method::Lora] {
        let mut m16 = Llama::load(cfg.clone(), &rounded, DType::BF16, &Device::Cpu).unwrap();
        let mut m32 = Llama::load(cfg.clone(), &rounded, DType::F32, &Device::Cpu).unwrap();
        let s = AdapterSpec {
            dropout: 0.0,
            ..spec(method, 4, 2.0)
        };
        adapter::attach(&mut m16, &s, 3).unwrap();
        adapter::attach(&mut m32, &s, 3).unwrap();
        randomise(&m16);
        randomise(&m32);
        let (a, b) = (logits(&m16), logits(&m32));
        let diff = common::max_diff(&a, &b);
        let scale = common::max_abs(&b);
        assert!(
            diff < 1e-4 * scale,
            "{method}: bf16 {diff} against a scale of {scale}"
        );
        let ids = Tensor::from_vec(common::ids(12, 96, 4), (1, 12), &Device::Cpu).unwrap();
        let loss = m16
            .forward(&ids)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, v) in adapter::trainable(&m16) {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{method}: no gradient for {name}"));
            assert!(common::max_abs(g) > 0.0, "{name}");
        }
    }
}
