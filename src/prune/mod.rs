//! Post-training pruning (`docs/METHOD.md` §5): magnitude, Wanda and SparseGPT,
//! unstructured or N:M — the one driver that walks the blocks.
//!
//! Blocks are processed one after another: the inputs of block i are the outputs of the already
//! pruned blocks 0…i−1. For each block, the statistics of its linears come from
//! [`Llama::block_taps`] over every calibration window (no hooks), one window at a time,
//! so only one block's statistics and one window's intermediate activations exist at once. With
//! `true_sequential` (SparseGPT's option) the statistics are re-collected after each group —
//! q/k/v, then o, then gate/up, then down — so later groups see the pruned earlier ones.
//! After pruning, the block is run again to produce the next block's inputs.
//! Statistics are accumulated in f32 (SparseGPT's Hessian) or f64 (Wanda's norms); weights are
//! written back in the model's dtype. Embeddings and the LM head are never pruned.

pub mod calib;
pub mod magnitude;
pub mod mask;
pub mod sparsegpt;
pub mod wanda;

pub use mask::Sparsity;

use crate::bail;
use crate::error::{Error, Result};
use crate::model::{Block, Llama, LlamaConfig, SparseLinear};
pub use crate::sys::{peak_rss_bytes, peak_rss_of};
use candle_core::{DType, Tensor};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl std::str::FromStr for PruneMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "magnitude" => Ok(PruneMethod::Magnitude),
            "wanda" => Ok(PruneMethod::Wanda),
            "sparsegpt" => Ok(PruneMethod::SparseGpt),
            _ => bail!("unknown pruning method {s:?}: use magnitude, wanda or sparsegpt"),
        }
    }
}

impl PruneMethod {
    /// The name `--method` takes and `prune.json` records.
    pub fn name(&self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Wanda => "wanda",
            PruneMethod::SparseGpt => "sparsegpt",
        }
    }
    pub fn needs_calibration(&self) -> bool {
        *self != PruneMethod::Magnitude
    }
    /// The comparison group of unstructured pruning, as recorded in `prune.json`.
    pub fn group(&self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "whole matrix",
            PruneMethod::Wanda => "output row",
            PruneMethod::SparseGpt => "rows x blocksize column block",
        }
    }
}

/// The seven linears of a block ([`crate::model::LINEARS`]) with the input they read.
pub const LINEARS: [(&str, &str, Tap); 7] = with_taps([
    Tap::Attn,
    Tap::Attn,
    Tap::Attn,
    Tap::O,
    Tap::Mlp,
    Tap::Mlp,
    Tap::Down,
]);

