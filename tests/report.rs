//! `spp::report::build` on a run directory laid out as `spp run` writes it, from real outputs of
//! the binary on the tiny LLaMA-2 GGUF of ../shared/data (eval ppl / tasks / inspect, prune,
//! train, merge), plus hand-written numbers where the arithmetic must be checked exactly; and a
//! headless-browser render of the HTML when chromium is installed.

mod common;

use common::{s, shared};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runs the binary; returns the argv as a recipe runner records it ("spp", args...) and seconds.
fn spp(args: &[String], stdout_to: Option<&Path>) -> (Vec<String>, f64) {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_spp"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "spp {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if let Some(p) = stdout_to {
        std::fs::write(p, &o.stdout).unwrap();
    }
    let mut argv = vec!["spp".to_string()];
    argv.extend(args.iter().cloned());
    (argv, t.elapsed().as_secs_f64())
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

fn write_json(p: &Path, v: &Value) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

const T0: i64 = 1_764_300_000;

fn stage_json(dir: &Path, kind: &str, model: &str, cmds: Vec<(Vec<String>, f64)>, peak: Value) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let secs: f64 = cmds.iter().map(|c| c.1).sum();
    let commands: Vec<Vec<String>> = cmds.into_iter().map(|c| c.0).collect();
    write_json(
        &dir.join("stage.json"),
        &json!({"name": name, "kind": kind, "model": model, "commands": commands,
                "key": "0123abcd", "status": "done", "seconds": secs,
                "peak_rss_bytes": peak, "started_unix": T0 + 1}),
    );
}

/// The three evaluations of an eval stage on `model`.
fn eval_stage(dir: &Path, model: &Path, label: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let m = s(model);
    let ppl = spp(
        &args(&[
            "eval",
            "ppl",
            "--model",
            &m,
            "--json",
            "--seqlen",
            "16",
            "--max-windows",
            "2",
            "--text",
            &shared("wikitext2/wiki.test.raw"),
        ]),
        Some(&dir.join("ppl.json")),
    );
    let tasks = spp(
        &args(&[
            "eval",
            "tasks",
            "--model",
            &m,
            "--tasks",
            "rte,arc_easy",
            "--limit",
            "5",
            "--data-dir",
            &shared("eval"),
            "--out",
            &s(&dir.join("tasks.json")),
        ]),
        None,
    );
    let inspect = spp(
        &args(&["inspect", "--model", &m, "--json"]),
        Some(&dir.join("inspect.json")),
    );
    stage_json(
        dir,
        "eval",
        label,
        vec![ppl, tasks, inspect],
        json!(150_000_000u64),
    );
}

/// A run directory from real spp outputs, built once per test binary; tests work on copies.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Kept for the life of the process (a static is never dropped): under target/tmp, not /tmp.
        let root = tempfile::Builder::new()
            .prefix("report-fixture-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let dense = root.join("tiny");
        spp(
            &args(&[
                "convert",
                "gguf",
                &shared("models/llama-2-tiny-random.gguf"),
                "--out",
                &s(&dense),
            ]),
            None,
        );
        let run = root.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("recipe.toml"), "name = \"tiny wanda + spp\"\n").unwrap();
        let stages = [
            "00-eval-dense",
            "01-prune-wanda-2-4",
            "02-eval-wanda-2-4",
            "03-train-spp",
            "04-merge-spp",
            "05-eval-wanda-2-4-spp",
            "06-prune-magnitude",
            "07-eval-magnitude",
        ];
        write_json(
            &run.join("run.json"),
            &json!({"recipe": "recipes/tiny.toml", "name": "tiny wanda + spp", "spp_version": "0.1.0",
                    "stages": stages, "started_unix": T0,
                    "command": ["spp", "run", "recipes/tiny.toml", "--out", s(&run)]}),
        );
        eval_stage(&run.join(stages[0]), &dense, "dense");

        let pruned = run.join(stages[1]).join("model");
        let c = spp(
            &args(&[
                "prune",
                "--model",
                &s(&dense),
                "--method",
                "wanda",
                "--sparsity",
                "2:4",
                "--nsamples",
                "2",
                "--seqlen",
                "32",
                "--calib",
                &shared("c4/c4_sample.jsonl"),
                "--out",
                &s(&pruned),
            ]),
            None,
        );
        // No peak in stage.json: the report falls back to prune.json's.
        stage_json(&run.join(stages[1]), "prune", "wanda 2:4", vec![c], Value::Null);
        eval_stage(&run.join(stages[2]), &pruned, "wanda 2:4");

        let adapter = run.join(stages[3]).join("adapter");
        let c = spp(
            &args(&[
                "train",
                "--model",
                &s(&pruned),
                "--max-steps",
                "4",
                "--batch-size",
                "2",
                "--micro-batch-size",
                "1",
                "--val-size",
                "4",
                "--eval-every",
                "2",
                "--r",
                "4",
                "--data",
                &shared("alpaca/alpaca_gpt4_en_demo.json"),
                "--out",
                &s(&adapter),
            ]),
            None,
        );
        stage_json(
            &run.join(stages[3]),
            "train",
            "wanda 2:4 + spp",
            vec![c],
            json!(300_000_000u64),
        );
        let merged = run.join(stages[4]).join("model");
        let c = spp(
            &args(&[
                "merge",
                "--model",
                &s(&pruned),
                "--adapter",
                &s(&adapter),
                "--out",
                &s(&merged),
            ]),
            None,
        );
        stage_json(
            &run.join(stages[4]),
            "merge",
            "wanda 2:4 + spp",
            vec![c],
            json!(90_000_000u64),
        );
        eval_stage(&run.join(stages[5]), &merged, "wanda 2:4 + spp");
        // Interrupted: stage.json says running, and a stray output must not be used.
        write_json(
            &run.join(stages[6]).join("stage.json"),
            &json!({"name": stages[6], "kind": "prune", "model": "magnitude 50%",
                    "commands": [["spp", "prune", "--method", "magnitude", "--sparsity", "0.5"]],
                    "key": "ffff", "status": "running", "seconds": null, "peak_rss_bytes": null,
                    "started_unix": T0 + 100}),
        );
        write_json(
            &run.join(stages[6]).join("ppl.json"),
            &json!({"ppl": 123456.0, "windows": 2, "seqlen": 16, "tokens": 32}),
        );
        // stages[7] never started: no directory at all.
        run
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A private copy of the fixture (tests run in parallel and `build` writes into the run dir).
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_dir(fixture(), &run);
    (tmp, run)
}

