//! `spp report DIR`: one readable summary of an `spp run` directory — `DIR/report.md` (with the
//! plots as SVG files in `DIR/plots/`) and a self-contained `DIR/report.html` (inline CSS and
//! SVG, no scripts, no external resources).
//!
//! What it reads (the contract `spp run` writes): `DIR/run.json` (recipe, name, spp version,
//! stage order, start time, command) and per stage `DIR/<stage>/stage.json` (kind, the label of
//! the model it produced or evaluated, the exact argv of its commands, status, seconds, peak
//! memory) plus the stage's outputs: `model/prune.json`, `model/merge.json`,
//! `adapter/{train.json,adapter_config.json,metrics.jsonl}`, `ppl.json`, `tasks.json`,
//! `inspect.json`. Evaluation outputs are optional: a missing kind of number is a missing
//! column, not an error. A stage without `stage.json` or whose status is not `done` is listed
//! as unfinished and its outputs are not used. An unreadable output of a finished stage is
//! reported as a warning in the report; only a missing or unreadable `run.json` is an error.
//!
//! The report answers the question a recipe asks: what did pruning cost against the dense model
//! (perplexity, mean zero-shot accuracy) and which fraction of that gap did fine-tuning win
//! back — `(pruned − fine-tuned) / (pruned − dense)` for perplexity, and the same with the
//! signs turned for accuracy — each computed only over numbers measured the same way.

pub mod svg;

use crate::adapter::AdapterConfig;
use crate::bail;
use crate::error::{IoContext, Result};
use crate::inspect::Report as Inspect;
use crate::prune::Sparsity;
use crate::record::{
    MergeRecord, PplRecord, PruneRecord, RunRecord, StageRecord, TasksRecord, TrainRecord,
};
use crate::run::quote_argv;
use crate::train::Metric;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What `build` wrote.
#[derive(Debug, Clone)]
pub struct ReportPaths {
    pub markdown: PathBuf,
    pub html: PathBuf,
    /// The SVG files `report.md` links to (`DIR/plots/*.svg`).
    pub plots: Vec<PathBuf>,
}

/// Read the run directory `dir` and write `dir/report.md`, `dir/plots/*.svg` and
/// `dir/report.html`, each atomically (a temporary file renamed into place).
pub fn build(dir: &Path) -> Result<ReportPaths> {
    let run = load(dir)?;
    let (doc, figures) = compose(&run);
    let plots_dir = dir.join("plots");
    let mut plots = Vec::new();
    if !figures.is_empty() {
        std::fs::create_dir_all(&plots_dir).at(&plots_dir)?;
    }
    for (file, svg) in &figures {
        let p = plots_dir.join(file);
        crate::model::checkpoint::write_file_atomically(&p, svg.as_bytes())?;
        plots.push(p);
    }
    let markdown = dir.join("report.md");
    let html = dir.join("report.html");
    crate::model::checkpoint::write_file_atomically(&markdown, render_markdown(&doc).as_bytes())?;
    crate::model::checkpoint::write_file_atomically(
        &html,
        render_html(&doc, &run.title()).as_bytes(),
    )?;
    Ok(ReportPaths {
        markdown,
        html,
        plots,
    })
}

// ---------------------------------------------------------------------------------------------
// What the run directory holds.

/// Two perplexities are comparable when they score the same tokens the same way.
fn protocol_key(p: &PplRecord) -> (Option<&str>, usize, usize, usize, usize, bool) {
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
fn stride(p: &PplRecord) -> usize {
    match p.result.stride {
        0 => p.result.seqlen,
        s => s,
    }
}

/// `tasks.json` with its tasks in the order of `settings.tasks`, then any others by name.
fn tasks_in_order(mut f: TasksRecord) -> TasksRecord {
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
fn metric(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

/// A count as a number, `None` where the record held none (0 is never a real count here).
fn count(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

/// Zeros / weights of each block's linears, by block index.
fn per_layer(inspect: &Inspect) -> BTreeMap<usize, f64> {
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
fn layer_index(name: &str) -> Option<usize> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Done,
    /// The stage's own status word (`running`, `failed`, ...).
    Unfinished(String),
    NoStageJson,
    Unreadable(String),
    NotStarted,
}

impl Status {
    fn text(&self) -> String {
        match self {
            Status::Done => "done".into(),
            Status::Unfinished(s) => format!("unfinished ({s})"),
            Status::NoStageJson => "unfinished (no stage.json)".into(),
            Status::Unreadable(_) => "unfinished (stage.json unreadable)".into(),
            Status::NotStarted => "not started".into(),
        }
    }
}

struct Stage {
    name: String,
    meta: Option<StageRecord>,
    status: Status,
    ppl: Option<PplRecord>,
    tasks: Option<TasksRecord>,
    inspect: Option<Inspect>,
    prune: Option<PruneRecord>,
    train: Option<TrainRecord>,
    adapter_config: Option<AdapterConfig>,
    merge: Option<MergeRecord>,
    metrics: Vec<Metric>,
}

impl Stage {
    fn done(&self) -> bool {
        self.status == Status::Done
    }
    fn kind(&self) -> &str {
        self.meta
            .as_ref()
            .and_then(|m| m.kind)
            .map_or("?", |k| k.as_str())
    }
    fn label(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.model.as_deref())
    }
    fn is_eval(&self) -> bool {
        self.kind() == "eval"
    }
    fn seconds(&self) -> Option<f64> {
        self.meta.as_ref().and_then(|m| m.seconds)
    }
    /// stage.json's peak memory, else the one the stage's own record measured.
    fn peak(&self) -> Option<u64> {
        self.meta
            .as_ref()
            .and_then(|m| m.peak_rss_bytes)
            .or_else(|| self.prune.as_ref().and_then(|r| r.peak_rss_bytes))
            .or_else(|| self.train.as_ref().and_then(|r| r.report.peak_rss_bytes))
    }
    fn trainable(&self) -> Option<u64> {
        self.train
            .as_ref()
            .and_then(|r| count(r.report.trainable_parameters))
            .map(|n| n as u64)
    }
    /// The `--model` path the stage's command read, from its record.
    fn source_path(&self) -> Option<&str> {
        let train = self.train.as_ref().and_then(|r| r.model.as_deref());
        let merge = self.merge.as_ref().and_then(|r| r.model.as_deref());
        let prune = self.prune.as_ref().and_then(|r| r.model.as_deref());
        train.or(merge).or(prune)
    }
}

struct Run {
    dir: PathBuf,
    meta: RunRecord,
    stages: Vec<Stage>,
    warnings: Vec<String>,
}

impl Run {
    fn title(&self) -> String {
        format!(
            "spp report: {}",
            self.meta.name.as_deref().unwrap_or("unnamed run")
        )
    }
}

fn load(dir: &Path) -> Result<Run> {
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
fn read_json<T: serde::de::DeserializeOwned>(
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

fn load_stage(dir: &Path, name: String, warnings: &mut Vec<String>) -> Stage {
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

// ---------------------------------------------------------------------------------------------
// Rows of the main table: one per model label, in stage order.

struct Row<'a> {
    label: String,
    stages: Vec<&'a Stage>,
}

impl<'a> Row<'a> {
    fn done(&self) -> impl Iterator<Item = &&'a Stage> {
        self.stages.iter().filter(|s| s.done())
    }
    fn ppl(&self) -> Option<&'a PplRecord> {
        self.done().filter_map(|s| s.ppl.as_ref()).last()
    }
    fn tasks(&self) -> Option<&'a TasksRecord> {
        self.done().filter_map(|s| s.tasks.as_ref()).last()
    }
    fn inspect(&self) -> Option<&'a Inspect> {
        self.done().filter_map(|s| s.inspect.as_ref()).last()
    }
    /// Linear sparsity and the 2:4 / 4:8 checks: inspect.json, else the merge or prune record.
    fn sparsity(&self) -> Option<(f64, Option<bool>, Option<bool>)> {
        if let Some(i) = self.inspect() {
            return Some((
                i.linear_sparsity,
                Some(i.all_linears_2_4),
                Some(i.all_linears_4_8),
            ));
        }
        self.stages.iter().rev().filter(|s| s.done()).find_map(|s| {
            let r = match (&s.merge, &s.prune) {
                (Some(m), _) => m.sparsity,
                (None, Some(p)) => p.result?,
                _ => return None,
            };
            Some((
                r.linear_sparsity,
                Some(r.all_linears_2_4),
                Some(r.all_linears_4_8),
            ))
        })
    }
    fn trainable(&self) -> Option<u64> {
        self.done().find_map(|s| s.trainable())
    }
    fn fine_tuned(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.kind() == "train" || s.kind() == "merge")
    }
    fn produced(&self) -> bool {
        self.stages.iter().any(|s| !s.is_eval())
    }
    fn seconds(&self, eval: bool) -> Option<f64> {
        let v: Vec<f64> = self
            .stages
            .iter()
            .filter(|s| s.is_eval() == eval)
            .filter_map(|s| s.seconds())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
    fn peak(&self) -> Option<u64> {
        self.stages.iter().filter_map(|s| s.peak()).max()
    }
    fn pending(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| !s.done())
            .map(|s| s.name.as_str())
            .collect()
    }
}

