//! `spp run RECIPE.toml`: prune → evaluate → fine-tune → merge → evaluate, as stages that each
//! run the `spp` subcommands (the same binary) and write their outputs and a `stage.json` into
//! their own directory.
//!
//! A stage's key is a hash of its commands and of the contents of everything it reads (the model
//! directory, data files, the outputs of earlier stages). With `--resume`, a stage whose
//! `stage.json` says done under the same key is skipped; an interrupted one restarts from scratch,
//! except training, which continues from its last checkpoint (bit-identical to an uninterrupted
//! run). Ctrl-C or SIGTERM is passed on to the running subcommand, which stops with `spp run`;
//! nothing is marked done that did not finish, so the directory is always resumable. A lock file
//! (`.spp-run.lock`, holding the pid) keeps two runs out of one directory.

pub mod recipe;
pub mod sweep;

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::model::checkpoint::write_json_atomically;
use crate::record::{RunRecord, StageKind as Kind, StageRecord};
use crate::report::fmt_secs;
use recipe::{args, Recipe};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One command of a stage: argv (argv[0] is `spp`) and, where the result comes on stdout, the
/// file in the stage directory that receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cmd {
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Stage {
    /// `03-train-wanda-2-4-spp`: also the directory name.
    pub name: String,
    pub kind: Kind,
    /// The model row this stage produces or evaluates: "dense", "wanda 2:4", "wanda 2:4 + spp".
    pub model: String,
    pub commands: Vec<Cmd>,
    /// Files and directories the stage reads (hashed into its key).
    pub inputs: Vec<PathBuf>,
}

/// `wanda 2:4 + spp` → `wanda-2-4-spp`.
fn slug(s: &str) -> String {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn sparsity_label(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(r) if !s.contains(':') => format!("{}%", (r * 100.0).round()),
        _ => s.to_string(),
    }
}

