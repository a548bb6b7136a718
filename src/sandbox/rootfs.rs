//! The cell's root file system: a fresh tmpfs holding exactly the closure (read-only
//! binds), a new /proc, a minimal /dev, a private /tmp, the workdir and user binds.
//!
//! Order: the tmpfs becomes the root first (pivot_root(2) with the host root kept at
//! /oldroot, as bubblewrap does), so that every bind source is reached through
//! /oldroot and no host path is hidden by our own mounts; /oldroot is detached at the
//! end and the root tmpfs made read-only.

use super::Stage;
use super::ns::PreparedMounts;
use super::proto::{self, Report};
use super::{At, StageError, StageResult, sys};
use super::{EntryKind, RunSpec, WorkLayer};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

const OLD_ROOT: &str = "/oldroot";
/// Device nodes bound from the host into the cell's /dev.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn host(p: &Path) -> PathBuf {
    let rel = p.strip_prefix("/").unwrap_or(p);
    Path::new(OLD_ROOT).join(rel)
}

fn mkdir_p(stage: Stage, p: &Path) -> StageResult {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .at(stage, "mkdir", p.display())
}

fn touch(stage: Stage, p: &Path) -> StageResult {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map(drop)
        .at(stage, "open(O_CREAT)", p.display())
}

fn tmpfs(stage: Stage, target: &str, flags: MsFlags, data: &str) -> StageResult {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data)).at(stage, "mount(tmpfs)", target)
}

/// Builds the whole root and leaves the process in it (cwd `/`).
pub fn build(spec: &RunSpec, prepared: &PreparedMounts, sock: BorrowedFd<'_>) -> StageResult {
    build_root(spec, prepared, sock)?;
    super::ocimount::root_propagation(spec)
}

fn build_root(spec: &RunSpec, prepared: &PreparedMounts, sock: BorrowedFd<'_>) -> StageResult {
    make_mounts_private()?;
    enter_tmpfs_root()?;
    let tree = |i: usize, recursive: bool| source_tree(spec, prepared, i, recursive);
    let oci = super::ocimount::Builder {
        tree: &tree,
        joined_fs: &prepared.joined_fs,
        devices: DEVICES,
        proc_masked: PROC_MASKED_FILES
            .iter()
            .chain(PROC_MASKED_DIRS)
            .copied()
            .collect(),
        proc_read_only: PROC_READ_ONLY,
    };
    if let Some(img) = spec.image_root() {
        return super::ocimount::build_image(spec, &oci, img);
    }
    bind_store(spec)?;
    mount_proc()?;
    mount_dev()?;
    mount_tmp(spec.tmp_size_bytes, spec.tmp_inodes)?;
    bind_user_mounts(spec, prepared, sock)?;
    write_etc(spec)?;
    make_symlinks(spec)?;
    // After nixcell's own writes: none of them may go through a mount of config.json.
    super::ocimount::apply_closure(spec, &oci)?;
    detach_old_root()?;
    seal_root()
}

/// No mount event of ours may propagate back to the host (mount_namespaces(7)).
fn make_mounts_private() -> StageResult {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .at(Stage::MountPrivate, "mount", "/ MS_REC|MS_PRIVATE")
}

fn enter_tmpfs_root() -> StageResult {
    const STAGE: Stage = Stage::TmpfsRoot;
    tmpfs(
        STAGE,
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755,size=8m",
    )?;
    fs::create_dir("/tmp/oldroot").at(STAGE, "mkdir", "/tmp/oldroot")?;
    nix::unistd::chdir("/tmp").at(STAGE, "chdir", "/tmp")?;
    nix::unistd::pivot_root(".", "oldroot").at(STAGE, "pivot_root", ". oldroot")?;
    nix::unistd::chdir("/").at(STAGE, "chdir", "/")
}

