//! The supervisor's side of starting a cell: re-execute our own binary as the init
//! stage with its end of the control socket on a fixed descriptor. Going through
//! execve(2) means the init stage is single-threaded from its first instruction,
//! whatever threads the supervisor runs (docs/ARCHITECTURE.md, process model).

use super::MOUNT_FD_BASE;
use super::proto::{CELL_CGROUP_FD, INIT_ARG, INIT_FD, POOLED_ARG, Placement};
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
/// (the command's `cgroup.procs`) is passed on as [`CELL_CGROUP_FD`]; `stdio`, when
/// given, replaces the descriptors the init stage would inherit; `sources` (the
/// mount sources opened at plan time) on descriptors `MOUNT_FD_BASE + i`; `join`
/// (cgroup v1 `tasks` files, `RunCgroup::open_join`) each get "0" written by the
/// child before it executes: it starts in the run's cgroups.
pub fn spawn_init(
    capture: bool,
    pipe_stderr: bool,
    stdio: Option<&[OwnedFd; 3]>,
    sources: &[std::sync::Arc<OwnedFd>],
    cell_cgroup: Option<RawFd>,
    join: &[RawFd],
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
    let join = join.to_vec();
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("nixcell-init")
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::inherit())
        .kill_on_drop(true);
    // `stdio`: the caller's own descriptors, used where ours would be inherited.
    let given = |i: usize| -> io::Result<Option<Stdio>> {
        Ok(match stdio {
            Some(fds) => Some(Stdio::from(fds[i].try_clone()?)),
            None => None,
        })
    };
    if let Some(s) = given(0)? {
        cmd.stdin(s);
    }
    if capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        if let Some(s) = given(1)? {
            cmd.stdout(s);
        }
        if pipe_stderr {
            cmd.stderr(Stdio::piped());
        } else if let Some(s) = given(2)? {
            cmd.stderr(s);
        }
    }
    // SAFETY: the closure runs between fork and exec and only calls write/dup2/fcntl,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The child is single-threaded: its own thread is the whole process.
            for j in &join {
                if libc::write(*j, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
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

/// Starts an init stage ahead of its run (a warm pool): it waits, its standard
/// descriptors on /dev/null, for [`place`] and then its spec.
pub fn spawn_waiting() -> io::Result<Spawned> {
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("nixcell-init")
        .args([INIT_ARG, POOLED_ARG])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec only fcntl/dup2 (async-signal-safe), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let from = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 16);
            if from < 0 || libc::dup2(from, INIT_FD) < 0 {
                return Err(io::Error::last_os_error());
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

/// Gives a waiting init stage ([`spawn_waiting`]) the descriptors [`spawn_init`]
/// places: stdin, stdout, stderr, the command's `cgroup.procs`, the mount sources.
pub fn place(
    s: &Spawned,
    stdio: [RawFd; 3],
    sources: &[std::sync::Arc<OwnedFd>],
    cell_cgroup: Option<RawFd>,
) -> io::Result<()> {
    if sources.len() > 200 {
        return Err(io::Error::other("more than 200 mounts"));
    }
    let mut fds = stdio.to_vec();
    fds.extend(cell_cgroup);
    fds.extend(sources.iter().map(|f| f.as_raw_fd()));
    let p = Placement {
        cgroup: cell_cgroup.is_some(),
        sources: sources.len(),
    };
    super::proto::send_with_fds(std::os::fd::AsFd::as_fd(&s.control), &p, &fds)
}
