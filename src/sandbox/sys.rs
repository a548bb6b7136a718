//! Thin wrappers for the mount API syscalls that the `nix` crate does not cover
//! (open_tree(2), move_mount(2), mount_setattr(2)) and close_range(2).

use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` from <linux/mount.h>.
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// open_tree(2): a detached copy of the mount tree at `path` (with OPEN_TREE_CLONE).
pub fn open_tree(path: &Path, flags: u32) -> Result<OwnedFd, Errno> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated string; the kernel returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the syscall returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// open_tree(2) of the object a descriptor refers to (AT_EMPTY_PATH).
pub fn open_tree_fd(fd: RawFd, flags: u32) -> Result<OwnedFd, Errno> {
    let empty = c"";
    // SAFETY: empty is a valid C string; the kernel returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            empty.as_ptr(),
            flags | libc::AT_EMPTY_PATH as u32,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the syscall returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// move_mount(2) of a detached tree onto the object a descriptor refers to.
pub fn move_mount_onto_fd(fd: RawFd, target: RawFd) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: both paths are empty C strings; both descriptors are ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            empty.as_ptr(),
            target,
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// move_mount(2) of a detached tree (an fd from open_tree) onto `target`.
pub fn move_mount_fd(fd: RawFd, target: &Path) -> Result<(), Errno> {
    let t = cpath(target)?;
    let empty = c"";
    // SAFETY: both strings are valid C strings; fd is a mount fd we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// mount_setattr(2) on a path (or on `fd` with an empty path).
pub fn mount_setattr(
    fd: Option<RawFd>,
    path: &Path,
    recursive: bool,
    attr_set: u64,
    userns_fd: Option<RawFd>,
) -> Result<(), Errno> {
    let c = cpath(path)?;
    let mut flags = if recursive {
        libc::AT_RECURSIVE as u32
    } else {
        0
    };
    let dirfd = match fd {
        Some(fd) => {
            flags |= libc::AT_EMPTY_PATH as u32;
            fd
        }
        None => libc::AT_FDCWD,
    };
    let attr = MountAttr {
        attr_set,
        userns_fd: userns_fd.map(|f| f as u64).unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: attr is a properly laid out struct mount_attr and its size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// mount_setattr(2) of the tree on `fd` (AT_RECURSIVE): its propagation type becomes
/// `propagation` (MS_PRIVATE, MS_SHARED...). A tree cloned from a shared mount of the
/// host is a peer of it until it is made private: mounts made below it would appear on
/// the host, and the host's inside.
pub fn set_tree_propagation(fd: RawFd, propagation: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        propagation,
        ..Default::default()
    };
    let empty = c"";
    // SAFETY: attr is a properly laid out struct mount_attr and its size is passed; the
    // path is an empty C string with AT_EMPTY_PATH.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as u32,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Puts /dev/null on stdin, stdout and stderr (PID 1 once the cell's processes have
/// theirs: captured output then reaches EOF as soon as they are gone).
pub fn stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; null stays open until then.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
    }
}

/// Marks every descriptor from `first` up close-on-exec (close_range(2)).
pub fn cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; no memory involved.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}
