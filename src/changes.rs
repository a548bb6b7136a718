//! The workdir's trust boundary: what a cell changed in its copy-on-write workdir comes
//! back to the host only through here, checked, after the cell is gone.
//!
//! The upper layer of the overlay (reached through the descriptor the cell passed, never
//! by a path) is walked with `fstatat(AT_SYMLINK_NOFOLLOW)`; the real workdir is the
//! descriptor opened once at plan time, and every step below it is an `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`.
//! Only regular files, directories and symbolic links come back; no setuid/setgid bit,
//! no extended attribute; whiteouts become deletions, opaque directories delete the
//! real directory's other entries. A file is written to a fresh temporary file in its
//! directory and renamed over the name, so an existing inode (a hard link to a file
//! elsewhere) is replaced, never written. Everything replaced or deleted is kept in a
//! run journal first, which `nixcell undo` restores.

use crate::dirs::{self, Base};
use crate::fsat::{self, is_dir, is_lnk, is_reg};
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Directory levels walked below the workdir; deeper changes are refused.
const MAX_DEPTH: usize = 256;
/// Entries listed per kind in the verdict; the counts are always complete.
const LIST_CAP: usize = 100;
const OPAQUE: &std::ffi::CStr = c"user.overlay.opaque";

/// Where the changes go: the workdir as opened at plan time.
#[derive(Clone)]
pub struct Target {
    pub dir: Arc<OwnedFd>,
    pub path: PathBuf,
    /// Owner of the workdir: new files and directories get it.
    pub owner: (u32, u32),
    /// Started as root: ownership is set explicitly (rootless, the caller owns them).
    pub chown: bool,
    pub protect: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Changed {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Refused {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChangeLists {
    pub added: Vec<Changed>,
    pub modified: Vec<Changed>,
    pub deleted: Vec<Changed>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Counts {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub refused: usize,
}

/// The verdict's `workdir`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkdirReport {
    /// "cow", "bind" or "ro".
    pub mode: std::borrow::Cow<'static, str>,
    /// The cell's changes were applied to the workdir (false: none was, see `refused`).
    pub applied: bool,
    /// The copy-on-write layer ran out of space or inodes (the cell saw ENOSPC).
    pub cap_hit: bool,
    /// The run journal `nixcell undo` takes.
    pub run: Option<String>,
    pub changes: ChangeLists,
    pub refused: Vec<Refused>,
    /// Totals (the lists hold at most 100 entries each).
    pub counts: Counts,
}

impl WorkdirReport {
    pub fn live(mode: crate::spec::WorkdirMode) -> Self {
        WorkdirReport {
            mode: mode.as_str().into(),
            applied: false,
            cap_hit: false,
            run: None,
            changes: ChangeLists::default(),
            refused: Vec::new(),
            counts: Counts::default(),
        }
    }

    fn push(&mut self, kind: Kind, path: &str, size: Option<u64>) {
        let (list, n) = match kind {
            Kind::Added => (&mut self.changes.added, &mut self.counts.added),
            Kind::Modified => (&mut self.changes.modified, &mut self.counts.modified),
            Kind::Deleted => (&mut self.changes.deleted, &mut self.counts.deleted),
        };
        *n += 1;
        if list.len() < LIST_CAP {
            list.push(Changed {
                path: path.to_string(),
                size,
            });
        }
    }

    fn refuse(&mut self, path: &str, reason: impl Into<String>) {
        self.counts.refused += 1;
        if self.refused.len() < LIST_CAP {
            self.refused.push(Refused {
                path: path.to_string(),
                reason: reason.into(),
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Added,
    Modified,
    Deleted,
}

/// What a name was left as by the run, to recognise later changes (undo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    ino: u64,
    size: i64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(st: &libc::stat) -> Self {
        Stamp {
            ino: st.st_ino,
            size: if is_dir(st) { 0 } else { st.st_size },
            mtime: if is_dir(st) { 0 } else { st.st_mtime },
            mtime_nsec: if is_dir(st) { 0 } else { st.st_mtime_nsec },
        }
    }
}

/// One step of a run, as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    path: String,
    kind: Kind,
    /// Name under `saved/` of what the path held before (replaced or deleted).
    saved: Option<String>,
    /// What the run left at the path (None: nothing).
    after: Option<Stamp>,
    /// A directory whose mode alone changed: its mode before.
    old_mode: Option<u32>,
}

/// A run journal: `runs/<id>/journal.json` and the previous objects in `runs/<id>/saved/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    pub time: u64,
    pub workdir: PathBuf,
    dev: u64,
    ino: u64,
    pub counts: Counts,
    steps: Vec<Step>,
    #[serde(default)]
    pub undone: bool,
}

/// What listing and choosing a run need of it: `runs/<id>/head.json`, written next to
/// the journal each time the journal is. A journal grows with its run (90,000 changes
/// are 21 MB of JSON): `nixcell runs`, pruning and finding a workdir's latest run read
/// only the heads; the journal itself is read only for the run being undone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunHead {
    pub id: String,
    pub time: u64,
    pub workdir: PathBuf,
    pub counts: Counts,
    #[serde(default)]
    pub undone: bool,
}

/// The head file of a run (see [`RunHead`]).
const HEAD: &str = "head.json";

impl Journal {
    fn head(&self) -> RunHead {
        RunHead {
            id: self.id.clone(),
            time: self.time,
            workdir: self.workdir.clone(),
            counts: self.counts.clone(),
            undone: self.undone,
        }
    }

    /// Writes the journal, then its head (a head missing after a crash between the two
    /// is derived again from the journal, see [`list_runs`]).
    fn write(&self, run_dir: &Path) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        dirs::write_atomic(run_dir, "journal.json", &body)?;
        write_head(run_dir, &self.head())
    }
}

fn write_head(run_dir: &Path, h: &RunHead) -> io::Result<()> {
    let body = serde_json::to_vec_pretty(h).map_err(io::Error::other)?;
    dirs::write_atomic(run_dir, HEAD, &body)
}

struct Saver {
    dir: PathBuf,
    saved: OwnedFd,
    n: usize,
    /// Bytes still allowed for copies (see [`JOURNAL_COPY_CAP`]).
    copy_room: u64,
    /// `steps.jsonl`: each step appended as it is done, so that a supervisor killed
    /// while applying leaves an undoable record (rewriting the whole journal as it grew
    /// cost time quadratic in the number of changes); removed once `journal.json` is
    /// complete.
    log: Option<File>,
}

/// The step log of an incomplete journal (see [`Saver::log`]).
const STEP_LOG: &str = "steps.jsonl";

struct Applier<'a> {
    t: &'a Target,
    dry: bool,
    report: WorkdirReport,
    steps: Vec<Step>,
    saver: Option<Saver>,
    tmp_n: usize,
    /// File systems mounted below the workdir (relative paths): never deleted or
    /// replaced along with a directory above them (a deleted directory is moved into the
    /// journal, and the mount with it).
    mounts: Vec<PathBuf>,
    /// Directories of the workdir (relative) holding a project's declaration, found
    /// while walking: their Nix files are protected in any run.
    projects: Vec<PathBuf>,
}

fn rel_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens an entry of the upper layer; an entry the cell made unreadable (chmod 000)
/// is given its owner's read (and search) permission first: the upper layer belongs
/// to the cell's host identity, which rootless is the caller.
fn open_upper(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &libc::stat,
    flags: i32,
) -> io::Result<OwnedFd> {
    let p = Path::new(name);
    if is_dir(st) && st.st_mode & 0o700 != 0o700 {
        // Searching a directory needs x as well as r: give both before descending.
        let _ = fsat::chmod_at(dir, name, (st.st_mode & 0o7777) | 0o700);
    }
    match fsat::open_beneath(dir, p, flags) {
        Err(e) if errno(&e) == libc::EACCES => {
            let add = if is_dir(st) { 0o700 } else { 0o600 };
            fsat::chmod_at(dir, name, (st.st_mode & 0o7777) | add)?;
            fsat::open_beneath(dir, p, flags)
        }
        r => r,
    }
}

fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

fn kind_name(st: &libc::stat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a fifo",
        libc::S_IFSOCK => "a socket",
        _ => "an unknown kind of file",
    }
}

