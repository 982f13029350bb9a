//! `spp pack` and `spp unpack`.

use super::{json_error, note, Log};
use crate::bail;
use crate::cpu::{PackedMatrix, SparseLayout, ValueKind};
use crate::error::{Error, Result};
use crate::model::packed::{self, PackedAs};
use crate::model::{DTypeChoice, StreamedModel};
use crate::outpath::{self, OutKind};
use crate::record::{PackRecord, PackedLinear};
use candle_core::{DType, Device};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

/// `spp pack`'s options.
#[derive(Args, Debug, Clone)]
pub struct PackArgs {
    /// The model directory to pack (dense, or packed already: it is packed anew).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// auto (per linear: 2:4 or 4:8 when every group fits, else a bitmask from 30% zeros, else
    /// dense), N:M (e.g. 2:4) or bitmask for every linear.
    #[arg(long, default_value = "auto", value_parser = parse_layout_choice)]
    pub layout: LayoutChoice,
    /// Type of the kept values: auto (the checkpoint's), f32, bf16, f16, or int8 (one f32 scale
    /// per output row, round to nearest).
    #[arg(long, default_value = "auto", value_parser = parse_values_choice)]
    pub values: ValuesChoice,
    /// Also store the output head (the embedding matrix, when tied) in 8 bits, dense, with a
    /// scale per row (beside the input embedding when tied): in a small model the head is a large
    /// share of the bytes each decoded token reads.
    #[arg(long)]
    pub int8_head: bool,
    /// Replace an existing --out.
    #[arg(long)]
    pub force: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: crate::model::checkpoint::ByteSize,
}

/// `--layout`: auto, or one layout for every linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutChoice {
    Auto,
    All(SparseLayout),
}

fn parse_layout_choice(s: &str) -> std::result::Result<LayoutChoice, String> {
    if s == "auto" {
        return Ok(LayoutChoice::Auto);
    }
    packed::parse_layout(s)
        .map(LayoutChoice::All)
        .ok_or_else(|| format!("{s:?}: use auto, bitmask or N:M with 0 < N ≤ M ≤ 256 (e.g. 2:4)"))
}

/// `--values`: the checkpoint's type, or one for every packed linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValuesChoice {
    Auto,
    All(ValueKind),
}

fn parse_values_choice(s: &str) -> std::result::Result<ValuesChoice, String> {
    if s == "auto" {
        return Ok(ValuesChoice::Auto);
    }
    packed::parse_values(s)
        .map(ValuesChoice::All)
        .ok_or_else(|| format!("{s:?}: use auto, f32, bf16, f16 or int8"))
}

impl PackArgs {
    /// Packs `model` into `out`, every other option at its default.
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            out: out.into(),
            ..super::with_defaults(&["--model", ".", "--out", "."])
        }
    }
}

/// `spp unpack`'s options.
#[derive(Args, Debug, Clone)]
pub struct UnpackArgs {
    /// A packed model directory (`spp pack --out`).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out.
    #[arg(long)]
    pub force: bool,
    /// Largest safetensors shard of the output (e.g. 5GB, 500MB); more shards get an index.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: crate::model::checkpoint::ByteSize,
}

/// A linear's name, shape and packed form (`None`: it stays dense).
type Packed = (String, [usize; 2], Option<PackedMatrix>);

/// How each linear of block `i` packs.
fn pack_block(
    sm: &StreamedModel,
    i: usize,
    a: &PackArgs,
    values: ValueKind,
) -> Result<Vec<Packed>> {
    let block = sm.block(i)?;
    let mut out = Vec::new();
    for (name, lin) in block.linears() {
        let p = format!("model.layers.{i}.{name}");
        let (rows, cols) = (lin.out_features(), lin.in_features());
        let w = lin
            .dense_weight()?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let layout = match a.layout {
            // 8-bit values pay off without zeros too.
            LayoutChoice::Auto => packed::choose(&w, cols)
                .or((values == ValueKind::Int8).then_some(SparseLayout::Dense)),
            LayoutChoice::All(l) => Some(l),
        };
        let m = match layout {
            Some(l) => Some(PackedMatrix::pack(&w, rows, cols, l, values).map_err(|e| {
                Error::Msg(format!(
                    "{p} does not fit {}: {e}; use --layout auto (each linear gets the layout it fits) or prune with that pattern first",
                    packed::layout_name(l)
                ))
            })?),
            None => None,
        };
        out.push((p, [rows, cols], m));
    }
    Ok(out)
}

