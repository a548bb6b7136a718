//! The supervisor's side of starting a cell: re-execute our own binary as the init
//! stage with its end of the control socket on a fixed descriptor. Going through
//! execve(2) means the init stage is single-threaded from its first instruction,
//! whatever threads the supervisor runs (DESIGN.md, process model).

use super::proto::{INIT_ARG, INIT_FD};
use crate::spec::MOUNT_FD_BASE;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

/// A started init stage and the supervisor's end of its control socket.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub control: UnixStream,
}

/// Starts the init stage. With `capture`, its stdout and stderr are pipes. `sources`
/// (the mount sources opened at plan time) are passed on descriptors
/// `MOUNT_FD_BASE + i`.
pub fn spawn_init(capture: bool, sources: &[std::sync::Arc<OwnedFd>]) -> io::Result<Spawned> {
    if sources.len() > 200 {
        return Err(io::Error::other("more than 200 mounts"));
    }
    // Copies far above the target numbers, so that no dup2 below overwrites a source
    // not yet placed.
    let mut high = Vec::with_capacity(sources.len());
    for s in sources {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let fd = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 256) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        high.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("nixcell-init")
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::inherit())
        .kill_on_drop(true);
    if capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    // SAFETY: the closure runs between fork and exec and only calls dup2/fcntl, which
    // are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if fd == INIT_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, INIT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            for (i, src) in raw.iter().enumerate() {
                if libc::dup2(*src, MOUNT_FD_BASE + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    drop(high);
    Ok(Spawned {
        child,
        control: ours,
    })
}
