//! The document: every section of the report as [`Block`]s, rendered by [`super::render`].

use super::analysis::{baseline, common_mean_acc, common_ppl, parent, rows, Row};
use super::format::*;
use super::load::{count, metric, per_layer, protocol_key, stride, Run, Stage, Status};
use super::svg;
use crate::record::{PplRecord, TasksRecord};
use crate::shell::quote_argv;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub(super) use super::blocks::{b, c, p, t, Block, Span, Table};

/// Builds the document and the plots (file name, SVG) it refers to.
pub(super) fn compose(run: &Run) -> (Vec<Block>, Vec<(String, String)>) {
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
        super::compare::comparisons(run, &rows, &mut doc, &mut figures);
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

pub(super) fn summary(run: &Run) -> Vec<Vec<Span>> {
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

pub(super) fn main_table(rows: &[Row], doc: &mut Vec<Block>) {
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

pub(super) fn ppl_protocol(pr: &PplRecord) -> String {
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

pub(super) fn tasks_note(rows: &[Row]) -> String {
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

pub(super) fn recovery(run: &Run, rows: &[Row], doc: &mut Vec<Block>) {
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

pub(super) fn stage_details(s: &Stage) -> String {
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

pub(super) fn stage_table(run: &Run, doc: &mut Vec<Block>) {
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

pub(super) fn plots(
    run: &Run,
    rows: &[Row],
    doc: &mut Vec<Block>,
    figures: &mut Vec<(String, String)>,
) {
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

pub(super) fn commands(run: &Run, doc: &mut Vec<Block>) {
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

pub(super) fn versions(run: &Run, rows: &[Row], doc: &mut Vec<Block>) {
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

pub(super) fn how_to_read(rows: &[Row], doc: &mut Vec<Block>) {
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
