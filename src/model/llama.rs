//! The LLaMA architecture as Hugging Face's `LlamaForCausalLM` defines it: RMSNorm, RoPE in the
//! `rotate_half` layout (with `rope_theta` and the `linear`/`llama3` scalings), grouped-query
//! attention, SwiGLU MLP, tied or untied output embedding, optional attention/MLP biases.
//!
//! Field names are the checkpoint's key segments: `layers[3].self_attn.q_proj` is
//! `model.layers.3.self_attn.q_proj.weight`.

use super::config::LlamaConfig;
use super::kv_cache::Kv;
pub use super::kv_cache::KvCache;
use super::linear::{SparseLinear, LINEARS};
use super::packing::ATTN_CHUNK;
pub use super::packing::{PackedRow, Packing};
use super::rope::Rope;
pub use super::source::TensorSource;
use super::source::{check_finite, StandIns};
use crate::bail;
use crate::cpu::attention::{Heads, Visibility};
use crate::cpu::decode::KvRows;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Block `i` of a model with `cfg` read from `src` in `dtype` on `device`, shapes checked.
pub fn read_block(
    cfg: &LlamaConfig,
    src: &dyn TensorSource,
    dtype: DType,
    device: &Device,
    i: usize,
) -> Result<Block> {
    Loader { src, dtype, device }.block(cfg, i)
}

/// Loads tensors with shape checks and the requested dtype/device.
struct Loader<'a> {
    src: &'a dyn TensorSource,
    dtype: DType,
    device: &'a Device,
}

impl Loader<'_> {
    fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some(t) = self.src.get(name)? else {
            return Ok(None);
        };
        if t.dims() != shape {
            bail!(
                "{}: tensor {name} has shape {:?} but config.json implies {:?}; the config does not \
                 describe these weights",
                self.src.describe(),
                t.dims(),
                shape
            );
        }
        if self.src.needs_finite_check() {
            check_finite(&t, name, self.src)?;
        }
        Ok(Some(t.to_dtype(self.dtype)?.to_device(self.device)?))
    }

    fn req(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.opt(name, shape)? {
            Some(t) => Ok(t),
            None => bail!(
                "{}: tensor {name} is missing (expected shape {shape:?})",
                self.src.describe()
            ),
        }
    }

    fn linear(
        &self,
        cfg: &LlamaConfig,
        i: usize,
        name: &str,
        out_f: usize,
        in_f: usize,
    ) -> Result<SparseLinear> {
        let prefix = format!("model.layers.{i}.{name}");
        let b = if cfg.has_bias(name) {
            Some(self.req(&format!("{prefix}.bias"), &[out_f])?)
        } else {
            None
        };
        let weight = format!("{prefix}.weight");
        if let Some(k) = super::packed::packing_of(cfg, &weight) {
            let m = super::packed::read(self.src, &prefix, out_f, in_f, k)?;
            return SparseLinear::from_packed(m, b, self.dtype, self.device);
        }
        SparseLinear::with_weight(self.req(&weight, &[out_f, in_f])?, b)
    }

    fn block(&self, cfg: &LlamaConfig, i: usize) -> Result<Block> {
        let (hd, d, kvh, h) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_kv_heads(),
            cfg.num_attention_heads,
        );
        let im = cfg.intermediate_size;
        let p = format!("model.layers.{i}");
        let norm = |name: &str, width: usize| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: self.req(&format!("{p}.{name}.weight"), &[width])?,
                eps: cfg.rms_norm_eps,
            })
        };
        let head_norm = |name: &str| cfg.qk_norm().then(|| norm(name, d)).transpose();
        let linear = |name: &str, out_f: usize, in_f: usize| self.linear(cfg, i, name, out_f, in_f);
        Ok(Block {
            self_attn: Attention {
                q_proj: linear("self_attn.q_proj", h * d, hd)?,
                k_proj: linear("self_attn.k_proj", kvh * d, hd)?,
                v_proj: linear("self_attn.v_proj", kvh * d, hd)?,
                o_proj: linear("self_attn.o_proj", hd, h * d)?,
                q_norm: head_norm("self_attn.q_norm")?,
                k_norm: head_norm("self_attn.k_norm")?,
                n_heads: h,
                n_kv: kvh,
                head_dim: d,
                window: cfg.sliding_window(i),
                reference: false,
            },
            mlp: Mlp {
                gate_proj: linear("mlp.gate_proj", im, hd)?,
                up_proj: linear("mlp.up_proj", im, hd)?,
                down_proj: linear("mlp.down_proj", hd, im)?,
            },
            input_layernorm: norm("input_layernorm", hd)?,
            post_attention_layernorm: norm("post_attention_layernorm", hd)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// RMSNorm of `x`, in `x`'s dtype (a weight stored in another dtype is converted).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.dtype() != x.dtype() {
            let w = self.weight.to_dtype(x.dtype())?;
            return crate::cpu::rms_norm(x, &w, self.eps);
        }
        crate::cpu::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: SparseLinear,
    pub k_proj: SparseLinear,
    pub v_proj: SparseLinear,
    pub o_proj: SparseLinear,
    /// Qwen3's RMSNorm of every query / key head (over head_dim) before RoPE; frozen.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    /// Sliding window: a query sees only the `window` most recent keys (itself included).
    window: Option<usize>,
    /// Always use the composed candle attention (the reference), never the fused CPU kernel.
    reference: bool,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: SparseLinear,
    pub up_proj: SparseLinear,
    pub down_proj: SparseLinear,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// The four distinct linear inputs of one block, captured by [`Llama::block_taps`]:
/// what calibration (Wanda, SparseGPT) needs instead of forward hooks.
#[derive(Debug, Clone)]
pub struct Taps {
    /// Input of q_proj, k_proj, v_proj (the normed residual stream).
    pub attn_in: Tensor,
    /// Input of o_proj (the concatenated attention heads).
    pub o_in: Tensor,
    /// Input of gate_proj and up_proj (the normed residual stream after attention).
    pub mlp_in: Tensor,
    /// Input of down_proj (`silu(gate) * up`).
    pub down_in: Tensor,
}

/// Where a block's tokens stand: the rotary tables, the KV-cache slot of the block (generation),
/// the position of the first token, and the packing of several sequences into one row.
struct At<'a> {
    rope: &'a Rope,
    cache: Option<&'a mut Option<Kv>>,
    offset: usize,
    packing: Option<&'a Packing>,
}

