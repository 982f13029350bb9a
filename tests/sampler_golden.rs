//! `spp::generate::distribution` against transformers' logits warpers (temperature, then top-p
//! with min_tokens_to_keep = 1): `tests/data/generate/sampler_golden.json`, written by
//! `scripts/golden/make_sampler_golden.py` (its docstring and the README there say how).

use candle_core::{Device, Tensor};
use serde_json::Value;
use spp::generate::{distribution, Sampler, SamplingOptions};
use std::path::PathBuf;

/// Both sides compute in f64 from the same f32 logits: they differ by rounding (~1e-15). A wrong
/// rule (a token kept or dropped, temperature after top-p, no renormalisation) moves some
/// probability by at least the smallest kept one of a top-p case, 5e-5.
const TOL: f64 = 1e-9;

struct Case {
    name: String,
    temperature: f64,
    top_p: Option<f64>,
    logits: Vec<f32>,
    tie_groups: Vec<Vec<usize>>,
    probs: Vec<f64>,
}

fn cases() -> Vec<Case> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/generate/sampler_golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden: Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            temperature: c["temperature"].as_f64().unwrap(),
            top_p: c["top_p"].as_f64(),
            logits: floats(&c["logits"]).into_iter().map(|x| x as f32).collect(),
            tie_groups: c["tie_groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| floats(g).into_iter().map(|i| i as usize).collect())
                .collect(),
            probs: floats(&c["probs"]),
        })
        .collect()
}

/// spp's distribution over the whole vocabulary (0 for tokens that cannot be drawn).
fn dense(c: &Case) -> Vec<f64> {
    let mut p = vec![0.0; c.logits.len()];
    for (i, q) in distribution(&c.logits, c.temperature, c.top_p) {
        assert_eq!(p[i as usize], 0.0, "{}: token {i} listed twice", c.name);
        p[i as usize] = q;
    }
    p
}

/// Token-by-token comparison, except, under top-p, within a group of bit-equal logits: which of
/// the equal tokens top-p keeps is a tie-break (transformers' follows its sort's order of equal
/// elements), so there the sorted probabilities of the group must agree. Greedy ties are not
/// lenient: both sides take the first maximum.
fn mismatches(c: &Case, got: &[f64]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_group = vec![false; got.len()];
    let top_p_ties = if c.top_p.is_some() && c.temperature > 0.0 {
        &c.tie_groups[..]
    } else {
        &[]
    };
    for g in top_p_ties {
        let sorted = |v: &[f64]| {
            let mut s: Vec<f64> = g.iter().map(|&i| v[i]).collect();
            s.sort_by(f64::total_cmp);
            s
        };
        let (a, b) = (sorted(got), sorted(&c.probs));
        if a.iter().zip(&b).any(|(x, y)| (x - y).abs() > TOL) {
            out.push(format!(
                "{}: tied tokens {g:?}: spp {a:?}, reference {b:?}",
                c.name
            ));
        }
        g.iter().for_each(|&i| in_group[i] = true);
    }
    for (i, (&x, &y)) in got.iter().zip(&c.probs).enumerate() {
        if !in_group[i] && (x - y).abs() > TOL {
            out.push(format!("{}: token {i}: spp {x}, reference {y}", c.name));
        }
    }
    out
}

#[test]
fn distribution_matches_transformers_warpers() {
    let cases = cases();
    assert!(cases.len() >= 10, "golden file has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let got = dense(c);
        assert_eq!(got.len(), c.probs.len(), "{}", c.name);
        let sum: f64 = got.iter().sum();
        if (sum - 1.0).abs() > TOL {
            failures.push(format!("{}: probabilities sum to {sum}", c.name));
        }
        failures.extend(mismatches(c, &got));
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The golden cases do put ties where the tie-break decides, and spp's rule is the documented
/// one: equal probabilities in id order, so the lowest ids are kept.
#[test]
fn ties_at_the_top_p_boundary_keep_the_lowest_ids() {
    let cases = cases();
    let c = cases
        .iter()
        .find(|c| c.name == "tie_straddles_boundary")
        .expect("case tie_straddles_boundary");
    let kept: Vec<u32> = distribution(&c.logits, c.temperature, c.top_p)
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(kept, [6, 1]);
}

/// The draw follows the distribution: only kept tokens come out, at their frequencies.
#[test]
fn draws_follow_the_distribution() {
    let cases = cases();
    let n = 20_000;
    for name in ["tie_one_of_two_low", "t1.5_top_p0.5", "greedy_tie"] {
        let c = cases.iter().find(|c| c.name == name).unwrap();
        let mut sampler = Sampler::new(&SamplingOptions {
            temperature: c.temperature,
            top_p: c.top_p,
            seed: 7,
            ..Default::default()
        })
        .unwrap();
        let logits = Tensor::new(c.logits.as_slice(), &Device::Cpu).unwrap();
        let mut counts = vec![0usize; c.logits.len()];
        for _ in 0..n {
            counts[sampler.sample(&logits).unwrap() as usize] += 1;
        }
        let expected = dense(c);
        for (i, (&k, &p)) in counts.iter().zip(&expected).enumerate() {
            let f = k as f64 / n as f64;
            // Binomial standard deviation ≤ 0.0036 at n = 20000: 0.02 is over 5 of them.
            assert!(
                (p == 0.0 && k == 0) || (p > 0.0 && (f - p).abs() < 0.02),
                "{name}: token {i} drawn {f:.4} of the time, p = {p:.4}"
            );
        }
    }
}
