//! Adapters on the frozen linears: SPP (`docs/METHOD.md` §2) and the LoRA / LoRA + mask
//! baselines (§3); attaching them, saving and loading a peft-shaped directory, and merging.
//!
//! On disk (`adapter_config.json` + `adapter_model.safetensors`), per adapted linear
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{name}`:
//! SPP: `.spp_A.weight` `[rows, in]`, `.spp_b.weight` `[out, 1]`;
//! LoRA: `.lora_A.weight` `[r, in]`, `.lora_B.weight` `[out, r]` (peft's names and shapes).

pub mod lora;
pub mod op;

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::fsio::{write_dir_atomically, write_json};
pub use crate::model::hash::{weights_hash, WeightsHasher};
use crate::model::{Block, LinearAdapter, Llama, SparseLinear, LINEARS};
pub use crate::rng::splitmix64;
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Sparsity-preserving: `W ⊙ (1 + s·R(A)⊙b)`.
    Spp,
    /// `W + s·BA`: merging makes the weight dense.
    Lora,
    /// LoRA trained as is, merged as `W + s·(BA ⊙ 1[W≠0])`.
    LoraMask,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "spp" => Ok(Self::Spp),
            "lora" => Ok(Self::Lora),
            "lora-mask" => Ok(Self::LoraMask),
            _ => bail!("unknown adapter method {s:?}: use spp, lora or lora-mask"),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Spp => "spp",
            Self::Lora => "lora",
            Self::LoraMask => "lora-mask",
        })
    }
}

/// `adapter_config.json`: what the adapter is, truthfully (rows actually used, the scale applied).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    /// `"SPP"` or `"LORA"` (LoRA + mask is a LoRA whose merge is masked).
    pub peft_type: String,
    pub method: Method,
    pub task_type: String,
    /// Short names of the adapted linears: `q_proj`, …, `down_proj`.
    pub target_modules: Vec<String>,
    /// Rows of A: SPP's `r` (16 in the paper's code) or the LoRA rank.
    pub r: usize,
    /// The factor `s` in front of the adapter branch (LoRA: `lora_alpha / r`).
    pub scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    pub dropout: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_dropout: Option<f64>,
    pub bias: String,
    pub base_model_name_or_path: String,
    /// [`weights_hash`] of the model the adapter was trained on.
    pub base_model_hash: String,
    pub num_layers: usize,
    pub created_by: String,
}

impl AdapterConfig {
    /// The config of adapters `spec` on `model` (loaded from `base`, whose [`weights_hash`] is
    /// `base_hash`).
    pub fn new(spec: &AdapterSpec, model: &Llama, base: &Path, base_hash: String) -> Self {
        let lora = spec.method != Method::Spp;
        Self {
            peft_type: if lora { "LORA" } else { "SPP" }.into(),
            method: spec.method,
            task_type: "CAUSAL_LM".into(),
            target_modules: spec
                .targets
                .iter()
                .map(|t| format!("{}_proj", t.trim_end_matches("_proj")))
                .collect(),
            r: spec.r,
            scale: spec.scale,
            lora_alpha: lora.then_some(spec.scale * spec.r as f64),
            dropout: spec.dropout,
            lora_dropout: lora.then_some(spec.dropout),
            bias: "none".into(),
            base_model_name_or_path: base.display().to_string(),
            base_model_hash: base_hash,
            num_layers: model.layers.len(),
            created_by: format!("spp {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Full linear names (`self_attn.q_proj`) of the targets.
    pub fn full_targets(&self) -> Result<Vec<&'static str>> {
        full_targets(&self.target_modules)
    }
}

/// Full linear names (`self_attn.q_proj`) of targets given as `q`, `q_proj` or `self_attn.q_proj`.
pub fn full_targets(targets: &[String]) -> Result<Vec<&'static str>> {
    targets
            .iter()
            .map(|t| {
                let t = t.rsplit('.').next().unwrap_or(t);
                let short = t.trim_end_matches("_proj");
                LINEARS.iter().find(|l| l.0 == short).map(|l| l.1).ok_or_else(|| {
                    Error::Msg(format!("adapter targets unknown module {t:?}; known: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"))
                })
            })
            .collect()
}

/// Switches dropout on for training and gives each adapter call its own seed: the trainer sets
/// `base` per micro-step, each adapter mixes in its id, so masks are reproducible (resume).
#[derive(Debug, Default)]
pub struct DropoutCtl {
    pub train: AtomicBool,
    pub base: AtomicU64,
    /// Set for adapters loaded to be applied, not trained: the forward sees A and b detached, so
    /// it records no graph (which would keep every activation of a pass alive until its output
    /// is dropped).
    pub frozen: AtomicBool,
}

/// Inverted-dropout mask of `len` entries: 0 with probability `p`, else `1/(1−p)`. Entry `i` comes
/// from 16 bits of `splitmix64(seed + ⌊i/4⌋·φ)`, so the mask is a pure function of the seed.
pub fn dropout_mask(seed: u64, len: usize, p: f32) -> Vec<f32> {
    let threshold = dropout_threshold(p);
    let keep = 1.0 / (1.0 - p);
    let mut out = vec![0f32; len];
    out.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        for (g, four) in chunk.chunks_mut(4).enumerate() {
            let h = dropout_bits(seed, c * 1024 + g);
            for (l, v) in four.iter_mut().enumerate() {
                *v = if (h >> (16 * l)) & 0xFFFF >= threshold {
                    keep
                } else {
                    0.0
                };
            }
        }
    });
    out
}

/// The 16-bit draws below this value drop their entry.
fn dropout_threshold(p: f32) -> u64 {
    (p as f64 * 65536.0).round() as u64
}

/// The draws of entries `4·group .. 4·group + 4`, 16 bits each.
fn dropout_bits(seed: u64, group: usize) -> u64 {
    splitmix64(&mut seed.wrapping_add((group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// The entries that [`dropout_mask`]`(seed, rows·n, p)` drops, per row of `n`, without building
/// the mask.
pub fn dropped_rows(seed: u64, rows: usize, n: usize, p: f32) -> Vec<Vec<u32>> {
    let threshold = dropout_threshold(p);
    (0..rows)
        .into_par_iter()
        .map(|t| {
            let mut out = Vec::new();
            let mut h = (usize::MAX, 0u64);
            for j in 0..n {
                let i = t * n + j;
                if h.0 != i / 4 {
                    h = (i / 4, dropout_bits(seed, i / 4));
                }
                if (h.1 >> (16 * (i % 4))) & 0xFFFF < threshold {
                    out.push(j as u32);
                }
            }
            out
        })
        .collect()
}

/// A uniform draw in `[-bound, bound)` per entry, from a seeded splitmix64 stream.
fn uniform(state: &mut u64, len: usize, bound: f32) -> Vec<f32> {
    (0..len)
        .map(|_| ((splitmix64(state) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound)
        .collect()
}

/// One adapter on one linear.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub method: Method,
    /// SPP: `[rows, in]`; LoRA: `[r, in]`.
    pub a: Var,
    /// SPP: `[out, 1]`; LoRA: `[out, r]`.
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
    /// Mixed into the dropout seed so that every linear draws its own mask.
    pub id: u64,
    pub ctl: Arc<DropoutCtl>,
}

impl Adapter {
    fn dropout_seed(&self) -> Option<(u64, f32)> {
        let on = self.ctl.train.load(Ordering::Relaxed) && self.dropout > 0.0;
        on.then(|| {
            let mut s =
                self.ctl.base.load(Ordering::Relaxed) ^ self.id.wrapping_mul(0xD1B5_4A32_D192_ED03);
            (splitmix64(&mut s), self.dropout)
        })
    }

    fn mask_tensor(drop: Option<(u64, f32)>, x: &Tensor) -> Result<Option<Tensor>> {
        match drop {
            Some((seed, p)) => Ok(Some(
                Tensor::from_vec(dropout_mask(seed, x.elem_count(), p), x.dims(), x.device())?
                    .to_dtype(x.dtype())?,
            )),
            None => Ok(None),
        }
    }

    /// A and b as the forward uses them: the variables, or detached when frozen.
    fn params(&self) -> (Tensor, Tensor) {
        if self.ctl.frozen.load(Ordering::Relaxed) {
            (self.a.as_detached_tensor(), self.b.as_detached_tensor())
        } else {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        }
    }

    /// `y` for x `[T, in]` through the frozen weight `w` `[out, in]` plus the adapter branch.
    pub fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        // The fused ops work in f32 (16-bit weights widened inside each call) and keep nothing
        // but their inputs for the backward; the compositions of candle ops (other devices)
        // keep [out, in] products (SPP) or two [T, in] and three [T, out] tensors (LoRA).
        if fused_ok(x, w) {
            return self.fused(x, op::Frozen::Dense(w.contiguous()?));
        }
        let (a, b) = self.params();
        let mask = Self::mask_tensor(self.dropout_seed(), x)?;
        match self.method {
            Method::Spp => spp_naive(x, w, &a, &b, self.scale, mask.as_ref()),
            Method::Lora | Method::LoraMask => {
                lora::lora_naive(x, w, &a, &b, self.scale, mask.as_ref())
            }
        }
    }

    /// The adapter through its fused CPU op (SPP's or LoRA's, f32 inside) on the frozen `w`.
    fn fused(&self, x: &Tensor, w: op::Frozen) -> Result<Tensor> {
        let (a, b) = self.params();
        let (scale, dropout) = (self.scale as f32, self.dropout_seed());
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        let y = match self.method {
            Method::Spp => x32.apply_op3(&a, &b.flatten_all()?, op::SppOp { w, scale, dropout })?,
            Method::Lora | Method::LoraMask => {
                x32.apply_op3(&a, &b, lora::LoraOp { w, scale, dropout })?
            }
        };
        Ok(y.to_dtype(x.dtype())?)
    }

    /// The weight with the adapter folded in (f32 arithmetic, returned in `w`'s dtype).
    pub fn merged(&self, w: &Tensor) -> Result<Tensor> {
        let wf = w.to_dtype(DType::F32)?;
        // Detached: the merged weight must not keep the graph of its temporaries (with A and b
        // as variables every intermediate [out, in] product would stay alive with it).
        let a = self
            .a
            .as_tensor()
            .detach()
            .to_dtype(DType::F32)?
            .to_device(w.device())?;
        let b = self
            .b
            .as_tensor()
            .detach()
            .to_dtype(DType::F32)?
            .to_device(w.device())?;
        let merged = match self.method {
            Method::Spp => {
                (&wf * (spp_scaling(&a, &b, wf.dims()[0])? * self.scale)?.affine(1.0, 1.0)?)?
            }
            Method::Lora => (&wf + (b.matmul(&a)? * self.scale)?)?,
            Method::LoraMask => {
                let mask = wf.ne(0f32)?.to_dtype(DType::F32)?;
                (&wf + (b.matmul(&a)? * self.scale)?.mul(&mask)?)?
            }
        };
        Ok(merged.to_dtype(w.dtype())?)
    }
}

/// Whether the fused CPU ops (f32 inside) take this input and weight: an input in the weight's
/// dtype or in f32 (16-bit weights on the CPU compute in f32).
fn fused_ok(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && (x.dtype() == w.dtype() || x.dtype() == DType::F32)
        && matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// `M = R(A) ⊙ b` (`[m, n]`): each row of A repeated `m/r` times contiguously, times b.
pub fn spp_scaling(a: &Tensor, b: &Tensor, m: usize) -> Result<Tensor> {
    let (r, n) = a.dims2()?;
    let ra = a
        .unsqueeze(1)?
        .broadcast_as((r, m / r, n))?
        .reshape((m, n))?;
    Ok(ra.broadcast_mul(b)?)
}

/// The naive SPP forward, `x·Wᵀ + s·(xd·(R(A)⊙b⊙W)ᵀ)`: the reference the block form is tested
/// against, and the path on devices without the fused op. It builds `[m, n]` temporaries.
pub fn spp_naive(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let m = w.dims()[0];
    let a = a.to_dtype(x.dtype())?;
    let b = b.to_dtype(x.dtype())?;
    let mw = (spp_scaling(&a, &b, m)? * w)?;
    let xd = match mask {
        Some(mk) => (x * mk)?,
        None => x.clone(),
    };
    Ok((x.matmul(&w.t()?)? + (xd.matmul(&mw.t()?)? * scale)?)?)
}

/// What to attach: method, targets (short names), rows of A, scale, dropout.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub method: Method,
    pub targets: Vec<String>,
    pub r: usize,
    pub scale: f64,
    pub dropout: f64,
}

fn param_names(i: usize, full: &str, method: Method) -> (String, String) {
    let p = format!("base_model.model.model.layers.{i}.{full}");
    match method {
        Method::Spp => (format!("{p}.spp_A.weight"), format!("{p}.spp_b.weight")),
        _ => (format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight")),
    }
}

impl LinearAdapter for Adapter {
    fn forward(&self, x: &Tensor, lin: &SparseLinear) -> Result<Tensor> {
        match &lin.packed {
            // The fused ops read a packed weight (16-bit, sparse) as it is, never widened whole
            // for longer than one call.
            Some(p) if x.device().is_cpu() => self.fused(x, op::Frozen::Packed(p.clone())),
            _ => Adapter::forward(self, x, &lin.dense_weight()?),
        }
    }
}

/// The adapter on `lin`, if it has one of this module's.
fn adapter_of(lin: &SparseLinear) -> Option<&Adapter> {
    let ad: &dyn std::any::Any = lin.adapter.as_deref()?;
    ad.downcast_ref()
}

/// Adapted linears of the model: `(layer, full name, linear)`.
fn adapted(model: &Llama) -> impl Iterator<Item = (usize, &'static str, &SparseLinear)> {
    model
        .layers
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.linears().into_iter().map(move |(n, l)| (i, n, l)))
        .filter(|(_, _, l)| l.adapter.is_some())
}

/// Attaches fresh adapters (A: kaiming-uniform `U(−1/√in, 1/√in)` from `seed`; b / B: zeros) to
/// every target linear. Returns the dropout control shared by all of them.
pub fn attach(model: &mut Llama, spec: &AdapterSpec, seed: u64) -> Result<Arc<DropoutCtl>> {
    let mut state = seed;
    attach_with(model, spec, |(_, (r, n)), _| {
        Ok((uniform(&mut state, r * n, 1.0 / (n as f32).sqrt()), None))
    })
}

/// Attaches adapters whose A (and optionally b / B) come from
/// `init((name of A, its shape), (name of b / B, its shape))`.
fn attach_with(
    model: &mut Llama,
    spec: &AdapterSpec,
    mut init: impl FnMut(
        (&str, (usize, usize)),
        (&str, (usize, usize)),
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)>,
) -> Result<Arc<DropoutCtl>> {
    let ctl = Arc::new(DropoutCtl::default());
    let dev = model.device().clone();
    for (i, block) in model.layers.iter_mut().enumerate() {
        attach_block(i, block, spec, &ctl, &dev, &mut init)?;
    }
    Ok(ctl)
}

/// Gives A (and optionally b / B) of a linear from `((name of A, its shape), (name of b / B, its
/// shape))`.
type InitFn<'a> = dyn FnMut((&str, (usize, usize)), (&str, (usize, usize))) -> Result<(Vec<f32>, Option<Vec<f32>>)>
    + 'a;

/// [`attach_with`] for block `i` alone.
fn attach_block(
    i: usize,
    block: &mut Block,
    spec: &AdapterSpec,
    ctl: &Arc<DropoutCtl>,
    dev: &Device,
    init: &mut InitFn,
) -> Result<()> {
    if spec.r == 0 {
        bail!("adapter rows r must be positive");
    }
    let targets = full_targets(&spec.targets)?;
    for (j, (full, lin)) in block.linears_mut().into_iter().enumerate() {
        if !targets.contains(&full) {
            continue;
        }
        let (m, n) = (lin.out_features(), lin.in_features());
        if spec.method == Method::Spp && m % spec.r != 0 {
            bail!("model.layers.{i}.{full}: out_features {m} is not divisible by the SPP rows r = {}; choose r dividing every target's out_features", spec.r);
        }
        let (an, bn) = param_names(i, full, spec.method);
        let b_shape = if spec.method == Method::Spp {
            (m, 1)
        } else {
            (m, spec.r)
        };
        let (av, bv) = init((&an, (spec.r, n)), (&bn, b_shape))?;
        let bv = bv.unwrap_or_else(|| vec![0f32; b_shape.0 * b_shape.1]);
        lin.adapter = Some(Arc::new(Adapter {
            method: spec.method,
            a: Var::from_tensor(&Tensor::from_vec(av, (spec.r, n), dev)?)?,
            b: Var::from_tensor(&Tensor::from_vec(bv, b_shape, dev)?)?,
            scale: spec.scale,
            dropout: spec.dropout as f32,
            id: (i * 7 + j) as u64,
            ctl: ctl.clone(),
        }));
    }
    Ok(())
}

/// The trainable parameters under their file names, in model order.
pub fn trainable(model: &Llama) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    for (i, full, lin) in adapted(model) {
        if let Some(ad) = adapter_of(lin) {
            let (an, bn) = param_names(i, full, ad.method);
            out.push((an, ad.a.clone()));
            out.push((bn, ad.b.clone()));
        }
    }
    out
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (atomically).
pub fn save(model: &Llama, cfg: &AdapterConfig, dir: &Path, force: bool) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = trainable(model)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    if tensors.is_empty() {
        bail!("the model has no adapters to save");
    }
    write_dir_atomically(dir, force, |tmp| write_files(cfg, &tensors, tmp))
}

/// Writes the two adapter files into an existing directory.
pub fn write_files(cfg: &AdapterConfig, tensors: &[(String, Tensor)], dir: &Path) -> Result<()> {
    write_json(&dir.join(CONFIG_FILE), cfg)?;
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let path = dir.join(WEIGHTS_FILE);
    safetensors::serialize_to_file(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(meta), &path)
        .map_err(|e| {
            Error::Msg(format!(
                "{}: cannot write safetensors ({e})",
                path.display()
            ))
        })
}

pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        bail!("{}: not an adapter directory ({CONFIG_FILE} is missing); pass the --out directory of `spp train`", dir.display());
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Msg(format!("{}: invalid adapter config ({e})", path.display())))
}

