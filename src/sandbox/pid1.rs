//! PID 1 of the cell: builds the root, starts the command, then reaps every process
//! and forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the command. When the
//! command ends, everything it left behind is killed; when the supervisor's end of
//! the control socket closes (it died), the whole cell is killed.

use super::RunSpec;
use super::Stage;
use super::ns::{self, PreparedMounts};
use super::proto::{self, Report};
use super::{StageError, StageResult, caps, exec, rootfs};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// Signals PID 1 passes on to the command.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

extern "C" fn note_signal(_: libc::c_int) {}

/// PID 1's `/proc/self/oom_score_adj` and the value it inherited. The command and the
/// services are forked with 1000, the OOM killer's first choice, and PID 1 goes back
/// to its own value at once: whatever runs out of memory (the host when there is no
/// cgroup), the cell's own processes go first and PID 1 lives to report it. Raising
/// the value needs no privilege, nor does going back down to the value inherited.
struct OomScore {
    file: std::fs::File,
    own: Vec<u8>,
}

fn open_oom_score() -> StageResult<OomScore> {
    const P: &str = "/proc/self/oom_score_adj";
    // Leaving root (or entering the user namespace) may have made us undumpable,
    // which gives /proc/self to root; nothing else runs in the cell yet.
    nix::sys::prctl::set_dumpable(true)
        .map_err(|e| StageError::new(Stage::Pid1, "prctl", "PR_SET_DUMPABLE 1", e))?;
    let err = |e: std::io::Error| {
        StageError::new(
            Stage::Pid1,
            "open",
            P,
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    };
    let opened = std::fs::read(P).and_then(|own| {
        let file = std::fs::OpenOptions::new().write(true).open(P)?;
        Ok(OomScore { file, own })
    });
    // Undumpable again until the cell's own /proc is up (PID 1 ends undumpable).
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| StageError::new(Stage::Pid1, "prctl", "PR_SET_DUMPABLE 0", e))?;
    opened.map_err(err)
}

impl OomScore {
    fn set(&self, v: &[u8]) -> nix::Result<()> {
        // SAFETY: one write of a small buffer to a descriptor we own.
        let n = unsafe { libc::write(self.file.as_raw_fd(), v.as_ptr().cast(), v.len()) };
        if n < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(())
        }
    }

    /// fork(2), the child with oom_score_adj 1000. The child inherits the descriptor;
    /// the command's last steps make it close-on-exec with the rest.
    fn fork(&self) -> nix::Result<ForkResult> {
        self.fork_with(b"1000")
    }

    /// fork(2), the child with oom_score_adj `v`.
    fn fork_with(&self, v: &[u8]) -> nix::Result<ForkResult> {
        self.set(v)?;
        // SAFETY: PID 1 is single-threaded; the child goes straight to exec_*.
        let r = unsafe { fork() };
        if let Ok(ForkResult::Parent { .. }) | Err(_) = r {
            // Back to a value at or above the inherited minimum: cannot be refused.
            let _ = self.set(&self.own);
        }
        r
    }
}

fn setup(spec: &RunSpec, prepared: &PreparedMounts, sock: BorrowedFd<'_>) -> StageResult {
    // A joined namespace is the pod's: its host name and loopback are the pod's.
    let joined = |k: super::JoinKind| spec.joins.iter().any(|j| j.kind == k);
    if !joined(super::JoinKind::Uts) {
        ns::set_hostname(&spec.hostname)?;
    }
    if !joined(super::JoinKind::Net) {
        ns::loopback_up()?;
    }
    super::ociproc::write_sysctls(&spec.security.container.sysctl)?;
    rootfs::build(spec, prepared, sock)?;
    // The mount sources the supervisor passed are mounted (or were cloned): close them.
    for i in 0..spec.mounts.len() {
        // SAFETY: these descriptors were placed for us and nothing else uses them.
        unsafe { libc::close(super::MOUNT_FD_BASE + i as i32) };
    }
    Ok(())
}

