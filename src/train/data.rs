//! Training data as `docs/TRAINING.md` fixes it: Alpaca records with the exact template of
//! `docs/METHOD.md` §4.1 (EOS appended as alpaca-lora does) or plain-text records cut into
//! blocks; the seeded validation split and epoch order; micro-batches packed into one row.

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::model::{PackedRow, Packing};
use crate::rng::splitmix64;
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use std::path::Path;

const PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const PROMPT_NO_INPUT: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The Alpaca prompt (everything before the response).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        PROMPT_NO_INPUT.replace("{instruction}", instruction)
    } else {
        PROMPT_INPUT
            .replace("{instruction}", instruction)
            .replace("{input}", input)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Alpaca,
    Text,
}

/// One training sequence: tokens at index ≥ `first_target` (and ≥ 1) are predicted.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub first_target: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: Kind,
    pub examples: Vec<Example>,
    /// Records in the file.
    pub records: usize,
    /// Alpaca records cut at the cutoff.
    pub truncated: usize,
}

enum Record {
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
    Text(String),
}

/// Records with their location (`line 12` / `record 12`) for error messages.
fn read_records(path: &Path) -> Result<Vec<(String, serde_json::Value)>> {
    let raw = std::fs::read_to_string(path).at(path)?;
    let bad = |loc: &str, e: serde_json::Error| {
        Error::Msg(format!("{}: {loc}: invalid JSON ({e})", path.display()))
    };
    if path.extension().is_some_and(|e| e == "jsonl") {
        raw.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let loc = format!("line {}", i + 1);
                serde_json::from_str(l)
                    .map(|v| (loc.clone(), v))
                    .map_err(|e| bad(&loc, e))
            })
            .collect()
    } else {
        match serde_json::from_str(&raw).map_err(|e| bad("file", e))? {
            serde_json::Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("record {i}"), v))
                .collect()),
            _ => bail!(
                "{}: expected a JSON array of records (or use a .jsonl file, one record per line)",
                path.display()
            ),
        }
    }
}

fn parse(path: &Path) -> Result<(Kind, Vec<Record>)> {
    let items = read_records(path)?;
    let Some((_, first)) = items.first() else {
        bail!("{}: no records", path.display());
    };
    let kind = if first.get("instruction").is_some() {
        Kind::Alpaca
    } else if first.get("text").is_some() {
        Kind::Text
    } else {
        bail!(
            "{}: the first record has neither `instruction` (Alpaca) nor `text`",
            path.display()
        );
    };
    let mut out = Vec::with_capacity(items.len());
    for (loc, v) in items {
        let field = |name: &str, required: bool| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
                None | Some(serde_json::Value::Null) => {
                    bail!("{}: {loc}: missing field `{name}`", path.display())
                }
                Some(_) => bail!("{}: {loc}: field `{name}` must be a string", path.display()),
            }
        };
        out.push(match kind {
            Kind::Alpaca => Record::Alpaca {
                instruction: field("instruction", true)?,
                input: field("input", false)?,
                output: field("output", true)?,
            },
            Kind::Text => Record::Text(field("text", true)?),
        });
    }
    Ok((kind, out))
}