/// The first Markdown table under the heading `## {section}`: header cells, then rows.
fn md_table(md: &str, section: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let heading = format!("## {section}");
    let lines: Vec<&str> = md
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(lines.len() >= 2, "no table under {heading:?} in:\n{md}");
    let cells = |l: &str| -> Vec<String> {
        // Split on unescaped pipes.
        let mut out = vec![String::new()];
        let mut esc = false;
        for ch in l
            .trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .chars()
        {
            if ch == '|' && !esc {
                out.push(String::new());
            } else {
                out.last_mut().unwrap().push(ch);
            }
            esc = ch == '\\' && !esc;
        }
        out.into_iter().map(|c| c.trim().to_string()).collect()
    };
    let head = cells(lines[0]);
    let rows: Vec<Vec<String>> = lines[2..].iter().map(|l| cells(l)).collect();
    for r in &rows {
        assert_eq!(r.len(), head.len(), "ragged row {r:?} under {head:?}");
    }
    (head, rows)
}

fn col(head: &[String], name: &str) -> usize {
    head.iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name:?} in {head:?}"))
}

/// Nesting of every element (void elements and `<x/>` excepted) is balanced.
fn check_balanced(html: &str) {
    const VOID: [&str; 8] = ["meta", "br", "hr", "img", "input", "link", "col", "source"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("unterminated tag");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(open, name.trim(), "<{open}> closed by </{name}>");
        } else {
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap()
                .to_string();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric()) && !name.is_empty(),
                "not a tag: <{tag}>"
            );
            if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
                stack.push(name);
            }
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

