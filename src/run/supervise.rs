//! The asynchronous side of a run: sends the spec, collects the cell's reports and
//! its (capped) output, forwards terminal signals, enforces the wall-clock timeout.

use crate::sandbox::RunSpec;
use crate::sandbox::pidfd::ProcessHandle;
use crate::sandbox::proto::{self, LayerReport, Report, SetupFailure};
use crate::sandbox::spawn::{Spawned, spawn_init};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot start the init stage: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("control channel with the cell failed: {0}")]
    Control(#[source] std::io::Error),
}

/// How the supervisor treats the run.
#[derive(Clone)]
pub struct RunOptions {
    /// Capture stdout/stderr (into the verdict) instead of passing them through.
    pub capture: bool,
    /// Bytes kept of each captured stream.
    pub max_output: usize,
    /// Without `capture`: pass stderr on through a pipe and keep its last bytes (for
    /// hints). Off when stderr is a terminal: an interactive shell needs it to be one.
    pub tee_stderr: bool,
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when the timeout expires.
    pub grace: Duration,
    /// Called with the init stage's pid once it runs, before the spec is sent
    /// (the cgroup attach point).
    pub before_spec: Option<BeforeSpec>,
    /// `cgroup.procs` of the cgroup the command joins, passed to the init stage.
    pub cell_cgroup: Option<Arc<std::os::fd::OwnedFd>>,
    /// Files a newly spawned init stage joins the run's cgroups through (cgroup v1):
    /// `before_spec` is then not called for it (a pooled one is attached by it).
    pub init_join: Arc<Vec<std::os::fd::OwnedFd>>,
    /// Called as the run goes through its stages (for progress reports).
    pub on_event: Option<OnEvent>,
    /// The caller's stdin, stdout and stderr when they are not this process's own
    /// (`nixcell serve` runs a cell for a `nixcell run` that passed its descriptors).
    pub stdio: Option<Arc<[std::os::fd::OwnedFd; 3]>>,
    /// Signals for the cell from elsewhere than this process's own handlers (the
    /// caller of `nixcell serve`): each new value is a signal number to forward.
    pub signals: Option<tokio::sync::watch::Receiver<i32>>,
    /// Init stages started ahead (a warm pool, spawned on this runtime): one is taken
    /// for the run when there is one, else a new one is started.
    pub init_source: Option<InitSource>,
}

/// Hands out an init stage started ahead of its run (`spawn::spawn_waiting`), each
/// at most once.
pub type InitSource = Arc<dyn Fn() -> Option<Spawned> + Send + Sync>;

/// A stream of the cell's output as the supervisor reads it.
type Stream = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// A pipe: the supervisor's end (read, asynchronous) and the cell's (write).
fn pipe() -> std::io::Result<(Stream, std::os::fd::OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let r = tokio::net::unix::pipe::Receiver::from_owned_fd(r)?;
    Ok((Box::pin(r), w))
}

/// The init stage of a run, its control socket and the read ends of its captured
/// streams: a pooled one given its descriptors, else a new one.
type Started = (
    tokio::process::Child,
    std::os::unix::net::UnixStream,
    Option<Stream>,
    Option<Stream>,
);

