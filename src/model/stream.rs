//! Models larger than memory: the blocks stay in the memory-mapped checkpoint until a job reaches
//! them, and outputs are written tensor by tensor into safetensors shards.
//!
//! A [`StreamedModel`] holds the model's shell (embeddings, final norm, head, rotary tables) and
//! reads block `i` only when asked; [`BlockReader`] reads the next block on a second thread
//! while the current one computes, so at most two blocks' weights are resident. A
//! [`ShardWriter`] knows every output tensor's name, dtype and shape up front (the checkpoint
//! layout follows from `config.json`), so it writes each shard's header first and then the
//! tensors' bytes in order as the job produces them: nothing but the tensor being written is
//! held for the output.

use super::checkpoint::{write_json, DTypeChoice};
use super::config::LlamaConfig;
use super::llama::{read_block, Block, Llama, TensorSource};
use crate::bail;
use crate::error::{Error, IoContext, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name and shape of every tensor of a checkpoint with `cfg`, in the order spp writes them:
/// embeddings, each block (input norm, the seven linears with their biases, post-attention
/// norm), final norm, head (absent when tied).
pub fn layout(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (hd, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, hd])];
    for i in 0..cfg.num_hidden_layers {
        out.extend(block_layout(cfg, i));
    }
    out.push(("model.norm.weight".into(), vec![hd]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, hd]));
    }
    out
}

fn block_layout(cfg: &LlamaConfig, i: usize) -> Vec<(String, Vec<usize>)> {
    let p = format!("model.layers.{i}");
    let hd = cfg.hidden_size;
    let mut out = vec![(format!("{p}.input_layernorm.weight"), vec![hd])];
    for (name, rows, cols) in linear_shapes(cfg) {
        out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
        if cfg.has_bias(name) {
            out.push((format!("{p}.{name}.bias"), vec![rows]));
        }
        if name == "self_attn.o_proj" && cfg.qk_norm() {
            for norm in ["q_norm", "k_norm"] {
                out.push((format!("{p}.self_attn.{norm}.weight"), vec![cfg.head_dim()]));
            }
        }
    }
    out.push((format!("{p}.post_attention_layernorm.weight"), vec![hd]));
    out
}

/// The seven linears of a block with `cfg`: name, out features, in features.
pub fn linear_shapes(cfg: &LlamaConfig) -> [(&'static str, usize, usize); 7] {
    let (hd, im) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim();
    let kv = cfg.num_kv_heads() * cfg.head_dim();
    [
        ("self_attn.q_proj", q, hd),
        ("self_attn.k_proj", kv, hd),
        ("self_attn.v_proj", kv, hd),
        ("self_attn.o_proj", hd, q),
        ("mlp.gate_proj", im, hd),
        ("mlp.up_proj", im, hd),
        ("mlp.down_proj", hd, im),
    ]
}

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
        for (name, t) in block.named_tensors(i) {
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

/// A model whose blocks are read from its memory-mapped checkpoint one at a time; the
/// embeddings and the head are read only while they are used.
pub struct StreamedModel {
    /// Final norm and rotary tables; no blocks, embeddings or head.
    shell: Llama,
    src: Arc<dyn TensorSource + Send + Sync>,
    /// Where the weights come from, for messages.
    pub dir: PathBuf,
}

impl StreamedModel {
    /// Opens `dir` (config.json + safetensors): reads the final norm, leaves the rest on disk.
    pub fn open(dir: &Path, dtype: DTypeChoice, device: &Device) -> Result<Self> {
        let (src, cfg, dtype) = super::checkpoint::open_source(dir, dtype)?;
        Self::from_source(cfg, Arc::new(src), dtype, device, dir)
    }

    /// A model with `cfg` whose tensors come from `src` (a GGUF file, …) in `dtype`.
    pub fn from_source(
        cfg: LlamaConfig,
        src: Arc<dyn TensorSource + Send + Sync>,
        dtype: DType,
        device: &Device,
        describe: &Path,
    ) -> Result<Self> {
        // Every tensor's presence, shape and dtype, from the headers, before any work.
        for (name, shape) in layout(&cfg) {
            src.check_header(&name, &shape)?;
        }
        let shell = Llama::load_shell(cfg, &*src, dtype, device, false)?;
        Ok(Self {
            shell,
            src,
            dir: describe.to_path_buf(),
        })
    }

    /// The model without blocks, embeddings or head: runs blocks held outside it
    /// ([`Llama::run_block`], [`Llama::taps_of`]).
    pub fn shell(&self) -> &Llama {
        &self.shell
    }

    /// The shell with the embeddings and head read (they stay only as long as the copy does).
    pub fn with_embeddings(&self) -> Result<Llama> {
        self.with_parts(true, true)
    }

    /// The shell with what scoring hidden states needs: the head (the embeddings when tied).
    pub fn with_head(&self) -> Result<Llama> {
        self.with_parts(false, true)
    }

    fn with_parts(&self, input: bool, output: bool) -> Result<Llama> {
        let mut m = self.shell.clone();
        m.load_embeddings(&*self.src, input, output)?;
        Ok(m)
    }

    /// Embeds token sequences (`[1, T, hidden]` each), holding the embedding table meanwhile.
    pub fn embed_windows(&self, windows: &[&[u32]]) -> Result<Vec<Tensor>> {
        let m = self.with_parts(true, false)?;
        windows
            .iter()
            .map(|w| m.embed(&Tensor::new(*w, m.device())?.unsqueeze(0)?))
            .collect()
    }

    /// Tensor `name` in the model's dtype on the CPU, read now (for copying into an output).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        match self.src.get(name)? {
            Some(t) => Ok(t.to_dtype(self.shell.dtype())?),
            None => bail!("{}: tensor {name} is missing", self.dir.display()),
        }
    }

    /// Writes the tensors that come before the blocks (the embeddings).
    pub fn write_head_tensors(&self, w: &mut ShardWriter) -> Result<()> {
        w.write(
            "model.embed_tokens.weight",
            &self.tensor("model.embed_tokens.weight")?,
        )
    }

    /// Writes the tensors that come after the blocks (final norm, untied head).
    pub fn write_tail_tensors(&self, w: &mut ShardWriter) -> Result<()> {
        w.write("model.norm.weight", &self.tensor("model.norm.weight")?)?;
        if !self.cfg().tie_word_embeddings {
            w.write("lm_head.weight", &self.tensor("lm_head.weight")?)?;
        }
        Ok(())
    }

    pub fn cfg(&self) -> &LlamaConfig {
        &self.shell.cfg
    }

    /// [`crate::adapter::weights_hash`] of the model, reading one tensor at a time.
    pub fn weights_hash(&self) -> Result<String> {
        let mut h = crate::adapter::WeightsHasher::default();
        for (name, _) in layout(self.cfg()) {
            h.add(&name, &self.tensor(&name)?)?;
        }
        Ok(h.finish())
    }

    pub fn dtype(&self) -> DType {
        self.shell.dtype()
    }

    pub fn n_layers(&self) -> usize {
        self.shell.cfg.num_hidden_layers
    }

    /// Block `i`, read now.
    pub fn block(&self, i: usize) -> Result<Block> {
        self.shell.load_block(&*self.src, i)
    }

    /// The blocks in order; on the CPU the next one is read while the current one is used.
    pub fn blocks(&self) -> BlockReader {
        BlockReader::new(self, true)
    }

    /// Blocks read in the caller's thread when asked: one block's weights in memory instead of
    /// two, for jobs whose compute per block dwarfs its reading (SparseGPT).
    pub fn blocks_on_demand(&self) -> BlockReader {
        BlockReader::new(self, false)
    }

    /// Bytes of one block's weights in the model's dtype.
    pub fn block_bytes(&self) -> u64 {
        block_bytes(&self.shell.cfg, self.shell.dtype())
    }

    /// Bytes of the embedding table (and of the head, when untied) in the model's dtype.
    pub fn embedding_bytes(&self) -> u64 {
        let c = self.cfg();
        (c.vocab_size * c.hidden_size * self.dtype().size_in_bytes()) as u64
    }
}

