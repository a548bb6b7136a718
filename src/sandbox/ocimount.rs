//! An OCI container's file system view as its `config.json` asks: an image root (the
//! bundle's `root.path`) below a copy-on-write layer, the `mounts` in order, the
//! spec's default devices, `linux.maskedPaths` and `linux.readonlyPaths`.
//!
//! The image is hostile content: every destination is resolved inside the container's
//! root (openat2 `RESOLVE_IN_ROOT`, no magic links), missing ones are created there,
//! and each mount is moved onto the descriptor so resolved (move_mount(2)), so that no
//! symbolic link of the image places a mount, or a directory made for one, outside
//! the root. Bind sources are host paths the engine chose, opened by the supervisor
//! like every other mount source. Writes never reach the image: it is the read-only
//! lower layer of an overlay whose upper layer is a capped tmpfs (started as root, the
//! lower layer is idmapped so that its owner reads as the cell, as a copy-on-write
//! workdir is).

use super::Stage;
use super::{At, RunSpec, StageError, StageResult, sys};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

/// What an OCI container's config.json asks of its file system view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OciFs {
    /// The root is an image directory (`spec.mounts[0]`, destination `/`), not a closure.
    pub image: Option<ImageRoot>,
    /// config.json `mounts`, in order.
    pub mounts: Vec<OciMount>,
    /// linux.maskedPaths: /dev/null over files, an empty read-only tmpfs over directories.
    pub masked: Vec<PathBuf>,
    /// linux.readonlyPaths: made read-only where they are.
    pub readonly: Vec<PathBuf>,
    /// linux.rootfsPropagation of the container's `/` (`propagation_flags`), set once
    /// the root is built.
    #[serde(default)]
    pub root_propagation: Option<String>,
}

/// The mount(2) flags of a linux.rootfsPropagation value (r-forms recursive).
pub fn propagation_flags(v: &str) -> Option<MsFlags> {
    let (rec, kind) = match v.strip_prefix('r') {
        Some(k) if !k.is_empty() => (MsFlags::MS_REC, k),
        _ => (MsFlags::empty(), v),
    };
    let kind = match kind {
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(kind | rec)
}

/// linux.rootfsPropagation on the built root (`/`, after pivot_root: nothing of the
/// host is below it, so a shared root's peers are in the cell only and a slave root
/// has no master left: it receives nothing, as a private one).
pub fn root_propagation(spec: &RunSpec) -> StageResult {
    let Some(v) = spec
        .oci_fs
        .as_ref()
        .and_then(|f| f.root_propagation.as_deref())
    else {
        return Ok(());
    };
    let flags = propagation_flags(v).ok_or_else(|| {
        StageError::new(
            Stage::SealRoot,
            "mount",
            format!("propagation {v}"),
            Errno::EINVAL,
        )
    })?;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).at(
        Stage::SealRoot,
        "mount",
        format!("/ ({v})"),
    )
}

/// The copy-on-write layer over an image root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRoot {
    /// `root.readonly`: the whole root is read-only once the mounts are in place.
    pub readonly: bool,
    pub size_bytes: u64,
    pub inodes: u64,
    /// The read-only lower layers, `spec.mounts[..layers]`, topmost first (more than
    /// one: the layers of an engine's overlayfs root).
    #[serde(default = "one")]
    pub layers: usize,
}

fn one() -> usize {
    1
}

/// One mount of config.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciMount {
    pub dest: PathBuf,
    pub kind: MountKind,
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// File system options (`key` or `key=value`), already checked against the type.
    pub data: Vec<String>,
    /// The source a kernel file system shows in mountinfo (config.json's `source`).
    #[serde(default)]
    pub source: String,
    /// `shared`/`rshared`: a peer group of its own, inside the cell (the tree is
    /// private first, so nothing propagates to or from the host).
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A host path of `spec.mounts[source]`; `recursive` for rbind.
    Bind {
        source: usize,
        recursive: bool,
    },
    Tmpfs,
    Proc,
    Sysfs,
    Devpts,
    Mqueue,
}

