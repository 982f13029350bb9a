//! Fused grouped-query attention for f32 on the CPU, with its backward. The composed candle path
//! in `llama.rs` stays the reference: it runs on other devices and dtypes and is what the tests
//! compare this with.
//!
//! One pass rotates and scales the queries and keys and lays each KV head's data out
//! contiguously (queries as `[kv head, token, rep, d]`, so that a KV head's `rep` query heads
//! form one matrix). Then every (sequence, KV head, chunk of queries) is an independent task:
//! scores `S = Q·Kᵀ` over the keys the chunk can see (faer GEMM, one thread per task), masked
//! `exp(S − max)` in place, `O = P·V` divided by the row sums (a `d`-wide row, not a `T`-wide
//! one), rows written straight into the output `[B, T, H·D]`. No
//! `[B, H, T, D]` transposes, no score tensors outside one task's scratch.
//!
//! The backward recomputes each task's probabilities `P` (nothing but the output is kept) and
//! with `dO` the output gradient and `Δ = rowsum(dO ⊙ O)`:
//!
//! ```text
//! dS = P ⊙ (dO·Vᵀ − Δ)      dQ = dS·K      dK = dSᵀ·Q      dV = Pᵀ·dO
//! ```
//!
//! `dQ` rows belong to their task; each task's `dK`, `dV` over its visible keys are summed per
//! (sequence, KV head) afterwards. RoPE is undone on `dQ` and `dK` (rotation by −θ).

use super::kernels::{exp_shifted, softmax_inplace};
use super::{f32_slice, f32_tensor, with_f32, SharedOut};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::sync::Arc;

/// Queries per task. With SmolLM2's 3 query heads per KV head a task's scores are at most
/// `96 × T` floats (768 KiB at T = 2048).
const QUERY_CHUNK: usize = 32;

/// A task's buffers: scores/probabilities, output rows (forward); `dP`, `dO`, `O` and `dQ`
/// rows (backward).
#[derive(Default)]
struct Scratch {
    p: Vec<f32>,
    /// Row sums of the undivided probabilities (forward).
    sums: Vec<f32>,
    o: Vec<f32>,
    dp: Vec<f32>,
    go: Vec<f32>,
    dq: Vec<f32>,
    /// Q panels, running column maxima and rescaling factors of
    /// [`FusedAttention::forward_micro`].
    qp: Vec<f32>,
    max: Vec<f32>,
    scale: Vec<f32>,
}

/// `rows` rows of `d` floats, row `r` written by `fill(r, row)`, in parallel chunks of rows
/// (a chunk per sequence and KV head left a thread idle a third of the time with SmolLM2's three).
fn par_rows(rows: usize, d: usize, fill: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    const CHUNK: usize = 128;
    // SAFETY: every row of every chunk is written.
    unsafe {
        super::par_fill(rows * d, CHUNK * d, |c, dst| {
            for (r, row) in dst.chunks_exact_mut(d).enumerate() {
                fill(c * CHUNK + r, row);
            }
        })
    }
}

thread_local! {
    /// Per thread, kept between tasks and calls (rayon's `for_each_init` would make new ones for
    /// every split of the work, each on fresh pages).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
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

    /// What query `i` (a key index) sees under a sliding window: the `w` most recent of the keys
    /// it sees. The shared range and the own segment are consecutive positions of one sequence
    /// (a context and its continuation), so the most recent keys are the own segment's tail,
    /// then the shared range's tail.
    pub fn windowed(self, i: usize, w: usize) -> Visible {
        let own_len = i + 1 - self.own;
        if own_len >= w {
            return Visible {
                shared: (0, 0),
                own: i + 1 - w,
            };
        }
        let (s0, s1) = self.shared;
        let shared = if s0 < s1 {
            (s0.max(s1.saturating_sub(w - own_len)), s1)
        } else {
            self.shared
        };
        Visible {
            shared,
            own: self.own,
        }
    }
}

/// Which keys each query of a call sees.
#[derive(Debug, Clone)]
pub enum Visibility {
    /// Every key up to the query itself.
    Causal,
    /// Per query (token of the call), as packed sequences need.
    Rows(Arc<[Visible]>),
}

