//! The comparison of fine-tuning settings: per pruned model that was fine-tuned more than one
//! way (several methods, a sweep), a table of method × setting → perplexity, accuracy, gap
//! closed, trainable parameters, tokens seen, time and peak memory, with the best setting of
//! each method marked; whether the settings had an equal budget (same steps, tokens and data
//! order); the range tests behind `lr = "find"`; and a plot of gap closed against the swept
//! value per method.

use super::analysis::{baseline, common_mean_acc, common_ppl, parent, Row};
use super::blocks::{p, t, Block, Table};
use super::format::{fmt_bytes, fmt_int, fmt_ppl, pct};
use super::load::{Run, Stage};
use super::svg;
use crate::record::TrainRecord;
use serde_json::Value;

/// One fine-tuned model of a comparison.
struct Entry<'a> {
    row: &'a Row<'a>,
    train: &'a TrainRecord,
    train_stage: &'a Stage,
    method: String,
    /// The training options as JSON (field → value).
    options: serde_json::Map<String, Value>,
}

/// A value of the options as shown: numbers as written, strings without quotes.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(shown).collect::<Vec<_>>().join(","),
        Value::Null => "none".into(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or(n.to_string(), svg::significant),
        v => v.to_string(),
    }
}

/// The option fields whose values differ between entries of the same method (in the options'
/// field order); `lr` too when a range test chose it.
fn swept_fields(entries: &[Entry]) -> Vec<String> {
    let Some(first) = entries.first() else {
        return vec![];
    };
    let mut out: Vec<String> = Vec::new();
    for key in first.options.keys().filter(|k| *k != "method") {
        let differs = entries.iter().any(|a| {
            entries
                .iter()
                .any(|b| a.method == b.method && a.options.get(key) != b.options.get(key))
        });
        let found = key == "lr" && entries.iter().any(|e| e.train.lr_from.is_some());
        if differs || found {
            out.push(key.clone());
        }
    }
    out
}

