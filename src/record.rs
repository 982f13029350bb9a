//! The JSON records the jobs write, one type per record: `prune.json`, `train.json`,
//! `merge.json`, `ppl.json`, `tasks.json`, `inspect.json` (an [`crate::inspect::Report`]), the
//! `--json` line of `spp convert gguf`, and `spp run`'s `run.json` and `stage.json`. The jobs
//! write these types and `spp run` and `spp report` read the same types back.
//!
//! A record read back may come from an older spp or be written by hand: what the report can do
//! without is an `Option` or has a default, so a missing field is a missing number, not an error.

use crate::adapter::{AdapterConfig, MergedLinear};
use crate::eval::perplexity::PplResult;
use crate::eval::zeroshot::TaskResult;
use crate::gguf::ConvertReport;
use crate::prune::{calib::Calibration, PruneOptions, PruneReport};
use crate::train::lr_find::LrFindReport;
use crate::train::{TrainOptions, TrainReport};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The version that writes a record.
pub fn spp_version() -> Option<String> {
    Some(env!("CARGO_PKG_VERSION").to_string())
}

/// The value of a missing metric.
pub fn nan() -> f64 {
    f64::NAN
}

/// A number JSON may hold as `null` (serde_json writes a non-finite f64 as `null`): NaN then.
pub fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`null_as_nan`] for every element of a list.
pub fn nulls_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect())
}

/// Linear sparsity and the N:M checks of a written model.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SparsitySummary {
    pub linear_sparsity: f64,
    pub all_linears_2_4: bool,
    pub all_linears_4_8: bool,
}

impl From<&crate::inspect::Report> for SparsitySummary {
    fn from(r: &crate::inspect::Report) -> Self {
        Self {
            linear_sparsity: r.linear_sparsity,
            all_linears_2_4: r.all_linears_2_4,
            all_linears_4_8: r.all_linears_4_8,
        }
    }
}

/// `prune.json`, next to the pruned model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneRecord {
    pub spp_version: Option<String>,
    /// The dense model's directory.
    pub model: Option<String>,
    #[serde(default)]
    pub dtype: String,
    pub options: Option<PruneOptions>,
    #[serde(default)]
    pub comparison_group: String,
    pub calibration: Option<Calibration>,
    pub result: Option<SparsitySummary>,
    pub report: Option<PruneReport>,
    #[serde(default)]
    pub predicted_peak_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
    #[serde(default)]
    pub peak_anon_bytes: u64,
}

/// `train.json`, next to the adapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRecord {
    pub spp_version: Option<String>,
    /// The frozen model's directory.
    pub model: Option<String>,
    pub data: Option<String>,
    pub options: Option<TrainOptions>,
    /// The range test record (`lr_find.json`) whose suggestion was the learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_from: Option<String>,
    #[serde(default)]
    pub report: TrainReport,
}

/// `lr_find.json`, the record of a learning-rate range test (`spp train --find-lr`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LrFindRecord {
    pub spp_version: Option<String>,
    /// The frozen model's directory.
    pub model: Option<String>,
    pub data: Option<String>,
    /// The settings of the test, with `lr` the suggestion.
    pub options: Option<TrainOptions>,
    #[serde(default)]
    pub report: LrFindReport,
}

/// `merge.json`, next to the merged model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeRecord {
    pub spp_version: Option<String>,
    /// The model the adapter was trained on.
    pub model: Option<String>,
    #[serde(default)]
    pub adapter: String,
    pub adapter_config: Option<AdapterConfig>,
    pub merged_linears: Option<usize>,
    #[serde(default)]
    pub zeros_before: usize,
    #[serde(default)]
    pub zeros_after: usize,
    #[serde(default)]
    pub adapted_weights: usize,
    pub all_zeros_kept: Option<bool>,
    #[serde(flatten)]
    pub sparsity: SparsitySummary,
    #[serde(default)]
    pub linears: Vec<MergedLinear>,
}

/// The perplexity protocol recorded in `ppl.json`.
pub const PPL_PROTOCOL: &str =
    "non-overlapping windows, stride = seqlen, all positions scored, tail dropped";

/// `spp eval ppl --json` (`ppl.json` of a run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PplRecord {
    #[serde(flatten)]
    pub result: PplResult,
    #[serde(default)]
    pub model: String,
    pub text: Option<String>,
    pub protocol: Option<String>,
}

/// The zero-shot protocol recorded in `tasks.json`.
pub const TASKS_PROTOCOL: &str = "lm-evaluation-harness 0.4 multiple choice, 0-shot, no BOS; acc = argmax of summed \
                         log-likelihood, acc_norm = argmax of log-likelihood / characters of the choice; \
                         stderr = sample std / sqrt(n)";

