//! Fine-tuning the adapters (`spp train`): the loop, AdamW, the learning-rate schedule,
//! validation, checkpoints and resume. Every protocol choice is in `docs/TRAINING.md`.

pub mod data;
pub mod lr_find;
pub mod plot;

use crate::adapter::{self, AdapterConfig, AdapterSpec, DropoutCtl};
use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::fsio::{write_dir_atomically, write_json};
use crate::model::llama::Block;
use crate::model::{Llama, Packing, StreamedModel};
use candle_core::{DType, Device, Tensor, Var};
use data::{Batch, Dataset, Example, Stream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => bail!("unknown schedule {s:?}: use linear or cosine"),
        }
    }
}

/// Everything that decides a run (saved in checkpoints; a resume must match it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    pub method: adapter::Method,
    pub targets: Vec<String>,
    pub r: usize,
    pub scale: f64,
    pub dropout: f64,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub cutoff: usize,
    pub train_on_inputs: bool,
    pub val_size: usize,
    pub eval_every: usize,
    pub save_every: usize,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Re-run each block in the backward instead of keeping every block's activations.
    pub grad_checkpoint: bool,
}

/// The learning rate of the optimizer step after `s` completed steps (see `docs/TRAINING.md`).
pub fn lr_at(s: usize, total: usize, warmup: usize, lr: f64, schedule: Schedule) -> f64 {
    if s < warmup {
        return lr * s as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((s - warmup) as f64 / span).min(1.0);
    match schedule {
        Schedule::Linear => lr * (1.0 - progress),
        Schedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// AdamW with decoupled weight decay, β = (0.9, 0.999), ε = 1e-8, bias correction (as
/// `torch.optim.AdamW`).
pub struct AdamW {
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub t: u64,
}

impl AdamW {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    pub fn new(params: &[Var]) -> Result<Self> {
        let zeros = params
            .iter()
            .map(|p| Ok(p.as_tensor().zeros_like()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            m: zeros.clone(),
            v: zeros,
            t: 0,
        })
    }

    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64, wd: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - Self::B1.powi(self.t as i32);
        let bc2 = 1.0 - Self::B2.powi(self.t as i32);
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            self.m[i] = ((&self.m[i] * Self::B1)? + (g * (1.0 - Self::B1))?)?;
            self.v[i] = ((&self.v[i] * Self::B2)? + (g.sqr()? * (1.0 - Self::B2))?)?;
            let denom = ((self.v[i].sqrt()? / bc2.sqrt())? + Self::EPS)?;
            let decayed = (p.as_tensor() * (1.0 - lr * wd))?;
            p.set(&(decayed - ((&self.m[i] / denom)? * (lr / bc1))?)?)?;
        }
        Ok(())
    }
}

/// The global L2 norm of `grads` (all of them as one vector), returned as it was before clipping;
/// with `max_norm`, every gradient is multiplied by `min(1, max_norm / (norm + 1e-6))`, as
/// `torch.nn.utils.clip_grad_norm_` does (so a norm just under `max_norm` is scaled too).
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: Option<f64>) -> Result<f64> {
    let norm = grads
        .iter()
        .map(|g| {
            Ok(g.sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        })
        .sum::<Result<f64>>()?
        .sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// Mean next-token cross-entropy over a micro-batch's targets. The language-model head runs
/// only on the positions that have a target (padding never reaches it).
pub fn micro_loss(model: &Llama, b: &Batch) -> Result<Tensor> {
    loss_from_hidden(model, &model.hidden_states_packed(&b.ids, &b.packing)?, b)
}

/// [`micro_loss`] without keeping a graph: each block's output is detached, so validation holds
/// one block's activations at a time.
pub fn eval_loss(model: &Llama, weights: Weights, b: &Batch) -> Result<f64> {
    let mut x = model.embed(&b.ids)?;
    for i in 0..model.layers.len() {
        x = weights.forward(model, i, &x, &b.packing)?.detach();
    }
    let h = model.norm.forward(&x)?;
    Ok(loss_from_hidden(model, &h, b)?.to_scalar::<f32>()? as f64)
}

/// The loss from the final (normed) hidden states `[B, L, hidden]`.
fn loss_from_hidden(model: &Llama, h: &Tensor, b: &Batch) -> Result<Tensor> {
    let (bs, len, hd) = h.dims3()?;
    let rows = h.reshape((bs * len, hd))?.index_select(&b.positions, 0)?;
    Ok(model.token_nll(&rows, &b.targets)?.mean_all()?)
}

fn accumulate(
    grads: &mut [Tensor],
    params: &[Var],
    gs: &candle_core::backprop::GradStore,
) -> Result<()> {
    for (g, p) in grads.iter_mut().zip(params) {
        if let Some(d) = gs.get(p.as_tensor()) {
            *g = (&*g + d)?;
        }
    }
    Ok(())
}

/// What an optimizer step's micro-batches run on (with the data stream they are read from) (training and the
/// learning-rate range test share it, so both see the same data and dropout).
pub(crate) struct StepInputs<'a> {
    pub model: &'a Llama,
    pub weights: Weights<'a>,
    pub params: &'a [Var],
    pub ds: &'a Dataset,
    pub ctl: &'a DropoutCtl,
    pub opts: &'a TrainOptions,
    pub device: &'a Device,
}

/// The gradients of optimizer step `step`: its `accum` micro-batches, read from `*pos` on in the
/// data stream, each with its dropout seed. Returns them with the losses of the micro-batches
/// that have targets, in order, and the tokens read.
pub(crate) fn step_grads(
    s: &StepInputs,
    stream: &mut data::Stream,
    step: usize,
    pos: &mut usize,
) -> Result<(Vec<Tensor>, Vec<f64>, usize)> {
    let accum = s.opts.batch_size / s.opts.micro_batch_size;
    let mut grads: Vec<Tensor> = s
        .params
        .iter()
        .map(|p| p.as_tensor().zeros_like())
        .collect::<candle_core::Result<_>>()?;
    let (mut losses, mut tokens) = (Vec::with_capacity(accum), 0usize);
    for micro in 0..accum {
        let mut seed = s.opts.seed ^ ((step as u64) << 20) ^ micro as u64;
        s.ctl
            .base
            .store(crate::rng::splitmix64(&mut seed), Ordering::Relaxed);
        let exs: Vec<&Example> = (0..s.opts.micro_batch_size)
            .map(|k| &s.ds.examples[stream.get(*pos + k)])
            .collect();
        *pos += s.opts.micro_batch_size;
        let b = data::batch(&exs, s.device)?;
        tokens += b.tokens;
        if b.n_targets == 0 {
            continue;
        }
        losses.push(micro_step(
            s.model,
            s.weights,
            &b,
            s.params,
            1.0 / accum as f64,
            s.opts.grad_checkpoint,
            &mut grads,
        )?);
    }
    Ok((grads, losses, tokens))
}

/// Runs one micro-batch and adds `weight ×` its gradients to `grads`; returns its loss.
///
/// With `checkpoint`, the forward keeps only each block's input (the blocks' graphs are dropped),
/// and the backward walks the blocks from the top, running each again from its saved input and
/// back-propagating the gradient of its output: one block's activations in memory instead of
/// all of them, for one more forward of every block. The dropout seeds do not change within a
/// micro-batch, so the re-run draws the same masks.
fn micro_step(
    model: &Llama,
    weights: Weights,
    b: &Batch,
    params: &[Var],
    weight: f64,
    checkpoint: bool,
    grads: &mut [Tensor],
) -> Result<f64> {
    if !checkpoint && matches!(weights, Weights::Resident) {
        let loss = micro_loss(model, b)?;
        accumulate(grads, params, &(&loss * weight)?.backward()?)?;
        return Ok(loss.to_scalar::<f32>()? as f64);
    }
    let n = model.layers.len();
    let mut inputs = vec![model.embed(&b.ids)?];
    for i in 0..n {
        let y = weights.forward(model, i, &inputs[i], &b.packing)?.detach();
        inputs.push(y);
    }
    let top = Var::from_tensor(&inputs[n])?;
    let loss = loss_from_hidden(model, &model.norm.forward(top.as_tensor())?, b)?;
    let gs = (&loss * weight)?.backward()?;
    let missing = || Error::Msg("internal: no gradient reached a block output".into());
    let mut upstream = gs.get(top.as_tensor()).cloned().ok_or_else(missing)?;
    for i in (0..n).rev() {
        let x = Var::from_tensor(&inputs[i])?;
        let gs = (weights.forward(model, i, x.as_tensor(), &b.packing)? * &upstream)?
            .sum_all()?
            .backward()?;
        accumulate(grads, params, &gs)?;
        if i > 0 {
            upstream = gs.get(x.as_tensor()).cloned().ok_or_else(missing)?;
        }
    }
    Ok(loss.to_scalar::<f32>()? as f64)
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    pub step: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
}

/// What a run did. Read back field by field: a record that lacks one (written by hand or by an
/// older spp) still reads, with that field at its default.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainReport {
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub truncated: usize,
    pub trainable_parameters: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub tokens: usize,
    pub seconds: f64,
    /// Tokens per second over the steps of this run after the first two (warm-up), or over all of
    /// them when there are no more.
    pub tokens_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Where the kept adapter came from: `best-validation` or `final`.
    pub adapter: String,
}