impl<'a> At<'a> {
    /// Positions `0 ..` without a cache, packed or not.
    fn fresh(rope: &'a Rope, packing: Option<&'a Packing>) -> Self {
        Self {
            rope,
            cache: None,
            offset: 0,
            packing,
        }
    }
}

impl Attention {
    /// Causal grouped-query attention; returns the input of o_proj `[B, T, H·D]`.
    /// Queries are processed in chunks so that each chunk scores only the keys it can see, and
    /// each KV head serves its `rep` query heads without copying keys or values.
    fn heads(&self, x: &Tensor, at: At) -> Result<Tensor> {
        let At {
            rope,
            cache,
            offset,
            packing,
        } = at;
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_heads, self.n_kv, self.head_dim);
        let rep = h / kvh;
        let mut qkv = SparseLinear::forward_many(&[&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        for (i, norm, n) in [(0, &self.q_norm, h), (1, &self.k_norm, kvh)] {
            if let Some(norm) = norm {
                qkv[i] = norm
                    .forward(&qkv[i].reshape((b, t, n, d))?)?
                    .reshape((b, t, n * d))?;
            }
        }
        let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
        let visible = packing.map_or(Visibility::Causal, |p| p.visible.clone());
        // A window shorter than what some query would see changes which keys are seen.
        let window = self.window.filter(|&w| w < offset + t);
        let visible = match window {
            Some(w) => visible.windowed(offset, t, w),
            None => visible,
        };
        let cpu_f32 = !self.reference
            && qkv
                .iter()
                .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
        let heads = Heads {
            n_heads: h,
            n_kv: kvh,
            head_dim: d,
        };
        let cache = match cache {
            Some(slot) if cpu_f32 && b == 1 && packing.is_none() => {
                let Kv::Cpu(rows) = slot.get_or_insert_with(|| Kv::Cpu(KvRows::new(kvh, d))) else {
                    bail!("internal: a KV cache of tensors met the CPU's attention");
                };
                let (cos, sin) = rope.tables(offset, t)?;
                return crate::cpu::decode::attend_cached(
                    rows, q, k, v, &cos, &sin, heads, window, visible,
                );
            }
            other => other,
        };
        if cpu_f32 && cache.is_none() && offset == 0 {
            let (cos, sin) = match packing {
                Some(p) => rope.tables_at(&p.positions)?,
                None => rope.tables(0, t)?,
            };
            return crate::cpu::attention::attention(q, k, v, &cos, &sin, heads, visible);
        }
        let q = q.reshape((b, t, h, d))?.transpose(1, 2)?;
        let k = k.reshape((b, t, kvh, d))?.transpose(1, 2)?;
        let v = v.reshape((b, t, kvh, d))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = match packing {
            Some(p) => (
                rope.apply_at(&q, &p.positions)?,
                rope.apply_at(&k, &p.positions)?,
            ),
            None => (rope.apply(&q, offset)?, rope.apply(&k, offset)?),
        };
        let q = (q * (1.0 / (d as f64).sqrt()))?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(Kv::Tensors(pk, pv)) => {
                        (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
                    }
                    Some(Kv::Cpu(_)) => bail!("internal: a CPU KV cache met tensors"),
                    None => (k, v),
                };
                *slot = Some(Kv::Tensors(k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let q = q.reshape((b, kvh, rep, t, d))?;
        let mut outs = Vec::with_capacity(t.div_ceil(ATTN_CHUNK));
        for c0 in (0..t).step_by(ATTN_CHUNK) {
            let c = ATTN_CHUNK.min(t - c0);
            let end = offset + c0 + c;
            // The mask of a windowed chunk is made here; a packing's are made once for all blocks.
            let windowed = match window {
                Some(_) => Some(visible.chunk_mask(offset, c0, c, x.device())?),
                None => None,
            };
            let mask = windowed
                .as_ref()
                .or(packing.map(|p| &p.masks[c0 / ATTN_CHUNK]));
            let lo = mask.map_or(0, |m| m.0);
            let qc = q
                .narrow(3, c0, c)?
                .contiguous()?
                .reshape((b, kvh, rep * c, d))?;
            let kc = k.narrow(2, lo, end - lo)?.contiguous()?;
            let vc = v.narrow(2, lo, end - lo)?.contiguous()?;
            // Scores [B, KV, rep, c, end]; softmax in f32 whatever the model dtype, as
            // transformers' eager attention does.
            let att = qc.matmul(&kc.t()?)?.reshape((b, kvh, rep, c, end - lo))?;
            let att = match mask {
                Some((_, m)) => crate::cpu::masked_softmax(&att, m)?,
                None => crate::cpu::causal_softmax(&att, offset + c0)?,
            }
            .reshape((b, kvh, rep * c, end - lo))?;
            outs.push(att.matmul(&vc)?.reshape((b, kvh, rep, c, d))?);
        }
        let y = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 3)?
        };
        Ok(y.reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))?)
    }
}

