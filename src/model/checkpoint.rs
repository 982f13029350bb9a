//! Hugging Face model directories: `config.json`, one or sharded `*.safetensors`
//! (+ `model.safetensors.index.json`), tokenizer and generation files.
//!
//! Loading memory-maps the safetensors files. Saving writes a directory that `transformers`
//! loads unchanged (safetensors with `{"format": "pt"}` metadata, sharded above a size limit),
//! always into a temporary sibling directory renamed into place when complete.

use super::config::Family;
use super::config::LlamaConfig;
pub use super::dtype::{set_dtype, torch_dtype_name, DTypeChoice};
use super::llama::{Llama, TensorSource};
use crate::bail;
use crate::error::{Error, IoContext, Result};
pub use crate::fsio::{
    write_dir_atomically, write_file_atomically, write_json, write_json_atomically,
};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Files copied verbatim from a source model directory when saving a derived model.
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "chat_template.jinja",
];

/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// A size in bytes as a flag takes it: `5GB`, `500MB`, `2GiB`, `1000000` (decimal units as
/// transformers' `max_shard_size`, binary ones with `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            _ => {
                return Err(format!(
                    "unknown size unit in {s:?}: use B, KB, MB, GB, KiB, MiB or GiB"
                ))
            }
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size: write e.g. 5GB or 500MB"))?;
        let bytes = v * mult as f64;
        if !(1.0..1e18).contains(&bytes) {
            return Err(format!("size {s:?} is out of range: give at least 1 byte"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

/// Memory-mapped safetensors files of one model directory.
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    names: HashSet<String>,
    files: Vec<PathBuf>,
    dir: PathBuf,
    /// Tensors read ahead by [`Self::preload`], each handed out once by `get`.
    preloaded: std::sync::Mutex<std::collections::HashMap<String, Tensor>>,
}

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let files = weight_files(dir)?;
        for f in &files {
            std::fs::File::open(f).at(f)?;
        }
        let st = crate::cpu::map_safetensors(&files).map_err(|e| {
            Error::Msg(format!(
                "{}: not a readable safetensors file set ({e}); the file may be truncated or corrupt — \
                 re-download or re-convert it",
                dir.display()
            ))
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            st,
            names,
            files,
            dir: dir.to_path_buf(),
            preloaded: Default::default(),
        })
    }

    /// Reads every tensor now, on all threads, when all of them are stored as `dtype` (then the
    /// copies are the model's own, not a second set in another dtype). Copying a model out of its
    /// memory map is mostly first-touch page faults on the fresh destination memory; taken by two
    /// threads instead of one they cost less (`spp eval tasks --limit 1`, memory not recently
    /// used: 3.7–5.0 s → 2.2–2.7 s wall in alternating runs; no difference when it was).
    pub fn preload(&self, dtype: DType) -> Result<()> {
        use rayon::prelude::*;
        for name in &self.names {
            if self.dtype_of(name)? != Some(dtype) {
                return Ok(());
            }
        }
        let names: Vec<&String> = self.names.iter().collect();
        let loaded = names
            .par_iter()
            .map(|&n| Ok((n.clone(), self.read(n)?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        *self.preloaded.lock().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Tensor `name`, copied out of the map with its values checked on the way (NaN, ±inf).
    fn read(&self, name: &str) -> Result<Tensor> {
        let corrupt = |e: &dyn std::fmt::Display| {
            Error::Msg(format!(
                "{}: cannot read tensor {name} ({e}); the file may be corrupt",
                self.dir.display()
            ))
        };
        let view = self.st.get(name).map_err(|e| corrupt(&e))?;
        let (data, shape) = (view.data(), view.shape().to_vec());
        use crate::cpu::copy_checked;
        let (t, bad) = match view.dtype() {
            safetensors::Dtype::F32 => {
                let (v, bad) = copy_checked::<4, f32>(data, 0x7f80_0000, f32::from_bits);
                (Tensor::from_vec(v, shape, &Device::Cpu), bad)
            }
            safetensors::Dtype::BF16 => {
                let (v, bad) =
                    copy_checked::<2, _>(data, 0x7f80, |b| half::bf16::from_bits(b as u16));
                (Tensor::from_vec(v, shape, &Device::Cpu), bad)
            }
            safetensors::Dtype::F16 => {
                let (v, bad) =
                    copy_checked::<2, _>(data, 0x7c00, |b| half::f16::from_bits(b as u16));
                (Tensor::from_vec(v, shape, &Device::Cpu), bad)
            }
            _ => {
                let t = self.st.load(name, &Device::Cpu).map_err(|e| corrupt(&e))?;
                let bad = crate::cpu::has_non_finite(&t)?;
                (Ok(t), bad)
            }
        };
        let t = t.map_err(|e| corrupt(&e))?;
        if bad {
            return Err(super::source::non_finite(name, self));
        }
        Ok(t)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.names.iter()
    }

    /// The dtype of `name` on disk.
    pub fn dtype_of(&self, name: &str) -> Result<Option<DType>> {
        if !self.names.contains(name) {
            return Ok(None);
        }
        let view = self.st.get(name)?;
        Ok(Some(match view.dtype() {
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F32 => DType::F32,
            // The index and the int8 values of packed linears (`super::packed`).
            safetensors::Dtype::U8
                if name.ends_with(".weight_index") || name.ends_with(".weight_values") =>
            {
                DType::U8
            }
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; spp reads f32, f16 and bf16 weights",
                self.dir.display()
            ),
        }))
    }
}

impl TensorSource for SafetensorsSource {
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        if !self.names.contains(name) {
            return Ok(None);
        }
        let ahead = self
            .preloaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(Some(match ahead {
            Some(t) => t,
            None => self.read(name)?,
        }))
    }
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
    fn needs_finite_check(&self) -> bool {
        false
    }
    fn check_header(&self, name: &str, shape: &[usize]) -> Result<()> {
        if self.dtype_of(name)?.is_none() {
            bail!(
                "{}: tensor {name} is missing (expected shape {shape:?})",
                self.dir.display()
            );
        }
        let stored = self.st.get(name)?.shape().to_vec();
        if stored != shape {
            bail!(
                "{}: tensor {name} has shape {stored:?} but config.json implies {shape:?}; the config \
                 does not describe these weights",
                self.dir.display()
            );
        }
        Ok(())
    }
}

/// The safetensors files of a model directory: those named by the index, or `model.safetensors`,
/// or every `*.safetensors` file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        if dir.exists() {
            bail!("{} is not a directory: --model takes a Hugging Face model directory (config.json + *.safetensors)", dir.display());
        }
        bail!("model directory {} does not exist", dir.display());
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).at(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Msg(format!("{}: invalid JSON ({e})", index.display())))?;
        let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
            bail!("{}: no \"weight_map\" object", index.display());
        };
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            bail!(
                "{} names shard {} which is missing",
                index.display(),
                missing.display()
            );
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no *.safetensors weights found. spp reads Hugging Face safetensors directories; \
             for a GGUF file run `spp convert gguf FILE.gguf --out DIR` first",
            dir.display()
        );
    }
    Ok(files)
}