/// How `tasks.json` was measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSettings {
    pub model: String,
    pub adapter: Option<String>,
    pub dtype: Option<String>,
    pub tasks: Vec<String>,
    pub data_dir: Option<String>,
    pub limit: Option<usize>,
    pub batch_size: usize,
    pub batch_tokens: usize,
    pub prefix_sharing: bool,
    pub num_fewshot: Option<usize>,
    pub max_length: usize,
    pub protocol: Option<String>,
    pub spp_version: Option<String>,
}

/// `spp eval tasks --json` / `--out` (`tasks.json` of a run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TasksRecord {
    #[serde(default)]
    pub settings: TaskSettings,
    pub mean_acc: Option<f64>,
    pub mean_acc_norm: Option<f64>,
    #[serde(default)]
    pub seconds: f64,
    /// An object keyed by task name, in the order the tasks ran.
    #[serde(serialize_with = "tasks_as_map", deserialize_with = "tasks_from_map")]
    pub tasks: Vec<TaskResult>,
}

impl TasksRecord {
    pub fn get(&self, task: &str) -> Option<&TaskResult> {
        self.tasks.iter().find(|r| r.task == task)
    }

    /// The Markdown table `spp eval tasks` prints: a row per task and the mean.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from(
            "| task | n | acc | ± | acc_norm | ± | seconds |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.tasks {
            let _ = writeln!(
                s,
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} |",
                r.task, r.n, r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr, r.seconds
            );
        }
        let nan = f64::NAN;
        let _ = writeln!(
            s,
            "| mean | | {:.4} | | {:.4} | | {:.1} |",
            self.mean_acc.unwrap_or(nan),
            self.mean_acc_norm.unwrap_or(nan),
            self.seconds
        );
        s
    }
}

fn tasks_as_map<S: Serializer>(tasks: &[TaskResult], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(tasks.iter().map(|r| (&r.task, r)))
}

fn tasks_from_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TaskResult>, D::Error> {
    // serde_json keeps the file's key order (its `preserve_order` feature).
    let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    map.into_iter()
        .map(|(name, v)| {
            let mut r = TaskResult::deserialize(v).map_err(serde::de::Error::custom)?;
            r.task = name;
            Ok(r)
        })
        .collect()
}

/// `spp convert gguf --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertRecord {
    #[serde(flatten)]
    pub report: ConvertReport,
    pub seconds: f64,
    pub out: String,
}

/// The kind of an `spp run` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Prune,
    Train,
    Merge,
    Eval,
    /// A learning-rate range test (`spp train --find-lr`).
    #[serde(rename = "lr-find")]
    LrFind,
}

impl StageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StageKind::Prune => "prune",
            StageKind::Train => "train",
            StageKind::Merge => "merge",
            StageKind::Eval => "eval",
            StageKind::LrFind => "lr-find",
        }
    }
}

/// `stage.json` of an `spp run` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    #[serde(default)]
    pub name: String,
    pub kind: Option<StageKind>,
    /// The label of the model the stage produced or evaluated.
    pub model: Option<String>,
    #[serde(default)]
    pub commands: Vec<Vec<String>>,
    #[serde(default)]
    pub key: String,
    /// running, done, failed or interrupted.
    pub status: Option<String>,
    pub seconds: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub started_unix: Option<i64>,
}

/// `run.json` of an `spp run` directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    pub recipe: Option<String>,
    pub name: Option<String>,
    pub spp_version: Option<String>,
    pub stages: Vec<String>,
    pub started_unix: Option<i64>,
    pub command: Vec<String>,
}

/// `pack.json`, next to a packed model (`spp pack`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackRecord {
    #[serde(default)]
    pub spp_version: Option<String>,
    pub model: String,
    /// Type of the kept values: f32, bf16, f16 or int8.
    pub values: String,
    pub packed_linears: usize,
    pub dense_linears: usize,
    /// Bytes of the block linears stored dense in the model's dtype, and as written.
    pub linear_bytes_dense: u64,
    pub linear_bytes: u64,
    /// Bytes of the output head stored in 8 bits (`--int8-head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_bytes: Option<u64>,
    pub linears: Vec<PackedLinear>,
}

/// One linear of [`PackRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackedLinear {
    pub name: String,
    /// `N:M` or `bitmask`; `None` when stored dense.
    pub layout: Option<String>,
    pub dense_bytes: u64,
    pub bytes: u64,
}

impl PackRecord {
    /// One line: what was packed and the size of the block linears against dense.
    pub fn line(&self, out: &std::path::Path) -> String {
        format!(
            "packed {} of {} linears ({} values) → {}: block linears {:.1} MB, {:.3}× dense ({:.1} MB)\n",
            self.packed_linears,
            self.packed_linears + self.dense_linears,
            self.values,
            out.display(),
            self.linear_bytes as f64 / 1e6,
            self.linear_bytes as f64 / self.linear_bytes_dense.max(1) as f64,
            self.linear_bytes_dense as f64 / 1e6
        )
    }
}