fn self_contained(html: &str) {
    for bad in [
        "src=", "href=", "url(", "<script", "<link", "@import", "<iframe",
    ] {
        assert!(!html.contains(bad), "external resource or script: {bad}");
    }
}

#[test]
fn report_from_real_spp_outputs() {
    let (_tmp, run) = fixture_copy();
    let paths = spp::report::build(&run).unwrap();
    assert_eq!(paths.markdown, run.join("report.md"));
    assert_eq!(paths.html, run.join("report.html"));
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();

    // Main table: the three models in stage order, numbers from their files.
    let (head, rows) = md_table(&md, "Results");
    let labels: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        labels,
        ["dense", "wanda 2:4", "wanda 2:4 + spp", "magnitude 50%"]
    );
    let (ppl_c, rte_c, mean_c, sp_c, n24_c, tr_c, peak_c) = (
        col(&head, "perplexity"),
        col(&head, "rte acc / acc_norm (%)"),
        col(&head, "mean acc / acc_norm (%)"),
        col(&head, "linear sparsity"),
        col(&head, "2:4"),
        col(&head, "trainable parameters"),
        col(&head, "peak memory"),
    );
    col(&head, "arc_easy acc / acc_norm (%)");
    let evals = [
        "00-eval-dense",
        "02-eval-wanda-2-4",
        "05-eval-wanda-2-4-spp",
    ];
    for (row, stage) in rows.iter().zip(evals) {
        let ppl = read_json(&run.join(stage).join("ppl.json"));
        assert_eq!(row[ppl_c], format!("{:.2}", ppl["ppl"].as_f64().unwrap()));
        let tasks = read_json(&run.join(stage).join("tasks.json"));
        let rte = &tasks["tasks"]["rte"];
        let p = |k: &str| format!("{:.1}", 100.0 * rte[k].as_f64().unwrap());
        assert_eq!(
            row[rte_c],
            format!(
                "{} ± {} / {} ± {}",
                p("acc"),
                p("acc_stderr"),
                p("acc_norm"),
                p("acc_norm_stderr")
            )
        );
        let mean = 100.0 * tasks["mean_acc"].as_f64().unwrap();
        assert!(row[mean_c].starts_with(&format!("{mean:.1} / ")), "{row:?}");
        let inspect = read_json(&run.join(stage).join("inspect.json"));
        let sp = 100.0 * inspect["linear_sparsity"].as_f64().unwrap();
        assert_eq!(row[sp_c], format!("{sp:.1}%"));
    }
    assert_eq!(rows[0][sp_c], "0.0%");
    assert_eq!(rows[1][sp_c], "50.0%");
    assert_eq!(
        (rows[0][n24_c].as_str(), rows[2][n24_c].as_str()),
        ("no", "yes")
    );
    let train = read_json(&run.join("03-train-spp/adapter/train.json"));
    let n = train["report"]["trainable_parameters"].as_u64().unwrap();
    assert!(n > 0);
    assert!(rows[2][tr_c].starts_with(&n.to_string()), "{:?}", rows[2]);
    assert_eq!(rows[0][tr_c], "—");
    // Peak memory: the largest of the row's stages (train: 300 MB → 286 MiB).
    assert_eq!(rows[2][peak_c], "286 MiB");
    // The pruned row's peak comes from prune.json (stage.json has null) or the eval stage.
    assert!(rows[1][peak_c].ends_with("MiB"), "{:?}", rows[1]);
    // The unfinished stage's stray ppl.json is not used.
    assert_eq!(rows[3][ppl_c], "—");
    assert!(!md.contains("123456"));
    // One protocol for all rows: in a note, not a column.
    assert!(!head.iter().any(|h| h == "ppl protocol"));
    assert!(
        md.contains("2 non-overlapping windows of 16 tokens"),
        "{md}"
    );
    assert!(md.contains("--limit 5"));

    // Recovery table: pruned and fine-tuned rows against dense.
    let (rh, rrows) = md_table(&md, "What pruning cost and fine-tuning won back");
    let _ = rh;
    assert_eq!(rrows.len(), 3, "{rrows:?}");
    assert!(md.contains("What pruning cost and fine-tuning won back"));

    // Stages: every stage with its status.
    let (sh, srows) = md_table(&md, "Stages");
    let status = col(&sh, "status");
    let st: Vec<(&str, &str)> = srows
        .iter()
        .map(|r| (r[0].as_str(), r[status].as_str()))
        .collect();
    assert_eq!(st[0], ("00-eval-dense", "done"));
    assert_eq!(st[6], ("06-prune-magnitude", "unfinished (running)"));
    assert_eq!(st[7], ("07-eval-magnitude", "not started"));
    assert!(md.contains("6 of 8 done, 2 unfinished"));
    assert!(md.contains("2025-11-28 03:20 UTC"));

    // Commands, shell-quoted, and plots written next to the report.
    assert!(md.contains("spp prune --model "));
    assert!(md.contains("--method wanda --sparsity 2:4"));
    for f in ["loss-03-train-spp.svg", "sparsity.svg", "tasks.svg"] {
        let p = run.join("plots").join(f);
        assert!(paths.plots.contains(&p), "{f} not in {:?}", paths.plots);
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(md.contains(&format!("](plots/{f})")), "{f} not linked");
    }
    assert!(std::fs::read_to_string(run.join("plots/tasks.svg"))
        .unwrap()
        .contains("wanda 2:4 + spp"));

    // HTML: balanced, self-contained, one inline svg per plot, the same tables.
    check_balanced(&html);
    self_contained(&html);
    assert_eq!(html.matches("<svg").count(), 3);
    assert_eq!(html.matches("<table").count(), 3);
    assert!(html.contains("<td>wanda 2:4 + spp</td>"));
    assert!(html.contains("unfinished (running)"));
    assert!(html.starts_with("<!DOCTYPE html>"));
    // No temporary files left behind.
    for e in std::fs::read_dir(&run).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".partial"), "{n}");
    }
}