impl Visibility {
    fn at(&self, i: usize) -> Visible {
        match self {
            Visibility::Causal => Visible::CAUSAL,
            Visibility::Rows(r) => r[i],
        }
    }

    /// The same queries (`t` of them, the first at key index `offset`) under a sliding window of
    /// `w` keys.
    pub fn windowed(&self, offset: usize, t: usize, w: usize) -> Visibility {
        Visibility::Rows((0..t).map(|i| self.at(i).windowed(offset + i, w)).collect())
    }

    /// For the queries `q0 .. q0 + c` of a call whose first query is key `offset`: the first key
    /// any of them sees, `lo`, and the additive mask `[c, offset + q0 + c − lo]` over the keys
    /// from `lo` (0 where a key is seen, −∞ elsewhere).
    pub fn chunk_mask(
        &self,
        offset: usize,
        q0: usize,
        c: usize,
        device: &candle_core::Device,
    ) -> Result<(usize, Tensor)> {
        let rows: Vec<Visible> = (q0..q0 + c).map(|i| self.at(i)).collect();
        let lo = rows.iter().map(Visible::first).min().unwrap_or(0);
        let end = offset + q0 + c;
        let w = end - lo;
        let mut m = vec![f32::NEG_INFINITY; c * w];
        for (qi, r) in rows.iter().enumerate() {
            let row = &mut m[qi * w..(qi + 1) * w];
            let (s0, s1) = r.shared;
            if s0 < s1 {
                row[s0 - lo..s1 - lo].fill(0.0);
            }
            row[r.own - lo..=offset + q0 + qi - lo].fill(0.0);
        }
        Ok((lo, Tensor::from_vec(m, (c, w), device)?))
    }
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

impl Heads {
    /// `(query heads, KV heads, head size, query heads per KV head)`.
    pub(super) fn split(&self) -> (usize, usize, usize, usize) {
        (
            self.n_heads,
            self.n_kv,
            self.head_dim,
            self.n_heads / self.n_kv,
        )
    }
}

/// Attention output `[B, T, H·D]` (the input of o_proj) for projections `q` `[B, T, H·D]` and
/// `k`, `v` `[B, T, KV·D]` before RoPE; `cos`/`sin` `[T, D/2]` are the rotary tables of each
/// token's position; query `i` sees the keys `visible` allows, up to itself. Differentiable in
/// `q`, `k` and `v`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    visible: Visibility,
) -> Result<Tensor> {
    let op = FusedAttention {
        cos: cos.flatten_all()?.to_vec1()?,
        sin: sin.flatten_all()?.to_vec1()?,
        heads,
        visible,
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// One head's row rotated by the tables of its position (`cos`, `sin`: `D/2` each; `sign` −1
/// rotates back) and multiplied by `s`.
pub(super) fn rope_row(src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32], s: f32, sign: f32) {
    let half = cos.len();
    for i in 0..half {
        let (a, z, sn) = (src[i], src[i + half], sign * sin[i]);
        dst[i] = (a * cos[i] - z * sn) * s;
        dst[i + half] = (z * cos[i] + a * sn) * s;
    }
}

fn gemm(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0, Par::Seq);
}

struct FusedAttention {
    cos: Vec<f32>,
    sin: Vec<f32>,
    heads: Heads,
    visible: Visibility,
}

/// One task: sequence `bi`, KV head `g`, queries `c0 .. c0 + c`.
#[derive(Clone, Copy)]
struct Task {
    bi: usize,
    g: usize,
    c0: usize,
}

/// Rotated (and scaled) projections of one call, laid out per (sequence, KV head).
struct Rotated {
    /// `[B, KV, T, rep, D]`, times 1/√D.
    q: Vec<f32>,
    /// `[B, KV, T, D]`.
    k: Vec<f32>,
    v: Vec<f32>,
}

