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
    let prepared = if ns::is_host_root() && spec.identity.host_uid != 0 {
        ns::leave_host_root(&spec.identity, spec)?
    } else {
        PreparedMounts(Vec::new())
    };
    let host_ids = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    ns::unshare_all()?;
    ns::write_id_maps(&spec.identity, host_ids)?;
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
