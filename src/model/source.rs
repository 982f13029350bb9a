//! Where a model's tensors come from: the [`TensorSource`] trait, an in-memory map, and the
//! zero-memory stand-ins.

use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Where a model's tensors come from (memory-mapped safetensors, an in-memory map, a GGUF…).
pub trait TensorSource {
    /// The tensor called `name`, or `None` when the source has no such tensor.
    fn get(&self, name: &str) -> Result<Option<Tensor>>;
    /// Where the tensors live, for error messages.
    fn describe(&self) -> String;
    /// Whether the loader checks the values (NaN, infinity): not for stand-ins that hold none,
    /// nor for sources that check each tensor as they read it.
    fn needs_finite_check(&self) -> bool {
        true
    }
    /// Checks, where the source can without reading the data (a file header), that `name`
    /// exists with `shape` and a dtype spp reads.
    fn check_header(&self, _name: &str, _shape: &[usize]) -> Result<()> {
        Ok(())
    }
}

impl TensorSource for std::collections::HashMap<String, Tensor> {
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        Ok(self.get(name).cloned())
    }
    fn describe(&self) -> String {
        "in-memory tensors".into()
    }
}

/// Zero-memory tensors of the right shapes (see `Llama::stand_in_blocks`).
pub(super) struct StandIns {
    pub(super) shapes: std::collections::HashMap<String, Vec<usize>>,
    pub(super) dtype: DType,
    pub(super) device: Device,
}

impl TensorSource for StandIns {
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        match self.shapes.get(name) {
            Some(shape) => Ok(Some(
                Tensor::zeros(1, self.dtype, &self.device)?.broadcast_as(shape.as_slice())?,
            )),
            None => Ok(None),
        }
    }
    fn describe(&self) -> String {
        "stand-in weights".into()
    }
    fn needs_finite_check(&self) -> bool {
        false
    }
}

/// Refuses a weight holding NaN or ±inf: such a model computes plausible-looking but wrong
/// numbers (a NaN in one attention head can vanish behind the softmax's masking).
pub fn check_finite(t: &Tensor, name: &str, src: &dyn TensorSource) -> Result<()> {
    if crate::cpu::has_non_finite(t)? {
        return Err(non_finite(name, src));
    }
    Ok(())
}

/// The error for tensor `name` of `src` holding NaN or infinite values.
pub fn non_finite(name: &str, src: &dyn TensorSource) -> crate::error::Error {
    crate::error::Error::Msg(format!(
        "{}: tensor {name} holds NaN or infinite values; the weights are corrupt — re-download or re-convert the model",
        src.describe()
    ))
}