impl CustomOp3 for FusedAttention {
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
        let (b, t) = self.check(l1.shape(), l2.shape(), l3.shape())?;
        let out = self.forward(&self.rotate(qs, ks, vs, b, t), b, t);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t) = self.check(q.shape(), k.shape(), v.shape())?;
        let (dq, dk, dv) = with_f32(q, |qs| {
            with_f32(k, |ks| {
                with_f32(v, |vs| {
                    with_f32(out, |os| {
                        with_f32(grad, |gs| {
                            self.backward(&self.rotate(qs, ks, vs, b, t), os, gs, b, t)
                        })
                    })
                })
            })
        })?????;
        Ok((
            Some(f32_tensor(dq, q.shape())?),
            Some(f32_tensor(dk, k.shape())?),
            Some(f32_tensor(dv, v.shape())?),
        ))
    }
}

impl FusedAttention {
    fn check(&self, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<(usize, usize)> {
        let (h, kvh, d, _) = self.heads.split();
        let (b, t, hd) = q.dims3()?;
        let rows_ok = match &self.visible {
            Visibility::Causal => true,
            Visibility::Rows(r) => r.len() == t,
        };
        if hd != h * d || k.dims3()? != (b, t, kvh * d) || v != k || h % kvh != 0 || !rows_ok {
            candle_core::bail!(
                "fused-attention: shapes {q:?} {k:?} {v:?} do not fit {h} heads, {kvh} KV heads of {d}"
            );
        }
        Ok((b, t))
    }

    /// `x·cos − x_half·sin` on the two halves (RoPE as transformers applies it), times `s`;
    /// with `sign = −1` the inverse rotation (the transpose, for gradients).
    fn rope(&self, src: &[f32], dst: &mut [f32], pos: usize, s: f32, sign: f32) {
        let half = self.heads.head_dim / 2;
        rope_row(
            src,
            dst,
            &self.cos[pos * half..][..half],
            &self.sin[pos * half..][..half],
            s,
            sign,
        );
    }

    fn rotate(&self, qs: &[f32], ks: &[f32], vs: &[f32], b: usize, t: usize) -> Rotated {
        let (h, kvh, d, rep) = self.heads.split();
        let scale = 1.0 / (d as f32).sqrt();
        // Row r of q is (bg, token i, head j of the group) with bg = bi·kvh + g; of k and v,
        // (bg, token i).
        let q = par_rows(b * kvh * t * rep, d, |r, dst| {
            let (bg, i, j) = (r / (t * rep), r / rep % t, r % rep);
            let (bi, g) = (bg / kvh, bg % kvh);
            let src = &qs[(bi * t + i) * h * d + (g * rep + j) * d..][..d];
            self.rope(src, dst, i, scale, 1.0);
        });
        let kv_row = |r: usize| {
            let (bg, i) = (r / t, r % t);
            (bg / kvh * t + i) * kvh * d + bg % kvh * d
        };
        let k = par_rows(b * kvh * t, d, |r, dst| {
            self.rope(&ks[kv_row(r)..][..d], dst, r % t, 1.0, 1.0)
        });
        let v = par_rows(b * kvh * t, d, |r, dst| {
            dst.copy_from_slice(&vs[kv_row(r)..][..d])
        });
        Rotated { q, k, v }
    }

    /// Every (sequence, KV head, query chunk), later chunks first: they see more keys, so
    /// handing them out first lets the threads finish together.
    fn tasks(&self, b: usize, t: usize) -> Vec<Task> {
        let kvh = self.heads.n_kv;
        (0..t.div_ceil(QUERY_CHUNK))
            .rev()
            .flat_map(|c| {
                (0..b * kvh).map(move |bg| Task {
                    bi: bg / kvh,
                    g: bg % kvh,
                    c0: c * QUERY_CHUNK,
                })
            })
            .collect()
    }

    /// The output `[B, T, H·D]` of `task` run on every task in parallel; each task writes its
    /// rows through [`Self::emit`], and together they write every row (no zero-fill first).
    fn run_tasks(&self, b: usize, t: usize, task: impl Fn(Task, SharedOut) + Sync) -> Vec<f32> {
        let n = b * t * self.heads.n_heads * self.heads.head_dim;
        let mut out: Vec<f32> = Vec::with_capacity(n);
        let out_ptr = SharedOut(out.as_mut_ptr());
        self.tasks(b, t)
            .into_par_iter()
            .for_each(|one| task(one, out_ptr));
        // SAFETY: the tasks cover every (sequence, query chunk, KV head) and each emits all the
        // rows (query, head) of its chunk and head group.
        unsafe { out.set_len(n) };
        out
    }

    /// The task's probabilities into `p` (`[c·rep, w]`, zero where a key is hidden); returns
    /// the first visible key `lo` and the width `w`. With `sums`, the rows are left undivided
    /// (`exp(s − max)`) and their sums go there: the forward divides the `d`-wide output rows
    /// instead of the `w`-wide probability rows.
    fn probs(
        &self,
        r: &Rotated,
        task: Task,
        t: usize,
        p: &mut Vec<f32>,
        mut sums: Option<&mut Vec<f32>>,
    ) -> (usize, usize) {
        let (_, kvh, d, rep) = self.heads.split();
        let Task { bi, g, c0 } = task;
        let c = QUERY_CHUNK.min(t - c0);
        let lo = (c0..c0 + c)
            .map(|i| self.visible.at(i).first())
            .min()
            .unwrap_or(0);
        let (w, rows) = (c0 + c - lo, c * rep);
        p.resize(rows * w, 0.0);
        if let Some(s) = sums.as_deref_mut() {
            s.resize(rows, 0.0);
        }
        let base = (bi * kvh + g) * t;
        gemm(
            MatMut::from_row_major_slice_mut(&mut p[..], rows, w),
            MatRef::from_row_major_slice(&r.q[(base + c0) * rep * d..][..rows * d], rows, d),
            MatRef::from_row_major_slice(&r.k[(base + lo) * d..][..w * d], w, d).transpose(),
        );
        for (row_i, row) in p.chunks_exact_mut(w).enumerate() {
            let i = c0 + row_i / rep;
            let vis = self.visible.at(i);
            let n = i + 1 - lo;
            // Hidden: the keys before the query's own segment, except the shared ones.
            let own = vis.own - lo;
            let s0 = vis.shared.0.clamp(lo, vis.own) - lo;
            let s1 = vis.shared.1.clamp(lo, vis.own).max(s0 + lo) - lo;
            row[..s0].fill(f32::NEG_INFINITY);
            row[s1..own].fill(f32::NEG_INFINITY);
            match sums.as_deref_mut() {
                Some(s) => s[row_i] = exp_shifted(&mut row[..n]),
                None => softmax_inplace(&mut row[..n]),
            }
            row[n..].fill(0.0);
        }
        (lo, w)
    }

    /// Offset in `[B, T, H·D]` of the task's row `r` (query `c0 + r / rep`, head `g·rep + r % rep`).
    fn out_at(&self, task: Task, t: usize, r: usize) -> usize {
        let (h, _, d, rep) = self.heads.split();
        (task.bi * t + task.c0 + r / rep) * h * d + (task.g * rep + r % rep) * d
    }

    /// The task's first `rows` output rows `o` (`[_, D]`, undivided) divided by their softmax sums
    /// and written to their places in `out` (`[B, T, H·D]`).
    fn emit(&self, task: Task, t: usize, o: &mut [f32], sums: &[f32], rows: usize, out: SharedOut) {
        let d = self.heads.head_dim;
        for (ri, src) in o.chunks_exact_mut(d).take(rows).enumerate() {
            let inv = 1.0 / sums[ri];
            src.iter_mut().for_each(|v| *v *= inv);
            // SAFETY: the row's (sequence, query, head) belongs to this task alone, and `out`
            // outlives the parallel loop that calls this.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), out.at(self.out_at(task, t, ri)), d)
            };
        }
    }