/// The stages of `recipe` in order, all under `out`.
pub fn plan(r: &Recipe, out: &Path) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let dir = |stages: &Vec<Stage>, kind: &str, label: &str| -> (String, PathBuf) {
        let name = format!("{:02}-{kind}-{}", stages.len(), slug(label));
        let path = out.join(&name);
        (name, path)
    };
    let model_opts = |model: &Path| -> Vec<String> {
        let mut v = vec!["--model".into(), model.display().to_string()];
        if let Some(d) = &r.dtype {
            v.extend(["--dtype".into(), d.clone()]);
        }
        if let Some(d) = &r.device {
            v.extend(["--device".into(), d.clone()]);
        }
        v
    };
    let eval = |stages: &mut Vec<Stage>, model: &Path, label: &str| {
        let (name, path) = dir(stages, "eval", label);
        let mut commands = vec![Cmd {
            argv: [
                vec!["spp".into(), "inspect".into()],
                model_opts(model),
                vec!["--json".into()],
            ]
            .concat(),
            stdout: Some("inspect.json".into()),
        }];
        let mut inputs = vec![model.to_path_buf()];
        if let Some((text, flags)) = &r.eval.ppl {
            commands.push(Cmd {
                argv: [
                    vec!["spp".into(), "eval".into(), "ppl".into()],
                    model_opts(model),
                    vec!["--text".into(), text.display().to_string()],
                    args(flags),
                    vec!["--json".into()],
                ]
                .concat(),
                stdout: Some("ppl.json".into()),
            });
            inputs.push(text.clone());
        }
        if let Some(flags) = &r.eval.tasks {
            commands.push(Cmd {
                argv: [
                    vec!["spp".into(), "eval".into(), "tasks".into()],
                    model_opts(model),
                    args(flags),
                    vec![
                        "--out".into(),
                        path.join("tasks.json").display().to_string(),
                    ],
                ]
                .concat(),
                stdout: None,
            });
            inputs.extend(
                flags
                    .iter()
                    .filter(|f| f.key == "data_dir")
                    .filter_map(|f| f.value.clone())
                    .map(PathBuf::from),
            );
        }
        stages.push(Stage {
            name,
            kind: Kind::Eval,
            model: label.into(),
            commands,
            inputs,
        });
    };
    let flag_inputs = |flags: &[recipe::Flag]| -> Vec<PathBuf> {
        flags
            .iter()
            .filter(|f| ["calib", "data"].contains(&f.key.as_str()))
            .filter_map(|f| f.value.clone().map(PathBuf::from))
            .collect()
    };

    eval(&mut stages, &r.model, "dense");
    // (label, model directory) of every model that fine-tuning starts from.
    let mut bases = vec![];
    match &r.prune {
        None => bases.push(("dense".to_string(), r.model.clone())),
        Some(p) => {
            for method in &p.methods {
                for sp in &p.sparsities {
                    let label = format!("{method} {}", sparsity_label(sp));
                    let (name, path) = dir(&stages, "prune", &label);
                    let model = path.join("model");
                    let argv = [
                        vec!["spp".into(), "prune".into()],
                        model_opts(&r.model),
                        vec![
                            "--method".into(),
                            method.clone(),
                            "--sparsity".into(),
                            sp.clone(),
                        ],
                        args(&p.flags),
                        vec!["--out".into(), model.display().to_string()],
                    ]
                    .concat();
                    let mut inputs = vec![r.model.clone()];
                    inputs.extend(flag_inputs(&p.flags));
                    stages.push(Stage {
                        name,
                        kind: Kind::Prune,
                        model: label.clone(),
                        commands: vec![Cmd { argv, stdout: None }],
                        inputs,
                    });
                    eval(&mut stages, &model, &label);
                    bases.push((label, model));
                }
            }
        }
    }
    if let Some(t) = &r.train {
        // Range tests by their argv (without --out) → the lr_find.json they write: a test is run
        // once for all the settings it serves.
        let mut finds: Vec<(Vec<String>, PathBuf)> = Vec::new();
        for (base_label, base) in &bases {
            for method in &t.methods {
                for setting in t.grid() {
                    let label =
                        format!("{base_label} + {method}{}", recipe::setting_label(&setting));
                    let mut flags = t.flags_of(&setting);
                    let mut inputs = vec![base.clone()];
                    inputs.extend(flag_inputs(&flags));
                    let find = flags
                        .iter()
                        .position(|f| f.key == "lr" && f.value.as_deref() == Some(recipe::FIND));
                    if let Some(i) = find {
                        let test: Vec<String> = [
                            vec!["spp".into(), "train".into()],
                            model_opts(base),
                            vec!["--method".into(), method.clone()],
                            args(&range_test_flags(&flags, &t.find)),
                            vec!["--find-lr".into()],
                        ]
                        .concat();
                        let json = match finds.iter().find(|(argv, _)| *argv == test) {
                            Some((_, json)) => json.clone(),
                            None => {
                                let (name, path) = dir(&stages, "lr-find", &label);
                                let out = path.join("lr-find");
                                let json = out.join("lr_find.json");
                                let argv = [
                                    test.clone(),
                                    vec!["--out".into(), out.display().to_string()],
                                ]
                                .concat();
                                stages.push(Stage {
                                    name,
                                    kind: Kind::LrFind,
                                    model: label.clone(),
                                    commands: vec![Cmd { argv, stdout: None }],
                                    inputs: inputs.clone(),
                                });
                                finds.push((test, json.clone()));
                                json
                            }
                        };
                        flags[i] = recipe::Flag {
                            key: "lr_from".into(),
                            flag: "--lr-from".into(),
                            value: Some(json.display().to_string()),
                        };
                        inputs.push(json);
                    }
                    let (name, path) = dir(&stages, "train", &label);
                    let adapter = path.join("adapter");
                    let argv = [
                        vec!["spp".into(), "train".into()],
                        model_opts(base),
                        vec!["--method".into(), method.clone()],
                        args(&flags),
                        vec!["--out".into(), adapter.display().to_string()],
                    ]
                    .concat();
                    stages.push(Stage {
                        name,
                        kind: Kind::Train,
                        model: label.clone(),
                        commands: vec![Cmd { argv, stdout: None }],
                        inputs,
                    });
                    let (name, path) = dir(&stages, "merge", &label);
                    let merged = path.join("model");
                    let argv = vec![
                        "spp".into(),
                        "merge".into(),
                        "--model".into(),
                        base.display().to_string(),
                        "--adapter".into(),
                        adapter.display().to_string(),
                        "--out".into(),
                        merged.display().to_string(),
                    ];
                    stages.push(Stage {
                        name,
                        kind: Kind::Merge,
                        model: label.clone(),
                        commands: vec![Cmd { argv, stdout: None }],
                        inputs: vec![base.clone(), adapter.clone()],
                    });
                    eval(&mut stages, &merged, &label);
                }
            }
        }
    }
    stages
}

