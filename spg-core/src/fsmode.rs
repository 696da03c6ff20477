//! File modes of everything SPG keeps on disk: state, secrets, WAL, images and caches are files
//! `0600` in directories `0700`, whatever the process's umask.
//!
//! The one exception is a *passage*: a directory of the platform's that the compute's user (an
//! unprivileged `postgres` when the platform runs as root) must pass through to reach its own
//! directories. A passage is `0710` and belongs to the compute user's group: that user may enter,
//! not list; nobody else may do either. Where the platform and the compute run as one user a
//! passage is simply `0700`.
//!
//! [`tighten_tree`] brings an existing tree (one made by an older version, or by hand) to these
//! modes at start.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of files holding state, secrets, WAL, images or cache.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of directories holding them.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of a passage shared with the compute user's group (see the module documentation).
pub const PASSAGE_DIR: u32 = 0o710;

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Create `dir` and any missing parents `0700`; an existing `dir` is tightened to `0700`
/// (existing parents are left as they are).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    if std::fs::metadata(dir)?.permissions().mode() & 0o7777 != PRIVATE_DIR {
        set_mode(dir, PRIVATE_DIR)?;
    }
    Ok(())
}

/// Create `dir` (parents `0700`) or take the existing one as a passage for `group` (the compute
/// user's group, when it differs from this process's user): `0710` with that group, else `0700`.
pub fn passage_dir(dir: &Path, group: Option<u32>) -> io::Result<()> {
    private_dir(dir)?;
    if let Some(gid) = group {
        let meta = std::fs::metadata(dir)?;
        if meta.gid() != gid {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
        }
        if meta.permissions().mode() & 0o7777 != PASSAGE_DIR {
            set_mode(dir, PASSAGE_DIR)?;
        }
    }
    Ok(())
}

/// Options that create a file `0600` (the mode applies only when the file is created; see
/// [`tighten`] for an existing one).
pub fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(PRIVATE_FILE);
    o
}

/// Create (or truncate) `path` as a `0600` file for writing; an existing file is tightened.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
    }
    Ok(f)
}

/// Write `bytes` to `path` as a `0600` file (not synced; see the callers that need it).
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    create_private(path)?.write_all(bytes.as_ref())
}

/// Take group and other permissions away from `path` (a file or a directory).
pub fn tighten(path: &Path) -> io::Result<()> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        set_mode(path, mode & 0o700)?;
    }
    Ok(())
}

/// What [`tighten_tree`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tightened {
    /// Files and directories whose mode was changed.
    pub changed: u64,
    /// Entries looked at.
    pub seen: u64,
}

/// Tighten every file and directory under `root` (and `root` itself) that `root`'s owner (the
/// platform's user) owns to `0600`/`0700` (owner bits kept). Left alone: entries another user
/// owns and what is below them (a compute's data directory is PostgreSQL's to keep), other file
/// systems mounted below `root` (a compute's lazily mounted data directory), symbolic links,
/// sockets, and `passages` (directories kept as passages; see [`passage_dir`]). Entries that
/// vanish or cannot be read while walking are skipped.
pub fn tighten_tree(root: &Path, passages: &[&Path]) -> io::Result<Tightened> {
    let top = std::fs::metadata(root)?;
    let (me, dev) = (top.uid(), top.dev());
    let mut done = Tightened::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        done.seen += 1;
        if meta.uid() != me || meta.dev() != dev {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            if !passages.iter().any(|q| *q == p) && meta.permissions().mode() & 0o077 != 0 {
                tighten(&p)?;
                done.changed += 1;
            }
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            stack.extend(entries.flatten().map(|e| e.path()));
        } else if ft.is_file() && meta.permissions().mode() & 0o077 != 0 {
            tighten(&p)?;
            done.changed += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_files_and_directories_whatever_the_umask() {
        let tmp = std::env::temp_dir().join(format!("spg-fsmode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        private_dir(&tmp.join("a/b")).unwrap();
        assert_eq!(mode(&tmp.join("a")), 0o700);
        assert_eq!(mode(&tmp.join("a/b")), 0o700);
        write_private(&tmp.join("a/b/f"), b"x").unwrap();
        assert_eq!(mode(&tmp.join("a/b/f")), 0o600);
        // An existing, looser file keeps its bytes and loses the loose bits.
        std::fs::write(tmp.join("a/loose"), b"old").unwrap();
        set_mode(&tmp.join("a/loose"), 0o644).unwrap();
        write_private(&tmp.join("a/loose"), b"new").unwrap();
        assert_eq!(mode(&tmp.join("a/loose")), 0o600);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn an_existing_tree_is_tightened_except_its_passages() {
        let tmp = std::env::temp_dir().join(format!("spg-fsmode-t-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("state/deep")).unwrap();
        std::fs::create_dir_all(tmp.join("run")).unwrap();
        std::fs::write(tmp.join("state/deep/wal"), b"w").unwrap();
        std::fs::write(tmp.join("state/db"), b"s").unwrap();
        for (p, m) in [
            ("", 0o755),
            ("state", 0o755),
            ("state/deep", 0o775),
            ("state/deep/wal", 0o664),
            ("state/db", 0o640),
            ("run", 0o710),
        ] {
            set_mode(&tmp.join(p), m).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", tmp.join("link")).unwrap();
        let run = tmp.join("run");
        let done = tighten_tree(&tmp, &[run.as_path()]).unwrap();
        assert_eq!(done.changed, 5);
        assert_eq!(mode(&tmp), 0o700);
        assert_eq!(mode(&tmp.join("state")), 0o700);
        assert_eq!(mode(&tmp.join("state/deep")), 0o700);
        assert_eq!(mode(&tmp.join("state/deep/wal")), 0o600);
        assert_eq!(mode(&tmp.join("state/db")), 0o600);
        assert_eq!(mode(&run), 0o710, "a passage stays one");
        assert_eq!(
            mode(Path::new("/etc/passwd")) & 0o004,
            0o004,
            "links not followed"
        );
        // Nothing left to do the second time.
        assert_eq!(tighten_tree(&tmp, &[run.as_path()]).unwrap().changed, 0);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
