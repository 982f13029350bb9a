//! `spp train`.

use super::{exceeds_half_of_memory, json_error, load, note, open_streamed, Log, ModelArgs};
use crate::adapter::Method;
use crate::bail;
use crate::error::{Error, Result};
use crate::outpath;
use crate::record::{LrFindRecord, TrainRecord};
use crate::tokenizer::Tokenizer;
use clap::Args;
use std::path::PathBuf;

/// SPP's r when none is given (as the paper's code).
pub const SPP_R: usize = 16;
/// LoRA's r when none is given.
pub const LORA_R: usize = 8;
/// The adapter scale when neither --scale nor --lora-alpha is given: lora_alpha 16 / lora_r 8,
/// as the paper's code.
pub const SCALE: f64 = 2.0;
/// The most examples held out for validation by default.
pub const MAX_VAL_SIZE: usize = 2000;

/// `spp train`'s options.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Alpaca JSON/JSONL (instruction, input, output) or JSONL with "text".
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: adapter (best validation), checkpoint/, metrics.jsonl, loss.svg, train.json.
    #[arg(long)]
    pub out: PathBuf,
    /// spp, lora or lora-mask.
    #[arg(long, default_value = "spp")]
    pub method: Method,
    /// Linears to adapt: any of q,k,v,o,gate,up,down (or all).
    #[arg(long, default_value = "all", value_parser = crate::validate::targets)]
    pub targets: String,
    /// Rows of A: SPP's r (the paper's code uses 16) [default: 16 for spp, 8 for LoRA].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub r: Option<usize>,
    /// Adapter scale s [default: 2.0, i.e. lora_alpha 16 / lora_r 8 as the paper's code].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::positive)]
    pub scale: Option<f64>,
    /// LoRA alpha (scale = alpha / r); LoRA methods only.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::positive)]
    pub lora_alpha: Option<f64>,
    /// Dropout probability on the adapter's input, in [0, 1).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true, value_parser = crate::validate::dropout)]
    pub dropout: f64,
    /// Peak learning rate (> 0).
    #[arg(long, default_value_t = 4e-3, allow_negative_numbers = true, value_parser = crate::validate::learning_rate)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.03, allow_negative_numbers = true, value_parser = crate::validate::fraction)]
    pub warmup_ratio: f64,
    /// linear or cosine (after warm-up).
    #[arg(long, default_value = "linear")]
    pub schedule: crate::train::Schedule,
    #[arg(long, default_value_t = 0.001, allow_negative_numbers = true, value_parser = crate::validate::non_negative)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = crate::validate::epochs)]
    pub epochs: usize,
    /// Optimizer steps (overrides --epochs).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::max_steps)]
    pub max_steps: Option<usize>,
    /// Global batch (examples per optimizer step).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub batch_size: usize,
    /// Examples per forward/backward (gradient accumulation = batch / micro-batch).
    #[arg(long, default_value_t = 4, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub micro_batch_size: usize,
    /// Maximum tokens per example (longer ones are truncated and counted).
    #[arg(long, default_value_t = 256, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub cutoff: usize,
    /// Compute the loss on the prompt too (the paper's setting).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_parser = crate::validate::boolean)]
    pub train_on_inputs: bool,
    /// Held-out examples for validation [default: min(2000, a tenth of the data)].
    #[arg(long, value_parser = crate::validate::count)]
    pub val_size: Option<usize>,
    /// Validate every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub eval_every: usize,
    /// Write a resumable checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub save_every: usize,
    /// Clip the global gradient norm (off by default, as the paper).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::positive)]
    pub max_grad_norm: Option<f64>,
    #[arg(long, default_value_t = 42, value_parser = crate::validate::seed)]
    pub seed: u64,
    /// Gradient checkpointing: keep only each block's input and re-run the block in the
    /// backward (less memory, about one more forward per step).
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// Leave the frozen weights on disk and read each block when it runs (implies gradient
    /// checkpointing). On by default when the weights take more than half the available memory.
    #[arg(long)]
    pub stream_blocks: bool,
    /// With streamed blocks, keep the first N blocks in memory (on the device) and read only the
    /// others for each pass. Default: as many as fit in half of the memory available at the
    /// start on the CPU, none on a GPU (whose free memory spp does not query).
    #[arg(long, value_name = "N")]
    pub keep_blocks: Option<usize>,
    /// Continue the run in --out from its checkpoint (bit-identical to an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps, leaving a checkpoint (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// Run a learning-rate range test instead of training: --find-lr-steps optimizer steps with
    /// the lr rising geometrically from --lr-min to --lr-max; writes OUT/lr_find.json (loss per
    /// step, smoothed, and the suggested lr: a tenth of the lr at the smoothed minimum) and
    /// prints the suggestion. No adapter is saved.
    #[arg(long, conflicts_with_all = ["resume", "lr_from"])]
    pub find_lr: bool,
    /// Lowest lr of the range test [default: 1e-6].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::learning_rate)]
    pub lr_min: Option<f64>,
    /// Highest lr of the range test [default: 1].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::learning_rate)]
    pub lr_max: Option<f64>,
    /// Optimizer steps of the range test (it stops earlier when the loss diverges) [default: 100].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub find_lr_steps: Option<usize>,
    /// Train with the lr a range test suggested: the suggested_lr of this lr_find.json
    /// (`spp train --find-lr --out DIR` writes DIR/lr_find.json); replaces --lr.
    #[arg(long, value_name = "LR_FIND_JSON", conflicts_with = "lr")]
    pub lr_from: Option<PathBuf>,
}

