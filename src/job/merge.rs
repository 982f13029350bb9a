//! `spp merge`.

use super::{json_error, open_streamed, Log, ModelArgs};
use crate::bail;
use crate::error::Result;
use crate::outpath::{self, OutKind};
use crate::record::{MergeRecord, SparsitySummary};
use clap::Args;
use std::path::PathBuf;

/// `spp merge`'s options.
#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The model the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter directory (`spp train --out`).
    #[arg(long)]
    pub adapter: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Merge even if the adapter's base-model hash differs; replace an existing --out.
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

impl MergeArgs {
    /// Merges `adapter` into `model`, written to `out`, every other option at its default.
    pub fn new(
        model: impl Into<PathBuf>,
        adapter: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            model: model.into(),
            adapter: adapter.into(),
            out: out.into(),
            ..super::with_defaults(&["--model", ".", "--adapter", ".", "--out", "."])
        }
    }
}

/// Folds the adapter `a.adapter` into `a.model`'s weights and writes `a.out` (a Hugging Face
/// directory with `merge.json`); returns `merge.json`'s record.
pub fn merge(a: &MergeArgs, log: &mut dyn Log) -> Result<MergeRecord> {
    outpath::check(&a.out, OutKind::Dir, a.force, &[&a.model, &a.adapter])?;
    let model = open_streamed(&ModelArgs::new(&a.model), log)?;
    let cfg_m = model.cfg().clone();
    let mut done = None;
    crate::model::checkpoint::write_dir_atomically(&a.out, a.force, |tmp| {
        let mut w =
            crate::model::ShardWriter::for_model(tmp, &cfg_m, model.dtype(), a.max_shard_size.0)?;
        let mut reports = Vec::new();
        let (cfg, warning, linears) =
            crate::adapter::merge_streamed(&model, &a.adapter, a.force, &mut w, &mut |i, b| {
                reports.extend(crate::inspect::block_linears(i, b)?);
                Ok(())
            })?;
        w.finish()?;
        let summary = crate::inspect::summarize(&cfg_m, model.dtype(), reports);
        let record = MergeRecord {
            spp_version: crate::record::spp_version(),
            model: Some(a.model.display().to_string()),
            adapter: a.adapter.display().to_string(),
            adapter_config: Some(cfg),
            merged_linears: Some(linears.len()),
            zeros_before: linears.iter().map(|l| l.zeros_before).sum(),
            zeros_after: linears.iter().map(|l| l.zeros_after).sum(),
            adapted_weights: linears.iter().map(|l| l.numel).sum(),
            all_zeros_kept: Some(linears.iter().all(|l| l.zeros_kept)),
            sparsity: SparsitySummary::from(&summary),
            linears,
        };
        let save = crate::model::SaveOptions {
            copy_from: Some(a.model.clone()),
            extra_files: vec![(
                "merge.json".into(),
                serde_json::to_vec_pretty(&record).map_err(json_error)?,
            )],
            ..Default::default()
        };
        crate::model::checkpoint::write_config(tmp, &cfg_m, model.dtype())?;
        crate::model::checkpoint::write_side_files(tmp, &save)?;
        done = Some((record, warning));
        Ok(())
    })?;
    let Some((record, warning)) = done else {
        bail!("internal: merge finished without a result");
    };
    if let Some(w) = warning {
        log.line(&format!("warning: {w}"));
    }
    if a.pack {
        super::pack_in_place(&a.out, log)?;
    }
    Ok(record)
}