impl MountKind {
    /// The file system type of a kernel mount.
    pub fn fs_type(&self) -> Option<&'static str> {
        Some(match self {
            MountKind::Bind { .. } => return None,
            MountKind::Tmpfs => "tmpfs",
            MountKind::Proc => "proc",
            MountKind::Sysfs => "sysfs",
            MountKind::Devpts => "devpts",
            MountKind::Mqueue => "mqueue",
        })
    }
}

/// Paths the command may write below (for Landlock): the writable mounts of config.json.
/// A writable image root is writable as a whole (its copy-on-write layer).
pub fn writable_dests(spec: &RunSpec) -> Vec<PathBuf> {
    let root = spec
        .image_root()
        .filter(|i| !i.readonly)
        .map(|_| PathBuf::from("/"));
    root.into_iter()
        .chain(
            spec.oci_fs
                .iter()
                .flat_map(|f| &f.mounts)
                .filter(|m| !m.readonly && m.kind != MountKind::Proc && m.kind != MountKind::Sysfs)
                .map(|m| m.dest.clone()),
        )
        .collect()
}

/// What the root's builder (`rootfs.rs`) lends: the detached mount tree of source
/// `i` (recursive or not), the file systems made in joined namespaces (`joined_fs`),
/// and nixcell's own device and /proc lists.
pub struct Builder<'a> {
    pub tree: &'a dyn Fn(usize, bool) -> StageResult<OwnedFd>,
    pub joined_fs: &'a [OwnedFd],
    pub devices: &'a [&'a str],
    pub proc_masked: Vec<&'a str>,
    pub proc_read_only: &'a [&'a str],
}

const STAGE: Stage = Stage::OciMounts;
const NEW_ROOT: &str = "/.nixcell-root";
const LOWER: &str = "/.nixcell-image";
const LAYER: &str = "/.nixcell-image-layer";

/// An image root: built below the tmpfs root (the host still at /oldroot for the bind
/// sources), then made the root; the tmpfs root and the host below it are detached.
pub fn build_image(spec: &RunSpec, b: &Builder<'_>, img: &ImageRoot) -> StageResult {
    const S: Stage = Stage::ImageRoot;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(NEW_ROOT)
        .at(S, "mkdir", NEW_ROOT)?;
    let mut lowers = Vec::with_capacity(img.layers);
    for i in 0..img.layers {
        let dir = format!("{LOWER}-{i}");
        let tree = (b.tree)(i, false)?;
        sys::set_tree_propagation(tree.as_raw_fd(), libc::MS_PRIVATE).at(
            S,
            "mount_setattr(MS_PRIVATE)",
            &dir,
        )?;
        stage_lower(S, tree, &dir)?;
        lowers.push(dir);
    }
    stage_layer(S, LAYER, img.size_bytes, img.inodes)?;
    overlay(S, &lowers.join(":"), LAYER, Path::new(NEW_ROOT))?;
    for staged in lowers.iter().map(String::as_str).chain([LAYER]) {
        umount2(staged, MntFlags::MNT_DETACH).at(S, "umount2(MNT_DETACH)", staged)?;
    }
    let root = open_dir(Path::new(NEW_ROOT)).at(S, "open", NEW_ROOT)?;
    let null = Path::new("/oldroot/dev/null");
    apply(spec, b, root.as_fd(), null, true)?;
    // pivot_root(".", "."): the tmpfs root (and the host below it) is stacked over
    // the new root and detached at once (as runc does).
    nix::unistd::chdir(NEW_ROOT).at(S, "chdir", NEW_ROOT)?;
    nix::unistd::pivot_root(".", ".").at(S, "pivot_root", ". .")?;
    umount2(".", MntFlags::MNT_DETACH).at(S, "umount2(MNT_DETACH)", "the old root")?;
    nix::unistd::chdir("/").at(S, "chdir", "/")?;
    if img.readonly {
        sys::mount_setattr(None, Path::new("/"), false, sys::MOUNT_ATTR_RDONLY, None).at(
            Stage::SealRoot,
            "mount_setattr(RDONLY)",
            "/",
        )?;
    }
    Ok(())
}

