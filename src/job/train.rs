//! `spp train`.

use super::{exceeds_half_of_memory, json_error, load, note, open_streamed, Log, ModelArgs};
use crate::adapter::Method;
use crate::bail;
use crate::error::{Error, Result};
use crate::outpath;
use crate::record::TrainRecord;
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
}

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

/// Trains adapters on the frozen `a.m.model` into `a.out` (adapter, checkpoint, metrics,
/// `train.json`); returns `train.json`'s record.
pub fn train(a: &TrainArgs, log: &mut dyn Log) -> Result<TrainRecord> {
    if a.m.adapter.is_some() {
        bail!("--adapter is for running a trained adapter; spp train attaches fresh ones (use --resume to continue a run)");
    }
    outpath::check_resumable(
        &a.out,
        a.resume,
        crate::train::CHECKPOINT_DIR,
        &[&a.m.model, &a.data],
    )?;
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
    let mut model = match &streamed {
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
    let trainer = crate::train::Trainer {
        model: &mut model,
        weights: match &streamed {
            Some(sm) => crate::train::Weights::Streamed(sm, &kept),
            None => crate::train::Weights::Resident,
        },
        data: &ds,
        opts: &opts,
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
        options: Some(opts),
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