/// One read-only bind per store path of the closure, on a store tmpfs of its own so
/// that a single recursive mount_setattr(2) makes all of them read-only at once, and
/// nothing new can be created in /nix/store.
fn bind_store(spec: &RunSpec) -> StageResult {
    const STAGE: Stage = Stage::BindStore;
    let store = &spec.store_dir;
    mkdir_p(STAGE, store)?;
    let store_s = store.to_string_lossy();
    tmpfs(
        STAGE,
        &store_s,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755,size=1m",
    )?;
    for e in &spec.store_paths {
        let target = &e.path;
        match &e.kind {
            EntryKind::Symlink(to) => {
                symlink(to, target).at(STAGE, "symlink", target.display())?;
                continue;
            }
            EntryKind::Dir => fs::create_dir(target).at(STAGE, "mkdir", target.display())?,
            EntryKind::File => touch(STAGE, target)?,
        }
        mount(
            Some(&host(target)),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .at(STAGE, "mount(MS_BIND)", target.display())?;
    }
    sys::mount_setattr(
        None,
        store,
        true,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        None,
    )
    .at(
        STAGE,
        "mount_setattr(AT_RECURSIVE, RDONLY)",
        store.display(),
    )
}

/// Files of /proc that show the host (kernel memory, keys, timers, the scheduler, the
/// boot command line, the boot id): /dev/null is bound over them.
pub const PROC_MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/cmdline",
    "/proc/sys/kernel/random/boot_id",
];
/// Directories of /proc about the host's hardware: an empty read-only tmpfs over each.
pub const PROC_MASKED_DIRS: &[&str] =
    &["/proc/acpi", "/proc/asound", "/proc/scsi", "/proc/firmware"];