/// Tokens per second of `(tokens, seconds)` steps, leaving out two warm-up steps when possible.
fn throughput(steps: &[(usize, f64)]) -> f64 {
    let timed = if steps.len() > 2 { &steps[2..] } else { steps };
    let (tokens, secs) = timed.iter().fold((0, 0.0), |(t, s), x| (t + x.0, s + x.1));
    if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    }
}

/// Hooks the binary uses to print: one call per optimizer step and per validation.
pub trait Progress {
    fn step(&mut self, _line: &str) {}
    fn note(&mut self, _line: &str) {}
}

impl Progress for () {}

/// The environment variable that stops (SIGSTOP) the training process right after it saved the
/// checkpoint of the step it names: tests interrupt `spp run` at a known point with it, then kill
/// or continue the process group.
pub const FREEZE_ENV: &str = "SPP_TEST_FREEZE_AFTER_CHECKPOINT";

fn freeze_for_tests(step: usize) {
    if std::env::var(FREEZE_ENV).ok().and_then(|v| v.parse().ok()) == Some(step) {
        crate::cpu::stop_self();
    }
}

/// What `--resume` reads from `OUT/checkpoint/state.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    step: usize,
    position: usize,
    adam_t: u64,
    best_val: Option<f64>,
    best_step: Option<usize>,
    /// The run's settings and data/model identity, compared on resume.
    run: serde_json::Value,
}

