//! `spp::train::data::load` on Alpaca records against an independent re-implementation of
//! alpaca-lora's tokenisation (template, EOS when not cut off, cutoff, prompt labels masked):
//! `tests/data/alpaca/alpaca_golden.json`, written by `scripts/golden/make_alpaca_golden.py`.
//!
//! Two tokenizers: SmolLM2's (`models/smollm2-135m`; skipped when absent unless
//! SPP_REQUIRE_REAL_MODEL=1) and the LLaMA-2 one of the tiny GGUF in `../shared/data/models`
//! (adds BOS), converted here by `spp convert gguf`.

mod common;

use candle_core::Device;
use serde_json::Value;
use spp::model::LlamaConfig;
use spp::tokenizer::Tokenizer;
use spp::train::data::{batch, load, Example};
use std::path::{Path, PathBuf};

fn golden() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/alpaca/alpaca_golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn section<'a>(g: &'a Value, name: &str) -> &'a Value {
    g["tokenizers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no tokenizer {name} in the golden file"))
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// `labels` as transformers' loss reads them: -100 for the tokens that are not targets.
fn labels(e: &Example) -> Vec<i64> {
    e.ids
        .iter()
        .enumerate()
        .map(|(t, &id)| if t < e.first_target { -100 } else { id as i64 })
        .collect()
}

/// Writes the section's records (those given by index are read from the shared data file) to
/// `dir/records.json`.
fn write_records(g: &Value, sec: &Value, dir: &Path) -> PathBuf {
    let file = g["data"]["file"].as_str().unwrap();
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(common::shared(file)).unwrap()).unwrap();
    let records: Vec<Value> = sec["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r.get("index") {
            Some(i) => data[i.as_u64().unwrap() as usize].clone(),
            None => r.clone(),
        })
        .collect();
    let path = dir.join("records.json");
    std::fs::write(&path, serde_json::to_string(&records).unwrap()).unwrap();
    path
}

/// Every case of the section: ids, labels for train_on_inputs true and false, the truncation
/// count, and the (position, target) pairs of a packed batch against the shifted labels.
fn check(name: &str, model_dir: &Path) {
    let g = golden();
    let sec = section(&g, name);
    let cfg = LlamaConfig::load(&model_dir.join("config.json")).unwrap();
    let tok = Tokenizer::load(model_dir, &cfg).unwrap();
    assert_eq!(
        tok.eos_ids.first().map(|&e| e as i64),
        sec["eos_token_id"].as_i64(),
        "{name}: EOS"
    );
    let tmp = tempfile::tempdir().unwrap();
    let records = write_records(&g, sec, tmp.path());
    let n_records = sec["records"].as_array().unwrap().len();
    let cases = sec["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for cutoff in ints(&sec["cutoffs"]) {
        let of_cutoff: Vec<&Value> = cases.iter().filter(|c| c["cutoff"] == cutoff).collect();
        assert_eq!(of_cutoff.len(), n_records, "{name}: cutoff {cutoff}");
        for train_on_inputs in [true, false] {
            let key = if train_on_inputs {
                "labels_train_on_inputs"
            } else {
                "labels_masked"
            };
            let ds = load(&records, &tok, cutoff as usize, train_on_inputs).unwrap();
            assert_eq!(ds.examples.len(), n_records);
            let cut = of_cutoff.iter().filter(|c| c["truncated"] == true).count();
            if ds.truncated != cut {
                failures.push(format!(
                    "cutoff {cutoff}: {} records cut, reference {cut}",
                    ds.truncated
                ));
            }
            for c in &of_cutoff {
                let k = c["record"].as_u64().unwrap() as usize;
                let at = format!("cutoff {cutoff}, train_on_inputs {train_on_inputs}, record {k}");
                let e = &ds.examples[k];
                let ids: Vec<i64> = e.ids.iter().map(|&i| i as i64).collect();
                let want_ids = ints(&c["input_ids"]);
                let want_labels = ints(&c[key]);
                if ids != want_ids {
                    failures.push(format!("{at}: ids\n  spp {ids:?}\n  ref {want_ids:?}"));
                    continue;
                }
                let got_labels = labels(e);
                if got_labels != want_labels {
                    failures.push(format!(
                        "{at}: labels\n  spp {got_labels:?}\n  ref {want_labels:?}"
                    ));
                    continue;
                }
                // The loss: position t - 1 predicts labels[t] wherever that is not -100.
                let want: Vec<(u32, u32)> = (1..want_labels.len())
                    .filter(|&t| want_labels[t] != -100)
                    .map(|t| ((t - 1) as u32, want_labels[t] as u32))
                    .collect();
                let b = batch(&[e], &Device::Cpu).unwrap();
                let got: Vec<(u32, u32)> = b
                    .positions
                    .to_vec1::<u32>()
                    .unwrap()
                    .into_iter()
                    .zip(b.targets.to_vec1::<u32>().unwrap())
                    .collect();
                if got != want {
                    failures.push(format!(
                        "{at}: batch targets\n  spp {got:?}\n  ref {want:?}"
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{name} (tokenizer.json sha256 in the golden file: {}): {} mismatches\n{}",
        sec["tokenizer_json_sha256"],
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 2 * cases.len());
}

#[test]
fn smollm2_alpaca_examples_match_reference() {
    let Some(dir) = common::smollm2_dir() else {
        return;
    };
    check("smollm2", &dir);
}

#[test]
fn llama_alpaca_examples_with_bos_match_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::converted_tiny(tmp.path());
    check("llama2_tiny", &dir);
}
