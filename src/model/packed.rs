//! Packed checkpoints: linears stored as [`PackedMatrix`] parts in the safetensors files, named
//! in `config.json`'s `sparsity` entry (`docs/FORMATS.md`).
//!
//! A packed linear `{p}` (e.g. `model.layers.0.self_attn.q_proj`) has, instead of `{p}.weight`:
//! `{p}.weight_values` (1-D, the kept values: F32, BF16, F16, or U8 holding two's-complement
//! int8), `{p}.weight_index` (U8 `[rows, index bytes]`: N:M position codes or the bitmask) and,
//! for int8 values, `{p}.weight_scale` (F32 `[rows]`); a `dense` layout has no index. The output
//! head may be stored so too, as `lm_head` (beside the input embedding when they are tied).
//! `config.json`:
//! `"sparsity": {"format": "spp-packed", "version": 1, "linears": {"{p}": {"layout": "2:4",
//! "values": "f32"}, …}}`; a linear not listed is stored dense.

use super::config::LlamaConfig;
use super::source::TensorSource;
use crate::bail;
use crate::cpu::{PackedMatrix, PackedValues, SparseLayout, ValueKind};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// The name under which a packed output head is listed and stored.
pub const HEAD: &str = "lm_head";

/// The key of `config.json` that lists the packed linears.
pub const CONFIG_KEY: &str = "sparsity";
const FORMAT: &str = "spp-packed";
const VERSION: u64 = 1;

/// How one linear is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedAs {
    pub layout: SparseLayout,
    pub values: ValueKind,
}

pub fn layout_name(l: SparseLayout) -> String {
    match l {
        SparseLayout::NM { n, m } => format!("{n}:{m}"),
        SparseLayout::Bitmask => "bitmask".into(),
        SparseLayout::Dense => "dense".into(),
    }
}

pub fn parse_layout(s: &str) -> Option<SparseLayout> {
    match s {
        "bitmask" => return Some(SparseLayout::Bitmask),
        "dense" => return Some(SparseLayout::Dense),
        _ => {}
    }
    let (n, m) = s.split_once(':')?;
    let (n, m) = (n.parse().ok()?, m.parse().ok()?);
    (0 < n && n <= m && SparseLayout::code_bits(m).is_some()).then_some(SparseLayout::NM { n, m })
}

pub fn value_name(v: ValueKind) -> &'static str {
    match v {
        ValueKind::F32 => "f32",
        ValueKind::Bf16 => "bf16",
        ValueKind::F16 => "f16",
        ValueKind::Int8 => "int8",
    }
}

pub fn parse_values(s: &str) -> Option<ValueKind> {
    Some(match s {
        "f32" => ValueKind::F32,
        "bf16" => ValueKind::Bf16,
        "f16" => ValueKind::F16,
        "int8" => ValueKind::Int8,
        _ => return None,
    })
}

/// The value type a dense weight of `dtype` packs into by default.
pub fn values_of(dtype: DType) -> ValueKind {
    match dtype {
        DType::BF16 => ValueKind::Bf16,
        DType::F16 => ValueKind::F16,
        _ => ValueKind::F32,
    }
}

