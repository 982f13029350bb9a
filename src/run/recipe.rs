//! `RECIPE.toml`: the whole experiment in one file, checked completely before any stage runs.
//!
//! ```toml
//! name = "smollm2-135m-spp"
//! model = "../models/smollm2-135m"      # paths are relative to the recipe file
//! # dtype = "bf16"; device = "cuda"      # passed to every command that loads a model
//!
//! [prune]                               # optional: without it the dense model is fine-tuned
//! method = "wanda"                      # or a list: ["wanda", "sparsegpt"]
//! sparsity = ["2:4", 0.5]               # one or a list
//! calib = "../data/c4/c4_sample.jsonl"  # default: $SPP_DATA_DIR/c4/c4_sample.jsonl
//! nsamples = 16                         # any other `spp prune` option by its flag name
//!
//! [train]                               # optional
//! method = "spp"                        # spp | lora | lora-mask, or a list
//! data = "../data/alpaca/alpaca_gpt4_en_demo.json"
//! max_steps = 12                        # any other `spp train` option by its flag name
//! lr = ["find", 4e-3]                   # any option may be a list (a sweep); "find": range test
//!
//! [eval]                                # optional
//! ppl_text = "../data/wikitext2/wiki.test.raw"
//! seqlen = 2048
//! max_windows = 4
//! tasks = "all"                         # or a list of names
//! limit = 20
//! data_dir = "../data/eval"             # default: $SPP_DATA_DIR/eval
//! ```
//!
//! Every key of a section is a field of the subcommand's options struct (`spp::job::PruneArgs`,
//! `TrainArgs`, `PplArgs` and `TasksArgs`; `ppl_text` is `PplArgs`' `text`) and becomes its flag
//! (`max_steps` → `--max-steps`): the struct's flag definitions decide which keys a section
//! takes, which are switches and which are paths, and check the values, except the flags
//! `spp run` sets itself.

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::job::{PplArgs, PruneArgs, TasksArgs, TrainArgs};
use crate::model::LlamaConfig;
use crate::prune::Sparsity;
use clap::Arg;
use std::path::{Path, PathBuf};
use toml::Value;

pub use super::sweep::{setting_label, Axis, Flag, Flags, Setting};

const TOP: &[&str] = &["name", "model", "dtype", "device", "prune", "train", "eval"];
/// The flags of every model command: `spp run` sets them from the recipe's top level.
const MODEL_FLAGS: &[&str] = &["model", "dtype", "device", "adapter"];

/// The flags of `T` a recipe section sets: all but the model flags, `owned` (those `spp run`
/// sets itself) and hidden ones.
fn options<T: clap::Args>(owned: &[&str]) -> Vec<Arg> {
    T::augment_args(clap::Command::new("spp"))
        .get_arguments()
        .filter(|a| {
            let id = a.get_id().as_str();
            !MODEL_FLAGS.contains(&id) && !owned.contains(&id) && !a.is_hide_set()
        })
        .cloned()
        .collect()
}

/// `[prune]`: `spp prune`'s options (`method` and `sparsity` may be lists).
fn prune_options() -> Vec<Arg> {
    options::<PruneArgs>(&["out", "force", "max_shard_size"])
}

/// `[train]`: `spp train`'s options (any of them may be a list: a sweep; `lr` may be "find").
fn train_options() -> Vec<Arg> {
    options::<TrainArgs>(&[
        "out",
        "stream_blocks",
        "keep_blocks",
        "resume",
        "find_lr",
        "lr_from",
    ])
}

/// `[train]` keys that set the range test of `lr = "find"` and go to it alone.
pub const FIND_LR_KEYS: &[&str] = &["lr_min", "lr_max", "find_lr_steps"];
/// The value of `[train] lr` that runs a range test and trains with its suggestion.
pub const FIND: &str = "find";

/// `[eval]`: `ppl_text` (`spp eval ppl --text`), its `seqlen` and `max_windows`, and the task
/// settings of `spp eval tasks`.
fn eval_options() -> Vec<Arg> {
    let ppl = options::<PplArgs>(&[]);
    let text = ppl.iter().filter(|a| a.get_id() == "text");
    let mut all: Vec<Arg> = text.map(|a| a.clone().id("ppl_text")).collect();
    all.extend(ppl.iter().filter(|a| a.get_id() != "text").cloned());
    all.extend(options::<TasksArgs>(&[
        "no_prefix_sharing",
        "stream_blocks",
        "out",
        "force",
    ]));
    all
}