    fn forward(&self, r: &Rotated, b: usize, t: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if let Some(out) = self.forward_on(super::gemm::Kernel::best(), r, b, t) {
            return out;
        }
        self.forward_faer(r, b, t)
    }

    /// The forward on faer's GEMM, scores row by row: where no micro-kernel runs, and the check
    /// for [`Self::forward_micro`].
    fn forward_faer(&self, r: &Rotated, b: usize, t: usize) -> Vec<f32> {
        let (_, kvh, d, rep) = self.heads.split();
        self.run_tasks(b, t, |task, out_ptr| {
            SCRATCH.with_borrow_mut(|s| {
                let (lo, w) = self.probs(r, task, t, &mut s.p, Some(&mut s.sums));
                let rows = QUERY_CHUNK.min(t - task.c0) * rep;
                s.o.resize(rows * d, 0.0);
                let base = (task.bi * kvh + task.g) * t;
                gemm(
                    MatMut::from_row_major_slice_mut(&mut s.o[..], rows, d),
                    MatRef::from_row_major_slice(&s.p[..], rows, w),
                    MatRef::from_row_major_slice(&r.v[(base + lo) * d..][..w * d], w, d),
                );
                self.emit(task, t, &mut s.o, &s.sums, rows, out_ptr);
            })
        })
    }