fn setting(e: &Entry, fields: &[String]) -> String {
    if fields.is_empty() {
        return "—".into();
    }
    fields
        .iter()
        .map(|f| {
            let v = e.options.get(f).map_or("?".into(), shown);
            if f == "lr" && e.train.lr_from.is_some() {
                format!("lr {v} (range test)")
            } else {
                format!("{f} {v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What makes a budget: the steps, the tokens and what decides the data order.
fn budget(entries: &[Entry]) -> (Vec<String>, String) {
    let mut differ = Vec::new();
    let mut check = |name: &str, vals: Vec<String>| {
        let mut distinct = vals.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > 1 {
            differ.push(format!("{name} ({})", distinct.join(", ")));
        }
        vals.into_iter().next().unwrap_or_default()
    };
    let steps = check(
        "optimizer steps",
        entries
            .iter()
            .map(|e| e.train.report.steps.to_string())
            .collect(),
    );
    let tokens = check(
        "tokens seen",
        entries
            .iter()
            .map(|e| e.train.report.tokens.to_string())
            .collect(),
    );
    let data = check(
        "data",
        entries
            .iter()
            .map(|e| e.train.data.clone().unwrap_or_default())
            .collect(),
    );
    let opt = |k: &str| -> Vec<String> {
        entries
            .iter()
            .map(|e| e.options.get(k).map_or("?".into(), shown))
            .collect()
    };
    let seed = check("seed", opt("seed"));
    let batch = check("batch_size", opt("batch_size"));
    let val = check("val_size", opt("val_size"));
    let cutoff = check("cutoff", opt("cutoff"));
    let file = std::path::Path::new(&data)
        .file_name()
        .map_or(data.clone(), |f| f.to_string_lossy().into_owned());
    let same = format!(
        "Equal budget: every setting here trained for {steps} optimizer steps on the same {} tokens in the same order (data {file}, seed {seed}, batch {batch}, cutoff {cutoff}, {val} examples held out), so the rows differ only in their method and setting.",
        steps_tokens(&tokens)
    );
    (differ, same)
}

fn steps_tokens(t: &str) -> String {
    t.parse::<u64>().map_or(t.to_string(), fmt_int)
}

/// The comparisons of `rows` (one per pruned model fine-tuned more than one way): blocks for
/// the document and the plots (file name, SVG).
pub(super) fn comparisons(
    run: &Run,
    rows: &[Row],
    doc: &mut Vec<Block>,
    figures: &mut Vec<(String, String)>,
) {
    let Some(bi) = baseline(rows) else { return };
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if !r.fine_tuned() {
            continue;
        }
        let Some(pi) = parent(run, rows, i) else {
            continue;
        };
        match groups.iter_mut().find(|g| g.0 == pi) {
            Some(g) => g.1.push(i),
            None => groups.push((pi, vec![i])),
        }
    }
    groups.retain(|g| g.1.len() > 1);
    if groups.is_empty() {
        return;
    }
    doc.push(Block::H(2, "Fine-tuning settings compared".into()));
    for (n, (pi, members)) in groups.iter().enumerate() {
        let entries: Vec<Entry> = members
            .iter()
            .filter_map(|&i| {
                let row = &rows[i];
                let st = row.done().find(|s| s.train.is_some())?;
                let train = st.train.as_ref()?;
                let opts = train.options.as_ref()?;
                let Ok(Value::Object(options)) = serde_json::to_value(opts) else {
                    return None;
                };
                Some(Entry {
                    row,
                    train,
                    train_stage: st,
                    method: opts.method.to_string(),
                    options,
                })
            })
            .collect();
        compare_one(rows, bi, *pi, &entries, n, doc, figures);
    }
}

#[allow(clippy::too_many_arguments)]
fn compare_one(
    rows: &[Row],
    bi: usize,
    pi: usize,
    entries: &[Entry],
    n: usize,
    doc: &mut Vec<Block>,
    figures: &mut Vec<(String, String)>,
) {
    let (base, pruned) = (&rows[bi], &rows[pi]);
    doc.push(Block::H(3, format!("From {}", pruned.label)));
    if entries.len() < 2 {
        doc.push(p(
            "Fewer than two of its fine-tuned models have finished training: nothing to compare yet.",
        ));
        return;
    }
    let fields = swept_fields(entries);
    // Perplexity and the gap only when dense, pruned and every entry were measured alike.
    let mut all: Vec<&Row> = vec![base, pruned];
    all.extend(entries.iter().map(|e| e.row));
    let ppl = common_ppl(&all);
    let gap = ppl.as_ref().and_then(|v| {
        let g = v[1] - v[0];
        (g > 1e-12 * v[0].abs())
            .then(|| v[2..].iter().map(|x| (v[1] - x) / g).collect::<Vec<f64>>())
    });
    let rows_only: Vec<&Row> = entries.iter().map(|e| e.row).collect();
    let acc = common_mean_acc(&rows_only);
    // The best of each method: lowest perplexity, else highest mean accuracy.
    let score = |i: usize| -> Option<f64> {
        match (&ppl, &acc) {
            (Some(v), _) => Some(v[2 + i]),
            (None, Some((a, _))) => Some(-a[i]),
            _ => None,
        }
    };
    let mut best = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        let mine = score(i);
        best[i] = mine.is_some()
            && entries.iter().enumerate().all(|(j, o)| {
                o.method != e.method || score(j).is_none_or(|s| mine.is_some_and(|m| m <= s))
            });
    }
    let dash = || "—".to_string();
    let mut head: Vec<String> = ["method", "setting"].map(String::from).to_vec();
    if ppl.is_some() {
        head.push("perplexity".into());
    }
    if acc.is_some() {
        head.push("mean acc (%)".into());
    }
    if ppl.is_some() {
        head.push("ppl gap closed".into());
    }
    head.extend(
        [
            "trainable parameters",
            "tokens seen",
            "time",
            "peak memory",
            "best of its method",
        ]
        .map(String::from),
    );
    let mut body = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let mut cells = vec![e.method.clone(), setting(e, &fields)];
        if let Some(v) = &ppl {
            cells.push(fmt_ppl(Some(v[2 + i])));
        }
        if let Some((a, _)) = &acc {
            cells.push(pct(a[i]));
        }
        if ppl.is_some() {
            cells.push(
                gap.as_ref()
                    .map_or_else(|| "no gap".into(), |g| format!("{:.0}%", 100.0 * g[i])),
            );
        }
        cells.push(e.row.trainable().map_or_else(dash, fmt_int));
        cells.push(fmt_int(e.train.report.tokens as u64));
        cells.push(
            e.row
                .seconds(false)
                .map_or_else(dash, super::format::fmt_secs),
        );
        cells.push(e.train_stage.peak().map_or_else(dash, fmt_bytes));
        cells.push(if best[i] {
            "best".into()
        } else {
            String::new()
        });
        body.push(cells);
    }
    let mut num = vec![true; head.len()];
    num[0] = false;
    num[1] = false;
    doc.push(Block::Table(Table {
        class: "results",
        head,
        rows: body,
        num,
    }));
    let (differ, same) = budget(entries);
    if differ.is_empty() {
        doc.push(Block::Note(same));
    } else {
        doc.push(Block::Note(format!(
            "Warning: not an equal budget — {} differ between these settings, so a difference between rows mixes the setting with the budget; compare them with care.",
            differ.join("; ")
        )));
    }
    let mut notes = vec![
        "Time: the stages that made each model (range test, training, merge); peak memory: that of its training stage.".to_string(),
    ];
    match (&ppl, &gap) {
        (None, _) => notes.push("No perplexity measured alike for the dense, pruned and every fine-tuned model here: no perplexity or gap column; the best setting is by mean accuracy where measured.".into()),
        (Some(_), Some(_)) => notes.push(format!("Gap closed = (pruned − fine-tuned) / (pruned − dense) perplexity; best: the lowest perplexity of its method. Pruned {} → dense {}.", fmt_ppl(ppl.as_ref().map(|v| v[1])), fmt_ppl(ppl.as_ref().map(|v| v[0])))),
        (Some(_), None) => notes.push("Pruning did not raise perplexity: there is no gap to close.".into()),
    }
    if let Some((_, names)) = &acc {
        notes.push(format!("Mean acc over {}.", names.join(", ")));
    }
    doc.push(Block::Note(notes.join(" ")));
    range_tests(entries, doc, figures);

    // Gap closed against the swept value, one line per method (and value of any other swept
    // option).
    let Some(g) = &gap else { return };
    let numeric = |f: &String| {
        entries
            .iter()
            .all(|e| e.options.get(f).is_some_and(|v| v.is_number()))
    };
    let x_field = fields
        .iter()
        .find(|f| *f == "lr" && numeric(f))
        .or_else(|| fields.iter().find(|f| numeric(f)));
    let x_of = |e: &Entry| -> Option<f64> { e.options.get(x_field?)?.as_f64() };
    let (x_axis, x_label, names): (svg::XAxis, String, Vec<String>) = match x_field {
        Some(f) => {
            let xs: Vec<f64> = entries.iter().filter_map(x_of).collect();
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
            let axis = if lo > 0.0 && hi / lo >= 10.0 {
                svg::XAxis::Log
            } else {
                svg::XAxis::Linear
            };
            (axis, f.clone(), vec![])
        }
        None => {
            let mut names: Vec<String> = entries.iter().map(|e| setting(e, &fields)).collect();
            names.dedup();
            (svg::XAxis::Names(names.clone()), "setting".into(), names)
        }
    };
    let mut lines: Vec<svg::Line> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let others: Vec<String> = fields
            .iter()
            .filter(|f| Some(*f) != x_field)
            .cloned()
            .collect();
        let name = match others.is_empty() || x_field.is_none() {
            true => e.method.clone(),
            false => format!("{} ({})", e.method, setting(e, &others)),
        };
        let x = match x_field {
            Some(_) => x_of(e).unwrap_or(f64::NAN),
            None => names
                .iter()
                .position(|n| *n == setting(e, &fields))
                .map_or(f64::NAN, |p| p as f64),
        };
        match lines.iter_mut().find(|l| l.name == name) {
            Some(l) => l.points.push((x, g[i])),
            None => lines.push(svg::Line {
                name,
                points: vec![(x, g[i])],
            }),
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let file = format!("compare-{n}.svg");
    let chart = svg::lines(&lines, &x_axis, &x_label, "perplexity gap closed", true);
    figures.push((file.clone(), chart.clone()));
    doc.push(Block::Figure {
        caption: format!(
            "Perplexity gap closed against {x_label} per method — fine-tuned from {}",
            pruned.label
        ),
        file: format!("plots/{file}"),
        svg: chart,
    });
}

/// The range tests that chose a learning rate (`lr = "find"`).
fn range_tests(entries: &[Entry], doc: &mut Vec<Block>, figures: &mut Vec<(String, String)>) {
    let mut items = Vec::new();
    let mut charts: Vec<Block> = Vec::new();
    for e in entries.iter().filter(|e| e.train.lr_from.is_some()) {
        let test = e
            .row
            .done()
            .find_map(|s| s.lr_find.as_ref().map(|r| (s, r)));
        let lr = e.options.get("lr").map_or("?".into(), shown);
        let text = match test {
            Some((s, r)) => {
                let rep = &r.report;
                let range = rep.range.map_or(String::new(), |g| {
                    format!(
                        " — {} of {} steps, lr {:.1e} → {:.1e}",
                        rep.points.len(),
                        g.steps,
                        g.lr_min,
                        g.lr_max
                    )
                });
                let mut x = format!(
                    "{}: lr {lr} from the range test of stage {}{range}; the smoothed loss was lowest ({:.4}) at lr {:.3e}; the suggestion is {}.",
                    e.row.label,
                    s.name,
                    rep.min_smoothed_loss,
                    rep.lr_at_min_loss,
                    rep.rule
                );
                for n in &rep.notes {
                    x.push_str(&format!(" Note: {n}."));
                }
                let file = format!("lr-find-{}.svg", super::format::file_stem_safe(&s.name));
                if !figures.iter().any(|(f, _)| *f == file) {
                    let line = |name: &str, y: fn(&crate::train::lr_find::Point) -> f64| svg::Line {
                        name: name.into(),
                        points: rep.points.iter().map(|p| (p.lr, y(p))).collect(),
                    };
                    let chart = svg::lines(
                        &[line("loss", |p| p.loss), line("smoothed loss", |p| p.smoothed)],
                        &svg::XAxis::Log,
                        "learning rate",
                        "training loss",
                        false,
                    );
                    figures.push((file.clone(), chart.clone()));
                    charts.push(Block::Figure {
                        caption: format!(
                            "Range test of stage {}: training loss per step against its lr; suggested lr {:.3e}",
                            s.name, rep.suggested_lr
                        ),
                        file: format!("plots/{file}"),
                        svg: chart,
                    });
                }
                x
            }
            None => format!(
                "{}: lr {lr} from the range test {} (shared with another setting, or its record was not found)",
                e.row.label,
                e.train.lr_from.as_deref().unwrap_or("?")
            ),
        };
        items.push(vec![t(text)]);
    }
    if !items.is_empty() {
        doc.push(Block::List(items));
    }
    doc.extend(charts);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_shown_to_four_digits() {
        assert_eq!(
            shown(&serde_json::json!(0.0007742636826811273)),
            "0.0007743"
        );
        assert_eq!(svg::significant(12.345678), "12.35");
        assert_eq!(shown(&serde_json::json!(16)), "16");
        assert_eq!(shown(&serde_json::json!(["q", "v"])), "q,v");
    }
}
