//! `spp eval ppl` and `spp eval tasks`.

use super::{exceeds_half_of_memory, load, note, open_streamed, Log, ModelArgs};
use crate::error::Result;
use crate::eval::perplexity::{perplexity, perplexity_streamed, window_bytes, ACTIVATION_BUDGET};
use crate::eval::{tasks, zeroshot};
use crate::model::stream::gib;
use crate::outpath::{self, OutKind};
use crate::record::{PplRecord, TaskSettings, TasksRecord, PPL_PROTOCOL, TASKS_PROTOCOL};
use crate::tokenizer::Tokenizer;
use clap::Args;
use std::path::PathBuf;

/// `spp eval ppl`'s options.
#[derive(Args, Debug, Clone)]
pub struct PplArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Plain text file, or JSONL with a "text" field.
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true, value_parser = crate::validate::seqlen)]
    pub seqlen: usize,
    /// Evaluate only the first N windows.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::max_windows)]
    pub max_windows: Option<usize>,
}

impl PplArgs {
    /// Perplexity of `model` on `text`, every other option at its default.
    pub fn new(model: impl Into<PathBuf>, text: impl Into<PathBuf>) -> Self {
        Self {
            m: ModelArgs::new(model),
            text: text.into(),
            ..super::with_defaults(&["--model", ".", "--text", "."])
        }
    }
}

/// Perplexity of `a.m.model` on `a.text` (non-overlapping windows, every position scored).
pub fn eval_ppl(a: &PplArgs, log: &mut dyn Log) -> Result<PplRecord> {
    let encode =
        |cfg: &crate::model::LlamaConfig, log: &mut dyn Log| -> Result<(Vec<u32>, Option<u32>)> {
            let tok = Tokenizer::load(&a.m.model, cfg)?;
            let text = crate::eval::perplexity::read_text(&a.text)?;
            let t = std::time::Instant::now();
            let ids = tok.encode(&text, true)?;
            note!(
                log,
                "tokenised {} into {} tokens in {:.2} s",
                a.text.display(),
                ids.len(),
                t.elapsed().as_secs_f64()
            );
            Ok((ids, tok.bos_id))
        };
    log.start("ppl");
    // Without an adapter the blocks stay on disk and are read one at a time.
    let result = if a.m.adapter.is_none() {
        let m = open_streamed(&a.m, log)?;
        let (ids, bos) = encode(m.cfg(), log)?;
        let windows = (ids.len() / a.seqlen.max(1)).min(a.max_windows.unwrap_or(usize::MAX));
        let acts = (windows as u64 * window_bytes(m.cfg(), m.compute_dtype(), a.seqlen))
            .min(ACTIVATION_BUDGET);
        let peak = acts + 2 * m.block_bytes() + 2 * m.embedding_bytes();
        note!(
            log,
            "ppl: predicted peak memory {:.2} GiB (hidden states {:.2} GiB, two blocks, embeddings and head)",
            gib(peak),
            gib(acts)
        );
        crate::validate::check_memory("this evaluation", peak, "use a smaller --seqlen")?;
        perplexity_streamed(
            &m,
            &ids,
            a.seqlen,
            a.max_windows,
            bos,
            ACTIVATION_BUDGET,
            &mut |done, total| log.progress("ppl", done, total),
        )?
    } else {
        let (m, _) = load(&a.m, log)?;
        let (ids, bos) = encode(&m.cfg, log)?;
        perplexity(
            &m,
            &ids,
            a.seqlen,
            a.max_windows,
            bos,
            &mut |done, total| log.progress("ppl", done, total),
        )?
    };
    Ok(PplRecord {
        result,
        model: a.m.model.display().to_string(),
        text: Some(a.text.display().to_string()),
        protocol: Some(PPL_PROTOCOL.into()),
    })
}