fn rows(run: &Run) -> Vec<Row<'_>> {
    let mut rows: Vec<Row> = Vec::new();
    for s in &run.stages {
        let Some(label) = s.label() else { continue };
        match rows.iter_mut().find(|r| r.label == label) {
            Some(r) => r.stages.push(s),
            None => rows.push(Row {
                label: label.to_string(),
                stages: vec![s],
            }),
        }
    }
    rows
}

/// The dense reference: the row labelled `dense`, else the first row no stage of the run produced.
fn baseline(rows: &[Row]) -> Option<usize> {
    rows.iter()
        .position(|r| r.label.eq_ignore_ascii_case("dense"))
        .or_else(|| rows.iter().position(|r| !r.produced()))
}

/// The row a fine-tuned row was trained from: the stage whose `model/` directory its train (or
/// merge) record names as `--model`, else the label before the last " + ".
fn parent(run: &Run, rows: &[Row], i: usize) -> Option<usize> {
    let row = &rows[i];
    let by_path = row.stages.iter().find_map(|s| {
        let p = Path::new(s.source_path()?);
        let mut comps = p
            .components()
            .rev()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if comps.next()? != "model" {
            return None;
        }
        let stage = comps.next()?;
        let src = run.stages.iter().find(|s| s.name == stage)?;
        rows.iter()
            .position(|r| Some(r.label.as_str()) == src.label())
    });
    let by_label = || {
        let (head, _) = row.label.rsplit_once(" + ")?;
        rows.iter().position(|r| r.label == head)
    };
    by_path.or_else(by_label).filter(|&p| p != i)
}

/// Mean acc over the tasks every given row measured on the same number of documents.
fn common_mean_acc(rows: &[&Row]) -> Option<(Vec<f64>, Vec<String>)> {
    let all: Vec<&TasksRecord> = rows.iter().map(|r| r.tasks()).collect::<Option<_>>()?;
    let mut names = Vec::new();
    for r0 in &all[0].tasks {
        let t = &r0.task;
        let same = all
            .iter()
            .all(|ts| ts.get(t).is_some_and(|r| r.n == r0.n && r.acc.is_finite()));
        if same {
            names.push(t.clone());
        }
    }
    if names.is_empty() {
        return None;
    }
    let means = all
        .iter()
        .map(|ts| {
            names
                .iter()
                .filter_map(|t| ts.get(t).and_then(|r| metric(r.acc)))
                .sum::<f64>()
                / names.len() as f64
        })
        .collect();
    Some((means, names))
}