const fn with_taps(taps: [Tap; 7]) -> [(&'static str, &'static str, Tap); 7] {
    let l = crate::model::LINEARS;
    let mut out = [("", "", Tap::Attn); 7];
    let mut i = 0;
    while i < 7 {
        out[i] = (l[i].0, l[i].1, taps[i]);
        i += 1;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    Attn,
    O,
    Mlp,
    Down,
}

/// Parses `q,k,v,o,gate,up,down` (or `all`), also accepting the full names (`q_proj`, …).
pub fn parse_targets(s: &str) -> Result<Vec<String>> {
    if s.trim() == "all" {
        return Ok(LINEARS.iter().map(|l| l.0.to_string()).collect());
    }
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let short = t.trim_end_matches("_proj");
        if !LINEARS.iter().any(|l| l.0 == short) {
            bail!("unknown target {t:?}: use any of q,k,v,o,gate,up,down");
        }
        if !out.iter().any(|o: &String| o == short) {
            out.push(short.to_string());
        }
    }
    if out.is_empty() {
        bail!("no targets given: use any of q,k,v,o,gate,up,down");
    }
    Ok(out)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PruneOptions {
    pub method: PruneMethod,
    pub sparsity: Sparsity,
    pub targets: Vec<String>,
    pub true_sequential: bool,
    pub blocksize: usize,
    pub percdamp: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PrunedLinear {
    pub name: String,
    pub sparsity_before: f64,
    pub sparsity: f64,
    /// Whether every group satisfies the requested N:M pattern (None for unstructured).
    pub n_m_valid: Option<bool>,
    /// SparseGPT's OBS reconstruction loss Σ (w − q)² / Hinv_ii² / 2.
    pub obs_loss: Option<f64>,
    pub percdamp_used: Option<f64>,
    pub dead_inputs: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub linears: Vec<PrunedLinear>,
    pub blocks: Vec<BlockTiming>,
    pub total_seconds: f64,
    /// Memory the calibration activations and one block's statistics need (estimate, bytes).
    pub estimated_bytes: u64,
    pub warnings: Vec<String>,
}

/// Where one block's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct BlockTiming {
    /// Forward passes collecting the linears' input statistics.
    pub statistics: f64,
    /// Choosing and applying the masks (and SparseGPT's updates).
    pub pruning: f64,
    /// Running the pruned block to produce the next block's inputs (0 for the last block).
    pub propagation: f64,
    /// Waiting for the block's weights (read from disk when they were not read ahead in time).
    pub load_wait: f64,
    pub total: f64,
}

/// Progress from [`prune_model`]: a block finished.
pub struct BlockDone {
    pub index: usize,
    pub total: usize,
    pub timing: BlockTiming,
}

/// Bytes the driver holds besides the blocks' weights, with `h` = hidden size, `i` = MLP width,
/// `N × T` calibration tokens, `b` = bytes per value of the activations' dtype (`dtype`; f32 on the
/// CPU whatever the weights'), `c` = cores:
/// - activations `N·T·h·b` (a block's input and output windows replace each other, so this
///   is the only term that grows with the calibration, plus one window per core in flight);
/// - taps of the windows in flight `c·T·(3h + i)·b`;
/// - statistics: Wanda `(3h + i)·8`; SparseGPT the Hessians of one group `(3h² + i²)·4`, plus
///   the f64 factorisation of the widest input `w` up to [`sparsegpt::F64_MAX_INPUTS`] (up to
///   three `w × w` f64 matrices and the f32 factor, `28·w²`; wider inputs are factorised in their
///   own buffer);
/// - the widest linear being pruned, as f32: its weights, scores, result and the check of the
///   stored result, `4·h·i·4`.
pub fn memory_estimate(
    c: &LlamaConfig,
    dtype: DType,
    opts: &PruneOptions,
    nsamples: usize,
    seqlen: usize,
) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let (n, t) = (nsamples as u64, seqlen as u64);
    let b = dtype.size_in_bytes() as u64;
    let cores = rayon::current_num_threads() as u64;
    let acts = (n + cores.min(n)) * t * h * b;
    let taps = cores.min(n.max(1)) * t * (3 * h + i) * b.max(4);
    let stats = match opts.method {
        PruneMethod::SparseGpt => {
            let f64_inputs = sparsegpt::F64_MAX_INPUTS as u64;
            let w = [h, i]
                .into_iter()
                .filter(|&w| w <= f64_inputs)
                .max()
                .unwrap_or(0);
            (3 * h * h + i * i) * 4 + 28 * w * w
        }
        PruneMethod::Wanda => (3 * h + i) * 8,
        PruneMethod::Magnitude => 0,
    };
    acts + taps + stats + 4 * h * i * 4
}

/// Predicted peak of a block-streamed prune (weights in `dtype`, activations in `acts`):
/// [`memory_estimate`] plus two blocks' weights (the one
/// being pruned and the next, read ahead; SparseGPT reads none ahead), or the embedding table while
/// the calibration is embedded if that is larger, plus [`PROCESS_BYTES`].
pub fn streamed_peak_estimate(
    c: &LlamaConfig,
    (dtype, acts): (DType, DType),
    opts: &PruneOptions,
    nsamples: usize,
    seqlen: usize,
) -> u64 {
    let b = dtype.size_in_bytes() as u64;
    let ahead = if opts.method == PruneMethod::SparseGpt {
        1
    } else {
        2
    };
    let blocks = ahead * crate::model::stream::block_bytes(c, dtype);
    let embed = (c.vocab_size * c.hidden_size) as u64 * b;
    memory_estimate(c, acts, opts, nsamples, seqlen) + blocks.max(embed) + PROCESS_BYTES
}