/// The training options that decide the learning-rate range test: the flags of the setting
/// without `lr` and the schedule, length, validation and checkpoint options (the test takes a
/// fixed number of steps with its own lr), then the range test's own flags `find`.
fn range_test_flags(flags: &[recipe::Flag], find: &[recipe::Flag]) -> Vec<recipe::Flag> {
    const UNUSED: &[&str] = &[
        "lr",
        "max_steps",
        "epochs",
        "warmup_ratio",
        "schedule",
        "eval_every",
        "save_every",
    ];
    let mut out: Vec<recipe::Flag> = flags
        .iter()
        .filter(|f| !UNUSED.contains(&f.key.as_str()))
        .cloned()
        .collect();
    out.extend(find.iter().cloned());
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// A 64-bit content hash of a file or directory (sorted walk; names and bytes).
pub fn fingerprint(path: &Path) -> Result<u64> {
    fn walk(p: &Path, h: &mut impl Hasher, buf: &mut [u8]) -> Result<()> {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .at(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                h.write(
                    e.file_name()
                        .map(|n| n.as_encoded_bytes())
                        .unwrap_or_default(),
                );
                walk(&e, h, buf)?;
            }
            return Ok(());
        }
        let mut f = std::fs::File::open(p).at(p)?;
        loop {
            let n = f.read(buf).at(p)?;
            if n == 0 {
                break;
            }
            h.write(&buf[..n]);
        }
        Ok(())
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    walk(path, &mut h, &mut vec![0u8; 1 << 20])?;
    Ok(h.finish())
}

/// A stage's key: its commands and the fingerprints of its inputs. `seen` keeps each input's
/// fingerprint for the rest of the run, so a model read by several stages is hashed once (every
/// input is the finished output of an earlier stage or a file of the user's, so it no longer
/// changes).
fn stage_key(s: &Stage, seen: &mut HashMap<PathBuf, u64>) -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in &s.commands {
        for a in &c.argv {
            h.write(a.as_bytes());
            h.write_u8(0);
        }
    }
    for p in &s.inputs {
        let f = match seen.get(p) {
            Some(f) => *f,
            None => {
                let f = fingerprint(p)?;
                seen.insert(p.clone(), f);
                f
            }
        };
        h.write_u64(f);
    }
    Ok(format!("{:016x}", h.finish()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn read_record(dir: &Path) -> Option<StageRecord> {
    let text = std::fs::read_to_string(dir.join("stage.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The signal (SIGINT, SIGTERM) that asked `spp run` to stop, 0 while none did.
static STOP: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// From now on Ctrl-C and SIGTERM are recorded in [`STOP`] instead of killing the process, so
/// the running stage receives them and the stage is recorded as interrupted.
fn catch_signals() {
    #[cfg(unix)]
    crate::cpu::on_interrupt(on_signal);
}

fn stop_signal() -> i32 {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

fn signal_name(sig: i32) -> &'static str {
    #[cfg(unix)]
    if sig == libc::SIGINT {
        return "Ctrl-C (SIGINT)";
    }
    let _ = sig;
    "SIGTERM"
}

/// `DIR/.spp-run.lock`, created exclusively and holding the pid of the run that owns `DIR`;
/// removed when dropped. A lock whose process is gone is taken over.
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub const FILE: &'static str = ".spp-run.lock";

    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::io::Write;
        let path = dir.join(Self::FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id()).at(&path)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if crate::outpath::pid_alive(pid) => bail!(
                            "{} is in use by another spp run (pid {pid}): wait for it to finish or stop it; two runs in one directory would overwrite each other's stages",
                            dir.display()
                        ),
                        // A stale lock (its run is gone) or one being written right now.
                        None if std::fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| t.elapsed().is_ok_and(|d| d < Duration::from_secs(2))) =>
                        {
                            bail!(
                                "{} is in use by another spp run that is starting: wait for it to finish or stop it",
                                dir.display()
                            )
                        }
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        bail!(
            "cannot lock {}: remove {} if no spp run is using the directory",
            dir.display(),
            path.display()
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs one command (`spp` replaced by `exe`), its stdout to `stdout` when given; returns the
/// peak anonymous resident memory seen (sampled every 100 ms). A signal recorded in [`STOP`] is passed on to the command, which is then
/// waited for.
fn execute(exe: &Path, cmd: &Cmd, dir: &Path) -> Result<Option<u64>> {
    let mut c = std::process::Command::new(exe);
    c.args(&cmd.argv[1..]);
    let part = cmd.stdout.as_ref().map(|f| dir.join(format!("{f}.part")));
    if let Some(p) = &part {
        c.stdout(std::fs::File::create(p).at(p)?);
    }
    let mut child = c
        .spawn()
        .map_err(|e| Error::Msg(format!("cannot start {}: {e}", exe.display())))?;
    let mut peak = None;
    let mut forwarded = false;
    let status = loop {
        let sig = stop_signal();
        if sig != 0 && !forwarded {
            forwarded = true;
            #[cfg(unix)]
            crate::cpu::send_signal(child.id(), sig);
            #[cfg(not(unix))]
            let _ = child.kill();
        }
        // Anonymous memory: what the command allocated, not the page cache of the checkpoint
        // it maps (which the kernel reclaims at will).
        if let Some(m) = crate::model::stream::rss_anon_of(&child.id().to_string()) {
            peak = Some(peak.unwrap_or(0).max(m));
        }
        match child
            .try_wait()
            .map_err(|e| Error::Msg(format!("waiting for {}: {e}", cmd.argv.join(" "))))?
        {
            Some(s) => break s,
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    if forwarded {
        bail!(
            "stopped by {}: `{}` was stopped",
            signal_name(stop_signal()),
            crate::shell::quote_argv(&cmd.argv)
        );
    }
    if !status.success() {
        bail!(
            "`{}` failed ({status})",
            crate::shell::quote_argv(&cmd.argv)
        );
    }
    if let (Some(p), Some(f)) = (part, &cmd.stdout) {
        std::fs::rename(&p, dir.join(f)).at(dir.join(f))?;
    }
    Ok(peak)
}

/// Runs (or resumes) every stage of `recipe` into `out`. `exe` is the `spp` binary.
pub fn run(
    recipe: &Recipe,
    out: &Path,
    resume: bool,
    exe: &Path,
    command: Vec<String>,
) -> Result<Vec<StageRecord>> {
    let stages = plan(recipe, out);
    let run_json = out.join("run.json");
    crate::outpath::check_kind(out, crate::outpath::OutKind::Dir)?;
    if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() && !resume {
        bail!(
            "{} already holds a run: pass --resume to continue it (finished stages are skipped), or choose another --out",
            out.display()
        );
    }
    if resume && out.exists() && !run_json.exists() {
        bail!(
            "--resume: {} is not a run directory (no run.json)",
            out.display()
        );
    }
    std::fs::create_dir_all(out).at(out)?;
    let _lock = RunLock::acquire(out)?;
    catch_signals();
    std::fs::copy(&recipe.path, out.join("recipe.toml")).at(&recipe.path)?;
    // A resumed run keeps the time it first started.
    let started_unix = std::fs::read_to_string(&run_json)
        .ok()
        .and_then(|t| serde_json::from_str::<RunRecord>(&t).ok())
        .and_then(|r| r.started_unix)
        .unwrap_or_else(unix_now);
    write_json_atomically(
        &run_json,
        &RunRecord {
            recipe: Some(recipe.path.display().to_string()),
            name: Some(recipe.name.clone()),
            spp_version: crate::record::spp_version(),
            stages: stages.iter().map(|s| s.name.clone()).collect(),
            started_unix: Some(started_unix),
            command,
        },
    )?;
    let start = Instant::now();
    let mut records = Vec::new();
    let mut durations: Vec<(Kind, f64)> = Vec::new();
    let mut fingerprints = HashMap::new();
    for (i, s) in stages.iter().enumerate() {
        if stop_signal() != 0 {
            bail!(
                "stopped by {} before stage {}; the run directory is resumable: rerun with --resume",
                signal_name(stop_signal()),
                s.name
            );
        }
        let dir = out.join(&s.name);
        let key = stage_key(s, &mut fingerprints)?;
        let old = read_record(&dir);
        if let Some(r) = old
            .as_ref()
            .filter(|r| r.status.as_deref() == Some("done") && r.key == key)
        {
            eprintln!(
                "[{}/{}] {} · done earlier, inputs unchanged: skipped",
                i + 1,
                stages.len(),
                s.name
            );
            records.push(r.clone());
            continue;
        }
        // Training continues from its checkpoint when the interrupted stage had the same key.
        let checkpoint = dir
            .join("adapter")
            .join(crate::train::CHECKPOINT_DIR)
            .join("state.json");
        let continue_training = s.kind == Kind::Train
            && checkpoint.exists()
            && old.as_ref().is_some_and(|r| r.key == key);
        if !continue_training && dir.exists() {
            std::fs::remove_dir_all(&dir).at(&dir)?;
        }
        std::fs::create_dir_all(&dir).at(&dir)?;
        let eta = eta(&stages[i..], &durations);
        eprintln!(
            "[{}/{}] {} · {} elapsed{}{}",
            i + 1,
            stages.len(),
            s.name,
            fmt_secs(start.elapsed().as_secs_f64()),
            eta.map(|e| format!(" · about {} left", fmt_secs(e)))
                .unwrap_or_default(),
            if continue_training {
                " · continuing training from its checkpoint"
            } else {
                ""
            }
        );
        let mut rec = StageRecord {
            name: s.name.clone(),
            kind: Some(s.kind),
            model: Some(s.model.clone()),
            commands: s.commands.iter().map(|c| c.argv.clone()).collect(),
            key,
            status: Some("running".into()),
            seconds: None,
            peak_rss_bytes: None,
            started_unix: Some(unix_now()),
        };
        write_json_atomically(&dir.join("stage.json"), &rec)?;
        let t = Instant::now();
        for c in &s.commands {
            let mut c = c.clone();
            if continue_training {
                c.argv.push("--resume".into());
            }
            match execute(exe, &c, &dir) {
                Ok(peak) => rec.peak_rss_bytes = rec.peak_rss_bytes.max(peak),
                Err(e) => {
                    rec.status = Some(if stop_signal() != 0 {
                        "interrupted".into()
                    } else {
                        "failed".into()
                    });
                    rec.seconds = Some(t.elapsed().as_secs_f64());
                    write_json_atomically(&dir.join("stage.json"), &rec)?;
                    bail!(
                        "stage {} failed: {e}\nits output is in {}; fix the cause and rerun with --resume (finished stages are skipped)",
                        s.name,
                        dir.display()
                    );
                }
            }
        }
        rec.status = Some("done".into());
        rec.seconds = Some(t.elapsed().as_secs_f64());
        durations.push((s.kind, t.elapsed().as_secs_f64()));
        write_json_atomically(&dir.join("stage.json"), &rec)?;
        records.push(rec);
    }
    eprintln!(
        "all {} stages done in {}",
        stages.len(),
        fmt_secs(start.elapsed().as_secs_f64())
    );
    Ok(records)
}

/// Remaining time: each stage left costs what the finished stages of its kind took on average
/// (or all finished stages on average when none of its kind has run yet).
fn eta(left: &[Stage], done: &[(Kind, f64)]) -> Option<f64> {
    if done.is_empty() {
        return None;
    }
    let avg = |k: Option<Kind>| {
        let xs: Vec<f64> = done
            .iter()
            .filter(|d| k.is_none_or(|k| d.0 == k))
            .map(|d| d.1)
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    Some(
        left.iter()
            .map(|s| avg(Some(s.kind)).or(avg(None)).unwrap_or(0.0))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::recipe::{Axis, Flag, Setting, Variants};
    use super::*;

    fn flag(key: &str, value: &str) -> Flag {
        Flag {
            key: key.into(),
            flag: format!("--{}", key.replace('_', "-")),
            value: Some(value.into()),
        }
    }

    fn recipe(train: Variants) -> Recipe {
        Recipe {
            path: "r.toml".into(),
            name: "t".into(),
            model: "m".into(),
            dtype: None,
            device: None,
            prune: Some(Variants {
                methods: vec!["wanda".into()],
                sparsities: vec!["2:4".into()],
                flags: vec![flag("nsamples", "2")],
                sweep: vec![],
                find: vec![],
            }),
            train: Some(train),
            eval: Default::default(),
        }
    }

    fn axis(key: &str, values: &[&str]) -> Axis {
        Axis {
            key: key.into(),
            values: values
                .iter()
                .map(|v| Setting {
                    label: v.to_string(),
                    flag: Some(flag(key, v)),
                })
                .collect(),
        }
    }

    #[test]
    fn a_recipe_without_lists_plans_the_stages_it_always_did() {
        let train = Variants {
            methods: vec!["spp".into(), "lora-mask".into()],
            sparsities: vec![],
            flags: vec![flag("data", "d.json"), flag("lr", "0.004"), flag("r", "16")],
            sweep: vec![],
            find: vec![],
        };
        let stages = plan(&recipe(train), Path::new("out"));
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "00-eval-dense",
                "01-prune-wanda-2-4",
                "02-eval-wanda-2-4",
                "03-train-wanda-2-4-spp",
                "04-merge-wanda-2-4-spp",
                "05-eval-wanda-2-4-spp",
                "06-train-wanda-2-4-lora-mask",
                "07-merge-wanda-2-4-lora-mask",
                "08-eval-wanda-2-4-lora-mask"
            ]
        );
        assert_eq!(
            stages[3].commands[0].argv.join(" "),
            "spp train --model out/01-prune-wanda-2-4/model --method spp --data d.json --lr 0.004 --r 16 --out out/03-train-wanda-2-4-spp/adapter"
        );
        assert_eq!(stages[3].model, "wanda 2:4 + spp");
    }

    #[test]
    fn a_sweep_plans_the_grid_and_one_range_test_per_model_method_and_setting() {
        let train = Variants {
            methods: vec!["spp".into()],
            sparsities: vec![],
            flags: vec![flag("data", "d.json"), flag("r", "16")],
            // max_steps does not change the range test: the two settings with lr find share one.
            sweep: vec![
                axis("lr", &["find", "0.004"]),
                axis("max_steps", &["10", "20"]),
            ],
            find: vec![flag("find_lr_steps", "30")],
        };
        let stages = plan(&recipe(train), Path::new("out"));
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            &names[3..],
            [
                "03-lr-find-wanda-2-4-spp-lr-find-max-steps-10",
                "04-train-wanda-2-4-spp-lr-find-max-steps-10",
                "05-merge-wanda-2-4-spp-lr-find-max-steps-10",
                "06-eval-wanda-2-4-spp-lr-find-max-steps-10",
                "07-train-wanda-2-4-spp-lr-find-max-steps-20",
                "08-merge-wanda-2-4-spp-lr-find-max-steps-20",
                "09-eval-wanda-2-4-spp-lr-find-max-steps-20",
                "10-train-wanda-2-4-spp-lr-0.004-max-steps-10",
                "11-merge-wanda-2-4-spp-lr-0.004-max-steps-10",
                "12-eval-wanda-2-4-spp-lr-0.004-max-steps-10",
                "13-train-wanda-2-4-spp-lr-0.004-max-steps-20",
                "14-merge-wanda-2-4-spp-lr-0.004-max-steps-20",
                "15-eval-wanda-2-4-spp-lr-0.004-max-steps-20",
            ]
        );
        assert_eq!(stages[3].kind, Kind::LrFind);
        assert_eq!(
            stages[3].commands[0].argv.join(" "),
            "spp train --model out/01-prune-wanda-2-4/model --method spp --data d.json --find-lr-steps 30 --r 16 --find-lr --out out/03-lr-find-wanda-2-4-spp-lr-find-max-steps-10/lr-find"
        );
        let json =
            PathBuf::from("out/03-lr-find-wanda-2-4-spp-lr-find-max-steps-10/lr-find/lr_find.json");
        for i in [4, 7] {
            let argv = stages[i].commands[0].argv.join(" ");
            assert!(
                argv.contains(&format!("--lr-from {}", json.display())) && !argv.contains("--lr "),
                "{argv}"
            );
            assert!(
                stages[i].inputs.contains(&json),
                "the key covers the test's result"
            );
        }
        assert!(stages[10].commands[0]
            .argv
            .join(" ")
            .contains("--lr 0.004 --max-steps 10"));
        assert_eq!(stages[10].model, "wanda 2:4 + spp (lr 0.004, max_steps 10)");
        // Names are directory names: no separators, unique.
        let set: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(set.len(), names.len());
        assert!(names.iter().all(|n| !n.contains(['/', ' ', ':'])));
    }

    #[test]
    fn the_example_recipes_load_and_plan() {
        if !Path::new("models/smollm2-135m/config.json").exists() {
            eprintln!("skipped: no models/smollm2-135m (scripts/setup.sh makes it)");
            return;
        }
        let r = Recipe::load(Path::new("recipes/smollm2-135m-recovery.toml")).unwrap();
        let stages = plan(&r, Path::new("out"));
        let count = |k: Kind| stages.iter().filter(|s| s.kind == k).count();
        // 2 pruned models × 3 methods × 3 learning rates, no range test.
        assert_eq!((count(Kind::Prune), count(Kind::Train)), (2, 18));
        assert_eq!(count(Kind::LrFind), 0);
        assert!(stages
            .iter()
            .any(|s| s.name == "08-train-wanda-2-4-spp-lr-0.012"));
        let r = Recipe::load(Path::new("recipes/smollm2-135m.toml")).unwrap();
        let names: Vec<String> = plan(&r, Path::new("out"))
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names[3..],
            [
                "03-prune-wanda-50",
                "04-eval-wanda-50",
                "05-train-wanda-2-4-spp",
                "06-merge-wanda-2-4-spp",
                "07-eval-wanda-2-4-spp",
                "08-train-wanda-50-spp",
                "09-merge-wanda-50-spp",
                "10-eval-wanda-50-spp"
            ]
        );
    }
}