/// The recipe keys of a section's options.
fn keys(opts: &[Arg]) -> Vec<&str> {
    opts.iter().map(|a| a.get_id().as_str()).collect()
}

/// A flag without a value (true in the recipe: given; false: left out).
fn is_switch(a: &Arg) -> bool {
    !a.get_action().takes_values()
}

/// A path: resolved against the recipe's directory and checked to exist.
fn is_path(a: &Arg) -> bool {
    a.get_value_parser().type_id() == clap::value_parser!(PathBuf).type_id()
}

/// A checked recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    pub name: String,
    pub model: PathBuf,
    pub dtype: Option<String>,
    /// `--device` of every model command (cpu, cuda, cuda:N).
    pub device: Option<String>,
    pub prune: Option<Variants>,
    pub train: Option<Variants>,
    pub eval: Eval,
}

/// One section: the methods (× sparsities for pruning) to run, and the other flags as given.
#[derive(Debug, Clone)]
pub struct Variants {
    pub methods: Vec<String>,
    pub sparsities: Vec<String>,
    /// The options given one value (in key order).
    pub flags: Flags,
    /// `[train]`: the options given a list of values, in key order; every combination of their
    /// values is a setting of the sweep (none: one setting).
    pub sweep: Vec<Axis>,
    /// `[train]`: the range test's own flags ([`FIND_LR_KEYS`]), given to it alone.
    pub find: Flags,
}

impl Variants {
    /// Every setting of the sweep: one pick per axis, the last axis changing fastest; one
    /// empty setting without axes.
    pub fn grid(&self) -> Vec<Vec<(&str, &Setting)>> {
        let mut out: Vec<Vec<(&str, &Setting)>> = vec![vec![]];
        for axis in &self.sweep {
            out = out
                .into_iter()
                .flat_map(|head| {
                    axis.values.iter().map(move |v| {
                        let mut p = head.clone();
                        p.push((axis.key.as_str(), v));
                        p
                    })
                })
                .collect();
        }
        out
    }

    /// The flags of one setting of the grid: the single-valued flags and the setting's, in key
    /// order (so a recipe without lists gives the flags it always gave).
    pub fn flags_of(&self, setting: &[(&str, &Setting)]) -> Flags {
        let mut all: Flags = self.flags.clone();
        all.extend(setting.iter().filter_map(|(_, s)| s.flag.clone()));
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
}

#[derive(Debug, Clone, Default)]
pub struct Eval {
    pub ppl: Option<(PathBuf, Flags)>,
    pub tasks: Option<Flags>,
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != *cb) as usize).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn unknown_keys(table: &toml::Table, known: &[&str], section: &str) -> Vec<String> {
    table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| {
            let near = known
                .iter()
                .min_by_key(|c| distance(k, c))
                .copied()
                .unwrap_or("");
            let hint = if distance(k, near) <= 3 {
                format!(" (did you mean {section}{near}?)")
            } else {
                String::new()
            };
            format!("{section}{k}{hint}")
        })
        .collect()
}

fn scalar(v: &Value, key: &str) -> Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        _ => bail!("recipe key {key}: expected a string, number or boolean"),
    })
}

fn list(v: Option<&Value>, key: &str) -> Result<Vec<String>> {
    match v {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a.iter().map(|x| scalar(x, key)).collect(),
        Some(x) => Ok(vec![scalar(x, key)?]),
    }
}