impl Mlp {
    fn gate_up(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        SparseLinear::forward_many(&[&self.gate_proj, &self.up_proj], x)
    }

    /// Returns the input of down_proj, `silu(gate(x)) * up(x)`.
    fn hidden(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up(x)?;
        crate::cpu::silu_mul(&gu[0], &gu[1])
    }

    /// `down(silu(gate(x)) * up(x))`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up(x)?;
        self.down_proj.forward_silu_mul(&gu[0], &gu[1])
    }
}

impl Block {
    /// The attention half: `(x + o_proj(attention(norm(x))), norm(x), attention output)`.
    fn attend(&self, x: &Tensor, at: At) -> Result<(Tensor, Tensor, Tensor)> {
        let attn_in = self.input_layernorm.forward(x)?;
        let o_in = self.self_attn.heads(&attn_in, at)?;
        let x = (x + self.self_attn.o_proj.forward(&o_in)?)?;
        Ok((x, attn_in, o_in))
    }

    /// The block up to down_proj's input: the residual stream after attention and the four
    /// linear inputs.
    fn run_to_down(&self, x: &Tensor, at: At) -> Result<(Tensor, Taps)> {
        let (x, attn_in, o_in) = self.attend(x, at)?;
        let mlp_in = self.post_attention_layernorm.forward(&x)?;
        let down_in = self.mlp.hidden(&mlp_in)?;
        let taps = Taps {
            attn_in,
            o_in,
            mlp_in,
            down_in,
        };
        Ok((x, taps))
    }