/// `spp eval tasks`'s options.
#[derive(Args, Debug, Clone)]
pub struct TasksArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Comma-separated: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa,
    /// or all.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Directory of the seven JSONL files [default: $SPP_DATA_DIR/eval].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Only the first N documents of each task (as the harness's --limit).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub limit: Option<usize>,
    /// At most this many documents packed into one forward pass.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub batch_size: usize,
    /// At most this many tokens in one forward pass (bounds the activations' memory; a longer
    /// document runs alone). On the CPU one pass runs per core.
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub batch_tokens: usize,
    /// Compute a context once per choice, as the harness does (same scores, slower).
    #[arg(long)]
    pub no_prefix_sharing: bool,
    /// Leave the weights on disk and read each block when the passes reach it (on by default
    /// when the weights take more than half the available memory).
    #[arg(long)]
    pub stream_blocks: bool,
    /// Also write the JSON result (settings, metrics, per-document predictions) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,
}

impl TasksArgs {
    /// Zero-shot accuracy of `model`, every other option at its default.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            m: ModelArgs::new(model),
            ..super::with_defaults(&["--model", "."])
        }
    }
}

/// Zero-shot accuracy of `a.m.model` on the tasks; writes `a.out` when given.
pub fn eval_tasks(a: &TasksArgs, log: &mut dyn Log) -> Result<TasksRecord> {
    let names = tasks::parse_names(&a.tasks)?;
    let data_dir = super::data_path(a.data_dir.as_deref(), "eval", "--data-dir DIR")?;
    if a.batch_size == 0 {
        crate::bail!("--batch-size must be at least 1");
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
        .collect::<Result<Vec<_>>>()?;
    // Large models stay on disk, each block read when the passes reach it.
    let streamed = if a.m.adapter.is_none() {
        let sm = open_streamed(&a.m, log)?;
        (a.stream_blocks || exceeds_half_of_memory(&sm, log)).then_some(sm)
    } else {
        None
    };
    let model = match &streamed {
        Some(sm) => sm.shell().clone(),
        None => load(&a.m, log)?.0,
    };
    let tok = Tokenizer::load(&a.m.model, &model.cfg)?;
    let source = match &streamed {
        Some(sm) => {
            let budget = ACTIVATION_BUDGET;
            let peak = budget + 2 * sm.block_bytes() + 2 * sm.embedding_bytes();
            note!(
                log,
                "tasks: predicted peak memory at most {:.2} GiB (hidden states of at most {:.2} GiB of passes at once, two blocks, embeddings and head)",
                gib(peak),
                gib(budget)
            );
            crate::validate::check_memory(
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
    // Progress per task; the passes of all tasks run together, in task order.
    for t in &loaded {
        log.start(t.name);
    }
    let results = zeroshot::evaluate(source, &tok, &loaded, opts, &mut |t, done, total| {
        log.progress(loaded[t].name, done, total)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    for r in &results {
        note!(
            log,
            "{}: {} docs, acc {:.4}, acc_norm {:.4}, {} requests, {} tokens, {} truncated, {:.1} s",
            r.task,
            r.n,
            r.acc,
            r.acc_norm,
            r.requests,
            r.tokens,
            r.truncated,
            r.seconds
        );
    }
    let mean = |f: fn(&zeroshot::TaskResult) -> f64| {
        results.iter().map(f).sum::<f64>() / results.len() as f64
    };
    let record = TasksRecord {
        settings: TaskSettings {
            model: a.m.model.display().to_string(),
            adapter: a.m.adapter.as_ref().map(|p| p.display().to_string()),
            dtype: Some(format!("{:?}", model.dtype())),
            tasks: names.iter().map(|n| n.to_string()).collect(),
            data_dir: Some(data_dir.display().to_string()),
            limit: a.limit,
            batch_size: a.batch_size,
            batch_tokens: a.batch_tokens,
            prefix_sharing: opts.share,
            num_fewshot: Some(0),
            max_length: model.cfg.max_position_embeddings,
            protocol: Some(TASKS_PROTOCOL.into()),
            spp_version: crate::record::spp_version(),
        },
        mean_acc: Some(mean(|r| r.acc)),
        mean_acc_norm: Some(mean(|r| r.acc_norm)),
        seconds,
        tasks: results,
    };
    if let Some(out) = &a.out {
        crate::model::checkpoint::write_json_atomically(out, &record)?;
    }
    Ok(record)
}