impl Recipe {
    /// Reads and checks `path`: unknown keys (with the nearest known one), paths that do not
    /// exist, names that no subcommand accepts, and N:M patterns the model's widths do not allow.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let top: toml::Table = text
            .parse()
            .map_err(|e| Error::Msg(format!("{}: invalid TOML: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Every problem is collected, so one message lists them all before anything runs.
        let mut errors = Vec::new();
        let mut unknown = unknown_keys(&top, TOP, "");
        let mut section = |name: &str| -> Option<&toml::Table> {
            match top.get(name) {
                None => None,
                Some(Value::Table(t)) => Some(t),
                Some(_) => {
                    errors.push(format!("[{name}] must be a table"));
                    None
                }
            }
        };
        let (prune_t, train_t, eval_t) = (section("prune"), section("train"), section("eval"));
        let (prune_o, train_o, eval_o) = (prune_options(), train_options(), eval_options());
        for (t, opts, name) in [
            (prune_t, &prune_o, "prune."),
            (train_t, &train_o, "train."),
            (eval_t, &eval_o, "eval."),
        ] {
            if let Some(t) = t {
                unknown.extend(unknown_keys(t, &keys(opts), name));
            }
        }
        if !unknown.is_empty() {
            errors.push(format!("unknown recipe keys: {}", unknown.join(", ")));
        }
        let model = match top.get("model") {
            Some(Value::String(m)) => base.join(m),
            _ => {
                errors.push(
                    "the recipe needs model = \"DIR\" (a Hugging Face model directory)".into(),
                );
                PathBuf::new()
            }
        };
        let cfg_path = model.join("config.json");
        let cfg = if model.as_os_str().is_empty() {
            None
        } else if cfg_path.exists() {
            match LlamaConfig::load(&cfg_path) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(e.to_string());
                    None
                }
            }
        } else {
            errors.push(format!(
                "model {}: no config.json there (run scripts/setup.sh for the default model, or point model at a Hugging Face directory)",
                model.display()
            ));
            None
        };
        let name = match top.get("name") {
            Some(v) => got(scalar(v, "name"), &mut errors).unwrap_or_default(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if let Err(e) = check_name(&name) {
            errors.push(e);
        }
        let mut opt_scalar =
            |key: &str| top.get(key).and_then(|v| got(scalar(v, key), &mut errors));
        let dtype = opt_scalar("dtype");
        let device = opt_scalar("device");
        if let Some(d) = &dtype {
            if let Err(e) = d.parse::<crate::model::DTypeChoice>() {
                errors.push(format!("dtype: {e}"));
            }
        }

        let prune = match prune_t {
            None => None,
            Some(t) => {
                let methods =
                    got(list(t.get("method"), "prune.method"), &mut errors).unwrap_or_default();
                let sparsities =
                    got(list(t.get("sparsity"), "prune.sparsity"), &mut errors).unwrap_or_default();
                if methods.is_empty() || sparsities.is_empty() {
                    errors.push(
                        "[prune] needs method and sparsity (each one value or a list)".into(),
                    );
                }
                for m in &methods {
                    if let Err(e) = m.parse::<crate::prune::PruneMethod>() {
                        errors.push(format!("prune.method: {e}"));
                    }
                }
                for s in &sparsities {
                    match s.parse::<Sparsity>() {
                        Err(e) => errors.push(format!("prune.sparsity: {e}")),
                        Ok(sp) => {
                            if let Some(cfg) = &cfg {
                                for (lin, width) in [
                                    ("q/k/v/gate/up (hidden_size)", cfg.hidden_size),
                                    (
                                        "o (heads × head_dim)",
                                        cfg.num_attention_heads * cfg.head_dim(),
                                    ),
                                    ("down (intermediate_size)", cfg.intermediate_size),
                                ] {
                                    if let Err(e) = sp.check_layer(lin, width) {
                                        errors.push(format!(
                                            "prune.sparsity = {s:?} contradicts the model: {e}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
                Some(Variants {
                    methods,
                    sparsities,
                    flags: section_flags(
                        t,
                        &["method", "sparsity"],
                        ("prune", &prune_o),
                        base,
                        &mut errors,
                    ),
                    sweep: vec![],
                    find: vec![],
                })
            }
        };
        let train = match train_t {
            None => None,
            Some(t) => {
                let methods = match got(list(t.get("method"), "train.method"), &mut errors) {
                    Some(m) if !m.is_empty() => m,
                    _ => vec!["spp".to_string()],
                };
                for m in &methods {
                    if let Err(e) = m.parse::<crate::adapter::Method>() {
                        errors.push(format!("train.method: {e}"));
                    }
                }
                if t.get("data").is_none() {
                    errors.push(
                        "[train] needs data = \"FILE\" (Alpaca JSON/JSONL or JSONL with text)"
                            .into(),
                    );
                }
                let (all, sweep) = train_settings(t, &train_o, base, &mut errors);
                let (find, flags): (Flags, Flags) = all
                    .into_iter()
                    .partition(|f| FIND_LR_KEYS.contains(&f.key.as_str()));
                // Every value a key takes in the grid.
                let values = |key: &str| -> Vec<String> {
                    let one = flags.iter().filter(|f| f.key == key);
                    let many = sweep
                        .iter()
                        .filter(|a| a.key == key)
                        .flat_map(|a| a.values.iter().filter_map(|s| s.flag.as_ref()));
                    one.chain(many).filter_map(|f| f.value.clone()).collect()
                };
                let finds = values("lr").iter().any(|v| v == FIND);
                for k in FIND_LR_KEYS {
                    if !finds && t.contains_key(*k) {
                        errors.push(format!(
                            "train.{k} sets the learning-rate range test, which only lr = \"{FIND}\" runs: set lr = \"{FIND}\" (or a list holding it), or leave train.{k} out"
                        ));
                    }
                }
                if finds {
                    let get = |k: &str| find.iter().find(|f| f.key == k)?.value.clone();
                    let range = crate::train::lr_find::Range {
                        lr_min: get("lr_min")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(crate::job::LR_MIN),
                        lr_max: get("lr_max")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(crate::job::LR_MAX),
                        steps: get("find_lr_steps")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(crate::job::FIND_LR_STEPS),
                    };
                    if let Err(e) = range.check() {
                        errors.push(format!("train.lr = \"{FIND}\": {e}"));
                    }
                }
                let targets = values("targets");
                let targets = targets.first().map_or("all", |s| s.as_str());
                let rs = values("r");
                for r in rs.iter().filter_map(|v| v.parse::<usize>().ok()) {
                    let Some(cfg) = &cfg else { break };
                    if methods.iter().any(|m| m == "spp") {
                        let head = cfg.head_dim();
                        let targets = crate::prune::parse_targets(targets).unwrap_or_default();
                        let bad: Vec<String> = [
                            ("q", cfg.num_attention_heads * head),
                            ("k", cfg.num_kv_heads() * head),
                            ("v", cfg.num_kv_heads() * head),
                            ("o", cfg.hidden_size),
                            ("gate", cfg.intermediate_size),
                            ("up", cfg.intermediate_size),
                            ("down", cfg.hidden_size),
                        ]
                        .iter()
                        .filter(|(lin, rows)| targets.iter().any(|t| t == lin) && rows % r != 0)
                        .map(|(lin, rows)| format!("{lin}_proj ({rows} rows)"))
                        .collect();
                        if !bad.is_empty() {
                            errors.push(format!(
                                "train.r = {r}: SPP repeats each row of A out_features / r times, but r does not divide {}; choose an r dividing every target's rows (e.g. 16)",
                                bad.join(", ")
                            ));
                        }
                    }
                }
                Some(Variants {
                    methods,
                    sparsities: vec![],
                    flags,
                    sweep,
                    find,
                })
            }
        };
        let mut eval = Eval::default();
        if let Some(t) = eval_t {
            let all = section_flags(t, &[], ("eval", &eval_o), base, &mut errors);
            // Each command takes the keys that are its options.
            let pick = |opts: Vec<Arg>| -> Flags {
                let keys = keys(&opts);
                all.iter()
                    .filter(|f| keys.contains(&f.key.as_str()))
                    .cloned()
                    .collect()
            };
            let ppl_text = all.iter().find(|f| f.key == "ppl_text");
            if let Some(text) = ppl_text.and_then(|f| f.value.as_deref()) {
                eval.ppl = Some((PathBuf::from(text), pick(options::<PplArgs>(&[]))));
            }
            if t.contains_key("tasks") {
                let tasks = pick(options::<TasksArgs>(&[]));
                if let Some(names) = tasks
                    .iter()
                    .find(|f| f.key == "tasks")
                    .and_then(|f| f.value.as_deref())
                {
                    if let Err(e) = crate::eval::tasks::parse_names(names) {
                        errors.push(format!("eval.tasks: {e}"));
                    }
                }
                eval.tasks = Some(tasks);
            } else if t.contains_key("limit") || t.contains_key("data_dir") {
                errors.push(
                    "eval.limit / eval.data_dir without eval.tasks: name the tasks (or \"all\")"
                        .into(),
                );
            }
        }
        if !errors.is_empty() {
            bail!(
                "{}: the recipe cannot run:\n  - {}",
                path.display(),
                errors.join("\n  - ")
            );
        }
        Ok(Recipe {
            path: path.to_path_buf(),
            name,
            model,
            dtype,
            device,
            prune,
            train,
            eval,
        })
    }
}

/// `Some(value)`, or `None` with the error added to `errors`.
fn got<T>(r: Result<T>, errors: &mut Vec<String>) -> Option<T> {
    r.map_err(|e| errors.push(e.to_string())).ok()
}

/// A run's name becomes a directory name under `runs/`: it must stay one plain name.
fn check_name(name: &str) -> std::result::Result<(), String> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "name = {name:?}: a run's name is a directory name under runs/, so it must be one plain name (no /, \\, and not starting with .), e.g. \"my-run\""
        ))
    }
}

/// The flags of a section (its options `opts`; unknown keys are reported before), with paths
/// resolved against `base`; a missing path and a value of the wrong type or out of range are
/// added to `errors`.
fn section_flags(
    t: &toml::Table,
    skip: &[&str],
    (section, opts): (&str, &[Arg]),
    base: &Path,
    errors: &mut Vec<String>,
) -> Flags {
    let mut out = Vec::new();
    for (k, v) in t.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        let Some(arg) = opts.iter().find(|a| a.get_id() == k.as_str()) else {
            continue;
        };
        let key = format!("{section}.{k}");
        let flag = |value| Flag {
            key: k.clone(),
            flag: format!("--{}", arg.get_long().unwrap_or(k)),
            value,
        };
        if is_switch(arg) {
            match v {
                Value::Boolean(true) => out.push(flag(None)),
                Value::Boolean(false) => {}
                _ => errors.push(format!("{key}: expected true or false")),
            }
            continue;
        }
        let value = if k == "tasks" {
            got(list(Some(v), &key), errors).map(|l| l.join(","))
        } else {
            got(scalar(v, &key), errors)
        };
        let Some(mut value) = value else {
            continue;
        };
        if let Err(e) = check_value(arg, &value) {
            errors.push(format!("{key} = {}: {e}", toml_value(v)));
            continue;
        }
        if is_path(arg) {
            let p = base.join(&value);
            if !p.exists() {
                errors.push(format!("{key} = {value:?}: {} does not exist", p.display()));
            }
            value = p.display().to_string();
        }
        out.push(flag(Some(value)));
    }
    out
}

/// `[train]`'s options: those given one value (a list of one counts as one), and the axes of
/// those given a list. `lr` may be "find" (alone or in its list); the range test's own keys
/// ([`FIND_LR_KEYS`]) take one value.
fn train_settings(
    t: &toml::Table,
    opts: &[Arg],
    base: &Path,
    errors: &mut Vec<String>,
) -> (Flags, Vec<Axis>) {
    let find = |k: &str, v: &Value| k == "lr" && v.as_str() == Some(FIND);
    let find_flag = || Flag {
        key: "lr".into(),
        flag: "--lr".into(),
        value: Some(FIND.into()),
    };
    // Each key through `section_flags` on its own, so every value is checked as the flag checks it.
    let one = |k: &str, v: &Value, errors: &mut Vec<String>| -> Option<Flag> {
        if find(k, v) {
            return Some(find_flag());
        }
        let mut single = toml::Table::new();
        single.insert(k.to_string(), v.clone());
        section_flags(&single, &[], ("train", opts), base, errors).pop()
    };
    let (mut flags, mut sweep) = (Vec::new(), Vec::new());
    for (k, v) in t.iter().filter(|(k, _)| k.as_str() != "method") {
        if !opts.iter().any(|a| a.get_id() == k.as_str()) {
            continue;
        }
        let list = match v {
            Value::Array(a) => a,
            v => {
                flags.extend(one(k, v, errors));
                continue;
            }
        };
        if list.is_empty() {
            errors.push(format!(
                "train.{k} = []: give one value or a list of at least one"
            ));
            continue;
        }
        if list.len() == 1 {
            flags.extend(one(k, &list[0], errors));
            continue;
        }
        if FIND_LR_KEYS.contains(&k.as_str()) {
            errors.push(format!(
                "train.{k}: the range test's settings take one value, not a list"
            ));
            continue;
        }
        let arg = opts.iter().find(|a| a.get_id() == k.as_str());
        let mut values: Vec<Setting> = Vec::new();
        for x in list {
            let n = errors.len();
            let flag = one(k, x, errors);
            if errors.len() > n {
                continue;
            }
            let shown = match x {
                Value::String(s) if arg.is_some_and(is_path) => Path::new(s)
                    .file_name()
                    .map_or(s.clone(), |f| f.to_string_lossy().into_owned()),
                x => scalar(x, k).unwrap_or_default(),
            };
            if values.iter().any(|s| s.label == shown) {
                errors.push(format!(
                    "train.{k} lists {shown} twice (or two files of that name): each value names its stages, so give each once"
                ));
                continue;
            }
            values.push(Setting { label: shown, flag });
        }
        sweep.push(Axis {
            key: k.clone(),
            values,
        });
    }
    (flags, sweep)
}

/// `value` checked as the flag checks it on the command line (its range, its names); a path
/// is checked to exist instead.
fn check_value(arg: &Arg, value: &str) -> std::result::Result<(), String> {
    if is_path(arg) {
        return Ok(());
    }
    let cmd = clap::Command::new("spp")
        .no_binary_name(true)
        .arg(arg.clone().required(false));
    let long = arg.get_long().unwrap_or(arg.get_id().as_str());
    // `--flag=value`: a value starting with `-` stays a value.
    let parsed = cmd.try_get_matches_from([format!("--{long}={value}")]);
    // The flag's own message (clap wraps it with the flag's usage).
    parsed
        .map(|_| ())
        .map_err(|e| std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()))
}

/// A value as the recipe wrote it.
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The command-line arguments of `flags`: each flag, then its value if it has one.
pub fn args(flags: &[Flag]) -> Vec<String> {
    let mut out = Vec::new();
    for f in flags {
        out.push(f.flag.clone());
        out.extend(f.value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_key_is_suggested() {
        assert_eq!(distance("max_step", "max_steps"), 1);
        let t: toml::Table = "max_step = 3\nzzzzzzzzzz = 1".parse().unwrap();
        let u = unknown_keys(&t, &keys(&train_options()), "train.");
        assert!(
            u.contains(&"train.max_step (did you mean train.max_steps?)".to_string()),
            "{u:?}"
        );
        assert!(u.contains(&"train.zzzzzzzzzz".to_string()), "{u:?}");
    }

    #[test]
    fn flags_become_arguments() {
        let t: toml::Table = "max_steps = 3\ngrad_checkpoint = true\ntrain_on_inputs = false"
            .parse()
            .unwrap();
        let mut errors = Vec::new();
        let f = section_flags(
            &t,
            &[],
            ("train", &train_options()),
            Path::new("."),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            args(&f),
            [
                "--grad-checkpoint",
                "--max-steps",
                "3",
                "--train-on-inputs",
                "false"
            ]
        );
    }

    fn train_section(text: &str) -> (Flags, Vec<Axis>, Vec<String>) {
        let t: toml::Table = text.parse().unwrap();
        let mut errors = Vec::new();
        let (f, a) = train_settings(&t, &train_options(), Path::new("."), &mut errors);
        (f, a, errors)
    }

    #[test]
    fn lists_become_the_axes_of_a_grid() {
        let (flags, sweep, errors) = train_section(
            "lr = [\"find\", 4e-3, 1.2e-2]\nr = [8, 16]\nmax_steps = [50]\ngrad_checkpoint = [true, false]\ndata = \"Cargo.toml\"",
        );
        assert!(errors.is_empty(), "{errors:?}");
        // A list of one is one value; data and max_steps are single flags.
        assert_eq!(
            flags.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
            ["data", "max_steps"]
        );
        let keys: Vec<&str> = sweep.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["grad_checkpoint", "lr", "r"]);
        let labels: Vec<&str> = sweep[1].values.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["find", "0.004", "0.012"]);
        // A switch set to false is left out.
        assert_eq!(sweep[0].values[1].flag, None);
        let v = Variants {
            methods: vec!["spp".into()],
            sparsities: vec![],
            flags,
            sweep,
            find: vec![],
        };
        let grid = v.grid();
        assert_eq!(grid.len(), 2 * 3 * 2);
        // The last axis changes fastest; labels name every swept value in key order.
        let names: Vec<String> = grid.iter().map(|g| setting_label(g)).collect();
        assert_eq!(names[0], " (grad_checkpoint true, lr find, r 8)");
        assert_eq!(names[1], " (grad_checkpoint true, lr find, r 16)");
        assert_eq!(names[11], " (grad_checkpoint false, lr 0.012, r 16)");
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        // A setting's flags: single and swept ones merged in key order.
        assert_eq!(
            args(&v.flags_of(&grid[11])),
            [
                "--data",
                "./Cargo.toml",
                "--lr",
                "0.012",
                "--max-steps",
                "50",
                "--r",
                "16"
            ]
        );
        // Without lists: one setting, no label, the flags as given.
        let single = Variants {
            sweep: vec![],
            ..v.clone()
        };
        assert_eq!(single.grid().len(), 1);
        assert_eq!(setting_label(&single.grid()[0]), "");
        assert_eq!(single.flags_of(&single.grid()[0]), single.flags);
    }

    #[test]
    fn bad_lists_are_refused() {
        let (_, _, e) = train_section("lr = [1e-3, 1e-3]");
        assert!(e[0].contains("lists 0.001 twice"), "{e:?}");
        let (_, _, e) = train_section("r = [8, -1]");
        assert!(e[0].starts_with("train.r = -1"), "{e:?}");
        let (_, _, e) = train_section("lr = []");
        assert!(e[0].contains("train.lr = []"), "{e:?}");
        let (_, _, e) = train_section("lr = [\"fnd\", 1e-3]");
        assert!(e[0].contains("train.lr = \"fnd\""), "{e:?}");
        let (_, _, e) = train_section("lr_max = [1.0, 0.1]");
        assert!(e[0].contains("take one value"), "{e:?}");
    }

    #[test]
    fn values_are_checked_as_their_flags_check_them() {
        let train = train_options();
        let arg = |id: &str| train.iter().find(|a| a.get_id() == id).unwrap();
        assert!(check_value(arg("max_steps"), "two")
            .unwrap_err()
            .contains("whole number"));
        assert!(check_value(arg("r"), "-3").is_err());
        assert!(check_value(arg("seed"), "-1")
            .unwrap_err()
            .contains("\"-1\""));
        assert!(check_value(arg("targets"), "q,xyz")
            .unwrap_err()
            .contains("unknown target"));
        assert!(check_value(arg("schedule"), "step")
            .unwrap_err()
            .contains("linear or cosine"));
        assert!(check_value(arg("lr"), "1e-4").is_ok() && check_value(arg("data"), "").is_ok());
    }

    #[test]
    fn sections_take_the_subcommands_options() {
        let prune = keys(&prune_options()).join(",");
        assert_eq!(
            prune,
            "method,sparsity,calib,nsamples,seqlen,seed,true_sequential,blocksize,percdamp,targets,pack"
        );
        let eval = eval_options();
        assert_eq!(
            keys(&eval).join(","),
            "ppl_text,seqlen,max_windows,tasks,data_dir,limit,batch_size,batch_tokens"
        );
        let paths: Vec<&str> = eval
            .iter()
            .filter(|a| is_path(a))
            .map(|a| a.get_id().as_str())
            .collect();
        assert_eq!(paths, ["ppl_text", "data_dir"]);
        // spp train's options but out, stream_blocks, keep_blocks, resume, find_lr and lr_from.
        assert_eq!(keys(&train_options()).len(), 26);
    }
}
