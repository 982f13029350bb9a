//! The library from Rust: Wanda 2:4 pruning, a short SPP fine-tuning, the sparsity-preserving
//! merge and WikiText-2 perplexity, each job with its defaults and the record it returns. The
//! calibration, training and evaluation files come from `$SPP_DATA_DIR` (README, Data).
//!
//! ```sh
//! SPP_DATA_DIR=../shared/data cargo run --release --example prune_spp_merge -- models/smollm2-135m /tmp/spp-example
//! ```

use spp::job::{self, Log, MergeArgs, PplArgs, PruneArgs, TrainArgs};
use spp::prune::{PruneMethod, Sparsity};

/// Progress on stderr.
struct Print;

impl Log for Print {
    fn line(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

fn main() -> spp::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out] = &args[..] else {
        spp::bail!("usage: prune_spp_merge MODEL_DIR OUT_DIR (with SPP_DATA_DIR set)");
    };
    let out = std::path::Path::new(out);
    let data = |rel: &str| job::data_path(None, rel, "path");
    let (pruned, adapter, merged) = (out.join("pruned"), out.join("adapter"), out.join("merged"));

    let mut prune = PruneArgs::new(
        model,
        PruneMethod::Wanda,
        Sparsity::NM { n: 2, m: 4 },
        &pruned,
    );
    (prune.nsamples, prune.seqlen) = (8, 512);
    let p = job::prune(&prune, &mut Print)?;

    let mut train = TrainArgs::new(&pruned, data("alpaca/alpaca_gpt4_en_demo.json")?, &adapter);
    (train.max_steps, train.batch_size, train.cutoff) = (Some(4), 4, 128);
    train.val_size = Some(16);
    let t = job::train(&train, &mut Print)?;

    let m = job::merge(&MergeArgs::new(&pruned, &adapter, &merged), &mut Print)?;

    let mut ppl = PplArgs::new(&merged, data("wikitext2/wiki.test.raw")?);
    ppl.max_windows = Some(2);
    let e = job::eval_ppl(&ppl, &mut Print)?;

    let sparsity = p.result.map_or(f64::NAN, |r| r.linear_sparsity);
    let loss = t.report.last_loss.unwrap_or(f64::NAN);
    let kept = m.all_zeros_kept == Some(true);
    println!("pruned: linear sparsity {sparsity:.4}");
    println!("trained: {} steps, last loss {loss:.4}", t.report.steps);
    println!(
        "merged: every zero kept {kept}, 2:4 {}",
        m.sparsity.all_linears_2_4
    );
    println!("perplexity of the merged model: {:.4}", e.result.ppl);
    Ok(())
}