/// The command's oom_score_adj: 1000, or an OCI container's `process.oomScoreAdj`
/// (tried first: a value below what PID 1 inherited needs a privilege the cell lacks).
fn command_oom_score(spec: &RunSpec, oom: &OomScore, sock: BorrowedFd<'_>) -> Vec<u8> {
    let Some(v) = spec.security.container.oom_score_adj else {
        return b"1000".to_vec();
    };
    let v = v.to_string().into_bytes();
    if let Err(e) = oom.set(&v) {
        fail(
            sock,
            super::StageError::new(
                Stage::ForkCommand,
                "write",
                format!(
                    "/proc/self/oom_score_adj {} (process.oomScoreAdj; at least the runtime's own {})",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(&oom.own).trim()
                ),
                e,
            ),
        );
    }
    let _ = oom.set(&oom.own);
    v
}

fn fail(sock: BorrowedFd<'_>, e: super::StageError) -> ! {
    let _ = proto::send(sock, &Report::SetupFailed(e.failure()));
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(125) }
}

/// Every capability dropped, no_new_privs set (PID 1 of the cell).
fn drop_privileges(sock: BorrowedFd<'_>) {
    if let Err(e) = caps::drop_all() {
        fail(sock, e);
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        fail(
            sock,
            super::StageError::new(Stage::Pid1, "prctl", "PR_SET_NO_NEW_PRIVS", e),
        );
    }
}

