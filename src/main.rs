//! The `spp` binary: parses arguments, calls the library, prints results on stdout and progress
//! on stderr, and exits non-zero with one clear message on any error.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use spp::model::{load_model, DTypeChoice};
use spp::outpath::{self, OutKind};
use spp::tokenizer::{Message, Tokenizer};
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
    Prune(PruneArgs),
    /// Fine-tune adapters (SPP, LoRA, LoRA + mask) on the frozen, pruned model.
    Train(TrainArgs),
    /// Fold an adapter into the weights and write a Hugging Face directory.
    Merge(MergeArgs),
    /// The whole experiment from a recipe: prune → eval → train → merge → eval, and a report.
    Run(RunArgs),
    /// Rebuild report.md / report.html of a run directory from its stage records.
    Report(ReportArgs),
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
struct TrainArgs {
    #[command(flatten)]
    m: ModelOpts,
    /// Alpaca JSON/JSONL (instruction, input, output) or JSONL with "text".
    #[arg(long)]
    data: PathBuf,
    /// Output directory: adapter (best validation), checkpoint/, metrics.jsonl, loss.svg, train.json.
    #[arg(long)]
    out: PathBuf,
    /// spp, lora or lora-mask.
    #[arg(long, default_value = "spp")]
    method: spp::adapter::Method,
    /// Linears to adapt: any of q,k,v,o,gate,up,down (or all).
    #[arg(long, default_value = "all")]
    targets: String,
    /// Rows of A: SPP's r (the paper's code uses 16) [default: 16 for spp, 8 for LoRA].
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    r: Option<usize>,
    /// Adapter scale s [default: 2.0, i.e. lora_alpha 16 / lora_r 8 as the paper's code].
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::positive)]
    scale: Option<f64>,
    /// LoRA alpha (scale = alpha / r); LoRA methods only.
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::positive)]
    lora_alpha: Option<f64>,
    /// Dropout probability on the adapter's input, in [0, 1).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true, value_parser = spp::validate::dropout)]
    dropout: f64,
    /// Peak learning rate (> 0).
    #[arg(long, default_value_t = 4e-3, allow_negative_numbers = true, value_parser = spp::validate::learning_rate)]
    lr: f64,
    #[arg(long, default_value_t = 0.03, allow_negative_numbers = true, value_parser = spp::validate::fraction)]
    warmup_ratio: f64,
    /// linear or cosine (after warm-up).
    #[arg(long, default_value = "linear")]
    schedule: spp::train::Schedule,
    #[arg(long, default_value_t = 0.001, allow_negative_numbers = true, value_parser = spp::validate::non_negative)]
    weight_decay: f64,
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = spp::validate::epochs)]
    epochs: usize,
    /// Optimizer steps (overrides --epochs).
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::max_steps)]
    max_steps: Option<usize>,
    /// Global batch (examples per optimizer step).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    batch_size: usize,
    /// Examples per forward/backward (gradient accumulation = batch / micro-batch).
    #[arg(long, default_value_t = 4, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    micro_batch_size: usize,
    /// Maximum tokens per example (longer ones are truncated and counted).
    #[arg(long, default_value_t = 256, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    cutoff: usize,
    /// Compute the loss on the prompt too (the paper's setting).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    train_on_inputs: bool,
    /// Held-out examples for validation [default: min(2000, a tenth of the data)].
    #[arg(long)]
    val_size: Option<usize>,
    /// Validate every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    eval_every: usize,
    /// Write a resumable checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    save_every: usize,
    /// Clip the global gradient norm (off by default, as the paper).
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::positive)]
    max_grad_norm: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Gradient checkpointing: keep only each block's input and re-run the block in the
    /// backward (less memory, about one more forward per step).
    #[arg(long)]
    grad_checkpoint: bool,
    /// Leave the frozen weights on disk and read each block when it runs (implies gradient
    /// checkpointing). On by default when the weights take more than half the available memory.
    #[arg(long)]
    stream_blocks: bool,
    /// With streamed blocks, keep the first N blocks in memory (on the device) and read only the
    /// others for each pass. Default: as many as fit in half of the memory available at the
    /// start on the CPU, none on a GPU (whose free memory spp does not query).
    #[arg(long, value_name = "N")]
    keep_blocks: Option<usize>,
    /// Continue the run in --out from its checkpoint (bit-identical to an uninterrupted run).
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps, leaving a checkpoint (for testing resume).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// The model the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// The adapter directory (`spp train --out`).
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Merge even if the adapter's base-model hash differs; replace an existing --out.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    max_shard_size: spp::model::checkpoint::ByteSize,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    m: ModelOpts,
    /// magnitude, wanda or sparsegpt.
    #[arg(long)]
    method: spp::prune::Method,
    /// A ratio to zero (0.5, 0.6, 0.7, …) or an N:M pattern keeping N of every M (2:4, 4:8).
    #[arg(long)]
    sparsity: spp::prune::Sparsity,
    /// Calibration corpus (JSONL with "text", or plain text) [default: $SPP_DATA_DIR/c4/c4_sample.jsonl].
    #[arg(long)]
    calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = spp::validate::nsamples)]
    nsamples: usize,
    /// Calibration window length in tokens (recorded in prune.json).
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true, value_parser = spp::validate::seqlen)]
    seqlen: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Re-collect statistics after each group (q/k/v, o, gate/up, down), as SparseGPT's option.
    #[arg(long)]
    true_sequential: bool,
    /// SparseGPT column block size.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    blocksize: usize,
    /// SparseGPT dampening, as a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true, value_parser = spp::validate::percdamp)]
    percdamp: f64,
    /// Linears to prune: any of q,k,v,o,gate,up,down (or all).
    #[arg(long, default_value = "all")]
    targets: String,
    /// Output directory (a Hugging Face directory plus prune.json and calibration.safetensors).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    max_shard_size: spp::model::checkpoint::ByteSize,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ConvertCmd {
    /// A llama-architecture GGUF file (v2/v3) → a Hugging Face directory.
    Gguf(GgufArgs),
}

