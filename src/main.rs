//! The `spp` binary: parses arguments, calls the library's jobs ([`spp::job`]), prints results on
//! stdout and progress on stderr, and exits non-zero with one clear message on any error.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use spp::job::{self, GgufArgs, MergeArgs, ModelArgs, PplArgs, PruneArgs, TasksArgs, TrainArgs};
use spp::model::stream::gib;
use spp::record::{ConvertRecord, LrFindRecord, MergeRecord, PruneRecord, TrainRecord};
use spp::tokenizer::{Message, Tokenizer};
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// mimalloc reuses freed memory instead of returning large blocks to the OS and faulting them in
/// again: training allocates and frees many activation-sized buffers per step (measured 2× on a
/// frozen-model step, `cargo bench --bench train_step`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` through [`write_stdout`]: a closed pipe (`spp generate … | head`) ends the process
/// quietly instead of panicking.
macro_rules! println {
    () => { write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` through [`write_stdout`].
macro_rules! print {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*)) };
}

/// Writes and flushes stdout; a reader that went away (broken pipe) ends the process with
/// exit code 0 and no message, any other write error with a message and exit code 1.
fn write_stdout(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "spp",
    version,
    about = "Prune, fine-tune with sparsity-preserving adapters, evaluate and run LLaMA-family models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert another format into a Hugging Face model directory.
    #[command(subcommand)]
    Convert(ConvertCmd),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Write a Hugging Face model directory in another format.
    #[command(subcommand)]
    Export(ExportCmd),
    /// Generate text (streaming, KV-cached).
    Generate(GenerateArgs),
    /// Show architecture, parameter counts, dtype and per-linear sparsity / N:M validity.
    Inspect(InspectArgs),
    /// Prune a dense model (magnitude, Wanda, SparseGPT; unstructured or N:M).
    Prune(Json<PruneArgs>),
    /// Fine-tune adapters (SPP, LoRA, LoRA + mask) on the frozen, pruned model.
    Train(Box<Json<TrainArgs>>),
    /// Fold an adapter into the weights and write a Hugging Face directory.
    Merge(Json<MergeArgs>),
    /// Store the sparse linears packed (N:M codes or a bitmask plus the kept values): smaller
    /// on disk, and faster to decode with.
    Pack(Json<job::PackArgs>),
    /// Write a packed model's dense checkpoint.
    Unpack(job::UnpackArgs),
    /// The whole experiment from a recipe: prune → eval → train → merge → eval, and a report.
    Run(RunArgs),
    /// Rebuild report.md / report.html of a run directory from its stage records.
    Report(ReportArgs),
}

#[derive(Subcommand)]
enum ConvertCmd {
    /// A llama-architecture GGUF file (v2/v3) → a Hugging Face directory.
    Gguf(Json<GgufArgs>),
}

#[derive(Subcommand)]
enum ExportCmd {
    /// A GGUF file for llama.cpp / Ollama (architectures llama, qwen2, qwen3).
    Gguf(Json<job::ExportGgufArgs>),
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Perplexity, Wanda/SparseGPT protocol: non-overlapping windows, every position scored.
    Ppl(Json<PplArgs>),
    /// Zero-shot multiple choice with lm-evaluation-harness's prompts and scoring (acc, acc_norm).
    Tasks(Json<TasksArgs>),
}

/// A job's options and `--json`.
#[derive(Args)]
struct Json<T: Args> {
    #[command(flatten)]
    a: T,
    /// Print the JSON record on stdout instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// The run directory (`spp run --out`).
    dir: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// The recipe (TOML; see recipes/ and the README).
    recipe: PathBuf,
    /// Run directory [default: runs/<recipe name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue a run: finished stages whose inputs are unchanged are skipped.
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// The prompt; without it (and with --chat) an interactive loop reads lines from stdin.
    #[arg(long, conflicts_with = "prompts")]
    prompt: Option<String>,
    /// A file of prompts, one per line, each continued on its own.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Print one JSON line per prompt (prompt, token ids, text and the rates) instead of the
    /// streamed text.
    #[arg(long)]
    json: bool,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Optional system message for --chat.
    #[arg(long)]
    system: Option<String>,
    /// Maximum number of new tokens.
    #[arg(short = 'n', long = "max-new-tokens", default_value_t = 128)]
    n: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = spp::validate::non_negative)]
    temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::top_p)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Print every linear, not only the summary.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

/// Progress on stderr: a bar per step on a terminal, plain lines otherwise.
struct Stderr {
    tty: bool,
    /// When each step started.
    starts: HashMap<String, std::time::Instant>,
    bars: HashMap<String, indicatif::ProgressBar>,
}

impl job::Log for Stderr {
    fn line(&mut self, line: &str) {
        eprintln!("{line}");
    }
    fn start(&mut self, label: &str) {
        self.starts.insert(label.into(), std::time::Instant::now());
    }
    fn progress(&mut self, label: &str, done: usize, total: usize) {
        if !self.tty {
            let secs = self
                .starts
                .get(label)
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            eprintln!("{label} {done}/{total} {secs:.1} s");
            return;
        }
        let b = self.bars.entry(label.to_string()).or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {elapsed} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            b
        });
        b.set_position(done as u64);
        if done == total {
            b.finish_and_clear();
        }
    }
}

/// Prints a job's record: one JSON line with `--json`, else `summary` of it.
fn show<R: serde::Serialize>(
    json: bool,
    record: spp::Result<R>,
    summary: impl FnOnce(&R) -> String,
) -> Result<()> {
    let r = record?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", summary(&r));
    }
    Ok(())
}

fn pruned(a: &PruneArgs, r: &PruneRecord) -> String {
    let s = r.result.unwrap_or_default();
    format!(
        "pruned {} -> {}: {:?} {} sparsity {:.4} (2:4 {}, 4:8 {}) in {:.1} s, peak memory {:.2} GiB\n",
        a.m.model.display(),
        a.out.display(),
        a.method,
        a.sparsity,
        s.linear_sparsity,
        s.all_linears_2_4,
        s.all_linears_4_8,
        r.report.as_ref().map_or(0.0, |p| p.total_seconds),
        gib(r.peak_anon_bytes)
    )
}

fn trained(a: &TrainArgs, r: &TrainRecord) -> String {
    let rep = &r.report;
    format!(
        "trained {} adapter ({} parameters) on {} for {} steps: loss {:.4} -> {:.4}, best val_loss {} at step {}, {:.0} tok/s, peak memory {:.2} GiB -> {}\n",
        a.method,
        rep.trainable_parameters,
        a.data.display(),
        rep.steps,
        rep.first_loss.unwrap_or(f64::NAN),
        rep.last_loss.unwrap_or(f64::NAN),
        rep.best_val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        rep.best_step.map_or("-".into(), |v| v.to_string()),
        rep.tokens_per_second,
        gib(rep.peak_rss_bytes.unwrap_or(0)),
        a.out.display()
    )
}

fn found(a: &TrainArgs, r: &LrFindRecord) -> String {
    let rep = &r.report;
    format!(
        "suggested lr {:.3e} ({}; smoothed loss {:.4} at lr {:.3e}) from {} range-test steps on {}, {:.1} s -> {}\n",
        rep.suggested_lr,
        rep.rule,
        rep.min_smoothed_loss,
        rep.lr_at_min_loss,
        rep.points.len(),
        a.data.display(),
        rep.seconds,
        a.out.join("lr_find.json").display()
    )
}

fn merged(a: &MergeArgs, r: &MergeRecord) -> String {
    let method = r.adapter_config.as_ref().map(|c| c.method);
    let (before, after, numel) = (r.zeros_before, r.zeros_after, r.adapted_weights);
    if method == Some(spp::adapter::Method::Lora) {
        eprintln!(
            "note: a plain LoRA update is dense: merging filled {} of the {} zeros ({:.2}% of the adapted weights are zero now); use spp or lora-mask to keep the sparsity",
            before.saturating_sub(after),
            before,
            100.0 * after as f64 / numel.max(1) as f64
        );
    }
    format!(
        "merged {} adapter into {} -> {}: {} linears; zeros {} -> {} of {} ({}); model sparsity {:.4}, 2:4 {}, 4:8 {}\n",
        method.map_or("?".into(), |m| m.to_string()),
        a.model.display(),
        a.out.display(),
        r.linears.len(),
        before,
        after,
        numel,
        if r.all_zeros_kept == Some(true) { "every zero kept" } else { "zeros NOT kept" },
        r.sparsity.linear_sparsity,
        r.sparsity.all_linears_2_4,
        r.sparsity.all_linears_4_8
    )
}

fn converted(a: &GgufArgs, r: &ConvertRecord) -> String {
    let c = &r.report;
    format!(
        "converted {} -> {}: {} tensors, {} parameters, {} (from {:?}), tokenizer {}, tied {} in {:.1} s\n",
        a.file.display(),
        a.out.display(),
        c.tensors,
        c.parameters,
        c.dtype,
        c.source_types,
        c.tokenizer,
        c.tied_embeddings,
        r.seconds
    )
}

fn inspect(a: InspectArgs, log: &mut Stderr) -> Result<()> {
    let r = job::inspect(&a.m, log)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.text(&a.m.model, a.all));
    }
    Ok(())
}

fn generate(a: GenerateArgs, log: &mut Stderr) -> Result<()> {
    let (model, _) = job::load(&a.m, log)?;
    let tok = Tokenizer::load(&a.m.model, &model.cfg)?;
    let opts = spp::generate::SamplingOptions {
        max_new_tokens: a.n,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let message = |role: &str, content: String| Message {
        role: role.into(),
        content,
    };
    let mut history: Vec<Message> = a
        .system
        .iter()
        .map(|s| message("system", s.clone()))
        .collect();
    let run = |user: &str, history: &mut Vec<Message>| -> Result<()> {
        let ids = if a.chat {
            history.push(message("user", user.to_string()));
            tok.encode(&tok.apply_chat(history)?, false)?
        } else {
            tok.encode(user, true)?
        };
        let mut stream = tok.inner.decode_stream(true);
        let mut answer = String::new();
        let mut tokens = Vec::new();
        let stats = spp::generate::generate(&model, &ids, &tok.eos_ids, &opts, &mut |id| {
            tokens.push(id);
            if let Some(piece) = stream
                .step(id)
                .map_err(|e| spp::Error::Msg(format!("tokenizer: {e}")))?
            {
                answer.push_str(&piece);
                if !a.json {
                    print!("{piece}");
                }
            }
            Ok(())
        })?;
        if a.json {
            let line = serde_json::json!({
                "prompt": user, "tokens": tokens, "text": answer, "stats": stats,
            });
            println!("{line}");
        } else {
            println!();
            eprintln!("{}", stats.line());
        }
        if a.chat {
            history.push(message("assistant", answer));
        }
        Ok(())
    };
    if let Some(path) = &a.prompts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --prompts {}", path.display()))?;
        let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if prompts.is_empty() {
            bail!("{} holds no prompts: write one per line", path.display());
        }
        for p in prompts {
            run(p, &mut history)?;
        }
        return Ok(());
    }
    match &a.prompt {
        Some(p) => run(p, &mut history),
        None => {
            if !a.chat {
                bail!("give --prompt TEXT, or --chat for an interactive conversation");
            }
            eprintln!(
                "interactive chat: type a message and press enter; an empty line or EOF ends it"
            );
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                if line.trim().is_empty() {
                    break;
                }
                run(&line, &mut history)?;
            }
            Ok(())
        }
    }
}

fn run_recipe(a: RunArgs) -> Result<()> {
    let recipe = spp::run::recipe::Recipe::load(&a.recipe)?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name));
    let exe = std::env::current_exe().context("cannot find the spp binary")?;
    let command: Vec<String> = std::env::args().collect();
    spp::run::run(&recipe, &out, a.resume, &exe, command)?;
    let paths = spp::report::build(&out)?;
    println!(
        "run {} done: {} (report: {}, {})",
        recipe.name,
        out.display(),
        paths.markdown.display(),
        paths.html.display()
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // Jobs that walk the blocks once hand freed memory back: each block's f32 working copies are
    // transient, and keeping them would add to the peak (Wanda 2:4 on an 8-layer 7B-shaped bf16
    // checkpoint: 2.33 GiB kept against 1.53 GiB returned, same time). The others reuse the same
    // activations over and over and keep theirs.
    let streams = matches!(
        cli.cmd,
        Cmd::Prune(_)
            | Cmd::Merge(_)
            | Cmd::Inspect(_)
            | Cmd::Convert(_)
            | Cmd::Export(_)
            | Cmd::Pack(_)
            | Cmd::Unpack(_)
    );
    if !streams {
        spp::keep_freed_memory();
    }
    let log = &mut Stderr {
        tty: std::io::stderr().is_terminal(),
        starts: HashMap::new(),
        bars: HashMap::new(),
    };
    let result = match cli.cmd {
        Cmd::Convert(ConvertCmd::Gguf(j)) => {
            show(j.json, job::convert_gguf(&j.a), |r| converted(&j.a, r))
        }
        Cmd::Export(ExportCmd::Gguf(j)) => {
            let r = job::export_gguf(&j.a);
            for w in r.iter().flat_map(|r| &r.warnings) {
                eprintln!("warning: {w}");
            }
            show(j.json, r, |r| r.line(&j.a.model, &j.a.out))
        }
        Cmd::Eval(EvalCmd::Ppl(j)) => show(j.json, job::eval_ppl(&j.a, log), |r| {
            format!("{}\n", r.result.line())
        }),
        Cmd::Eval(EvalCmd::Tasks(j)) => show(j.json, job::eval_tasks(&j.a, log), |r| r.table()),
        Cmd::Run(a) => run_recipe(a),
        Cmd::Report(a) => spp::report::build(&a.dir)
            .map(|p| println!("{}\n{}", p.markdown.display(), p.html.display()))
            .map_err(Into::into),
        Cmd::Generate(a) => generate(a, log),
        Cmd::Inspect(a) => inspect(a, log),
        Cmd::Prune(j) => show(j.json, job::prune(&j.a, log), |r| pruned(&j.a, r)),
        Cmd::Train(j) if j.a.find_lr => show(j.json, job::find_lr(&j.a, log), |r| found(&j.a, r)),
        Cmd::Train(j) => show(j.json, job::train(&j.a, log), |r| trained(&j.a, r)),
        Cmd::Merge(j) => show(j.json, job::merge(&j.a, log), |r| merged(&j.a, r)),
        Cmd::Pack(j) => show(j.json, job::pack(&j.a, log), |r| r.line(&j.a.out)),
        Cmd::Unpack(a) => job::unpack(&a, log)
            .map(|()| println!("{}", a.out.display()))
            .map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
