//! AdamW and gradient clipping against PyTorch goldens (tests/data/train,
//! scripts/golden/make_optim_golden.py): `torch.optim.AdamW` and
//! `torch.nn.utils.clip_grad_norm_`, both in float32 on the CPU.

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor, Var};
use spp::train::{clip_grad_norm, AdamW};
use std::collections::HashMap;

const PARAMS: [&str; 4] = ["a", "b", "c", "tiny"];

struct Golden {
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Golden {
    fn load() -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/train/optim_golden.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.load(&Device::Cpu).unwrap()))
            .collect();
        Self {
            tensors,
            meta: meta.metadata().clone().unwrap_or_default(),
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden has no tensor {name}"))
    }

    fn f64s(&self, name: &str) -> Vec<f64> {
        self.get(name).to_vec1::<f64>().unwrap()
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest `|got - want|` over the elements, divided by `scale`.
fn max_err(got: &Tensor, want: &Tensor, scale: f64) -> f64 {
    assert_eq!(got.dims(), want.dims());
    flat(got)
        .iter()
        .zip(flat(want))
        .map(|(&g, w)| (g as f64 - w as f64).abs() / scale)
        .fold(0.0, f64::max)
}

fn max_abs(t: &Tensor) -> f64 {
    flat(t).iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
}

#[test]
fn golden_records_its_provenance() {
    let g = Golden::load();
    assert_eq!(
        g.meta.get("script").map(String::as_str),
        Some("scripts/golden/make_optim_golden.py")
    );
    for key in ["seed", "torch", "python"] {
        assert!(g.meta.contains_key(key), "metadata lacks {key}");
    }
}

/// Parameter error allowed after each step, in units of the largest |parameter| (~1.9): spp and
/// torch differ by float32 roundings only (2e-8 measured). The smallest mistake this must catch,
/// decaying after the Adam update instead of before it, is off by lr·wd·|update| (5e-6 at step 2).
const PARAM_TOL: f64 = 1e-6;
/// Moment error allowed, in units of the moment's largest element at that step: float32
/// roundings (the first moment is a lerp in torch, a multiply-add in spp; 2e-7 measured).
const MOMENT_TOL: f64 = 1e-5;

fn adamw_run(g: &Golden, run: &str) {
    let lrs = g.f64s("lr");
    let wd = g.f64s(&format!("{run}.wd"))[0];
    let params: Vec<Var> = PARAMS
        .iter()
        .map(|n| Var::from_tensor(g.get(&format!("init.{n}"))).unwrap())
        .collect();
    let mut adam = AdamW::new(&params).unwrap();
    for (t, &lr) in lrs.iter().enumerate() {
        let grads: Vec<Tensor> = PARAMS
            .iter()
            .map(|n| g.get(&format!("grad.{n}")).get(t).unwrap())
            .collect();
        adam.step(&params, &grads, lr, wd).unwrap();
        assert_eq!(adam.t, t as u64 + 1);
        for (i, n) in PARAMS.iter().enumerate() {
            let at = |what: &str| g.get(&format!("{run}.{what}.{n}")).get(t).unwrap();
            let want = at("param");
            let scale = max_abs(&want);
            let e = max_err(params[i].as_tensor(), &want, scale);
            assert!(
                e <= PARAM_TOL,
                "{run} step {} (lr {lr}, wd {wd}): parameter {n} off by {e:e} x {scale:.3}",
                t + 1
            );
            for (what, got) in [("exp_avg", &adam.m[i]), ("exp_avg_sq", &adam.v[i])] {
                let want = at(what);
                let scale = max_abs(&want);
                if scale == 0.0 {
                    assert_eq!(max_abs(got), 0.0, "{run} step {}: {what}.{n}", t + 1);
                    continue;
                }
                let e = max_err(got, &want, scale);
                assert!(
                    e <= MOMENT_TOL,
                    "{run} step {}: {what}.{n} off by {e:e} of its largest element {scale:e}",
                    t + 1
                );
            }
        }
    }
}

#[test]
fn adamw_matches_torch_with_weight_decay() {
    adamw_run(&Golden::load(), "decay");
}

#[test]
fn adamw_matches_torch_without_weight_decay() {
    adamw_run(&Golden::load(), "nodecay");
}

/// Relative error allowed per clipped element and for the norm: float32 roundings (1.2e-7
/// measured). The smallest mistakes to catch change the scale by ~1e-3: the 1e-6 left out (case
/// `small`: 2.5e-3) or clipping only when norm > max_norm (case `window`: 1.2e-3).
const CLIP_TOL: f64 = 1e-5;

#[test]
fn clipping_matches_torch() {
    let g = Golden::load();
    for case in ["above", "below", "small", "window"] {
        let max_norm = g.f64s(&format!("clip.{case}.max_norm"))[0];
        let want_norm = g
            .get(&format!("clip.{case}.norm"))
            .to_vec1::<f32>()
            .unwrap()[0] as f64;
        let mut grads: Vec<Tensor> = (0..3)
            .map(|i| g.get(&format!("clip.{case}.grad.{i}")).clone())
            .collect();
        let norm = clip_grad_norm(&mut grads, Some(max_norm)).unwrap();
        assert!(
            ((norm - want_norm) / want_norm).abs() <= CLIP_TOL,
            "{case}: norm {norm} want {want_norm}"
        );
        for (i, got) in grads.iter().enumerate() {
            let want = g.get(&format!("clip.{case}.clipped.{i}"));
            if case == "below" {
                // torch multiplies by exactly 1.0: the gradients must not change at all.
                assert_eq!(flat(got), flat(want), "{case}: gradient {i} changed");
                continue;
            }
            let rel = flat(got)
                .iter()
                .zip(flat(want))
                .map(|(&a, b)| ((a as f64 - b as f64) / b as f64).abs())
                .fold(0.0, f64::max);
            assert!(
                rel <= CLIP_TOL,
                "{case} (max_norm {max_norm}, norm {norm}): gradient {i} off by {rel:e} (relative)"
            );
        }
    }
    // Without max_norm nothing is clipped, and the norm is still reported.
    let mut grads: Vec<Tensor> = (0..3)
        .map(|i| g.get(&format!("clip.above.grad.{i}")).clone())
        .collect();
    let before: Vec<Vec<f32>> = grads.iter().map(flat).collect();
    let norm = clip_grad_norm(&mut grads, None).unwrap();
    let want_norm = g.get("clip.above.norm").to_vec1::<f32>().unwrap()[0] as f64;
    assert!(((norm - want_norm) / want_norm).abs() <= CLIP_TOL);
    assert_eq!(grads.iter().map(flat).collect::<Vec<_>>(), before);
}
