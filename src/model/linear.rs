//! `SparseLinear`: a frozen `[out, in]` weight (zeros are the sparsity mask, never stored twice)
//! an optional bias and an optional adapter.

use crate::error::Result;
use candle_core::{DType, Tensor, D};

#[derive(Debug, Clone)]
pub struct SparseLinear {
    /// `[out_features, in_features]`, the Hugging Face layout.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A trainable adapter (SPP or LoRA) applied on top of the frozen weight.
    pub adapter: Option<crate::adapter::Adapter>,
}

impl SparseLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
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
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_f.max(1);
        let x = x.reshape((rows, in_f))?;
        let y = match &self.adapter {
            Some(ad) => ad.forward(&x, &self.weight)?,
            None => super::ops::frozen_matmul(&x, &self.weight)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap_or(&mut 0) = self.out_features();
        Ok(y.reshape(out_dims)?)
    }

    /// Fraction of exactly-zero weights.
    pub fn sparsity(&self) -> Result<f64> {
        let zeros = self
            .weight
            .eq(0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        Ok(zeros / self.weight.elem_count() as f64)
    }

    /// Whether every group of `m` consecutive inputs of every row has at most `n` non-zeros.
    pub fn satisfies_n_m(&self, n: usize, m: usize) -> Result<bool> {
        let (out_f, in_f) = (self.out_features(), self.in_features());
        if m == 0 || in_f % m != 0 {
            return Ok(false);
        }
        let nonzero = self.weight.ne(0.0)?.to_dtype(DType::F32)?;
        let per_group = nonzero.reshape((out_f, in_f / m, m))?.sum(D::Minus1)?;
        let worst = per_group.max_all()?.to_scalar::<f32>()?;
        Ok(worst as usize <= n)
    }
}