#[test]
fn missing_evaluations_omit_their_columns() {
    let (_tmp, run) = fixture_copy();
    for st in [
        "00-eval-dense",
        "02-eval-wanda-2-4",
        "05-eval-wanda-2-4-spp",
    ] {
        std::fs::remove_file(run.join(st).join("ppl.json")).unwrap();
    }
    spp::report::build(&run).unwrap();
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    let (head, rows) = md_table(&md, "Results");
    assert!(!head.iter().any(|h| h.contains("perplexity")), "{head:?}");
    col(&head, "rte acc / acc_norm (%)");
    assert_eq!(rows.len(), 4);
    assert!(!md.contains("non-overlapping windows of 16"));

    // No tasks either: no accuracy columns and no task plot.
    for st in [
        "00-eval-dense",
        "02-eval-wanda-2-4",
        "05-eval-wanda-2-4-spp",
    ] {
        std::fs::remove_file(run.join(st).join("tasks.json")).unwrap();
    }
    std::fs::remove_dir_all(run.join("plots")).unwrap();
    let paths = spp::report::build(&run).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let (head, _) = md_table(&md, "Results");
    assert!(!head.iter().any(|h| h.contains("acc")), "{head:?}");
    col(&head, "linear sparsity");
    assert!(!run.join("plots/tasks.svg").exists());
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert_eq!(html.matches("<svg").count(), 2);
    check_balanced(&html);
}

