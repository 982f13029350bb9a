//! `spp inspect`'s numbers on a model whose sparsity is set by hand.

mod common;

use candle_core::{Device, Tensor};

/// Zeroes, in every group of 4 inputs of every row, the entries whose index in the group is in `drop`.
fn zero_pattern(w: &Tensor, drop: &[usize]) -> Tensor {
    let (o, i) = w.dims2().unwrap();
    let mask: Vec<f32> = (0..o * i)
        .map(|k| {
            if drop.contains(&(k % i % 4)) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    (w * Tensor::from_vec(mask, (o, i), &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn sparsity_and_n_m_are_exact() {
    let mut m = common::tiny_model(false, false, &Device::Cpu);
    let r = spp::inspect::inspect(&m).unwrap();
    assert_eq!(r.linear_zeros, 0);
    assert!(!r.all_linears_2_4 && !r.all_linears_4_8);
    let lin_params: usize = m
        .layers
        .iter()
        .flat_map(|b| b.linears().map(|(_, l)| l.weight.elem_count()))
        .sum();
    assert_eq!(r.linear_parameters, lin_params);
    let all: usize = m
        .named_tensors()
        .unwrap()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    assert_eq!(r.parameters, all);

    // 2:4 everywhere: exactly half zero, 2:4 and 4:8 both hold.
    for b in m.layers.iter_mut() {
        for (_, lin) in b.linears_mut() {
            lin.weight = zero_pattern(&lin.weight, &[1, 2]);
        }
    }
    let r = spp::inspect::inspect(&m).unwrap();
    assert_eq!(r.linear_zeros, lin_params / 2);
    assert!((r.linear_sparsity - 0.5).abs() < 1e-12);
    assert!(r.all_linears_2_4 && r.all_linears_4_8);

    // One extra non-zero in one group of one linear breaks 2:4 there only.
    let lin = &mut m.layers[1].mlp.down_proj;
    let mut w: Vec<Vec<f32>> = lin.weight.to_vec2().unwrap();
    w[3][1] = 0.5;
    lin.weight = Tensor::new(w, &Device::Cpu).unwrap();
    let r = spp::inspect::inspect(&m).unwrap();
    let bad: Vec<_> = r
        .linears
        .iter()
        .filter(|l| !l.n2m4)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(bad, vec!["model.layers.1.mlp.down_proj"]);
    // That group of 8 now has 5 non-zeros: 4:8 breaks there too.
    let bad: Vec<_> = r
        .linears
        .iter()
        .filter(|l| !l.n4m8)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(bad, vec!["model.layers.1.mlp.down_proj"]);

    // 1:4 groups of 3 zeros: 75% sparse, still 2:4.
    let lin = &mut m.layers[0].self_attn.q_proj;
    lin.weight = zero_pattern(&lin.weight, &[0, 1, 2]);
    let r = spp::inspect::inspect(&m).unwrap();
    assert!((r.linears[0].sparsity - 0.75).abs() < 1e-12 && r.linears[0].n2m4);
}
