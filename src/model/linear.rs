//! `SparseLinear`: a frozen `[out, in]` weight (zeros are the sparsity mask, never stored twice),
//! dense or packed ([`crate::cpu::PackedMatrix`]), an optional bias and an optional adapter.

use crate::cpu::PackedMatrix;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The seven linears of a block: the short name `--targets` takes and the checkpoint name
/// (`model.layers.{i}.{name}.weight`), in checkpoint order.
pub const LINEARS: [(&str, &str); 7] = [
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
];

/// A trainable branch on a frozen linear, run in place of the plain product. The model only
/// calls it; the adapters (`crate::adapter`) implement it and reach their own type back through
/// `Any`, so the model does not depend on them.
pub trait LinearAdapter: std::any::Any + std::fmt::Debug + Send + Sync {
    /// `y` `[rows, out]` for `x` `[rows, in]` through the frozen linear `lin` (its weight
    /// `[out, in]`, dense or packed).
    fn forward(&self, x: &Tensor, lin: &SparseLinear) -> Result<Tensor>;
}

#[derive(Debug, Clone)]
pub struct SparseLinear {
    /// `[out_features, in_features]`, the Hugging Face layout. For a packed weight a stand-in of
    /// the right shape, dtype and device that holds no memory: read the values through
    /// [`SparseLinear::dense_weight`], replace them through [`SparseLinear::set_weight`].
    pub weight: Tensor,
    /// The weight in packed form, when it was loaded packed (products run on it).
    pub packed: Option<Arc<PackedMatrix>>,
    pub bias: Option<Tensor>,
    /// A trainable adapter (SPP or LoRA) applied on top of the frozen weight.
    pub adapter: Option<Arc<dyn LinearAdapter>>,
}