#[test]
fn run_dir_without_run_json_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let e = spp::report::build(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("no run.json") && e.contains("spp run"), "{e}");
    assert!(!tmp.path().join("report.md").exists());

    let e = spp::report::build(&tmp.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");

    std::fs::write(tmp.path().join("run.json"), "{\"stages\": 3").unwrap();
    let e = spp::report::build(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("run.json") && e.contains("cannot read"), "{e}");
    assert!(!tmp.path().join("report.html").exists());
}

fn ppl_json(ppl: f64) -> Value {
    json!({"ppl": ppl, "mean_nll": ppl.ln(), "windows": 8, "seqlen": 2048, "stride": 2048,
           "scored_tokens": 16376, "tokens": 16384, "text_tokens": 301948, "bos": false,
           "seconds": 1.0, "tokens_per_second": 1.0, "model": "m", "text": "wiki.test.raw",
           "protocol": "non-overlapping windows"})
}

fn tasks_json(boolq: f64, rte: f64) -> Value {
    let t = |acc: f64| {
        json!({"n": 100, "acc": acc, "acc_stderr": 0.05, "acc_norm": acc,
                               "acc_norm_stderr": 0.05, "seconds": 1.0, "truncated": 0,
                               "requests": 200, "tokens": 1000, "docs": []})
    };
    json!({"settings": {"tasks": ["boolq", "rte"], "limit": null, "num_fewshot": 0,
                        "protocol": "harness", "spp_version": "0.1.0"},
           "mean_acc": (boolq + rte) / 2.0, "mean_acc_norm": (boolq + rte) / 2.0, "seconds": 2.0,
           "tasks": {"boolq": t(boolq), "rte": t(rte)}})
}

