//! One function per job of the `spp` binary — [`prune()`], [`train()`], [`merge()`],
//! [`eval_ppl`], [`eval_tasks`], [`inspect()`], [`convert_gguf`] — each taking its options (the
//! subcommand's flags, with their defaults) and returning the record it wrote or printed
//! ([`crate::record`]). Progress goes to a [`Log`]; the binary prints it on stderr.

mod eval;
mod merge;
mod pack;
mod prune;
mod train;

pub use eval::{eval_ppl, eval_tasks, PplArgs, TasksArgs};
pub use merge::{merge, MergeArgs};
pub use pack::{pack, pack_in_place, unpack, LayoutChoice, PackArgs, UnpackArgs, ValuesChoice};
pub use prune::{prune, PruneArgs};
pub use train::{find_lr, lr_from, train, TrainArgs, FIND_LR_STEPS, LR_MAX, LR_MIN};

use crate::bail;
use crate::error::{Error, Result};
use crate::model::{load_model, DTypeChoice, Llama, StreamedModel};
use crate::outpath::{self, OutKind};
use crate::record::ConvertRecord;
use candle_core::{DType, Device};
use clap::Args;
use std::path::{Path, PathBuf};

/// Where a job reports progress.
pub trait Log {
    /// A line of progress, a note or a warning.
    fn line(&mut self, line: &str);
    /// The step named `label` starts (its progress is timed from here).
    fn start(&mut self, _label: &str) {}
    /// `done` of `total` units of the step named `label`.
    fn progress(&mut self, _label: &str, _done: usize, _total: usize) {}
}

/// `log.line(format!(…))`.
macro_rules! note {
    ($log:expr, $($t:tt)*) => { $log.line(&format!($($t)*)) };
}
pub(crate) use note;

/// The model a job reads.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Weights dtype: auto (as stored), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeChoice,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run with this adapter unmerged (`spp train --out`; LoRA + mask is folded in on load).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// The model directory `model` as stored, on the CPU, without an adapter.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            dtype: DTypeChoice::Auto,
            device: "cpu".into(),
            adapter: None,
        }
    }
}

/// `T` with every option at the default its flag declares; `required` gives the flags that have
/// none (their values are then replaced by the caller). One definition per option: the flag's.
fn with_defaults<T: Args + clap::FromArgMatches>(required: &[&str]) -> T {
    let cmd = T::augment_args(clap::Command::new("spp").no_binary_name(true));
    cmd.try_get_matches_from(required)
        .and_then(|m| T::from_arg_matches(&m))
        .expect("the required flags of an options struct are given")
}

/// The setting that names the data directory, where the jobs find the data files their flags
/// default to (README, Data).
pub const DATA_DIR_VAR: &str = "SPP_DATA_DIR";

/// `given` (a flag's value), else `rel` under the data directory `$SPP_DATA_DIR`.
pub fn data_path(given: Option<&Path>, rel: &str, flag: &str) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os(DATA_DIR_VAR) {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir).join(rel)),
        _ => bail!(
            "{DATA_DIR_VAR} is not set and no {flag} was given: set {DATA_DIR_VAR} to the data directory (for its {rel}) or pass {flag}"
        ),
    }
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(rest) = s.strip_prefix("cuda") else {
        bail!("unknown --device {s:?}: use cpu, cuda or cuda:N");
    };
    let n = match rest.strip_prefix(':') {
        Some(n) => n
            .parse()
            .map_err(|e| Error::Msg(format!("bad CUDA ordinal in --device {s:?}: {e}")))?,
        None if rest.is_empty() => 0,
        None => bail!("unknown --device {s:?}: use cpu, cuda or cuda:N"),
    };
    Device::new_cuda(n).map_err(|e| {
        Error::Msg(format!("cannot open {s}: this spp was built without CUDA (cargo build --release --features cuda) or no GPU is visible: {e}"))
    })
}