/// The two halves of an overlay, staged: the tree `lower` read-only at `lower_dir`, a
/// capped tmpfs at `layer_dir` holding `upper` and `work`.
pub fn stage_layers(
    stage: Stage,
    lower: OwnedFd,
    lower_dir: &str,
    layer_dir: &str,
    size_bytes: u64,
    inodes: u64,
) -> StageResult {
    stage_lower(stage, lower, lower_dir)?;
    stage_layer(stage, layer_dir, size_bytes, inodes)
}

/// The tree `lower` read-only at `lower_dir`.
fn stage_lower(stage: Stage, lower: OwnedFd, lower_dir: &str) -> StageResult {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(lower_dir)
        .at(stage, "mkdir", lower_dir)?;
    sys::move_mount_fd(lower.as_raw_fd(), Path::new(lower_dir)).at(
        stage,
        "move_mount",
        lower_dir,
    )?;
    sys::mount_setattr(
        None,
        Path::new(lower_dir),
        false,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        None,
    )
    .at(stage, "mount_setattr(RDONLY)", lower_dir)
}

/// A capped tmpfs at `layer_dir` holding an overlay's `upper` and `work`.
fn stage_layer(stage: Stage, layer_dir: &str, size_bytes: u64, inodes: u64) -> StageResult {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(layer_dir)
        .at(stage, "mkdir", layer_dir)?;
    mount(
        Some("tmpfs"),
        layer_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode=0755,size={size_bytes},nr_inodes={inodes}").as_str()),
    )
    .at(stage, "mount(tmpfs)", layer_dir)?;
    for d in ["upper", "work"] {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(Path::new(layer_dir).join(d))
            .at(stage, "mkdir", d)?;
    }
    Ok(())
}