pub const CHECKPOINT_DIR: &str = "checkpoint";

/// The settings a checkpoint must share with a run that resumes it.
fn run_identity(
    opts: &TrainOptions,
    ds: &Dataset,
    total: usize,
    base_hash: &str,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(opts).map_err(|e| Error::Msg(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("eval_every");
        o.remove("save_every");
        o.remove("grad_checkpoint");
        o.insert("total_steps".into(), total.into());
        o.insert("examples".into(), ds.examples.len().into());
        o.insert("base_model_hash".into(), base_hash.into());
    }
    Ok(v)
}

/// Writes the adapter files into `out` through a temporary directory, then renames them in.
fn save_adapter_into(model: &Llama, cfg: &AdapterConfig, out: &Path) -> Result<()> {
    let tmp = out.join(".adapter.tmp");
    adapter::save(model, cfg, &tmp, true)?;
    for f in [adapter::CONFIG_FILE, adapter::WEIGHTS_FILE] {
        std::fs::rename(tmp.join(f), out.join(f)).at(out.join(f))?;
    }
    std::fs::remove_dir_all(&tmp).at(&tmp)
}

fn save_checkpoint(
    dir: &Path,
    params: &[(String, Var)],
    adam: &AdamW,
    state: &CheckpointState,
) -> Result<()> {
    write_dir_atomically(dir, true, |tmp| {
        let mut tensors = Vec::new();
        for (i, (name, p)) in params.iter().enumerate() {
            tensors.push((format!("param.{name}"), p.as_tensor().clone()));
            tensors.push((format!("adam_m.{name}"), adam.m[i].clone()));
            tensors.push((format!("adam_v.{name}"), adam.v[i].clone()));
        }
        crate::model::checkpoint::write_safetensors(tmp, &tensors, u64::MAX)?;
        write_json(&tmp.join("state.json"), state)
    })
}

fn load_checkpoint(
    dir: &Path,
    params: &[(String, Var)],
    adam: &mut AdamW,
    run: &serde_json::Value,
) -> Result<CheckpointState> {
    let path = dir.join("state.json");
    if !path.exists() {
        bail!(
            "--resume: {} has no checkpoint (no state.json); start without --resume",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    if &state.run != run {
        let (a, b) = (state.run.as_object(), run.as_object());
        let differ: Vec<String> = match (a, b) {
            (Some(a), Some(b)) => b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k} (checkpoint {}, now {v})",
                        a.get(k).cloned().unwrap_or_default()
                    )
                })
                .collect(),
            _ => vec!["everything".into()],
        };
        bail!(
            "--resume: the checkpoint in {} is from another configuration: {}",
            dir.display(),
            differ.join(", ")
        );
    }
    let file = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .map_err(|e| Error::Msg(format!("{}: {e}", file.display())))?;
    let get = |k: String| {
        tensors
            .get(&k)
            .cloned()
            .ok_or_else(|| Error::Msg(format!("{}: {k} missing", file.display())))
    };
    for (i, (name, p)) in params.iter().enumerate() {
        p.set(&get(format!("param.{name}"))?.to_device(p.device())?)?;
        adam.m[i] = get(format!("adam_m.{name}"))?.to_device(p.device())?;
        adam.v[i] = get(format!("adam_v.{name}"))?.to_device(p.device())?;
    }
    adam.t = state.adam_t;
    Ok(state)
}