fn lstat_opt(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    match fsat::lstat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if errno(&e) == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

fn same_content(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    use std::io::Read;
    let mut fa = File::from(a.try_clone_to_owned()?);
    let mut fb = File::from(b.try_clone_to_owned()?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
    fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}

/// Copies a regular file's content from `src` to `dst` (both at offset 0), keeping
/// its holes: only the data segments are written, the length is set at the end. A
/// cell's sparse file (any apparent size at no cost in its capped layer) thus takes
/// on the host no more than it took in the layer.
fn copy_sparse(src: &File, dst: &File) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = src.metadata()?.len();
    let seek = |f: &File, off: u64, whence: i32| -> io::Result<Option<u64>> {
        // SAFETY: lseek(2) on an open descriptor.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if errno(&e) == libc::ENXIO {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    };
    let mut off = 0u64;
    while off < len {
        let data = match seek(src, off, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // No hole support: one data segment, the whole file.
            Err(e) if errno(&e) == libc::EINVAL => off,
            Err(e) => return Err(e),
        };
        let end = match seek(src, data, libc::SEEK_HOLE) {
            Ok(Some(h)) => h.min(len),
            Ok(None) | Err(_) => len,
        };
        let (mut from, mut to) = (src, dst);
        from.seek(SeekFrom::Start(data))?;
        to.seek(SeekFrom::Start(data))?;
        io::copy(&mut from.take(end - data), &mut to)?;
        off = end.max(data + 1);
    }
    dst.set_len(len)
}

/// Removes `name` below `dir` and everything under it, never following a link.
fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = fsat::lstat_at(dir, name)?;
    if is_dir(&st) {
        let sub = fsat::open_beneath(dir, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
        for n in fsat::list_dir(sub.as_fd())? {
            remove_tree(sub.as_fd(), &n)?;
        }
        fsat::unlink_at(dir, name, true)
    } else {
        fsat::unlink_at(dir, name, false)
    }
}

/// Copies `name` below `from` to `to_name` below `to` (files, links and directories;
/// nothing else), without following links; used when a hard link or a rename cannot
/// cross file systems.
///
/// `room` is what the copy may still take on the destination's file system (see
/// [`JOURNAL_COPY_CAP`]); a file that does not fit stops the copy with `StorageFull`.
fn copy_tree(
    from: BorrowedFd<'_>,
    name: &OsStr,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
    room: &mut u64,
) -> io::Result<()> {
    let st = fsat::lstat_at(from, name)?;
    if is_dir(&st) {
        fsat::mkdir_at(to, to_name, 0o700)?;
        let src = fsat::open_beneath(from, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let dst = fsat::open_beneath(to, Path::new(to_name), libc::O_RDONLY | libc::O_DIRECTORY)?;
        for n in fsat::list_dir(src.as_fd())? {
            copy_tree(src.as_fd(), &n, dst.as_fd(), &n, room)?;
        }
        fsat::fchmod(dst.as_fd(), st.st_mode & 0o1777)
    } else if is_lnk(&st) {
        fsat::symlink_at(&fsat::readlink_at(from, name)?, to, to_name)
    } else if is_reg(&st) {
        let need = (st.st_blocks as u64).saturating_mul(512);
        if *room != UNLIMITED && (need > *room || !keeps_reserve(to, need)) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "no room to keep the prior state for undo (at most {} MiB copied to \
                     another file system per run, and a tenth of it kept free)",
                    JOURNAL_COPY_CAP >> 20
                ),
            ));
        }
        *room -= need;
        let src = fsat::open_beneath(from, Path::new(name), libc::O_RDONLY)?;
        let dst = fsat::openat2(
            to.as_raw_fd(),
            Path::new(to_name),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
            fsat::BENEATH,
        )?;
        copy_sparse(&File::from(src), &File::from(dst.try_clone()?))?;
        fsat::fchmod(dst.as_fd(), st.st_mode & 0o777)?;
        fsat::futimens(dst.as_fd(), &st)
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// What the run journal may copy per run when it is on another file system than the
/// workdir (it hard-links or moves otherwise, at no cost): a cell that deletes a large
/// workdir must not fill the journal's file system (often `/`). A change whose prior
/// state cannot be kept is refused, never applied without it.
const JOURNAL_COPY_CAP: u64 = 1 << 30;

/// No cap: restoring a journal's own copies back into the workdir.
const UNLIMITED: u64 = u64::MAX;

/// Whether writing `need` more bytes leaves a tenth of the file system of `dir` free.
fn keeps_reserve(dir: BorrowedFd<'_>, need: u64) -> bool {
    match nix::sys::statvfs::fstatvfs(dir) {
        Ok(v) => {
            let unit = v.fragment_size();
            let free = v.blocks_available().saturating_mul(unit);
            let total = v.blocks().saturating_mul(unit);
            free.saturating_sub(need) >= total / 10
        }
        Err(_) => false,
    }
}

impl Saver {
    /// Keeps what `name` below `dir` holds now: a hard link to the inode (it is never
    /// written afterwards, since it is replaced by rename), a directory moved out of
    /// the way, or a copy when the journal is on another file system. With `remove`,
    /// the name is gone afterwards.
    fn keep(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &libc::stat,
        remove: bool,
    ) -> io::Result<String> {
        self.n += 1;
        let id = self.n.to_string();
        let to = OsStr::new(&id);
        if is_dir(st) {
            if !remove {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            match fsat::rename_at(dir, name, self.saved.as_fd(), to, true) {
                Ok(()) => return Ok(id),
                Err(e) if errno(&e) == libc::EXDEV => {}
                Err(e) => return Err(e),
            }
            copy_tree(dir, name, self.saved.as_fd(), to, &mut self.copy_room)?;
            remove_tree(dir, name)?;
            return Ok(id);
        }
        match fsat::link_at(dir, name, self.saved.as_fd(), to) {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), libc::EXDEV | libc::EPERM | libc::EMLINK) => {
                copy_tree(dir, name, self.saved.as_fd(), to, &mut self.copy_room)?;
            }
            Err(e) => return Err(e),
        }
        if remove {
            fsat::unlink_at(dir, name, false)?;
        }
        Ok(id)
    }
}

/// What may come back inside a git repository's `.git` directory (at any depth of the
/// workdir, project or not): objects, refs and the state a commit, merge or checkout
/// writes. Never its configuration (`core.fsmonitor`, `core.pager`, filter drivers run
/// commands on the host's next `git status`), hooks, nested repositories
/// (`modules/`, `worktrees/`) or a `.git` that is not a directory (a `gitdir:` file).
const GIT_STATE: &[&str] = &[
    "objects",
    "refs",
    "logs",
    "index",
    "packed-refs",
    "HEAD",
    "ORIG_HEAD",
    "FETCH_HEAD",
    "MERGE_HEAD",
    "MERGE_MSG",
    "AUTO_MERGE",
    "REBASE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "COMMIT_EDITMSG",
];

