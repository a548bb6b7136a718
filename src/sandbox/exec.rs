//! The command's own process: the last steps before execve(2).

use super::RunSpec;
use super::Stage;
use super::proto::{self, Report};
use super::{At, StageResult, caps, sys};
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal};
use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Runs in the child PID 1 forked for the command; never returns.
pub fn exec_command(spec: &RunSpec, sock: BorrowedFd<'_>) -> ! {
    if let Err(e) = prepare(spec, Some(sock)) {
        let _ = proto::send(sock, &Report::SetupFailed(e.failure()));
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(125) }
    }
    let (program, errno) = execute(spec, &spec.argv);
    let _ = proto::send(
        sock,
        &Report::ExecFailed {
            program,
            errno: errno as i32,
        },
    );
    let code = if errno == Errno::ENOENT { 127 } else { 126 };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Runs in a child of PID 1 of a session cell, forked for one exec: `io` holds its
/// stdin, stdout, stderr and the socket its reports go to (see `proto::Request::Exec`).
/// The same last steps as the command of a run (with `terminal`, its stdin becomes its
/// controlling terminal, as a shell's); never returns.
pub fn exec_in_session(
    spec: &RunSpec,
    argv: Vec<String>,
    terminal: bool,
    io: &[std::os::fd::OwnedFd],
) -> ! {
    use std::os::fd::AsFd;
    let report = io[3].as_fd();
    let fail = |e: super::StageError| -> ! {
        let _ = proto::send(report, &Report::SetupFailed(e.failure()));
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(125) }
    };
    for (i, f) in io[..3].iter().enumerate() {
        // SAFETY: dup2 onto a standard descriptor from one we hold.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(f), i as i32) } < 0 {
            fail(super::StageError::new(
                Stage::ForkCommand,
                "dup2",
                format!("exec stdio {i}"),
                Errno::last(),
            ));
        }
    }
    let mut spec = spec.clone();
    spec.argv = argv;
    spec.terminal = terminal;
    if let Err(e) = prepare(&spec, Some(report)) {
        fail(e);
    }
    let (program, errno) = execute(&spec, &spec.argv);
    let _ = proto::send(
        report,
        &Report::ExecFailed {
            program,
            errno: errno as i32,
        },
    );
    // SAFETY: as above.
    unsafe { libc::_exit(if errno == Errno::ENOENT { 127 } else { 126 }) }
}

/// Runs in a child of PID 1 forked for a service: the same confinement as the
/// command, with stdout and stderr on the service's log and stdin on /dev/null. A
/// failure is written to the log; PID 1 sees the early exit and reports it.
pub fn exec_service(spec: &RunSpec, argv: &[String], log: BorrowedFd<'_>) -> ! {
    use std::io::Write;
    let mut log_file = std::fs::File::from(log.try_clone_to_owned().unwrap_or_else(|_| {
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(125) }
    }));
    let redirect = (|| -> StageResult {
        let null = std::fs::File::open("/dev/null").at(Stage::ServiceStdio, "open", "/dev/null")?;
        nix::unistd::dup2_stdin(&null).at(Stage::ServiceStdio, "dup2", "stdin")?;
        nix::unistd::dup2_stdout(&log_file).at(Stage::ServiceStdio, "dup2", "stdout")?;
        nix::unistd::dup2_stderr(&log_file).at(Stage::ServiceStdio, "dup2", "stderr")?;
        Ok(())
    })();
    if let Err(e) = redirect.and_then(|()| prepare(spec, None)) {
        let _ = writeln!(log_file, "nixcell: {}", e);
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(125) }
    }
    let (program, errno) = execute(spec, argv);
    let _ = writeln!(
        log_file,
        "nixcell: {}",
        exec_message(&program, errno as i32)
    );
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(if errno == Errno::ENOENT { 127 } else { 126 }) }
}

