//! Rows of the main table (one per model label, in stage order) and the comparisons between
//! them: the dense reference, the model a fine-tuned one came from, and the numbers two rows
//! measured the same way.

use super::load::{metric, protocol_key, Inspect, Run, Stage};
use crate::record::{PplRecord, TasksRecord};
use std::path::Path;

pub(super) struct Row<'a> {
    pub(super) label: String,
    pub(super) stages: Vec<&'a Stage>,
}

impl<'a> Row<'a> {
    pub(super) fn done(&self) -> impl Iterator<Item = &&'a Stage> {
        self.stages.iter().filter(|s| s.done())
    }
    pub(super) fn ppl(&self) -> Option<&'a PplRecord> {
        self.done().filter_map(|s| s.ppl.as_ref()).last()
    }
    pub(super) fn tasks(&self) -> Option<&'a TasksRecord> {
        self.done().filter_map(|s| s.tasks.as_ref()).last()
    }
    pub(super) fn inspect(&self) -> Option<&'a Inspect> {
        self.done().filter_map(|s| s.inspect.as_ref()).last()
    }
    /// Linear sparsity and the 2:4 / 4:8 checks: inspect.json, else the merge or prune record.
    pub(super) fn sparsity(&self) -> Option<(f64, Option<bool>, Option<bool>)> {
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
    pub(super) fn trainable(&self) -> Option<u64> {
        self.done().find_map(|s| s.trainable())
    }
    pub(super) fn fine_tuned(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.kind() == "train" || s.kind() == "merge")
    }
    pub(super) fn produced(&self) -> bool {
        self.stages.iter().any(|s| !s.is_eval())
    }
    pub(super) fn seconds(&self, eval: bool) -> Option<f64> {
        let v: Vec<f64> = self
            .stages
            .iter()
            .filter(|s| s.is_eval() == eval)
            .filter_map(|s| s.seconds())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
    pub(super) fn peak(&self) -> Option<u64> {
        self.stages.iter().filter_map(|s| s.peak()).max()
    }
    pub(super) fn pending(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| !s.done())
            .map(|s| s.name.as_str())
            .collect()
    }
}

pub(super) fn rows(run: &Run) -> Vec<Row<'_>> {
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
pub(super) fn baseline(rows: &[Row]) -> Option<usize> {
    rows.iter()
        .position(|r| r.label.eq_ignore_ascii_case("dense"))
        .or_else(|| rows.iter().position(|r| !r.produced()))
}

/// The row a fine-tuned row was trained from: the stage whose `model/` directory its train (or
/// merge) record names as `--model`, else the label before the last " + ".
pub(super) fn parent(run: &Run, rows: &[Row], i: usize) -> Option<usize> {
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
pub(super) fn common_mean_acc(rows: &[&Row]) -> Option<(Vec<f64>, Vec<String>)> {
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
pub(super) fn common_ppl(rows: &[&Row]) -> Option<Vec<f64>> {
    let all: Vec<&PplRecord> = rows.iter().map(|r| r.ppl()).collect::<Option<_>>()?;
    let key = protocol_key(all[0]);
    if all.iter().any(|p| protocol_key(p) != key) {
        return None;
    }
    all.iter()
        .map(|p| Some(p.result.ppl).filter(|x| x.is_finite()))
        .collect()
}