/// An overlay at `dest`: `lower` (one directory or several, `:`-separated) read-only below, `layer`'s `upper` and `work` above.
/// Only full copies, whiteouts and opaque markers are written to the upper layer (no
/// redirects, metacopy, index or xino); `userxattr`, as a user namespace needs.
pub fn overlay(stage: Stage, lower: &str, layer: &str, dest: &Path) -> StageResult {
    let data = format!(
        "lowerdir={lower},upperdir={layer}/upper,workdir={layer}/work,userxattr,\
         redirect_dir=nofollow,metacopy=off,index=off,xino=off"
    );
    mount(
        Some("overlay"),
        dest,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .at(stage, "mount(overlay)", dest.display())
}

/// config.json's mounts, masks and read-only paths in a closure root (nixcell's own
/// /proc, /dev and /tmp stay; the root tmpfs is sealed afterwards).
pub fn apply_closure(spec: &RunSpec, b: &Builder<'_>) -> StageResult {
    if spec.oci_fs.is_none() {
        return Ok(());
    }
    let root = open_dir(Path::new("/")).at(STAGE, "open", "/")?;
    apply(spec, b, root.as_fd(), Path::new("/oldroot/dev/null"), false)?;
    remove_bind_stage()
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    crate::fsat::openat2(
        libc::AT_FDCWD,
        p,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
}

fn apply(
    spec: &RunSpec,
    b: &Builder<'_>,
    root: BorrowedFd<'_>,
    null: &Path,
    image: bool,
) -> StageResult {
    let Some(fs) = &spec.oci_fs else {
        return Ok(());
    };
    let mut joined = b.joined_fs.iter();
    for m in &fs.mounts {
        let made = made_in_joined(spec, m).and_then(|_| joined.next());
        mount_one(spec, b, root, m, made)?;
    }
    if image {
        default_devices(root, b.devices)?;
        if spec.oci.as_ref().is_some_and(|o| o.terminal) {
            console(root)?;
        }
        if fs.mounts.iter().any(|m| m.kind == MountKind::Proc) {
            for p in &b.proc_masked {
                mask(root, Path::new(p), null)?;
            }
            for p in b.proc_read_only {
                read_only(root, Path::new(p))?;
            }
        }
    }
    for p in &fs.masked {
        mask(root, p, null)?;
    }
    for p in &fs.readonly {
        read_only(root, p)?;
    }
    Ok(())
}

/// openat2 below `root` as the container resolves the path (`RESOLVE_IN_ROOT`: `..`
/// and absolute links stop at the root), never through a magic link.
fn resolve(root: BorrowedFd<'_>, p: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    crate::fsat::openat2(
        root.as_raw_fd(),
        p,
        flags,
        0,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cname(n: &OsStr) -> StageResult<CString> {
    CString::new(n.as_bytes())
        .map_err(|_| StageError::new(STAGE, "mkdir", n.to_string_lossy(), Errno::EINVAL))
}

/// The mount point `dest` inside the root, made (directories, and a file last when
/// `file`) where it is missing; each step is resolved inside the root again. A link
/// of the image on the way to a missing target is followed as the container would
/// follow it: its target is made, inside the root.
fn mount_point(root: BorrowedFd<'_>, dest: &Path, file: bool) -> StageResult<OwnedFd> {
    let mut want = dest.to_path_buf();
    // As many links as path resolution follows (path_resolution(7)).
    for _ in 0..40 {
        if let Ok(fd) = resolve(root, &want, libc::O_PATH) {
            return Ok(fd);
        }
        match make_missing(root, &want, file)? {
            None => {
                return resolve(root, &want, libc::O_PATH).at(
                    STAGE,
                    "openat2(RESOLVE_IN_ROOT)",
                    dest.display(),
                );
            }
            Some(next) => want = next,
        }
    }
    Err(StageError::new(
        STAGE,
        "openat2(RESOLVE_IN_ROOT)",
        dest.display().to_string(),
        Errno::ELOOP,
    ))
}

/// Makes the missing parts of `want`; or, where a dangling link is on the way, the
/// path with the link replaced by its target (lexically, `..` stopping at the root).
fn make_missing(root: BorrowedFd<'_>, want: &Path, file: bool) -> StageResult<Option<PathBuf>> {
    let names: Vec<&OsStr> = want
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut at = PathBuf::from("/");
    for (i, n) in names.iter().enumerate() {
        let parent = resolve(root, &at, libc::O_PATH | libc::O_DIRECTORY).at(
            STAGE,
            "openat2(RESOLVE_IN_ROOT)",
            at.display(),
        )?;
        let here = at.join(n);
        if resolve(root, &here, libc::O_PATH).is_ok() {
            at = here;
            continue;
        }
        if let Ok(target) = crate::fsat::readlink_at(parent.as_fd(), n) {
            let mut next = at.join(target);
            for rest in &names[i + 1..] {
                next.push(rest);
            }
            return Ok(Some(lexical(&next)));
        }
        let c = cname(n)?;
        let last_file = file && i + 1 == names.len();
        // SAFETY: c is NUL-terminated; parent is a directory descriptor we own.
        let r = unsafe {
            if last_file {
                let fd = libc::openat(
                    parent.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            } else {
                libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755)
            }
        };
        if r < 0 {
            return Err(StageError::new(
                STAGE,
                if last_file {
                    "openat(O_CREAT)"
                } else {
                    "mkdirat"
                },
                here.display().to_string(),
                Errno::last(),
            ));
        }
        at = here;
    }
    Ok(None)
}

/// `p` with `.` dropped and `..` taken back, never above `/`.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn attrs(m: &OciMount) -> u64 {
    let mut a = 0;
    for (on, bit) in [
        (m.readonly, sys::MOUNT_ATTR_RDONLY),
        (m.nosuid, sys::MOUNT_ATTR_NOSUID),
        (m.nodev, sys::MOUNT_ATTR_NODEV),
        (m.noexec, sys::MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            a |= bit;
        }
    }
    a
}

/// Whether `m` is made before the cell's user namespace exists (`joined_fs`): an
/// mqueue in a joined ipc namespace, a sysfs in a joined network namespace.
fn made_in_joined(spec: &RunSpec, m: &OciMount) -> Option<super::JoinKind> {
    let kind = match m.kind {
        MountKind::Mqueue => super::JoinKind::Ipc,
        MountKind::Sysfs => super::JoinKind::Net,
        _ => return None,
    };
    spec.joins.iter().any(|j| j.kind == kind).then_some(kind)
}

/// The file system of each mqueue and sysfs mount of config.json whose namespace was
/// just joined (`init.rs`, before the cell's user namespace exists). An mqueue shows
/// the ipc namespace of its maker, a sysfs its network namespace, and each needs
/// CAP_SYS_ADMIN in the user namespace owning that namespace: a pod's is owned by
/// another user namespace than the cell's, in which the cell's PID 1 could not mount
/// it. Such a sysfs is read-only whatever is asked (the pod's devices are not the
/// container's to change). Mounting needs the capability over the mount namespace
/// too: rootless (root of an engine's user namespace, maybe still in the host's mount
/// namespace), a mount namespace of that user namespace is made first (the cell's own
/// is made from it).
pub fn joined_fs(spec: &RunSpec) -> StageResult<Vec<OwnedFd>> {
    let Some(fs) = &spec.oci_fs else {
        return Ok(Vec::new());
    };
    let wanted: Vec<_> = fs
        .mounts
        .iter()
        .filter_map(|m| made_in_joined(spec, m).map(|k| (m, k)))
        .collect();
    if !wanted.is_empty() && !super::ns::is_host_root() {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).at(
            Stage::JoinNamespaces,
            "unshare",
            "mount (for the file systems of the joined namespaces)",
        )?;
    }
    wanted
        .into_iter()
        .map(|(m, k)| {
            let fs_type = m.kind.fs_type().unwrap_or("?");
            let mut a = attrs(m);
            if m.kind == MountKind::Sysfs {
                a |= sys::MOUNT_ATTR_RDONLY;
            }
            new_fs(fs_type, &m.source, &m.data, a).at(
                Stage::JoinNamespaces,
                "fsmount",
                format!(
                    "{fs_type} at {} (of the joined {} namespace)",
                    m.dest.display(),
                    k.name()
                ),
            )
        })
        .collect()
}

/// Mounts `m` below `root`; `made` is its file system if made before (`joined_fs`).
fn mount_one(
    spec: &RunSpec,
    b: &Builder<'_>,
    root: BorrowedFd<'_>,
    m: &OciMount,
    made: Option<&OwnedFd>,
) -> StageResult {
    let d = m.dest.display();
    let tree = match (&m.kind, made) {
        (_, Some(fs)) => {
            let fs = fs
                .try_clone()
                .map_err(|e| StageError::new(STAGE, "dup", d.to_string(), errno(&e)))?;
            // Copied now, so that mountinfo lists it in config.json's order.
            fresh_copy(fs, true, false)?
        }
        (MountKind::Bind { source, recursive }, _) => {
            let tree = (b.tree)(*source, *recursive)?;
            sys::set_tree_propagation(tree.as_raw_fd(), libc::MS_PRIVATE).at(
                STAGE,
                "mount_setattr(MS_PRIVATE)",
                &d,
            )?;
            let tree = fresh_copy(tree, spec.mounts[*source].is_dir, *recursive)?;
            // Binds never carry setuid files or devices into the cell.
            let a = attrs(m) | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
            sys::mount_setattr(Some(tree.as_raw_fd()), Path::new(""), true, a, None).at(
                STAGE,
                "mount_setattr",
                &d,
            )?;
            tree
        }
        (kind, _) => new_fs(
            kind.fs_type().unwrap_or("tmpfs"),
            &m.source,
            &m.data,
            attrs(m),
        )
        .at(
            STAGE,
            "fsmount",
            format!("{} at {d}", kind.fs_type().unwrap_or("?")),
        )?,
    };
    let file = matches!(m.kind, MountKind::Bind { source, .. } if !spec.mounts[source].is_dir);
    let target = mount_point(root, &m.dest, file)?;
    sys::move_mount_onto_fd(tree.as_raw_fd(), target.as_raw_fd()).at(STAGE, "move_mount", &d)?;
    if m.shared {
        sys::set_tree_propagation(tree.as_raw_fd(), libc::MS_SHARED).at(
            STAGE,
            "mount_setattr(MS_SHARED)",
            &d,
        )?;
    }
    Ok(())
}

/// Where a bind's tree is staged to be copied (in the staging root, or a closure
/// root's tmpfs before it is sealed; removed once the mounts are made).
const BIND_STAGE: [&str; 2] = ["/.nixcell-bind-dir", "/.nixcell-bind-file"];

/// A copy of `tree` made now: a tree cloned while still host root (before the user
/// namespace existed) would show before the mounts made since in mountinfo, which
/// lists mounts by their ids, and config.json's mounts are made in order.
fn fresh_copy(tree: OwnedFd, is_dir: bool, recursive: bool) -> StageResult<OwnedFd> {
    let at = BIND_STAGE[usize::from(!is_dir)];
    let made = if is_dir {
        fs::DirBuilder::new().mode(0o700).create(at)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(at)
            .map(drop)
    };
    match made {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(StageError::new(STAGE, "mkdir", at, errno(&e)));
        }
        _ => {}
    }
    sys::move_mount_fd(tree.as_raw_fd(), Path::new(at)).at(STAGE, "move_mount", at)?;
    let mut flags = sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    let copy = sys::open_tree(Path::new(at), flags).at(STAGE, "open_tree", at)?;
    umount2(at, MntFlags::MNT_DETACH).at(STAGE, "umount2(MNT_DETACH)", at)?;
    Ok(copy)
}