/// The last steps before exec; `sock` receives the layer reports (the command's
/// process only: a service's layers are the same and reported once).
fn prepare(spec: &RunSpec, sock: Option<BorrowedFd<'_>>) -> StageResult {
    if spec.security.join_cell_cgroup {
        // Into the cgroup with the memory limit, away from PID 1's: fail closed, as
        // the command would otherwise run without the limit.
        // SAFETY: writes one byte from a static buffer to a descriptor we hold.
        let n = unsafe { libc::write(proto::CELL_CGROUP_FD, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(super::StageError::new(
                Stage::CgroupJoin,
                "write",
                "cgroup.procs of the command's cgroup",
                Errno::last(),
            ));
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).at(
        Stage::Signals,
        "sigprocmask",
        "unblock all",
    )?;
    // Dispositions set to SIG_IGN survive execve(2): the Rust runtime ignores SIGPIPE
    // and the init stage ignores terminal signals; the command gets the defaults.
    for s in std::iter::once(&Signal::SIGPIPE).chain(super::pid1::FORWARDED) {
        // SAFETY: SIG_DFL installs no handler code.
        unsafe { signal(*s, SigHandler::SigDfl) }.at(Stage::Signals, "signal", "SIG_DFL")?;
    }
    // A new session: no controlling terminal, so TIOCSTI cannot type into the
    // caller's terminal (CVE-2017-5226).
    nix::unistd::setsid().at(Stage::Setsid, "setsid", "")?;
    if (spec.terminal || spec.oci.as_ref().is_some_and(|o| o.terminal)) && sock.is_some() {
        // The pty's slave, on stdin: the command is the leader of its session, the
        // terminal belongs to no session yet (nixcell opened it with O_NOCTTY).
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(super::StageError::new(
                Stage::ControllingTerminal,
                "ioctl",
                "TIOCSCTTY on stdin",
                Errno::last(),
            ));
        }
    }
    nix::unistd::chdir(&spec.cwd).at(Stage::Chdir, "chdir", spec.cwd.display())?;
    super::ociproc::apply_umask(&spec.security.container);
    super::ociproc::apply_groups(&spec.security.container)?;
    let Some(oci) = &spec.security.container.caps else {
        caps::drop_all()?;
        // Nothing of ours but stdio survives execve; the control socket stays usable
        // until then to report an exec failure.
        sys::cloexec_from(3).at(Stage::CloseFds, "close_range(CLOSE_RANGE_CLOEXEC)", "3..")?;
        set_no_new_privs()?;
        // rlimits, Landlock, then seccomp last: nothing after this but execve.
        return super::layers::apply_all(spec, sock);
    };
    sys::cloexec_from(3).at(Stage::CloseFds, "close_range(CLOSE_RANGE_CLOEXEC)", "3..")?;
    if oci.no_new_privs {
        // As runc: the sets first, then no_new_privs, seccomp as late as possible.
        caps::apply(&oci.sets)?;
        set_no_new_privs()?;
        super::layers::apply_all(spec, sock)?;
    } else {
        // Without no_new_privs, landlock_restrict_self and seccomp(2) need
        // CAP_SYS_ADMIN in the cell's user namespace, held until the sets are set
        // (the filters allow what that takes: checked by `create`).
        super::layers::apply_all(spec, sock)?;
        caps::apply(&oci.sets)?;
    }
    super::layers::report_caps(oci, sock)
}

fn set_no_new_privs() -> StageResult {
    nix::sys::prctl::set_no_new_privs().at(Stage::NoNewPrivs, "prctl", "PR_SET_NO_NEW_PRIVS")
}

/// Resolves argv[0] like execvp(3) over the cell's PATH and execs; returns only on
/// failure, with the program tried and the errno that counts.
fn execute(spec: &RunSpec, args: &[String]) -> (String, Errno) {
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_default())
        .collect();
    let name = &args[0];
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        spec.path_dirs.iter().map(|d| d.join(name)).collect()
    };
    let mut last = Errno::ENOENT;
    for c in &candidates {
        let Ok(path) = CString::new(c.as_os_str().as_bytes()) else {
            continue;
        };
        let Err(e) = nix::unistd::execve(&path, &argv, &envp);
        match e {
            // The file is there but its #! interpreter is not.
            Errno::ENOENT if std::fs::metadata(c).is_ok() => {
                return (
                    format!("{}: bad interpreter {}", c.display(), shebang(c)),
                    Errno::ENOEXEC,
                );
            }
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => last = e,
            other => return (c.display().to_string(), other),
        }
    }
    (name.clone(), last)
}

/// The interpreter a script's `#!` line names, for the error message.
fn shebang(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&head[..n]);
    text.strip_prefix("#!")
        .and_then(|l| l.lines().next())
        .and_then(|l| l.split_whitespace().next())
        .map(|i| format!("{i} (not in the cell)"))
        .unwrap_or_else(|| "(unknown)".into())
}

/// The message for a failed exec, in the words of a shell.
pub fn exec_message(program: &str, errno: i32) -> String {
    if errno == libc::ENOENT {
        format!("{program}: command not found in the cell")
    } else if errno == libc::ENOEXEC && program.contains(": bad interpreter ") {
        program.to_string()
    } else {
        format!(
            "{program}: cannot execute: {}",
            std::io::Error::from_raw_os_error(errno)
        )
    }
}
