//! An interactive cell: a pty allocated by nixcell for the cell, and the relay
//! between it and the caller's terminal (`nixcell shell`).
//!
//! The caller's terminal is never handed into the cell: the cell's stdin, stdout and
//! stderr are the slave of a fresh pty, which becomes the controlling terminal of the
//! command's session (job control works: the command is its session's leader). So
//! nothing in the cell can type into the caller's terminal (TIOCSTI, also refused by
//! the seccomp layer), change its attributes, or keep it open after the run. The
//! caller's terminal is put in raw mode (and made non-blocking) while the relay runs,
//! and put back as it was, attributes and file status flags, however the run ends
//! ([`CallerTerminal`] restores them when dropped). Window size changes (SIGWINCH)
//! are copied to the cell's pty (TIOCSWINSZ), whose foreground jobs the kernel then
//! signals.
//!
//! [`relay`] is the reusable part: given a pty master and the caller's terminal it
//! copies bytes both ways until the last slave descriptor is closed (the cell died).

use super::supervise::without_sigttou;
use super::verdict::Verdict;
use super::{PreparedRun, RunError};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::Winsize;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{Signal, SignalKind, signal};

nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, Winsize);
nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error(
        "stdin is not a terminal (an interactive shell needs one; `nixcell run` runs a command without)"
    )]
    NotATerminal,
    #[error("stdin is a terminal open read-only; the shell's output goes to the same terminal")]
    ReadOnly,
    #[error("the caller's terminal: {0}: {1}")]
    Caller(&'static str, #[source] Errno),
    #[error("cannot allocate a pty for the cell: {0}: {1}")]
    Allocate(&'static str, #[source] Errno),
}

/// The caller's terminal (stdin) as it was found. Dropping it puts back its saved
/// attributes and file status flags.
pub struct CallerTerminal {
    fd: RawFd,
    saved: Termios,
    flags: OFlag,
    raw: bool,
}

impl CallerTerminal {
    /// The terminal on stdin, which must be open for reading and writing (the relay
    /// writes the cell's output to it).
    pub fn stdin() -> Result<CallerTerminal, PtyError> {
        let fd = libc::STDIN_FILENO;
        let saved = tcgetattr(borrow(fd)).map_err(|_| PtyError::NotATerminal)?;
        let flags = fcntl(borrow(fd), FcntlArg::F_GETFL)
            .map(OFlag::from_bits_retain)
            .map_err(|e| PtyError::Caller("fcntl(F_GETFL)", e))?;
        if flags & OFlag::O_ACCMODE != OFlag::O_RDWR {
            return Err(PtyError::ReadOnly);
        }
        Ok(CallerTerminal {
            fd,
            saved,
            flags,
            raw: false,
        })
    }

    /// Its window size, if it has one.
    pub fn size(&self) -> Option<Winsize> {
        let mut ws: Winsize = no_size();
        // SAFETY: TIOCGWINSZ writes one struct winsize to the pointer given.
        unsafe { get_winsize(self.fd, &mut ws) }.ok()?;
        Some(ws)
    }

    /// Raw mode (every byte, ^C and ^Z included, goes to the cell) and non-blocking
    /// reads and writes for the relay; both undone when `self` is dropped.
    pub fn enter_raw(&mut self) -> Result<(), PtyError> {
        let mut raw = self.saved.clone();
        cfmakeraw(&mut raw);
        self.raw = true;
        tcsetattr(borrow(self.fd), SetArg::TCSANOW, &raw)
            .map_err(|e| PtyError::Caller("tcsetattr", e))?;
        fcntl(
            borrow(self.fd),
            FcntlArg::F_SETFL(self.flags | OFlag::O_NONBLOCK),
        )
        .map_err(|e| PtyError::Caller("fcntl(F_SETFL)", e))?;
        Ok(())
    }
}

impl Drop for CallerTerminal {
    fn drop(&mut self) {
        if !self.raw {
            return;
        }
        without_sigttou(|| {
            let _ = fcntl(borrow(self.fd), FcntlArg::F_SETFL(self.flags));
            if !tcgetattr(borrow(self.fd)).is_ok_and(|now| now == self.saved) {
                let _ = tcsetattr(borrow(self.fd), SetArg::TCSANOW, &self.saved);
            }
        });
    }
}

fn no_size() -> Winsize {
    Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: only used for the standard descriptors and descriptors held by the
    // caller for longer than the borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// A new pty for a cell: (master, slave), both close-on-exec, the slave opened
/// without becoming anyone's controlling terminal here, with the window size given.
pub fn open_pty(size: Option<&Winsize>) -> Result<(OwnedFd, OwnedFd), PtyError> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let a = |what| move |e| PtyError::Allocate(what, e);
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(a("posix_openpt"))?;
    grantpt(&master).map_err(a("grantpt"))?;
    unlockpt(&master).map_err(a("unlockpt"))?;
    let name = ptsname_r(&master).map_err(a("ptsname_r"))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(a("open of the pty's slave"))?;
    let master = OwnedFd::from(master);
    if let Some(ws) = size {
        // SAFETY: TIOCSWINSZ reads one struct winsize from the pointer given.
        unsafe { set_winsize(master.as_raw_fd(), ws) }.map_err(a("TIOCSWINSZ"))?;
    }
    Ok((master, slave))
}

/// The closure's interactive shell: `bash` if a `bin/` of the environment has one,
/// else `sh`.
pub fn default_shell(path_dirs: &[std::path::PathBuf]) -> Vec<String> {
    let bash = path_dirs.iter().any(|d| d.join("bash").is_file());
    vec![if bash { "bash" } else { "sh" }.to_string()]
}

/// A raw descriptor for [`AsyncFd`] (the caller's terminal, not ours to close).
struct Raw(RawFd);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    nix::unistd::read(borrow(fd), buf).map_err(std::io::Error::from)
}

