//! nixcell's own directories on the host (caches, state, run journals) and the one
//! way to write a file in them atomically.
//!
//! Everything here is host-side state that later runs trust, so it must never be
//! reachable by a cell (see docs/ARCHITECTURE.md, trust boundary): directories are
//! created `0700`, checked to be real directories (not symlinks) owned by the caller
//! and not writable by group or others, before anything is read from or written to
//! them. A directory that fails the check is an error naming it, never silently used.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Which base directory: `XDG_CACHE_HOME` (`~/.cache`) or `XDG_STATE_HOME`
/// (`~/.local/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Cache,
    State,
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("neither {0} nor HOME is set (or they are not absolute paths)")]
    NoBase(&'static str),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}; nixcell keeps trusted state there and refuses to use it")]
    Unsafe(PathBuf, String),
}

/// The base directory (`$XDG_CACHE_HOME` / `$XDG_STATE_HOME`, else under `$HOME`),
/// without creating anything. Relative values are ignored, as the XDG spec says.
pub fn base(which: Base) -> Result<PathBuf, DirError> {
    let (var, fallback) = match which {
        Base::Cache => ("XDG_CACHE_HOME", ".cache"),
        Base::State => ("XDG_STATE_HOME", ".local/state"),
    };
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(fallback))
        })
        .ok_or(DirError::NoBase(var))
}

/// `<base>/nixcell` without creating it: the root of everything nixcell keeps there.
pub fn root(which: Base) -> Result<PathBuf, DirError> {
    Ok(base(which)?.join("nixcell"))
}

/// Both roots nixcell trusts (cache and state), for checks that no cell may reach them.
pub fn trusted_roots() -> Vec<PathBuf> {
    [Base::Cache, Base::State]
        .into_iter()
        .filter_map(|b| root(b).ok())
        .collect()
}

/// `<base>/nixcell/<sub>`, created `0700` if missing, every nixcell-owned level checked
/// ([`check_private`]).
pub fn private_dir(which: Base, sub: &str) -> Result<PathBuf, DirError> {
    let top = root(which)?;
    let mut dir = top.clone();
    ensure_private(&dir)?;
    for part in Path::new(sub).components() {
        dir.push(part);
        ensure_private(&dir)?;
    }
    Ok(dir)
}

/// Creates `dir` (and missing parents, the parents with default permissions) as `0700`
/// unless it exists, then checks it.
pub fn ensure_private(dir: &Path) -> Result<(), DirError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DirError::Io(parent.to_path_buf(), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DirError::Io(dir.to_path_buf(), e)),
    }
    check_private(dir)
}

/// `dir` is a directory (not a symlink to one), owned by the effective uid, and not
/// writable by group or others.
pub fn check_private(dir: &Path) -> Result<(), DirError> {
    let unsafe_ = |why: String| DirError::Unsafe(dir.to_path_buf(), why);
    let m = std::fs::symlink_metadata(dir).map_err(|e| DirError::Io(dir.to_path_buf(), e))?;
    if m.file_type().is_symlink() {
        return Err(unsafe_("is a symbolic link".into()));
    }
    if !m.is_dir() {
        return Err(unsafe_("is not a directory".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if m.uid() != euid {
        return Err(unsafe_(format!("is owned by uid {}, not {euid}", m.uid())));
    }
    if m.permissions().mode() & 0o022 != 0 {
        return Err(unsafe_(format!(
            "is writable by group or others (mode {:o})",
            m.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

/// Writes `bytes` to `dir/name` atomically: a fresh temporary file in `dir` (created
/// exclusively, `0600`), flushed, then renamed over `name`. Readers see the old content
/// or the new one, never a part; a symlink at `name` is replaced, not followed.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(dir, name, bytes, 0o600)
}

/// [`write_atomic`] with the file's permission bits `mode` (exactly, whatever the
/// umask), for files outside nixcell's own directories that keep their mode.
pub fn write_atomic_mode(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_owned(dir, name, bytes, mode, None)
}

/// [`write_atomic_mode`], the new file given to `owner` (uid, gid) first: by its
/// descriptor, before it takes the name, so no other file is ever chowned.
pub fn write_atomic_owned(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    write_atomic_with(dir, name, bytes, mode, owner, true)
}

/// [`write_atomic_mode`] without flushing the data to the disk first: for files that
/// describe live processes (an OCI container's state, its pid file), which mean
/// nothing after the host restarts. Readers still see the old content or the new one;
/// a crash may leave the old one or an empty file, never a part of the new.
pub fn write_atomic_volatile(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    write_atomic_with(dir, name, bytes, mode, None, false)
}

fn write_atomic_with(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    durable: bool,
) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))?;
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    if durable {
        tmp.as_file().sync_data()?;
    }
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

/// The content of a regular file of at most `max` bytes (else an error), opened without
/// following a symbolic link and without blocking on a fifo.
pub fn read_nofollow_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if m.len() > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    let mut out = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_refuses_a_symlink_and_a_world_writable_dir() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(ensure_private(&link), Err(DirError::Unsafe(..))));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(ensure_private(&real), Err(DirError::Unsafe(..))));
        let fresh = t.path().join("a/b");
        ensure_private(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn write_atomic_replaces_a_symlink_instead_of_following_it() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"host file").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("cache.json")).unwrap();
        write_atomic(t.path(), "cache.json", b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host file");
        let m = std::fs::symlink_metadata(t.path().join("cache.json")).unwrap();
        assert!(m.is_file());
        assert_eq!(std::fs::read(t.path().join("cache.json")).unwrap(), b"new");
    }
}