/// A model loaded from a directory, with where it came from.
pub struct LoadedModel {
    pub model: Llama,
    pub dir: PathBuf,
}

/// Opens the weights and `config.json` of `dir`; the dtype `dtype` resolves to (the embeddings'
/// dtype on disk for `auto`).
pub fn open_source(
    dir: &Path,
    dtype: DTypeChoice,
) -> Result<(SafetensorsSource, LlamaConfig, DType)> {
    let src = SafetensorsSource::open(dir)?;
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        bail!(
            "{}: config.json is missing; a model directory needs config.json beside its weights",
            dir.display()
        );
    }
    let cfg = LlamaConfig::load(&cfg_path)?;
    super::packed::check_config(&cfg)
        .map_err(|e| crate::error::Error::Msg(format!("{}: {e}", dir.display())))?;
    let on_disk = src
        .dtype_of("model.embed_tokens.weight")?
        .unwrap_or(DType::F32);
    Ok((src, cfg, dtype.resolve(on_disk)))
}

/// Loads `dir` (config.json + safetensors) in `dtype` on `device`, every block in memory.
pub fn load_model(dir: &Path, dtype: DTypeChoice, device: &Device) -> Result<LoadedModel> {
    let (src, cfg, dtype) = open_source(dir, dtype)?;
    if device.is_cpu() {
        src.preload(dtype)?;
    }
    let model = Llama::load(cfg, &src, dtype, device)?;
    Ok(LoadedModel {
        model,
        dir: dir.to_path_buf(),
    })
}

