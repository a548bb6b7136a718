//! Private working directories of MCP runs, and their reliable removal.
//!
//! A run's directory is `work/` inside a fresh `0700` directory of the server's user
//! (`$TMPDIR/nixcell-mcp-XXXX/`): nobody else on the host can reach what the cell
//! leaves there (a setuid file, the agent's data), whatever modes the cell sets on
//! `work/` itself. Started as root, `work/` and the files placed in it belong to the
//! cell's planned host identity, so what the cell creates is that identity's, never
//! root's.
//!
//! Removal walks the tree with directory descriptors, never following a symbolic
//! link, and gives each directory back the modes it needs first (a cell may leave
//! `chmod 000` directories behind); trees deeper than [`MAX_DEPTH`] are moved up to
//! the top and removed from there, so removal holds a bounded number of descriptors.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Directory levels descended before deeper trees are moved up to the top.
pub const MAX_DEPTH: usize = 64;

/// A run's working directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct RunDir {
    top: PathBuf,
    work: PathBuf,
    owner: Option<(u32, u32)>,
}

impl RunDir {
    /// Creates `$TMPDIR/nixcell-mcp-XXXX/work`; the top `0700` and ours, `work`
    /// `0700` and given to `owner` (uid, gid) when set.
    pub fn create(owner: Option<(u32, u32)>) -> std::io::Result<RunDir> {
        let top = tempfile::Builder::new()
            .prefix("nixcell-mcp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()?
            .keep();
        let dir = RunDir {
            work: top.join("work"),
            top,
            owner,
        };
        crate::dirs::check_private(&dir.top).map_err(std::io::Error::other)?;
        std::fs::DirBuilder::new().mode(0o700).create(&dir.work)?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::lchown(&dir.work, Some(u), Some(g))?;
        }
        Ok(dir)
    }

    /// The directory the cell gets.
    pub fn path(&self) -> &Path {
        &self.work
    }

    /// Gives every file placed in the directory so far to the owner (without following
    /// links), so the cell may change them.
    pub fn hand_over(&self) -> std::io::Result<()> {
        let Some((u, g)) = self.owner else {
            return Ok(());
        };
        let mut stack = vec![self.work.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                std::os::unix::fs::lchown(&p, Some(u), Some(g))?;
                if std::fs::symlink_metadata(&p)?.is_dir() {
                    stack.push(p);
                }
            }
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.top);
    }
}

fn cstr(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Opens the directory `name` in `dir` for reading, not following a link, after
/// giving it mode 0700 (through an `O_PATH` descriptor of that very directory).
fn open_dir(dir: BorrowedFd<'_>, name: &CString) -> Result<Dir, Errno> {
    let path = openat(
        dir,
        name.as_c_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let proc = format!("/proc/self/fd/{}", path.as_raw_fd());
    let _ = nix::sys::stat::fchmodat(
        AT_FDCWD,
        proc.as_str(),
        Mode::from_bits_truncate(0o700),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    );
    Dir::open(
        proc.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn entries(dir: &mut Dir) -> Result<Vec<CString>, Errno> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let name = e?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            out.push(name);
        }
    }
    Ok(out)
}

static MOVED: AtomicU64 = AtomicU64::new(0);

/// Empties `dir`; returns whether subtrees were moved up into `top` (removed by a
/// further pass).
fn empty_dir(top: BorrowedFd<'_>, dir: &mut Dir, depth: usize) -> Result<bool, Errno> {
    let mut moved = false;
    for name in entries(dir)? {
        match unlinkat(dir.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => continue,
            Err(Errno::EISDIR) => {}
            Err(e) => return Err(e),
        }
        if depth >= MAX_DEPTH {
            let fresh = format!(
                ".nixcell-rm-{}-{}",
                std::process::id(),
                MOVED.fetch_add(1, Ordering::Relaxed)
            );
            renameat(dir.as_fd(), name.as_c_str(), top, fresh.as_str())?;
            moved = true;
            continue;
        }
        let mut sub = open_dir(dir.as_fd(), &name)?;
        moved |= empty_dir(top, &mut sub, depth + 1)?;
        drop(sub);
        unlinkat(dir.as_fd(), name.as_c_str(), UnlinkatFlags::RemoveDir)?;
    }
    Ok(moved)
}

/// Removes the directory `path` and everything in it without following links,
/// whatever modes its directories have (those we may change).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("not a removable path"));
    };
    let parent: OwnedFd = openat(
        AT_FDCWD,
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let name = cstr(name)?;
    loop {
        let mut top = open_dir(parent.as_fd(), &name)?;
        let top_fd = top.as_fd().try_clone_to_owned()?;
        if !empty_dir(top_fd.as_fd(), &mut top, 1)? {
            break;
        }
    }
    unlinkat(parent.as_fd(), name.as_c_str(), UnlinkatFlags::RemoveDir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_tree_with_closed_directories_deep_nesting_and_links_is_removed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "host").unwrap();
        let d = RunDir::create(None).unwrap();
        let top = d.top.clone();
        let w = d.path();
        let m = std::fs::metadata(&top).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
        std::fs::create_dir_all(w.join("a/b/c")).unwrap();
        std::fs::write(w.join("a/b/c/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), w.join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), w.join("a/b/keep")).unwrap();
        let mut deep = w.join("deep");
        for _ in 0..(MAX_DEPTH * 3) {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), "x").unwrap();
        for p in ["a/b/c", "a/b", "a"] {
            std::fs::set_permissions(w.join(p), std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o500)).unwrap();
        drop(d);
        assert!(!top.exists(), "{} left behind", top.display());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("keep")).unwrap(),
            "host"
        );
    }
}
