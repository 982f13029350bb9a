//! `spp report DIR`: one readable summary of an `spp run` directory — `DIR/report.md` (with the
//! plots as SVG files in `DIR/plots/`) and a self-contained `DIR/report.html` (inline CSS and
//! SVG, no scripts, no external resources).
//!
//! What it reads (the contract `spp run` writes): `DIR/run.json` (recipe, name, spp version,
//! stage order, start time, command) and per stage `DIR/<stage>/stage.json` (kind, the label of
//! the model it produced or evaluated, the exact argv of its commands, status, seconds, peak
//! memory) plus the stage's outputs: `model/prune.json`, `model/merge.json`,
//! `adapter/{train.json,adapter_config.json,metrics.jsonl}`, `ppl.json`, `tasks.json`,
//! `inspect.json`. Evaluation outputs are optional: a missing kind of number is a missing
//! column, not an error. A stage without `stage.json` or whose status is not `done` is listed
//! as unfinished and its outputs are not used. An unreadable output of a finished stage is
//! reported as a warning in the report; only a missing or unreadable `run.json` is an error.
//!
//! The report answers the question a recipe asks: what did pruning cost against the dense model
//! (perplexity, mean zero-shot accuracy) and which fraction of that gap did fine-tuning win
//! back — `(pruned − fine-tuned) / (pruned − dense)` for perplexity, and the same with the
//! signs turned for accuracy — each computed only over numbers measured the same way.

pub mod svg;

mod analysis;
mod blocks;
mod compare;
mod document;
mod format;
mod load;
mod render;

pub(crate) use format::fmt_secs;

use crate::error::{IoContext, Result};
use document::compose;
use load::load;
use render::{render_html, render_markdown};
use std::path::{Path, PathBuf};

/// What `build` wrote.
#[derive(Debug, Clone)]
pub struct ReportPaths {
    pub markdown: PathBuf,
    pub html: PathBuf,
    /// The SVG files `report.md` links to (`DIR/plots/*.svg`).
    pub plots: Vec<PathBuf>,
}

/// Read the run directory `dir` and write `dir/report.md`, `dir/plots/*.svg` and
/// `dir/report.html`, each atomically (a temporary file renamed into place).
pub fn build(dir: &Path) -> Result<ReportPaths> {
    let run = load(dir)?;
    let (doc, figures) = compose(&run);
    let plots_dir = dir.join("plots");
    let mut plots = Vec::new();
    if !figures.is_empty() {
        std::fs::create_dir_all(&plots_dir).at(&plots_dir)?;
    }
    for (file, svg) in &figures {
        let p = plots_dir.join(file);
        crate::model::checkpoint::write_file_atomically(&p, svg.as_bytes())?;
        plots.push(p);
    }
    let markdown = dir.join("report.md");
    let html = dir.join("report.html");
    crate::model::checkpoint::write_file_atomically(&markdown, render_markdown(&doc).as_bytes())?;
    crate::model::checkpoint::write_file_atomically(
        &html,
        render_html(&doc, &run.title()).as_bytes(),
    )?;
    Ok(ReportPaths {
        markdown,
        html,
        plots,
    })
}

#[cfg(test)]
mod tests {
    use super::document::{c, t};
    use super::format::*;
    use super::load::layer_index;
    use super::render::*;
    use crate::prune::Sparsity;

    #[test]
    fn dates_and_durations() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00 UTC");
        assert_eq!(fmt_unix(1_764_300_000), "2025-11-28 03:20 UTC");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(fmt_secs(12.34), "12.3 s");
        assert_eq!(fmt_secs(125.0), "2 min 05 s");
        assert_eq!(fmt_secs(3725.0), "1 h 02 min");
        assert_eq!(fmt_bytes(3 << 29), "1.50 GiB");
        assert_eq!(fmt_bytes(200 << 20), "200 MiB");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_int(424), "424");
    }

    #[test]
    fn layer_index_and_escaping() {
        assert_eq!(layer_index("model.layers.12.mlp.up_proj"), Some(12));
        assert_eq!(layer_index("lm_head"), None);
        assert_eq!(md_escape("a|b<c>"), r"a\|b\<c\>");
        let spans = [t("x < y & z"), c("a<b")];
        assert_eq!(html_spans(&spans), "x &lt; y &amp; z<code>a&lt;b</code>");
        assert_eq!(md_spans(&[c("a`b")]), "``a`b``");
    }

    #[test]
    fn sparsity_options_read_both_kinds() {
        let read = |v| serde_json::from_value::<Sparsity>(v).unwrap();
        let nm = read(serde_json::json!({"kind": "n_m", "n": 2, "m": 4}));
        let r = read(serde_json::json!({"kind": "unstructured", "ratio": 0.5}));
        assert_eq!(fmt_sparsity_opt(&nm), "2:4");
        assert_eq!(fmt_sparsity_opt(&r), "50.0%");
    }
}