/// A run: the model with adapters attached, the data, the settings, the output directory.
/// Where the frozen weights of the blocks are while training.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// In the model's `layers`.
    Resident,
    /// On disk, read for every block run, except the first blocks kept in memory (on the
    /// model's device); the model's `layers` are stand-ins ([`Llama::stand_in_blocks`]) that hold
    /// the adapters. Implies gradient checkpointing.
    Streamed(&'a StreamedModel, &'a [Block]),
}

impl Weights<'_> {
    /// Block `i` of `model` on a packed row `x`.
    fn forward(&self, model: &Llama, i: usize, x: &Tensor, packing: &Packing) -> Result<Tensor> {
        match self {
            Weights::Resident => model.block_forward_packed(i, x, packing),
            Weights::Streamed(sm, kept) => {
                let mut block = match kept.get(i) {
                    Some(b) => b.clone(),
                    None => sm.block(i)?,
                };
                block.adopt_adapters(&model.layers[i]);
                model.run_block_packed(&block, x, packing)
            }
        }
    }
}

/// The first blocks of `sm` to keep in memory (on its device) for a streamed run: `keep` of them,
/// or by default as many as fit in half of the memory available now on the CPU and none on
/// another device (whose free memory spp does not query); with a line saying what is kept and
/// what is read for each pass.
pub fn keep_blocks(sm: &StreamedModel, keep: Option<usize>) -> Result<(Vec<Block>, String)> {
    let n = sm.n_layers();
    let cpu = sm.shell().device().is_cpu();
    let keep = match keep {
        Some(k) => k.min(n),
        None if cpu => {
            let half = crate::sys::available_memory().map_or(0, |m| m / 2);
            (half / sm.block_bytes().max(1)).min(n as u64) as usize
        }
        None => 0,
    };
    let kept = (0..keep).map(|i| sm.block(i)).collect::<Result<Vec<_>>>()?;
    let read = if keep < n {
        format!(
            "blocks {keep}–{} are read from disk for each pass (--keep-blocks N to change)",
            n - 1
        )
    } else {
        "none is read again".to_string()
    };
    let line = format!(
        "keeps {keep} of {n} blocks ({:.2} GiB) in memory{}; {read}",
        crate::sys::gib(keep as u64 * sm.block_bytes()),
        if cpu { "" } else { " on the device" },
    );
    Ok((kept, line))
}

pub struct Trainer<'a> {
    pub model: &'a mut Llama,
    /// Where the blocks' frozen weights are ([`Weights::Streamed`]: `model` is the streamed
    /// model's shell with embeddings and stand-in blocks).
    pub weights: Weights<'a>,
    pub data: &'a Dataset,
    pub opts: &'a TrainOptions,
    pub out: PathBuf,
    pub base_path: PathBuf,
    pub resume: bool,
    /// Stop (with a checkpoint) after this many steps: how tests interrupt a run.
    pub stop_after: Option<usize>,
}