/// Why `rel` (a directory when `!whole`) inside a `.git` may not come back.
fn git_metadata(rel: &Path, whole: bool) -> Option<String> {
    let parts: Vec<&OsStr> = rel.iter().collect();
    let i = parts.iter().position(|c| *c == OsStr::new(".git"))?;
    let why = match parts.get(i + 1) {
        None if whole => "a repository's .git only as a directory".to_string(),
        None => return None,
        Some(c) if GIT_STATE.iter().any(|s| OsStr::new(s) == *c) => return None,
        Some(c) => format!(
            "{}: a repository's configuration, hooks or nested repositories never come back",
            Path::new(c).display()
        ),
    };
    Some(why)
}

/// A directory with a `HEAD` and a `config` is a bare git repository to git run inside
/// it: its `config` (`core.pager`, `core.fsmonitor`) and `hooks` run commands on the
/// host. So a `config` or `hooks` next to a `HEAD`, and a `HEAD` next to a `config` or
/// `hooks` (in the cell's copy or the workdir: a repository is not assembled over two
/// runs either) never come back, nor a `commondir` (which sends git to another
/// directory's configuration) anywhere. A `.git` directory has its own rule.
fn bare_repository(
    udir: BorrowedFd<'_>,
    tdir: Option<BorrowedFd<'_>>,
    dir_rel: &Path,
    name: &OsStr,
) -> Option<String> {
    if dir_rel.file_name() == Some(OsStr::new(".git")) {
        return None;
    }
    if name == "commondir" {
        return Some("protected: a git commondir file never comes back".into());
    }
    let others: &[&str] = match name.as_bytes() {
        b"config" | b"hooks" => &["HEAD"],
        b"HEAD" => &["config", "hooks"],
        _ => return None,
    };
    let has = |d: BorrowedFd<'_>| {
        others
            .iter()
            .any(|o| !matches!(lstat_opt(d, OsStr::new(o)), Ok(None)))
    };
    (has(udir) || tdir.is_some_and(has)).then(|| {
        "protected: HEAD with config or hooks make a (bare) git repository, whose configuration and hooks never come back"
            .into()
    })
}

impl<'a> Applier<'a> {
    fn protected(&self, rel: &Path, whole: bool) -> Option<&Path> {
        self.t
            .protect
            .iter()
            .map(PathBuf::as_path)
            .find(|p| rel.starts_with(p) || (whole && p.starts_with(rel)))
    }

    /// The reason a change at `rel` is refused before anything else, if any.
    fn refusal(&self, rel: &Path, whole: bool) -> Option<String> {
        if let Some(p) = self.protected(rel, whole) {
            return Some(format!(
                "protected: {} may not be changed by a cell",
                p.display()
            ));
        }
        // A project's declaration is protected; so are its other Nix files, which it
        // may import (a rewritten import would change, unapproved, what the host
        // evaluates and builds next).
        // A project's own files, at any depth and in any run (a plain run on a
        // directory holding projects, or a cell making a new project in its workdir).
        if let Some(c) = rel.iter().find(|c| {
            *c != OsStr::new(".git")
                && crate::project::PROTECTED
                    .iter()
                    .any(|p| OsStr::new(p) == *c)
        }) {
            return Some(format!(
                "protected: {}: a project's declaration and nixcell's state may not be changed by a cell",
                Path::new(c).display()
            ));
        }
        let nix_name = rel
            .file_name()
            .is_some_and(|n| n.as_bytes().ends_with(b".nix"));
        if nix_name
            && let Some(proj) = self
                .t
                .protect
                .iter()
                .filter(|p| p.file_name() == Some(OsStr::new("devenv.nix")))
                .filter_map(|p| p.parent())
                .chain(self.projects.iter().map(PathBuf::as_path))
                .find(|d| rel.starts_with(d))
        {
            let at = if proj.as_os_str().is_empty() {
                "the project".to_string()
            } else {
                format!("the project {}", proj.display())
            };
            return Some(format!(
                "protected: a Nix file of {at} (its declaration may import it) may not be changed by a cell"
            ));
        }
        if let Some(m) = self
            .mounts
            .iter()
            .find(|m| rel.starts_with(m) || (whole && m.starts_with(rel)))
        {
            return Some(format!("a file system is mounted at {}", m.display()));
        }
        git_metadata(rel, whole).map(|w| format!("protected: {w}"))
    }

    /// Started as root, nixcell writes with root's authority: only into a directory
    /// of the workdir's owner (checked on the opened directory, so a directory the
    /// owner renames into place during the run is judged as what it is).
    fn may_write_in(&self, dir: BorrowedFd<'_>) -> Result<(), String> {
        if !self.t.chown {
            return Ok(());
        }
        match fsat::fstat(dir) {
            Ok(st) if st.st_uid == self.t.owner.0 => Ok(()),
            Ok(st) => Err(format!(
                "its directory belongs to uid {}, not to the workdir's owner",
                st.st_uid
            )),
            Err(e) => Err(format!("cannot read its directory: {e}")),
        }
    }

    fn temp_name(&mut self) -> OsString {
        self.tmp_n += 1;
        OsString::from(format!(
            ".nixcell-apply-{}-{}",
            std::process::id(),
            self.tmp_n
        ))
    }