/// Bytes of one block's weights with `cfg` in `dtype`.
pub fn block_bytes(cfg: &LlamaConfig, dtype: DType) -> u64 {
    let n: usize = block_layout(cfg, 0)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    (n * dtype.size_in_bytes()) as u64
}

/// Blocks `0, 1, …` of a [`StreamedModel`], read ahead by one on a loader thread (CPU) or read
/// when asked (other devices, whose contexts belong to the calling thread, or on request).
pub struct BlockReader {
    next: usize,
    n: usize,
    ahead: Option<std::sync::mpsc::Receiver<Result<Block>>>,
    direct: Option<(
        Arc<dyn TensorSource + Send + Sync>,
        LlamaConfig,
        DType,
        Device,
    )>,
}

impl BlockReader {
    fn new(m: &StreamedModel, read_ahead: bool) -> Self {
        let n = m.n_layers();
        let (cfg, dtype, device) = (
            m.shell.cfg.clone(),
            m.shell.dtype(),
            m.shell.device().clone(),
        );
        if !(read_ahead && device.is_cpu()) {
            return Self {
                next: 0,
                n,
                ahead: None,
                direct: Some((m.src.clone(), cfg, dtype, device)),
            };
        }
        // A rendezvous channel: the loader holds at most one finished block while the
        // consumer works on the previous one.
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let src = m.src.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                let b = read_block(&cfg, &*src, dtype, &device, i);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        Self {
            next: 0,
            n,
            ahead: Some(rx),
            direct: None,
        }
    }

    /// The next block; an error after the last one.
    pub fn next_block(&mut self) -> Result<Block> {
        if self.next >= self.n {
            bail!(
                "internal: block {} requested from a model of {} blocks",
                self.next,
                self.n
            );
        }
        let i = self.next;
        self.next += 1;
        if let Some((src, cfg, dtype, device)) = &self.direct {
            return read_block(cfg, &**src, *dtype, device, i);
        }
        match self.ahead.as_ref().map(|rx| rx.recv()) {
            Some(Ok(b)) => b,
            _ => bail!("internal: the block loader stopped before block {i}"),
        }
    }
}

/// Bytes as GiB, for messages.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The high-water mark of this process's anonymous resident memory (`RssAnon`: what the job
/// allocated, without the file pages of the memory-mapped checkpoint), sampled every 20 ms on a
/// thread of its own.
pub struct AnonPeak {
    peak: Arc<std::sync::atomic::AtomicU64>,
}

impl AnonPeak {
    pub fn start() -> Self {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        std::thread::spawn(move || loop {
            if let Some(now) = rss_anon() {
                p.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
            }
            if Arc::strong_count(&p) == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        Self { peak }
    }

    /// The highest sample so far, including now.
    pub fn peak(&self) -> u64 {
        let now = rss_anon().unwrap_or(0);
        self.peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed)
            .max(now)
    }
}

/// This process's `RssAnon` now, in bytes (Linux).
pub fn rss_anon() -> Option<u64> {
    rss_anon_of("self")
}

/// `RssAnon` of process `pid` (a number or `self`) now, in bytes (Linux).
pub fn rss_anon_of(pid: &str) -> Option<u64> {
    proc_status_bytes(pid, "RssAnon")
}

/// A memory field (`VmHWM`, `RssAnon`, …) of `/proc/PID/status` in bytes (Linux).
pub fn proc_status_bytes(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
