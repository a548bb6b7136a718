//! The files of a run's private working directory: the files a request places there, the
//! copy of the project it may start from, and the files it collects after the run.

use super::*;
use crate::fsat;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// A relative path inside the working directory, or why not.
pub(super) fn safe_relative(p: &str) -> Result<PathBuf, McpError> {
    let bad = |reason: &str| McpError::File {
        path: p.to_string(),
        reason: reason.to_string(),
    };
    let path = Path::new(p);
    if p.is_empty() || p.contains('\0') {
        return Err(bad("empty or contains NUL"));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(bad(
                    "must be a relative path inside the working directory, without '..'",
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// Decodes the files of a request, refusing more files or bytes than allowed.
pub(super) fn decode_files(
    files: &BTreeMap<String, FileContent>,
) -> Result<Vec<(PathBuf, Vec<u8>)>, McpError> {
    use base64::Engine as _;
    if files.len() > MAX_FILES {
        return Err(McpError::Request(format!(
            "files: {} files, more than the {MAX_FILES} a run may be given",
            files.len()
        )));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(files.len());
    for (name, content) in files {
        let rel = safe_relative(name)?;
        let bytes = match content {
            FileContent::Text(t)
            | FileContent::Encoded(EncodedFile {
                content: t,
                encoding: Encoding::Utf8,
            }) => t.as_bytes().to_vec(),
            FileContent::Encoded(EncodedFile {
                content,
                encoding: Encoding::Base64,
            }) => base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|e| McpError::File {
                    path: name.clone(),
                    reason: format!("content is not valid base64 ({e})"),
                })?,
        };
        total = total.saturating_add(bytes.len());
        if total > MAX_FILES_BYTES {
            return Err(McpError::Request(format!(
                "files: more than the {MAX_FILES_BYTES} bytes ({}) a run may be given in all (reached at {name:?})",
                crate::units::human_size(MAX_FILES_BYTES as u64)
            )));
        }
        out.push((rel, bytes));
    }
    Ok(out)
}

/// Writes decoded files under `dir` (a fresh private directory holding no links).
pub(super) fn place_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<(), McpError> {
    for (rel, content) in files {
        let full = dir.join(rel);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(McpError::Workdir)?;
        }
        std::fs::write(&full, content).map_err(|e| McpError::File {
            path: rel.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Checks the paths a request wants collected, before anything runs.
pub(super) fn check_collect(names: &[String]) -> Result<(), McpError> {
    if names.len() > MAX_COLLECT_FILES {
        return Err(McpError::Request(format!(
            "collect: {} files, more than the {MAX_COLLECT_FILES} a run may return",
            names.len()
        )));
    }
    names.iter().try_for_each(|n| safe_relative(n).map(drop))
}

/// Largest project copied into a run's working directory.
pub const MAX_PROJECT_COPY_BYTES: u64 = 64 << 20;

/// Directory levels of the project copied at most (one descriptor held per level).
pub const MAX_PROJECT_COPY_DEPTH: usize = 64;

/// Copies the project's files into a run's working directory: regular files and
/// directories, not `.git`, not nixcell's `.nixcell` state, no symbolic links (they could
/// point anywhere on the host: skipped, as are fifos, sockets, devices and other mounts,
/// and, serving as root, hard links to files of others);
/// at most [`MAX_PROJECT_COPY_BYTES`].
///
/// Whoever can write the project (its owner against a server running as root, a
/// concurrent run's changes coming back) may swap any entry for a link while the copy
/// runs. So the walk goes through descriptors only: each entry is opened beneath its
/// parent's descriptor without following any link or crossing a mount, its kind is
/// taken from that descriptor, and the bytes come from that descriptor.
pub(super) fn copy_project(src: &Path, dst: &Path, budget: &mut u64) -> Result<(), McpError> {
    // The project as the operator named it (a link there is the operator's own).
    let open_dir = |p: &Path| -> Result<OwnedFd, McpError> {
        let f = std::fs::File::open(p).map_err(McpError::Workdir)?;
        let fd = OwnedFd::from(f);
        if !fsat::is_dir(&fsat::fstat(fd.as_fd()).map_err(McpError::Workdir)?) {
            return Err(McpError::Workdir(std::io::Error::other(format!(
                "{} is not a directory",
                p.display()
            ))));
        }
        Ok(fd)
    };
    let (from, to) = (open_dir(src)?, open_dir(dst)?);
    // Serving as root: a file with other links, not the project owner's, may be a hard
    // link to a file the owner cannot read (where fs.protected_hardlinks is off).
    let owner = if crate::sandbox::ns::is_host_root() {
        Some(fsat::fstat(from.as_fd()).map_err(McpError::Workdir)?.st_uid)
    } else {
        None
    };
    let mut walk = Walk { budget, owner };
    walk.tree(from.as_fd(), to.as_fd(), 0)
}

struct Walk<'a> {
    budget: &'a mut u64,
    /// The project's owner, when serving as root (see [`copy_project`]).
    owner: Option<u32>,
}

#[cfg(test)]
type Hook = Box<dyn FnMut(&std::ffi::OsStr)>;

#[cfg(test)]
thread_local! {
    /// Test hook: called with each entry's name after its directory was listed and
    /// before the entry is opened, to swap it as a hostile writer would.
    pub(super) static AFTER_LIST: std::cell::RefCell<Option<Hook>> =
        const { std::cell::RefCell::new(None) };
}

impl Walk<'_> {
    fn tree(
        &mut self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        depth: usize,
    ) -> Result<(), McpError> {
        if depth >= MAX_PROJECT_COPY_DEPTH {
            return Err(McpError::Request(format!(
                "the project nests directories deeper than {MAX_PROJECT_COPY_DEPTH} levels; run with copy_project = false and pass the files needed"
            )));
        }
        let io = McpError::Workdir;
        for name in fsat::list_dir(from).map_err(io)? {
            if name == ".git" || name == ".nixcell" {
                continue;
            }
            #[cfg(test)]
            AFTER_LIST.with(|h| {
                if let Some(h) = h.borrow_mut().as_mut() {
                    h(&name)
                }
            });
            let rel = Path::new(&name);
            // O_PATH opens nothing (no fifo, no device is touched); a final link is opened
            // as the link itself, any other link or a mount crossing fails.
            let entry = match fsat::open_beneath(from, rel, libc::O_PATH) {
                Ok(fd) => fd,
                Err(e) if skippable(&e) => continue,
                Err(e) => return Err(io(e)),
            };
            let st = fsat::fstat(entry.as_fd()).map_err(io)?;
            if fsat::is_dir(&st) {
                fsat::mkdir_at(to, &name, 0o755).map_err(io)?;
                let sub =
                    fsat::open_beneath(to, rel, libc::O_PATH | libc::O_DIRECTORY).map_err(io)?;
                self.tree(entry.as_fd(), sub.as_fd(), depth + 1)?;
            } else if fsat::is_reg(&st) {
                // Opened again for reading, beneath the same parent; it must be the very
                // file just looked at (else it changed under the copy: skipped).
                let file = match fsat::open_beneath(from, rel, libc::O_RDONLY) {
                    Ok(fd) => fd,
                    Err(e) if skippable(&e) => continue,
                    Err(e) => return Err(io(e)),
                };
                let now = fsat::fstat(file.as_fd()).map_err(io)?;
                if !fsat::is_reg(&now) || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                    continue;
                }
                if self
                    .owner
                    .is_some_and(|u| now.st_nlink > 1 && now.st_uid != u)
                {
                    continue;
                }
                let len = now.st_size as u64;
                *self.budget = self.budget.checked_sub(len).ok_or_else(|| {
                McpError::Request(format!(
                    "the project holds more than {MAX_PROJECT_COPY_BYTES} bytes of files; run with copy_project = false and pass the files needed"
                ))
            })?;
                let out = fsat::openat2(
                    to.as_raw_fd(),
                    rel,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    now.st_mode & 0o777,
                    fsat::BENEATH,
                )
                .map_err(io)?;
                // What was counted is what is copied, even if the file grows meanwhile.
                let mut reader = std::io::Read::take(std::fs::File::from(file), len);
                std::io::copy(&mut reader, &mut std::fs::File::from(out)).map_err(io)?;
            }
            // Anything else (a symbolic link, fifo, socket, device) is not copied.
        }
        Ok(())
    }
}

/// Open failures that mean "not a plain entry of this tree (any more)": a link on the
/// way (ELOOP), a mount (EXDEV), gone since the listing (ENOENT).
fn skippable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOENT)
    )
}

/// Reads the files asked for after the run (paths checked by [`check_collect`]): opened
/// beneath `dir` without following any link or crossing a mount (the cell wrote them),
/// regular files only, within [`MAX_COLLECT_BYTES`] each and
/// [`MAX_COLLECT_TOTAL_BYTES`] in all.
pub(super) fn collect_files(dir: &Path, names: &[String]) -> Vec<CollectedFile> {
    use base64::Engine as _;
    let root = std::fs::File::open(dir).map(OwnedFd::from);
    let mut total = 0u64;
    names
        .iter()
        .map(|name| {
            let mut f = CollectedFile {
                path: name.clone(),
                bytes: None,
                encoding: None,
                content: None,
                note: None,
                over_limit: false,
            };
            let opened = match (&root, safe_relative(name)) {
                (Ok(root), Ok(rel)) => fsat::open_beneath(root.as_fd(), &rel, libc::O_RDONLY),
                (Err(e), _) => Err(std::io::Error::new(e.kind(), e.to_string())),
                (_, Err(e)) => {
                    f.note = Some(e.to_string());
                    return f;
                }
            };
            let file = match opened {
                Ok(fd) => fd,
                Err(e) => {
                    f.note = Some(match e.raw_os_error() {
                        Some(libc::ENOENT) => "no such file".into(),
                        Some(libc::ELOOP) => "a symbolic link is on the way: not followed".into(),
                        Some(libc::EXDEV) => "on another mount: not read".into(),
                        _ => e.to_string(),
                    });
                    return f;
                }
            };
            let st = match fsat::fstat(file.as_fd()) {
                Ok(st) => st,
                Err(e) => {
                    f.note = Some(e.to_string());
                    return f;
                }
            };
            if !fsat::is_reg(&st) {
                f.note = Some("not a regular file".into());
                return f;
            }
            let len = st.st_size as u64;
            f.bytes = Some(len);
            let over = if len > MAX_COLLECT_BYTES {
                Some(format!(
                    "{len} bytes, more than the {MAX_COLLECT_BYTES} ({}) a collected file may have",
                    crate::units::human_size(MAX_COLLECT_BYTES)
                ))
            } else if total + len > MAX_COLLECT_TOTAL_BYTES {
                Some(format!(
                    "the files collected before it and this one exceed the {MAX_COLLECT_TOTAL_BYTES} bytes ({}) a run may return",
                    crate::units::human_size(MAX_COLLECT_TOTAL_BYTES)
                ))
            } else {
                None
            };
            if let Some(why) = over {
                f.note = Some(format!("not returned: {why}"));
                f.over_limit = true;
                return f;
            }
            total += len;
            let mut data = Vec::with_capacity(len as usize);
            // What was counted is what is read.
            let mut reader = std::io::Read::take(std::fs::File::from(file), len);
            if let Err(e) = std::io::Read::read_to_end(&mut reader, &mut data) {
                f.note = Some(e.to_string());
                return f;
            }
            f.bytes = Some(data.len() as u64);
            match String::from_utf8(data) {
                Ok(t) => {
                    f.encoding = Some(Encoding::Utf8);
                    f.content = Some(t);
                }
                Err(e) => {
                    f.encoding = Some(Encoding::Base64);
                    f.content = Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()));
                }
            }
            f
        })
        .collect()
}