fn start_init(spec: &RunSpec, opts: &RunOptions) -> std::io::Result<(Started, bool)> {
    use std::os::fd::AsRawFd;
    let cgroup = opts.cell_cgroup.as_deref().map(AsRawFd::as_raw_fd);
    if let Some(sp) = opts.init_source.as_ref().and_then(|f| f()) {
        // As spawn_init places them: the caller's (or our own) descriptors, captured
        // streams on pipes.
        let own = |i: usize| opts.stdio.as_deref().map_or(i as i32, |s| s[i].as_raw_fd());
        let out = opts.capture.then(pipe).transpose()?;
        let err = (opts.capture || opts.tee_stderr).then(pipe).transpose()?;
        let fd = |p: &Option<(Stream, std::os::fd::OwnedFd)>, i| {
            p.as_ref().map_or(own(i), |p| p.1.as_raw_fd())
        };
        let placed = [own(0), fd(&out, 1), fd(&err, 2)];
        // One that died while it waited is dropped (killed, reaped): a new one runs.
        if crate::sandbox::spawn::place(&sp, placed, &spec.sources, cgroup).is_ok() {
            let started = (sp.child, sp.control, out.map(|p| p.0), err.map(|p| p.0));
            return Ok((started, true));
        }
    }
    let Spawned { mut child, control } = spawn_init(
        opts.capture,
        opts.tee_stderr,
        opts.stdio.as_deref(),
        &spec.sources,
        cgroup,
        &opts.join_fds(),
    )?;
    let out = child.stdout.take().map(|s| Box::pin(s) as Stream);
    let err = child.stderr.take().map(|s| Box::pin(s) as Stream);
    Ok(((child, control, out, err), false))
}

/// The stages of a run a caller may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    /// PID 1 of the cell exists.
    CellStarted,
    /// The declared services are ready (or there are none) and the command's process
    /// exists: its first layer is applied.
    CommandStarted,
    /// The command ended.
    CommandEnded,
}

/// A hook called with each [`RunEvent`].
pub type OnEvent = Arc<dyn Fn(RunEvent) + Send + Sync>;

impl RunOptions {
    /// [`RunOptions::init_join`] as the descriptors `spawn::spawn_init` takes.
    pub fn join_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.init_join.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            capture: false,
            max_output: 1 << 20,
            tee_stderr: false,
            timeout: None,
            grace: Duration::from_secs(2),
            before_spec: None,
            cell_cgroup: None,
            init_join: Arc::default(),
            on_event: None,
            stdio: None,
            signals: None,
            init_source: None,
        }
    }
}

/// A captured stream: what was kept, how much there was, whether some was dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Captured {
    /// The first bytes of the stream (at most the output cap).
    pub text: String,
    pub bytes: u64,
    pub truncated: bool,
    /// When truncated: the stream's last bytes (at most [`TAIL_BYTES`]), after the gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<String>,
}

/// Bytes kept of the end of a stream longer than its cap.
pub const TAIL_BYTES: usize = 4 << 10;

/// A hook called with the init stage's pid before it receives its spec.
pub type BeforeSpec = Arc<dyn Fn(u32) -> Result<(), String> + Send + Sync>;

/// Everything observed about one run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub setup_error: Option<SetupFailure>,
    pub exec_error: Option<(String, i32)>,
    pub layers: Vec<LayerReport>,
    pub stdout: Option<Captured>,
    pub stderr: Option<Captured>,
    pub wall: Duration,
    pub pid1: Option<i32>,
    /// The supervisor's own failure before the cell could run (e.g. cgroup attach).
    pub supervisor_error: Option<String>,
    /// The copy-on-write layer's tmpfs (its root, holding `upper/`), passed by the
    /// cell; it stays readable after the cell's namespaces are gone.
    pub work_layer: Option<std::os::fd::OwnedFd>,
    /// The cell ended without PID 1 reporting the command's status.
    pub unreported: bool,
    /// Services (index in the spec, exit code, signal) that ended while the command ran.
    pub services_exited: Vec<(usize, Option<i32>, Option<i32>)>,
    /// The last bytes of the command's stderr when it was passed through (not captured).
    pub stderr_tail: Option<String>,
    /// The init stage was one started ahead ([`RunOptions::init_source`]).
    pub pooled: bool,
}

impl Outcome {
    /// Takes the cgroup's OOM kills into account: a cell whose PID 1 (or init stage)
    /// was killed for lack of memory before it could report is an OOM, not a failure
    /// of nixcell. The kernel kills every process of a pid namespace whose init dies,
    /// so the command ended with SIGKILL.
    pub fn account_oom(&mut self, oom_killed: bool) {
        if oom_killed && self.unreported {
            self.supervisor_error = None;
            self.signal = Some(libc::SIGKILL);
        }
    }
}