/// Parts of /proc that change the kernel when written: read-only.
pub const PROC_READ_ONLY: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// A proc of the cell's own pid namespace; mounted by PID 1 of that namespace, with
/// what shows or changes the host masked or made read-only (the paths Docker masks,
/// plus the boot command line and boot id). Paths this kernel lacks are skipped; any
/// other failure fails the set-up.
fn mount_proc() -> StageResult {
    const STAGE: Stage = Stage::Proc;
    const FLAGS: MsFlags = MsFlags::MS_NOSUID
        .union(MsFlags::MS_NODEV)
        .union(MsFlags::MS_NOEXEC);
    mkdir_p(STAGE, Path::new("/proc"))?;
    mount(Some("proc"), "/proc", Some("proc"), FLAGS, None::<&str>).at(
        STAGE,
        "mount(proc)",
        "/proc",
    )?;
    let null = host(Path::new("/dev/null"));
    for f in PROC_MASKED_FILES {
        if fs::symlink_metadata(f).is_err() {
            continue;
        }
        mount(
            Some(&null),
            *f,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .at(STAGE, "mount(MS_BIND /dev/null)", f)?;
    }
    for d in PROC_MASKED_DIRS {
        if !Path::new(d).is_dir() {
            continue;
        }
        mount(
            Some("tmpfs"),
            *d,
            Some("tmpfs"),
            FLAGS | MsFlags::MS_RDONLY,
            Some("mode=0555,size=4k,nr_inodes=1"),
        )
        .at(STAGE, "mount(tmpfs, ro)", d)?;
    }
    for p in PROC_READ_ONLY {
        if fs::symlink_metadata(p).is_err() {
            continue;
        }
        mount(
            Some(*p),
            *p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .at(STAGE, "mount(MS_BIND)", p)?;
        // Recursive: the boot id masked below /proc/sys becomes read-only as well
        // (and stays a readable /dev/null: no NODEV here, proc has no devices).
        sys::mount_setattr(
            None,
            Path::new(p),
            true,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            None,
        )
        .at(STAGE, "mount_setattr(AT_RECURSIVE, RDONLY)", p)?;
    }
    Ok(())
}

fn mount_dev() -> StageResult {
    const STAGE: Stage = Stage::Dev;
    mkdir_p(STAGE, Path::new("/dev"))?;
    tmpfs(
        STAGE,
        "/dev",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for d in DEVICES {
        let target = PathBuf::from(format!("/dev/{d}"));
        touch(STAGE, &target)?;
        mount(
            Some(&host(&target)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .at(STAGE, "mount(MS_BIND)", target.display())?;
        sys::mount_setattr(
            None,
            &target,
            false,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            None,
        )
        .at(STAGE, "mount_setattr", target.display())?;
    }
    mkdir_p(STAGE, Path::new("/dev/pts"))?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )
    .at(STAGE, "mount(devpts)", "/dev/pts")?;
    for (link, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, link).at(STAGE, "symlink", link)?;
    }
    sys::mount_setattr(None, Path::new("/dev"), false, sys::MOUNT_ATTR_RDONLY, None).at(
        STAGE,
        "mount_setattr(RDONLY)",
        "/dev",
    )
}

fn mount_tmp(size: u64, inodes: u64) -> StageResult {
    mkdir_p(Stage::Tmp, Path::new("/tmp"))?;
    tmpfs(
        Stage::Tmp,
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=1777,size={size},nr_inodes={inodes}"),
    )
}

/// The detached mount tree of source `i`: cloned while root (root mode), or found
/// again by its real path in this mount namespace and proven to be the object the
/// supervisor opened (same device and inode) before it is cloned (rootless: a tree of
/// the host's namespace cannot be cloned from here, a copy of it can).
fn source_tree(
    spec: &RunSpec,
    prepared: &PreparedMounts,
    i: usize,
    recursive: bool,
) -> StageResult<OwnedFd> {
    const STAGE: Stage = Stage::BindUser;
    let m = &spec.mounts[i];
    if let Some(fd) = prepared.trees.get(i) {
        return fd.try_clone().map_err(|e| {
            StageError::new(STAGE, "dup", m.source.display().to_string(), io_errno(&e))
        });
    }
    let fd = crate::fsat::openat2(
        libc::AT_FDCWD,
        &host(&m.source),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
    .at(STAGE, "openat2", m.source.display())?;
    let st = crate::fsat::fstat(fd.as_fd()).at(STAGE, "fstat", m.source.display())?;
    if (st.st_dev, st.st_ino) != (m.dev, m.ino) {
        return Err(StageError::new(
            STAGE,
            "fstat",
            format!(
                "{}: no longer the directory nixcell opened",
                m.source.display()
            ),
            Errno::ESTALE,
        ));
    }
    let mut flags = sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    sys::open_tree_fd(fd.as_raw_fd(), flags).at(STAGE, "open_tree", m.source.display())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The workdir and `--bind`/`--ro-bind` mounts, each from the descriptor its source
/// was opened on; a copy-on-write workdir becomes an overlay.
fn bind_user_mounts(
    spec: &RunSpec,
    prepared: &PreparedMounts,
    sock: BorrowedFd<'_>,
) -> StageResult {
    const STAGE: Stage = Stage::BindUser;
    // An OCI container's binds are its config.json's mounts, made in their order.
    if spec.oci_fs.is_some() {
        return Ok(());
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        if let Some(parent) = m.dest.parent() {
            mkdir_p(STAGE, parent)?;
        }
        if m.is_dir {
            mkdir_p(STAGE, &m.dest)?;
        } else {
            touch(STAGE, &m.dest)?;
        }
        if i == 0
            && let Some(work) = &spec.work
        {
            let tree = source_tree(spec, prepared, i, false)?;
            overlay_workdir(&m.dest, tree, work, sock)?;
            continue;
        }
        let tree = source_tree(spec, prepared, i, true)?;
        sys::move_mount_fd(tree.as_raw_fd(), &m.dest).at(STAGE, "move_mount", m.dest.display())?;
        let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        if !m.writable {
            attrs |= sys::MOUNT_ATTR_RDONLY;
        }
        sys::mount_setattr(None, &m.dest, true, attrs, None).at(
            STAGE,
            "mount_setattr",
            m.dest.display(),
        )?;
    }
    Ok(())
}

const LOWER: &str = "/.nixcell-lower";
const LAYER: &str = "/.nixcell-layer";

/// /work as an overlay: the workdir read-only below, the cell's changes in a capped
/// tmpfs above, whose descriptor goes to the supervisor (it reads the changes after
/// the cell is gone). Only full copies, whiteouts and opaque markers are written to
/// the upper layer (no redirects, metacopy, index or xino). The staging mounts are
/// detached once the overlay holds them, so the cell sees neither them nor the
/// workdir's host path. Protected entries become read-only binds over the overlay.
fn overlay_workdir(
    dest: &Path,
    lower: OwnedFd,
    work: &WorkLayer,
    sock: BorrowedFd<'_>,
) -> StageResult {
    const STAGE: Stage = Stage::WorkdirOverlay;
    super::ocimount::stage_layers(STAGE, lower, LOWER, LAYER, work.size_bytes, work.inodes)?;
    let layer = fs::File::open(LAYER).at(STAGE, "open", LAYER)?;
    proto::send_with_fd(sock, &Report::WorkLayer, layer.as_raw_fd()).at(
        STAGE,
        "sendmsg(SCM_RIGHTS)",
        LAYER,
    )?;
    drop(layer);
    super::ocimount::overlay(STAGE, LOWER, LAYER, dest)?;
    for staged in [LOWER, LAYER] {
        umount2(staged, MntFlags::MNT_DETACH).at(STAGE, "umount2(MNT_DETACH)", staged)?;
        fs::remove_dir(staged).at(STAGE, "rmdir", staged)?;
    }
    protect_entries(dest, &work.protect)
}

/// Read-only binds over the protected entries that exist (a directory or a file, not
/// a symlink), resolved below /work without following links and mounted by descriptor.
fn protect_entries(dest: &Path, protect: &[PathBuf]) -> StageResult {
    const STAGE: Stage = Stage::WorkdirProtect;
    if protect.is_empty() {
        return Ok(());
    }
    let top = crate::fsat::openat2(
        libc::AT_FDCWD,
        dest,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .at(STAGE, "openat2", dest.display())?;
    for p in protect {
        let fd = match crate::fsat::open_beneath(top.as_fd(), p, libc::O_PATH) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV)
                ) =>
            {
                continue;
            }
            Err(e) => {
                return Err(StageError::new(
                    STAGE,
                    "openat2",
                    p.display().to_string(),
                    io_errno(&e),
                ));
            }
        };
        let st = crate::fsat::fstat(fd.as_fd()).at(STAGE, "fstat", p.display())?;
        if !(crate::fsat::is_dir(&st) || crate::fsat::is_reg(&st)) {
            continue;
        }
        let tree = sys::open_tree_fd(
            fd.as_raw_fd(),
            sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
        )
        .at(STAGE, "open_tree", p.display())?;
        sys::mount_setattr(
            Some(tree.as_raw_fd()),
            Path::new(""),
            true,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            None,
        )
        .at(STAGE, "mount_setattr(RDONLY)", p.display())?;
        sys::move_mount_onto_fd(tree.as_raw_fd(), fd.as_raw_fd()).at(
            STAGE,
            "move_mount",
            p.display(),
        )?;
    }
    Ok(())
}

/// A minimal /etc: the mapped user and group, localhost; no resolv.conf.
fn write_etc(spec: &RunSpec) -> StageResult {
    const STAGE: Stage = Stage::Etc;
    let id = &spec.identity;
    mkdir_p(STAGE, Path::new("/etc"))?;
    let files = [
        (
            "/etc/passwd",
            format!(
                "{u}:x:{uid}:{gid}:nixcell:{home}:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
                u = id.user_name,
                uid = id.uid,
                gid = id.gid,
                home = id.home.display()
            ),
        ),
        (
            "/etc/group",
            format!(
                "{u}:x:{gid}:\nnogroup:x:65534:\n",
                u = id.user_name,
                gid = id.gid
            ),
        ),
        (
            "/etc/hosts",
            format!(
                "127.0.0.1\tlocalhost {h}\n::1\tlocalhost {h}\n",
                h = spec.hostname
            ),
        ),
        ("/etc/hostname", format!("{}\n", spec.hostname)),
    ];
    for (path, body) in files {
        fs::write(path, body).at(STAGE, "write", path)?;
    }
    Ok(())
}

fn make_symlinks(spec: &RunSpec) -> StageResult {
    const STAGE: Stage = Stage::Symlinks;
    for l in &spec.symlinks {
        if let Some(parent) = l.link.parent() {
            mkdir_p(STAGE, parent)?;
        }
        symlink(&l.target, &l.link).at(STAGE, "symlink", l.link.display())?;
    }
    Ok(())
}

fn detach_old_root() -> StageResult {
    const STAGE: Stage = Stage::DetachOldroot;
    umount2(OLD_ROOT, MntFlags::MNT_DETACH).at(STAGE, "umount2(MNT_DETACH)", OLD_ROOT)?;
    fs::remove_dir(OLD_ROOT).at(STAGE, "rmdir", OLD_ROOT)
}

/// The root tmpfs itself becomes read-only: no new top-level entries, no writes to /etc.
fn seal_root() -> StageResult {
    sys::mount_setattr(
        None,
        Path::new("/"),
        false,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        None,
    )
    .at(Stage::SealRoot, "mount_setattr(RDONLY)", "/")
}