/// Loads the adapter in `dir` onto `model` to be applied, not trained (frozen: its forwards record
/// no graph). A base-model hash that differs from the model's is an
/// error unless `force` (then a warning is returned).
pub fn load(model: &mut Llama, dir: &Path, force: bool) -> Result<(AdapterConfig, Option<String>)> {
    let stored = Stored::read(dir)?;
    let warning = stored.check_base(&weights_hash(model)?, force)?;
    stored.check_layers(model.layers.len())?;
    let spec = stored.spec();
    let ctl = attach_with(model, &spec, |a, b| stored.init(a, b))?;
    ctl.frozen.store(true, Ordering::Relaxed);
    Ok((stored.cfg, warning))
}

/// A trained adapter read from its directory.
struct Stored {
    cfg: AdapterConfig,
    dir: PathBuf,
    path: PathBuf,
    tensors: std::collections::HashMap<String, Tensor>,
}

impl Stored {
    fn read(dir: &Path) -> Result<Self> {
        let cfg = read_config(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
        Ok(Self {
            cfg,
            dir: dir.to_path_buf(),
            path,
            tensors,
        })
    }

    /// Fails (or, with `force`, warns) when the adapter was trained on other weights.
    fn check_base(&self, hash: &str, force: bool) -> Result<Option<String>> {
        if self.cfg.base_model_hash == hash {
            return Ok(None);
        }
        let msg = format!(
            "{}: the adapter was trained on a different model (base hash {} from {}, this model {hash})",
            self.dir.display(),
            self.cfg.base_model_hash,
            self.cfg.base_model_name_or_path
        );
        if !force {
            bail!("{msg}; pass --force to apply it anyway");
        }
        Ok(Some(msg))
    }

    fn check_layers(&self, layers: usize) -> Result<()> {
        if self.cfg.num_layers != layers {
            bail!(
                "{}: adapter for {} layers, model has {layers}",
                self.dir.display(),
                self.cfg.num_layers,
            );
        }
        Ok(())
    }

    fn spec(&self) -> AdapterSpec {
        AdapterSpec {
            method: self.cfg.method,
            targets: self.cfg.target_modules.clone(),
            r: self.cfg.r,
            scale: self.cfg.scale,
            dropout: self.cfg.dropout,
        }
    }

    fn get(&self, name: &str, shape: (usize, usize)) -> Result<Vec<f32>> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::Msg(format!("{}: tensor {name} is missing", self.path.display()))
        })?;
        if t.dims() != [shape.0, shape.1] {
            bail!(
                "{}: {name} has shape {:?}, the model needs {shape:?}",
                self.path.display(),
                t.dims()
            );
        }
        if crate::cpu::has_non_finite(t)? {
            bail!(
                "{}: tensor {name} holds NaN or infinite values; the adapter is corrupt — retrain it (a lower --lr) or restore its files",
                self.path.display()
            );
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    /// The stored A and b / B, as [`attach_with`] asks for them.
    fn init(
        &self,
        (an, a_shape): (&str, (usize, usize)),
        (bn, b_shape): (&str, (usize, usize)),
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        Ok((self.get(an, a_shape)?, Some(self.get(bn, b_shape)?)))
    }
}

