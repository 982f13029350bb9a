//! Fused grouped-query attention for f32 on the CPU, used when no gradient is needed (evaluation,
//! pruning calibration, perplexity). The composed candle path in `llama.rs` stays the reference:
//! it runs on other devices and dtypes, under autograd, and is what the tests compare this with.
//!
//! One pass rotates and scales the queries and keys and lays each KV head's data out
//! contiguously (queries as `[kv head, token, rep, d]`, so that a KV head's `rep` query heads
//! form one matrix). Then every (sequence, KV head, chunk of queries) is an independent task:
//! scores `S = Q·Kᵀ` over the keys the chunk can see (faer GEMM, one thread per task), masked
//! softmax in place, `O = P·V`, rows written straight into the output `[B, T, H·D]`. No
//! `[B, H, T, D]` transposes, no score tensors outside one task's scratch.

use super::ops::{f32_slice, softmax_inplace};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Queries per task. With SmolLM2's 3 query heads per KV head a task's scores are at most
/// `96 × T` floats (768 KiB at T = 2048).
const QUERY_CHUNK: usize = 32;

thread_local! {
    /// Per thread: a task's scores and its output rows, kept between tasks and calls (rayon's
    /// `for_each_init` would make new ones for every split of the work, each on fresh pages).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// The keys query `i` sees: `shared.0 .. shared.1` and `own ..= i` (key indices of this call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub shared: (usize, usize),
    pub own: usize,
}

impl Visible {
    /// Plain causal attention: every key up to the query itself.
    pub const CAUSAL: Visible = Visible {
        shared: (0, 0),
        own: 0,
    };

    fn first(&self) -> usize {
        if self.shared.0 < self.shared.1 {
            self.shared.0.min(self.own)
        } else {
            self.own
        }
    }
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

/// A pointer that tasks writing disjoint rows may share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes a disjoint set of output rows (see `attention`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY (of the callers): offsets stay inside the buffer the pointer came from.
        self.0.wrapping_add(offset)
    }
}

/// Attention output `[B, T, H·D]` (the input of o_proj) for projections `q` `[B, T, H·D]` and
/// `k`, `v` `[B, T, KV·D]` before RoPE; `cos`/`sin` `[T, D/2]` are the rotary tables of each
/// token's position; query `i` sees the keys `visible(i)` allows, up to itself.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    visible: &(dyn Fn(usize) -> Visible + Sync),
) -> Result<Tensor> {
    let op = FusedAttention {
        cos: cos.flatten_all()?.to_vec1()?,
        sin: sin.flatten_all()?.to_vec1()?,
        heads,
        visible,
    };
    Ok(q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?)
}

struct FusedAttention<'a> {
    cos: Vec<f32>,
    sin: Vec<f32>,
    heads: Heads,
    visible: &'a (dyn Fn(usize) -> Visible + Sync),
}

impl CustomOp3 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qs, ks, vs) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (b, t, hd) = l1.shape().dims3()?;
        let Heads {
            n_heads: h,
            n_kv: kvh,
            head_dim: d,
        } = self.heads;
        if hd != h * d || l2.shape().dims3()? != (b, t, kvh * d) || l3.shape() != l2.shape() {
            candle_core::bail!(
                "fused-attention: shapes {:?} {:?} {:?} do not fit {h} heads, {kvh} KV heads of {d}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let out = self.run(qs, ks, vs, b, t);
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }
}