    /// [`Self::forward_micro`] on `kernel` (or the narrower one where the head size is not a
    /// multiple of its width); `None` without one.
    #[cfg(target_arch = "x86_64")]
    fn forward_on(
        &self,
        kernel: Option<super::gemm::Kernel>,
        r: &Rotated,
        b: usize,
        t: usize,
    ) -> Option<Vec<f32>> {
        use super::gemm::{kernel_6x16, kernel_8x32, Kernel};
        let d = self.heads.head_dim;
        match kernel? {
            Kernel::Avx512 | Kernel::Avx512x8 if d.is_multiple_of(32) => {
                Some(self.forward_micro::<8, 32>(kernel_8x32, r, b, t))
            }
            _ if d.is_multiple_of(16) => Some(self.forward_micro::<6, 16>(kernel_6x16, r, b, t)),
            _ => None,
        }
    }

    /// The forward on one of spp's GEMM micro-kernels (`KP × QP` tiles), with the scores
    /// transposed: `Sᵀ = K·Qᵀ` (keys × the task's rows), so the softmax runs down the columns
    /// (eight rows of the task per vector, no horizontal reductions), and `O = P·V` reads
    /// `KP`-row groups of `Pᵀ` and `QP`-wide column groups of V where they lie. K is packed once
    /// per (sequence, KV head) into panels of `KP` keys, Q once per task into panels of `QP` rows.
    /// Same arithmetic as [`Self::forward`]'s (scores, `exp(s − max)`, undivided `P·V`, rows
    /// divided by their sums), in another order.
    #[cfg(target_arch = "x86_64")]
    fn forward_micro<const KP: usize, const QP: usize>(
        &self,
        kern: super::gemm::MicroKernel,
        r: &Rotated,
        b: usize,
        t: usize,
    ) -> Vec<f32> {
        use super::gemm::pack_panel;
        // Keys per block (a multiple of 6 and of 8): its Sᵀ and V stay in L2.
        const KEY_STEP: usize = 240;
        let (_, kvh, d, rep) = self.heads.split();
        // Columns of Sᵀ come in whole Q panels and whole P groups.
        let unit = (QP..).step_by(QP).find(|u| u % KP == 0).unwrap_or(QP * KP);
        // Element (key j, dim e) of K panel q at q·KP·d + e·KP + j (keys past t are zero).
        let kpanels = t.div_ceil(KP);
        // Panel n of kp is (bg, keys KP·(n % kpanels) ..); keys past t are zero.
        let kp = par_rows(b * kvh * kpanels, KP * d, |n, panel| {
            let (bg, j0) = (n / kpanels, n % kpanels * KP);
            pack_panel::<KP>(&r.k[bg * t * d..], d, j0, KP.min(t - j0), 0, d, panel);
        });
        // V in column groups of QP, each group's rows contiguous: element (key j, dim e) at
        // ((bg·(d/QP) + e/QP)·t + j)·QP + e % QP. P·V reads QP floats per key from whole 64-byte
        // lines; read in place from V's d-wide rows, a 240-key block's lines fell into a quarter
        // of the L1 sets and missed (16 wide: the attention core 5–10% faster).
        let groups = d / QP;
        let vp = par_rows(b * kvh * groups * t, QP, |n, dst| {
            let (bg, e, j) = (n / (groups * t), n / t % groups, n % t);
            dst.copy_from_slice(&r.v[(bg * t + j) * d + e * QP..][..QP])
        });
        self.run_tasks(b, t, |task, out_ptr| {
            SCRATCH.with_borrow_mut(|s| {
                let Task { bi, g, c0 } = task;
                let bg = bi * kvh + g;
                let c = QUERY_CHUNK.min(t - c0);
                let rows = c * rep;
                let width = rows.next_multiple_of(unit);
                let lo = (c0..c0 + c)
                    .map(|i| self.visible.at(i).first())
                    .min()
                    .unwrap_or(0);
                let lo = lo - lo % KP;
                let w = c0 + c - lo;
                // Element (row i, dim e) of Q panel q at q·QP·d + e·QP + i (rows past `rows` zero).
                s.qp.resize(width * d, 0.0);
                let qrows = &r.q[(bg * t + c0) * rep * d..][..rows * d];
                for (i, panel) in s.qp.chunks_exact_mut(QP * d).enumerate() {
                    let live = QP.min(rows.saturating_sub(i * QP));
                    pack_panel::<QP>(qrows, d, i * QP, live, 0, d, panel);
                }
                let kbase = (bg * kpanels + lo / KP) * KP * d;
                s.p.resize(KEY_STEP * width, 0.0);
                s.o.resize(width * d, 0.0);
                for buf in [&mut s.max, &mut s.sums, &mut s.scale] {
                    buf.resize(width, 0.0);
                }
                s.max.fill(f32::NEG_INFINITY);
                s.sums.fill(0.0);
                for k0 in (0..w).step_by(KEY_STEP) {
                    let kc = KEY_STEP.min(w - k0);
                    let kcp = kc.next_multiple_of(KP);
                    // Each K panel against every Q panel: both stay in L1.
                    for j in 0..kcp / KP {
                        for q in 0..width / QP {
                            // SAFETY: the K panel (KP keys × d) lies inside kp (lo + wp ≤
                            // kpanels · KP), the Q panel (d × QP) inside qp, the KP × QP tile
                            // inside p (KEY_STEP × width); `kern` runs on this CPU.
                            unsafe {
                                kern(
                                    d,
                                    kp[kbase + (k0 + j * KP) * d..].as_ptr(),
                                    KP,
                                    s.qp[q * QP * d..].as_ptr(),
                                    QP,
                                    s.p[j * KP * width + q * QP..].as_mut_ptr(),
                                    width,
                                    true,
                                )
                            };
                        }
                    }
                    // Hidden keys of each row in this block: before the shared range, between
                    // it and the row's own segment, after the query itself (the causal diagonal).
                    let (b0, b1) = (lo + k0, lo + k0 + kc);
                    for ri in 0..rows {
                        let i = c0 + ri / rep;
                        let vis = self.visible.at(i);
                        let (s0, s1) = if vis.shared.0 < vis.shared.1 {
                            (vis.shared.0.min(vis.own), vis.shared.1.min(vis.own))
                        } else {
                            (vis.own, vis.own)
                        };
                        for (from, to) in [(b0, s0), (s1, vis.own), (i + 1, b1)] {
                            for key in from.max(b0)..to.min(b1) {
                                s.p[(key - b0) * width + ri] = f32::NEG_INFINITY;
                            }
                        }
                    }
                    let rescale = super::kernels::exp_shifted_cols(
                        &mut s.p[..kc * width],
                        &mut s.max,
                        &mut s.sums,
                        &mut s.scale,
                    );
                    if k0 > 0 && rescale {
                        for (row, &f) in s.o.chunks_exact_mut(d).zip(&s.scale) {
                            row.iter_mut().for_each(|v| *v *= f);
                        }
                    }
                    for e in (0..d).step_by(QP) {
                        for i in (0..rows).step_by(KP) {
                            // SAFETY: Pᵀ rows 0..kc (width apart) hold the KP columns
                            // i..i + KP ≤ width; the group of V columns e..e + QP ≤ d holds the
                            // keys lo + k0 .. lo + k0 + kc ≤ c0 + c ≤ t; the O tile is inside o.
                            unsafe {
                                kern(
                                    kc,
                                    s.p[i..].as_ptr(),
                                    width,
                                    vp[((bg * groups + e / QP) * t + lo + k0) * QP..].as_ptr(),
                                    QP,
                                    s.o[i * d + e..].as_mut_ptr(),
                                    d,
                                    k0 == 0,
                                )
                            };
                        }
                    }
                }
                self.emit(task, t, &mut s.o, &s.sums, rows, out_ptr);
            })
        })
    }