    fn saver(&mut self) -> io::Result<&mut Saver> {
        if self.saver.is_none() {
            let id = format!(
                "{}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0),
                std::process::id()
            );
            let dir = dirs::private_dir(Base::State, &format!("runs/{id}"))
                .map_err(|e| io::Error::other(e.to_string()))?;
            std::fs::DirBuilder::new().create(dir.join("saved"))?;
            let saved = fsat::openat2(
                libc::AT_FDCWD,
                &dir.join("saved"),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
                libc::RESOLVE_NO_SYMLINKS,
            )?;
            let log = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(dir.join(STEP_LOG))
                    .ok()
            };
            self.report.run = Some(id);
            self.saver = Some(Saver {
                dir,
                saved,
                n: 0,
                copy_room: JOURNAL_COPY_CAP,
                log,
            });
        }
        Ok(self.saver.as_mut().expect("set above"))
    }

    fn keep(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &libc::stat,
        remove: bool,
    ) -> io::Result<String> {
        self.saver()?.keep(dir, name, st, remove)
    }

    fn step(
        &mut self,
        rel: &Path,
        kind: Kind,
        saved: Option<String>,
        after: Option<Stamp>,
        size: Option<u64>,
    ) {
        let path = rel_str(rel);
        self.report.push(kind, &path, size);
        if !self.dry {
            self.steps.push(Step {
                path,
                kind,
                saved,
                after,
                old_mode: None,
            });
            self.log_step();
        }
    }

    /// The journal on disk follows along, so that a supervisor killed while applying
    /// leaves an undoable record of what it did so far: the journal itself once, then
    /// each step appended to the step log.
    fn log_step(&mut self) {
        if self.steps.len() == 1 {
            let _ = write_journal(self);
        }
        let Some(step) = self.steps.last() else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(step) else {
            return;
        };
        line.push(b'\n');
        if let Some(log) = self.saver.as_mut().and_then(|s| s.log.as_mut()) {
            let _ = std::io::Write::write_all(log, &line);
        }
    }

    /// Deletes what `name` holds in the real directory (a whiteout, or an entry an
    /// opaque directory hides), journaled first.
    fn delete(&mut self, tdir: BorrowedFd<'_>, name: &OsStr, rel: &Path) {
        let st = match lstat_opt(tdir, name) {
            Ok(Some(st)) => st,
            Ok(None) => return,
            Err(e) => {
                return self
                    .report
                    .refuse(&rel_str(rel), format!("cannot read: {e}"));
            }
        };
        if let Some(why) = self.refusal(rel, true) {
            return self.report.refuse(&rel_str(rel), why);
        }
        if let Err(why) = self.may_write_in(tdir) {
            return self.report.refuse(&rel_str(rel), why);
        }
        if self.dry {
            return self.step(rel, Kind::Deleted, None, None, None);
        }
        match self.keep(tdir, name, &st, true) {
            Ok(saved) => self.step(rel, Kind::Deleted, Some(saved), None, None),
            Err(e) => self
                .report
                .refuse(&rel_str(rel), format!("cannot delete: {e}")),
        }
    }

    /// Walks one directory of the upper layer against the real directory `tdir`
    /// (None: it does not exist, only in a dry walk).
    fn walk(&mut self, udir: BorrowedFd<'_>, tdir: Option<BorrowedFd<'_>>, rel: &Path) {
        let names = match fsat::list_dir(udir) {
            Ok(n) => n,
            Err(e) => {
                return self
                    .report
                    .refuse(&rel_str(rel), format!("cannot read the cell's copy: {e}"));
            }
        };
        if rel.components().count() >= MAX_DEPTH {
            let why = format!("nested deeper than {MAX_DEPTH} levels");
            return self.report.refuse(&rel_str(rel), why);
        }
        if let Some(t) = tdir
            && !matches!(lstat_opt(t, OsStr::new("devenv.nix")), Ok(None))
            && !self.projects.iter().any(|p| p == rel)
        {
            self.projects.push(rel.to_path_buf());
        }
        for name in names {
            let r = rel.join(&name);
            if std::str::from_utf8(name.as_bytes()).is_err() {
                self.report.refuse(&rel_str(&r), "the name is not UTF-8");
                continue;
            }
            let ust = match fsat::lstat_at(udir, &name) {
                Ok(st) => st,
                Err(e) => {
                    self.report
                        .refuse(&rel_str(&r), format!("cannot read the cell's copy: {e}"));
                    continue;
                }
            };
            let whole = !is_dir(&ust);
            if let Some(why) = bare_repository(udir, tdir, rel, &name) {
                self.report.refuse(&rel_str(&r), why);
                continue;
            }
            if let Some(why) = self.refusal(&r, whole) {
                self.report.refuse(&rel_str(&r), why);
                continue;
            }
            if is_whiteout(&ust) {
                if let Some(t) = tdir {
                    self.delete(t, &name, &r);
                }
                continue;
            }
            let tst = match tdir.map(|t| lstat_opt(t, &name)).transpose() {
                Ok(t) => t.flatten(),
                Err(e) => {
                    self.report
                        .refuse(&rel_str(&r), format!("cannot read the workdir: {e}"));
                    continue;
                }
            };
            if is_dir(&ust) {
                self.dir(udir, tdir, &name, &r, &ust, tst.as_ref());
            } else if is_reg(&ust) || is_lnk(&ust) {
                self.non_dir(udir, tdir, &name, &r, &ust, tst.as_ref());
            } else {
                let why = format!(
                    "{}: only files, directories and symbolic links come back",
                    kind_name(&ust)
                );
                self.report.refuse(&rel_str(&r), why);
            }
        }
    }

    fn dir(
        &mut self,
        udir: BorrowedFd<'_>,
        tdir: Option<BorrowedFd<'_>>,
        name: &OsStr,
        r: &Path,
        ust: &libc::stat,
        tst: Option<&libc::stat>,
    ) {
        let sub = match open_upper(udir, name, ust, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) => {
                return self
                    .report
                    .refuse(&rel_str(r), format!("cannot read the cell's copy: {e}"));
            }
        };
        let opaque = matches!(fsat::fgetxattr(sub.as_fd(), OPAQUE), Ok(Some(v)) if v == b"y");
        // Directories keep at least their owner's rwx, so that the owner (and undo) can
        // always reach inside; no setuid/setgid bit.
        let mode = (ust.st_mode & 0o1777) | 0o700;
        let (Some(t), false) = (tdir, self.dry && tst.is_none()) else {
            // Dry walk below a directory that is not there: all of it is new.
            self.step(r, Kind::Added, None, None, None);
            return self.walk(sub.as_fd(), None, r);
        };
        match tst {
            Some(st) if is_dir(st) => {
                let tsub = match fsat::open_beneath(
                    t,
                    Path::new(name),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                ) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let why = if errno(&e) == libc::EXDEV {
                            "another file system is mounted there".to_string()
                        } else {
                            format!("cannot open in the workdir: {e}")
                        };
                        return self.report.refuse(&rel_str(r), why);
                    }
                };
                if opaque {
                    // The cell removed the directory and made a new one: the real
                    // directory's entries that the upper does not have are deleted.
                    let keep: Vec<OsString> = fsat::list_dir(sub.as_fd()).unwrap_or_default();
                    for n in fsat::list_dir(tsub.as_fd()).unwrap_or_default() {
                        if !keep.contains(&n) {
                            self.delete(tsub.as_fd(), &n, &r.join(&n));
                        }
                    }
                }
                self.walk(sub.as_fd(), Some(tsub.as_fd()), r);
                // The directory opened, not the name looked up before.
                let st = &fsat::fstat(tsub.as_fd()).unwrap_or(*st);
                if st.st_mode & 0o1777 != ust.st_mode & 0o1777 {
                    if st.st_uid != self.t.owner.0 {
                        let why = format!(
                            "mode {mode:o}: the directory belongs to uid {}, not to the workdir's owner",
                            st.st_uid
                        );
                        return self.report.refuse(&rel_str(r), why);
                    }
                    if !self.dry
                        && let Err(e) = fsat::fchmod(tsub.as_fd(), mode)
                    {
                        return self.report.refuse(&rel_str(r), format!("chmod: {e}"));
                    }
                    self.report.push(Kind::Modified, &rel_str(r), None);
                    if !self.dry {
                        self.steps.push(Step {
                            path: rel_str(r),
                            kind: Kind::Modified,
                            saved: None,
                            after: Some(Stamp::of(st)),
                            old_mode: Some(st.st_mode & 0o7777),
                        });
                        self.log_step();
                    }
                }
            }
            other => {
                // New, or a file or link replaced by a directory.
                if let Err(why) = self.may_write_in(t) {
                    return self.report.refuse(&rel_str(r), why);
                }
                let mut saved = None;
                if let Some(st) = other {
                    if self.dry {
                        self.report.push(Kind::Deleted, &rel_str(r), None);
                    } else {
                        match self.keep(t, name, st, true) {
                            Ok(s) => saved = Some(s),
                            Err(e) => {
                                return self
                                    .report
                                    .refuse(&rel_str(r), format!("cannot replace: {e}"));
                            }
                        }
                    }
                }
                if self.dry {
                    self.step(r, Kind::Added, None, None, None);
                    return self.walk(sub.as_fd(), None, r);
                }
                let made = fsat::mkdir_at(t, name, 0o700).and_then(|()| {
                    let fd =
                        fsat::open_beneath(t, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
                    if self.t.chown {
                        fsat::lchown_at(
                            fd.as_fd(),
                            OsStr::new(""),
                            self.t.owner.0,
                            self.t.owner.1,
                        )?;
                    }
                    Ok(fd)
                });
                let tsub = match made {
                    Ok(fd) => fd,
                    Err(e) => {
                        return self
                            .report
                            .refuse(&rel_str(r), format!("cannot create: {e}"));
                    }
                };
                let after = fsat::fstat(tsub.as_fd()).ok().map(|s| Stamp::of(&s));
                let kind = if saved.is_some() {
                    Kind::Modified
                } else {
                    Kind::Added
                };
                self.step(r, kind, saved, after, None);
                self.walk(sub.as_fd(), Some(tsub.as_fd()), r);
                if let Err(e) = fsat::fchmod(tsub.as_fd(), mode) {
                    self.report.refuse(&rel_str(r), format!("chmod: {e}"));
                }
            }
        }
    }

    fn non_dir(
        &mut self,
        udir: BorrowedFd<'_>,
        tdir: Option<BorrowedFd<'_>>,
        name: &OsStr,
        r: &Path,
        ust: &libc::stat,
        tst: Option<&libc::stat>,
    ) {
        let path = rel_str(r);
        let mode = ust.st_mode & 0o7777;
        // The cell's copy: content or link target.
        let (src, link) = if is_reg(ust) {
            match open_upper(udir, name, ust, libc::O_RDONLY) {
                Ok(fd) => (Some(fd), None),
                Err(e) => {
                    return self
                        .report
                        .refuse(&path, format!("cannot read the cell's copy: {e}"));
                }
            }
        } else {
            match fsat::readlink_at(udir, name) {
                Ok(l) => (None, Some(l)),
                Err(e) => {
                    return self
                        .report
                        .refuse(&path, format!("cannot read the cell's link: {e}"));
                }
            }
        };
        // Unchanged copies (a copy-up without a change) are not changes.
        if let (Some(t), Some(st)) = (tdir, tst) {
            let same = match (&src, &link) {
                (Some(s), _)
                    if is_reg(st)
                        && st.st_size == ust.st_size
                        && st.st_mode & 0o777 == mode & 0o777 =>
                {
                    fsat::open_beneath(t, Path::new(name), libc::O_RDONLY)
                        .and_then(|f| same_content(s.as_fd(), f.as_fd()))
                        .unwrap_or(false)
                }
                (_, Some(l)) if is_lnk(st) => {
                    fsat::readlink_at(t, name).map(|x| &x == l).unwrap_or(false)
                }
                _ => false,
            };
            if same {
                return;
            }
        }
        if mode & 0o6000 != 0 {
            self.report.refuse(
                &path,
                format!(
                    "mode {mode:o}: setuid/setgid bits stripped (applied as {:o})",
                    mode & 0o777
                ),
            );
        }
        let size = src.as_ref().map(|_| ust.st_size as u64);
        let kind = if tst.is_some() {
            Kind::Modified
        } else {
            Kind::Added
        };
        if let Some(Err(why)) = tdir.map(|t| self.may_write_in(t)) {
            return self.report.refuse(&path, why);
        }
        let Some(t) = tdir.filter(|_| !self.dry) else {
            return self.step(r, kind, None, None, size);
        };
        // A fresh name of ours: a name already there (whoever made it) is skipped,
        // never written or removed.
        let mut tries = 0;
        let (tmp, fd) = loop {
            let tmp = self.temp_name();
            let made = match &src {
                Some(_) => fsat::openat2(
                    t.as_raw_fd(),
                    Path::new(&tmp),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                    fsat::BENEATH,
                )
                .map(Some),
                None => {
                    fsat::symlink_at(link.as_deref().unwrap_or_default(), t, &tmp).map(|()| None)
                }
            };
            match made {
                Ok(fd) => break (tmp, fd),
                Err(e) if errno(&e) == libc::EEXIST && tries < 100 => tries += 1,
                Err(e) => return self.report.refuse(&path, format!("cannot write: {e}")),
            }
        };
        let made = (|| -> io::Result<()> {
            if let (Some(s), Some(fd)) = (&src, &fd) {
                // The descriptor may have been read already (the comparison above).
                copy_sparse(&File::from(s.try_clone()?), &File::from(fd.try_clone()?))?;
                if self.t.chown {
                    fsat::lchown_at(fd.as_fd(), OsStr::new(""), self.t.owner.0, self.t.owner.1)?;
                }
                fsat::fchmod(fd.as_fd(), mode & 0o777)?;
                fsat::futimens(fd.as_fd(), ust)
            } else {
                if self.t.chown {
                    fsat::lchown_at(t, &tmp, self.t.owner.0, self.t.owner.1)?;
                }
                Ok(())
            }
        })();
        if let Err(e) = made {
            let _ = fsat::unlink_at(t, &tmp, false);
            return self.report.refuse(&path, format!("cannot write: {e}"));
        }
        let mut saved = None;
        if let Some(st) = tst {
            // A directory is moved into the journal; a file or link is linked there
            // and then replaced by the rename.
            match self.keep(t, name, st, is_dir(st)) {
                Ok(s) => saved = Some(s),
                Err(e) => {
                    let _ = fsat::unlink_at(t, &tmp, false);
                    return self
                        .report
                        .refuse(&path, format!("cannot keep the previous version: {e}"));
                }
            }
        }
        if let Err(e) = fsat::rename_at(t, &tmp, t, name, false) {
            let _ = fsat::unlink_at(t, &tmp, false);
            return self.report.refuse(&path, format!("rename: {e}"));
        }
        let after = fsat::lstat_at(t, name).ok().map(|s| Stamp::of(&s));
        self.step(r, kind, saved, after, size);
    }
}