impl SparseLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            packed: None,
            bias,
            adapter: None,
        }
    }

    /// A linear whose weight is `w`. On the CPU a 16-bit weight is held as a dense packed matrix
    /// of its own bits ([`PackedMatrix::dense16`]), which the products read without widening it
    /// whole; elsewhere, and for f32, as the tensor itself.
    pub fn with_weight(w: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let mut l = Self::new(w.clone(), bias);
        l.set_weight(w)?;
        Ok(l)
    }

    /// A linear whose weight is `packed`; `dtype` and `device` are the model's.
    pub fn from_packed(
        packed: PackedMatrix,
        bias: Option<Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let weight = Tensor::zeros(1, dtype, device)?.broadcast_as((packed.rows, packed.cols))?;
        Ok(Self {
            weight,
            packed: Some(Arc::new(packed)),
            bias,
            adapter: None,
        })
    }

    /// The weight as a dense tensor (unpacked when packed) in the weight's dtype and device.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.packed {
            None => Ok(self.weight.clone()),
            Some(p) if self.stored_packed().is_none() => Ok(p.dense16_tensor()?),
            Some(p) => Ok(crate::cpu::f32_tensor(p.unpack(), (p.rows, p.cols))?
                .to_dtype(self.weight.dtype())?
                .to_device(self.weight.device())?),
        }
    }

    /// Replaces the weight with the dense `w` (the packed form, if any, is dropped; a 16-bit
    /// weight on the CPU is held as [`Self::with_weight`] says).
    pub fn set_weight(&mut self, w: Tensor) -> Result<()> {
        match crate::cpu::PackedMatrix::dense16(&w)? {
            Some(p) => {
                let (dtype, device) = (w.dtype(), w.device().clone());
                *self = Self::from_packed(p, self.bias.take(), dtype, &device)?
                    .with_adapter(self.adapter.take());
            }
            None => {
                self.weight = w;
                self.packed = None;
            }
        }
        Ok(())
    }

    fn with_adapter(mut self, adapter: Option<Arc<dyn LinearAdapter>>) -> Self {
        self.adapter = adapter;
        self
    }

    /// The packed form when it is more than the weight's own dtype held dense (a 16-bit weight on
    /// the CPU is always held packed; a checkpoint stores it as a plain tensor).
    pub fn stored_packed(&self) -> Option<&PackedMatrix> {
        let plain16 = |p: &PackedMatrix| {
            p.layout == crate::cpu::SparseLayout::Dense
                && matches!(
                    (&p.values, self.weight.dtype()),
                    (crate::cpu::PackedValues::Bf16(_), DType::BF16)
                        | (crate::cpu::PackedValues::F16(_), DType::F16)
                )
        };
        self.packed.as_deref().filter(|p| !plain16(p))
    }

    /// Bytes of the weight a product reads: the packed form's, else the dense tensor's.
    pub fn weight_bytes(&self) -> u64 {
        match &self.packed {
            Some(p) => p.bytes(),
            None => (self.weight.elem_count() * self.weight.dtype().size_in_bytes()) as u64,
        }
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `y = x Wᵀ + b` for `x` of shape `[..., in]`. The leading dimensions are flattened so the
    /// product is one 2-D GEMM against the transposed (strided, not copied) weight; the weight
    /// is frozen (no gradient flows to it).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (dims, x) = flatten(x)?;
        let y = match (&self.adapter, &self.packed) {
            (Some(ad), _) => ad.forward(&x, self)?,
            (None, Some(p)) => crate::cpu::packed_matmul(&x, p)?.to_dtype(x.dtype())?,
            (None, None) => crate::cpu::frozen_matmul(&x, &self.weight)?,
        };
        self.finish(y, &dims)
    }

    /// `y` (`[rows, out]`) plus the bias, shaped like the input `dims` with `out` last.
    fn finish(&self, y: Tensor, dims: &[usize]) -> Result<Tensor> {
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap_or(&mut 0) = self.out_features();
        Ok(y.reshape(out_dims)?)
    }

    /// Whether a product over `x` runs on the packed weight (no gradient; else on the unpacked
    /// weight, whose product has a backward).
    fn runs_packed(&self, x: &Tensor) -> bool {
        self.packed.is_some() && !x.track_op()
    }

    /// The outputs of several linears that read the same input (q, k, v; gate, up): without
    /// adapters, one product over all their weights ([`crate::cpu::packed_matmul_many`] for
    /// packed weights, else [`crate::cpu::frozen_matmul_many`]).
    pub fn forward_many(lins: &[&SparseLinear], x: &Tensor) -> Result<Vec<Tensor>> {
        if lins.iter().any(|l| l.adapter.is_some()) {
            return lins.iter().map(|l| l.forward(x)).collect();
        }
        let (dims, x) = flatten(x)?;
        if lins.iter().all(|l| l.runs_packed(&x)) {
            let ps: Vec<&PackedMatrix> = lins.iter().filter_map(|l| l.packed.as_deref()).collect();
            return crate::cpu::packed_matmul_many(&x, &ps)?
                .into_iter()
                .zip(lins)
                .map(|(y, l)| l.finish(y.to_dtype(x.dtype())?, &dims))
                .collect();
        }
        let dense: Vec<Tensor> = lins
            .iter()
            .map(|l| l.dense_weight())
            .collect::<Result<_>>()?;
        let ws: Vec<&Tensor> = dense.iter().collect();
        crate::cpu::frozen_matmul_many(&x, &ws)?
            .into_iter()
            .zip(lins)
            .map(|(y, l)| l.finish(y, &dims))
            .collect()
    }

    /// `forward(silu(g) ⊙ u)` (down_proj of the SwiGLU MLP); without an adapter through
    /// [`crate::cpu::frozen_matmul_silu`] (or its packed form), which never stores the product.
    pub fn forward_silu_mul(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        let ((dims, g), (_, u)) = (flatten(g)?, flatten(u)?);
        if self.adapter.is_some() || (self.packed.is_some() && g.track_op()) {
            return self.forward(&crate::cpu::silu_mul(&g, &u)?.reshape(dims.as_slice())?);
        }
        let y = match &self.packed {
            Some(p) => crate::cpu::packed_matmul_silu(&g, &u, p)?.to_dtype(g.dtype())?,
            None => crate::cpu::frozen_matmul_silu(&g, &u, &self.weight)?,
        };
        self.finish(y, &dims)
    }

    /// Fraction of exactly-zero weights.
    pub fn sparsity(&self) -> Result<f64> {
        Ok(crate::cpu::with_f32(&self.dense_weight()?, zero_fraction)?)
    }

    /// Whether every group of `m` consecutive inputs of every row has at most `n` non-zeros.
    pub fn satisfies_n_m(&self, n: usize, m: usize) -> Result<bool> {
        let cols = self.in_features();
        Ok(crate::cpu::with_f32(&self.dense_weight()?, |w| {
            satisfies_n_m(w, cols, n, m)
        })?)
    }
}

/// `x` `[..., in]` as one `[rows, in]` matrix, with its original dims.
fn flatten(x: &Tensor) -> Result<(Vec<usize>, Tensor)> {
    let dims = x.dims().to_vec();
    let in_f = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / in_f.max(1);
    Ok((dims, x.reshape((rows, in_f))?))
}

/// Fraction of exactly-zero entries.
pub fn zero_fraction(w: &[f32]) -> f64 {
    w.par_iter().filter(|&&v| v == 0.0).count() as f64 / w.len().max(1) as f64
}

/// Whether every group of `m` consecutive inputs of every row of `w` (`[_, cols]`) has at most
/// `n` non-zeros.
pub fn satisfies_n_m(w: &[f32], cols: usize, n: usize, m: usize) -> bool {
    m > 0
        && cols.is_multiple_of(m)
        && w.par_chunks(m)
            .all(|g| g.iter().filter(|&&v| v != 0.0).count() <= n)
}