/// The range test's defaults (`--lr-min`, `--lr-max`, `--find-lr-steps`).
pub const LR_MIN: f64 = 1e-6;
pub const LR_MAX: f64 = 1.0;
pub const FIND_LR_STEPS: usize = 100;

impl TrainArgs {
    /// Trains adapters on `model` with `data` into `out`, every other option at its default.
    pub fn new(
        model: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            m: ModelArgs::new(model),
            data: data.into(),
            out: out.into(),
            ..super::with_defaults(&["--model", ".", "--data", ".", "--out", "."])
        }
    }
}

struct TrainProgress<'a>(&'a mut dyn Log);

impl crate::train::Progress for TrainProgress<'_> {
    fn step(&mut self, line: &str) {
        self.0.line(line);
    }
    fn note(&mut self, line: &str) {
        self.0.line(line);
    }
}

/// What training and the range test start from: the model (or the streamed model's shell),
/// the blocks kept in memory, the data and the options.
struct Setup {
    streamed: Option<crate::model::StreamedModel>,
    kept: Vec<crate::model::llama::Block>,
    model: crate::model::Llama,
    ds: crate::train::data::Dataset,
    opts: crate::train::TrainOptions,
}

/// Loads the model and the data of `a`, with `lr` as the learning rate.
fn setup(a: &TrainArgs, lr: f64, log: &mut dyn Log) -> Result<Setup> {
    let streamed = {
        let sm = open_streamed(&a.m, log)?;
        if a.stream_blocks || exceeds_half_of_memory(&sm, log) {
            log.line("frozen weights stay on disk, each block read when it runs; gradient checkpointing on");
            crate::return_freed_memory();
            Some(sm)
        } else {
            None
        }
    };
    let kept = match &streamed {
        Some(sm) => {
            let (kept, line) = crate::train::keep_blocks(sm, a.keep_blocks)?;
            log.line(&line);
            kept
        }
        None => Vec::new(),
    };
    let model = match &streamed {
        Some(sm) => {
            let mut m = sm.with_embeddings()?;
            m.stand_in_blocks()?;
            m
        }
        None => load(&a.m, log)?.0,
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
    let r = a.r.unwrap_or(if a.method == Method::Spp {
        SPP_R
    } else {
        LORA_R
    });
    let scale = match (a.scale, a.lora_alpha) {
        (Some(_), Some(_)) => bail!("give --scale or --lora-alpha, not both"),
        (Some(s), None) => s,
        (None, Some(alpha)) if a.method != Method::Spp => alpha / r as f64,
        (None, Some(_)) => bail!("--lora-alpha is for LoRA methods; SPP takes --scale"),
        (None, None) => SCALE,
    };
    let t = std::time::Instant::now();
    let ds = crate::train::data::load(&a.data, &tok, a.cutoff, a.train_on_inputs)?;
    let val_size = a
        .val_size
        .unwrap_or((ds.examples.len() / 10).min(MAX_VAL_SIZE));
    note!(
        log,
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
    let opts = crate::train::TrainOptions {
        method: a.method,
        targets: crate::prune::parse_targets(&a.targets)?,
        r,
        scale,
        dropout: a.dropout,
        lr,
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
    Ok(Setup {
        streamed,
        kept,
        model,
        ds,
        opts,
    })
}

/// The suggested lr of the range test record `path` (`--lr-from`).
pub fn lr_from(path: &std::path::Path) -> Result<f64> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Msg(format!(
            "--lr-from {}: {e}; give the lr_find.json that `spp train --find-lr --out DIR` wrote",
            path.display()
        ))
    })?;
    let rec: LrFindRecord = serde_json::from_str(&text).map_err(|e| {
        Error::Msg(format!(
            "--lr-from {}: not a range test record ({e}); give the lr_find.json that `spp train --find-lr` wrote",
            path.display()
        ))
    })?;
    let lr = rec.report.suggested_lr;
    if !(lr.is_finite() && lr > 0.0) {
        bail!(
            "--lr-from {}: its suggested_lr {lr} is not a positive number; rerun the range test",
            path.display()
        );
    }
    Ok(lr)
}