/// Entry of PID 1; never returns.
pub fn main(
    spec: &RunSpec,
    sock: BorrowedFd<'_>,
    prepared: PreparedMounts,
    logs: Vec<OwnedFd>,
) -> ! {
    // The init stage (our parent) is single-threaded: if it dies, so do we. An OCI
    // container's init stage leaves at once: its PID 1 is the caller's to wait for.
    if spec.oci.is_none() {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    }
    // PID 1's own oom_score_adj, opened before the new root is built: a container's
    // config.json need not mount /proc (the permission is checked at open only).
    let oom = match open_oom_score() {
        Ok(o) => o,
        Err(e) => fail(sock, e),
    };
    let built = setup(spec, &prepared, sock);
    drop(prepared);
    if let Err(e) = built {
        fail(sock, e);
    }
    // From here PID 1 keeps no privilege and cannot be ptraced or read through
    // /proc/1/mem by the command (same uid): done before any service or the command
    // exists, so there is no moment in which they could race it. An OCI container's
    // command sets the capabilities its config.json asks from PID 1's full set in
    // the cell's user namespace: PID 1 drops them once it has forked it, and the
    // command waits for that before it goes on.
    if spec.oci.is_none() {
        drop_privileges(sock);
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        fail(
            sock,
            super::StageError::new(Stage::Pid1, "prctl", "PR_SET_DUMPABLE 0", e),
        );
    }

    // A pid namespace's init only receives signals it has a handler for; the handler
    // is never run because the signals stay blocked and are read from a signalfd.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let handler = SigAction::new(
        SigHandler::Handler(note_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in FORWARDED {
        mask.add(*s);
        // SAFETY: the handler does nothing and is async-signal-safe.
        let _ = unsafe { sigaction(*s, &handler) };
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        fail(
            sock,
            super::StageError::new(Stage::Signals, "sigprocmask", "block", e),
        );
    }
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => fail(
            sock,
            super::StageError::new(Stage::Signals, "signalfd", "", e),
        ),
    };

    // The forwarder first: a service or the command may reach the proxy at once.
    if let Some(net) = &spec.net
        && let Err(e) = super::forward::start(net)
    {
        fail(sock, e)
    }
    let services = match start_services(spec, &logs, &oom) {
        Ok(pids) => pids,
        Err(e) => {
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            fail(sock, e)
        }
    };
    drop(logs);
    if spec.session {
        super::session::serve(
            spec,
            sock,
            &sfd,
            &|| oom.fork(),
            &|argv, terminal, io| exec::exec_in_session(spec, argv, terminal, io),
            &stop_services,
            services,
        );
    }
    if let Some(hold) = &spec.oci {
        wait_for_start(hold, sock, &sfd);
    }

    let score = command_oom_score(spec, &oom, sock);
    // An OCI container's command waits on this pipe until PID 1 has dropped its
    // capabilities: no code of the container runs beside a privileged PID 1.
    let gate = match spec
        .oci
        .as_ref()
        .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))
    {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => fail(
            sock,
            super::StageError::new(Stage::ForkCommand, "pipe2", "", e),
        ),
        None => None,
    };
    // SAFETY: PID 1 is single-threaded; the child goes straight to exec_command.
    let child = match oom.fork_with(&score) {
        Ok(ForkResult::Child) => {
            if let Some((r, w)) = gate {
                drop(w);
                let mut b = [0u8; 1];
                if nix::unistd::read(&r, &mut b) != Ok(1) {
                    // SAFETY: _exit ends the process at once; PID 1 failed.
                    unsafe { libc::_exit(125) }
                }
            }
            exec::exec_command(spec, sock)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(
            sock,
            super::StageError::new(Stage::ForkCommand, "fork", "", e),
        ),
    };
    if let Some((r, w)) = gate {
        drop(r);
        drop_privileges(sock);
        if nix::unistd::write(&w, b"1") != Ok(1) {
            fail(
                sock,
                super::StageError::new(
                    Stage::ForkCommand,
                    "write",
                    "the command's gate",
                    nix::errno::Errno::last(),
                ),
            );
        }
    }

    // Seccomp for PID 1 comes after the fork: the command installs its own filters,
    // and inheriting PID 1's as well would run every syscall through both.
    super::layers::confine_pid1(spec, sock);
    super::sys::stdio_to_null();

    // An OCI container's report channel is `start`'s connection: closed here, so that
    // `start` sees its end once the command has exec'd (or reported its failure).
    let watch = if spec.oci.is_some() {
        // SAFETY: the descriptor is ours and nothing in PID 1 uses it after this.
        unsafe { libc::close(sock.as_raw_fd()) };
        None
    } else {
        Some(sock)
    };
    let mut services: Vec<Option<Pid>> = services.into_iter().map(Some).collect();
    let status = supervise(child, &sfd, watch, &mut services);
    let alive: Vec<Pid> = services.into_iter().flatten().collect();
    stop_services(&alive);
    // Whatever the command left behind dies with it.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(None::<Pid>, None).is_ok() {}
    let (code, signal) = match status {
        WaitStatus::Exited(_, c) => (Some(c), None),
        WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
        _ => (None, None),
    };
    if spec.oci.is_some() {
        // The caller (an OCI engine) reads the container's status from PID 1's.
        let status = code.unwrap_or_else(|| 128 + signal.unwrap_or(libc::SIGKILL));
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(status) }
    }
    let _ = proto::send(sock, &Report::Exited { code, signal });
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(0) }
}

/// Waits for the command, reaping orphans and forwarding signals on the way; a service
/// that ends is reported (and its slot in `services` emptied, so that no signal meant
/// for it reaches a process that took its pid).
fn supervise(
    child: Pid,
    sfd: &SignalFd,
    sock: Option<BorrowedFd<'_>>,
    services: &mut [Option<Pid>],
) -> WaitStatus {
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = sock {
            fds.push(PollFd::new(s, PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let sock_ev = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        if !sock_ev.is_empty() {
            // The supervisor sends nothing after the spec: readable means EOF, it died.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            // SAFETY: _exit ends the process at once; the kernel kills the namespace.
            unsafe { libc::_exit(137) }
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == libc::SIGCHLD {
                continue;
            }
            if let Ok(sig) = Signal::try_from(signo) {
                let _ = kill(child, sig);
            }
        }
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) if st.pid() == Some(child) => return st,
                Ok(st) => {
                    let (code, signal) = match st {
                        WaitStatus::Exited(_, c) => (Some(c), None),
                        WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
                        _ => continue,
                    };
                    if let Some(index) = services.iter().position(|p| p.is_some() && *p == st.pid())
                    {
                        services[index] = None;
                        if let Some(s) = sock {
                            let _ = proto::send(
                                s,
                                &Report::ServiceExited {
                                    index,
                                    code,
                                    signal,
                                },
                            );
                        }
                    }
                }
            }
        }
    }
}

