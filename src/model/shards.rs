//! The writer of a checkpoint's safetensors shards: a [`ShardWriter`] knows every output tensor's
//! name, dtype and shape up front (the layout follows from `config.json`), so it writes each
//! shard's header first and then the tensors' bytes in order as the job produces them: nothing
//! but the tensor being written is held for the output.

use super::config::LlamaConfig;
use super::layout::layout;
use super::llama::Block;
use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::fsio::write_json;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn st_dtype(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::U32 => "U32",
        DType::U8 => "U8",
        DType::F64 => "F64",
        other => bail!("internal: no safetensors dtype for {other:?}"),
    })
}

/// One planned output tensor.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
}

impl Planned {
    fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()) as u64
    }
}

/// Writes a safetensors checkpoint tensor by tensor in a fixed order: one `model.safetensors`,
/// or `model-0000i-of-0000n.safetensors` shards of at most `max_shard_bytes` each (a tensor larger
/// than that gets a shard of its own) plus `model.safetensors.index.json`, as transformers does.
pub struct ShardWriter {
    dir: PathBuf,
    shards: Vec<Vec<Planned>>,
    /// Shard being written and the index of the next tensor in it.
    at: (usize, usize),
    file: Option<std::io::BufWriter<std::fs::File>>,
    total: u64,
}

impl ShardWriter {
    /// Plans the shards of `tensors` (name, dtype, shape, in writing order) in `dir`.
    pub fn new(
        dir: &Path,
        tensors: Vec<(String, DType, Vec<usize>)>,
        max_shard_bytes: u64,
    ) -> Result<Self> {
        let mut shards: Vec<Vec<Planned>> = vec![vec![]];
        let mut size = 0u64;
        let mut total = 0u64;
        for (name, dtype, shape) in tensors {
            let p = Planned { name, dtype, shape };
            let bytes = p.bytes();
            if size > 0 && size + bytes > max_shard_bytes {
                shards.push(vec![]);
                size = 0;
            }
            size += bytes;
            total += bytes;
            if let Some(last) = shards.last_mut() {
                last.push(p);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            at: (0, 0),
            file: None,
            total,
        })
    }

    /// The whole checkpoint of `cfg` in `dtype`.
    pub fn for_model(
        dir: &Path,
        cfg: &LlamaConfig,
        dtype: DType,
        max_shard_bytes: u64,
    ) -> Result<Self> {
        let tensors = layout(cfg)
            .into_iter()
            .map(|(n, s)| (n, dtype, s))
            .collect();
        Self::new(dir, tensors, max_shard_bytes)
    }

    fn file_name(&self, shard: usize) -> String {
        let n = self.shards.len();
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", shard + 1)
        }
    }

    fn open_shard(&mut self, shard: usize) -> Result<()> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
        let mut offset = 0u64;
        for p in &self.shards[shard] {
            let end = offset + p.bytes();
            header.insert(
                p.name.clone(),
                serde_json::json!({ "dtype": st_dtype(p.dtype)?, "shape": p.shape, "data_offsets": [offset, end] }),
            );
            offset = end;
        }
        let mut json = serde_json::to_string(&header)
            .map_err(|e| Error::Msg(format!("internal: safetensors header ({e})")))?
            .into_bytes();
        // The data starts 8-aligned, as the safetensors library writes it.
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let path = self.dir.join(self.file_name(shard));
        let f = std::fs::File::create(&path).at(&path)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(json.len() as u64).to_le_bytes()).at(&path)?;
        w.write_all(&json).at(&path)?;
        self.file = Some(w);
        Ok(())
    }

    /// Writes the next tensor, which must be `name` with the planned dtype and shape.
    pub fn write(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let (s, k) = self.at;
        let Some(p) = self.shards.get(s).and_then(|sh| sh.get(k)) else {
            bail!("internal: tensor {name} written after the planned checkpoint was complete");
        };
        if p.name != name {
            bail!("internal: expected tensor {} next, got {name}", p.name);
        }
        if p.dtype != t.dtype() || p.shape != t.dims() {
            bail!(
                "tensor {name} is {:?} {:?} but config.json implies {:?} {:?}: the config does not describe these weights",
                t.dtype(),
                t.dims(),
                p.dtype,
                p.shape
            );
        }
        if k == 0 {
            self.open_shard(s)?;
        }
        let path = self.dir.join(self.file_name(s));
        let t = t.to_device(&Device::Cpu)?;
        let bytes = safetensors::View::data(&t);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Msg("internal: shard not open".into()))?;
        file.write_all(&bytes).at(&path)?;
        if k + 1 == self.shards[s].len() {
            if let Some(f) = self.file.take() {
                f.into_inner()
                    .map_err(|e| Error::io(&path, e.into_error()))?
                    .sync_all()
                    .at(&path)?;
            }
            self.at = (s + 1, 0);
        } else {
            self.at = (s, k + 1);
        }
        Ok(())
    }

    /// Writes the tensors of block `i` (they must be next).
    pub fn write_block(&mut self, i: usize, block: &Block) -> Result<()> {
        for (name, t) in block.named_tensors(i)? {
            self.write(&name, &t)?;
        }
        Ok(())
    }

    /// Checks that every planned tensor was written and writes the index of a sharded checkpoint.
    pub fn finish(self) -> Result<()> {
        if self.at.0 < self.shards.len() && !self.shards[self.at.0].is_empty() {
            let p = &self.shards[self.at.0][self.at.1];
            bail!(
                "internal: checkpoint incomplete, {} was never written",
                p.name
            );
        }
        if self.shards.len() > 1 {
            let mut weight_map = BTreeMap::new();
            for (i, shard) in self.shards.iter().enumerate() {
                for p in shard {
                    weight_map.insert(p.name.clone(), self.file_name(i));
                }
            }
            let index = serde_json::json!({ "metadata": { "total_size": self.total }, "weight_map": weight_map });
            write_json(&self.dir.join("model.safetensors.index.json"), &index)?;
        }
        Ok(())
    }
}
