//! The learning-rate range test (`spp train --find-lr`): a short run whose learning rate rises
//! geometrically from `lr_min` to `lr_max`, one optimizer step per value, on the same data order,
//! batches, adapters and AdamW as training; the training loss of every step is smoothed and the
//! suggested learning rate is picked by [`RULE`]. Nothing is saved but the record.
//!
//! The rule and its reasons are in `docs/TRAINING.md`.

use super::data::{self, Dataset, Stream};
use super::{step_grads, AdamW, Progress, StepInputs, TrainOptions, Weights};
use crate::adapter::{self, AdapterSpec};
use crate::bail;
use crate::error::Result;
use crate::model::Llama;
use candle_core::Var;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The rule that picks the suggestion, as recorded.
pub const RULE: &str = "a tenth of the learning rate at the minimum of the smoothed loss";
/// The weight of the past in the smoothed loss (an exponential moving average, bias-corrected).
pub const BETA: f64 = 0.9;
/// The test stops once the smoothed loss exceeds this multiple of its minimum (it diverged).
pub const DIVERGED: f64 = 4.0;

/// The range of a test.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub lr_min: f64,
    pub lr_max: f64,
    pub steps: usize,
}

impl Range {
    /// The learning rate of step `i` (from 0): `lr_min · (lr_max / lr_min)^(i / (steps − 1))`.
    pub fn lr(&self, i: usize) -> f64 {
        if self.steps < 2 {
            return self.lr_min;
        }
        let t = i as f64 / (self.steps - 1) as f64;
        self.lr_min * (self.lr_max / self.lr_min).powf(t)
    }

    pub fn check(&self) -> Result<()> {
        if !(self.lr_min > 0.0 && self.lr_max > self.lr_min && self.lr_max.is_finite()) {
            bail!(
                "--lr-min {} and --lr-max {}: the range test needs 0 < --lr-min < --lr-max",
                self.lr_min,
                self.lr_max
            );
        }
        if self.steps < 5 {
            bail!(
                "--find-lr-steps {}: the range test needs at least 5 steps to smooth and pick from",
                self.steps
            );
        }
        Ok(())
    }
}

/// One step of the test.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Point {
    pub step: usize,
    pub lr: f64,
    pub loss: f64,
    pub smoothed: f64,
}

/// What a test found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LrFindReport {
    pub range: Option<Range>,
    pub points: Vec<Point>,
    /// The learning rate where the smoothed loss was lowest.
    pub lr_at_min_loss: f64,
    pub min_smoothed_loss: f64,
    pub suggested_lr: f64,
    pub rule: String,
    /// The test stopped before `lr_max` because the loss diverged.
    pub stopped_early: bool,
    /// What to make of the result (the minimum at an end of the range, an early stop).
    pub notes: Vec<String>,
    pub trainable_parameters: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// The bias-corrected exponential moving average of `losses` with weight `beta` on the past.