/// The `sparsity` entry of `config.json` for `linears` (prefix, packing).
pub fn config_entry(linears: &[(String, PackedAs)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = linears
        .iter()
        .map(|(p, k)| {
            (
                p.clone(),
                serde_json::json!({ "layout": layout_name(k.layout), "values": value_name(k.values) }),
            )
        })
        .collect();
    serde_json::json!({ "format": FORMAT, "version": VERSION, "linears": map })
}

/// Checks `cfg`'s `sparsity` entry, if any: a format spp reads, every linear named a linear of
/// the model with a layout and value type spp knows.
pub fn check_config(cfg: &LlamaConfig) -> Result<()> {
    let Some(v) = cfg.extra.get(CONFIG_KEY) else {
        return Ok(());
    };
    let bad = |what: String| -> Result<()> {
        bail!("config.json: \"{CONFIG_KEY}\" {what}; re-pack the model with `spp pack`, or unpack it with `spp unpack`")
    };
    if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return bad(format!(
            "is not spp's packed format (\"format\": \"{FORMAT}\")"
        ));
    }
    if v.get("version").and_then(|f| f.as_u64()) != Some(VERSION) {
        return bad(format!(
            "has a version this spp does not read (it reads {VERSION})"
        ));
    }
    let Some(linears) = v.get("linears").and_then(|l| l.as_object()) else {
        return bad("has no \"linears\" object".into());
    };
    let known: std::collections::HashSet<String> = (0..cfg.num_hidden_layers)
        .flat_map(|i| {
            super::LINEARS
                .iter()
                .map(move |(_, n)| format!("model.layers.{i}.{n}"))
        })
        .chain([HEAD.to_string()])
        .collect();
    for (p, e) in linears {
        if !known.contains(p) {
            return bad(format!("names {p:?}, which is not a linear of this model"));
        }
        if let Err(e) = parse_entry(p, e) {
            return bad(e);
        }
    }
    Ok(())
}

fn parse_entry(p: &str, e: &serde_json::Value) -> std::result::Result<PackedAs, String> {
    let layout = e
        .get("layout")
        .and_then(|s| s.as_str())
        .and_then(parse_layout);
    let values = e
        .get("values")
        .and_then(|s| s.as_str())
        .and_then(parse_values);
    match (layout, values) {
        (Some(layout), Some(values)) => Ok(PackedAs { layout, values }),
        _ => Err(format!(
            "gives {p:?} {e}: the layout must be N:M or bitmask and the values f32, bf16, f16 or int8"
        )),
    }
}

/// How the weight `name` (`{p}.weight`) is stored: `None` when dense.
pub fn packing_of(cfg: &LlamaConfig, name: &str) -> Option<PackedAs> {
    let p = name.strip_suffix(".weight")?;
    let e = cfg.extra.get(CONFIG_KEY)?.get("linears")?.get(p)?;
    parse_entry(p, e).ok()
}

/// `cfg` without a `sparsity` entry: the config of the same model stored dense.
pub fn dense_config(cfg: &LlamaConfig) -> LlamaConfig {
    let mut c = cfg.clone();
    c.extra.remove(CONFIG_KEY);
    c
}

/// The names, dtypes and shapes of a packed linear `{p}`'s parts.
pub fn part_layout(p: &str, m: &PackedMatrix) -> Vec<(String, DType, Vec<usize>)> {
    let (dtype, scale) = match &m.values {
        PackedValues::F32(_) => (DType::F32, false),
        PackedValues::Bf16(_) => (DType::BF16, false),
        PackedValues::F16(_) => (DType::F16, false),
        PackedValues::I8 { .. } => (DType::U8, true),
    };
    let mut out = vec![(format!("{p}.weight_values"), dtype, vec![m.stored()])];
    if m.layout != SparseLayout::Dense {
        out.push((
            format!("{p}.weight_index"),
            DType::U8,
            vec![m.rows, m.layout.index_bytes(m.cols)],
        ));
    }
    if scale {
        out.push((format!("{p}.weight_scale"), DType::F32, vec![m.rows]));
    }
    out
}

/// The parts of a packed linear `{p}` as tensors, in [`part_layout`]'s order.
pub fn parts(p: &str, m: &PackedMatrix) -> Result<Vec<(String, Tensor)>> {
    let cpu = &Device::Cpu;
    let n = m.stored();
    let values = match m.values_unpadded() {
        PackedValues::F32(v) => Tensor::from_vec(v, n, cpu)?,
        PackedValues::Bf16(v) => {
            Tensor::from_vec(v.into_iter().map(half::bf16::from_bits).collect(), n, cpu)?
        }
        PackedValues::F16(v) => {
            Tensor::from_vec(v.into_iter().map(half::f16::from_bits).collect(), n, cpu)?
        }
        PackedValues::I8 { q, .. } => {
            Tensor::from_vec(q.into_iter().map(|v| v as u8).collect(), n, cpu)?
        }
    };
    let ib = m.layout.index_bytes(m.cols);
    let mut out = vec![(format!("{p}.weight_values"), values)];
    if m.layout != SparseLayout::Dense {
        out.push((
            format!("{p}.weight_index"),
            Tensor::from_vec(m.index.clone(), (m.rows, ib), cpu)?,
        ));
    }
    if let PackedValues::I8 { scale, .. } = &m.values {
        out.push((
            format!("{p}.weight_scale"),
            Tensor::from_vec(scale.clone(), m.rows, cpu)?,
        ));
    }
    Ok(out)
}