#[derive(Subcommand)]
enum ExportCmd {
    /// A GGUF file for llama.cpp / Ollama (architectures llama, qwen2, qwen3).
    Gguf(ExportGgufArgs),
}

#[derive(Args)]
struct ExportGgufArgs {
    /// The Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// Output .gguf file (written under a temporary name, renamed when complete).
    #[arg(long)]
    out: PathBuf,
    /// Type of the 2-D weights: f32, f16, bf16 or q8_0 (norms and biases stay f32).
    #[arg(long = "type", default_value = "f16")]
    precision: spp::gguf::export::Precision,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Perplexity, Wanda/SparseGPT protocol: non-overlapping windows, every position scored.
    Ppl(PplArgs),
    /// Zero-shot multiple choice with lm-evaluation-harness's prompts and scoring (acc, acc_norm).
    Tasks(TasksArgs),
}

#[derive(Args, Clone)]
struct ModelOpts {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Weights dtype: auto (as stored), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run with this adapter unmerged (`spp train --out`; LoRA + mask is folded in on load).
    #[arg(long)]
    adapter: Option<PathBuf>,
}

#[derive(Args)]
struct GgufArgs {
    /// The .gguf file.
    file: PathBuf,
    /// Output directory (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Output dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: DTypeChoice,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    max_shard_size: spp::model::checkpoint::ByteSize,
}

#[derive(Args)]
struct PplArgs {
    #[command(flatten)]
    m: ModelOpts,
    /// Plain text file, or JSONL with a "text" field.
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true, value_parser = spp::validate::seqlen)]
    seqlen: usize,
    /// Evaluate only the first N windows.
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::max_windows)]
    max_windows: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TasksArgs {
    #[command(flatten)]
    m: ModelOpts,
    /// Comma-separated: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa,
    /// or all.
    #[arg(long, default_value = "all")]
    tasks: String,
    /// Directory of the seven JSONL files [default: $SPP_DATA_DIR/eval, else ../shared/data/eval].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only the first N documents of each task (as the harness's --limit).
    #[arg(long, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    limit: Option<usize>,
    /// At most this many documents packed into one forward pass.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    batch_size: usize,
    /// At most this many tokens in one forward pass (bounds the activations' memory; a longer
    /// document runs alone). On the CPU one pass runs per core.
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true, value_parser = spp::validate::positive_usize)]
    batch_tokens: usize,
    /// Compute a context once per choice, as the harness does (same scores, slower).
    #[arg(long)]
    no_prefix_sharing: bool,
    /// Print the JSON result on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Leave the weights on disk and read each block when the passes reach it (on by default
    /// when the weights take more than half the available memory).
    #[arg(long)]
    stream_blocks: bool,
    /// Also write the JSON result (settings, metrics, per-document predictions) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    m: ModelOpts,
    /// The prompt; without it (and with --chat) an interactive loop reads lines from stdin.
    #[arg(long)]
    prompt: Option<String>,
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
    m: ModelOpts,
    /// Print every linear, not only the summary.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let Some(rest) = s.strip_prefix("cuda") else {
                bail!("unknown --device {s:?}: use cpu, cuda or cuda:N");
            };
            let n = match rest.strip_prefix(':') {
                Some(n) => n
                    .parse()
                    .with_context(|| format!("bad CUDA ordinal in --device {s:?}"))?,
                None if rest.is_empty() => 0,
                None => bail!("unknown --device {s:?}: use cpu, cuda or cuda:N"),
            };
            Device::new_cuda(n).with_context(|| {
                format!("cannot open {s}: this spp was built without CUDA (cargo build --release --features cuda) or no GPU is visible")
            })
        }
    }
}

