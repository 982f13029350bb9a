//! `spp prune`.

use super::{json_error, note, open_streamed, Log, ModelArgs};
use crate::bail;
use crate::error::{Error, Result};
use crate::model::stream::gib;
use crate::outpath::{self, OutKind};
use crate::prune::{
    calib, peak_rss_bytes, prune_blocks, streamed_peak_estimate, PruneMethod, PruneOptions,
    Sparsity,
};
use crate::record::{PruneRecord, SparsitySummary};
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;

/// `spp prune`'s options.
#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// magnitude, wanda or sparsegpt.
    #[arg(long)]
    pub method: PruneMethod,
    /// A ratio to zero (0.5, 0.6, 0.7, …) or an N:M pattern keeping N of every M (2:4, 4:8).
    #[arg(long)]
    pub sparsity: Sparsity,
    /// Calibration corpus (JSONL with "text", or plain text) [default: $SPP_DATA_DIR/c4/c4_sample.jsonl].
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = crate::validate::nsamples)]
    pub nsamples: usize,
    /// Calibration window length in tokens (recorded in prune.json).
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true, value_parser = crate::validate::seqlen)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 0, value_parser = crate::validate::seed)]
    pub seed: u64,
    /// Re-collect statistics after each group (q/k/v, o, gate/up, down), as SparseGPT's option.
    #[arg(long)]
    pub true_sequential: bool,
    /// SparseGPT column block size.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = crate::validate::positive_usize)]
    pub blocksize: usize,
    /// SparseGPT dampening, as a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true, value_parser = crate::validate::percdamp)]
    pub percdamp: f64,
    /// Linears to prune: any of q,k,v,o,gate,up,down (or all).
    #[arg(long, default_value = "all", value_parser = crate::validate::targets)]
    pub targets: String,
    /// Output directory (a Hugging Face directory plus prune.json and calibration.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
    /// Then store the linears packed, as `spp pack` does (N:M codes or a bitmask plus the kept
    /// values): a smaller model that decodes faster.
    #[arg(long)]
    pub pack: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: crate::model::checkpoint::ByteSize,
}

impl PruneArgs {
    /// Prunes `model` into `out`, every other option at its default.
    pub fn new(
        model: impl Into<PathBuf>,
        method: PruneMethod,
        sparsity: Sparsity,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            m: ModelArgs::new(model),
            method,
            sparsity,
            out: out.into(),
            ..super::with_defaults(&[
                "--model",
                ".",
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--out",
                ".",
            ])
        }
    }
}

/// Prunes `a.m.model` block by block into `a.out` (a Hugging Face directory with `prune.json`
/// and, for calibrated methods, `calibration.safetensors`); returns `prune.json`'s record.
pub fn prune(a: &PruneArgs, log: &mut dyn Log) -> Result<PruneRecord> {
    let opts = PruneOptions {
        method: a.method,
        sparsity: a.sparsity,
        targets: crate::prune::parse_targets(&a.targets)?,
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
    let watch = crate::model::stream::AnonPeak::start();
    let model = open_streamed(&a.m, log)?;
    let cfg = model.cfg().clone();
    let calibration = if a.method.needs_calibration() {
        let path = super::data_path(a.calib.as_deref(), "c4/c4_sample.jsonl", "--calib FILE")?;
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
        let peak = streamed_peak_estimate(
            &cfg,
            (model.dtype(), model.compute_dtype()),
            &opts,
            a.nsamples,
            a.seqlen,
        );
        crate::validate::check_memory(
            &format!(
                "pruning with {} × {} calibration tokens",
                a.nsamples, a.seqlen
            ),
            peak,
            "lower --nsamples or --seqlen (the calibration activations grow with their product)",
        )?;
        let tok = Tokenizer::load(&a.m.model, &cfg)?;
        let docs = crate::eval::perplexity::read_documents(&path)?;
        let c = calib::sample_windows(
            &docs,
            &path.display().to_string(),
            &tok,
            a.nsamples,
            a.seqlen,
            a.seed,
        )?;
        note!(
            log,
            "calibration: {} windows of {} tokens from {} ({} documents, {} tokens, seed {})",
            c.nsamples,
            c.seqlen,
            c.source,
            c.documents,
            c.stream_tokens,
            c.seed
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
        (model.dtype(), model.compute_dtype()),
        &opts,
        windows.len(),
        windows.first().map_or(0, |w| w.len()),
    );
    note!(
        log,
        "prune: {:?} {} on {}; predicted peak memory {:.2} GiB (blocks read one at a time)",
        opts.method,
        opts.sparsity,
        opts.targets.join(","),
        gib(peak)
    );
    let xs = model.embed_windows(&windows)?;
    let mut record = None;
    crate::model::checkpoint::write_dir_atomically(&a.out, a.force, |tmp| {
        let mut w =
            crate::model::ShardWriter::for_model(tmp, &cfg, model.dtype(), a.max_shard_size.0)?;
        model.write_head_tensors(&mut w)?;
        let mut blocks = if opts.method == PruneMethod::SparseGpt {
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
                linears.extend(crate::inspect::block_linears(i, &b)?);
                w.write_block(i, &b)
            },
            &opts,
            &mut |b| {
                let t = b.timing;
                note!(
                    log,
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
            note!(log, "warning: {w}");
        }
        let s = crate::inspect::summarize(&cfg, model.dtype(), linears);
        let r = PruneRecord {
            spp_version: crate::record::spp_version(),
            model: Some(a.m.model.display().to_string()),
            dtype: format!("{:?}", model.dtype()).to_lowercase(),
            options: Some(opts.clone()),
            comparison_group: opts.method.group().into(),
            calibration: calibration.clone(),
            result: Some(SparsitySummary::from(&s)),
            report: Some(report),
            predicted_peak_bytes: peak,
            peak_rss_bytes: peak_rss_bytes(),
            peak_anon_bytes: watch.peak(),
        };
        let mut extra = vec![(
            "prune.json".to_string(),
            serde_json::to_vec_pretty(&r).map_err(json_error)?,
        )];
        if let Some(c) = &calibration {
            let ids: Vec<i64> = c.windows.iter().flatten().map(|&t| t as i64).collect();
            let t = candle_core::Tensor::from_vec(ids, (c.nsamples, c.seqlen), &Device::Cpu)?;
            let bytes = safetensors::serialize(
                [("input_ids", &t)],
                Some([("format".to_string(), "pt".to_string())].into()),
            )
            .map_err(|e| Error::Msg(e.to_string()))?;
            extra.push(("calibration.safetensors".to_string(), bytes));
        }
        let save = crate::model::SaveOptions {
            copy_from: Some(a.m.model.clone()),
            extra_files: extra,
            ..Default::default()
        };
        crate::model::checkpoint::write_config(tmp, &cfg, model.dtype())?;
        crate::model::checkpoint::write_side_files(tmp, &save)?;
        record = Some(r);
        Ok(())
    })?;
    let Some(record) = record else {
        bail!("internal: the pruned model was written without a record");
    };
    if a.pack {
        super::pack_in_place(&a.out, log)?;
    }
    Ok(record)
}