/// `spp train --find-lr`: the learning-rate range test on `a.m.model` with `a`'s data and
/// settings; writes `a.out/lr_find.json` and returns its record. No adapter is saved.
pub fn find_lr(a: &TrainArgs, log: &mut dyn Log) -> Result<LrFindRecord> {
    if a.m.adapter.is_some() {
        bail!(
            "--adapter is for running a trained adapter; spp train --find-lr attaches fresh ones"
        );
    }
    let range = crate::train::lr_find::Range {
        lr_min: a.lr_min.unwrap_or(LR_MIN),
        lr_max: a.lr_max.unwrap_or(LR_MAX),
        steps: a.find_lr_steps.unwrap_or(FIND_LR_STEPS),
    };
    range.check()?;
    outpath::check_kind(&a.out, outpath::OutKind::Dir)?;
    let path = a.out.join("lr_find.json");
    let mut s = setup(a, a.lr, log)?;
    let weights = match &s.streamed {
        Some(sm) => crate::train::Weights::Streamed(sm, &s.kept),
        None => crate::train::Weights::Resident,
    };
    let report = crate::train::lr_find::range_test(
        &mut s.model,
        weights,
        &s.ds,
        &s.opts,
        &range,
        &mut TrainProgress(log),
    )?;
    for n in &report.notes {
        log.line(&format!("note: {n}"));
    }
    let mut options = s.opts.clone();
    options.lr = report.suggested_lr;
    let record = LrFindRecord {
        spp_version: crate::record::spp_version(),
        model: Some(a.m.model.display().to_string()),
        data: Some(a.data.display().to_string()),
        options: Some(options),
        report,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    crate::fsio::write_json_atomically(&path, &record)?;
    Ok(record)
}

/// Trains adapters on the frozen `a.m.model` into `a.out` (adapter, checkpoint, metrics,
/// `train.json`); returns `train.json`'s record.
pub fn train(a: &TrainArgs, log: &mut dyn Log) -> Result<TrainRecord> {
    if a.find_lr {
        bail!("--find-lr runs the range test, not training: call job::find_lr");
    }
    if a.lr_min.is_some() || a.lr_max.is_some() || a.find_lr_steps.is_some() {
        bail!("--lr-min, --lr-max and --find-lr-steps set the range test: add --find-lr (or leave them out to train)");
    }
    if a.m.adapter.is_some() {
        bail!("--adapter is for running a trained adapter; spp train attaches fresh ones (use --resume to continue a run)");
    }
    outpath::check_resumable(
        &a.out,
        a.resume,
        crate::train::CHECKPOINT_DIR,
        &[&a.m.model, &a.data],
    )?;
    let lr = match &a.lr_from {
        Some(p) => {
            let lr = lr_from(p)?;
            note!(
                log,
                "lr {lr:.3e}: the range test's suggestion in {}",
                p.display()
            );
            lr
        }
        None => a.lr,
    };
    let mut s = setup(a, lr, log)?;
    let weights = match &s.streamed {
        Some(sm) => crate::train::Weights::Streamed(sm, &s.kept),
        None => crate::train::Weights::Resident,
    };
    let trainer = crate::train::Trainer {
        model: &mut s.model,
        weights,
        data: &s.ds,
        opts: &s.opts,
        out: a.out.clone(),
        base_path: a.m.model.clone(),
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let report = trainer.run(&mut TrainProgress(log))?;
    let record = TrainRecord {
        spp_version: crate::record::spp_version(),
        model: Some(a.m.model.display().to_string()),
        data: Some(a.data.display().to_string()),
        options: Some(s.opts),
        lr_from: a.lr_from.as_ref().map(|p| p.display().to_string()),
        report,
    };
    let path = a.out.join("train.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&record).map_err(json_error)?,
    )
    .map_err(|e| Error::Msg(format!("writing {}: {e}", path.display())))?;
    Ok(record)
}