    /// `(dq, dk, dv)` in the layouts of `q`, `k`, `v`, for the output `os` and its gradient `gs`.
    fn backward(
        &self,
        r: &Rotated,
        os: &[f32],
        gs: &[f32],
        b: usize,
        t: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (h, kvh, d, rep) = self.heads.split();
        let scale = 1.0 / (d as f32).sqrt();
        let mut dq = vec![0f32; b * t * h * d];
        let dq_ptr = SharedOut(dq.as_mut_ptr());
        // Per task: (sequence · KV + head, first key, dK and dV over its keys).
        let parts: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = self
            .tasks(b, t)
            .into_par_iter()
            .map(|task| {
                SCRATCH.with_borrow_mut(|s| {
                    let (lo, w) = self.probs(r, task, t, &mut s.p, None);
                    let rows = QUERY_CHUNK.min(t - task.c0) * rep;
                    let bg = task.bi * kvh + task.g;
                    let (qm, km, vm) = (
                        MatRef::from_row_major_slice(
                            &r.q[(bg * t + task.c0) * rep * d..][..rows * d],
                            rows,
                            d,
                        ),
                        MatRef::from_row_major_slice(&r.k[(bg * t + lo) * d..][..w * d], w, d),
                        MatRef::from_row_major_slice(&r.v[(bg * t + lo) * d..][..w * d], w, d),
                    );
                    // dO rows of the task, and Δ = rowsum(dO ⊙ O).
                    s.go.resize(rows * d, 0.0);
                    let mut delta = vec![0f32; rows];
                    for (row, (go, dl)) in s.go.chunks_exact_mut(d).zip(&mut delta).enumerate() {
                        let at = self.out_at(task, t, row);
                        go.copy_from_slice(&gs[at..][..d]);
                        *dl = go.iter().zip(&os[at..][..d]).map(|(a, b)| a * b).sum();
                    }
                    let gm = MatRef::from_row_major_slice(&s.go[..], rows, d);
                    // dS = P ⊙ (dO·Vᵀ − Δ), in place of dP.
                    s.dp.resize(rows * w, 0.0);
                    gemm(
                        MatMut::from_row_major_slice_mut(&mut s.dp[..], rows, w),
                        gm,
                        vm.transpose(),
                    );
                    for ((ds, p), dl) in
                        s.dp.chunks_exact_mut(w)
                            .zip(s.p.chunks_exact(w))
                            .zip(&delta)
                    {
                        for (ds, p) in ds.iter_mut().zip(p) {
                            *ds = p * (*ds - dl);
                        }
                    }
                    let (pm, dsm) = (
                        MatRef::from_row_major_slice(&s.p[..], rows, w),
                        MatRef::from_row_major_slice(&s.dp[..], rows, w),
                    );
                    let (mut dk, mut dv) = (vec![0f32; w * d], vec![0f32; w * d]);
                    gemm(
                        MatMut::from_row_major_slice_mut(&mut dk, w, d),
                        dsm.transpose(),
                        qm,
                    );
                    gemm(
                        MatMut::from_row_major_slice_mut(&mut dv, w, d),
                        pm.transpose(),
                        gm,
                    );
                    s.dq.resize(rows * d, 0.0);
                    gemm(
                        MatMut::from_row_major_slice_mut(&mut s.dq[..], rows, d),
                        dsm,
                        km,
                    );
                    let mut unrotated = vec![0f32; d];
                    for (row, src) in s.dq.chunks_exact(d).enumerate() {
                        self.rope(src, &mut unrotated, task.c0 + row / rep, scale, -1.0);
                        // SAFETY: as in `forward`: the row belongs to this task alone.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                unrotated.as_ptr(),
                                dq_ptr.at(self.out_at(task, t, row)),
                                d,
                            )
                        };
                    }
                    (bg, lo, dk, dv)
                })
            })
            .collect();
        // Sum the parts per (sequence, KV head), then back to `[B, T, KV·D]`, unrotating dK.
        let mut dk = vec![0f32; b * t * kvh * d];
        let mut dv = vec![0f32; b * t * kvh * d];
        let (dk_ptr, dv_ptr) = (SharedOut(dk.as_mut_ptr()), SharedOut(dv.as_mut_ptr()));
        (0..b * kvh).into_par_iter().for_each(|bg| {
            let (mut sk, mut sv) = (vec![0f32; t * d], vec![0f32; t * d]);
            for (_, lo, pk, pv) in parts.iter().filter(|p| p.0 == bg) {
                let (sk, sv) = (&mut sk[lo * d..][..pk.len()], &mut sv[lo * d..][..pv.len()]);
                sk.iter_mut().zip(pk).for_each(|(a, b)| *a += b);
                sv.iter_mut().zip(pv).for_each(|(a, b)| *a += b);
            }
            let (bi, g) = (bg / kvh, bg % kvh);
            let mut unrotated = vec![0f32; d];
            for i in 0..t {
                let at = (bi * t + i) * kvh * d + g * d;
                self.rope(&sk[i * d..][..d], &mut unrotated, i, 1.0, -1.0);
                // SAFETY: (sequence bi, KV head g) rows belong to this task alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(unrotated.as_ptr(), dk_ptr.at(at), d);
                    std::ptr::copy_nonoverlapping(sv[i * d..].as_ptr(), dv_ptr.at(at), d);
                }
            }
        });
        (dq, dk, dv)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Every micro-kernel's forward equals the faer one, causal and with packed sequences (two
    /// segments, the second seeing a shared prefix of the first), over lengths that end in partial
    /// query chunks and partial key panels.
    #[test]
    fn micro_kernel_forwards_match_the_faer_one() {
        let heads = Heads {
            n_heads: 6,
            n_kv: 2,
            head_dim: 64,
        };
        let (h, kvh, d) = (heads.n_heads, heads.n_kv, heads.head_dim);
        for (b, t) in [(2, 75), (1, 301)] {
            // Entries in [−2, 2): scores small enough that softmax weighs many keys.
            let values = |n: usize, seed: u32| -> Vec<f32> {
                let v = crate::cpu::gemm::tests::values(n, seed + t as u32);
                v.into_iter().map(|x| 0.4 * x).collect()
            };
            let (q, k, v) = (
                values(b * t * h * d, 1),
                values(b * t * kvh * d, 2),
                values(b * t * kvh * d, 3),
            );
            let angles: Vec<f32> = (0..t * d / 2)
                .map(|e| (e / (d / 2)) as f32 * 0.01 * (1 + e % (d / 2)) as f32)
                .collect();
            let split = t / 3;
            let packed: Arc<[Visible]> = (0..t)
                .map(|i| {
                    if i < split {
                        Visible::CAUSAL
                    } else {
                        Visible {
                            shared: (0, split / 2),
                            own: split,
                        }
                    }
                })
                .collect();
            for visible in [Visibility::Causal, Visibility::Rows(packed)] {
                let op = FusedAttention {
                    cos: angles.iter().map(|a| a.cos()).collect(),
                    sin: angles.iter().map(|a| a.sin()).collect(),
                    heads,
                    visible: visible.clone(),
                };
                let r = op.rotate(&q, &k, &v, b, t);
                let want = op.forward_faer(&r, b, t);
                for kernel in crate::cpu::gemm::Kernel::available() {
                    let Some(got) = op.forward_on(Some(kernel), &r, b, t) else {
                        panic!("{kernel:?} did not run on head size {d}");
                    };
                    let worst = crate::cpu::gemm::tests::max_abs_diff(&got, &want);
                    assert!(
                        worst < 1e-5,
                        "{kernel:?} b {b} t {t} {visible:?}: error {worst}"
                    );
                }
            }
        }
    }
}