/// Hand-written numbers: the gap arithmetic, label escaping, bad files as warnings.
#[test]
fn recovery_arithmetic_escaping_and_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    let stages = ["a-dense", "b-prune", "c-eval", "d-train", "e-eval", "f-odd"];
    write_json(
        &run.join("run.json"),
        &json!({"name": "by hand", "spp_version": "0.1.0", "stages": stages,
                "started_unix": T0, "command": ["spp", "run", "it's.toml"]}),
    );
    let st = |name: &str, kind: &str, model: &str| {
        write_json(
            &run.join(name).join("stage.json"),
            &json!({"name": name, "kind": kind, "model": model, "status": "done",
                    "seconds": 10.0, "peak_rss_bytes": 2u64 << 30, "started_unix": T0,
                    "commands": [["spp", kind, "--prompt", "two words"]]}),
        );
    };
    st("a-dense", "eval", "dense");
    write_json(&run.join("a-dense/ppl.json"), &ppl_json(10.0));
    write_json(&run.join("a-dense/tasks.json"), &tasks_json(0.70, 0.60));
    st("b-prune", "prune", "wanda 50%");
    st("c-eval", "eval", "wanda 50%");
    write_json(&run.join("c-eval/ppl.json"), &ppl_json(20.0));
    write_json(&run.join("c-eval/tasks.json"), &tasks_json(0.50, 0.40));
    st("d-train", "train", "wanda 50% + spp");
    // The train record names the pruned stage's model directory.
    write_json(
        &run.join("d-train/adapter/train.json"),
        &json!({"model": "/elsewhere/b-prune/model", "report": {"trainable_parameters": 1000}}),
    );
    st("e-eval", "eval", "wanda 50% + spp");
    write_json(&run.join("e-eval/ppl.json"), &ppl_json(12.5));
    write_json(&run.join("e-eval/tasks.json"), &tasks_json(0.60, 0.50));
    std::fs::write(run.join("e-eval/inspect.json"), "{not json").unwrap();
    st("f-odd", "eval", "x<y & \"z\"");
    let mut other = ppl_json(30.0);
    other["seqlen"] = json!(1024);
    write_json(&run.join("f-odd/ppl.json"), &other);

    let paths = spp::report::build(run).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();

    let (rh, rrows) = md_table(&md, "What pruning cost and fine-tuning won back");
    let ft = rrows.iter().find(|r| r[0] == "wanda 50% + spp").unwrap();
    // ppl: (20 − 12.5) / (20 − 10) = 75%; mean acc: (55 − 45) / (65 − 45) = 50%.
    assert_eq!(ft[col(&rh, "ppl gap closed by fine-tuning")], "75%");
    assert_eq!(ft[col(&rh, "acc gap closed by fine-tuning")], "50%");
    assert_eq!(ft[col(&rh, "Δ perplexity")], "+2.50 (+25.0%)");
    assert_eq!(ft[col(&rh, "Δ mean acc")], "-10.0 pts");
    let pr = rrows.iter().find(|r| r[0] == "wanda 50%").unwrap();
    assert_eq!(pr[col(&rh, "Δ perplexity")], "+10.00 (+100.0%)");
    assert_eq!(pr[col(&rh, "ppl gap closed by fine-tuning")], "—");
    assert!(md.contains("75% of the gap closed"), "{md}");
    // A row measured with another perplexity protocol: a protocol column, and no comparison.
    let (head, rows) = md_table(&md, "Results");
    let pc = col(&head, "ppl protocol");
    assert_eq!(rows[0][pc], "seqlen 2048 × 8 windows");
    assert_eq!(rows[3][pc], "seqlen 1024 × 8 windows");
    let odd = rrows.iter().find(|r| r[0].starts_with("x")).unwrap();
    assert_eq!(odd[col(&rh, "Δ perplexity")], "—");
    assert!(md.contains("different protocols"));

    // Escaped everywhere it is shown.
    assert!(html.contains("x&lt;y &amp; &quot;z&quot;"));
    assert!(!html.contains("x<y"));
    assert!(md.contains(r"x\<y & "), "{md}");
    check_balanced(&html);
    self_contained(&html);
    // Quoted argv.
    assert!(md.contains("spp run 'it'\\''s.toml'"), "{md}");
    assert!(md.contains("--prompt 'two words'"));
    // The broken file is a warning, not a failure.
    assert!(
        md.contains("e-eval/inspect.json: not the expected JSON"),
        "{md}"
    );
    assert!(md.contains("2.00 GiB"));
}

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs chromium headless with a deadline; returns (exit ok, stdout).
fn chromium(bin: &Path, profile: &Path, extra: &[String]) -> (bool, String) {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--allow-file-access-from-files",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().unwrap())
}

#[test]
fn headless_chromium_renders_the_html() {
    let Some(bin) = find_chromium() else {
        if std::env::var("SPP_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!(
                "SPP_REQUIRE_CHROMIUM=1 but no chromium, chromium-browser or google-chrome on PATH"
            );
        }
        println!("skipped: chromium not found");
        return;
    };
    let (tmp, run) = fixture_copy();
    let paths = spp::report::build(&run).unwrap();
    let url = format!("file://{}", paths.html.canonicalize().unwrap().display());
    let png = tmp.path().join("shot.png");
    let (ok, _) = chromium(
        &bin,
        &tmp.path().join("profile1"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,2000".into(),
            url.clone(),
        ],
    );
    assert!(ok, "chromium --screenshot failed");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // A blank 1200×2000 page compresses to a few KB; tables, text and plots do not.
    assert!(
        bytes.len() > 40_000,
        "screenshot only {} bytes",
        bytes.len()
    );

    let (ok, dom) = chromium(
        &bin,
        &tmp.path().join("profile2"),
        &["--dump-dom".into(), url],
    );
    assert!(ok, "chromium --dump-dom failed");
    assert_eq!(dom.matches("<table").count(), 3, "{dom}");
    assert_eq!(dom.matches("<svg").count(), 3);
    assert!(dom.contains("<td>wanda 2:4 + spp</td>"));
    assert!(dom.contains("<figcaption>"));
}
