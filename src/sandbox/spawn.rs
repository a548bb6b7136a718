//! The supervisor's side of starting a cell: re-execute our own binary as the init
//! stage with its end of the control socket on a fixed descriptor. Going through
//! execve(2) means the init stage is single-threaded from its first instruction,
//! whatever threads the supervisor runs (DESIGN.md, process model).

use super::proto::{CELL_CGROUP_FD, INIT_ARG, INIT_FD};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

/// A started init stage and the supervisor's end of its control socket.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub control: UnixStream,
}

/// Starts the init stage. With `capture`, its stdout and stderr are pipes; `cell_cgroup`
/// (the command's `cgroup.procs`) is passed on as [`CELL_CGROUP_FD`].
pub fn spawn_init(capture: bool, cell_cgroup: Option<RawFd>) -> io::Result<Spawned> {
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
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok(Spawned {
        child,
        control: ours,
    })
}