/// recvmsg(2) on the control socket: bytes, and any descriptors passed with them.
fn recv_with_fds(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for f in list {
                // SAFETY: the kernel installed these descriptors for us.
                fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(f) });
            }
        }
    }
    Ok(msg.bytes)
}

/// Reads a stream to its end, keeping its first `cap` bytes and its tail.
pub async fn capture<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> Captured {
    let mut kept = Vec::new();
    // The last bytes past the cap, in a ring.
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_BYTES);
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let room = cap.saturating_sub(kept.len());
                let head = n.min(room);
                kept.extend_from_slice(&buf[..head]);
                let rest = &buf[head..n];
                let rest = &rest[rest.len().saturating_sub(TAIL_BYTES)..];
                let drop = (tail.len() + rest.len()).saturating_sub(TAIL_BYTES);
                tail.drain(..drop);
                tail.extend(rest);
            }
        }
    }
    let tail: Vec<u8> = tail.into();
    // A tail cut in the middle of a character starts at the next one.
    let start = tail
        .iter()
        .take(3)
        .position(|b| b & 0xC0 != 0x80)
        .unwrap_or(0);
    Captured {
        truncated: total > kept.len() as u64,
        text: String::from_utf8_lossy(&kept).into_owned(),
        bytes: total,
        tail: (!tail.is_empty()).then(|| String::from_utf8_lossy(&tail[start..]).into_owned()),
    }
}

/// Bytes of a passed-through stderr kept for hints.
const HINT_TAIL_BYTES: usize = 64 << 10;

/// Copies `r` to our stderr as it comes, and returns its last `keep` bytes.
async fn tee<R: AsyncRead + Unpin>(
    mut r: R,
    keep: usize,
    to: Option<std::os::fd::OwnedFd>,
) -> String {
    let mut err: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match to {
        Some(fd) => Box::pin(tokio::fs::File::from_std(std::fs::File::from(fd))),
        None => Box::pin(tokio::io::stderr()),
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = err.write_all(&buf[..n]).await;
                let _ = err.flush().await;
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// Where the cell's signals go: PID 1 once the init stage's `Ready` report is read;
/// until then a signal the init stage ignores waits here.
#[derive(Default)]
struct CellTarget {
    pid1: Option<ProcessHandle>,
    pending: Option<Signal>,
}

/// Sends `sig` to the cell: to PID 1 once it is known (through its pidfd, so a signal
/// after it has ended reaches nobody). Before that, SIGKILL goes to the init stage, our
/// own unreaped child; the signals it ignores (SIGINT, SIGTERM, SIGHUP) are kept for PID 1,
/// which may already run the command while its `Ready` report is still unread.
fn signal_cell(target: &Mutex<CellTarget>, init_pid: i32, sig: Signal) {
    let mut t = target.lock().unwrap();
    match &t.pid1 {
        Some(h) => {
            let _ = h.signal(sig);
        }
        None if sig != Signal::SIGKILL => t.pending = Some(sig),
        None if init_pid > 0 => {
            let _ = kill(Pid::from_raw(init_pid), sig);
        }
        None => {}
    }
}

/// The caller's terminal settings, saved when stdin is a terminal (the cell shares
/// it: `stty -echo` inside changes it) and put back when the run ends, however it
/// ends (dropped on every return path, timeout and kill included).
/// Besides the attributes, the exclusive mode (TIOCEXCL makes every later open of the
/// terminal fail) and suspended output (tcflow TCOOFF) are put back.
struct TerminalGuard(Option<(nix::sys::termios::Termios, libc::c_int)>);

/// Whether the terminal on stdin is in exclusive mode (TIOCGEXCL).
fn exclusive() -> Option<libc::c_int> {
    let mut on: libc::c_int = 0;
    // SAFETY: TIOCGEXCL writes one int to the pointer given.
    (unsafe { libc::ioctl(0, libc::TIOCGEXCL, &mut on) } == 0).then_some(on)
}

impl TerminalGuard {
    fn save() -> TerminalGuard {
        let stdin = std::io::stdin();
        let attrs = nix::sys::termios::tcgetattr(&stdin).ok();
        TerminalGuard(attrs.map(|a| (a, exclusive().unwrap_or(0))))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        use nix::sys::termios::{FlowArg, SetArg, tcflow, tcgetattr, tcsetattr};
        let Some((saved, excl)) = &self.0 else { return };
        let stdin = std::io::stdin();
        // A background job changing its terminal gets SIGTTOU (and stops) unless the
        // signal is blocked; blocked, the calls go through.
        without_sigttou(|| {
            if !tcgetattr(&stdin).is_ok_and(|now| now == *saved) {
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, saved);
            }
            if exclusive().is_some_and(|now| now != *excl) {
                let req = if *excl != 0 {
                    libc::TIOCEXCL
                } else {
                    libc::TIOCNXCL
                };
                // SAFETY: TIOCEXCL/TIOCNXCL take no argument.
                unsafe { libc::ioctl(0, req) };
            }
            // Output the cell suspended is resumed; on running output this does nothing.
            let _ = tcflow(&stdin, FlowArg::TCOON);
        });
    }
}

/// Runs `f` with SIGTTOU blocked: a process in the background of its terminal
/// changing that terminal's settings is stopped by it otherwise.
pub(crate) fn without_sigttou(f: impl FnOnce()) {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).is_ok();
    f();
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
}