/// Reads and tokenises a training file.
pub fn load(path: &Path, tok: &Tokenizer, cutoff: usize, train_on_inputs: bool) -> Result<Dataset> {
    if cutoff < 2 {
        bail!("--cutoff must be at least 2 tokens");
    }
    let (kind, records) = parse(path)?;
    let eos = *tok
        .eos_ids
        .first()
        .ok_or_else(|| Error::Msg("the tokenizer has no EOS token; training needs one".into()))?;
    let n = records.len();
    let mut examples = Vec::new();
    let mut truncated = 0;
    let mut stream = Vec::new();
    for rec in records {
        match rec {
            Record::Alpaca {
                instruction,
                input,
                output,
            } => {
                let prompt = alpaca_prompt(&instruction, &input);
                let mut ids = tok.encode(&format!("{prompt}{output}"), true)?;
                if ids.len() > cutoff {
                    ids.truncate(cutoff);
                    truncated += 1;
                }
                if ids.len() < cutoff && ids.last() != Some(&eos) {
                    ids.push(eos);
                }
                let first_target = if train_on_inputs {
                    0
                } else {
                    tok.encode(&prompt, true)?.len().min(ids.len())
                };
                examples.push(Example { ids, first_target });
            }
            Record::Text(text) => {
                stream.extend(tok.encode(&text, true)?);
                stream.push(eos);
            }
        }
    }
    if kind == Kind::Text {
        examples = stream
            .chunks_exact(cutoff)
            .map(|c| Example {
                ids: c.to_vec(),
                first_target: 0,
            })
            .collect();
        if examples.is_empty() {
            bail!(
                "{}: {} tokens in all, fewer than one block of --cutoff {cutoff}",
                path.display(),
                stream.len()
            );
        }
    }
    Ok(Dataset {
        kind,
        examples,
        records: n,
        truncated,
    })
}

/// A seeded Fisher–Yates permutation of `0..n` (splitmix64; see `docs/TRAINING.md`).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// `(train, validation)` example indices: validation is the first `val_size` of a seeded
/// permutation, train the rest in file order.
pub fn split(n: usize, val_size: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let val: Vec<usize> = permutation(n, seed).into_iter().take(val_size).collect();
    let mut is_val = vec![false; n];
    val.iter().for_each(|&i| is_val[i] = true);
    ((0..n).filter(|&i| !is_val[i]).collect(), val)
}

/// The `pos`-th example of the endless stream of epochs (epoch `e` in the order
/// `train[permutation(len, seed + 1 + e)]`).
pub struct Stream {
    train: Vec<usize>,
    seed: u64,
    epoch: usize,
    order: Vec<usize>,
}

impl Stream {
    pub fn new(train: Vec<usize>, seed: u64) -> Self {
        let order = permutation(train.len(), seed.wrapping_add(1));
        Self {
            train,
            seed,
            epoch: 0,
            order,
        }
    }

    pub fn get(&mut self, pos: usize) -> usize {
        let n = self.train.len();
        let epoch = pos / n;
        if epoch != self.epoch {
            self.epoch = epoch;
            self.order = permutation(n, self.seed.wrapping_add(1 + epoch as u64));
        }
        self.train[self.order[pos % n]]
    }
}

/// A micro-batch packed into one row: `ids` `[1, N]` holds the examples one after another, no
/// padding; `packing` lets each token see only its own example's earlier tokens and gives it its
/// position within the example, so every example computes exactly what it would alone.
/// `positions` are the packed rows whose next token is a target, with those targets.
pub struct Batch {
    pub ids: Tensor,
    pub packing: Packing,
    pub positions: Tensor,
    pub targets: Tensor,
    /// Tokens (all real: there is no padding).
    pub tokens: usize,
    pub n_targets: usize,
}

pub fn batch(examples: &[&Example], device: &Device) -> Result<Batch> {
    if examples.iter().all(|e| e.ids.len() < 2) {
        bail!("a micro-batch needs sequences of at least 2 tokens");
    }
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for e in examples {
        let start = ids.len();
        ids.extend_from_slice(&e.ids);
        rows.extend((0..e.ids.len()).map(|t| PackedRow {
            position: t as u32,
            shared: (0, 0),
            own: start as u32,
        }));
        for t in e.first_target.max(1)..e.ids.len() {
            positions.push((start + t - 1) as u32);
            targets.push(e.ids[t]);
        }
    }
    let (n, n_targets) = (ids.len(), targets.len());
    Ok(Batch {
        ids: Tensor::from_vec(ids, (1, n), device)?,
        packing: Packing::new(rows, device)?,
        positions: Tensor::from_vec(positions, n_targets, device)?,
        targets: Tensor::from_vec(targets, n_targets, device)?,
        tokens: n,
        n_targets,
    })
}