/// The mount points strictly below `dir` (a resolved path), relative to it, from
/// /proc/self/mountinfo. Only root mounts in the host's mount namespace, so the list
/// cannot be changed by the workdir's owner between reading it and applying.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_mountinfo(field))))
        .filter_map(|m| m.strip_prefix(dir).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty())
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|o| field[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether the copy-on-write layer is full (blocks or inodes): the cell hit its cap.
fn cap_hit(layer: BorrowedFd<'_>) -> bool {
    matches!(fsat::free_space(layer), Ok((b, i)) if b == 0 || i == 0)
}

/// Applies the changes found in the copy-on-write layer (`layer`: the tmpfs holding
/// `upper/`) to the workdir. Call only once the cell is gone. When the layer's cap was
/// hit nothing is applied (the cell's copy may be cut short); the report lists what the
/// run would have changed.
pub fn apply(layer: &OwnedFd, t: &Target) -> WorkdirReport {
    let mut a = Applier {
        t,
        dry: false,
        report: WorkdirReport::live(crate::spec::WorkdirMode::Cow),
        steps: Vec::new(),
        saver: None,
        tmp_n: 0,
        mounts: mounts_below(&t.path),
        projects: Vec::new(),
    };
    a.report.cap_hit = cap_hit(layer.as_fd());
    a.dry = a.report.cap_hit;
    let root_st = match fsat::lstat_at(layer.as_fd(), OsStr::new("upper")) {
        Ok(st) => st,
        Err(e) => {
            a.report
                .refuse("", format!("the cell's layer is unreadable: {e}"));
            return a.report;
        }
    };
    let upper = match open_upper(
        layer.as_fd(),
        OsStr::new("upper"),
        &root_st,
        libc::O_RDONLY | libc::O_DIRECTORY,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            a.report
                .refuse("", format!("the cell's layer is unreadable: {e}"));
            return a.report;
        }
    };
    let top = match fsat::open_beneath(
        t.dir.as_fd(),
        Path::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            a.report
                .refuse("", format!("the workdir cannot be opened: {e}"));
            return a.report;
        }
    };
    a.walk(upper.as_fd(), Some(top.as_fd()), Path::new(""));
    if a.dry {
        a.report.refuse(
            "",
            "the copy-on-write layer's cap (work_size/work_inodes) was hit; no change was applied",
        );
        return a.report;
    }
    a.report.applied = true;
    if !a.steps.is_empty() {
        prune_runs(KEEP_RUNS);
    }
    if !a.steps.is_empty() {
        match write_journal(&mut a) {
            Ok(()) => {
                if let Some(s) = a.saver.take() {
                    drop(s.log);
                    let _ = std::fs::remove_file(s.dir.join(STEP_LOG));
                }
            }
            Err(e) => a
                .report
                .refuse("", format!("the run journal could not be written: {e}")),
        }
    }
    a.report
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_journal(a: &mut Applier<'_>) -> io::Result<()> {
    a.saver()?;
    let st = fsat::fstat(a.t.dir.as_fd())?;
    let j = Journal {
        id: a.report.run.clone().unwrap_or_default(),
        time: now_secs(),
        workdir: a.t.path.clone(),
        dev: st.st_dev,
        ino: st.st_ino,
        counts: a.report.counts.clone(),
        steps: a.steps.clone(),
        undone: false,
    };
    j.write(&a.saver.as_ref().expect("created above").dir)
}