    fn run(&self, x: &Tensor, at: At) -> Result<Tensor> {
        let (x, _, _) = self.attend(x, at)?;
        self.add_mlp(&x)
    }

    /// `x + mlp(norm(x))`.
    fn add_mlp(&self, x: &Tensor) -> Result<Tensor> {
        let mlp_in = self.post_attention_layernorm.forward(x)?;
        Ok((x + self.mlp.forward(&mlp_in)?)?)
    }

    /// [`Self::run`] on a packed row `[1, N, hidden]` where only the rows `rows` of the output
    /// are wanted (`[1, rows, hidden]`): attention runs for every row (they are the keys), its
    /// output projection, the residual and the MLP for `rows` alone.
    fn run_at(&self, x: &Tensor, rope: &Rope, packing: &Packing, rows: &Tensor) -> Result<Tensor> {
        let attn_in = self.input_layernorm.forward(x)?;
        let o_in = self
            .self_attn
            .heads(&attn_in, At::fresh(rope, Some(packing)))?;
        let (x, o_in) = (x.index_select(rows, 1)?, o_in.index_select(rows, 1)?);
        self.add_mlp(&(x + self.self_attn.o_proj.forward(&o_in)?)?)
    }

    /// The block's tensors under their checkpoint names as block `i`, in checkpoint order.
    pub fn named_tensors(&self, i: usize) -> Result<Vec<(String, Tensor)>> {
        let p = format!("model.layers.{i}");
        let mut out = vec![(
            format!("{p}.input_layernorm.weight"),
            self.input_layernorm.weight.clone(),
        )];
        for (name, lin) in self.linears() {
            // Packed weights unpacked: what is written or hashed is always the dense checkpoint.
            out.push((format!("{p}.{name}.weight"), lin.dense_weight()?));
            if let Some(bias) = &lin.bias {
                out.push((format!("{p}.{name}.bias"), bias.clone()));
            }
            if name == "self_attn.o_proj" {
                let a = &self.self_attn;
                for (norm, n) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                    if let Some(n) = n {
                        out.push((format!("{p}.self_attn.{norm}.weight"), n.weight.clone()));
                    }
                }
            }
        }
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            self.post_attention_layernorm.weight.clone(),
        ));
        Ok(out)
    }

    /// Takes over the adapters attached to `other`'s linears (the same trainable variables).
    pub fn adopt_adapters(&mut self, other: &Block) {
        for ((_, mine), (_, theirs)) in self.linears_mut().into_iter().zip(other.linears()) {
            mine.adapter = theirs.adapter.clone();
        }
    }

    /// The seven linears with their names, in checkpoint order.
    pub fn linears(&self) -> [(&'static str, &SparseLinear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        let [q, k, v, o, gate, up, down] = LINEARS.map(|l| l.1);
        [
            (q, &a.q_proj),
            (k, &a.k_proj),
            (v, &a.v_proj),
            (o, &a.o_proj),
            (gate, &m.gate_proj),
            (up, &m.up_proj),
            (down, &m.down_proj),
        ]
    }

    /// The linear called `name` (e.g. `mlp.down_proj`).
    pub fn linear(&self, name: &str) -> Option<&SparseLinear> {
        self.linears()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| l)
    }

    pub fn linear_mut(&mut self, name: &str) -> Option<&mut SparseLinear> {
        self.linears_mut()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| l)
    }

    pub fn linears_mut(&mut self) -> [(&'static str, &mut SparseLinear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        let [q, k, v, o, gate, up, down] = LINEARS.map(|l| l.1);
        [
            (q, &mut a.q_proj),
            (k, &mut a.k_proj),
            (v, &mut a.v_proj),
            (o, &mut a.o_proj),
            (gate, &mut m.gate_proj),
            (up, &mut m.up_proj),
            (down, &mut m.down_proj),
        ]
    }
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when the output embedding is tied to `embed_tokens`.
    pub lm_head: Option<SparseLinear>,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl Llama {
    /// Builds the model from `src`, checking every tensor's shape against `cfg`.
    pub fn load(
        cfg: LlamaConfig,
        src: &dyn TensorSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut model = Self::load_shell(cfg, src, dtype, device, true)?;
        let layers = (0..model.cfg.num_hidden_layers)
            .map(|i| model.load_block(src, i))
            .collect::<Result<Vec<_>>>()?;
        model.layers = layers;
        Ok(model)
    }

    /// Everything but the blocks (`layers` is empty): final norm, rotary tables and, with
    /// `embeddings`, the embeddings and head, for jobs that bring the blocks in one at a time
    /// ([`Self::load_block`]). Without `embeddings` the input embeddings are an empty
    /// placeholder and there is no head until [`Self::load_embeddings`].
    pub fn load_shell(
        cfg: LlamaConfig,
        src: &dyn TensorSource,
        dtype: DType,
        device: &Device,
        embeddings: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let l = Loader { src, dtype, device };
        let hd = cfg.hidden_size;
        let norm = RmsNorm {
            weight: l.req("model.norm.weight", &[hd])?,
            eps: cfg.rms_norm_eps,
        };
        let rope = Rope::new(&cfg, super::dtype::compute_dtype(dtype, device), device)?;
        let mut shell = Self {
            embed_tokens: Tensor::zeros((0, hd), dtype, device)?,
            cfg,
            layers: Vec::new(),
            norm,
            lm_head: None,
            rope,
            device: device.clone(),
            dtype,
        };
        if embeddings {
            shell.load_embeddings(src, true, true)?;
        }
        Ok(shell)
    }

    /// Reads from `src` what embedding the inputs (`input`) and scoring the outputs (`output`)
    /// need: the input embeddings, and the head (the same table when tied).
    pub fn load_embeddings(
        &mut self,
        src: &dyn TensorSource,
        input: bool,
        output: bool,
    ) -> Result<()> {
        let l = Loader {
            src,
            dtype: self.dtype,
            device: &self.device,
        };
        let (hd, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let tied = self.cfg.tie_word_embeddings;
        if input || (output && tied) {
            self.embed_tokens = l.req("model.embed_tokens.weight", &[v, hd])?;
        }
        if let (true, Some(k)) = (
            output,
            super::packed::packing_of(&self.cfg, "lm_head.weight"),
        ) {
            let m = super::packed::read(src, super::packed::HEAD, v, hd, k)?;
            self.lm_head = Some(SparseLinear::from_packed(
                m,
                None,
                self.dtype,
                &self.device,
            )?);
        } else if output && !tied {
            self.lm_head = Some(SparseLinear::with_weight(
                l.req("lm_head.weight", &[v, hd])?,
                None,
            )?);
        } else if output && tied {
            // A 16-bit tied head on the CPU: a packed copy of the table for the products.
            let head = SparseLinear::with_weight(self.embed_tokens.clone(), None)?;
            self.lm_head = head.packed.is_some().then_some(head);
        }
        Ok(())
    }

    /// Block `i` read from `src` in this model's dtype and on its device, shapes checked.
    pub fn load_block(&self, src: &dyn TensorSource, i: usize) -> Result<Block> {
        read_block(&self.cfg, src, self.dtype, &self.device, i)
    }

    /// Runs attention through the composed candle ops (the reference) instead of the fused CPU
    /// kernel (forward and backward) that is otherwise used for f32 on the CPU.
    pub fn set_reference_attention(&mut self, on: bool) {
        for layer in &mut self.layers {
            layer.self_attn.reference = on;
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype activations are computed in ([`super::dtype::compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        super::dtype::compute_dtype(self.dtype, &self.device)
    }

    /// Every tensor under its checkpoint name, in checkpoint order (tied heads omitted).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, b) in self.layers.iter().enumerate() {
            out.extend(b.named_tensors(i)?);
        }
        out.push(("model.norm.weight".into(), self.norm.weight.clone()));
        if let Some(h) = self.untied_head() {
            out.push(("lm_head.weight".into(), h.dense_weight()?));
        }
        Ok(out)
    }

    /// Token embeddings `[B, T, hidden]` for ids `[B, T]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if self.embed_tokens.dims()[0] == 0 {
            bail!("internal: the embeddings of this model are not loaded");
        }
        let vocab = self.cfg.vocab_size as u32;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let max = flat.max(0)?.to_scalar::<u32>()?;
        if max >= vocab {
            bail!("token id {max} is outside the vocabulary (vocab_size {vocab}): tokenizer and model do not match");
        }
        Ok(self
            .embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.hidden_size))?
            .to_dtype(self.compute_dtype())?)
    }

    /// Runs block `i` on hidden states `x` at positions `0 .. T` (no cache).
    pub fn block_forward(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        self.run_block(&self.layers[i], x)
    }

    /// Runs `block` (one of this model's, held outside `layers`) on hidden states `x` at
    /// positions `0 .. T` (no cache).
    pub fn run_block(&self, block: &Block, x: &Tensor) -> Result<Tensor> {
        block.run(x, At::fresh(&self.rope, None))
    }

    /// Runs block `i` on a packed row of hidden states `x` `[1, N, hidden]`.
    pub fn block_forward_packed(&self, i: usize, x: &Tensor, packing: &Packing) -> Result<Tensor> {
        self.layers[i].run(x, At::fresh(&self.rope, Some(packing)))
    }

    /// The inputs of block `i`'s linears for hidden states `x` (positions `0 .. T`, no cache).
    /// The block's output is not computed: down_proj's input is the last thing calibration needs.
    pub fn block_taps(&self, i: usize, x: &Tensor) -> Result<Taps> {
        self.taps_of(&self.layers[i], x)
    }

    /// The last block's step of [`Self::hidden_states_packed_at`] for `block` held outside
    /// `layers`: its output at the packed rows `rows` only.
    pub fn run_block_at(
        &self,
        block: &Block,
        x: &Tensor,
        packing: &Packing,
        rows: &Tensor,
    ) -> Result<Tensor> {
        block.run_at(x, &self.rope, packing, rows)
    }

    /// [`Self::block_forward_packed`] of `block` held outside `layers`.
    pub fn run_block_packed(&self, block: &Block, x: &Tensor, packing: &Packing) -> Result<Tensor> {
        block.run(x, At::fresh(&self.rope, Some(packing)))
    }

    /// Gives every block zero-memory stand-ins of its weights (the right shapes, one value
    /// broadcast), for jobs that keep only the adapters in `layers` and read the frozen weights
    /// from disk when a block runs (see `Block::adopt_adapters`).
    pub fn stand_in_blocks(&mut self) -> Result<()> {
        let shapes: std::collections::HashMap<String, Vec<usize>> =
            super::layout::layout(&self.cfg).into_iter().collect();
        let src = StandIns {
            shapes,
            dtype: self.dtype,
            device: self.device.clone(),
        };
        // Stand-ins are dense, whatever the checkpoint stores.
        let cfg = super::packed::dense_config(&self.cfg);
        self.layers = (0..self.cfg.num_hidden_layers)
            .map(|i| read_block(&cfg, &src, self.dtype, &self.device, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    /// [`Self::block_taps`] of `block` held outside `layers`.
    pub fn taps_of(&self, block: &Block, x: &Tensor) -> Result<Taps> {
        Ok(block.run_to_down(x, At::fresh(&self.rope, None))?.1)
    }

    /// Final hidden states `[B, T, hidden]` (after the last RMSNorm).
    pub fn hidden_states(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mut x = self.embed(ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.kv[i]);
            let at = At {
                rope: &self.rope,
                cache: slot,
                offset: past,
                packing: None,
            };
            x = layer.run(&x, at)?;
        }
        self.norm.forward(&x)
    }

    /// Final hidden states `[1, N, hidden]` of a packed row of tokens `ids` (`[1, N]`).
    pub fn hidden_states_packed(&self, ids: &Tensor, packing: &Packing) -> Result<Tensor> {
        self.packed(ids, packing, None)
    }

    /// Final hidden states `[rows, hidden]` of a packed row at the positions `rows` (u32) only,
    /// for scoring a few positions: the last block's output projection and MLP run for those
    /// rows alone. Equals `hidden_states_packed` followed by selecting `rows`.
    pub fn hidden_states_packed_at(
        &self,
        ids: &Tensor,
        packing: &Packing,
        rows: &Tensor,
    ) -> Result<Tensor> {
        Ok(self.packed(ids, packing, Some(rows))?.squeeze(0)?)
    }

    fn packed(&self, ids: &Tensor, packing: &Packing, rows: Option<&Tensor>) -> Result<Tensor> {
        if ids.dims() != [1, packing.len()] {
            bail!(
                "internal: packed ids {:?} do not match {} packed rows",
                ids.dims(),
                packing.len()
            );
        }
        let mut x = self.embed(ids)?;
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            x = match rows {
                Some(rows) if i + 1 == n => layer.run_at(&x, &self.rope, packing, rows)?,
                _ => layer.run(&x, At::fresh(&self.rope, Some(packing)))?,
            };
        }
        if let (0, Some(rows)) = (n, rows) {
            x = x.index_select(rows, 1)?;
        }
        self.norm.forward(&x)
    }

    /// The output embedding `[vocab, hidden]` (`embed_tokens` when tied), dense.
    fn output_weight(&self) -> Result<Tensor> {
        match &self.lm_head {
            Some(h) => h.dense_weight(),
            None => Ok(self.embed_tokens.clone()),
        }
    }

    /// The head when the checkpoint stores it apart from the input embedding (a packed head of a
    /// tied model is the embedding's packed copy, not a tensor of its own).
    pub fn untied_head(&self) -> Option<&SparseLinear> {
        self.lm_head
            .as_ref()
            .filter(|_| !self.cfg.tie_word_embeddings)
    }

    /// Bytes of weights one decode step reads: every block's tensors, the final norm, the output
    /// embedding, and one row of the input embedding. Decoding is bound by these bytes.
    pub fn decode_weight_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let blocks: u64 = self
            .layers
            .iter()
            .map(|b| {
                let norms = [&b.self_attn.q_norm, &b.self_attn.k_norm]
                    .into_iter()
                    .flatten()
                    .chain([&b.input_layernorm, &b.post_attention_layernorm]);
                b.linears()
                    .into_iter()
                    .map(|(_, l)| l.weight_bytes() + l.bias.as_ref().map_or(0, bytes))
                    .chain(norms.map(|n| bytes(&n.weight)))
                    .sum::<u64>()
            })
            .sum();
        let row = (self.cfg.hidden_size * self.dtype.size_in_bytes()) as u64;
        let head = match &self.lm_head {
            Some(h) => h.weight_bytes(),
            None => bytes(&self.embed_tokens),
        };
        blocks + bytes(&self.norm.weight) + head + row
    }

    /// Logits from hidden states: `[..., hidden]` → `[..., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(h) => h.forward(hidden),
            None => SparseLinear::new(self.embed_tokens.clone(), None).forward(hidden),
        }
    }

    /// `−log p(target)` per row (f32 `[T]`) for final hidden states `[T, hidden]` and targets
    /// `[T]`, differentiable when `hidden` is. The logits are computed `LOGIT_CHUNK` rows at a
    /// time (fused with the log-softmax on the CPU when no gradient is needed), so they never
    /// exist for all rows at once.
    pub fn token_nll(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        const LOGIT_CHUNK: usize = 512;
        let fused = self.lm_head.as_ref().is_none_or(|h| h.bias.is_none())
            && hidden.device().is_cpu()
            && hidden.dtype() == DType::F32
            && !hidden.track_op();
        if !fused {
            let t = hidden.dims()[0];
            let mut parts = Vec::with_capacity(t.div_ceil(LOGIT_CHUNK));
            for start in (0..t).step_by(LOGIT_CHUNK) {
                let n = LOGIT_CHUNK.min(t - start);
                let logits = self.logits(&hidden.narrow(0, start, n)?)?;
                parts.push(crate::cpu::token_nll(
                    &logits,
                    &targets.narrow(0, start, n)?,
                )?);
            }
            return Ok(Tensor::cat(&parts, 0)?);
        }
        match self.lm_head.as_ref().and_then(|h| h.packed.as_deref()) {
            Some(p) => crate::cpu::lm_head_nll_packed(hidden, p, targets),
            None => crate::cpu::lm_head_nll(hidden, &self.output_weight()?, targets),
        }
    }

    /// Logits for every position: `[B, T]` → `[B, T, vocab]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden_states(ids, None)?)
    }

    /// One generation step with a KV cache: logits of the last position, `[B, vocab]`.
    pub fn forward_step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.cached_hidden(ids, cache)?;
        let t = h.dims()[1];
        self.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)
    }

    /// Logits of every new position with a KV cache, `[B, T, vocab]`.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.cached_hidden(ids, cache)?;
        self.logits(&h)
    }

    fn cached_hidden(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.kv.len() != self.layers.len() {
            *cache = KvCache::new(self.layers.len());
        }
        self.hidden_states(ids, Some(cache))
    }
}
