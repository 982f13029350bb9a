//! Non-finite (NaN / ±inf) weights, found with one parallel pass over the bits.

use crate::error::Result;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Whether any element of a slice is NaN or ±inf, by the exponent bits (all ones), scanned in
/// parallel chunks without branching.
fn any_non_finite<T: Sync>(v: &[T], bits: impl Fn(&T) -> bool + Sync) -> bool {
    v.par_chunks(1 << 16)
        .any(|c| c.iter().fold(false, |acc, x| acc | bits(x)))
}

/// Whether `t` holds a NaN or an infinity. Integer tensors hold neither; tensors on a GPU are
/// checked with one reduction there.
pub fn has_non_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(false);
    }
    if !matches!(t.device(), Device::Cpu) {
        // 0·x is 0 for finite x and NaN otherwise.
        let d = t
            .to_dtype(DType::F32)?
            .affine(0.0, 0.0)?
            .sum_all()?
            .to_scalar::<f32>()?;
        return Ok(d != 0.0);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(false);
    };
    let (start, end) = (
        layout.start_offset(),
        layout.start_offset() + t.elem_count(),
    );
    Ok(match cpu {
        CpuStorage::F32(v) => {
            any_non_finite(&v[start..end], |x| x.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        }
        CpuStorage::F16(v) => any_non_finite(&v[start..end], |x| x.to_bits() & 0x7c00 == 0x7c00),
        CpuStorage::BF16(v) => any_non_finite(&v[start..end], |x| x.to_bits() & 0x7f80 == 0x7f80),
        CpuStorage::F64(v) => any_non_finite(&v[start..end], |x| !x.is_finite()),
        _ => false,
    })
}

/// Copies `bytes` (little-endian values of `W` = 2 or 4 bytes) into a new vector through
/// `from_bits`, and says whether any value has all the exponent bits of `exp` set (NaN or ±inf):
/// the check rides on the copy instead of a second pass over the loaded weights. Large inputs
/// are split over the threads.
pub fn copy_checked<const W: usize, T: Send>(
    bytes: &[u8],
    exp: u32,
    from_bits: impl Fn(u32) -> T + Sync,
) -> (Vec<T>, bool) {
    let n = bytes.len() / W;
    let mut out: Vec<T> = Vec::with_capacity(n);
    let chunk = 1 << 16;
    let bad = out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .zip(bytes[..n * W].par_chunks(chunk * W))
        .map(|(dst, src)| {
            let mut bad = false;
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(W)) {
                let bits = if W == 4 {
                    u32::from_le_bytes([s[0], s[1], s[2], s[3]])
                } else {
                    u32::from(u16::from_le_bytes([s[0], s[1]]))
                };
                bad |= bits & exp == exp;
                d.write(from_bits(bits));
            }
            bad
        })
        .reduce(|| false, |a, b| a | b);
    // SAFETY: every one of the n slots was written above.
    unsafe { out.set_len(n) };
    (out, bad)
}
