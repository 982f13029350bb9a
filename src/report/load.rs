//! What a run directory holds: `run.json`, each stage's `stage.json` and the records of its
//! outputs, read into [`Run`] with every unreadable file turned into a warning.

use crate::adapter::AdapterConfig;
use crate::bail;
use crate::error::{IoContext, Result};
pub(super) use crate::inspect::Report as Inspect;
use crate::record::{
    LrFindRecord, MergeRecord, PplRecord, PruneRecord, RunRecord, StageRecord, TasksRecord,
    TrainRecord,
};
use crate::train::Metric;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Two perplexities are comparable when they score the same tokens the same way.
pub(super) fn protocol_key(p: &PplRecord) -> (Option<&str>, usize, usize, usize, usize, bool) {
    let r = &p.result;
    (
        p.text.as_deref(),
        r.seqlen,
        r.windows,
        stride(p),
        r.tokens,
        r.bos,
    )
}

/// The window stride (a record without one: the window length, the only stride spp uses).
pub(super) fn stride(p: &PplRecord) -> usize {
    match p.result.stride {
        0 => p.result.seqlen,
        s => s,
    }
}

/// `tasks.json` with its tasks in the order of `settings.tasks`, then any others by name.
pub(super) fn tasks_in_order(mut f: TasksRecord) -> TasksRecord {
    let mut ordered = Vec::new();
    for t in &f.settings.tasks {
        if let Some(i) = f.tasks.iter().position(|r| &r.task == t) {
            ordered.push(f.tasks.remove(i));
        }
    }
    f.tasks.sort_by(|a, b| a.task.cmp(&b.task));
    ordered.append(&mut f.tasks);
    f.tasks = ordered;
    f
}

/// A metric as a number, `None` where the record held none (`null` or missing).
pub(super) fn metric(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

/// A count as a number, `None` where the record held none (0 is never a real count here).
pub(super) fn count(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

/// Zeros / weights of each block's linears, by block index.
pub(super) fn per_layer(inspect: &Inspect) -> BTreeMap<usize, f64> {
    let mut acc: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for l in &inspect.linears {
        let Some(i) = layer_index(&l.name) else {
            continue;
        };
        let n = l.shape.iter().map(|&d| d as f64).product::<f64>();
        let e = acc.entry(i).or_default();
        e.0 += l.sparsity * n;
        e.1 += n;
    }
    acc.into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(i, (z, n))| (i, z / n))
        .collect()
}

/// `model.layers.12.mlp.up_proj` -> 12.
pub(super) fn layer_index(name: &str) -> Option<usize> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Status {
    Done,
    /// The stage's own status word (`running`, `failed`, ...).
    Unfinished(String),
    NoStageJson,
    Unreadable(String),
    NotStarted,
}

impl Status {
    pub(super) fn text(&self) -> String {
        match self {
            Status::Done => "done".into(),
            Status::Unfinished(s) => format!("unfinished ({s})"),
            Status::NoStageJson => "unfinished (no stage.json)".into(),
            Status::Unreadable(_) => "unfinished (stage.json unreadable)".into(),
            Status::NotStarted => "not started".into(),
        }
    }
}

pub(super) struct Stage {
    pub(super) name: String,
    pub(super) meta: Option<StageRecord>,
    pub(super) status: Status,
    pub(super) ppl: Option<PplRecord>,
    pub(super) tasks: Option<TasksRecord>,
    pub(super) inspect: Option<Inspect>,
    pub(super) prune: Option<PruneRecord>,
    pub(super) train: Option<TrainRecord>,
    pub(super) adapter_config: Option<AdapterConfig>,
    pub(super) merge: Option<MergeRecord>,
    /// `lr-find/lr_find.json` of a range test stage.
    pub(super) lr_find: Option<LrFindRecord>,
    pub(super) metrics: Vec<Metric>,
}

impl Stage {
    pub(super) fn done(&self) -> bool {
        self.status == Status::Done
    }
    pub(super) fn kind(&self) -> &str {
        self.meta
            .as_ref()
            .and_then(|m| m.kind)
            .map_or("?", |k| k.as_str())
    }
    pub(super) fn label(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.model.as_deref())
    }
    pub(super) fn is_eval(&self) -> bool {
        self.kind() == "eval"
    }
    pub(super) fn seconds(&self) -> Option<f64> {
        self.meta.as_ref().and_then(|m| m.seconds)
    }
    /// stage.json's peak memory, else the one the stage's own record measured.
    pub(super) fn peak(&self) -> Option<u64> {
        self.meta
            .as_ref()
            .and_then(|m| m.peak_rss_bytes)
            .or_else(|| self.prune.as_ref().and_then(|r| r.peak_rss_bytes))
            .or_else(|| self.train.as_ref().and_then(|r| r.report.peak_rss_bytes))
    }
    pub(super) fn trainable(&self) -> Option<u64> {
        self.train
            .as_ref()
            .and_then(|r| count(r.report.trainable_parameters))
            .map(|n| n as u64)
    }
    /// The `--model` path the stage's command read, from its record.
    pub(super) fn source_path(&self) -> Option<&str> {
        let train = self.train.as_ref().and_then(|r| r.model.as_deref());
        let merge = self.merge.as_ref().and_then(|r| r.model.as_deref());
        let prune = self.prune.as_ref().and_then(|r| r.model.as_deref());
        train.or(merge).or(prune)
    }
}