/// Journals kept; older ones are removed when a run writes a new one.
const KEEP_RUNS: usize = 50;

fn prune_runs(keep: usize) {
    let Ok(root) = dirs::root(Base::State) else {
        return;
    };
    for j in list_runs().into_iter().skip(keep) {
        if !j.id.is_empty() && !j.id.contains('/') && !j.id.starts_with('.') {
            let d = root.join("runs").join(&j.id);
            // remove_dir_all does not follow symbolic links.
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

/// The runs kept, newest first, from their head files only (see [`RunHead`]).
///
/// A run without a head file (kept by an older nixcell, or a crash between writing the
/// journal and its head) has its head derived from its journal once and written; a run
/// whose journal cannot be read either is not listed.
pub fn list_runs() -> Vec<RunHead> {
    let Ok(root) = dirs::root(Base::State) else {
        return Vec::new();
    };
    let runs = root.join("runs");
    if dirs::check_private(&root).is_err() || dirs::check_private(&runs).is_err() {
        return Vec::new();
    }
    let mut out: Vec<RunHead> = std::fs::read_dir(&runs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().into_string().ok()?;
            let dir = e.path();
            let head = dir.join(HEAD);
            let h = if std::fs::symlink_metadata(&head).is_ok_and(|m| m.is_file()) {
                serde_json::from_slice::<RunHead>(&std::fs::read(&head).ok()?).ok()?
            } else {
                let h = load_journal(&dir)?.head();
                let _ = write_head(&dir, &h);
                h
            };
            // The directory names the run; a head claiming another is not believed.
            (h.id == id).then_some(h)
        })
        .collect();
    out.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    out
}

/// The whole journal of the run kept in `dir`.
fn load_journal(dir: &Path) -> Option<Journal> {
    let text = std::fs::read(dir.join("journal.json")).ok()?;
    let mut j: Journal = serde_json::from_slice(&text).ok()?;
    // Incomplete (the supervisor was killed while applying): the step log holds every
    // step done.
    let log = dir.join(STEP_LOG);
    if std::fs::symlink_metadata(&log).is_ok_and(|m| m.is_file())
        && let Ok(text) = std::fs::read(&log)
    {
        let steps: Vec<Step> = text
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        if steps.len() > j.steps.len() {
            j.steps = steps;
        }
    }
    Some(j)
}

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("no run journal {0} (see nixcell runs)")]
    NoSuchRun(String),
    #[error("no run with changes for {0} or a directory above it (see nixcell runs)")]
    NoRunHere(PathBuf),
    #[error("run {0} was undone already")]
    Undone(String),
    #[error("run {id}: the workdir {path}: {why}")]
    Workdir {
        id: String,
        path: PathBuf,
        why: String,
    },
    #[error("run {id}: changed since the run, not undone (give --force to undo anyway): {}", .paths.join(", "))]
    Conflict { id: String, paths: Vec<String> },
    #[error("{0}")]
    Io(String),
}

/// What `nixcell undo` did.
#[derive(Debug, Serialize)]
pub struct Undone {
    pub run: String,
    pub workdir: PathBuf,
    pub restored: Vec<String>,
    pub removed: Vec<String>,
}

/// Picks the run: `id`, else the latest with changes whose workdir is `cwd` or a
/// directory above it.
pub fn find_run(id: Option<&str>, cwd: &Path) -> Result<Journal, UndoError> {
    let runs = list_runs();
    let head = match id {
        Some(id) => runs
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| UndoError::NoSuchRun(id.to_string()))?,
        None => runs
            .into_iter()
            .find(|j| !j.undone && cwd.starts_with(&j.workdir))
            .ok_or_else(|| UndoError::NoRunHere(cwd.to_path_buf()))?,
    };
    let dir = dirs::root(Base::State)
        .map_err(|e| UndoError::Io(e.to_string()))?
        .join("runs")
        .join(&head.id);
    let j = load_journal(&dir)
        .ok_or_else(|| UndoError::Io(format!("run {}: its journal cannot be read", head.id)))?;
    if j.id != head.id {
        return Err(UndoError::Io(format!(
            "run {}: its journal names another run",
            head.id
        )));
    }
    Ok(j)
}

