//! Everything that runs on raw f32 memory on the CPU, and every `unsafe` block of the library:
//! the SIMD kernels, the GEMM, the fused tensor ops (with their candle references), the fused
//! attention, the non-finite scan, and the few calls into the OS and the allocator. The rest of
//! the crate sees only the safe functions re-exported here.

pub mod attention;
pub mod decode;
mod finite;
mod gemm;
mod kernels;
#[cfg(target_arch = "x86_64")]
mod microkernel;
mod ops;
mod os;
mod sparse;

pub use finite::{copy_checked, has_non_finite};
pub use gemm::{gemm_abt, gemm_abt_many, gemm_abt_reference, syrk_lower};
pub(crate) use gemm::{gemm_lhs_abt_many, Lhs, Weight};
pub(crate) use kernels::{axpy, dot};
pub use ops::{
    causal_softmax, causal_softmax_reference, frozen_matmul, frozen_matmul_many,
    frozen_matmul_reference, frozen_matmul_silu, lm_head_nll, lm_head_nll_packed, masked_softmax,
    packed_matmul_silu, rms_norm, rms_norm_reference, rope, rope_reference, silu_mul,
    silu_mul_reference, token_nll, token_nll_reference,
};
pub use os::{keep_freed_memory, return_freed_memory};
pub(crate) use os::{map_safetensors, stop_self};
#[cfg(unix)]
pub(crate) use os::{on_interrupt, send_signal};
pub use sparse::{
    matvec_many, packed_matmul, packed_matmul_many, PackedMatrix, PackedValues, SparseKernel,
    SparseLayout, ValueKind, UNPACK_ROWS,
};

use candle_core::{CpuStorage, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fused op: expected a contiguous f32 tensor"),
    }
}

/// A pointer that tasks writing disjoint rows may share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the users (attention tasks, GEMM threads) each write a disjoint set of elements.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY (of the callers): offsets stay inside the buffer the pointer came from.
        self.0.wrapping_add(offset)
    }
}

/// `n` floats computed chunk by chunk in parallel, without zero-filling the buffer first:
/// `vec![0.0; n]` is a pass over memory on the calling thread alone, while the workers wait (about
/// 3% of a packed forward, `perf record` of `spp eval tasks`). `fill(i, dst)` gets chunk `i`
/// (`chunk` floats, the last one shorter).
///
/// # Safety
/// `fill` writes every element of `dst` before reading it.
unsafe fn par_fill(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, dst)| {
            // SAFETY: f32 has no invalid bit patterns and `fill` only writes before it reads.
            let dst = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(i, dst)
        });
    // SAFETY: every chunk was written by `fill` (the caller's promise).
    unsafe { v.set_len(n) };
    v
}

/// Runs `f` on the contiguous f32 data of a tensor: in place for a contiguous f32 CPU tensor,
/// else on a copy (strided, another dtype or another device).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => Ok(f(f32_slice(c, l)?)),
        _ => candle_core::bail!("fused op: expected a CPU tensor"),
    }
}

/// A new f32 CPU tensor from a buffer.
pub(crate) fn f32_tensor(v: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}