impl Trainer<'_> {
    pub fn run(self, progress: &mut dyn Progress) -> Result<TrainReport> {
        let Trainer {
            model,
            weights,
            data: ds,
            opts,
            out,
            base_path,
            resume,
            stop_after,
        } = self;
        if opts.micro_batch_size == 0
            || opts.batch_size == 0
            || opts.batch_size % opts.micro_batch_size != 0
        {
            bail!(
                "--batch-size {} must be a positive multiple of --micro-batch-size {}",
                opts.batch_size,
                opts.micro_batch_size
            );
        }
        if opts.val_size >= ds.examples.len() {
            bail!(
                "--val-size {} leaves no training examples ({} in the data)",
                opts.val_size,
                ds.examples.len()
            );
        }
        let (train_idx, val_idx) = data::split(ds.examples.len(), opts.val_size, opts.seed);
        let total = opts
            .max_steps
            .unwrap_or_else(|| (opts.epochs * train_idx.len() / opts.batch_size).max(1));
        let warmup = (opts.warmup_ratio * total as f64).ceil() as usize;
        let accum = opts.batch_size / opts.micro_batch_size;

        let base_hash = match weights {
            Weights::Resident => adapter::weights_hash(model)?,
            Weights::Streamed(sm, _) => sm.weights_hash()?,
        };
        let spec = AdapterSpec {
            method: opts.method,
            targets: opts.targets.clone(),
            r: opts.r,
            scale: opts.scale,
            dropout: opts.dropout,
        };
        let ctl: Arc<DropoutCtl> = adapter::attach(model, &spec, opts.seed)?;
        let cfg = AdapterConfig::new(&spec, model, &base_path, base_hash.clone());
        let named = adapter::trainable(model);
        let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        let n_params: usize = params.iter().map(|p| p.elem_count()).sum();
        let mut adam = AdamW::new(&params)?;
        let run = run_identity(opts, ds, total, &base_hash)?;

        let ckpt_dir = out.join(CHECKPOINT_DIR);
        let metrics_path = out.join("metrics.jsonl");
        let (mut step, mut pos, mut best_val, mut best_step) =
            (0usize, 0usize, None::<f64>, None::<usize>);
        let mut metrics: Vec<Metric> = Vec::new();
        if resume {
            let st = load_checkpoint(&ckpt_dir, &named, &mut adam, &run)?;
            (step, pos, best_val, best_step) = (st.step, st.position, st.best_val, st.best_step);
            if let Ok(text) = std::fs::read_to_string(&metrics_path) {
                metrics = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Metric>(l).ok())
                    .filter(|m| m.step <= step)
                    .collect();
            }
            progress.note(&format!(
                "resumed from step {step}/{total} ({})",
                ckpt_dir.display()
            ));
        } else if ckpt_dir.exists() {
            bail!("{} already holds a training checkpoint: pass --resume to continue it, or choose another --out", out.display());
        }
        std::fs::create_dir_all(&out).at(&out)?;
        let resumed_from = resume.then_some(step);
        let mut metrics_file = std::fs::File::create(&metrics_path).at(&metrics_path)?;
        for m in &metrics {
            writeln!(
                metrics_file,
                "{}",
                serde_json::to_string(m).unwrap_or_default()
            )
            .at(&metrics_path)?;
        }
        let mut log = |m: Metric| -> Result<()> {
            writeln!(
                metrics_file,
                "{}",
                serde_json::to_string(&m).unwrap_or_default()
            )
            .at(&metrics_path)?;
            metrics_file.flush().at(&metrics_path)?;
            metrics.push(m);
            Ok(())
        };

        let device = model.device().clone();
        let mut stream = Stream::new(train_idx.clone(), opts.seed);
        let val: Vec<&Example> = val_idx.iter().map(|&i| &ds.examples[i]).collect();
        let mut timings: Vec<(usize, f64)> = Vec::new();
        let (mut first_loss, mut last_loss) = (None, None);
        let t_run = Instant::now();
        let validate = |model: &Llama| -> Result<f64> {
            ctl.train.store(false, Ordering::Relaxed);
            let mut sum = 0.0;
            let chunks: Vec<&[&Example]> = val.chunks(opts.micro_batch_size).collect();
            for c in &chunks {
                sum += eval_loss(model, weights, &data::batch(c, &device)?)?;
            }
            Ok(sum / chunks.len().max(1) as f64)
        };

        while step < total {
            let t0 = Instant::now();
            let lr = lr_at(step, total, warmup, opts.lr, opts.schedule);
            ctl.train.store(true, Ordering::Relaxed);
            let inputs = StepInputs {
                model,
                weights,
                params: &params,
                ds,
                ctl: &ctl,
                opts,
                device: &device,
            };
            let (mut grads, losses, tokens) = step_grads(&inputs, &mut stream, step, &mut pos)?;
            if let Some(lv) = losses.iter().find(|l| !l.is_finite()) {
                bail!(
                    "step {}: the loss is {lv}; training stopped, the last good checkpoint is in {} (lower --lr, check the data, or resume from it)",
                    step + 1,
                    ckpt_dir.display()
                );
            }
            let loss_sum = losses.iter().fold(0.0, |a, l| a + l);
            let norm = clip_grad_norm(&mut grads, opts.max_grad_norm)?;
            adam.step(&params, &grads, lr, opts.weight_decay)?;
            step += 1;
            let secs = t0.elapsed().as_secs_f64();
            let loss = loss_sum / accum as f64;
            first_loss.get_or_insert(loss);
            last_loss = Some(loss);
            timings.push((tokens, secs));
            progress.step(&format!(
                "step {step}/{total} loss {loss:.4} lr {lr:.2e} {:.0} tok/s",
                tokens as f64 / secs
            ));
            log(Metric {
                step,
                loss: Some(loss),
                val_loss: None,
                lr: Some(lr),
                tokens: Some(tokens),
                seconds: Some(secs),
                grad_norm: Some(norm),
            })?;

            let last = step == total;
            if !val.is_empty() && ((opts.eval_every > 0 && step % opts.eval_every == 0) || last) {
                let v = validate(model)?;
                let better = best_val.is_none_or(|b| v < b);
                progress.note(&format!(
                    "step {step}/{total} val_loss {v:.4}{}",
                    if better {
                        " (best so far: adapter saved)"
                    } else {
                        ""
                    }
                ));
                log(Metric {
                    step,
                    loss: None,
                    val_loss: Some(v),
                    lr: None,
                    tokens: None,
                    seconds: None,
                    grad_norm: None,
                })?;
                if better {
                    best_val = Some(v);
                    best_step = Some(step);
                    save_adapter_into(model, &cfg, &out)?;
                }
            }
            if (opts.save_every > 0 && step % opts.save_every == 0)
                || last
                || stop_after == Some(step)
            {
                let st = CheckpointState {
                    step,
                    position: pos,
                    adam_t: adam.t,
                    best_val,
                    best_step,
                    run: run.clone(),
                };
                save_checkpoint(&ckpt_dir, &named, &adam, &st)?;
                freeze_for_tests(step);
            }
            if stop_after == Some(step) {
                break;
            }
        }
        if val.is_empty() && step == total {
            save_adapter_into(model, &cfg, &out)?;
        }
        ctl.train.store(false, Ordering::Relaxed);
        let svg = plot::loss_svg(&metrics);
        std::fs::write(out.join("loss.svg"), svg).at(out.join("loss.svg"))?;
        Ok(TrainReport {
            steps: step,
            resumed_from,
            train_examples: train_idx.len(),
            val_examples: val.len(),
            truncated: ds.truncated,
            trainable_parameters: n_params,
            first_loss,
            last_loss,
            best_val_loss: best_val,
            best_step,
            tokens: timings.iter().map(|t| t.0).sum(),
            seconds: t_run.elapsed().as_secs_f64(),
            tokens_per_second: throughput(&timings),
            peak_rss_bytes: crate::sys::peak_rss_bytes(),
            adapter: if val.is_empty() {
                "final"
            } else {
                "best-validation"
            }
            .into(),
        })
    }
}