/// A name a cell chose, for a terminal: control characters (escape sequences, line
/// breaks that would forge lines of nixcell's own) written as escapes.
pub fn shown(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn split(rel: &str) -> (PathBuf, OsString) {
    let p = Path::new(rel);
    (
        p.parent().map(Path::to_path_buf).unwrap_or_default(),
        p.file_name().map(OsStr::to_os_string).unwrap_or_default(),
    )
}

/// Opens `parent` below `top` one component at a time: a run may have made paths
/// longer than PATH_MAX (applying walks by descriptors too), which must stay undoable.
fn open_parent(top: BorrowedFd<'_>, parent: &Path) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let mut dir = fsat::open_beneath(top, Path::new("."), flags)?;
    for c in parent.iter() {
        dir = fsat::open_beneath(dir.as_fd(), Path::new(c), flags)?;
    }
    Ok(dir)
}

/// Restores the workdir of a run to what it was before the run's changes were applied,
/// with the same resolution as applying them. Paths changed since the run are named
/// and nothing is done, unless `force`.
pub fn undo(j: &Journal, force: bool) -> Result<Undone, UndoError> {
    if j.undone {
        return Err(UndoError::Undone(j.id.clone()));
    }
    let werr = |why: String| UndoError::Workdir {
        id: j.id.clone(),
        path: j.workdir.clone(),
        why,
    };
    let top = crate::plan::open_host_path(&j.workdir).map_err(|e| werr(e.to_string()))?;
    if (top.st.st_dev, top.st.st_ino) != (j.dev, j.ino) {
        return Err(werr("is no longer the directory the run changed".into()));
    }
    let top = fsat::open_beneath(
        top.fd.as_fd(),
        Path::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(|e| werr(e.to_string()))?;
    let run_dir = dirs::private_dir(Base::State, &format!("runs/{}", j.id))
        .map_err(|e| UndoError::Io(e.to_string()))?;
    let saved = fsat::openat2(
        libc::AT_FDCWD,
        &run_dir.join("saved"),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .ok();
    // First pass: what is there now must be what the run left.
    let mut conflicts = Vec::new();
    let run_paths: std::collections::HashSet<&str> =
        j.steps.iter().map(|s| s.path.as_str()).collect();
    for s in j.steps.iter().rev() {
        let (parent, name) = split(&s.path);
        let pdir = open_parent(top.as_fd(), &parent).ok();
        let now = pdir
            .as_ref()
            .and_then(|d| lstat_opt(d.as_fd(), &name).ok().flatten());
        let ok = match (s.after, now) {
            (Some(a), Some(n)) => Stamp::of(&n) == a,
            (None, None) => true,
            _ => false,
        };
        if !ok {
            conflicts.push(s.path.clone());
        }
        // A directory the run made holds only what the run put there: anything else
        // was added since (a directory's stamp does not see that) and would go with it.
        if ok && s.old_mode.is_none() && now.as_ref().is_some_and(is_dir) {
            let entries = pdir
                .as_ref()
                .and_then(|d| {
                    fsat::open_beneath(
                        d.as_fd(),
                        Path::new(&name),
                        libc::O_RDONLY | libc::O_DIRECTORY,
                    )
                    .ok()
                })
                .map(|d| fsat::list_dir(d.as_fd()));
            match entries {
                Some(Ok(names)) => {
                    for n in names {
                        let p = rel_str(&Path::new(&s.path).join(&n));
                        if !run_paths.contains(p.as_str()) {
                            conflicts.push(p);
                        }
                    }
                }
                _ => conflicts.push(s.path.clone()),
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(UndoError::Conflict {
            id: j.id.clone(),
            paths: conflicts.iter().map(|p| shown(p)).collect(),
        });
    }
    let mut done = Undone {
        run: j.id.clone(),
        workdir: j.workdir.clone(),
        restored: Vec::new(),
        removed: Vec::new(),
    };
    // As root, like applying: only into directories of the workdir's owner (one the
    // owner renamed into place since the run is judged as what it is).
    let owner = if crate::sandbox::ns::is_host_root() {
        Some(
            fsat::fstat(top.as_fd())
                .map_err(|e| werr(e.to_string()))?
                .st_uid,
        )
    } else {
        None
    };
    let mut errors = Vec::new();
    for s in j.steps.iter().rev() {
        let (parent, name) = split(&s.path);
        let res = (|| -> io::Result<()> {
            let dir = open_parent(top.as_fd(), &parent)?;
            if let Some(u) = owner {
                let du = fsat::fstat(dir.as_fd())?.st_uid;
                if du != u {
                    return Err(io::Error::other(format!(
                        "its directory belongs to uid {du}, not to the workdir's owner"
                    )));
                }
            }
            let now = lstat_opt(dir.as_fd(), &name)?;
            if let Some(mode) = s.old_mode {
                if let Some(n) = now.filter(is_dir) {
                    let _ = n;
                    let fd = fsat::open_beneath(
                        dir.as_fd(),
                        Path::new(&name),
                        libc::O_RDONLY | libc::O_DIRECTORY,
                    )?;
                    fsat::fchmod(fd.as_fd(), mode & 0o1777)?;
                    done.restored.push(s.path.clone());
                }
                return Ok(());
            }
            // What the run put there goes (for an added directory: only when empty,
            // its entries came first in reverse order).
            if let Some(n) = now {
                if s.saved.is_none() && is_dir(&n) {
                    fsat::unlink_at(dir.as_fd(), &name, true)?;
                } else if is_dir(&n) {
                    remove_tree(dir.as_fd(), &name)?;
                } else {
                    fsat::unlink_at(dir.as_fd(), &name, false)?;
                }
                if s.saved.is_none() {
                    done.removed.push(s.path.clone());
                }
            }
            if let (Some(k), Some(sv)) = (&s.saved, &saved) {
                let k = OsStr::new(k);
                match fsat::rename_at(sv.as_fd(), k, dir.as_fd(), &name, true) {
                    Ok(()) => {}
                    Err(e) if errno(&e) == libc::EXDEV => {
                        copy_tree(sv.as_fd(), k, dir.as_fd(), &name, &mut UNLIMITED.clone())?
                    }
                    Err(e) => return Err(e),
                }
                done.restored.push(s.path.clone());
            }
            Ok(())
        })();
        if let Err(e) = res {
            errors.push(format!("{}: {e}", shown(&s.path)));
        }
    }
    if errors.is_empty() {
        let mut j2 = j.clone();
        j2.undone = true;
        let _ = j2.write(&run_dir);
    } else {
        return Err(UndoError::Io(format!(
            "run {}: not all restored: {}",
            j.id,
            errors.join("; ")
        )));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A fresh directory whose `state/` is the state directory, held (ENV) while the
    /// test runs.
    fn private_state() -> (std::sync::MutexGuard<'static, ()>, tempfile::TempDir) {
        let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let t = tempfile::tempdir().unwrap();
        // SAFETY: no other test of this crate reads XDG_STATE_HOME; the tests here take
        // turns (ENV).
        unsafe { std::env::set_var("XDG_STATE_HOME", t.path().join("state")) };
        (env, t)
    }

    /// The workdir `wd` as a target owned by the caller (rootless: no chown).
    fn own_target(wd: &Path) -> Target {
        Target {
            dir: Arc::new(o_path(wd)),
            path: wd.to_path_buf(),
            owner: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
            chown: false,
            protect: Vec::new(),
        }
    }

    fn o_path(p: &Path) -> OwnedFd {
        fsat::openat2(
            libc::AT_FDCWD,
            p,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            libc::RESOLVE_NO_SYMLINKS,
        )
        .unwrap()
    }

    /// A device node in the cell's copy is refused; a whiteout (char 0:0) deletes the
    /// name, recursively, without following a link inside. Needs root for mknod(2).
    #[test]
    fn devices_are_refused_and_whiteouts_delete() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (_env, t) = private_state();
        let layer = t.path().join("layer");
        let upper = layer.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let mk = |name: &str, dev: u64| {
            let c = std::ffi::CString::new(upper.join(name).as_os_str().as_bytes()).unwrap();
            // SAFETY: c is NUL-terminated.
            assert_eq!(
                unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, dev) },
                0
            );
        };
        mk("null", libc::makedev(1, 3));
        mk("gone", 0);
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(
            outside.join("keep"),
            "host
",
        )
        .unwrap();
        let wd = t.path().join("wd");
        std::fs::create_dir_all(wd.join("gone/deep")).unwrap();
        std::os::unix::fs::symlink(&outside, wd.join("gone/deep/link")).unwrap();
        let target = Target {
            dir: Arc::new(o_path(&wd)),
            path: wd.clone(),
            owner: (0, 0),
            chown: true,
            protect: Vec::new(),
        };
        let layer_fd: OwnedFd = File::open(&layer).unwrap().into();
        let r = apply(&layer_fd, &target);
        assert!(!wd.join("null").exists());
        assert!(
            r.refused
                .iter()
                .any(|x| x.path == "null" && x.reason.contains("a character device")),
            "{r:?}"
        );
        assert!(!wd.join("gone").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "host
"
        );
        assert_eq!(
            r.changes.deleted,
            [Changed {
                path: "gone".into(),
                size: None
            }]
        );
    }

    /// A name like nixcell's temporary files, already in the workdir (the owner's, or
    /// left by an earlier cell), is skipped: it used to make the change fail and be
    /// removed, unjournaled, by the clean-up.
    #[test]
    fn a_file_named_like_a_temporary_file_is_never_removed() {
        let (_env, t) = private_state();
        let upper = t.path().join("layer/upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("f"), "cell\n").unwrap();
        std::os::unix::fs::symlink("target", upper.join("l")).unwrap();
        let wd = t.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        let planted: Vec<PathBuf> = (1..=4)
            .map(|n| wd.join(format!(".nixcell-apply-{}-{n}", std::process::id())))
            .collect();
        for p in &planted {
            std::fs::write(p, "the owner's\n").unwrap();
        }
        let target = own_target(&wd);
        let layer_fd: OwnedFd = File::open(t.path().join("layer")).unwrap().into();
        let r = apply(&layer_fd, &target);
        assert!(r.refused.is_empty(), "{r:?}");
        for p in &planted {
            assert_eq!(std::fs::read_to_string(p).unwrap(), "the owner's\n");
        }
        assert_eq!(std::fs::read_to_string(wd.join("f")).unwrap(), "cell\n");
        assert_eq!(
            std::fs::read_link(wd.join("l")).unwrap(),
            Path::new("target")
        );
    }

    /// A supervisor killed while applying leaves the journal of its first step and the
    /// step log of all of them; the run lists (and undoes) every step. Applying many
    /// changes writes each step once (the whole journal used to be rewritten every 256
    /// steps: 90,000 new files took minutes to apply).
    #[test]
    fn an_incomplete_journal_is_completed_from_its_step_log() {
        let (_env, t) = private_state();
        let upper = t.path().join("layer/upper");
        std::fs::create_dir_all(&upper).unwrap();
        for i in 0..600 {
            std::fs::write(upper.join(format!("f{i}")), "cell\n").unwrap();
        }
        let wd = t.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        let target = own_target(&wd);
        let layer_fd: OwnedFd = File::open(t.path().join("layer")).unwrap().into();
        let r = apply(&layer_fd, &target);
        assert_eq!(r.counts.added, 600);
        let id = r.run.clone().unwrap();
        let run_dir = t.path().join("state/nixcell/runs").join(&id);
        assert!(!run_dir.join(STEP_LOG).exists(), "removed once complete");
        // As a killed supervisor leaves it: the journal of one step, and the log.
        let full = find_run(Some(&id), &wd).unwrap();
        let log: Vec<u8> = full
            .steps
            .iter()
            .flat_map(|s| {
                let mut l = serde_json::to_vec(s).unwrap();
                l.push(b'\n');
                l
            })
            .collect();
        std::fs::write(run_dir.join(STEP_LOG), log).unwrap();
        let mut head = full.clone();
        head.steps.truncate(1);
        std::fs::write(
            run_dir.join("journal.json"),
            serde_json::to_vec(&head).unwrap(),
        )
        .unwrap();
        let j = find_run(Some(&id), &wd).unwrap();
        assert_eq!(j.steps.len(), 600);
        undo(&j, false).unwrap();
        assert_eq!(std::fs::read_dir(&wd).unwrap().count(), 0);
    }

    /// Listing, pruning and choosing a workdir's run read the small head files only:
    /// with every journal unreadable, `nixcell runs` still lists all runs and pruning
    /// still removes the oldest. A run kept without a head gets one derived once.
    #[test]
    fn listing_and_pruning_never_read_the_journals() {
        let (_env, t) = private_state();
        let wd = t.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        // A real run, then two more runs' records with earlier times.
        let upper = t.path().join("layer/upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("new"), "cell\n").unwrap();
        let target = own_target(&wd);
        let layer_fd: OwnedFd = File::open(t.path().join("layer")).unwrap().into();
        let r = apply(&layer_fd, &target);
        let real = r.run.clone().unwrap();
        let runs = t.path().join("state/nixcell/runs");
        assert!(runs.join(&real).join(HEAD).is_file());
        let mut old = find_run(Some(&real), &wd).unwrap();
        for (id, time) in [("old-1", 100), ("old-2", 200)] {
            old.id = id.into();
            old.time = time;
            let dir = dirs::private_dir(Base::State, &format!("runs/{id}")).unwrap();
            old.write(&dir).unwrap();
        }
        for id in [real.as_str(), "old-1", "old-2"] {
            std::fs::write(runs.join(id).join("journal.json"), "{ not a journal").unwrap();
        }
        let ids: Vec<String> = list_runs().into_iter().map(|h| h.id).collect();
        assert_eq!(ids, [real.as_str(), "old-2", "old-1"]);
        assert_eq!(list_runs()[0].counts.added, 1);
        prune_runs(2);
        assert!(
            !runs.join("old-1").exists(),
            "the oldest run was not pruned"
        );
        let ids: Vec<String> = list_runs().into_iter().map(|h| h.id).collect();
        assert_eq!(ids, [real.as_str(), "old-2"]);
        // The journal is read for an undo only, and an unreadable one is said so.
        let e = find_run(None, &wd).unwrap_err();
        assert!(e.to_string().contains("journal cannot be read"), "{e}");
        // A run kept by an older nixcell (a journal, no head) is listed and gets a head.
        old.id = "legacy".into();
        old.time = 50;
        let dir = dirs::private_dir(Base::State, "runs/legacy").unwrap();
        dirs::write_atomic(&dir, "journal.json", &serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(list_runs().last().unwrap().id, "legacy");
        assert!(dir.join(HEAD).is_file());
        std::fs::write(dir.join("journal.json"), "{ not a journal").unwrap();
        assert_eq!(list_runs().last().unwrap().id, "legacy");
    }

    /// The host changed the workdir while the cell ran: a directory became a link to
    /// a directory outside, a file became a hard link to a file outside. Applying the
    /// cell's copy replaces both names and writes nothing outside.
    #[test]
    fn links_in_the_workdir_are_replaced_never_followed() {
        let (_env, t) = private_state();
        let layer = t.path().join("layer");
        let upper = layer.join("upper");
        std::fs::create_dir_all(upper.join("sub")).unwrap();
        std::fs::write(upper.join("sub/x"), "cell\n").unwrap();
        std::fs::write(upper.join("f"), "cell f\n").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("file"), "host\n").unwrap();
        let wd = t.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        std::os::unix::fs::symlink(&outside, wd.join("sub")).unwrap();
        std::fs::hard_link(outside.join("file"), wd.join("f")).unwrap();
        let target = own_target(&wd);
        let layer_fd: OwnedFd = File::open(&layer).unwrap().into();
        let r = apply(&layer_fd, &target);
        assert!(r.applied, "{r:?}");
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "host\n"
        );
        assert!(!outside.join("x").exists());
        assert!(std::fs::symlink_metadata(wd.join("sub")).unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(wd.join("sub/x")).unwrap(), "cell\n");
        assert_eq!(std::fs::read_to_string(wd.join("f")).unwrap(), "cell f\n");
        assert_ne!(
            std::fs::metadata(wd.join("f")).unwrap().ino(),
            std::fs::metadata(outside.join("file")).unwrap().ino()
        );
        let mut modified: Vec<_> = r.changes.modified.iter().map(|c| c.path.clone()).collect();
        modified.sort();
        assert_eq!(modified, ["f", "sub"]);
        // And undone: the link and the hard link are back.
        let j = find_run(r.run.as_deref(), &wd).unwrap();
        undo(&j, false).unwrap();
        assert_eq!(std::fs::read_link(wd.join("sub")).unwrap(), outside);
        assert_eq!(
            std::fs::metadata(wd.join("f")).unwrap().ino(),
            std::fs::metadata(outside.join("file")).unwrap().ino()
        );
    }
}
