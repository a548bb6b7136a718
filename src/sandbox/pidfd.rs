//! Signalling the cell's PID 1 through a pidfd (pidfd_open(2), pidfd_send_signal(2)).
//!
//! The supervisor learns PID 1's pid from the init stage's `Ready` report. A raw pid
//! names whatever process holds the number when the signal is sent: once PID 1 has
//! ended and the init stage has reaped it, a later `kill(2)` could reach an unrelated
//! process that was given the same pid. A pidfd names one process for its whole life:
//! signals sent through it after that process has ended fail with ESRCH and reach
//! nobody. Only a kernel without pidfd_open (ENOSYS, Linux < 5.3) falls back to
//! `kill(2)`.

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A handle on one process, to send it signals.
#[derive(Debug)]
pub enum ProcessHandle {
    /// A pidfd: signals reach this process or nobody.
    Pidfd(OwnedFd),
    /// The kernel has no pidfd_open: signals go by pid.
    Pid(Pid),
    /// The process was gone before it could be opened: signals reach nobody.
    Gone,
}

impl ProcessHandle {
    /// Opens the process `pid`, which must be a child of `parent` (PID 1 is the init
    /// stage's child). The check after the open makes sure the pidfd names that child
    /// and not a process that took its pid after it was reaped: the init stage forks
    /// nothing after PID 1, so a child of `parent` with this pid is PID 1.
    pub fn open_child(pid: i32, parent: i32) -> ProcessHandle {
        if pid <= 0 {
            return ProcessHandle::Gone;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return match Errno::last() {
                Errno::ENOSYS => ProcessHandle::Pid(Pid::from_raw(pid)),
                _ => ProcessHandle::Gone,
            };
        }
        // SAFETY: the kernel just returned this descriptor, which nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if parent_of(pid) != Some(parent) {
            return ProcessHandle::Gone;
        }
        ProcessHandle::Pidfd(fd)
    }

    /// Sends `sig` to the process. `Err(ESRCH)` when it is gone.
    pub fn signal(&self, sig: Signal) -> Result<(), Errno> {
        match self {
            ProcessHandle::Pidfd(fd) => {
                // SAFETY: pidfd_send_signal takes our pidfd, a signal number, no
                // siginfo (NULL: as kill(2) would send) and no flags.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        sig as libc::c_int,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                if r < 0 { Err(Errno::last()) } else { Ok(()) }
            }
            ProcessHandle::Pid(pid) => nix::sys::signal::kill(*pid, sig),
            ProcessHandle::Gone => Err(Errno::ESRCH),
        }
    }
}

/// The parent pid of `pid` from /proc/<pid>/stat (the field after the command name,
/// which may itself hold spaces and parentheses, hence the last ')').
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn me() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn a_signal_reaches_the_opened_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let h = ProcessHandle::open_child(child.id() as i32, me());
        assert!(matches!(h, ProcessHandle::Pidfd(_)), "{h:?}");
        h.signal(Signal::SIGTERM).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
        // Reaped: the pidfd reaches nobody.
        assert_eq!(h.signal(Signal::SIGTERM), Err(Errno::ESRCH));
    }

    #[test]
    fn a_process_that_is_not_the_child_is_not_opened() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        // Its parent is this test process, not pid 1.
        let h = ProcessHandle::open_child(child.id() as i32, 1);
        assert!(matches!(h, ProcessHandle::Gone), "{h:?}");
        assert_eq!(h.signal(Signal::SIGKILL), Err(Errno::ESRCH));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process was signalled"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_reaped_childs_pid_taken_by_another_process_is_not_signalled() {
        // Root in the initial pid namespace can choose the next pid (ns_last_pid), which
        // recreates the reuse the pidfd guards against; elsewhere the test has nothing
        // to show.
        const LAST: &str = "/proc/sys/kernel/ns_last_pid";
        let mut first = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = first.id() as i32;
        let h = ProcessHandle::open_child(pid, me());
        first.kill().unwrap();
        first.wait().unwrap();
        for _ in 0..20 {
            if std::fs::write(LAST, (pid - 1).to_string()).is_err() {
                eprintln!("cannot set {LAST}: pid reuse not reproduced");
                return;
            }
            let mut second = Command::new("sleep").arg("30").spawn().unwrap();
            if second.id() as i32 != pid {
                second.kill().unwrap();
                second.wait().unwrap();
                continue;
            }
            let sent = h.signal(Signal::SIGKILL);
            std::thread::sleep(std::time::Duration::from_millis(100));
            let alive = second.try_wait().unwrap().is_none();
            second.kill().ok();
            second.wait().unwrap();
            assert_eq!(sent, Err(Errno::ESRCH));
            assert!(alive, "the process that took the pid was killed");
            return;
        }
        eprintln!("another process took pid {pid} each time: reuse not reproduced");
    }

    #[test]
    fn the_parent_pid_is_read_from_proc() {
        assert_eq!(parent_of(me()), Some(nix::unistd::getppid().as_raw()));
        assert_eq!(parent_of(i32::MAX), None);
    }
}