/// Merges the adapter in `adapter_dir` into a model read block by block from disk, writing the
/// merged model's tensors into `out` as they are ready (`on_block` sees each merged block
/// first). The base-model hash is computed on the
/// way and checked at the end (so a mismatch fails before the output is complete, and the
/// caller's atomic write leaves nothing).
pub fn merge_streamed(
    model: &crate::model::StreamedModel,
    adapter_dir: &Path,
    force: bool,
    out: &mut crate::model::ShardWriter,
    on_block: &mut dyn FnMut(usize, &Block) -> Result<()>,
) -> Result<(AdapterConfig, Option<String>, Vec<MergedLinear>)> {
    let stored = Stored::read(adapter_dir)?;
    stored.check_layers(model.n_layers())?;
    let spec = stored.spec();
    let ctl = Arc::new(DropoutCtl::default());
    let dev = model.shell().device().clone();
    let mut hash = WeightsHasher::default();
    let embed = model.tensor("model.embed_tokens.weight")?;
    hash.add("model.embed_tokens.weight", &embed)?;
    out.write("model.embed_tokens.weight", &embed)?;
    drop(embed);
    let mut merged = Vec::new();
    let mut blocks = model.blocks();
    for i in 0..model.n_layers() {
        let mut block = blocks.next_block()?;
        for (name, t) in block.named_tensors(i)? {
            hash.add(&name, &t)?;
        }
        attach_block(i, &mut block, &spec, &ctl, &dev, &mut |a, b| {
            stored.init(a, b)
        })?;
        merged.extend(merge_block(i, &mut block)?);
        on_block(i, &block)?;
        out.write_block(i, &block)?;
    }
    for name in ["model.norm.weight", "lm_head.weight"] {
        if name == "lm_head.weight" && model.cfg().tie_word_embeddings {
            continue;
        }
        let t = model.tensor(name)?;
        hash.add(name, &t)?;
        out.write(name, &t)?;
    }
    let warning = stored.check_base(&hash.finish(), force)?;
    Ok((stored.cfg, warning, merged))
}