/// Reads the packed linear `{p}` (`[rows, cols]`) stored as `k` from `src`, every part checked.
pub fn read(
    src: &dyn TensorSource,
    p: &str,
    rows: usize,
    cols: usize,
    k: PackedAs,
) -> Result<PackedMatrix> {
    let get = |suffix: &str, dtype: DType| -> Result<Tensor> {
        let name = format!("{p}.{suffix}");
        let Some(t) = src.get(&name)? else {
            bail!(
                "{}: tensor {name} is missing, but config.json lists {p} as packed ({}, {}); the checkpoint is incomplete — re-pack it with `spp pack`",
                src.describe(),
                layout_name(k.layout),
                value_name(k.values)
            );
        };
        if t.dtype() != dtype {
            bail!(
                "{}: tensor {name} is {:?}, but config.json says {} values (expected {dtype:?}); re-pack the model with `spp pack`",
                src.describe(),
                t.dtype(),
                value_name(k.values)
            );
        }
        Ok(t.to_device(&Device::Cpu)?.flatten_all()?)
    };
    let values = match k.values {
        ValueKind::F32 => PackedValues::F32(get("weight_values", DType::F32)?.to_vec1()?),
        ValueKind::Bf16 => PackedValues::Bf16(
            get("weight_values", DType::BF16)?
                .to_vec1::<half::bf16>()?
                .into_iter()
                .map(|v| v.to_bits())
                .collect(),
        ),
        ValueKind::F16 => PackedValues::F16(
            get("weight_values", DType::F16)?
                .to_vec1::<half::f16>()?
                .into_iter()
                .map(|v| v.to_bits())
                .collect(),
        ),
        ValueKind::Int8 => PackedValues::I8 {
            q: get("weight_values", DType::U8)?
                .to_vec1::<u8>()?
                .into_iter()
                .map(|v| v as i8)
                .collect(),
            scale: get("weight_scale", DType::F32)?.to_vec1()?,
        },
    };
    let finite = match &values {
        PackedValues::F32(v) => v.iter().all(|x| x.is_finite()),
        PackedValues::Bf16(v) => v
            .iter()
            .all(|&x| f32::from_bits((x as u32) << 16).is_finite()),
        PackedValues::F16(v) => v.iter().all(|&x| half::f16::from_bits(x).is_finite()),
        PackedValues::I8 { scale, .. } => scale.iter().all(|x| x.is_finite()),
    };
    if !finite {
        return Err(super::source::non_finite(
            &format!("{p}.weight_values"),
            src,
        ));
    }
    let index = match k.layout {
        SparseLayout::Dense => Vec::new(),
        _ => get("weight_index", DType::U8)?.to_vec1::<u8>()?,
    };
    PackedMatrix::from_parts(rows, cols, k.layout, values, index).map_err(|e| {
        crate::error::Error::Msg(format!(
            "{}: packed linear {p} ([{rows}, {cols}], {}): {e}; the checkpoint is corrupt — re-pack it with `spp pack`",
            src.describe(),
            layout_name(k.layout)
        ))
    })
}

/// The layout that suits a dense f32 weight with `cols` columns: 2:4 or 4:8 when every group
/// fits, else a bitmask from 30% zeros on, else none (stay dense).
pub fn choose(w: &[f32], cols: usize) -> Option<SparseLayout> {
    for (n, m) in [(2, 4), (4, 8)] {
        if super::linear::satisfies_n_m(w, cols, n, m) {
            return Some(SparseLayout::NM { n, m });
        }
    }
    (super::linear::zero_fraction(w) >= 0.3).then_some(SparseLayout::Bitmask)
}