/// Perplexities of the given rows when all were measured with the same protocol.
fn common_ppl(rows: &[&Row]) -> Option<Vec<f64>> {
    let all: Vec<&PplRecord> = rows.iter().map(|r| r.ppl()).collect::<Option<_>>()?;
    let key = protocol_key(all[0]);
    if all.iter().any(|p| protocol_key(p) != key) {
        return None;
    }
    all.iter()
        .map(|p| Some(p.result.ppl).filter(|x| x.is_finite()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Formatting.

fn fmt_ppl(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.2}"),
        Some(_) | None => "∞".into(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

fn fmt_bytes(b: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let b = b as f64;
    if b >= 1024.0 * MIB {
        format!("{:.2} GiB", b / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

pub(crate) fn fmt_secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "—".into();
    }
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        let m = (s / 60.0).floor();
        format!("{m:.0} min {:02.0} s", (s - 60.0 * m).floor())
    } else {
        let h = (s / 3600.0).floor();
        format!("{h:.0} h {:02.0} min", ((s - 3600.0 * h) / 60.0).floor())
    }
}

fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut o = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// A date from Unix seconds (UTC), without a time-zone library: days → civil date (Howard
/// Hinnant's algorithm).
fn fmt_unix(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

fn fmt_sparsity_opt(s: &Sparsity) -> String {
    match s {
        Sparsity::NM { n, m } => format!("{n}:{m}"),
        Sparsity::Unstructured { ratio } => format!("{}%", pct(*ratio)),
    }
}

fn file_stem_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The document, rendered both as Markdown and as HTML.

enum Span {
    T(String),
    C(String),
    B(String),
}

enum Block {
    H(u8, String),
    P(Vec<Span>),
    Note(String),
    List(Vec<Vec<Span>>),
    Table(Table),
    Figure {
        caption: String,
        file: String,
        svg: String,
    },
    Code(String),
}

struct Table {
    class: &'static str,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Right-aligned columns.
    num: Vec<bool>,
}

fn t(s: impl Into<String>) -> Span {
    Span::T(s.into())
}
fn c(s: impl Into<String>) -> Span {
    Span::C(s.into())
}
fn b(s: impl Into<String>) -> Span {
    Span::B(s.into())
}
fn p(s: impl Into<String>) -> Block {
    Block::P(vec![t(s)])
}

/// Builds the document and the plots (file name, SVG) it refers to.
fn compose(run: &Run) -> (Vec<Block>, Vec<(String, String)>) {
    let rows = rows(run);
    let mut doc = Vec::new();
    let mut figures = Vec::new();
    doc.push(Block::H(1, run.title()));
    doc.push(Block::List(summary(run)));

    doc.push(Block::H(2, "Results".into()));
    if rows.is_empty() {
        doc.push(p(
            "No stage has recorded a model yet (no stage.json with a model label).",
        ));
    } else {
        main_table(&rows, &mut doc);
        doc.push(Block::H(
            2,
            "What pruning cost and fine-tuning won back".into(),
        ));
        recovery(run, &rows, &mut doc);
    }

    doc.push(Block::H(2, "Stages".into()));
    stage_table(run, &mut doc);

    doc.push(Block::H(2, "Plots".into()));
    let n = doc.len();
    plots(run, &rows, &mut doc, &mut figures);
    if doc.len() == n {
        doc.push(p(
            "Nothing to plot yet: no training metrics, inspect.json or tasks.json.",
        ));
    }

    doc.push(Block::H(2, "Commands".into()));
    commands(run, &mut doc);
    doc.push(Block::H(2, "Versions and protocols".into()));
    versions(run, &rows, &mut doc);
    doc.push(Block::H(2, "How to read these numbers".into()));
    how_to_read(&rows, &mut doc);
    if !run.warnings.is_empty() {
        doc.push(Block::H(2, "Warnings".into()));
        doc.push(Block::List(
            run.warnings.iter().map(|w| vec![t(w.clone())]).collect(),
        ));
    }
    (doc, figures)
}

fn summary(run: &Run) -> Vec<Vec<Span>> {
    let m = &run.meta;
    let mut items = Vec::new();
    items.push(vec![
        b("Recipe: "),
        t(m.name.clone().unwrap_or_else(|| "(unnamed)".into())),
        t(" from "),
        c(m.recipe.clone().unwrap_or_else(|| "?".into())),
        t(" (copy: "),
        c("recipe.toml"),
        t(")"),
    ]);
    items.push(vec![b("Run directory: "), c(run.dir.display().to_string())]);
    if let Some(s) = m.started_unix {
        items.push(vec![b("Started: "), t(fmt_unix(s))]);
    }
    items.push(vec![
        b("spp version: "),
        t(m.spp_version.clone().unwrap_or_else(|| "unknown".into())),
    ]);
    let done = run.stages.iter().filter(|s| s.done()).count();
    items.push(vec![
        b("Stages: "),
        t(format!(
            "{done} of {} done{}",
            run.stages.len(),
            if done < run.stages.len() {
                format!(", {} unfinished", run.stages.len() - done)
            } else {
                String::new()
            }
        )),
    ]);
    let total: f64 = run.stages.iter().filter_map(|s| s.seconds()).sum();
    let end = run
        .stages
        .iter()
        .filter_map(|s| {
            let m = s.meta.as_ref()?;
            Some(m.started_unix? as f64 + m.seconds?)
        })
        .fold(None::<f64>, |a, x| Some(a.map_or(x, |a| a.max(x))));
    let wall = match (m.started_unix, end) {
        (Some(s), Some(e)) if e >= s as f64 => format!(
            " ({} wall clock from the start to the end of the last stage)",
            fmt_secs(e - s as f64)
        ),
        _ => String::new(),
    };
    items.push(vec![
        b("Total time: "),
        t(format!("{} in stages{wall}", fmt_secs(total))),
    ]);
    items
}

fn main_table(rows: &[Row], doc: &mut Vec<Block>) {
    let ppls: Vec<&PplRecord> = rows.iter().filter_map(|r| r.ppl()).collect();
    let has_ppl = !ppls.is_empty();
    let same_protocol = ppls
        .iter()
        .all(|p| protocol_key(p) == protocol_key(ppls[0]));
    let mut task_names: Vec<String> = Vec::new();
    for r in rows {
        for t in r.tasks().map_or(&[][..], |t| &t.tasks[..]) {
            if !task_names.contains(&t.task) {
                task_names.push(t.task.clone());
            }
        }
    }
    let has_tasks = !task_names.is_empty();
    let has_sparsity = rows.iter().any(|r| r.sparsity().is_some());
    let has_train = rows.iter().any(|r| r.trainable().is_some());
    let has_produce = rows.iter().any(|r| r.seconds(false).is_some());
    let has_eval = rows.iter().any(|r| r.seconds(true).is_some());
    let has_peak = rows.iter().any(|r| r.peak().is_some());

    let mut head = vec!["model".to_string()];
    if has_ppl {
        head.push("perplexity".into());
        if !same_protocol {
            head.push("ppl protocol".into());
        }
    }
    for tn in &task_names {
        head.push(format!("{tn} acc / acc_norm (%)"));
    }
    if has_tasks {
        head.push("mean acc / acc_norm (%)".into());
    }
    if has_sparsity {
        head.extend(["linear sparsity".into(), "2:4".into(), "4:8".into()]);
    }
    if has_train {
        head.push("trainable parameters".into());
    }
    if has_produce {
        head.push("time to produce".into());
    }
    if has_eval {
        head.push("time to evaluate".into());
    }
    if has_peak {
        head.push("peak memory".into());
    }
    let dash = || "—".to_string();
    let mut body = Vec::new();
    for r in rows {
        let mut row = vec![r.label.clone()];
        if has_ppl {
            row.push(r.ppl().map_or_else(dash, |p| fmt_ppl(Some(p.result.ppl))));
            if !same_protocol {
                row.push(r.ppl().map_or_else(dash, |p| {
                    format!("seqlen {} × {} windows", p.result.seqlen, p.result.windows)
                }));
            }
        }
        let tasks = r.tasks();
        for tn in &task_names {
            let cell = tasks.and_then(|ts| ts.get(tn)).map_or_else(dash, |x| {
                let one = |v: Option<f64>, e: Option<f64>| match (v, e) {
                    (Some(v), Some(e)) => format!("{} ± {}", pct(v), pct(e)),
                    (Some(v), None) => pct(v),
                    _ => "—".into(),
                };
                format!(
                    "{} / {}",
                    one(metric(x.acc), metric(x.acc_stderr)),
                    one(metric(x.acc_norm), metric(x.acc_norm_stderr))
                )
            });
            row.push(cell);
        }
        if has_tasks {
            row.push(tasks.map_or_else(dash, |ts| {
                format!(
                    "{} / {}",
                    ts.mean_acc.map_or_else(dash, pct),
                    ts.mean_acc_norm.map_or_else(dash, pct)
                )
            }));
        }
        if has_sparsity {
            match r.sparsity() {
                Some((s, a, b)) => {
                    row.extend([format!("{}%", pct(s)), yes_no(a).into(), yes_no(b).into()])
                }
                None => row.extend([dash(), dash(), dash()]),
            }
        }
        if has_train {
            row.push(r.trainable().map_or_else(dash, |n| {
                match r.inspect().and_then(|i| count(i.parameters)) {
                    Some(p) => format!("{} ({:.2}%)", fmt_int(n), 100.0 * n as f64 / p as f64),
                    None => fmt_int(n),
                }
            }));
        }
        if has_produce {
            row.push(r.seconds(false).map_or_else(dash, fmt_secs));
        }
        if has_eval {
            row.push(r.seconds(true).map_or_else(dash, fmt_secs));
        }
        if has_peak {
            row.push(r.peak().map_or_else(dash, fmt_bytes));
        }
        body.push(row);
    }
    let mut num = vec![true; head.len()];
    num[0] = false;
    doc.push(Block::Table(Table {
        class: "results",
        head,
        rows: body,
        num,
    }));

    if has_ppl && same_protocol {
        doc.push(Block::Note(ppl_protocol(ppls[0])));
    } else if has_ppl {
        doc.push(Block::Note(
            "Perplexity was measured with different protocols in different rows (see the ppl protocol column): those numbers are not comparable with each other.".into(),
        ));
    }
    if has_tasks {
        doc.push(Block::Note(tasks_note(rows)));
    }
    if has_sparsity {
        doc.push(Block::Note(
            "Linear sparsity: the fraction of zero weights in the seven linears of every block (embeddings and LM head are never pruned), from spp inspect; 2:4 / 4:8: whether every such linear keeps at most N of every M consecutive inputs of each row.".into(),
        ));
    }
    if has_produce || has_eval || has_peak {
        doc.push(Block::Note(
            "Time to produce: the prune / train / merge stages that made the model; time to evaluate: its eval stages; peak memory: the largest peak resident memory of those stages.".into(),
        ));
    }
    let pending: Vec<String> = rows
        .iter()
        .filter(|r| !r.pending().is_empty())
        .map(|r| format!("{} ({})", r.label, r.pending().join(", ")))
        .collect();
    if !pending.is_empty() {
        doc.push(Block::Note(format!(
            "Incomplete rows — their unfinished stages contribute no numbers: {}.",
            pending.join("; ")
        )));
    }
}

fn ppl_protocol(pr: &PplRecord) -> String {
    let p = &pr.result;
    let mut s = format!(
        "Perplexity: {} non-overlapping windows of {} tokens (stride {}, tail dropped), {} tokens",
        p.windows,
        p.seqlen,
        stride(pr),
        fmt_int(p.tokens as u64),
    );
    if let Some(sc) = count(p.scored_tokens) {
        let _ = write!(s, " ({} predictions scored)", fmt_int(sc as u64));
    }
    if let Some(text) = &pr.text {
        let _ = write!(s, " of {text}");
    }
    if let Some(tt) = count(p.text_tokens) {
        let _ = write!(s, " ({} tokens in all", fmt_int(tt as u64));
        if p.tokens.saturating_add(p.seqlen) <= tt {
            s.push_str(": a prefix only, not comparable with full-file numbers");
        }
        s.push(')');
    }
    let _ = write!(s, "; BOS {}", if p.bos { "added" } else { "not added" });
    s.push('.');
    s
}

fn tasks_note(rows: &[Row]) -> String {
    let mut s = String::from(
        "Zero-shot accuracy in percent: acc / acc_norm ± standard error (lm-evaluation-harness conventions, 0-shot); mean: the unweighted mean over the tasks of that row.",
    );
    let mut ns: Vec<String> = Vec::new();
    let mut limits: Vec<Option<usize>> = Vec::new();
    for r in rows {
        if let Some(ts) = r.tasks() {
            if !limits.contains(&ts.settings.limit) {
                limits.push(ts.settings.limit);
            }
            for x in &ts.tasks {
                let n = count(x.n).map_or("?".into(), |n| n.to_string());
                let e = format!("{} {n}", x.task);
                if !ns.contains(&e) {
                    ns.push(e);
                }
            }
        }
    }
    let _ = write!(s, " Documents per task: {}.", ns.join(", "));
    for l in limits.into_iter().flatten() {
        let _ = write!(
            s,
            " --limit {l}: only the first {l} documents of each task were scored — a subset, not comparable with full-set numbers."
        );
    }
    s
}

fn recovery(run: &Run, rows: &[Row], doc: &mut Vec<Block>) {
    let Some(bi) = baseline(rows) else {
        doc.push(p(
            "No dense reference row (a model labelled \"dense\" or one the run only evaluated), so there is nothing to compare against.",
        ));
        return;
    };
    let base = &rows[bi];
    let mut table = Vec::new();
    let mut sentences = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if i == bi {
            continue;
        }
        let ppl = common_ppl(&[base, r]);
        let acc = common_mean_acc(&[base, r]);
        let mut cells = vec![r.label.clone()];
        match &ppl {
            Some(v) => cells.extend([
                format!("{} → {}", fmt_ppl(Some(v[0])), fmt_ppl(Some(v[1]))),
                format!(
                    "{:+.2} ({:+.1}%)",
                    v[1] - v[0],
                    100.0 * (v[1] - v[0]) / v[0]
                ),
            ]),
            None => cells.extend(["—".into(), "—".into()]),
        }
        match &acc {
            Some((v, _)) => cells.extend([
                format!("{} → {}", pct(v[0]), pct(v[1])),
                format!("{:+.1} pts", 100.0 * (v[1] - v[0])),
            ]),
            None => cells.extend(["—".into(), "—".into()]),
        }
        let par = parent(run, rows, i).filter(|&pi| pi != bi && r.fine_tuned());
        let mut closed = ["—".to_string(), "—".to_string()];
        if let Some(pi) = par {
            let pr = &rows[pi];
            let trio = [base, pr, r];
            let mut parts = Vec::new();
            if let Some(v) = common_ppl(&trio) {
                let gap = v[1] - v[0];
                if gap > 1e-12 * v[0].abs() {
                    let f = (v[1] - v[2]) / gap;
                    closed[0] = format!("{:.0}%", 100.0 * f);
                    parts.push(format!(
                        "perplexity {} (dense) → {} ({}) → {} ({}): {:.0}% of the gap closed",
                        fmt_ppl(Some(v[0])),
                        fmt_ppl(Some(v[1])),
                        pr.label,
                        fmt_ppl(Some(v[2])),
                        r.label,
                        100.0 * f
                    ));
                } else {
                    closed[0] = "no gap".into();
                    parts.push(format!(
                        "pruning did not raise perplexity ({} → {}), so there was no gap to close; fine-tuned: {}",
                        fmt_ppl(Some(v[0])),
                        fmt_ppl(Some(v[1])),
                        fmt_ppl(Some(v[2]))
                    ));
                }
            }
            if let Some((v, names)) = common_mean_acc(&trio) {
                let gap = v[0] - v[1];
                let over = format!("mean acc over {}", names.join(", "));
                if gap > 1e-12 {
                    let f = (v[2] - v[1]) / gap;
                    closed[1] = format!("{:.0}%", 100.0 * f);
                    parts.push(format!(
                        "{over} {}% → {}% → {}%: {:.0}% of the gap closed",
                        pct(v[0]),
                        pct(v[1]),
                        pct(v[2]),
                        100.0 * f
                    ));
                } else {
                    closed[1] = "no gap".into();
                    parts.push(format!(
                        "{over}: pruning did not lower it ({}% → {}%), so there was no gap to close; fine-tuned: {}%",
                        pct(v[0]),
                        pct(v[1]),
                        pct(v[2])
                    ));
                }
            }
            if !parts.is_empty() {
                sentences.push(vec![
                    b(r.label.clone()),
                    t(format!(" (from {}): {}.", pr.label, parts.join("; "))),
                ]);
            }
        } else if let (Some(v), false) = (&ppl, r.fine_tuned()) {
            let mut s = format!(
                ": perplexity {} → {} ({:+.1}%)",
                fmt_ppl(Some(v[0])),
                fmt_ppl(Some(v[1])),
                100.0 * (v[1] - v[0]) / v[0]
            );
            if let Some((a, _)) = &acc {
                let _ = write!(
                    s,
                    ", mean acc {}% → {}% ({:+.1} pts)",
                    pct(a[0]),
                    pct(a[1]),
                    100.0 * (a[1] - a[0])
                );
            }
            sentences.push(vec![b(r.label.clone()), t(format!("{s} against dense."))]);
        }
        cells.extend(closed);
        table.push(cells);
    }
    if table.is_empty() {
        doc.push(p("Only the dense model was evaluated."));
        return;
    }
    doc.push(Block::Table(Table {
        class: "recovery",
        head: vec![
            "model".into(),
            format!("perplexity ({} → model)", base.label),
            "Δ perplexity".into(),
            format!("mean acc % ({} → model)", base.label),
            "Δ mean acc".into(),
            "ppl gap closed by fine-tuning".into(),
            "acc gap closed by fine-tuning".into(),
        ],
        rows: table,
        num: vec![false, true, true, true, true, true, true],
    }));
    doc.push(Block::Note(format!(
        "Each comparison uses only numbers measured the same way (the same perplexity protocol; the tasks both rows scored on the same documents, so a mean here can differ from the results table's). Gap closed = (pruned − fine-tuned) / (pruned − {}) for perplexity, (fine-tuned − pruned) / ({} − pruned) for accuracy: 100% means fine-tuning recovered everything pruning cost, 0% nothing, below 0% it made things worse.",
        base.label, base.label
    )));
    if !sentences.is_empty() {
        doc.push(Block::List(sentences));
    }
}

fn stage_details(s: &Stage) -> String {
    let mut d = Vec::new();
    if let Some(v) = &s.prune {
        let opts = v.options.as_ref();
        let mut x = format!(
            "{} {}",
            opts.map_or("?", |o| o.method.name()),
            opts.map_or("?".into(), |o| fmt_sparsity_opt(&o.sparsity))
        );
        if let Some(c) = &v.calibration {
            let _ = write!(x, ", calibration {} × {} tokens", c.nsamples, c.seqlen);
        }
        if let Some(r) = &v.result {
            let _ = write!(x, ", sparsity {}%", pct(r.linear_sparsity));
        }
        d.push(x);
    }
    if let Some(v) = &s.train {
        let cfg = s.adapter_config.as_ref();
        let opts = v.options.as_ref();
        let method = cfg
            .map(|c| c.method)
            .or_else(|| opts.map(|o| o.method))
            .map_or("?".into(), |m| m.to_string());
        let mut x = method;
        if let Some(r) = cfg.map(|c| c.r).or_else(|| opts.map(|o| o.r)) {
            let _ = write!(x, " r {r}");
        }
        let rep = &v.report;
        if let Some(n) = count(rep.steps) {
            let _ = write!(x, ", {n} steps");
        }
        if let (Some(a), Some(z)) = (rep.first_loss, rep.last_loss) {
            let _ = write!(x, ", loss {a:.4} → {z:.4}");
        }
        if let Some(bv) = rep.best_val_loss {
            let _ = write!(x, ", best val loss {bv:.4}");
            if let Some(st) = rep.best_step {
                let _ = write!(x, " at step {st}");
            }
        }
        if rep.tokens_per_second > 0.0 {
            let _ = write!(x, ", {:.0} tok/s", rep.tokens_per_second);
        }
        if let Some(n) = s.trainable() {
            let _ = write!(x, ", {} trainable", fmt_int(n));
        }
        d.push(x);
    }
    if let Some(v) = &s.merge {
        let mut x = format!(
            "{} linears merged",
            v.merged_linears.map_or("?".into(), |n| n.to_string())
        );
        match v.all_zeros_kept {
            Some(true) => x.push_str(", every zero kept"),
            Some(false) => x.push_str(", zeros NOT kept"),
            None => {}
        }
        let _ = write!(x, ", sparsity {}%", pct(v.sparsity.linear_sparsity));
        d.push(x);
    }
    if let Some(pp) = &s.ppl {
        d.push(format!("ppl {}", fmt_ppl(Some(pp.result.ppl))));
    }
    if let Some(ts) = &s.tasks {
        let mut x = format!("{} tasks", ts.tasks.len());
        if let Some(m) = ts.mean_acc {
            let _ = write!(x, ", mean acc {}%", pct(m));
        }
        d.push(x);
    }
    if let Some(i) = &s.inspect {
        d.push(format!(
            "inspect: sparsity {}%, 2:4 {}",
            pct(i.linear_sparsity),
            yes_no(Some(i.all_linears_2_4))
        ));
    }
    if let Status::Unreadable(e) = &s.status {
        d.push(e.clone());
    }
    d.join("; ")
}

fn stage_table(run: &Run, doc: &mut Vec<Block>) {
    if run.stages.is_empty() {
        doc.push(p("run.json lists no stages."));
        return;
    }
    let rows = run
        .stages
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind().to_string(),
                s.label().unwrap_or("—").to_string(),
                s.status.text(),
                s.seconds().map_or("—".into(), fmt_secs),
                s.peak().map_or("—".into(), fmt_bytes),
                stage_details(s),
            ]
        })
        .collect();
    doc.push(Block::Table(Table {
        class: "stages",
        head: [
            "stage",
            "kind",
            "model",
            "status",
            "time",
            "peak memory",
            "details",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        num: vec![false, false, false, false, true, true, false],
    }));
}

fn plots(run: &Run, rows: &[Row], doc: &mut Vec<Block>, figures: &mut Vec<(String, String)>) {
    let mut add = |doc: &mut Vec<Block>, file: String, caption: String, svg: String| {
        figures.push((file.clone(), svg.clone()));
        doc.push(Block::Figure {
            caption,
            file: format!("plots/{file}"),
            svg,
        });
    };
    for s in run.stages.iter().filter(|s| !s.metrics.is_empty()) {
        add(
            doc,
            format!("loss-{}.svg", file_stem_safe(&s.name)),
            format!(
                "Training loss (line) and validation loss (dots) per optimizer step — stage {} ({})",
                s.name,
                s.label().unwrap_or("?")
            ),
            svg::loss(&s.metrics),
        );
    }

    let layered: Vec<(&Row, BTreeMap<usize, f64>)> = rows
        .iter()
        .filter_map(|r| Some((r, per_layer(r.inspect()?))))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    if !layered.is_empty() {
        let mut layers: Vec<usize> = layered
            .iter()
            .flat_map(|(_, m)| m.keys().copied())
            .collect();
        layers.sort_unstable();
        layers.dedup();
        let series: Vec<svg::Series> = layered
            .iter()
            .map(|(r, m)| svg::Series {
                name: r.label.clone(),
                values: layers.iter().map(|l| m.get(l).copied()).collect(),
                errors: Vec::new(),
            })
            .collect();
        let cats: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        add(
            doc,
            "sparsity.svg".into(),
            "Sparsity per layer: zero weights / weights of each block's seven linears, per model (from inspect.json)".into(),
            svg::grouped_bars(&cats, &series, "layer", "sparsity", true),
        );
    }

    let with_tasks: Vec<(&Row, &TasksRecord)> =
        rows.iter().filter_map(|r| Some((r, r.tasks()?))).collect();
    if !with_tasks.is_empty() {
        let mut cats: Vec<String> = Vec::new();
        for (_, ts) in &with_tasks {
            for t in &ts.tasks {
                if !cats.contains(&t.task) {
                    cats.push(t.task.clone());
                }
            }
        }
        // A "mean" group only when every model has the same task set.
        let same_set = with_tasks.iter().all(|(_, ts)| {
            ts.tasks.len() == cats.len() && cats.iter().all(|c| ts.get(c).is_some())
        });
        let mut series: Vec<svg::Series> = with_tasks
            .iter()
            .map(|(r, ts)| svg::Series {
                name: r.label.clone(),
                values: cats
                    .iter()
                    .map(|c| ts.get(c).and_then(|x| metric(x.acc)))
                    .collect(),
                errors: cats
                    .iter()
                    .map(|c| ts.get(c).and_then(|x| metric(x.acc_stderr)))
                    .collect(),
            })
            .collect();
        if same_set {
            for (s, (_, ts)) in series.iter_mut().zip(&with_tasks) {
                s.values.push(ts.mean_acc);
                s.errors.push(None);
            }
            cats.push("mean".into());
        }
        add(
            doc,
            "tasks.svg".into(),
            "Zero-shot accuracy (acc) per task and model, with ± one standard error".into(),
            svg::grouped_bars(&cats, &series, "task", "accuracy (acc)", true),
        );
    }
}

fn commands(run: &Run, doc: &mut Vec<Block>) {
    if !run.meta.command.is_empty() {
        doc.push(p("The run:"));
        doc.push(Block::Code(quote_argv(&run.meta.command)));
    }
    doc.push(p(
        "Every stage, with the exact argv of each command it ran (shell-quoted):",
    ));
    let mut text = String::new();
    for s in &run.stages {
        let _ = writeln!(text, "# {} ({}, {})", s.name, s.kind(), s.status.text());
        let cmds = s.meta.as_ref().map_or(&[][..], |m| &m.commands[..]);
        if cmds.is_empty() {
            text.push_str("# (no commands recorded)\n");
        }
        for cmd in cmds {
            text.push_str(&quote_argv(cmd));
            text.push('\n');
        }
    }
    doc.push(Block::Code(text));
}

fn versions(run: &Run, rows: &[Row], doc: &mut Vec<Block>) {
    let mut by_version: Vec<(String, Vec<String>)> = Vec::new();
    let mut note = |v: Option<&str>, src: String| {
        let Some(v) = v else { return };
        let v = v.trim_start_matches("spp ").to_string();
        match by_version.iter_mut().find(|(x, _)| *x == v) {
            Some((_, srcs)) => srcs.push(src),
            None => by_version.push((v, vec![src])),
        }
    };
    note(run.meta.spp_version.as_deref(), "run.json".into());
    for s in &run.stages {
        for (version, file) in [
            (s.prune.as_ref().map(|r| &r.spp_version), "model/prune.json"),
            (s.merge.as_ref().map(|r| &r.spp_version), "model/merge.json"),
            (
                s.train.as_ref().map(|r| &r.spp_version),
                "adapter/train.json",
            ),
        ] {
            if let Some(v) = version {
                note(v.as_deref(), format!("{}/{file}", s.name));
            }
        }
        if let Some(c) = &s.adapter_config {
            note(
                Some(&c.created_by),
                format!("{}/adapter/adapter_config.json", s.name),
            );
        }
        if let Some(ts) = &s.tasks {
            note(
                ts.settings.spp_version.as_deref(),
                format!("{}/tasks.json", s.name),
            );
        }
    }
    let mut items: Vec<Vec<Span>> = by_version
        .into_iter()
        .map(|(v, srcs)| vec![b(format!("spp {v}")), t(format!(": {}", srcs.join(", ")))])
        .collect();
    if items.len() > 1 {
        items.insert(
            0,
            vec![t(
                "More than one spp version wrote this run: compare its numbers with care.",
            )],
        );
    }
    let mut seen = Vec::new();
    for r in rows {
        if let Some(pp) = r.ppl() {
            if let Some(pr) = &pp.protocol {
                if !seen.contains(pr) {
                    seen.push(pr.clone());
                    items.push(vec![b("Perplexity protocol: "), t(pr.clone())]);
                }
            }
        }
        if let Some(ts) = r.tasks() {
            let s = &ts.settings;
            let protocol = s.protocol.as_deref().unwrap_or("?");
            let shots = match s.num_fewshot {
                Some(n) if !protocol.contains(&format!("{n}-shot")) => format!("; {n}-shot"),
                _ => String::new(),
            };
            let desc = format!(
                "{protocol}{shots}; data {}; dtype {}; limit {}",
                s.data_dir.as_deref().unwrap_or("?"),
                s.dtype.as_deref().unwrap_or("?"),
                s.limit.map_or("none (full sets)".into(), |l| l.to_string())
            );
            if !seen.contains(&desc) {
                seen.push(desc.clone());
                items.push(vec![b("Zero-shot settings: "), t(desc)]);
            }
        }
        if let Some(dt) = r.inspect().map(|i| i.dtype.as_str()) {
            let desc = format!("dtype {dt}");
            if !seen.contains(&desc) {
                seen.push(desc.clone());
                items.push(vec![b("Weights: "), t(format!("{desc} (inspect.json)"))]);
            }
        }
    }
    if items.is_empty() {
        doc.push(p("No version was recorded."));
    } else {
        doc.push(Block::List(items));
    }
}

fn how_to_read(rows: &[Row], doc: &mut Vec<Block>) {
    let ppl = rows.iter().find_map(|r| r.ppl());
    let mut s = String::from(
        "Perplexity is exp(mean negative log-likelihood per predicted token); lower is better. The evaluation text is tokenised once and cut into non-overlapping windows of seqlen tokens (stride = seqlen, the tail dropped); every position of every window is scored (seqlen − 1 predictions per window), the protocol of the Wanda and SparseGPT papers. The text is the WikiText-2 test file exactly as given (its non-empty rows), close to but not identical with the joined string behind published numbers, and llama.cpp's perplexity (which scores only the second half of each window) is a different protocol.",
    );
    if let Some(pp) = ppl.map(|p| &p.result) {
        let text_tokens = count(pp.text_tokens);
        let _ = write!(
            s,
            " Here: {} windows of {} tokens = {} tokens{}.",
            pp.windows,
            pp.seqlen,
            fmt_int(pp.tokens as u64),
            text_tokens.map_or(String::new(), |tt| format!(
                " of the file's {}",
                fmt_int(tt as u64)
            ))
        );
        if text_tokens.is_some_and(|tt| pp.tokens.saturating_add(pp.seqlen) <= tt) {
            s.push_str(" Fewer windows than the file holds were scored (--max-windows): compare such numbers only with numbers measured on the same windows.");
        }
    }
    doc.push(p(s));
    let limit = rows.iter().filter_map(|r| r.tasks()?.settings.limit).max();
    let mut z = String::from(
        "Zero-shot accuracy follows lm-evaluation-harness conventions: each document's prompt is scored 0-shot against every answer choice, acc counts the documents whose highest summed log-likelihood is the gold choice, acc_norm divides each choice's log-likelihood by its length in characters first (the usual headline metric for HellaSwag, ARC-Challenge and OpenBookQA; acc for BoolQ, RTE, WinoGrande and ARC-Easy). The ± is the standard error of the mean over documents: differences smaller than about two standard errors are noise. Chance level is 50% for the two-choice tasks and 25% for the four-choice ones.",
    );
    match limit {
        Some(l) => {
            let _ = write!(
                z,
                " These runs used --limit {l}: only the first {l} documents of each task, a subset whose numbers are not comparable with full-set numbers from papers or other runs."
            );
        }
        None if rows.iter().any(|r| r.tasks().is_some()) => {
            z.push_str(" No --limit was set: every document of each task was scored.");
        }
        None => {}
    }
    doc.push(p(z));
    doc.push(p(
        "Gap closed: pruning moves a metric from the dense value to the pruned one; fine-tuning the pruned model moves it back part of the way. The fraction of that distance won back is the gap closed. With few tasks, few documents or few perplexity windows it is itself noisy, most of all when the gap is small.",
    ));
}

// ---------------------------------------------------------------------------------------------
// Rendering.

fn md_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\`*|<>[]".contains(ch) {
            o.push('\\');
        }
        if ch == '\n' {
            o.push(' ');
        } else {
            o.push(ch);
        }
    }
    o
}

fn md_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| match s {
            Span::T(x) => md_escape(x),
            Span::B(x) => format!(
                "**{}**{}",
                md_escape(x.trim_end()),
                &x[x.trim_end().len()..]
            ),
            Span::C(x) => {
                // A code span needs a fence longer than any backtick run inside it.
                let run = x.split(|c| c != '`').map(str::len).max().unwrap_or(0);
                let fence = "`".repeat(run + 1);
                let pad = if x.starts_with('`') || x.ends_with('`') {
                    " "
                } else {
                    ""
                };
                format!("{fence}{pad}{x}{pad}{fence}")
            }
        })
        .collect()
}

