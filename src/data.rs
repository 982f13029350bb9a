//! Text data sets on disk.

use crate::bail;
use crate::error::{Error, IoContext, Result};
use std::path::Path;

/// The documents of a text file: the whole file for plain text, one per line's `text` field for
/// JSONL (`.jsonl`). CRLF is normalised to LF.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let raw = std::fs::read_to_string(path).at(path)?;
    if path.extension().is_none_or(|e| e != "jsonl") {
        return Ok(vec![raw.replace("\r\n", "\n")]);
    }
    let mut docs = Vec::new();
    for (i, line) in raw
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Msg(format!("{}:{}: invalid JSON ({e})", path.display(), i + 1)))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => docs.push(t.replace("\r\n", "\n")),
            None => bail!("{}:{}: no string field \"text\"", path.display(), i + 1),
        }
    }
    Ok(docs)
}
