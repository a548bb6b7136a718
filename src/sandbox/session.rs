//! PID 1 of a session cell (`RunSpec::session`): once the services are ready it
//! starts no command of its own; it serves its holder's [`Request`]s, one fresh
//! process per exec, until the holder asks it to stop or goes away.
//!
//! Each exec is forked from PID 1 and goes through the same last steps as a run's
//! command (`exec::exec_in_session`): the cell's cgroup, a session of its own (so its
//! process group is its own), no capabilities, no_new_privs, rlimits, a Landlock
//! domain of its own (with scopes: it cannot signal another exec, the services or
//! PID 1), seccomp. When an exec's first process ends, its process group is killed.

use super::RunSpec;
use super::proto::{self, Report, Request};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// An exec's last steps in its child: its argv, whether its stdin is its terminal, its
/// four descriptors.
type ExecFn<'a> = dyn Fn(Vec<String>, bool, &[OwnedFd]) -> std::convert::Infallible + 'a;

/// Serves the holder; never returns. `fork` is PID 1's (the child the OOM killer's
/// first choice), `exec` the exec's last steps in the child (`exec::exec_in_session`),
/// `stop_services` PID 1's way of stopping the services.
pub(super) fn serve(
    spec: &RunSpec,
    sock: BorrowedFd<'_>,
    sfd: &SignalFd,
    fork: &dyn Fn() -> nix::Result<ForkResult>,
    exec: &ExecFn<'_>,
    stop_services: &dyn Fn(&[Pid]),
    services: Vec<Pid>,
) -> ! {
    super::layers::confine_pid1(spec, sock);
    super::sys::stdio_to_null();
    let _ = proto::send(sock, &Report::SessionReady);
    let mut services: Vec<Option<Pid>> = services.into_iter().map(Some).collect();
    // Exec id by the pid of its first process (its process group).
    let mut execs: HashMap<Pid, u64> = HashMap::new();
    loop {
        let mut fds = [
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sock, PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let sock_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        // Signals to PID 1 are not passed on: there is no command of the cell.
        while let Ok(Some(_)) = sfd.read_signal() {}
        if sock_ready {
            match proto::recv_with_fds::<Request>(sock) {
                Ok(Some((Request::Exec { id, argv, terminal }, io)))
                    if io.len() == 4 && !argv.is_empty() =>
                {
                    match fork() {
                        Ok(ForkResult::Child) => match exec(argv, terminal, &io) {},
                        Ok(ForkResult::Parent { child }) => {
                            execs.insert(child, id);
                        }
                        Err(_) => {
                            let _ = proto::send(
                                sock,
                                &Report::ExecEnded {
                                    id,
                                    code: Some(125),
                                    signal: None,
                                },
                            );
                        }
                    }
                }
                Ok(Some((Request::Signal { id, signal }, _))) => {
                    if let (Some((pid, _)), Ok(sig)) = (
                        execs.iter().find(|(_, i)| **i == id),
                        Signal::try_from(signal),
                    ) {
                        // The exec's first process leads its process group.
                        let _ = kill(Pid::from_raw(-pid.as_raw()), sig);
                        let _ = kill(*pid, sig);
                    }
                }
                Ok(Some((Request::Stop, _))) => break,
                // A malformed request ends the cell: the holder is ours and never
                // sends one.
                Ok(Some(_)) | Ok(None) | Err(_) => {
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    // SAFETY: _exit ends the process at once; the kernel kills the namespace.
                    unsafe { libc::_exit(137) }
                }
            }
        }
        reap(sock, &mut execs, &mut services);
    }
    let alive: Vec<Pid> = services.into_iter().flatten().collect();
    stop_services(&alive);
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(None::<Pid>, None).is_ok() {}
    let _ = proto::send(
        sock,
        &Report::Exited {
            code: Some(0),
            signal: None,
        },
    );
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(0) }
}

/// Reaps what ended: an exec's first process (its process group is killed, its end
/// reported), a service (reported), or an orphan.
fn reap(sock: BorrowedFd<'_>, execs: &mut HashMap<Pid, u64>, services: &mut [Option<Pid>]) {
    loop {
        let st = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(st) => st,
        };
        let (code, signal) = match st {
            WaitStatus::Exited(_, c) => (Some(c), None),
            WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
            _ => continue,
        };
        let Some(pid) = st.pid() else { continue };
        if let Some(id) = execs.remove(&pid) {
            // What the exec left behind in its process group dies with it.
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = proto::send(sock, &Report::ExecEnded { id, code, signal });
        } else if let Some(index) = services.iter().position(|p| *p == Some(pid)) {
            services[index] = None;
            let _ = proto::send(
                sock,
                &Report::ServiceExited {
                    index,
                    code,
                    signal,
                },
            );
        }
    }
}