/// What the process holds besides the model and the job (tokenizer, the calibration corpus's
/// text and tokens, buffers, thread stacks): measured 0.1–0.15 GiB with SmolLM2's tokenizer and
/// the C4 sample.
pub const PROCESS_BYTES: u64 = 256 << 20;

enum Stats {
    None,
    Norms(wanda::InputNorms),
    Hessian(sparsegpt::Hessian),
    /// SparseGPT's Hessian while it accumulates on a GPU; a `Hessian` once the statistics pass
    /// is over.
    DeviceHessian(sparsegpt::DeviceHessian),
    /// SparseGPT's factor, made from the Hessian (in its buffer) before the first linear that
    /// reads the input.
    Factor(sparsegpt::InverseFactor),
}

fn tap_tensor(t: &crate::model::Taps, tap: Tap) -> &Tensor {
    match tap {
        Tap::Attn => &t.attn_in,
        Tap::O => &t.o_in,
        Tap::Mlp => &t.mlp_in,
        Tap::Down => &t.down_in,
    }
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Prunes one linear given the statistics of its input; returns its report.
fn prune_linear(
    lin: &mut SparseLinear,
    name: String,
    stats: &Stats,
    opts: &PruneOptions,
) -> Result<PrunedLinear> {
    let (rows, cols) = (lin.out_features(), lin.in_features());
    let w = to_f32_vec(&lin.dense_weight()?)?;
    let before = crate::model::linear::zero_fraction(&w);
    let mut report = PrunedLinear {
        name: name.clone(),
        sparsity_before: before,
        sparsity: 0.0,
        n_m_valid: None,
        obs_loss: None,
        percdamp_used: None,
        dead_inputs: None,
    };
    let pruned = match (opts.method, stats) {
        (PruneMethod::Magnitude, _) => magnitude::prune(&w, rows, cols, &opts.sparsity),
        (PruneMethod::Wanda, Stats::Norms(n)) => wanda::prune(&w, rows, cols, n, &opts.sparsity),
        (PruneMethod::SparseGpt, Stats::Factor(f)) => {
            let out = sparsegpt::prune_factored(w, rows, cols, f, &opts.sparsity, opts.blocksize)
                .map_err(|e| Error::Msg(format!("{name}: {e}")))?;
            report.obs_loss = Some(out.obs_loss);
            report.percdamp_used = Some(out.percdamp_used);
            report.dead_inputs = Some(out.dead_inputs);
            out.weight
        }
        _ => bail!("internal: {name} has no statistics for {:?}", opts.method),
    };
    let dev = lin.weight.device().clone();
    lin.set_weight(Tensor::from_vec(pruned, (rows, cols), &dev)?.to_dtype(lin.weight.dtype())?)?;
    // Counted on the stored weight: a narrower dtype may round more entries to zero.
    report.sparsity = lin.sparsity()?;
    if let Sparsity::NM { n, m } = opts.sparsity {
        report.n_m_valid = Some(lin.satisfies_n_m(n, m)?);
    }
    Ok(report)
}

/// Prunes `model` in place. `calibration` holds the token windows (required by Wanda and
/// SparseGPT, ignored by magnitude). An error while a block is pruned leaves the model without
/// that block.
pub fn prune_model(
    model: &mut Llama,
    calibration: &[Vec<u32>],
    opts: &PruneOptions,
    progress: &mut dyn FnMut(BlockDone),
) -> Result<PruneReport> {
    let mut layers: Vec<Option<Block>> = std::mem::take(&mut model.layers)
        .into_iter()
        .map(Some)
        .collect();
    let mut done = Vec::with_capacity(layers.len());
    let xs = if opts.method.needs_calibration() {
        calibration
            .iter()
            .map(|w| model.embed(&Tensor::new(w.as_slice(), model.device())?.unsqueeze(0)?))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let report = prune_blocks(
        model,
        xs,
        &mut |i| {
            layers[i]
                .take()
                .ok_or_else(|| Error::Msg(format!("internal: block {i} taken twice")))
        },
        &mut |_, b| {
            done.push(b);
            Ok(())
        },
        opts,
        progress,
    );
    // After an error, the blocks not yet reached go back too (all of them when an option was
    // rejected before pruning started).
    done.extend(layers.into_iter().flatten());
    model.layers = done;
    report
}

/// The pruning driver over blocks brought in one at a time: `next(i)` gives block `i` (read from
/// memory or from disk), `finished(i, block)` takes it back pruned, before block `i + 1` is asked
/// for. `xs` are the embedded calibration windows (`[1, T, hidden]`; none for magnitude);
/// `shell` supplies the rotary tables, its own `layers` are not used.
pub fn prune_blocks(
    shell: &Llama,
    mut xs: Vec<Tensor>,
    next: &mut dyn FnMut(usize) -> Result<Block>,
    finished: &mut dyn FnMut(usize, Block) -> Result<()>,
    opts: &PruneOptions,
    progress: &mut dyn FnMut(BlockDone),
) -> Result<PruneReport> {
    let cfg = &shell.cfg;
    // Check every layer before touching any (all blocks have the config's widths).
    for i in 0..cfg.num_hidden_layers {
        for (short, full, tap) in LINEARS
            .iter()
            .filter(|l| opts.targets.iter().any(|t| t == l.0))
        {
            let width = match tap {
                Tap::O => cfg.num_attention_heads * cfg.head_dim(),
                Tap::Down => cfg.intermediate_size,
                _ => cfg.hidden_size,
            };
            opts.sparsity
                .check_layer(&format!("model.layers.{i}.{full} ({short})"), width)?;
        }
    }
    if opts.method == PruneMethod::SparseGpt {
        if opts.blocksize == 0 {
            bail!("--blocksize must be positive");
        }
        if let Sparsity::NM { m, .. } = opts.sparsity {
            if !opts.blocksize.is_multiple_of(m) {
                bail!(
                    "--blocksize {} must be a multiple of M = {m} for N:M SparseGPT",
                    opts.blocksize
                );
            }
        }
    }
    if opts.method.needs_calibration() && xs.is_empty() {
        bail!("{:?} needs calibration windows (--calib FILE)", opts.method);
    }
    let start = Instant::now();
    let mut warnings = Vec::new();
    let (nsamples, seqlen) = (xs.len(), xs.first().map_or(0, |x| x.dims()[1]));
    let groups: Vec<Vec<Tap>> = if opts.true_sequential {
        vec![
            vec![Tap::Attn],
            vec![Tap::O],
            vec![Tap::Mlp],
            vec![Tap::Down],
        ]
    } else {
        vec![vec![Tap::Attn, Tap::O, Tap::Mlp, Tap::Down]]
    };
    let n_blocks = cfg.num_hidden_layers;
    let mut linears = Vec::new();
    let mut blocks = Vec::new();
    for i in 0..n_blocks {
        let t0 = Instant::now();
        let mut timing = BlockTiming::default();
        let mut block = next(i)?;
        timing.load_wait = t0.elapsed().as_secs_f64();
        for group in &groups {
            let wanted: Vec<&(&str, &str, Tap)> = LINEARS
                .iter()
                .filter(|l| group.contains(&l.2) && opts.targets.iter().any(|t| t == l.0))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            // One statistic per distinct input (q/k/v share one, gate/up share one).
            let mut stats: Vec<(Tap, Stats)> = Vec::new();
            for l in &wanted {
                if stats.iter().any(|(t, _)| *t == l.2) {
                    continue;
                }
                let width = block.linear(l.1).map_or(0, |x| x.in_features());
                let s = match opts.method {
                    PruneMethod::Magnitude => Stats::None,
                    PruneMethod::Wanda => Stats::Norms(wanda::InputNorms::new(width)),
                    PruneMethod::SparseGpt if shell.device().is_cpu() => {
                        Stats::Hessian(sparsegpt::Hessian::new(width))
                    }
                    PruneMethod::SparseGpt => {
                        Stats::DeviceHessian(sparsegpt::DeviceHessian::new(width))
                    }
                };
                stats.push((l.2, s));
            }
            let ts = Instant::now();
            if opts.method.needs_calibration() {
                let mut add = |taps: crate::model::Taps| -> Result<()> {
                    for (tap, s) in stats.iter_mut() {
                        let t = tap_tensor(&taps, *tap);
                        match s {
                            Stats::Norms(n) => n.add_tensor(t)?,
                            Stats::Hessian(h) => h.add_tensor(t)?,
                            Stats::DeviceHessian(h) => h.add(t)?,
                            Stats::None | Stats::Factor(_) => {}
                        }
                    }
                    Ok(())
                };
                let block = &block;
                // Windows at once, one per core (crate::par); the norms still add up in window
                // order. (SparseGPT's Hessian products are parallel themselves.)
                crate::par::items_in_order(
                    opts.method == PruneMethod::Wanda && shell.device().is_cpu(),
                    xs.len(),
                    |w| shell.taps_of(block, &xs[w]),
                    |_, taps| add(taps),
                )?;
            }
            let stats = stats
                .into_iter()
                .map(|(tap, s)| match s {
                    Stats::DeviceHessian(h) => Ok((tap, Stats::Hessian(h.finish()?))),
                    s => Ok((tap, s)),
                })
                .collect::<Result<Vec<_>>>()?;
            timing.statistics += ts.elapsed().as_secs_f64();
            let tp = Instant::now();
            let mut stats = stats;
            for (k, l) in wanted.iter().enumerate() {
                let name = format!("model.layers.{i}.{}", l.1);
                let slot = stats.iter_mut().find(|(t, _)| *t == l.2).map(|(_, s)| s);
                let s = match slot {
                    Some(s) => {
                        // SparseGPT factorises each input's Hessian once, in its own buffer.
                        *s = match std::mem::replace(s, Stats::None) {
                            Stats::Hessian(h) => Stats::Factor(
                                sparsegpt::InverseFactor::new(h, opts.percdamp)
                                    .map_err(|e| Error::Msg(format!("{name}: {e}")))?,
                            ),
                            other => other,
                        };
                        s
                    }
                    None => &mut Stats::None,
                };
                let lin = block
                    .linear_mut(l.1)
                    .ok_or_else(|| Error::Msg(format!("internal: no linear {name}")))?;
                let r = prune_linear(lin, name, s, opts)?;
                // Freed after the last linear that reads this input.
                if !wanted[k + 1..].iter().any(|later| later.2 == l.2) {
                    *s = Stats::None;
                }
                if r.sparsity_before > 0.01 {
                    warnings.push(format!(
                        "{} was already {:.1}% sparse before pruning; pruning went ahead",
                        r.name,
                        100.0 * r.sparsity_before
                    ));
                }
                linears.push(r);
            }
            timing.pruning += tp.elapsed().as_secs_f64();
        }
        // The pruned block's outputs are the next block's inputs (the last block has none).
        let tf = Instant::now();
        if i + 1 < n_blocks {
            // Windows at once, one per core (crate::par); each input is dropped as soon as its
            // output exists, so at most one window per core is held twice.
            let block = &block;
            xs =
                crate::par::map_owned(shell.device().is_cpu(), std::mem::take(&mut xs), |_, x| {
                    shell.run_block(block, &x)
                })?;
        }
        timing.propagation = tf.elapsed().as_secs_f64();
        finished(i, block)?;
        timing.total = t0.elapsed().as_secs_f64();
        blocks.push(timing);
        progress(BlockDone {
            index: i,
            total: n_blocks,
            timing,
        });
    }
    Ok(PruneReport {
        linears,
        blocks,
        total_seconds: start.elapsed().as_secs_f64(),
        estimated_bytes: memory_estimate(cfg, shell.compute_dtype(), opts, nsamples, seqlen),
        warnings,
    })
}