/// A progress bar on a terminal, plain lines otherwise.
fn progress(label: &'static str) -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let start = std::time::Instant::now();
    move |done, total| {
        if tty {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total as u64);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} {elapsed} eta {eta}",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_message(label);
                b
            });
            b.set_position(done as u64);
            if done == total {
                b.finish_and_clear();
            }
        } else {
            eprintln!(
                "{label} {done}/{total} {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
}

fn load(m: &ModelOpts) -> Result<(spp::model::Llama, Device)> {
    let dev = parse_device(&m.device)?;
    let t = std::time::Instant::now();
    let mut model = load_model(&m.model, m.dtype, &dev)?.model;
    eprintln!(
        "loaded {} ({} layers, {:?}) in {:.2} s",
        m.model.display(),
        model.layers.len(),
        model.dtype(),
        t.elapsed().as_secs_f64()
    );
    if let Some(dir) = &m.adapter {
        let (cfg, warning) = spp::adapter::load(&mut model, dir, false)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        if cfg.method == spp::adapter::Method::LoraMask {
            spp::adapter::merge(&mut model)?;
        }
        eprintln!(
            "adapter {} ({}, r {}, scale {}, {} targets)",
            dir.display(),
            cfg.method,
            cfg.r,
            cfg.scale,
            cfg.target_modules.len()
        );
    }
    Ok((model, dev))
}

fn convert_gguf(a: GgufArgs) -> Result<()> {
    // A GGUF has no single stored dtype: auto means f32.
    let dtype = a.dtype.resolve(DType::F32);
    outpath::check(&a.out, OutKind::Dir, a.force, &[&a.file])?;
    let t = std::time::Instant::now();
    let report = spp::gguf::convert(&a.file, &a.out, dtype, a.force, a.max_shard_size.0)?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = secs.into();
        v["out"] = a.out.display().to_string().into();
        println!("{v}");
    } else {
        println!(
            "converted {} -> {}: {} tensors, {} parameters, {} (from {:?}), tokenizer {}, tied {} in {secs:.1} s",
            a.file.display(),
            a.out.display(),
            report.tensors,
            report.parameters,
            report.dtype,
            report.source_types,
            report.tokenizer,
            report.tied_embeddings
        );
    }
    Ok(())
}