fn render_markdown(doc: &[Block]) -> String {
    let mut o = String::new();
    for block in doc {
        match block {
            Block::H(level, text) => {
                let _ = writeln!(o, "{} {}\n", "#".repeat(*level as usize), md_escape(text));
            }
            Block::P(spans) => {
                let _ = writeln!(o, "{}\n", md_spans(spans));
            }
            Block::Note(text) => {
                let _ = writeln!(o, "*{}*\n", md_escape(text));
            }
            Block::List(items) => {
                for it in items {
                    let _ = writeln!(o, "- {}", md_spans(it));
                }
                o.push('\n');
            }
            Block::Table(tb) => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |",
                        cells
                            .iter()
                            .map(|c| md_escape(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                let _ = writeln!(o, "{}", line(&tb.head));
                let sep: Vec<&str> = tb
                    .num
                    .iter()
                    .map(|&n| if n { "---:" } else { "---" })
                    .collect();
                let _ = writeln!(o, "|{}|", sep.join("|"));
                for r in &tb.rows {
                    let _ = writeln!(o, "{}", line(r));
                }
                o.push('\n');
            }
            Block::Figure { caption, file, .. } => {
                let _ = writeln!(o, "![{0}]({file})\n\n*{0}*\n", md_escape(caption));
            }
            Block::Code(text) => {
                let fence = if text.contains("```") { "~~~~" } else { "```" };
                let _ = writeln!(o, "{fence}sh\n{}\n{fence}\n", text.trim_end());
            }
        }
    }
    o
}

fn html_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| match s {
            Span::T(x) => svg::escape(x),
            Span::B(x) => format!("<strong>{}</strong>", svg::escape(x)),
            Span::C(x) => format!("<code>{}</code>", svg::escape(x)),
        })
        .collect()
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1600px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3rem .55rem;vertical-align:top}th{background:#f2f2f2;text-align:left}
td.num,th.num{text-align:right;white-space:nowrap}tbody tr:nth-child(even){background:#fafafa}
p.note{font-size:.85rem;color:#555;margin:.3rem 0}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.7rem;overflow-x:auto;font-size:.85rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85rem;color:#555}
td.unfinished{color:#b00020;font-weight:600}
table.results td:first-child,table.recovery td:first-child,table.stages td:first-child{white-space:nowrap}";

fn render_html(doc: &[Block], title: &str) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n<main>\n",
        svg::escape(title)
    );
    for block in doc {
        match block {
            Block::H(level, text) => {
                let _ = writeln!(o, "<h{level}>{}</h{level}>", svg::escape(text));
            }
            Block::P(spans) => {
                let _ = writeln!(o, "<p>{}</p>", html_spans(spans));
            }
            Block::Note(text) => {
                let _ = writeln!(o, "<p class=\"note\">{}</p>", svg::escape(text));
            }
            Block::List(items) => {
                o.push_str("<ul>\n");
                for it in items {
                    let _ = writeln!(o, "<li>{}</li>", html_spans(it));
                }
                o.push_str("</ul>\n");
            }
            Block::Table(tb) => {
                let cls = |i: usize| {
                    if tb.num.get(i) == Some(&true) {
                        " class=\"num\""
                    } else {
                        ""
                    }
                };
                let _ = write!(o, "<table class=\"{}\">\n<thead><tr>", tb.class);
                for (i, h) in tb.head.iter().enumerate() {
                    let _ = write!(o, "<th{}>{}</th>", cls(i), svg::escape(h));
                }
                o.push_str("</tr></thead>\n<tbody>\n");
                for r in &tb.rows {
                    o.push_str("<tr>");
                    for (i, cell) in r.iter().enumerate() {
                        let class = if cell.starts_with("unfinished") || cell == "not started" {
                            " class=\"unfinished\""
                        } else {
                            cls(i)
                        };
                        let _ = write!(o, "<td{class}>{}</td>", svg::escape(cell));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody>\n</table>\n");
            }
            Block::Figure { caption, svg, .. } => {
                let _ = writeln!(
                    o,
                    "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>",
                    svg.trim_end(),
                    svg::escape(caption)
                );
            }
            Block::Code(text) => {
                let _ = writeln!(
                    o,
                    "<pre><code>{}</code></pre>",
                    svg::escape(text.trim_end())
                );
            }
        }
    }
    o.push_str("</main>\n</body>\n</html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00 UTC");
        assert_eq!(fmt_unix(1_764_300_000), "2025-11-28 03:20 UTC");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(fmt_secs(12.34), "12.3 s");
        assert_eq!(fmt_secs(125.0), "2 min 05 s");
        assert_eq!(fmt_secs(3725.0), "1 h 02 min");
        assert_eq!(fmt_bytes(3 << 29), "1.50 GiB");
        assert_eq!(fmt_bytes(200 << 20), "200 MiB");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_int(424), "424");
    }

    #[test]
    fn layer_index_and_escaping() {
        assert_eq!(layer_index("model.layers.12.mlp.up_proj"), Some(12));
        assert_eq!(layer_index("lm_head"), None);
        assert_eq!(md_escape("a|b<c>"), r"a\|b\<c\>");
        let spans = [t("x < y & z"), c("a<b")];
        assert_eq!(html_spans(&spans), "x &lt; y &amp; z<code>a&lt;b</code>");
        assert_eq!(md_spans(&[c("a`b")]), "``a`b``");
    }

    #[test]
    fn sparsity_options_read_both_kinds() {
        let read = |v| serde_json::from_value::<Sparsity>(v).unwrap();
        let nm = read(serde_json::json!({"kind": "n_m", "n": 2, "m": 4}));
        let r = read(serde_json::json!({"kind": "unstructured", "ratio": 0.5}));
        assert_eq!(fmt_sparsity_opt(&nm), "2:4");
        assert_eq!(fmt_sparsity_opt(&r), "50.0%");
    }
}
