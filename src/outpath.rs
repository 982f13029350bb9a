//! Where a command may write: one policy for every output, a directory or a file.
//!
//! - An existing output is replaced only with `--force`.
//! - A file is never replaced by a directory or a directory by a file, `--force` or not.
//! - An output never is, contains or lies inside one of the command's own inputs.
//! - Leftovers of interrupted writes to the same place (`.NAME.partial-*`, `.NAME.old-*`) whose
//!   writer is gone are removed before writing there again.

use crate::bail;
use crate::error::{IoContext, Result};
use std::path::{Component, Path, PathBuf};

/// What a command writes at its output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Dir,
    File,
}

/// Checks `out` against the policy before a command does any work. `inputs` are the paths the
/// command reads (model directories, data files); `force` allows replacing an existing `out`
/// of the right kind.
pub fn check(out: &Path, kind: OutKind, force: bool, inputs: &[&Path]) -> Result<()> {
    check_kind(out, kind)?;
    check_inputs(out, inputs)?;
    if out.exists() && !force {
        bail!(
            "{} already exists: choose another --out or pass --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// Checks the directory of a command that fills it step by step and can continue an
/// interrupted run (`spp train --out`): without `resume` it must not exist or be empty; a
/// directory holding `marker` (the run's checkpoint) is continued only with `resume`.
pub fn check_resumable(out: &Path, resume: bool, marker: &str, inputs: &[&Path]) -> Result<()> {
    check_kind(out, OutKind::Dir)?;
    check_inputs(out, inputs)?;
    if resume || !out.exists() {
        return Ok(());
    }
    if out.join(marker).exists() {
        bail!(
            "{} already holds an interrupted or finished run ({marker}/): pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    if std::fs::read_dir(out).at(out)?.next().is_some() {
        bail!(
            "{} already exists and is not empty (and holds no {marker}/ to resume): choose another --out, or an empty directory",
            out.display()
        );
    }
    Ok(())
}

/// Refuses a file where a directory is expected and a directory where a file is.
pub fn check_kind(out: &Path, kind: OutKind) -> Result<()> {
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(());
    };
    match kind {
        OutKind::Dir if !meta.is_dir() => bail!(
            "{} is a file, but this output is a directory: choose another --out (nothing was written)",
            out.display()
        ),
        OutKind::File if meta.is_dir() => bail!(
            "{} is a directory, but this output is a file: give a file path such as {} (nothing was written)",
            out.display(),
            out.join("out.json").display()
        ),
        _ => Ok(()),
    }
}

/// Refuses an `out` that is one of `inputs`, lies inside one, or contains one.
pub fn check_inputs(out: &Path, inputs: &[&Path]) -> Result<()> {
    let o = absolute(out);
    for input in inputs {
        let i = absolute(input);
        let what = if o == i {
            "is"
        } else if o.starts_with(&i) {
            "is inside"
        } else if i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        bail!(
            "--out {} {what} the input {}: an output never replaces or writes into its own inputs; choose another --out",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// `p` made absolute with symbolic links resolved as far as the path exists (the rest appended
/// with `.` and `..` applied), so two spellings of one place compare equal.
pub fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut existing = p.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match Path::new(part).components().next() {
                    Some(Component::ParentDir) => {
                        out.pop();
                    }
                    Some(Component::CurDir) => {}
                    _ => out.push(part),
                }
            }
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return p,
        }
    }
}

/// The directory a path's temporary siblings go into.
pub fn parent_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The prefix of a temporary sibling of `out` written by this process (`.NAME.partial-PID-`).
pub fn partial_prefix(out: &Path) -> String {
    format!(".{}.partial-{}-", file_name(out), std::process::id())
}

/// The name an existing `out` is moved to while its replacement is renamed in.
pub fn old_name(out: &Path) -> PathBuf {
    parent_of(out).join(format!(".{}.old-{}", file_name(out), std::process::id()))
}

fn file_name(out: &Path) -> String {
    out.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

/// Whether process `pid` is running (on systems without `/proc`: assumed gone).
pub fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes `.NAME.partial-*` and `.NAME.old-*` siblings of `out` left by interrupted writes
/// whose process is gone (one written by a running process is left alone).
pub fn clean_leftovers(out: &Path) -> Result<()> {
    let parent = parent_of(out);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    let name = file_name(out);
    let prefixes = [format!(".{name}.partial-"), format!(".{name}.old-")];
    for e in entries.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = prefixes.iter().find_map(|p| entry.strip_prefix(p.as_str())) else {
            continue;
        };
        let pid = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse::<u32>().ok());
        if pid.is_some_and(pid_alive) {
            continue;
        }
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).at(&p)?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&p).at(&p)?;
        } else {
            std::fs::remove_file(&p).at(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_kinds() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let file = d.path().join("f.json");
        std::fs::write(&file, "{}").unwrap();
        assert!(check(&model, OutKind::Dir, true, &[&model]).is_err());
        assert!(check(&model.join("sub"), OutKind::Dir, true, &[&model]).is_err());
        assert!(check(d.path(), OutKind::Dir, true, &[&model]).is_err());
        assert!(check(&model.join("../model"), OutKind::Dir, true, &[&model]).is_err());
        assert!(check(&d.path().join("other"), OutKind::Dir, false, &[&model]).is_ok());
        assert!(check(&file, OutKind::Dir, true, &[]).is_err());
        assert!(check(&model, OutKind::File, true, &[]).is_err());
        assert!(check(&file, OutKind::File, false, &[]).is_err());
        assert!(check(&file, OutKind::File, true, &[]).is_ok());
    }

    #[test]
    fn leftovers_of_gone_writers_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m");
        let gone = d.path().join(".m.partial-4000000000-abc");
        let legacy = d.path().join(".m.partial-Xyz12");
        let old = d.path().join(".m.old-4000000001");
        let mine = d
            .path()
            .join(format!(".m.partial-{}-q", std::process::id()));
        let other = d.path().join(".n.partial-4000000000-abc");
        for p in [&gone, &legacy, &mine, &other] {
            std::fs::create_dir(p).unwrap();
        }
        std::fs::write(&old, "x").unwrap();
        clean_leftovers(&out).unwrap();
        assert!(!gone.exists() && !legacy.exists() && !old.exists());
        assert!(mine.exists() && other.exists());
    }
}