/// The staging entries of [`fresh_copy`] go (a closure root keeps its tmpfs).
fn remove_bind_stage() -> StageResult {
    for (i, at) in BIND_STAGE.iter().enumerate() {
        let r = if i == 0 {
            fs::remove_dir(at)
        } else {
            fs::remove_file(at)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StageError::new(STAGE, "unlink", *at, errno(&e)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A new, detached file system (fsopen, fsconfig, fsmount) with mount attributes.
fn new_fs(fs_type: &str, source: &str, data: &[String], attrs: u64) -> nix::Result<OwnedFd> {
    let t = CString::new(fs_type).map_err(|_| Errno::EINVAL)?;
    // SAFETY: t is NUL-terminated; the kernel returns a new descriptor or -1.
    let fc = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), libc::FSOPEN_CLOEXEC) };
    if fc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor we own.
    let fc = unsafe { OwnedFd::from_raw_fd(fc as RawFd) };
    let source = (!source.is_empty()).then(|| format!("source={source}"));
    for opt in source.iter().chain(data) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        let k = CString::new(k).map_err(|_| Errno::EINVAL)?;
        let v = v
            .map(|v| CString::new(v).map_err(|_| Errno::EINVAL))
            .transpose()?;
        let (cmd, vp) = match &v {
            Some(v) => (libc::FSCONFIG_SET_STRING, v.as_ptr()),
            None => (libc::FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: k and v are NUL-terminated strings that outlive the call.
        if unsafe { libc::syscall(libc::SYS_fsconfig, fc.as_raw_fd(), cmd, k.as_ptr(), vp, 0) } < 0
        {
            return Err(Errno::last());
        }
    }
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    if unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fc.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            null,
            null,
            0,
        )
    } < 0
    {
        return Err(Errno::last());
    }
    // SAFETY: fsmount of our configured context; returns a new descriptor or -1.
    let mfd = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fc.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attrs,
        )
    };
    if mfd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(mfd as RawFd) })
}