/// Per-linear outcome of a merge.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MergedLinear {
    pub name: String,
    pub zeros_before: usize,
    pub zeros_after: usize,
    pub numel: usize,
    /// Every zero of the pruned weight is still zero.
    pub zeros_kept: bool,
}

/// Folds every adapter into its weight and removes it.
pub fn merge(model: &mut Llama) -> Result<Vec<MergedLinear>> {
    let mut out = Vec::new();
    for (i, block) in model.layers.iter_mut().enumerate() {
        out.extend(merge_block(i, block)?);
    }
    Ok(out)
}

/// [`merge`] of block `i` alone.
fn merge_block(i: usize, block: &mut Block) -> Result<Vec<MergedLinear>> {
    let mut out = Vec::new();
    for (full, lin) in block.linears_mut() {
        let Some(ad) = adapter_of(lin).cloned() else {
            continue;
        };
        lin.adapter = None;
        let w = lin.dense_weight()?;
        let before = w.eq(0f32)?;
        let merged = ad.merged(&w)?;
        if crate::cpu::has_non_finite(&merged)? {
            bail!("model.layers.{i}.{full}: the merged weight holds NaN or infinite values (the adapter's are not finite); nothing was written — retrain the adapter (a lower --lr) or check its files");
        }
        let after = merged.eq(0f32)?;
        let count = |t: &Tensor| -> Result<usize> {
            Ok(t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
        };
        let kept = count(&(before.to_dtype(DType::F32)? * after.to_dtype(DType::F32)?)?)?;
        let zb = count(&before)?;
        out.push(MergedLinear {
            name: format!("model.layers.{i}.{full}"),
            zeros_before: zb,
            zeros_after: count(&after)?,
            numel: merged.elem_count(),
            zeros_kept: kept == zb,
        });
        lin.set_weight(merged)?;
    }
    Ok(out)
}