fn export_gguf(a: ExportGgufArgs) -> Result<()> {
    let t = std::time::Instant::now();
    let r = spp::gguf::export::export(&a.model, &a.out, a.precision, a.force)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "exported {} -> {}: {} architecture, {} tensors {:?}, tokenizer {}{}, {:.1} MB in {:.1} s",
            a.model.display(),
            a.out.display(),
            r.architecture,
            r.tensors,
            r.tensor_types,
            r.tokenizer,
            r.pre_tokenizer.as_deref().map_or(String::new(), |p| format!(" ({p})")),
            r.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn eval_ppl(a: PplArgs) -> Result<()> {
    use spp::eval::perplexity::{perplexity, perplexity_streamed, window_bytes, ACTIVATION_BUDGET};
    let encode = |cfg: &spp::model::LlamaConfig| -> Result<(Vec<u32>, Option<u32>)> {
        let tok = Tokenizer::load(&a.m.model, cfg)?;
        let text = spp::eval::perplexity::read_text(&a.text)?;
        let t = std::time::Instant::now();
        let ids = tok.encode(&text, true)?;
        eprintln!(
            "tokenised {} into {} tokens in {:.2} s",
            a.text.display(),
            ids.len(),
            t.elapsed().as_secs_f64()
        );
        Ok((ids, tok.bos_id))
    };
    let mut bar = progress("ppl");
    // Without an adapter the blocks stay on disk and are read one at a time.
    let r = if a.m.adapter.is_none() {
        let m = open_streamed(&a.m)?;
        let (ids, bos) = encode(m.cfg())?;
        let windows = (ids.len() / a.seqlen.max(1)).min(a.max_windows.unwrap_or(usize::MAX));
        let acts =
            (windows as u64 * window_bytes(m.cfg(), m.dtype(), a.seqlen)).min(ACTIVATION_BUDGET);
        let peak = acts + 2 * m.block_bytes() + 2 * m.embedding_bytes();
        eprintln!(
            "ppl: predicted peak memory {:.2} GiB (hidden states {:.2} GiB, two blocks, embeddings and head)",
            spp::model::stream::gib(peak),
            spp::model::stream::gib(acts)
        );
        spp::validate::check_memory("this evaluation", peak, "use a smaller --seqlen")?;
        perplexity_streamed(
            &m,
            &ids,
            a.seqlen,
            a.max_windows,
            bos,
            ACTIVATION_BUDGET,
            &mut bar,
        )?
    } else {
        let (m, _) = load(&a.m)?;
        let (ids, bos) = encode(&m.cfg)?;
        perplexity(&m, &ids, a.seqlen, a.max_windows, bos, &mut bar)?
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = a.m.model.display().to_string().into();
        v["text"] = a.text.display().to_string().into();
        v["protocol"] =
            "non-overlapping windows, stride = seqlen, all positions scored, tail dropped".into();
        println!("{v}");
    } else {
        println!("{}", r.line());
    }
    Ok(())
}

fn eval_tasks(a: TasksArgs) -> Result<()> {
    use spp::eval::{tasks, zeroshot};
    let names = tasks::parse_names(&a.tasks)?;
    let data_dir = a.data_dir.clone().unwrap_or_else(|| {
        std::env::var_os("SPP_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../shared/data"))
            .join("eval")
    });
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(out) = &a.out {
        let mut inputs = vec![a.m.model.as_path(), data_dir.as_path()];
        inputs.extend(a.m.adapter.as_deref());
        outpath::check(out, OutKind::File, a.force, &inputs)?;
    }
    // Every task is read before the model loads, so a bad file fails fast.
    let loaded = names
        .iter()
        .map(|n| tasks::load(n, &data_dir, a.limit))
        .collect::<spp::Result<Vec<_>>>()?;
    // Large models stay on disk, each block read when the passes reach it.
    let streamed = if a.m.adapter.is_none() {
        let sm = open_streamed(&a.m)?;
        (a.stream_blocks || exceeds_half_of_memory(&sm)).then_some(sm)
    } else {
        None
    };
    let model = match &streamed {
        Some(sm) => sm.shell().clone(),
        None => load(&a.m)?.0,
    };
    let tok = Tokenizer::load(&a.m.model, &model.cfg)?;
    let source = match &streamed {
        Some(sm) => {
            let budget = spp::eval::perplexity::ACTIVATION_BUDGET;
            let peak = budget + 2 * sm.block_bytes() + 2 * sm.embedding_bytes();
            eprintln!(
                "tasks: predicted peak memory at most {:.2} GiB (hidden states of at most {:.2} GiB of passes at once, two blocks, embeddings and head)",
                spp::model::stream::gib(peak),
                spp::model::stream::gib(budget)
            );
            spp::validate::check_memory(
                "this evaluation",
                peak,
                "use a smaller model dtype (--dtype bf16)",
            )?;
            zeroshot::Model::Streamed(sm, budget)
        }
        None => zeroshot::Model::Resident(&model),
    };
    let opts = zeroshot::ScoreOptions {
        batch_docs: a.batch_size,
        batch_tokens: a.batch_tokens,
        share: !a.no_prefix_sharing,
    };
    let start = std::time::Instant::now();
    // One bar per task; the passes of all tasks run together, in task order.
    let mut bars: Vec<_> = loaded.iter().map(|t| progress(t.name)).collect();
    let results = zeroshot::evaluate(source, &tok, &loaded, opts, &mut |t, done, total| {
        bars[t](done, total)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    for r in &results {
        eprintln!(
            "{}: {} docs, acc {:.4}, acc_norm {:.4}, {} requests, {} tokens, {} truncated, {:.1} s",
            r.task, r.n, r.acc, r.acc_norm, r.requests, r.tokens, r.truncated, r.seconds
        );
    }
    let mean = |f: fn(&zeroshot::TaskResult) -> f64| {
        results.iter().map(f).sum::<f64>() / results.len() as f64
    };
    let (mean_acc, mean_acc_norm) = (mean(|r| r.acc), mean(|r| r.acc_norm));
    let json = serde_json::json!({
        "settings": {
            "model": a.m.model.display().to_string(),
            "adapter": a.m.adapter.as_ref().map(|p| p.display().to_string()),
            "dtype": format!("{:?}", model.dtype()),
            "tasks": names,
            "data_dir": data_dir.display().to_string(),
            "limit": a.limit,
            "batch_size": a.batch_size,
            "batch_tokens": a.batch_tokens,
            "prefix_sharing": opts.share,
            "num_fewshot": 0,
            "max_length": model.cfg.max_position_embeddings,
            "protocol": "lm-evaluation-harness 0.4 multiple choice, 0-shot, no BOS; acc = argmax of summed \
                         log-likelihood, acc_norm = argmax of log-likelihood / characters of the choice; \
                         stderr = sample std / sqrt(n)",
            "spp_version": env!("CARGO_PKG_VERSION"),
        },
        "mean_acc": mean_acc,
        "mean_acc_norm": mean_acc_norm,
        "seconds": seconds,
        "tasks": results.iter().map(|r| (r.task.clone(), serde_json::to_value(r).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(out) = &a.out {
        spp::model::checkpoint::write_json_atomically(out, &json)?;
    }
    if a.json {
        println!("{json}");
        return Ok(());
    }
    println!("| task | n | acc | ± | acc_norm | ± | seconds |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} |",
            r.task, r.n, r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr, r.seconds
        );
    }
    println!("| mean | | {mean_acc:.4} | | {mean_acc_norm:.4} | | {seconds:.1} |");
    Ok(())
}

fn run_recipe(a: RunArgs) -> Result<()> {
    let recipe = spp::run::recipe::Recipe::load(&a.recipe)?;
    let out = a
        .out
        .clone()
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

fn report(a: ReportArgs) -> Result<()> {
    let paths = spp::report::build(&a.dir)?;
    println!("{}\n{}", paths.markdown.display(), paths.html.display());
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (model, _) = load(&a.m)?;
    let tok = Tokenizer::load(&a.m.model, &model.cfg)?;
    let opts = spp::generate::SamplingOptions {
        max_new_tokens: a.n,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let mut history: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    let run = |user: &str, history: &mut Vec<Message>| -> Result<()> {
        let ids = if a.chat {
            history.push(Message {
                role: "user".into(),
                content: user.to_string(),
            });
            tok.encode(&tok.apply_chat(history)?, false)?
        } else {
            tok.encode(user, true)?
        };
        let mut stream = tok.inner.decode_stream(true);
        let mut out = std::io::stdout();
        let mut answer = String::new();
        let stats = spp::generate::generate(&model, &ids, &tok.eos_ids, &opts, &mut |id| {
            if let Some(piece) = stream
                .step(id)
                .map_err(|e| spp::Error::Msg(format!("tokenizer: {e}")))?
            {
                answer.push_str(&piece);
                print!("{piece}");
                let _ = out.flush();
            }
            Ok(())
        })?;
        println!();
        if a.chat {
            history.push(Message {
                role: "assistant".into(),
                content: answer,
            });
        }
        eprintln!(
            "[{} prompt tokens, {} generated{}, prefill {:.2} s, {:.1} tok/s]",
            stats.prompt_tokens,
            stats.generated_tokens,
            if stats.stopped_at_eos {
                ", stopped at EOS"
            } else {
                ""
            },
            stats.prefill_seconds,
            stats.decode_tokens_per_second
        );
        Ok(())
    };
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

fn inspect(a: InspectArgs) -> Result<()> {
    let r = if a.m.adapter.is_some() {
        spp::inspect::inspect(&load(&a.m)?.0)?
    } else {
        spp::inspect::inspect_streamed(&open_streamed(&a.m)?)?
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("model       {}", a.m.model.display());
    println!("arch        {}", r.arch_line());
    println!("dtype       {}", r.dtype);
    println!(
        "parameters  {} total, {} in block linears",
        r.parameters, r.linear_parameters
    );
    println!(
        "sparsity    {:.4} of block-linear weights are zero ({} zeros); 2:4 {}; 4:8 {}",
        r.linear_sparsity,
        r.linear_zeros,
        if r.all_linears_2_4 { "yes" } else { "no" },
        if r.all_linears_4_8 { "yes" } else { "no" }
    );
    let rows: Vec<_> = if a.all {
        r.linears.iter().collect()
    } else {
        r.linears.iter().take(7).collect()
    };
    println!(
        "{:<40} {:>12} {:>9} {:>5} {:>5}",
        "linear", "shape", "sparsity", "2:4", "4:8"
    );
    for l in rows {
        println!(
            "{:<40} {:>12} {:>9.4} {:>5} {:>5}",
            l.name,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.sparsity,
            if l.n2m4 { "yes" } else { "no" },
            if l.n4m8 { "yes" } else { "no" }
        );
    }
    if !a.all && r.linears.len() > 7 {
        println!(
            "… {} more linears (--all to list them)",
            r.linears.len() - 7
        );
    }
    Ok(())
}

fn data_dir() -> PathBuf {
    std::env::var("SPP_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("../shared/data"))
}

fn prune(a: PruneArgs) -> Result<()> {
    use spp::model::stream::gib;
    use spp::prune::{calib, peak_rss_bytes, prune_blocks, streamed_peak_estimate, PruneOptions};
    let opts = PruneOptions {
        method: a.method,
        sparsity: a.sparsity,
        targets: spp::prune::parse_targets(&a.targets)?,
        true_sequential: a.true_sequential,
        blocksize: a.blocksize,
        percdamp: a.percdamp,
    };
    let mut inputs = vec![a.m.model.as_path()];
    inputs.extend(a.calib.as_deref());
    outpath::check(&a.out, OutKind::Dir, a.force, &inputs)?;
    if a.m.adapter.is_some() {
        bail!("spp prune works on plain weights: merge the adapter first (spp merge), then prune the merged model");
    }
    let watch = spp::model::stream::AnonPeak::start();
    let model = open_streamed(&a.m)?;
    let cfg = model.cfg().clone();
    let calibration = if a.method.needs_calibration() {
        let path = a
            .calib
            .clone()
            .unwrap_or_else(|| data_dir().join("c4/c4_sample.jsonl"));
        if !path.exists() {
            bail!("calibration corpus {} not found: pass --calib FILE (JSONL with a \"text\" field, or plain text)", path.display());
        }
        if a.seqlen > cfg.max_position_embeddings {
            bail!(
                "--seqlen {} exceeds the model's max_position_embeddings {}",
                a.seqlen,
                cfg.max_position_embeddings
            );
        }
        let peak = streamed_peak_estimate(&cfg, model.dtype(), &opts, a.nsamples, a.seqlen);
        spp::validate::check_memory(
            &format!(
                "pruning with {} × {} calibration tokens",
                a.nsamples, a.seqlen
            ),
            peak,
            "lower --nsamples or --seqlen (the calibration activations grow with their product)",
        )?;
        let tok = Tokenizer::load(&a.m.model, &cfg)?;
        let docs = spp::eval::perplexity::read_documents(&path)?;
        let c = calib::sample_windows(
            &docs,
            &path.display().to_string(),
            &tok,
            a.nsamples,
            a.seqlen,
            a.seed,
        )?;
        eprintln!(
            "calibration: {} windows of {} tokens from {} ({} documents, {} tokens, seed {})",
            c.nsamples, c.seqlen, c.source, c.documents, c.stream_tokens, c.seed
        );
        Some(c)
    } else {
        None
    };
    let windows: Vec<&[u32]> = calibration
        .iter()
        .flat_map(|c| c.windows.iter().map(|w| w.as_slice()))
        .collect();
    let peak = streamed_peak_estimate(
        &cfg,
        model.dtype(),
        &opts,
        windows.len(),
        windows.first().map_or(0, |w| w.len()),
    );
    eprintln!(
        "prune: {:?} {} on {}; predicted peak memory {:.2} GiB (blocks read one at a time)",
        opts.method,
        opts.sparsity,
        opts.targets.join(","),
        gib(peak)
    );
    let xs = model.embed_windows(&windows)?;
    let mut record = serde_json::Value::Null;
    let mut summary = None;
    spp::model::checkpoint::write_dir_atomically(&a.out, a.force, |tmp| {
        let mut w =
            spp::model::ShardWriter::for_model(tmp, &cfg, model.dtype(), a.max_shard_size.0)?;
        model.write_head_tensors(&mut w)?;
        let mut blocks = if opts.method == spp::prune::Method::SparseGpt {
            model.blocks_on_demand()
        } else {
            model.blocks()
        };
        let mut linears = Vec::new();
        let report = prune_blocks(
            model.shell(),
            xs,
            &mut |_| blocks.next_block(),
            &mut |i, b| {
                linears.extend(spp::inspect::block_linears(i, &b)?);
                w.write_block(i, &b)
            },
            &opts,
            &mut |b| {
                let t = b.timing;
                eprintln!(
                    "prune block {}/{} {:.1} s (statistics {:.1} s, pruning {:.1} s, propagation {:.1} s)",
                    b.index + 1,
                    b.total,
                    t.total,
                    t.statistics,
                    t.pruning,
                    t.propagation
                );
            },
        )?;
        model.write_tail_tensors(&mut w)?;
        w.finish()?;
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        let s = spp::inspect::summarize(&cfg, model.dtype(), linears);
        record = serde_json::json!({
            "spp_version": env!("CARGO_PKG_VERSION"),
            "model": a.m.model.display().to_string(),
            "dtype": format!("{:?}", model.dtype()).to_lowercase(),
            "options": &opts,
            "comparison_group": opts.method.group(),
            "calibration": &calibration,
            "result": {
                "linear_sparsity": s.linear_sparsity,
                "all_linears_2_4": s.all_linears_2_4,
                "all_linears_4_8": s.all_linears_4_8,
            },
            "report": &report,
            "predicted_peak_bytes": peak,
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_anon_bytes": watch.peak(),
        });
        let mut extra = vec![(
            "prune.json".to_string(),
            serde_json::to_vec_pretty(&record).map_err(|e| spp::Error::Msg(e.to_string()))?,
        )];
        if let Some(c) = &calibration {
            let ids: Vec<i64> = c.windows.iter().flatten().map(|&t| t as i64).collect();
            let t = candle_core::Tensor::from_vec(ids, (c.nsamples, c.seqlen), &Device::Cpu)?;
            let bytes = safetensors::serialize(
                [("input_ids", &t)],
                Some([("format".to_string(), "pt".to_string())].into()),
            )
            .map_err(|e| spp::Error::Msg(e.to_string()))?;
            extra.push(("calibration.safetensors".to_string(), bytes));
        }
        let save = spp::model::SaveOptions {
            copy_from: Some(a.m.model.clone()),
            extra_files: extra,
            ..Default::default()
        };
        spp::model::checkpoint::write_config(tmp, &cfg, model.dtype())?;
        spp::model::checkpoint::write_side_files(tmp, &save)?;
        summary = Some((s, report.total_seconds));
        Ok(())
    })?;
    let Some((summary, seconds)) = summary else {
        bail!("internal: the pruned model was written without a summary");
    };
    if a.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!(
            "pruned {} -> {}: {:?} {} sparsity {:.4} (2:4 {}, 4:8 {}) in {:.1} s, peak memory {:.2} GiB",
            a.m.model.display(),
            a.out.display(),
            opts.method,
            opts.sparsity,
            summary.linear_sparsity,
            summary.all_linears_2_4,
            summary.all_linears_4_8,
            seconds,
            gib(watch.peak())
        );
    }
    Ok(())
}

/// Whether the model's weights take more than half of the memory available now (then jobs that
/// could hold every block read them from disk one at a time instead).
fn exceeds_half_of_memory(m: &spp::model::StreamedModel) -> bool {
    let bytes = spp::model::stream::layout(m.cfg())
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum::<u64>()
        * m.dtype().size_in_bytes() as u64;
    let big = spp::validate::available_memory().is_some_and(|avail| bytes > avail / 2);
    if big {
        eprintln!(
            "the weights ({:.2} GiB) take more than half of the available memory: blocks are read from disk one at a time",
            spp::model::stream::gib(bytes)
        );
    }
    big
}

/// Opens `m.model` with its blocks left on disk (jobs that walk the blocks once).
fn open_streamed(m: &ModelOpts) -> Result<spp::model::StreamedModel> {
    let dev = parse_device(&m.device)?;
    let model = spp::model::StreamedModel::open(&m.model, m.dtype, &dev)?;
    eprintln!(
        "opened {} ({} layers, {:?})",
        m.model.display(),
        model.n_layers(),
        model.dtype(),
    );
    Ok(model)
}

struct TrainProgress;

impl spp::train::Progress for TrainProgress {
    fn step(&mut self, line: &str) {
        eprintln!("{line}");
    }
    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

fn train(a: TrainArgs) -> Result<()> {
    use spp::adapter::Method;
    if a.m.adapter.is_some() {
        bail!("--adapter is for running a trained adapter; spp train attaches fresh ones (use --resume to continue a run)");
    }
    outpath::check_resumable(
        &a.out,
        a.resume,
        spp::train::CHECKPOINT_DIR,
        &[&a.m.model, &a.data],
    )?;
    let streamed = {
        let sm = open_streamed(&a.m)?;
        if a.stream_blocks || exceeds_half_of_memory(&sm) {
            eprintln!("frozen weights stay on disk, each block read when it runs; gradient checkpointing on");
            spp::return_freed_memory();
            Some(sm)
        } else {
            None
        }
    };
    let kept = match &streamed {
        Some(sm) => {
            let (kept, line) = spp::train::keep_blocks(sm, a.keep_blocks)?;
            eprintln!("{line}");
            kept
        }
        None => Vec::new(),
    };
    let mut model = match &streamed {
        Some(sm) => {
            let mut m = sm.with_embeddings()?;
            m.stand_in_blocks()?;
            m
        }
        None => load(&a.m)?.0,
    };
    if a.cutoff > model.cfg.max_position_embeddings {
        bail!(
            "--cutoff {} exceeds the model's max_position_embeddings {}: use --cutoff {} or less",
            a.cutoff,
            model.cfg.max_position_embeddings,
            model.cfg.max_position_embeddings
        );
    }
    let tok = Tokenizer::load(&a.m.model, &model.cfg)?;
    let r = a.r.unwrap_or(if a.method == Method::Spp { 16 } else { 8 });
    let scale = match (a.scale, a.lora_alpha) {
        (Some(_), Some(_)) => bail!("give --scale or --lora-alpha, not both"),
        (Some(s), None) => s,
        (None, Some(alpha)) if a.method != Method::Spp => alpha / r as f64,
        (None, Some(_)) => bail!("--lora-alpha is for LoRA methods; SPP takes --scale"),
        (None, None) => 2.0,
    };
    let t = std::time::Instant::now();
    let ds = spp::train::data::load(&a.data, &tok, a.cutoff, a.train_on_inputs)?;
    let val_size = a.val_size.unwrap_or((ds.examples.len() / 10).min(2000));
    eprintln!(
        "data: {}: {} {:?} records -> {} examples ({} truncated at {} tokens) in {:.1} s; {} held out for validation",
        a.data.display(),
        ds.records,
        ds.kind,
        ds.examples.len(),
        ds.truncated,
        a.cutoff,
        t.elapsed().as_secs_f64(),
        val_size
    );
    let opts = spp::train::TrainOptions {
        method: a.method,
        targets: spp::prune::parse_targets(&a.targets)?,
        r,
        scale,
        dropout: a.dropout,
        lr: a.lr,
        warmup_ratio: a.warmup_ratio,
        schedule: a.schedule,
        weight_decay: a.weight_decay,
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_size,
        micro_batch_size: a.micro_batch_size,
        cutoff: a.cutoff,
        train_on_inputs: a.train_on_inputs,
        val_size,
        eval_every: a.eval_every,
        save_every: a.save_every,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        grad_checkpoint: a.grad_checkpoint || streamed.is_some(),
    };
    let trainer = spp::train::Trainer {
        model: &mut model,
        weights: match &streamed {
            Some(sm) => spp::train::Weights::Streamed(sm, &kept),
            None => spp::train::Weights::Resident,
        },
        data: &ds,
        opts: &opts,
        out: a.out.clone(),
        base_path: a.m.model.clone(),
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let report = trainer.run(&mut TrainProgress)?;
    let record = serde_json::json!({ "spp_version": env!("CARGO_PKG_VERSION"), "model": a.m.model.display().to_string(), "data": a.data.display().to_string(), "options": &opts, "report": &report });
    let path = a.out.join("train.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if a.json {
        println!("{record}");
    } else {
        println!(
            "trained {} adapter ({} parameters) on {} for {} steps: loss {:.4} -> {:.4}, best val_loss {} at step {}, {:.0} tok/s, peak memory {:.2} GiB -> {}",
            opts.method,
            report.trainable_parameters,
            a.data.display(),
            report.steps,
            report.first_loss.unwrap_or(f64::NAN),
            report.last_loss.unwrap_or(f64::NAN),
            report.best_val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            report.best_step.map_or("-".into(), |v| v.to_string()),
            report.tokens_per_second,
            report.peak_rss_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64,
            a.out.display()
        );
    }
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    outpath::check(&a.out, OutKind::Dir, a.force, &[&a.model, &a.adapter])?;
    let model = open_streamed(&ModelOpts {
        model: a.model.clone(),
        dtype: DTypeChoice::Auto,
        device: "cpu".into(),
        adapter: None,
    })?;
    let cfg_m = model.cfg().clone();
    let mut done = None;
    spp::model::checkpoint::write_dir_atomically(&a.out, a.force, |tmp| {
        let mut w =
            spp::model::ShardWriter::for_model(tmp, &cfg_m, model.dtype(), a.max_shard_size.0)?;
        let mut reports = Vec::new();
        let (cfg, warning, linears) =
            spp::adapter::merge_streamed(&model, &a.adapter, a.force, &mut w, &mut |i, b| {
                reports.extend(spp::inspect::block_linears(i, b)?);
                Ok(())
            })?;
        w.finish()?;
        let summary = spp::inspect::summarize(&cfg_m, model.dtype(), reports);
        let zeros_before: usize = linears.iter().map(|l| l.zeros_before).sum();
        let zeros_after: usize = linears.iter().map(|l| l.zeros_after).sum();
        let numel: usize = linears.iter().map(|l| l.numel).sum();
        let kept = linears.iter().all(|l| l.zeros_kept);
        let record = serde_json::json!({
            "spp_version": env!("CARGO_PKG_VERSION"),
            "model": a.model.display().to_string(),
            "adapter": a.adapter.display().to_string(),
            "adapter_config": &cfg,
            "merged_linears": linears.len(),
            "zeros_before": zeros_before,
            "zeros_after": zeros_after,
            "adapted_weights": numel,
            "all_zeros_kept": kept,
            "linear_sparsity": summary.linear_sparsity,
            "all_linears_2_4": summary.all_linears_2_4,
            "all_linears_4_8": summary.all_linears_4_8,
            "linears": &linears,
        });
        let save = spp::model::SaveOptions {
            copy_from: Some(a.model.clone()),
            extra_files: vec![(
                "merge.json".into(),
                serde_json::to_vec_pretty(&record).map_err(|e| spp::Error::Msg(e.to_string()))?,
            )],
            ..Default::default()
        };
        spp::model::checkpoint::write_config(tmp, &cfg_m, model.dtype())?;
        spp::model::checkpoint::write_side_files(tmp, &save)?;
        done = Some((
            cfg,
            warning,
            record,
            summary,
            (zeros_before, zeros_after, numel, kept),
            linears.len(),
        ));
        Ok(())
    })?;
    let Some((cfg, warning, record, summary, (zeros_before, zeros_after, numel, kept), n_linears)) =
        done
    else {
        bail!("internal: merge finished without a result");
    };
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    if a.json {
        println!("{record}");
        return Ok(());
    }
    if cfg.method == spp::adapter::Method::Lora {
        eprintln!(
            "note: a plain LoRA update is dense: merging filled {} of the {} zeros ({:.2}% of the adapted weights are zero now); use spp or lora-mask to keep the sparsity",
            zeros_before.saturating_sub(zeros_after),
            zeros_before,
            100.0 * zeros_after as f64 / numel.max(1) as f64
        );
    }
    println!(
        "merged {} adapter into {} -> {}: {} linears; zeros {} -> {} of {} ({}); model sparsity {:.4}, 2:4 {}, 4:8 {}",
        cfg.method,
        a.model.display(),
        a.out.display(),
        n_linears,
        zeros_before,
        zeros_after,
        numel,
        if kept { "every zero kept" } else { "zeros NOT kept" },
        summary.linear_sparsity,
        summary.all_linears_2_4,
        summary.all_linears_4_8
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
        Cmd::Prune(_) | Cmd::Merge(_) | Cmd::Inspect(_) | Cmd::Convert(_) | Cmd::Export(_)
    );
    if !streams {
        spp::keep_freed_memory();
    }
    let result = match cli.cmd {
        Cmd::Convert(ConvertCmd::Gguf(a)) => convert_gguf(a),
        Cmd::Export(ExportCmd::Gguf(a)) => export_gguf(a),
        Cmd::Eval(EvalCmd::Ppl(a)) => eval_ppl(a),
        Cmd::Eval(EvalCmd::Tasks(a)) => eval_tasks(a),
        Cmd::Run(a) => run_recipe(a),
        Cmd::Report(a) => report(a),
        Cmd::Generate(a) => generate(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Prune(a) => prune(a),
        Cmd::Train(a) => train(a),
        Cmd::Merge(a) => merge(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