/// The spec's default devices (null zero full random urandom tty, bound from the
/// host: a user namespace cannot make device nodes), and /dev/fd, stdin, stdout,
/// stderr, ptmx as links.
fn default_devices(root: BorrowedFd<'_>, devices: &[&str]) -> StageResult {
    const S: Stage = Stage::Dev;
    for d in devices {
        let dest = PathBuf::from(format!("/dev/{d}"));
        let target = mount_point(root, &dest, true)?;
        let host = PathBuf::from(format!("/oldroot/dev/{d}"));
        let tree = sys::open_tree(&host, sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC).at(
            S,
            "open_tree",
            host.display(),
        )?;
        sys::mount_setattr(
            Some(tree.as_raw_fd()),
            Path::new(""),
            false,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            None,
        )
        .at(S, "mount_setattr", dest.display())?;
        sys::move_mount_onto_fd(tree.as_raw_fd(), target.as_raw_fd()).at(
            S,
            "move_mount",
            dest.display(),
        )?;
    }
    let dev = resolve(root, Path::new("/dev"), libc::O_PATH | libc::O_DIRECTORY).at(
        S,
        "openat2(RESOLVE_IN_ROOT)",
        "/dev",
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        match crate::fsat::symlink_at(OsStr::new(to), dev.as_fd(), OsStr::new(link)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(StageError::new(S, "symlinkat", link, errno(&e))),
        }
    }
    Ok(())
}

