//! `spp run RECIPE.toml` end to end on the tiny LLaMA-2 GGUF of ../shared/data: every stage,
//! the report, resume after a kill in the middle of training (same results as an uninterrupted
//! run), and recipes that must be refused before any stage starts.

mod common;

use common::{shared, spp};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The tiny model and a recipe for it in `tmp`.
fn setup(tmp: &Path) -> PathBuf {
    let model = tmp.join("tiny");
    if !model.exists() {
        let o = spp(&[
            "convert",
            "gguf",
            &shared("models/llama-2-tiny-random.gguf"),
            "--out",
            &model.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let recipe = tmp.join("recipe.toml");
    let text = format!(
        r#"name = "tiny"
model = "tiny"

[prune]
method = "wanda"
sparsity = "2:4"
calib = "{calib}"
nsamples = 2
seqlen = 32

[train]
method = "spp"
data = "{alpaca}"
max_steps = 40
batch_size = 2
micro_batch_size = 1
cutoff = 48
val_size = 4
eval_every = 20
save_every = 2
r = 4

[eval]
ppl_text = "{wiki}"
seqlen = 32
max_windows = 2
tasks = ["rte", "arc_easy"]
limit = 3
data_dir = "{eval}"
"#,
        calib = shared("c4/c4_sample.jsonl"),
        alpaca = shared("alpaca/alpaca_gpt4_en_demo.json"),
        wiki = shared("wikitext2/wiki.test.raw"),
        eval = shared("eval"),
    );
    std::fs::write(&recipe, text).unwrap();
    recipe
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(p)).unwrap()
}

#[test]
fn a_recipe_runs_every_stage_and_resumes_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let r = recipe.display().to_string();
    let a = tmp.path().join("a");
    let o = spp(&["run", &r, "--out", &a.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = json(&a.join("run.json"));
    let stages: Vec<String> = serde_json::from_value(run["stages"].clone()).unwrap();
    assert_eq!(
        stages,
        [
            "00-eval-dense",
            "01-prune-wanda-2-4",
            "02-eval-wanda-2-4",
            "03-train-wanda-2-4-spp",
            "04-merge-wanda-2-4-spp",
            "05-eval-wanda-2-4-spp"
        ]
    );
    for s in &stages {
        let rec = json(&a.join(s).join("stage.json"));
        assert_eq!(rec["status"], "done", "{s}");
        assert!(rec["seconds"].as_f64().unwrap() > 0.0);
    }
    // The report: one row per model, the plots, and `spp report` rebuilds it.
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    for row in ["| dense |", "| wanda 2:4 |", "| wanda 2:4 + spp |"] {
        assert!(md.contains(row), "report.md lacks {row}: {md}");
    }
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(
        html.matches("<svg").count() >= 3,
        "loss, sparsity and task plots"
    );
    std::fs::remove_file(a.join("report.md")).unwrap();
    let o = spp(&["report", &a.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(a.join("report.md")).unwrap(), md);
    let merged = json(&a.join("05-eval-wanda-2-4-spp/inspect.json"));
    assert_eq!(
        merged["all_linears_2_4"], true,
        "the merged model keeps 2:4"
    );
    assert!(
        a.join("05-eval-wanda-2-4-spp/tasks.json").exists()
            && a.join("00-eval-dense/ppl.json").exists()
    );

    // Kill the whole run (spp run and its spp train) once training has written its step-2
    // checkpoint, where the training process stops itself (FREEZE_ENV).
    let b = tmp.path().join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spp"))
        .args(["run", &r, "--out", &b.display().to_string()])
        .env(spp::train::FREEZE_ENV, "2")
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let checkpoint = b.join("03-train-wanda-2-4-spp/adapter/checkpoint/state.json");
    wait_for_frozen_training(&checkpoint, &mut child);
    Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    child.wait().unwrap();
    let rec = json(&b.join("03-train-wanda-2-4-spp/stage.json"));
    assert_eq!(rec["status"], "running", "killed in the middle of training");
    assert!(
        b.join(".spp-run.lock").exists(),
        "a killed run leaves its lock, which the resume below takes over"
    );
    assert!(!b.join("04-merge-wanda-2-4-spp").exists());

    let o = spp(&["run", &r, "--out", &b.display().to_string(), "--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("01-prune-wanda-2-4 · done earlier"), "{err}");
    assert!(
        err.contains("continuing training from its checkpoint"),
        "{err}"
    );
    // Same adapter, same merged weights, same evaluations as the uninterrupted run.
    for f in [
        "03-train-wanda-2-4-spp/adapter/adapter_model.safetensors",
        "04-merge-wanda-2-4-spp/model/model.safetensors",
    ] {
        assert!(
            read(&a.join(f)) == read(&b.join(f)),
            "{f} differs after resume"
        );
    }
    let (pa, pb) = (
        json(&a.join("05-eval-wanda-2-4-spp/ppl.json")),
        json(&b.join("05-eval-wanda-2-4-spp/ppl.json")),
    );
    assert_eq!(pa["ppl"], pb["ppl"]);
    let (ta, tb) = (
        json(&a.join("05-eval-wanda-2-4-spp/tasks.json")),
        json(&b.join("05-eval-wanda-2-4-spp/tasks.json")),
    );
    assert_eq!(ta["tasks"]["rte"]["docs"], tb["tasks"]["rte"]["docs"]);

    // A finished run resumes to nothing new.
    let o = spp(&["run", &r, "--out", &b.display().to_string(), "--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.matches("done earlier").count() == 6,
        "{err}"
    );
    // Without --resume an existing run is not overwritten.
    let o = spp(&["run", &r, "--out", &b.display().to_string()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

/// A sweep: `setup`'s recipe with `train` as its `[train]` options instead of the usual ones and
/// perplexity as the only evaluation.
fn sweep_recipe(tmp: &Path, name: &str, train: &str) -> String {
    let base = std::fs::read_to_string(setup(tmp)).unwrap();
    let head = &base[..base.find("[train]").unwrap()];
    let text = format!(
        "{head}[train]\ndata = \"{}\"\nbatch_size = 2\nmicro_batch_size = 1\ncutoff = 48\nval_size = 4\neval_every = 2\nr = 4\n{train}\n[eval]\nppl_text = \"{}\"\nseqlen = 32\nmax_windows = 2\n",
        shared("alpaca/alpaca_gpt4_en_demo.json"),
        shared("wikitext2/wiki.test.raw"),
    );
    let path = tmp.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_sweep_runs_its_grid_and_the_report_compares_the_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let r = sweep_recipe(
        tmp.path(),
        "sweep",
        "method = [\"spp\", \"lora-mask\"]\nmax_steps = 4\nlr = [\"find\", 1e-3]\nfind_lr_steps = 8\nlr_max = 0.1\n",
    );
    let a = tmp.path().join("a");
    let o = spp(&["run", &r, "--out", &a.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = json(&a.join("run.json"));
    let stages: Vec<String> = serde_json::from_value(run["stages"].clone()).unwrap();
    assert_eq!(
        &stages[3..8],
        [
            "03-lr-find-wanda-2-4-spp-lr-find",
            "04-train-wanda-2-4-spp-lr-find",
            "05-merge-wanda-2-4-spp-lr-find",
            "06-eval-wanda-2-4-spp-lr-find",
            "07-train-wanda-2-4-spp-lr-0.001",
        ]
    );
    assert_eq!(stages.len(), 3 + 2 * (1 + 3 + 3));
    // The range test's suggestion is the lr its training ran with.
    let test = json(&a.join("03-lr-find-wanda-2-4-spp-lr-find/lr-find/lr_find.json"));
    let found = test["report"]["suggested_lr"].as_f64().unwrap();
    assert_eq!(test["report"]["points"].as_array().unwrap().len(), 8);
    let train = json(&a.join("04-train-wanda-2-4-spp-lr-find/adapter/train.json"));
    assert_eq!(train["options"]["lr"].as_f64().unwrap(), found);
    assert!(!a
        .join("03-lr-find-wanda-2-4-spp-lr-find/lr-find/adapter_model.safetensors")
        .exists());

    // The report: the comparison of the four settings, the best of each method, the budget
    // line, the range tests and the plot.
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    let section = &md[md.find("## Fine-tuning settings compared").expect(&md)..];
    let section = &section[..section.find("\n## ").unwrap()];
    assert!(section.contains("### From wanda 2:4"), "{section}");
    assert!(
        section.contains("| method | setting | perplexity |"),
        "{section}"
    );
    assert!(section.contains("ppl gap closed"), "{section}");
    for row in [
        "| spp | lr 0.001 |",
        "| lora-mask | lr 0.001 |",
        "(range test)",
    ] {
        assert!(section.contains(row), "{row}: {section}");
    }
    assert_eq!(section.matches("| best |").count(), 2, "{section}");
    assert!(section.contains("Equal budget: every setting here trained for 4 optimizer steps"));
    assert!(section.contains("from the range test of stage 03-lr-find-wanda-2-4-spp-lr-find"));
    assert!(section.contains("plots/compare-0.svg"));
    let svg = std::fs::read_to_string(a.join("plots/compare-0.svg")).unwrap();
    assert!(
        svg.contains("lora-mask") && svg.contains("(log scale)"),
        "{svg}"
    );
    assert_eq!(svg.matches("<polyline").count(), 2, "one line per method");
    let test_plot = a.join("plots/lr-find-03-lr-find-wanda-2-4-spp-lr-find.svg");
    let test_plot = std::fs::read_to_string(test_plot).unwrap();
    assert!(test_plot.contains("smoothed loss"));
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("Fine-tuning settings compared"));

    // Resume: every stage done earlier.
    let o = spp(&["run", &r, "--out", &a.display().to_string(), "--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("done earlier").count(), stages.len(), "{err}");

    // Different budgets are flagged.
    let r = sweep_recipe(
        tmp.path(),
        "budget",
        "method = \"spp\"\nmax_steps = [2, 4]\n",
    );
    let b = tmp.path().join("b");
    let o = spp(&["run", &r, "--out", &b.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(b.join("report.md")).unwrap();
    assert!(
        md.contains("Warning: not an equal budget — optimizer steps (2, 4)"),
        "{md}"
    );
    assert!(md.contains("| spp | max_steps 2 |"), "{md}");
}

#[test]
fn bad_recipes_are_refused_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    // `edit` turns the good recipe into a bad one: one clear error naming every problem at once,
    // and nothing written.
    let refused = |edit: &dyn Fn(String) -> String, needles: &[&str]| {
        let recipe = setup(tmp.path());
        let text = edit(std::fs::read_to_string(&recipe).unwrap());
        std::fs::write(&recipe, text).unwrap();
        let o = spp(&[
            "run",
            &recipe.display().to_string(),
            "--out",
            &out.display().to_string(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks {n:?}: {err}");
        }
        assert!(!out.exists(), "nothing is written for a refused recipe");
    };
    refused(
        &|t| t + "[extra]\nx = 1\n",
        &["unknown recipe keys", "extra"],
    );
    // Unknown keys inside sections, with the nearest known one.
    refused(
        &|t| {
            t.replace("max_steps = 40", "max_step = 40")
                .replace("nsamples = 2", "n_samples = 2")
        },
        &[
            "train.max_step (did you mean train.max_steps?)",
            "prune.n_samples (did you mean prune.nsamples?)",
        ],
    );
    // Contradictions and missing paths are all listed at once.
    refused(
        &|t| {
            t.replace("sparsity = \"2:4\"", "sparsity = [\"2:4\", \"3:7\"]")
                .replace(
                    &shared("alpaca/alpaca_gpt4_en_demo.json"),
                    "/nonexistent/alpaca.json",
                )
                .replace(
                    "tasks = [\"rte\", \"arc_easy\"]",
                    "tasks = [\"rte\", \"arc_eazy\"]",
                )
        },
        &["3:7", "/nonexistent/alpaca.json", "arc_eazy", "cannot run"],
    );
}

/// Waits until the run's training has written `checkpoint` and stopped itself there (state T in
/// /proc), so that what the test does next happens at that step, however slow the machine.
fn wait_for_frozen_training(checkpoint: &Path, child: &mut std::process::Child) {
    let t = Instant::now();
    while !(checkpoint.exists() && stopped_process_with_arg("train")) {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the training never stopped after its checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before training stopped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every process's directory under /proc.
fn processes() -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .map(|e| e.path())
}

/// Whether a stopped (state T) spp process has the argument `arg`.
fn stopped_process_with_arg(arg: &str) -> bool {
    processes().any(|p| {
        let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
        let mut args = cmd.split(|&b| b == 0);
        args.next().is_some_and(|a| a.ends_with(b"spp"))
            && args.any(|a| a == arg.as_bytes())
            && state == Some('T')
    })
}

/// Whether any process's command line mentions `needle`.
fn process_mentions(needle: &str) -> bool {
    processes()
        .filter_map(|p| std::fs::read(p.join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(needle))
}

#[test]
fn sigterm_reaches_the_running_stage_and_the_run_stays_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let r = recipe.display().to_string();
    let out = tmp.path().join("sig");
    let o = out.display().to_string();
    // SIGTERM goes to `spp run` alone (its own process group): it must pass it on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_spp"))
        .args(["run", &r, "--out", &o])
        .env(spp::train::FREEZE_ENV, "2")
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let checkpoint = out.join("03-train-wanda-2-4-spp/adapter/checkpoint/state.json");
    wait_for_frozen_training(&checkpoint, &mut child);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // The frozen training process gets the SIGTERM that `spp run` passes on once it continues.
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill")
        .args(["-CONT", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(!done.status.success());
    assert!(err.contains("stopped by SIGTERM"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let rec = json(&out.join("03-train-wanda-2-4-spp/stage.json"));
    assert_eq!(rec["status"], "interrupted");
    assert!(!process_mentions(&o), "a stage of the run is still running");
    assert!(!out.join(".spp-run.lock").exists(), "the lock is released");

    let o = spp(&["run", &r, "--out", &o, "--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("continuing training from its checkpoint"),
        "{err}"
    );
}
