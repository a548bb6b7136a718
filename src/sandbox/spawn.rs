//! The supervisor's side of starting a cell: re-execute our own binary as the init
//! stage with its end of the control socket on a fixed descriptor. Going through
//! execve(2) means the init stage is single-threaded from its first instruction,
//! whatever threads the supervisor runs (docs/ARCHITECTURE.md, process model).

use super::MOUNT_FD_BASE;
use super::proto::{CELL_CGROUP_FD, INIT_ARG, INIT_FD};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

/// A started init stage and the supervisor's end of its control socket.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub control: UnixStream,
}

/// Starts the init stage. With `capture`, its stdout and stderr are pipes (with
/// `pipe_stderr`, only stderr: the supervisor passes it on and keeps its end); `cell_cgroup`
/// (the command's `cgroup.procs`) is passed on as [`CELL_CGROUP_FD`]; `sources` (the
/// mount sources opened at plan time) on descriptors `MOUNT_FD_BASE + i`.
pub fn spawn_init(
    capture: bool,
    pipe_stderr: bool,
    sources: &[std::sync::Arc<OwnedFd>],
    cell_cgroup: Option<RawFd>,
) -> io::Result<Spawned> {
    spawn_with(
        Stdin::Inherit {
            capture,
            pipe_stderr,
        },
        sources,
        cell_cgroup,
    )
}

/// [`spawn_init`] with stdin, stdout and stderr on `terminal` (the slave of a pty
/// nixcell allocated for the cell, never the caller's own terminal).
pub fn spawn_init_on_terminal(
    terminal: &OwnedFd,
    sources: &[std::sync::Arc<OwnedFd>],
    cell_cgroup: Option<RawFd>,
) -> io::Result<Spawned> {
    spawn_with(Stdin::Terminal(terminal), sources, cell_cgroup)
}

/// The init stage's standard descriptors.
enum Stdin<'a> {
    /// The caller's stdin; stdout and stderr the caller's or pipes.
    Inherit { capture: bool, pipe_stderr: bool },
    /// All three on this terminal.
    Terminal(&'a OwnedFd),
}

fn spawn_with(
    stdio: Stdin<'_>,
    sources: &[std::sync::Arc<OwnedFd>],
    cell_cgroup: Option<RawFd>,
) -> io::Result<Spawned> {
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
        .kill_on_drop(true);
    match stdio {
        Stdin::Inherit {
            capture,
            pipe_stderr,
        } => {
            cmd.stdin(Stdio::inherit());
            if capture {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            } else if pipe_stderr {
                cmd.stderr(Stdio::piped());
            }
        }
        Stdin::Terminal(t) => {
            cmd.stdin(t.try_clone()?)
                .stdout(t.try_clone()?)
                .stderr(t.try_clone()?);
        }
    }
    // SAFETY: the closure runs between fork and exec and only calls dup2/fcntl/close,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Copies above the fixed numbers first, so that placing one cannot close
            // the other; dup2 leaves the placed descriptors open across exec.
            let mut moves = [(fd, INIT_FD), (cell_cgroup.unwrap_or(-1), CELL_CGROUP_FD)];
            for (from, _) in &mut moves {
                if *from >= 0 {
                    *from = libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 16);
                    if *from < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            for (from, to) in moves {
                if from >= 0 && libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
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