/// /dev/console: a bind of the command's terminal (this process's stdin, the pty the
/// console socket got), found again below /oldroot by its name and proven to be the
/// same device, as the spec asks for a container with `process.terminal`.
fn console(root: BorrowedFd<'_>) -> StageResult {
    const S: Stage = Stage::Dev;
    // The host's proc, below the staging root. The terminal was opened in the
    // engine's mount namespace: its name is the one it has there, found again below
    // /oldroot (the device is compared below).
    let fd0 = "/oldroot/proc/self/fd/0";
    let name = std::fs::read_link(fd0).at(S, "readlink", fd0)?;
    let host = if name.starts_with("/oldroot/") {
        name
    } else {
        Path::new("/oldroot").join(name.strip_prefix("/").unwrap_or(&name))
    };
    // SAFETY: descriptor 0 is open (the terminal); fstat fills a plain struct.
    let st0 = crate::fsat::fstat(unsafe { BorrowedFd::borrow_raw(0) }).at(S, "fstat", "0")?;
    let tree = sys::open_tree(&host, sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC).at(
        S,
        "open_tree",
        host.display(),
    )?;
    let st = crate::fsat::fstat(tree.as_fd()).at(S, "fstat", host.display())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != st0.st_rdev {
        return Err(StageError::new(
            S,
            "fstat",
            format!("{}: not the terminal of the container", host.display()),
            Errno::ESTALE,
        ));
    }
    let target = mount_point(root, Path::new("/dev/console"), true)?;
    sys::move_mount_onto_fd(tree.as_raw_fd(), target.as_raw_fd()).at(
        S,
        "move_mount",
        "/dev/console",
    )
}

/// The path below the root, or None where it is not there.
fn existing(root: BorrowedFd<'_>, p: &Path) -> StageResult<Option<OwnedFd>> {
    match resolve(root, p, libc::O_PATH) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(StageError::new(
            Stage::OciMasks,
            "openat2",
            p.display().to_string(),
            errno(&e),
        )),
    }
}

/// /dev/null over a file, an empty read-only tmpfs over a directory; a path that is
/// not there is skipped.
fn mask(root: BorrowedFd<'_>, p: &Path, null: &Path) -> StageResult {
    const S: Stage = Stage::OciMasks;
    let Some(target) = existing(root, p)? else {
        return Ok(());
    };
    let st = crate::fsat::fstat(target.as_fd()).at(S, "fstat", p.display())?;
    let tree = if crate::fsat::is_dir(&st) {
        new_fs(
            "tmpfs",
            "tmpfs",
            &["mode=0555".into(), "size=4k".into(), "nr_inodes=1".into()],
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        )
        .at(S, "fsmount(tmpfs, ro)", p.display())?
    } else {
        sys::open_tree(null, sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC).at(
            S,
            "open_tree",
            null.display(),
        )?
    };
    sys::move_mount_onto_fd(tree.as_raw_fd(), target.as_raw_fd()).at(S, "move_mount", p.display())
}

/// A read-only copy of the tree at `p` over itself; a path that is not there is skipped.
fn read_only(root: BorrowedFd<'_>, p: &Path) -> StageResult {
    const S: Stage = Stage::OciMasks;
    let Some(target) = existing(root, p)? else {
        return Ok(());
    };
    let tree = sys::open_tree_fd(
        target.as_raw_fd(),
        sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
    )
    .at(S, "open_tree", p.display())?;
    sys::mount_setattr(
        Some(tree.as_raw_fd()),
        Path::new(""),
        true,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID,
        None,
    )
    .at(S, "mount_setattr(RDONLY)", p.display())?;
    sys::move_mount_onto_fd(tree.as_raw_fd(), target.as_raw_fd()).at(S, "move_mount", p.display())
}
