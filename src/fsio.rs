//! Files written so that a reader never sees half of one: whole directories built beside their
//! destination and renamed into place, single files through a temporary sibling; JSON
//! pretty-printed.

use crate::error::{Error, IoContext, Result};
use std::path::Path;

/// Runs `write` on a fresh temporary directory beside `out` and renames it to `out` when it
/// succeeds; on failure nothing is left behind. An existing `out` is replaced only with `force`,
/// and never when it is a file. Leftovers of interrupted writes to `out` are removed first
/// ([`crate::outpath`]).
pub fn write_dir_atomically(
    out: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    use crate::outpath;
    outpath::check(out, outpath::OutKind::Dir, force, &[])?;
    let parent = outpath::parent_of(out);
    std::fs::create_dir_all(&parent).at(&parent)?;
    outpath::clean_leftovers(out)?;
    let tmp = tempfile::Builder::new()
        .prefix(&outpath::partial_prefix(out))
        .tempdir_in(&parent)
        .at(&parent)?;
    write(tmp.path())?;
    make_readable(tmp.path())?;
    let tmp = tmp.keep();
    if out.exists() {
        let old = outpath::old_name(out);
        std::fs::rename(out, &old).at(out)?;
        std::fs::rename(&tmp, out).at(out)?;
        std::fs::remove_dir_all(&old).at(&old)?;
    } else {
        std::fs::rename(&tmp, out).at(out)?;
    }
    Ok(())
}

/// Temporary directories and some writers create owner-only files; a model directory is meant
/// to be shared like any other output (0755 directory, 0644 files).
fn make_readable(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).at(dir)?;
        for e in std::fs::read_dir(dir).at(dir)? {
            let p = e.at(dir)?.path();
            if p.is_file() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).at(&p)?;
            }
        }
    }
    Ok(())
}

fn json_text(path: &Path, v: &impl serde::Serialize) -> Result<String> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    Ok(text + "\n")
}

pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    std::fs::write(path, json_text(path, v)?).at(path)
}

/// Writes `bytes` into a temporary sibling and renames it over `path`, so a reader sees the old
/// file or the new one, never part of one. A directory at `path` is refused.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use crate::outpath;
    outpath::check_kind(path, outpath::OutKind::File)?;
    outpath::clean_leftovers(path)?;
    let tmp = outpath::parent_of(path).join(format!("{}0", outpath::partial_prefix(path)));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// [`write_json`], atomically.
pub fn write_json_atomically(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    write_file_atomically(path, json_text(path, v)?.as_bytes())
}