/// Packs the linears of `a.model` into `a.out` (a model directory with `pack.json`): two passes
/// over the blocks, one to size the output, one to write it; one block in memory at a time.
pub fn pack(a: &PackArgs, log: &mut dyn Log) -> Result<PackRecord> {
    outpath::check(&a.out, OutKind::Dir, a.force, &[&a.model])?;
    write_packed(a, log)
}

/// Packs the model directory `dir` in place (`--pack` of `spp prune` and `spp merge`): the
/// packed directory replaces it once complete.
pub fn pack_in_place(dir: &std::path::Path, log: &mut dyn Log) -> Result<PackRecord> {
    let mut a = PackArgs::new(dir, dir);
    a.force = true;
    let r = write_packed(&a, log)?;
    log.line(r.line(dir).trim_end());
    Ok(r)
}

/// The records of the jobs that wrote a model, kept beside its packed form.
const RECORDS: [&str; 2] = ["prune.json", "merge.json"];

fn write_packed(a: &PackArgs, log: &mut dyn Log) -> Result<PackRecord> {
    let sm = StreamedModel::open(&a.model, DTypeChoice::Auto, &Device::Cpu)?;
    let dtype = sm.dtype();
    let values = match a.values {
        ValuesChoice::All(v) => v,
        ValuesChoice::Auto => packed::values_of(dtype),
    };
    let cfg = packed::dense_config(sm.cfg());
    let n = sm.n_layers();
    note!(log, "packing {} ({n} layers, {dtype:?})", a.model.display());
    log.start("sizing");
    let mut plans: HashMap<String, Option<PackedAs>> = HashMap::new();
    let mut parts: HashMap<String, Vec<(String, DType, Vec<usize>)>> = HashMap::new();
    let mut linears = Vec::new();
    for i in 0..n {
        for (p, [rows, cols], m) in pack_block(&sm, i, a, values)? {
            let dense_bytes = (rows * cols * dtype.size_in_bytes()) as u64;
            let packing = m.as_ref().map(|m| PackedAs {
                layout: m.layout,
                values,
            });
            linears.push(PackedLinear {
                name: p.clone(),
                layout: packing.map(|k| packed::layout_name(k.layout)),
                dense_bytes,
                bytes: m.as_ref().map_or(dense_bytes, |m| m.bytes()),
            });
            if let Some(m) = &m {
                parts.insert(format!("{p}.weight"), packed::part_layout(&p, m));
            }
            plans.insert(p, packing);
        }
        log.progress("sizing", i + 1, n);
    }
    let tied = cfg.tie_word_embeddings;
    let head = match a.int8_head {
        true => {
            let name = if tied {
                "model.embed_tokens.weight"
            } else {
                "lm_head.weight"
            };
            let w = sm.tensor(name)?.to_dtype(DType::F32)?;
            let (rows, cols) = w.dims2()?;
            let w = w.flatten_all()?.to_vec1::<f32>()?;
            let m = PackedMatrix::pack(&w, rows, cols, SparseLayout::Dense, ValueKind::Int8)
                .map_err(|e| Error::Msg(format!("the output head: {e}")))?;
            let ps = packed::part_layout(packed::HEAD, &m);
            match tied {
                true => parts.insert(String::new(), ps),
                false => parts.insert("lm_head.weight".into(), ps),
            };
            Some(m)
        }
        false => None,
    };
    // A tied model's packed head comes after everything else.
    let tail = parts.remove("").unwrap_or_default();
    let tensors: Vec<(String, DType, Vec<usize>)> = crate::model::layout::layout(&cfg)
        .into_iter()
        .flat_map(|(name, shape)| match parts.remove(&name) {
            Some(ps) => ps,
            None => vec![(name, dtype, shape)],
        })
        .chain(tail)
        .collect();
    let mut entry: Vec<(String, PackedAs)> = linears
        .iter()
        .filter_map(|l| Some((l.name.clone(), plans.get(&l.name).copied().flatten()?)))
        .collect();
    let packed_linears = entry.len();
    if head.is_some() {
        let k = PackedAs {
            layout: SparseLayout::Dense,
            values: ValueKind::Int8,
        };
        entry.push((packed::HEAD.into(), k));
    }
    let record = PackRecord {
        spp_version: crate::record::spp_version(),
        model: a.model.display().to_string(),
        values: packed::value_name(values).into(),
        packed_linears,
        dense_linears: linears.len() - packed_linears,
        head_bytes: head.as_ref().map(|m| m.bytes()),
        linear_bytes_dense: linears.iter().map(|l| l.dense_bytes).sum(),
        linear_bytes: linears.iter().map(|l| l.bytes).sum(),
        linears,
    };
    crate::model::checkpoint::write_dir_atomically(&a.out, a.force, |tmp| {
        log.start("writing");
        let mut w = crate::model::ShardWriter::new(tmp, tensors.clone(), a.max_shard_size.0)?;
        sm.write_head_tensors(&mut w)?;
        for i in 0..n {
            let block = sm.block(i)?;
            let mut packed_now: HashMap<String, PackedMatrix> = pack_block(&sm, i, a, values)?
                .into_iter()
                .filter_map(|(p, _, m)| Some((format!("{p}.weight"), m?)))
                .collect();
            for (name, t) in block.named_tensors(i)? {
                match packed_now.remove(&name) {
                    Some(m) => {
                        let p = name.strip_suffix(".weight").unwrap_or(&name);
                        for (part, t) in packed::parts(p, &m)? {
                            w.write(&part, &t)?;
                        }
                    }
                    None => w.write(&name, &t.to_dtype(dtype)?)?,
                }
            }
            log.progress("writing", i + 1, n);
        }
        w.write("model.norm.weight", &sm.tensor("model.norm.weight")?)?;
        match &head {
            Some(m) => {
                for (part, t) in packed::parts(packed::HEAD, m)? {
                    w.write(&part, &t)?;
                }
            }
            None if !tied => w.write("lm_head.weight", &sm.tensor("lm_head.weight")?)?,
            None => {}
        }
        w.finish()?;
        crate::model::checkpoint::write_config_packed(
            tmp,
            &cfg,
            dtype,
            Some(packed::config_entry(&entry)),
        )?;
        crate::model::checkpoint::copy_side_files(&a.model, tmp)?;
        for f in RECORDS {
            let p = a.model.join(f);
            if p.exists() {
                std::fs::copy(&p, tmp.join(f)).map_err(|e| Error::io(&p, e))?;
            }
        }
        let json = serde_json::to_vec_pretty(&record).map_err(json_error)?;
        std::fs::write(tmp.join("pack.json"), json)
            .map_err(|e| Error::io(tmp.join("pack.json"), e))?;
        Ok(())
    })?;
    Ok(record)
}