pub(super) fn script_name(interpreter: &str) -> &'static str {
    match interpreter.rsplit('/').next().unwrap_or("") {
        i if i.starts_with("python") => "script.py",
        "node" => "script.js",
        "perl" => "script.pl",
        "ruby" => "script.rb",
        _ => "script.sh",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A secret file and a secret directory outside the project.
    fn outside() -> tempfile::TempDir {
        let o = tempfile::tempdir().unwrap();
        std::fs::write(o.path().join("secret"), "SECRET").unwrap();
        std::fs::create_dir(o.path().join("dir")).unwrap();
        std::fs::write(o.path().join("dir/secret"), "SECRET").unwrap();
        o
    }

    /// Every file below `dir` (following nothing) whose content is the secret.
    fn secrets_in(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() && std::fs::read(&p).unwrap() == b"SECRET" {
                    found.push(p);
                }
            }
        }
        found
    }

    #[test]
    fn links_to_outside_files_and_directories_are_not_copied() {
        let o = outside();
        let project = tempfile::tempdir().unwrap();
        let p = project.path();
        std::fs::write(p.join("keep"), "kept").unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/inner"), "inner").unwrap();
        symlink(o.path().join("secret"), p.join("file-link")).unwrap();
        symlink(o.path().join("dir"), p.join("dir-link")).unwrap();
        symlink(o.path().join("secret"), p.join("sub/deep-link")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut budget = MAX_PROJECT_COPY_BYTES;
        copy_project(p, dst.path(), &mut budget).unwrap();
        assert_eq!(std::fs::read(dst.path().join("keep")).unwrap(), b"kept");
        assert_eq!(
            std::fs::read(dst.path().join("sub/inner")).unwrap(),
            b"inner"
        );
        assert!(secrets_in(dst.path()).is_empty());
        for l in ["file-link", "dir-link", "sub/deep-link"] {
            assert!(
                std::fs::symlink_metadata(dst.path().join(l)).is_err(),
                "{l}"
            );
        }
        assert_eq!(budget, MAX_PROJECT_COPY_BYTES - 9);
    }

    /// The project's writer swaps a file and a directory for links to outside after
    /// the listing and before the copy: nothing outside is copied.
    #[test]
    fn entries_swapped_for_links_while_copying_are_not_followed() {
        let o = outside();
        let project = tempfile::tempdir().unwrap();
        let p = project.path().to_path_buf();
        std::fs::write(p.join("data"), "data").unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/secret"), "not yet").unwrap();
        let (op, pp) = (o.path().to_path_buf(), p.clone());
        AFTER_LIST.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |name: &std::ffi::OsStr| {
                if name == "data" {
                    std::fs::remove_file(pp.join("data")).unwrap();
                    symlink(op.join("secret"), pp.join("data")).unwrap();
                } else if name == "sub" {
                    std::fs::remove_dir_all(pp.join("sub")).unwrap();
                    symlink(op.join("dir"), pp.join("sub")).unwrap();
                }
            }))
        });
        let dst = tempfile::tempdir().unwrap();
        let mut budget = MAX_PROJECT_COPY_BYTES;
        let r = copy_project(&p, dst.path(), &mut budget);
        AFTER_LIST.with(|h| *h.borrow_mut() = None);
        r.unwrap();
        assert!(
            std::fs::symlink_metadata(p.join("data"))
                .unwrap()
                .is_symlink()
        );
        assert!(
            std::fs::symlink_metadata(p.join("sub"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(secrets_in(dst.path()), Vec::<PathBuf>::new());
        assert!(std::fs::symlink_metadata(dst.path().join("data")).is_err());
        assert!(std::fs::symlink_metadata(dst.path().join("sub")).is_err());
    }

    /// Serving as root, a hard link in a user's project to a file of someone else (as
    /// where fs.protected_hardlinks is off) is not copied; the owner's own are.
    #[test]
    fn as_root_hard_links_to_files_of_others_are_not_copied() {
        if !crate::sandbox::ns::is_host_root() {
            eprintln!("skipped: needs root");
            return;
        }
        use std::os::unix::fs::chown;
        let o = outside();
        chown(o.path().join("secret"), Some(0), Some(0)).unwrap();
        let project = tempfile::tempdir().unwrap();
        let p = project.path();
        std::fs::hard_link(o.path().join("secret"), p.join("linked")).unwrap();
        std::fs::write(o.path().join("mine"), "mine").unwrap();
        chown(o.path().join("mine"), Some(4242), Some(4242)).unwrap();
        std::fs::hard_link(o.path().join("mine"), p.join("mine")).unwrap();
        chown(p, Some(4242), Some(4242)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut budget = MAX_PROJECT_COPY_BYTES;
        copy_project(p, dst.path(), &mut budget).unwrap();
        assert_eq!(secrets_in(dst.path()), Vec::<PathBuf>::new());
        assert_eq!(std::fs::read(dst.path().join("mine")).unwrap(), b"mine");
    }

    /// What the cell left in /work may be links to host files: never read through.
    #[test]
    fn collect_reads_no_link_and_returns_bytes_exactly() {
        let o = outside();
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        symlink(o.path().join("secret"), w.join("file-link")).unwrap();
        symlink(o.path().join("dir"), w.join("dir-link")).unwrap();
        std::fs::write(w.join("bin"), b"\xff\x00\xfe").unwrap();
        let names: Vec<String> = ["file-link", "dir-link/secret", "bin", "dir-link"]
            .map(String::from)
            .to_vec();
        let got = collect_files(w, &names);
        for f in &got[..2] {
            assert!(f.content.is_none() && f.note.is_some(), "{f:?}");
        }
        assert_eq!(got[2].encoding, Some(Encoding::Base64));
        assert_eq!(got[2].content.as_deref(), Some("/wD+"));
        assert!(got[3].content.is_none(), "{:?}", got[3]);
    }

    /// A fifo left in /work is not opened for reading in a way that blocks.
    #[test]
    fn collect_does_not_block_on_a_fifo() {
        let work = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &work.path().join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let got = collect_files(work.path(), &["pipe".to_string()]);
        assert_eq!(got[0].note.as_deref(), Some("not a regular file"));
    }

    #[test]
    fn a_fifo_in_the_project_is_skipped_without_blocking() {
        let project = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &project.path().join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut budget = MAX_PROJECT_COPY_BYTES;
        copy_project(project.path(), dst.path(), &mut budget).unwrap();
        assert!(std::fs::symlink_metadata(dst.path().join("pipe")).is_err());
    }
}
