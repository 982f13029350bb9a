//! A fingerprint of a model's weights: adapters record the hash of the model they were trained
//! on and check it when applied.

use super::Llama;
use crate::error::Result;
use crate::rng::splitmix64;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// [`WeightsHasher`] over every tensor of `model`, in checkpoint order.
pub fn weights_hash(model: &Llama) -> Result<String> {
    let mut h = WeightsHasher::default();
    // Block by block: a packed model is unpacked one block at a time.
    h.add("model.embed_tokens.weight", &model.embed_tokens)?;
    for (i, b) in model.layers.iter().enumerate() {
        for (name, t) in b.named_tensors(i)? {
            h.add(&name, &t)?;
        }
    }
    h.add("model.norm.weight", &model.norm.weight)?;
    if let Some(head) = model.untied_head() {
        h.add("lm_head.weight", &head.dense_weight()?)?;
    }
    Ok(h.finish())
}

/// [`weights_hash`] fed one tensor at a time, in checkpoint order.
pub struct WeightsHasher {
    h: u64,
}

impl Default for WeightsHasher {
    fn default() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl WeightsHasher {
    fn mix(&mut self, v: u64) {
        let mut s = self.h ^ v;
        self.h = splitmix64(&mut s);
    }

    /// Mixes in `name`, the shape and the values as f32 (one hash per 2^16 values). A 16-bit
    /// tensor is converted a slice at a time, so no f32 copy of a whole embedding table exists.
    pub fn add(&mut self, name: &str, t: &Tensor) -> Result<()> {
        const CHUNK: usize = 1 << 16;
        name.bytes().for_each(|b| self.mix(b as u64));
        t.dims().iter().for_each(|&d| self.mix(d as u64));
        let flat = t.flatten_all()?;
        let n = flat.elem_count();
        for start in (0..n).step_by(CHUNK * 64) {
            let len = (CHUNK * 64).min(n - start);
            let part = flat
                .narrow(0, start, len)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?;
            let hashes = crate::cpu::with_f32(&part, |v| {
                v.par_chunks(CHUNK)
                    .map(|c| {
                        let mut s = 0x9E37_79B9_7F4A_7C15u64;
                        for x in c {
                            s = (s ^ x.to_bits() as u64)
                                .wrapping_mul(0x0100_0000_01B3)
                                .rotate_left(23);
                        }
                        s
                    })
                    .collect::<Vec<u64>>()
            })?;
            hashes.into_iter().for_each(|v| self.mix(v));
        }
        Ok(())
    }

    pub fn finish(&self) -> String {
        format!("{:016x}", self.h)
    }
}