/// Loads `m.model` whole (and its adapter, if any).
pub fn load(m: &ModelArgs, log: &mut dyn Log) -> Result<(Llama, Device)> {
    let dev = parse_device(&m.device)?;
    let t = std::time::Instant::now();
    let mut model = load_model(&m.model, m.dtype, &dev)?.model;
    note!(
        log,
        "loaded {} ({} layers, {:?}) in {:.2} s",
        m.model.display(),
        model.layers.len(),
        model.dtype(),
        t.elapsed().as_secs_f64()
    );
    if let Some(dir) = &m.adapter {
        let (cfg, warning) = crate::adapter::load(&mut model, dir, false)?;
        if let Some(w) = warning {
            note!(log, "warning: {w}");
        }
        if cfg.method == crate::adapter::Method::LoraMask {
            crate::adapter::merge(&mut model)?;
        }
        note!(
            log,
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

/// Opens `m.model` with its blocks left on disk (jobs that walk the blocks once).
pub fn open_streamed(m: &ModelArgs, log: &mut dyn Log) -> Result<StreamedModel> {
    let dev = parse_device(&m.device)?;
    let model = StreamedModel::open(&m.model, m.dtype, &dev)?;
    note!(
        log,
        "opened {} ({} layers, {:?})",
        m.model.display(),
        model.n_layers(),
        model.dtype(),
    );
    Ok(model)
}

/// Whether the model's weights take more than half of the memory available now (then jobs that
/// could hold every block read them from disk one at a time instead).
fn exceeds_half_of_memory(m: &StreamedModel, log: &mut dyn Log) -> bool {
    let bytes = crate::model::stream::layout(m.cfg())
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum::<u64>()
        * m.dtype().size_in_bytes() as u64;
    let big = crate::validate::available_memory().is_some_and(|avail| bytes > avail / 2);
    if big {
        note!(
            log,
            "the weights ({:.2} GiB) take more than half of the available memory: blocks are read from disk one at a time",
            crate::model::stream::gib(bytes)
        );
    }
    big
}

fn json_error(e: serde_json::Error) -> Error {
    Error::Msg(e.to_string())
}

/// `spp inspect`: architecture, parameter counts, dtype and per-linear sparsity.
pub fn inspect(m: &ModelArgs, log: &mut dyn Log) -> Result<crate::inspect::Report> {
    if m.adapter.is_some() {
        crate::inspect::inspect(&load(m, log)?.0)
    } else {
        crate::inspect::inspect_streamed(&open_streamed(m, log)?)
    }
}

/// `spp convert gguf`.
#[derive(Args, Debug, Clone)]
pub struct GgufArgs {
    /// The .gguf file.
    pub file: PathBuf,
    /// Output directory (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Output dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: DTypeChoice,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: crate::model::checkpoint::ByteSize,
}

impl GgufArgs {
    /// Converts `file` into `out`, every other option at its default.
    pub fn new(file: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            out: out.into(),
            ..with_defaults(&[".", "--out", "."])
        }
    }
}

/// `spp convert gguf`: a llama-architecture GGUF file → a Hugging Face directory.
pub fn convert_gguf(a: &GgufArgs) -> Result<ConvertRecord> {
    // A GGUF has no single stored dtype: auto means f32.
    let dtype = a.dtype.resolve(DType::F32);
    outpath::check(&a.out, OutKind::Dir, a.force, &[&a.file])?;
    let t = std::time::Instant::now();
    let report = crate::gguf::convert(&a.file, &a.out, dtype, a.force, a.max_shard_size.0)?;
    Ok(ConvertRecord {
        report,
        seconds: t.elapsed().as_secs_f64(),
        out: a.out.display().to_string(),
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExportGgufArgs {
    /// The Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Output .gguf file (written under a temporary name, renamed when complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Type of the 2-D weights: f32, f16, bf16 or q8_0 (norms and biases stay f32).
    #[arg(long = "type", default_value = "f16")]
    pub precision: crate::gguf::export::Precision,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// `spp export gguf`.
pub fn export_gguf(a: &ExportGgufArgs) -> Result<crate::gguf::export::ExportReport> {
    crate::gguf::export::export(&a.model, &a.out, a.precision, a.force)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_take_the_flags_defaults() {
        let p = PruneArgs::new(
            "m",
            crate::prune::PruneMethod::Wanda,
            "2:4".parse().unwrap(),
            "o",
        );
        assert_eq!((p.nsamples, p.seqlen, p.blocksize), (128, 2048, 128));
        assert_eq!((p.m.model.to_str(), p.out.to_str()), (Some("m"), Some("o")));
        let t = TrainArgs::new("m", "d", "o");
        assert_eq!((t.lr, t.epochs, t.batch_size, t.r), (4e-3, 3, 128, None));
        assert!(t.train_on_inputs);
        assert_eq!(
            MergeArgs::new("m", "a", "o").max_shard_size.0,
            5_000_000_000
        );
        assert_eq!(PplArgs::new("m", "t").seqlen, 2048);
        assert_eq!(TasksArgs::new("m").tasks, "all");
        assert_eq!(GgufArgs::new("f", "o").file.to_str(), Some("f"));
    }
}