/// Runs one cell to completion.
pub async fn run(spec: &RunSpec, opts: &RunOptions) -> Result<Outcome, SuperviseError> {
    // A caller's descriptors (served runs) are never a terminal: only ours is saved.
    let _terminal = match opts.stdio {
        None => TerminalGuard::save(),
        Some(_) => TerminalGuard(None),
    };
    let start = Instant::now();
    let ((mut child, control, out_pipe, err_pipe), pooled) =
        start_init(spec, opts).map_err(SuperviseError::Spawn)?;
    let init_pid = child.id().unwrap_or(0) as i32;
    let mut out = Outcome {
        pooled,
        ..Default::default()
    };

    if let Some(hook) = &opts.before_spec
        && (pooled || opts.init_join.is_empty())
        && let Err(e) = hook(init_pid as u32)
    {
        let _ = child.kill().await;
        out.supervisor_error = Some(e);
        out.wall = start.elapsed();
        return Ok(out);
    }

    control
        .set_nonblocking(true)
        .map_err(SuperviseError::Control)?;
    let mut control = tokio::net::UnixStream::from_std(control).map_err(SuperviseError::Control)?;
    let body = serde_json::to_vec(spec).map_err(|e| SuperviseError::Control(e.into()))?;
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let (rd, mut wr) = control.split();
    let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
    let target: Mutex<CellTarget> = Mutex::default();

    let stdout_task = out_pipe.map(|s| tokio::spawn(capture(s, opts.max_output)));
    let (stderr_task, tee_task) = match err_pipe {
        Some(s) if opts.capture => (Some(tokio::spawn(capture(s, opts.max_output))), None),
        Some(s) => {
            let to = match opts.stdio.as_deref() {
                Some(fds) => Some(fds[2].try_clone().map_err(SuperviseError::Spawn)?),
                None => None,
            };
            (None, Some(tokio::spawn(tee(s, HINT_TAIL_BYTES, to))))
        }
        None => (None, None),
    };

    let passed: Arc<Mutex<Vec<std::os::fd::OwnedFd>>> = Arc::default();
    let read_reports = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let sock = rd.as_ref();
        let mut started = false;
        loop {
            if sock.readable().await.is_err() {
                break;
            }
            let got = sock.try_io(tokio::io::Interest::READABLE, || {
                use std::os::fd::AsRawFd;
                recv_with_fds(sock.as_raw_fd(), &mut chunk, &mut passed.lock().unwrap())
            });
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let Ok(msgs) = proto::decode_frames::<Report>(&mut buf) else {
                        break;
                    };
                    for m in msgs {
                        if let Report::Ready { pid1: p } = m {
                            let mut t = target.lock().unwrap();
                            let h = ProcessHandle::open_child(p, init_pid);
                            if let Some(sig) = t.pending.take() {
                                let _ = h.signal(sig);
                            }
                            t.pid1 = Some(h);
                        }
                        if let Some(f) = &opts.on_event {
                            match &m {
                                Report::Ready { .. } => f(RunEvent::CellStarted),
                                Report::Layer(_) | Report::ExecFailed { .. } if !started => {
                                    started = true;
                                    f(RunEvent::CommandStarted)
                                }
                                Report::Exited { .. } => f(RunEvent::CommandEnded),
                                _ => {}
                            }
                        }
                        reports.lock().unwrap().push(m);
                    }
                }
            }
        }
    };

    let signal = |sig| signal_cell(&target, init_pid, sig);

    let drive = async {
        // Our handlers are in place before the cell can start the command (it starts
        // once it has its spec): a SIGTERM to us as soon as the command runs is the
        // cell's to handle, never the default action that would kill only us.
        let mut sigint =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut sighup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut passed_signals = opts.signals.clone();
        if wr.write_all(&frame).await.is_err() {
            // The init stage died before reading its spec; its status tells the rest.
        }
        let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        // When SIGKILL follows, after the grace time: the timeout's, or a SIGTERM's.
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            let timer = async {
                match (kill_at, deadline, timed_out) {
                    (Some(k), _, _) => tokio::time::sleep_until(k).await,
                    (None, Some(d), false) => tokio::time::sleep_until(d).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                st = child.wait() => return (st.ok(), timed_out),
                _ = timer => {
                    if kill_at.is_some() {
                        signal(Signal::SIGKILL);
                        kill_at = None;
                        timed_out |= deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                    } else {
                        timed_out = true;
                        signal(Signal::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + opts.grace);
                    }
                }
                Some(_) = async { match sigint.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => signal(Signal::SIGINT),
                // Terminated (an MCP call cancelled, a service manager stopping us): the
                // cell gets the grace time, then the whole of it is killed.
                Some(_) = async { match sigterm.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    signal(Signal::SIGTERM);
                    let k = tokio::time::Instant::now() + opts.grace;
                    kill_at = Some(kill_at.map_or(k, |at| at.min(k)));
                }
                Some(_) = async { match sighup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => signal(Signal::SIGHUP),
                Some(n) = async {
                    match passed_signals.as_mut() {
                        Some(rx) => match rx.changed().await {
                            Ok(()) => Some(*rx.borrow_and_update()),
                            Err(_) => std::future::pending().await,
                        },
                        None => std::future::pending().await,
                    }
                } => match Signal::try_from(n) {
                    // As if the signal had reached this process (same grace rule).
                    Ok(Signal::SIGTERM) => {
                        signal(Signal::SIGTERM);
                        let k = tokio::time::Instant::now() + opts.grace;
                        kill_at = Some(kill_at.map_or(k, |at| at.min(k)));
                    }
                    Ok(s) => signal(s),
                    Err(_) => {}
                },
            }
        }
    };

    let ((_status, timed_out), ()) = tokio::join!(drive, read_reports);
    out.timed_out = timed_out;
    if let Some(t) = stdout_task {
        out.stdout = t.await.ok();
    }
    if let Some(t) = stderr_task {
        out.stderr = t.await.ok();
    }
    if let Some(t) = tee_task {
        out.stderr_tail = t.await.ok();
    }
    out.wall = start.elapsed();
    let reports = std::mem::take(&mut *reports.lock().unwrap());
    let mut passed = std::mem::take(&mut *passed.lock().unwrap()).into_iter();
    for r in reports {
        match r {
            Report::WorkLayer => out.work_layer = passed.next(),
            Report::Ready { pid1 } => out.pid1 = Some(pid1),
            Report::SetupFailed(f) => out.setup_error = Some(f),
            Report::Layer(l) => out.layers.push(l),
            Report::ExecFailed { program, errno } => out.exec_error = Some((program, errno)),
            Report::ServiceExited {
                index,
                code,
                signal,
            } => out.services_exited.push((index, code, signal)),
            Report::Exited { code, signal } => {
                out.exit_code = code;
                out.signal = signal;
            }
            // Reports of a session cell only (src/session/).
            Report::SessionReady | Report::ExecEnded { .. } => {}
            // Sent only by a cell held for an OCI `start` (`nixcell oci`).
            Report::Created => {}
        }
    }
    if out.exit_code.is_none()
        && out.signal.is_none()
        && out.setup_error.is_none()
        && !out.timed_out
        && out.supervisor_error.is_none()
    {
        out.unreported = true;
        out.supervisor_error =
            Some("the cell ended without reporting the command's status".to_string());
    }
    if out.timed_out && out.signal.is_none() && out.exit_code.is_none() {
        out.signal = Some(libc::SIGKILL);
    }
    Ok(out)
}

/// The exit status nixcell itself ends with (docs/ARCHITECTURE.md conventions).
pub fn exit_status(o: &Outcome) -> i32 {
    if o.setup_error.is_some() || o.supervisor_error.is_some() {
        return 125;
    }
    if o.timed_out {
        return 124;
    }
    if let Some((_, errno)) = &o.exec_error {
        return if *errno == libc::ENOENT { 127 } else { 126 };
    }
    if let Some(sig) = o.signal {
        return 128 + sig;
    }
    o.exit_code.unwrap_or(125)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_before_pid1_is_known_waits_for_it() {
        // No init stage either (pid 0): nothing may be signalled, the signal is kept.
        let t = Mutex::new(CellTarget::default());
        signal_cell(&t, 0, Signal::SIGTERM);
        assert_eq!(t.lock().unwrap().pending, Some(Signal::SIGTERM));
        signal_cell(&t, 0, Signal::SIGKILL);
        assert_eq!(t.lock().unwrap().pending, Some(Signal::SIGTERM));
    }

    #[test]
    fn a_cell_killed_by_oom_before_reporting_is_an_oom_not_a_nixcell_failure() {
        let unreported = || Outcome {
            unreported: true,
            supervisor_error: Some("the cell ended without reporting".into()),
            ..Default::default()
        };
        let mut o = unreported();
        o.account_oom(false);
        assert_eq!(exit_status(&o), 125);
        let mut o = unreported();
        o.account_oom(true);
        assert_eq!((o.signal, exit_status(&o)), (Some(libc::SIGKILL), 137));
        // Any other failure of the supervisor stays one.
        let mut o = Outcome {
            supervisor_error: Some("cannot attach the cell to its cgroup".into()),
            ..Default::default()
        };
        o.account_oom(true);
        assert_eq!(exit_status(&o), 125);
    }

    #[test]
    fn a_long_stream_keeps_its_head_and_its_tail() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut data = b"HEAD".to_vec();
        data.extend(std::iter::repeat_n(b'x', 100_000));
        data.extend("é".as_bytes());
        data.extend(b"TAIL");
        let c = rt.block_on(capture(&data[..], 1000));
        assert_eq!((c.bytes, c.truncated), (data.len() as u64, true));
        assert!(c.text.starts_with("HEAD") && c.text.len() == 1000);
        let tail = c.tail.unwrap();
        assert!(
            tail.ends_with("éTAIL") && tail.len() <= TAIL_BYTES,
            "{tail}"
        );
        // A tail cut inside a character starts at the next one.
        let mut data = vec![b'x'; 10];
        data.extend("é".repeat(TAIL_BYTES).as_bytes());
        data.push(b'!');
        let c = rt.block_on(capture(&data[..], 10));
        let tail = c.tail.unwrap();
        assert!(tail.ends_with("é!") && !tail.contains('\u{FFFD}'), "{tail}");
        // Within the cap: no tail.
        let c = rt.block_on(capture(&b"short"[..], 1000));
        assert_eq!((c.text.as_str(), c.tail), ("short", None));
    }
}