/// Writes `tensors` as safetensors files in `dir` with `{"format": "pt"}` metadata: one
/// `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards of at most `max_shard_bytes`
/// plus `model.safetensors.index.json`.
pub fn write_safetensors(
    dir: &Path,
    tensors: &[(String, Tensor)],
    max_shard_bytes: u64,
) -> Result<()> {
    let plan = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dtype(), t.dims().to_vec()))
        .collect();
    let mut w = super::shards::ShardWriter::new(dir, plan, max_shard_bytes)?;
    for (name, t) in tensors {
        w.write(name, t)?;
    }
    w.finish()
}

/// How to save a model directory.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub max_shard_bytes: u64,
    pub force: bool,
    /// A directory whose tokenizer/generation files are copied beside the weights.
    pub copy_from: Option<PathBuf>,
    /// More files written into the directory (name, contents), e.g. `prune.json`.
    pub extra_files: Vec<(String, Vec<u8>)>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            force: false,
            copy_from: None,
            extra_files: vec![],
        }
    }
}

/// Saves `model` as a Hugging Face directory at `out` (atomically).
pub fn save_model(model: &Llama, out: &Path, opts: &SaveOptions) -> Result<()> {
    write_dir_atomically(out, opts.force, |tmp| {
        write_config(tmp, &model.cfg, model.dtype())?;
        write_safetensors(tmp, &model.named_tensors()?, opts.max_shard_bytes)?;
        write_side_files(tmp, opts)
    })
}

/// Writes `config.json` of a model with `cfg` stored in `dtype` into `dir`.
pub fn write_config(dir: &Path, cfg: &LlamaConfig, dtype: DType) -> Result<()> {
    write_config_packed(dir, cfg, dtype, None)
}

/// [`write_config`] with `sparsity` as the packed linears' entry ([`super::packed`]); any
/// `sparsity` entry `cfg` carries is dropped (the weights written are dense unless one is given).
pub fn write_config_packed(
    dir: &Path,
    cfg: &LlamaConfig,
    dtype: DType,
    sparsity: Option<serde_json::Value>,
) -> Result<()> {
    let mut cfg = super::packed::dense_config(cfg);
    if let Some(s) = sparsity {
        cfg.extra.insert(super::packed::CONFIG_KEY.into(), s);
    }
    set_dtype(&mut cfg, dtype);
    let family = cfg.family()?;
    // transformers' Qwen attention reads head_dim as a number: `null` (what an absent value
    // serialises to, and LLaMA configs carry) would not load there.
    if matches!(family, Family::Qwen2 | Family::Qwen3) {
        cfg.head_dim = Some(cfg.head_dim());
    }
    if cfg.architectures.is_empty() {
        cfg.architectures = vec![family.architecture().into()];
    }
    cfg.model_type
        .get_or_insert_with(|| family.model_type().into());
    write_json(&dir.join("config.json"), &cfg)
}

/// Writes what `opts` adds beside the weights: the source's tokenizer and generation files and
/// the extra files.
pub fn write_side_files(dir: &Path, opts: &SaveOptions) -> Result<()> {
    if let Some(src) = &opts.copy_from {
        copy_side_files(src, dir)?;
    }
    for (name, bytes) in &opts.extra_files {
        std::fs::write(dir.join(name), bytes).at(dir.join(name))?;
    }
    Ok(())
}

/// Copies the tokenizer and generation files of `src` that exist into `dst`.
pub fn copy_side_files(src: &Path, dst: &Path) -> Result<()> {
    for f in SIDE_FILES {
        let p = src.join(f);
        if p.exists() {
            std::fs::copy(&p, dst.join(f)).at(&p)?;
        }
    }
    Ok(())
}
