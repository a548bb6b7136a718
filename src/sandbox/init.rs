//! The init stage: the binary re-executed by the supervisor, single-threaded from its
//! first instruction. It reads the spec, leaves host root if it was started as root,
//! unshares the namespaces, maps its identity, and forks PID 1 of the new pid
//! namespace; then it waits for PID 1 and passes its status on.

use super::RunSpec;
use super::Stage;
use super::ns::{self, PreparedMounts};
use super::proto::{self, INIT_FD, Report};
use super::{At, StageError, StageResult, pid1};
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Entry of the init stage; never returns.
pub fn main() -> ! {
    // SAFETY: the supervisor placed our end of the control socket on INIT_FD.
    let sock = unsafe { BorrowedFd::borrow_raw(INIT_FD) };
    if std::env::args_os().nth(2).as_deref() == Some(std::ffi::OsStr::new(proto::POOLED_ARG))
        && place(sock).is_err()
    {
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(125) }
    }
    let spec: RunSpec = match proto::recv(sock) {
        Ok(Some(s)) => s,
        // SAFETY: _exit ends the process at once.
        _ => unsafe { libc::_exit(125) },
    };
    let code = match run(&spec, sock) {
        Ok(code) => code,
        Err(e) => {
            if e.stage != Stage::WaitPid1 {
                let _ = proto::send(sock, &Report::SetupFailed(e.failure()));
            }
            125
        }
    };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// A pooled init stage (started ahead of its run): receives the descriptors a fresh
/// one is started with and puts them where it would have found them
/// ([`proto::Placement`]). Nothing of a run exists before this.
fn place(sock: BorrowedFd<'_>) -> std::io::Result<()> {
    let Some((p, fds)) = proto::recv_with_fds::<proto::Placement>(sock)? else {
        return Err(std::io::Error::other("no placement"));
    };
    let mut targets = vec![0, 1, 2];
    if p.cgroup {
        targets.push(proto::CELL_CGROUP_FD);
    }
    targets.extend((0..p.sources as i32).map(|i| super::MOUNT_FD_BASE + i));
    if fds.len() != targets.len() || p.sources > 200 {
        return Err(std::io::Error::other(
            "descriptors do not match the placement",
        ));
    }
    // Copies far above every target first, so that no dup2 overwrites one not yet placed.
    let mut high = Vec::with_capacity(fds.len());
    for f in &fds {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let d = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 512) };
        if d < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        high.push(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(d) });
    }
    drop(fds);
    for (from, to) in high.iter().zip(targets) {
        // SAFETY: dup2 onto a number this process keeps for it (as a fresh init
        // stage finds it); the copy stays open across the forks that follow.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn run(spec: &RunSpec, sock: BorrowedFd<'_>) -> StageResult<i32> {
    let parent = nix::unistd::getppid().as_raw();
    if parent != spec.supervisor_pid {
        return Err(StageError::new(
            Stage::CheckParent,
            "getppid",
            format!("started by pid {parent}, expected {}", spec.supervisor_pid),
            Errno::ESRCH,
        ));
    }
    // Terminal signals go to the supervisor, which forwards them through PID 1.
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    // Service logs are host files, opened while the host is still in reach (and, when
    // started as root, before leaving root).
    let mut logs = Vec::with_capacity(spec.services.len());
    for svc in &spec.services {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&svc.log)
            .at(Stage::ServiceLogs, "open", svc.log.display())?;
        logs.push(std::os::fd::OwnedFd::from(f));
    }
    let joined = ns::join_all(&spec.joins)?;
    // A joined namespace belongs to another user namespace than the cell's: the
    // file systems that show it (mqueue, sysfs) are made now, by a process with the
    // capability over it.
    let joined_fs = super::ocimount::joined_fs(spec)?;
    let host_root = ns::is_host_root();
    // An engine's whole ranges are written by a process that stays root (root only).
    let mapper = match &spec.identity.ranges {
        Some(r) if host_root => Some(ns::spawn_mapper(
            r,
            !spec.security.container.groups.is_empty(),
        )?),
        _ => None,
    };
    let mut prepared = if host_root && spec.identity.host_uid != 0 {
        ns::leave_host_root(&spec.identity, spec)?
    } else {
        PreparedMounts::default()
    };
    prepared.joined_fs = joined_fs;
    let host_ids = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    ns::unshare_all_but(joined)?;
    match mapper {
        Some(m) => m.map()?,
        None => ns::write_id_maps(&spec.identity, host_ids)?,
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .at(Stage::ForkPid1, "open", "/dev/null")?;
    // SAFETY: this process is single-threaded (fresh exec, no threads started).
    match unsafe { fork() }.at(Stage::ForkPid1, "fork", "")? {
        ForkResult::Child => pid1::main(spec, sock, prepared, logs),
        ForkResult::Parent { child } => {
            drop(prepared);
            drop(logs);
            let _ = proto::send(
                sock,
                &Report::Ready {
                    pid1: child.as_raw(),
                },
            );
            // An OCI container's PID 1 outlives its creator: nothing to wait for here
            // (the caller waits for the pid it reports, PID 1).
            if spec.oci.is_some() {
                return Ok(0);
            }
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors so that captured output
                // reaches EOF as soon as the cell's processes are gone.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
            // From here PID 1 alone speaks for the cell: the control socket reaches
            // EOF as soon as PID 1 is gone.
            // SAFETY: nothing else in this process uses the descriptor any more.
            unsafe { libc::close(INIT_FD) };
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                    Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => return Err(StageError::new(Stage::WaitPid1, "waitpid", "", e)),
                }
            }
        }
    }
}
