//! Models larger than memory: the blocks stay in the memory-mapped checkpoint until a job reaches
//! them, and outputs are written tensor by tensor into safetensors shards.
//!
//! A [`StreamedModel`] holds the model's shell (embeddings, final norm, head, rotary tables) and
//! reads block `i` only when asked; [`BlockReader`] reads the next block on a second thread
//! while the current one computes, so at most two blocks' weights are resident. Outputs go
//! through a [`ShardWriter`].

use super::config::LlamaConfig;
use super::dtype::DTypeChoice;
pub use super::layout::{block_bytes, layout, linear_shapes};
use super::llama::{read_block, Block, Llama, TensorSource};
pub use super::shards::ShardWriter;
use crate::bail;
use crate::error::Result;
pub use crate::sys::{gib, proc_status_bytes, rss_anon, rss_anon_of, AnonPeak};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
            match super::packed::packing_of(&cfg, &name) {
                // The parts' sizes depend on the values kept: checked when the block is read.
                Some(_) => {}
                None => src.check_header(&name, &shape)?,
            }
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

    /// Tensor `name` in the model's dtype on the CPU, read now (for copying into an output); a
    /// packed linear's weight unpacked.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        if let Some(k) = super::packed::packing_of(self.cfg(), name) {
            let p = name.strip_suffix(".weight").unwrap_or(name);
            let (rows, cols) = layout(self.cfg())
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| (s[0], s[1]))
                .unwrap_or_default();
            let m = super::packed::read(&*self.src, p, rows, cols, k)?;
            return Ok(Tensor::from_vec(m.unpack(), (rows, cols), &Device::Cpu)?
                .to_dtype(self.shell.dtype())?);
        }
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

    /// [`super::hash::weights_hash`] of the model, reading one tensor at a time.
    pub fn weights_hash(&self) -> Result<String> {
        let mut h = super::hash::WeightsHasher::default();
        for (name, _) in layout(self.cfg()) {
            h.add(&name, &self.tensor(&name)?)?;
        }
        Ok(h.finish())
    }

    pub fn dtype(&self) -> DType {
        self.shell.dtype()
    }

    /// The dtype activations are computed in.
    pub fn compute_dtype(&self) -> DType {
        self.shell.compute_dtype()
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
