//! The command's own process: the last steps before execve(2).

use super::proto::{self, Report};
use super::{At, StageResult, caps, sys};
use crate::spec::RunSpec;
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal};
use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Runs in the child PID 1 forked for the command; never returns.
pub fn exec_command(spec: &RunSpec, sock: BorrowedFd<'_>) -> ! {
    if let Err(e) = prepare(spec, sock) {
        let _ = proto::send(sock, &Report::SetupFailed(e.failure()));
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(125) }
    }
    let (program, errno) = execute(spec);
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

fn prepare(spec: &RunSpec, sock: BorrowedFd<'_>) -> StageResult {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).at(
        "signals",
        "sigprocmask",
        "unblock all",
    )?;
    // Dispositions set to SIG_IGN survive execve(2): the Rust runtime ignores SIGPIPE
    // and the init stage ignores terminal signals; the command gets the defaults.
    for s in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: SIG_DFL installs no handler code.
        unsafe { signal(s, SigHandler::SigDfl) }.at("signals", "signal", "SIG_DFL")?;
    }
    // A new session: no controlling terminal, so TIOCSTI cannot type into the
    // caller's terminal (CVE-2017-5226).
    nix::unistd::setsid().at("setsid", "setsid", "")?;
    nix::unistd::chdir(&spec.cwd).at("chdir", "chdir", spec.cwd.display())?;
    caps::drop_all()?;
    // Nothing of ours but stdio survives execve; the control socket stays usable
    // until then to report an exec failure.
    sys::cloexec_from(3).at("close-fds", "close_range(CLOSE_RANGE_CLOEXEC)", "3..")?;
    nix::sys::prctl::set_no_new_privs().at("no-new-privs", "prctl", "PR_SET_NO_NEW_PRIVS")?;
    // rlimits, Landlock, then seccomp last: nothing after this but execve.
    super::layers::apply_all(spec, sock)
}

/// Resolves argv[0] like execvp(3) over the cell's PATH and execs; returns only on
/// failure, with the program tried and the errno that counts.
fn execute(spec: &RunSpec) -> (String, Errno) {
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_default())
        .collect();
    let name = &spec.argv[0];
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
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => last = e,
            other => return (c.display().to_string(), other),
        }
    }
    (name.clone(), last)
}