fn write_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    nix::unistd::write(borrow(fd), buf).map_err(std::io::Error::from)
}

/// Copies the caller's terminal input to the pty `master` and the cell's output to
/// the caller's terminal, and window size changes to the pty, until the cell has
/// closed its last descriptor of the slave (its output read to the end). The
/// terminal must be in non-blocking mode ([`CallerTerminal::enter_raw`]). If the
/// caller's terminal goes away, the cell's output is still drained (it never blocks
/// on a full pty) until the cell ends. `winch` ([`window_changes`]) must have been
/// made before the size given to the pty was read, so that no resize is missed.
pub async fn relay(
    master: OwnedFd,
    terminal: &CallerTerminal,
    mut winch: Signal,
) -> std::io::Result<()> {
    let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        &master,
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    let m = master.as_raw_fd();
    // SAFETY: `master` is owned by the AsyncFd; the terminal's descriptor (stdin)
    // stays open for as long as `terminal`, which outlives this function.
    let master = unsafe { AsyncFd::register(master) }?;
    // SAFETY: as above.
    let term = unsafe { AsyncFd::register(Raw(terminal.fd)) }?;
    let (mut to_cell, mut to_term) = (Vec::<u8>::new(), Vec::<u8>::new());
    let (mut input_open, mut output_open, mut cell_open) = (true, true, true);
    let mut buf = vec![0u8; 16 * 1024];
    // Ends once the cell is gone and what it wrote has reached the caller (or the
    // caller's terminal is gone too).
    while cell_open || (output_open && !to_term.is_empty()) {
        tokio::select! {
            g = master.readable(), if cell_open && to_term.is_empty() => {
                let mut g = g?;
                match g.try_io(|_| read_fd(m, &mut buf)) {
                    // EIO: no slave descriptor is left open.
                    Ok(Ok(0)) => cell_open = false,
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => cell_open = false,
                    Ok(Ok(n)) if output_open => to_term.extend_from_slice(&buf[..n]),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {}
                }
            }
            g = term.writable(), if output_open && !to_term.is_empty() => {
                let mut g = g?;
                match g.try_io(|t| write_fd(t.get_ref().0, &to_term)) {
                    Ok(Ok(n)) => { to_term.drain(..n); }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(Err(_)) => { output_open = false; to_term.clear(); }
                    Err(_) => {}
                }
            }
            g = term.readable(), if input_open && cell_open && to_cell.is_empty() => {
                let mut g = g?;
                match g.try_io(|t| read_fd(t.get_ref().0, &mut buf)) {
                    Ok(Ok(0)) => input_open = false,
                    Ok(Ok(n)) => to_cell.extend_from_slice(&buf[..n]),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(Err(_)) => input_open = false,
                    Err(_) => {}
                }
            }
            g = master.writable(), if cell_open && !to_cell.is_empty() => {
                let mut g = g?;
                match g.try_io(|_| write_fd(m, &to_cell)) {
                    Ok(Ok(n)) => { to_cell.drain(..n); }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The cell is going; its end is seen on the read side.
                    Ok(Err(_)) => to_cell.clear(),
                    Err(_) => {}
                }
            }
            Some(()) = winch.recv() => {
                if let Some(ws) = terminal.size() {
                    // SAFETY: TIOCSWINSZ reads one struct winsize from the pointer given.
                    let _ = unsafe { set_winsize(m, &ws) };
                }
            }
        }
    }
    Ok(())
}

/// SIGWINCH, caught from now on (within a runtime): made before the caller's window
/// size is first read, a resize at any time after that read is seen.
pub fn window_changes() -> std::io::Result<Signal> {
    signal(SignalKind::window_change())
}

/// Why an interactive run could not start (nothing ran).
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("{0}")]
    Terminal(#[from] PtyError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Runs a prepared cell on a pty of its own, relayed to the caller's `terminal`
/// (put in raw mode for the time of the run); with `default_shell`, its command is
/// replaced by the closure's shell ([`default_shell`]). Returns the run's verdict
/// once the cell is gone and the terminal is back as it was.
pub fn shell(
    mut prepared: PreparedRun,
    mut terminal: CallerTerminal,
    default: bool,
) -> Result<Verdict, ShellError> {
    if default {
        prepared.spec.argv = default_shell(&prepared.spec.path_dirs);
    }
    prepared.spec.terminal = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    // Before the size is read and the cell starts: a resize meanwhile is not lost.
    let winch = {
        let _in = rt.enter();
        window_changes().map_err(RunError::Runtime)?
    };
    let (master, slave) = open_pty(terminal.size().as_ref())?;
    let copy = |s: &OwnedFd| {
        s.try_clone()
            .map_err(|e| PtyError::Allocate("dup", Errno::from_raw(e.raw_os_error().unwrap_or(0))))
    };
    prepared.terminal = Some(std::sync::Arc::new([copy(&slave)?, copy(&slave)?, slave]));
    terminal.enter_raw()?;
    let (verdict, _relayed) = rt.block_on(async {
        // The relay ends when the cell's last slave descriptor is closed: the run
        // drops the supervisor's copy when it returns.
        tokio::join!(prepared.run_async(), relay(master, &terminal, winch))
    });
    drop(terminal);
    Ok(verdict?)
}