pub(super) struct Run {
    pub(super) dir: PathBuf,
    pub(super) meta: RunRecord,
    pub(super) stages: Vec<Stage>,
    pub(super) warnings: Vec<String>,
}

impl Run {
    pub(super) fn title(&self) -> String {
        format!(
            "spp report: {}",
            self.meta.name.as_deref().unwrap_or("unnamed run")
        )
    }
}

pub(super) fn load(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        bail!(
            "{}: not a directory; give the --out directory of `spp run RECIPE.toml`",
            dir.display()
        );
    }
    let run_json = dir.join("run.json");
    if !run_json.is_file() {
        bail!(
            "{}: no run.json, so this is not an `spp run` output directory; give the --out directory of `spp run RECIPE.toml` (it writes run.json first)",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&run_json).at(&run_json)?;
    let meta: RunRecord = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => bail!(
            "{}: cannot read the run record: {e}; it should be the JSON object `spp run` writes (recipe, name, spp_version, stages, started_unix, command)",
            run_json.display()
        ),
    };
    let mut warnings = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for n in &meta.stages {
        if n.is_empty() || n.contains(['/', '\\']) || n == "." || n == ".." {
            warnings.push(format!(
                "run.json lists a stage named {n:?}, which is not a directory name; skipped"
            ));
        } else if !names.contains(n) {
            names.push(n.clone());
        }
    }
    // Stage directories run.json does not list (e.g. from an older recipe), by name.
    let mut extra = Vec::new();
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().join("stage.json").is_file() && !names.contains(&name) {
            extra.push(name);
        }
    }
    extra.sort();
    if !extra.is_empty() {
        warnings.push(format!(
            "stage directories not listed in run.json: {} (shown after the listed ones)",
            extra.join(", ")
        ));
    }
    names.extend(extra);
    let stages = names
        .into_iter()
        .map(|n| load_stage(dir, n, &mut warnings))
        .collect();
    Ok(Run {
        dir: dir.to_path_buf(),
        meta,
        stages,
        warnings,
    })
}

/// Parse an optional JSON file: `None` when absent, a warning when unreadable.
pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    dir: &Path,
    warnings: &mut Vec<String>,
) -> Option<T> {
    if !path.is_file() {
        return None;
    }
    let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!("{rel}: cannot read: {e}; left out"));
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(format!("{rel}: not the expected JSON ({e}); left out"));
            None
        }
    }
}

pub(super) fn load_stage(dir: &Path, name: String, warnings: &mut Vec<String>) -> Stage {
    let sdir = dir.join(&name);
    let mut st = Stage {
        name,
        meta: None,
        status: Status::NotStarted,
        ppl: None,
        tasks: None,
        inspect: None,
        prune: None,
        train: None,
        adapter_config: None,
        merge: None,
        lr_find: None,
        metrics: Vec::new(),
    };
    if !sdir.is_dir() {
        return st;
    }
    let sj = sdir.join("stage.json");
    if !sj.is_file() {
        st.status = Status::NoStageJson;
        return st;
    }
    let meta = std::fs::read_to_string(&sj)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<StageRecord>(&t).map_err(|e| e.to_string()));
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            warnings.push(format!("{}/stage.json: {e}", st.name));
            st.status = Status::Unreadable(e);
            return st;
        }
    };
    st.status = match meta.status.as_deref() {
        Some("done") => Status::Done,
        Some(s) => Status::Unfinished(s.to_string()),
        None => Status::Unfinished("no status".into()),
    };
    st.meta = Some(meta);
    if !st.done() {
        return st;
    }
    st.ppl = read_json(&sdir.join("ppl.json"), dir, warnings);
    st.tasks = read_json(&sdir.join("tasks.json"), dir, warnings).map(tasks_in_order);
    st.inspect = read_json(&sdir.join("inspect.json"), dir, warnings);
    st.prune = read_json(&sdir.join("model/prune.json"), dir, warnings);
    st.merge = read_json(&sdir.join("model/merge.json"), dir, warnings);
    st.train = read_json(&sdir.join("adapter/train.json"), dir, warnings);
    st.adapter_config = read_json(&sdir.join("adapter/adapter_config.json"), dir, warnings);
    st.lr_find = read_json(&sdir.join("lr-find/lr_find.json"), dir, warnings);
    let mpath = sdir.join("adapter/metrics.jsonl");
    if mpath.is_file() {
        match std::fs::read_to_string(&mpath) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Metric>(line) {
                        Ok(m) => st.metrics.push(m),
                        Err(e) => warnings.push(format!(
                            "{}/adapter/metrics.jsonl line {}: {e}; skipped",
                            st.name,
                            i + 1
                        )),
                    }
                }
            }
            Err(e) => warnings.push(format!("{}/adapter/metrics.jsonl: {e}", st.name)),
        }
    }
    st
}