pub fn smooth(losses: &[f64], beta: f64) -> Vec<f64> {
    let mut avg = 0.0;
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            avg = beta * avg + (1.0 - beta) * l;
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// The index of the smoothed minimum and the suggestion by [`RULE`]; `None` when no point is
/// finite.
pub fn suggest(lrs: &[f64], smoothed: &[f64]) -> Option<(usize, f64)> {
    let (i, _) = smoothed
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    Some((i, lrs[i] / 10.0))
}

/// Whether the test should stop after the smoothed loss `s` (minimum so far `best`).
pub fn diverged(s: f64, best: f64) -> bool {
    !s.is_finite() || s > DIVERGED * best
}

/// The suggestion and notes from the points of a finished test.
pub fn conclude(points: &[Point], range: &Range, stopped_early: bool) -> Result<LrFindReport> {
    let lrs: Vec<f64> = points.iter().map(|p| p.lr).collect();
    let sm: Vec<f64> = points.iter().map(|p| p.smoothed).collect();
    let Some((i, suggested)) = suggest(&lrs, &sm) else {
        bail!("the range test measured no finite loss: check the data, or lower --lr-min");
    };
    let mut notes = Vec::new();
    if i == 0 {
        notes.push(format!(
            "the smoothed loss was lowest at the first step (lr {:.2e}): it only rose, so the suggestion is below the range; rerun with a lower --lr-min",
            lrs[0]
        ));
    }
    if i + 1 == points.len() && !stopped_early {
        notes.push(format!(
            "the smoothed loss still fell at the last step (lr {:.2e}): rerun with a higher --lr-max or more --find-lr-steps to see where it turns",
            lrs[i]
        ));
    }
    if stopped_early {
        notes.push(format!(
            "stopped at step {} of {}: the smoothed loss passed {DIVERGED}× its minimum (or was not finite)",
            points.len(),
            range.steps
        ));
    }
    Ok(LrFindReport {
        range: Some(*range),
        points: points.to_vec(),
        lr_at_min_loss: lrs[i],
        min_smoothed_loss: sm[i],
        suggested_lr: suggested,
        rule: RULE.into(),
        stopped_early,
        notes,
        ..Default::default()
    })
}

/// Runs the range test on `model` (adapters are attached here and left attached) with the data
/// order, batches and optimizer `opts` gives training; `opts.lr`, the schedule and the
/// validation and checkpoint settings are not used.
pub fn range_test(
    model: &mut Llama,
    weights: Weights,
    ds: &Dataset,
    opts: &TrainOptions,
    range: &Range,
    progress: &mut dyn Progress,
) -> Result<LrFindReport> {
    range.check()?;
    if opts.micro_batch_size == 0
        || opts.batch_size == 0
        || !opts.batch_size.is_multiple_of(opts.micro_batch_size)
    {
        bail!(
            "--batch-size {} must be a positive multiple of --micro-batch-size {}",
            opts.batch_size,
            opts.micro_batch_size
        );
    }
    if opts.val_size >= ds.examples.len() {
        bail!(
            "--val-size {} leaves no training examples ({} in the data)",
            opts.val_size,
            ds.examples.len()
        );
    }
    let t_run = Instant::now();
    let (train_idx, _) = data::split(ds.examples.len(), opts.val_size, opts.seed);
    let accum = opts.batch_size / opts.micro_batch_size;
    let spec = AdapterSpec {
        method: opts.method,
        targets: opts.targets.clone(),
        r: opts.r,
        scale: opts.scale,
        dropout: opts.dropout,
    };
    let ctl = adapter::attach(model, &spec, opts.seed)?;
    let params: Vec<Var> = adapter::trainable(model)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let n_params: usize = params.iter().map(|p| p.elem_count()).sum();
    let mut adam = AdamW::new(&params)?;
    let device = model.device().clone();
    let mut stream = Stream::new(train_idx, opts.seed);
    let (mut pos, mut tokens_all) = (0usize, 0usize);
    let mut points: Vec<Point> = Vec::new();
    let mut losses: Vec<f64> = Vec::new();
    let mut best = f64::INFINITY;
    let mut stopped_early = false;
    ctl.train.store(true, Ordering::Relaxed);
    for step in 0..range.steps {
        let t0 = Instant::now();
        let lr = range.lr(step);
        let inputs = StepInputs {
            model,
            weights,
            params: &params,
            ds,
            ctl: &ctl,
            opts,
            device: &device,
        };
        let (mut grads, micro, tokens) = step_grads(&inputs, &mut stream, step, &mut pos)?;
        let loss_sum = micro.iter().fold(0.0, |a, l| a + l);
        let loss = loss_sum / accum as f64;
        tokens_all += tokens;
        losses.push(loss);
        let smoothed = *smooth(&losses, BETA).last().unwrap_or(&f64::NAN);
        points.push(Point {
            step: step + 1,
            lr,
            loss,
            smoothed,
        });
        progress.step(&format!(
            "range test step {}/{} lr {lr:.2e} loss {loss:.4} smoothed {smoothed:.4} {:.0} tok/s",
            step + 1,
            range.steps,
            tokens as f64 / t0.elapsed().as_secs_f64()
        ));
        if diverged(smoothed, best) {
            stopped_early = step + 1 < range.steps;
            break;
        }
        best = best.min(smoothed);
        super::clip_grad_norm(&mut grads, opts.max_grad_norm)?;
        adam.step(&params, &grads, lr, opts.weight_decay)?;
    }
    ctl.train.store(false, Ordering::Relaxed);
    let mut rep = conclude(&points, range, stopped_early)?;
    rep.trainable_parameters = n_params;
    rep.tokens = tokens_all;
    rep.seconds = t_run.elapsed().as_secs_f64();
    rep.peak_rss_bytes = crate::sys::peak_rss_bytes();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_geometric() {
        let r = Range {
            lr_min: 1e-6,
            lr_max: 1.0,
            steps: 7,
        };
        let lrs: Vec<f64> = (0..7).map(|i| r.lr(i)).collect();
        for (i, want) in [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0].iter().enumerate() {
            assert!((lrs[i] / want - 1.0).abs() < 1e-9, "{i}: {}", lrs[i]);
        }
        assert!(r.check().is_ok());
        let bad = Range { lr_max: 1e-7, ..r };
        assert!(bad.check().unwrap_err().to_string().contains("--lr-min"));
        let few = Range { steps: 3, ..r };
        assert!(few.check().is_err());
    }

    #[test]
    fn smoothing_is_a_bias_corrected_average() {
        // A constant stays itself from the first step (the bias correction).
        assert!(smooth(&[2.0; 5], 0.9)
            .iter()
            .all(|s| (s - 2.0).abs() < 1e-12));
        // By hand: avg1 = 0.1·1 → /0.1 = 1; avg2 = 0.09 + 0.3 = 0.39 → /0.19.
        let s = smooth(&[1.0, 3.0], 0.9);
        assert!((s[1] - 0.39 / 0.19).abs() < 1e-12);
    }

    /// A synthetic range test: the loss falls from 3 towards 1 while lr grows, is lowest
    /// around lr 1e-2, then climbs steeply (divergence), with noise of a fixed pattern.
    fn synthetic(lr: f64) -> f64 {
        let x = lr.log10() + 2.0; // 0 at lr 1e-2
        let base = if x < 0.0 {
            1.0 + 0.12 * x * x
        } else {
            1.0 + 6.0 * x * x
        };
        base + 0.02 * (lr.log10() * 37.0).sin()
    }

    #[test]
    fn the_rule_on_a_synthetic_curve() {
        let r = Range {
            lr_min: 1e-6,
            lr_max: 1.0,
            steps: 61,
        };
        let mut pts = Vec::new();
        let mut losses = Vec::new();
        let mut best = f64::INFINITY;
        let mut stopped = false;
        for i in 0..r.steps {
            let lr = r.lr(i);
            losses.push(synthetic(lr));
            let s = *smooth(&losses, BETA).last().unwrap();
            pts.push(Point {
                step: i + 1,
                lr,
                loss: synthetic(lr),
                smoothed: s,
            });
            if diverged(s, best) {
                stopped = i + 1 < r.steps;
                break;
            }
            best = best.min(s);
        }
        assert!(stopped, "the steep rise stops the test before lr_max");
        let rep = conclude(&pts, &r, stopped).unwrap();
        // The smoothed curve lags the raw one by a few steps: its minimum is at or just past
        // the raw minimum (1e-2), within a factor 2 here; the suggestion is a tenth of it.
        assert!(
            rep.lr_at_min_loss >= 1e-2 / 1.5 && rep.lr_at_min_loss <= 2e-2,
            "{}",
            rep.lr_at_min_loss
        );
        assert_eq!(rep.suggested_lr, rep.lr_at_min_loss / 10.0);
        assert_eq!(rep.rule, RULE);
        assert!(rep.notes.iter().any(|n| n.contains("stopped at step")));

        // A curve that only falls: the minimum is the last point, with a note to widen the range.
        let lrs: Vec<f64> = (0..10).map(|i| 1e-4 * 2f64.powi(i)).collect();
        let falling: Vec<Point> = lrs
            .iter()
            .enumerate()
            .map(|(i, &lr)| Point {
                step: i + 1,
                lr,
                loss: 5.0 - i as f64 * 0.1,
                smoothed: 5.0 - i as f64 * 0.1,
            })
            .collect();
        let rep = conclude(&falling, &r, false).unwrap();
        assert_eq!(rep.suggested_lr, lrs[9] / 10.0);
        assert!(rep.notes[0].contains("higher --lr-max"), "{:?}", rep.notes);
        // Only NaN: an error, not a suggestion.
        let nan = vec![Point {
            step: 1,
            lr: 1e-3,
            loss: f64::NAN,
            smoothed: f64::NAN,
        }];
        assert!(conclude(&nan, &r, true).is_err());
    }
}