/// Writes the dense checkpoint of the packed model `a.model` to `a.out`, one block at a time.
pub fn unpack(a: &UnpackArgs, log: &mut dyn Log) -> Result<()> {
    outpath::check(&a.out, OutKind::Dir, a.force, &[&a.model])?;
    let sm = StreamedModel::open(&a.model, DTypeChoice::Auto, &Device::Cpu)?;
    if !sm.cfg().extra.contains_key(packed::CONFIG_KEY) {
        bail!(
            "{} is not packed (its config.json has no \"{}\" entry): it is already a dense checkpoint",
            a.model.display(),
            packed::CONFIG_KEY
        );
    }
    let (cfg, dtype, n) = (packed::dense_config(sm.cfg()), sm.dtype(), sm.n_layers());
    crate::model::checkpoint::write_dir_atomically(&a.out, a.force, |tmp| {
        log.start("unpacking");
        let mut w = crate::model::ShardWriter::for_model(tmp, &cfg, dtype, a.max_shard_size.0)?;
        sm.write_head_tensors(&mut w)?;
        for i in 0..n {
            let block = sm.block(i)?;
            for (name, t) in block.named_tensors(i)? {
                w.write(&name, &t.to_dtype(dtype)?)?;
            }
            log.progress("unpacking", i + 1, n);
        }
        sm.write_tail_tensors(&mut w)?;
        w.finish()?;
        crate::model::checkpoint::write_config(tmp, &cfg, dtype)?;
        crate::model::checkpoint::copy_side_files(&a.model, tmp)
    })
}