impl FusedAttention<'_> {
    fn run(&self, qs: &[f32], ks: &[f32], vs: &[f32], b: usize, t: usize) -> Vec<f32> {
        let Heads {
            n_heads: h,
            n_kv: kvh,
            head_dim: d,
        } = self.heads;
        let visible = self.visible;
        let rep = h / kvh;
        let half = d / 2;
        let scale = 1.0 / (d as f32).sqrt();
        let (cos, sin) = (&self.cos[..], &self.sin[..]);

        // Rotated, scaled queries [B, KV, T, rep, D]; rotated keys and values [B, KV, T, D].
        let mut qr = vec![0f32; b * t * h * d];
        let mut kr = vec![0f32; b * t * kvh * d];
        let mut vr = vec![0f32; b * t * kvh * d];
        let rotate = |src: &[f32], dst: &mut [f32], pos: usize, s: f32| {
            let (c, sn) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for i in 0..half {
                let (a, z) = (src[i], src[i + half]);
                dst[i] = (a * c[i] - z * sn[i]) * s;
                dst[i + half] = (z * c[i] + a * sn[i]) * s;
            }
        };
        // One parallel pass per sequence and KV head over its tokens.
        qr.par_chunks_mut(t * rep * d)
            .zip(kr.par_chunks_mut(t * d))
            .zip(vr.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(bg, ((qd, kd), vd))| {
                let (bi, g) = (bg / kvh, bg % kvh);
                for i in 0..t {
                    let row = bi * t + i;
                    for j in 0..rep {
                        let src = &qs[row * h * d + (g * rep + j) * d..][..d];
                        rotate(src, &mut qd[(i * rep + j) * d..][..d], i, scale);
                    }
                    let src = &ks[row * kvh * d + g * d..][..d];
                    rotate(src, &mut kd[i * d..][..d], i, 1.0);
                    vd[i * d..][..d].copy_from_slice(&vs[row * kvh * d + g * d..][..d]);
                }
            });

        let mut out = vec![0f32; b * t * h * d];
        let out_ptr = SharedOut(out.as_mut_ptr());
        let chunks = t.div_ceil(QUERY_CHUNK);
        // Later chunks see more keys: hand them out first so the threads finish together.
        let tasks: Vec<(usize, usize, usize)> = (0..chunks)
            .rev()
            .flat_map(|c| (0..b * kvh).map(move |bg| (bg / kvh, bg % kvh, c * QUERY_CHUNK)))
            .collect();
        tasks.into_par_iter().for_each(|(bi, g, c0)| {
            SCRATCH.with_borrow_mut(|(scores, o)| {
                let c = QUERY_CHUNK.min(t - c0);
                let lo = (c0..c0 + c).map(|i| visible(i).first()).min().unwrap_or(0);
                let w = c0 + c - lo;
                let rows = c * rep;
                scores.resize(rows * w, 0.0);
                o.resize(rows * d, 0.0);
                let base = (bi * kvh + g) * t;
                let qm = faer::MatRef::from_row_major_slice(
                    &qr[(base * rep + c0 * rep) * d..][..rows * d],
                    rows,
                    d,
                );
                let km = faer::MatRef::from_row_major_slice(&kr[(base + lo) * d..][..w * d], w, d);
                let vm = faer::MatRef::from_row_major_slice(&vr[(base + lo) * d..][..w * d], w, d);
                let sm = faer::MatMut::from_row_major_slice_mut(&mut scores[..], rows, w);
                faer::linalg::matmul::matmul(
                    sm,
                    faer::Accum::Replace,
                    qm,
                    km.transpose(),
                    1.0,
                    faer::Par::Seq,
                );
                for (r, row) in scores.chunks_exact_mut(w).enumerate() {
                    let i = c0 + r / rep;
                    let vis = visible(i);
                    let n = i + 1 - lo;
                    // Hidden: the keys before the query's own segment, except the shared ones.
                    let own = vis.own - lo;
                    let s0 = vis.shared.0.clamp(lo, vis.own) - lo;
                    let s1 = vis.shared.1.clamp(lo, vis.own).max(s0 + lo) - lo;
                    row[..s0].fill(f32::NEG_INFINITY);
                    row[s1..own].fill(f32::NEG_INFINITY);
                    softmax_inplace(&mut row[..n]);
                    row[n..].fill(0.0);
                }
                let pm = faer::MatRef::from_row_major_slice(&scores[..], rows, w);
                let om = faer::MatMut::from_row_major_slice_mut(&mut o[..], rows, d);
                faer::linalg::matmul::matmul(om, faer::Accum::Replace, pm, vm, 1.0, faer::Par::Seq);
                for (r, src) in o.chunks_exact(d).enumerate() {
                    let (i, j) = (c0 + r / rep, r % rep);
                    let at = (bi * t + i) * h * d + (g * rep + j) * d;
                    // SAFETY: row (bi, i) and head g·rep + j belong to this task alone, and `out`
                    // outlives the parallel loop.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out_ptr.at(at), d) };
                }
            })
        });
        out
    }
}