/// An OCI container between `create` and `start`: reports that the root is built, then
/// waits for the first connection on the start socket, which replaces the control
/// socket (on the same descriptor) as the channel the command reports on. A forwarded
/// signal before that ends the container with 128+N: nothing of it runs yet.
/// Until `create` has saved the state and said so ([`proto::Request::Committed`]),
/// nobody may start the container and nobody but `create` knows of it: the control
/// socket ending first (`create` was killed) ends PID 1, so no held container is left.
fn wait_for_start(hold: &super::OciHold, sock: BorrowedFd<'_>, sfd: &SignalFd) {
    let _ = proto::send(sock, &Report::Created);
    // SAFETY: the creator placed the listening socket on this descriptor for us.
    let listener = unsafe { BorrowedFd::borrow_raw(hold.start_fd) };
    let mut committed = false;
    loop {
        let mut fds = [
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(if committed { listener } else { sock }, PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo != libc::SIGCHLD {
                // SAFETY: _exit ends the process at once.
                unsafe { libc::_exit(128 + signo) }
            }
        }
        if fds[1].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        if !committed {
            match proto::recv::<proto::Request>(sock) {
                Ok(Some(proto::Request::Committed)) => committed = true,
                // SAFETY: _exit ends the process at once; nothing of the command runs.
                _ => unsafe { libc::_exit(125) },
            }
            continue;
        }
        // SAFETY: accept4 on a listening socket we hold; a fresh descriptor or -1.
        let conn = unsafe {
            libc::accept4(
                hold.start_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            continue;
        }
        // SAFETY: dup2 replaces the control socket by the connection; both ours. The
        // listener closes: a second `start` finds nobody to connect to.
        unsafe {
            libc::dup2(conn, sock.as_raw_fd());
            libc::close(conn);
            libc::close(hold.start_fd);
        }
        return;
    }
}

/// Starts every service and waits until each one with a port accepts connections on
/// loopback; a service that exits or stays deaf past its timeout fails the set-up.
fn start_services(spec: &RunSpec, logs: &[OwnedFd], oom: &OomScore) -> StageResult<Vec<Pid>> {
    let mut pids = Vec::with_capacity(spec.services.len());
    for (svc, log) in spec.services.iter().zip(logs) {
        match oom.fork() {
            Ok(ForkResult::Child) => exec::exec_service(spec, &svc.argv, log.as_fd()),
            Ok(ForkResult::Parent { child }) => pids.push(child),
            Err(e) => {
                return Err(StageError::new(
                    Stage::ServiceStart,
                    "fork",
                    svc.name.clone(),
                    e,
                ));
            }
        }
    }
    for (svc, pid) in spec.services.iter().zip(&pids) {
        let Some(port) = svc.ready_port else { continue };
        let deadline = Instant::now() + Duration::from_millis(svc.ready_timeout_ms);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                waitpid(*pid, Some(WaitPidFlag::WNOHANG))
            {
                return Err(StageError::new(
                    Stage::ServiceReady,
                    "waitpid",
                    format!(
                        "service '{}' exited before it was ready; its log: {}",
                        svc.name,
                        svc.log.display()
                    ),
                    nix::errno::Errno::ECHILD,
                ));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StageError::new(
                    Stage::ServiceReady,
                    "connect",
                    format!(
                        "service '{}' did not accept connections on 127.0.0.1:{port} within {} ms; its log: {}",
                        svc.name,
                        svc.ready_timeout_ms,
                        svc.log.display()
                    ),
                    nix::errno::Errno::ETIMEDOUT,
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(pids)
}

/// Asks the services to stop (SIGTERM) and gives them a moment to flush their logs.
fn stop_services(pids: &[Pid]) {
    if pids.is_empty() {
        return;
    }
    for p in pids {
        let _ = kill(*p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left: Vec<Pid> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|p| {
            matches!(
                waitpid(*p, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}
