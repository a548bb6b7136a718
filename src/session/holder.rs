//! The holder of one session cell: starts it, serves its socket, stops it.

use super::{
    CellInfo, CellStatus, ClientReply, ClientRequest, SessionError, check_name, clean, new_id,
    socket_path,
};
use crate::run::SessionParts;
use crate::run::harden::Usage;
use crate::run::supervise::{Captured, Outcome};
use crate::run::{hints, verdict};
use crate::sandbox::proto::{self, LayerReport, Report, Request, SetupFailure};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How an exec ended, as PID 1 reported it.
type ExecEnd = (Option<i32>, Option<i32>);

/// What the holder's threads share.
struct Shared {
    parts: SessionParts,
    info: CellInfo,
    /// The holder's end of the control socket (writes; one request at a time).
    control: Mutex<UnixStream>,
    /// Execs waiting for their end, by id.
    pending: Arc<Mutex<HashMap<u64, mpsc::Sender<ExecEnd>>>>,
    next_id: AtomicU64,
    running: AtomicUsize,
    /// When the last exec ended (or the cell was up): the idle timeout's start.
    last_active: Mutex<Instant>,
    /// Layer reports of the cell's set-up (PID 1's), part of every exec's verdict.
    setup_layers: Vec<LayerReport>,
    services_alive: Mutex<Vec<bool>>,
    owner: u32,
    rt: tokio::runtime::Handle,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    started: Instant,
}

enum Event {
    /// A report of the cell (or `None`: its control socket closed).
    Cell(Option<(Report, Vec<OwnedFd>)>),
    /// A client asked for `down`: its connection, answered once the cell is gone (by
    /// the main thread, before the holder exits).
    Down(UnixStream),
}

/// Why a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Down,
    Idle,
    Signal,
    /// The cell ended by itself (PID 1 died).
    CellGone,
}

/// The end of a held cell.
pub struct Ended {
    pub reason: EndReason,
    pub workdir: Option<crate::changes::WorkdirReport>,
}

/// Starts the session cell of `parts` and holds it until it ends; `ready` is called
/// once its services are ready and its socket listens.
pub fn hold(
    parts: SessionParts,
    name: Option<String>,
    idle: Option<Duration>,
    ready: &mut dyn FnMut(&CellInfo),
) -> Result<Ended, SessionError> {
    let dir = super::dir()?;
    // Leftovers of crashed holders go first; a live cell of that name is refused.
    let live = super::live()?;
    let id = new_id();
    let name = name.unwrap_or_else(|| id.clone());
    check_name(&name)?;
    if live.iter().any(|c| c.name == name) {
        return Err(SessionError::Taken(name));
    }
    let sock_path = socket_path(&dir, &name);
    if sock_path.as_os_str().len() >= 108 {
        return Err(SessionError::Start(format!(
            "{}: the socket's path is longer than a unix socket's address allows; set \
             XDG_STATE_HOME to a shorter directory",
            sock_path.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SessionError::Start(format!("cannot start the runtime: {e}")))?;
    let handle = rt.handle().clone();
    rt.block_on(hold_async(parts, name, id, idle, dir, handle, ready))
}

async fn hold_async(
    mut parts: SessionParts,
    name: String,
    id: String,
    idle: Option<Duration>,
    dir: PathBuf,
    rt: tokio::runtime::Handle,
    ready: &mut dyn FnMut(&CellInfo),
) -> Result<Ended, SessionError> {
    let start_err = |what: &str, e: std::io::Error| SessionError::Start(format!("{what}: {e}"));
    // The proxy serves the cell (its forwarder starts first in the cell) until the
    // holder ends.
    if let Some(p) = &mut parts.proxy {
        p.start().map_err(|e| start_err("network proxy", e))?;
    }
    let opts = parts.hardening.run_options(false);
    let crate::sandbox::spawn::Spawned { mut child, control } = crate::sandbox::spawn::spawn_init(
        false,
        false,
        None,
        &parts.spec.sources,
        opts.cell_cgroup.as_deref().map(AsRawFd::as_raw_fd),
        &opts.join_fds(),
    )
    .map_err(|e| start_err("cannot start the init stage", e))?;
    let init_pid = child.id().unwrap_or(0);
    if let Some(hook) = &opts.before_spec
        && opts.init_join.is_empty()
        && let Err(e) = hook(init_pid)
    {
        let _ = child.kill().await;
        return Err(SessionError::Start(e));
    }
    proto::send(control.as_fd(), &parts.spec).map_err(|e| start_err("control channel", e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let reader = control
        .try_clone()
        .map_err(|e| start_err("control channel", e))?;
    let pending: Arc<Mutex<HashMap<u64, mpsc::Sender<ExecEnd>>>> = Arc::default();
    {
        let tx = tx.clone();
        let pending = pending.clone();
        std::thread::spawn(move || {
            loop {
                match proto::recv_with_fds::<Report>(reader.as_fd()) {
                    Ok(Some((Report::ExecEnded { id, code, signal }, _))) => {
                        if let Some(s) = pending.lock().unwrap().remove(&id) {
                            let _ = s.send((code, signal));
                        }
                    }
                    Ok(Some(r)) => {
                        let _ = tx.send(Event::Cell(Some(r)));
                    }
                    _ => {
                        // The cell is gone: every exec still waiting learns it.
                        pending.lock().unwrap().clear();
                        let _ = tx.send(Event::Cell(None));
                        return;
                    }
                }
            }
        });
    }

    // Set-up: until PID 1 says the services are ready.
    let mut setup_layers = Vec::new();
    let mut work_layer: Option<OwnedFd> = None;
    let mut failure: Option<SetupFailure> = None;
    loop {
        match rx.recv().await {
            Some(Event::Cell(Some((Report::SessionReady, _)))) => {
                // The cell's mounts are made: its proxy needs no name on the host.
                if let Some(p) = &parts.proxy {
                    let _ = p.unlink();
                }
                break;
            }
            Some(Event::Cell(Some((Report::Layer(l), _)))) => setup_layers.push(l),
            Some(Event::Cell(Some((Report::WorkLayer, fds)))) => {
                work_layer = fds.into_iter().next()
            }
            Some(Event::Cell(Some((Report::SetupFailed(f), _)))) => failure = Some(f),
            Some(Event::Cell(Some(_))) => {}
            _ => {
                let _ = child.wait().await;
                let _ = parts.hardening.finish(false);
                return Err(SessionError::Start(match failure {
                    Some(f) => f.to_string(),
                    None => "the cell ended during its set-up".to_string(),
                }));
            }
        }
    }

    let listener = match bind(&socket_path(&dir, &name), &name) {
        Ok(l) => l,
        Err(e) => {
            let _ = proto::send(control.as_fd(), &Request::Stop);
            let _ = child.wait().await;
            let _ = parts.hardening.finish(false);
            return Err(e);
        }
    };
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let me = std::process::id();
    let info = CellInfo {
        name: name.clone(),
        id,
        holder_pid: me,
        holder_start: crate::sandbox::cgroup::start_time(me).unwrap_or(0),
        project: parts
            .project
            .built
            .as_ref()
            .and_then(|_| parts.spec.mounts.first().map(|m| m.source.clone())),
        workdir: parts
            .spec
            .mounts
            .iter()
            .find(|m| m.dest == std::path::Path::new(crate::sandbox::WORKDIR_IN_CELL))
            .map(|m| m.source.clone()),
        closure_hash: parts.closure.hash.clone(),
        services: parts.spec.services.iter().map(|s| s.name.clone()).collect(),
        started: now_unix,
        idle_secs: idle.map(|d| d.as_secs()),
        profile: parts.hardening.profile.name.clone(),
    };
    let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
    if let Err(e) = crate::dirs::write_atomic(&dir, &format!("{name}.json"), &json) {
        let _ = std::fs::remove_file(socket_path(&dir, &name));
        return Err(start_err("state file", e));
    }
    let services = parts.spec.services.len();
    let shared = Arc::new(Shared {
        parts,
        info: info.clone(),
        control: Mutex::new(control),
        pending,
        next_id: AtomicU64::new(1),
        running: AtomicUsize::new(0),
        last_active: Mutex::new(Instant::now()),
        setup_layers,
        services_alive: Mutex::new(vec![true; services]),
        owner: nix::unistd::geteuid().as_raw(),
        rt: rt.clone(),
        events: tx.clone(),
        started: Instant::now(),
    });
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || serve_client(&shared, conn));
            }
        });
    }
    ready(&info);

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| start_err("signal handler", e))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| start_err("signal handler", e))?;
    let mut down_replies: Vec<UnixStream> = Vec::new();
    let reason = loop {
        let idle_left = idle.map(|d| {
            let last = *shared.last_active.lock().unwrap();
            d.saturating_sub(last.elapsed())
        });
        let tick = async {
            match idle_left {
                Some(left) => tokio::time::sleep(left.max(Duration::from_millis(50))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Down(reply)) => {
                    down_replies.push(reply);
                    break EndReason::Down;
                }
                Some(Event::Cell(Some((Report::ServiceExited { index, .. }, _)))) => {
                    if let Some(s) = shared.services_alive.lock().unwrap().get_mut(index) {
                        *s = false;
                    }
                }
                Some(Event::Cell(Some(_))) => {}
                Some(Event::Cell(None)) | None => break EndReason::CellGone,
            },
            _ = tick => {
                let last = *shared.last_active.lock().unwrap();
                if shared.running.load(Ordering::SeqCst) == 0
                    && idle.is_some_and(|d| last.elapsed() >= d)
                {
                    break EndReason::Idle;
                }
            }
            _ = sigint.recv() => break EndReason::Signal,
            _ = sigterm.recv() => break EndReason::Signal,
        }
    };

    // Stop: no new client gets in; PID 1 stops the services and ends the cell.
    let _ = std::fs::remove_file(socket_path(&dir, &name));
    if reason != EndReason::CellGone {
        let _ = proto::send(shared.control.lock().unwrap().as_fd(), &Request::Stop);
    }
    // PID 1 gives the services 2 s after SIGTERM; past that and a margin, the init
    // stage is killed (PID 1 dies with it, and the kernel kills the rest).
    let limit = shared
        .parts
        .hardening
        .limits
        .grace
        .max(Duration::from_secs(2))
        + Duration::from_secs(3);
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    // Later downs wait for the same end.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(1), rx.recv()).await {
        if let Event::Down(r) = ev {
            down_replies.push(r);
        }
    }
    let parts = &shared.parts;
    let workdir = match (&work_layer, &parts.spec.work, parts.spec.sources.first()) {
        (Some(layer), Some(work), Some(dir)) => {
            let target = crate::changes::Target {
                dir: dir.clone(),
                path: parts.spec.mounts[0].source.clone(),
                owner: parts.spec.mounts[0].owner,
                chown: crate::sandbox::ns::is_host_root(),
                protect: work.protect.clone(),
            };
            Some(crate::changes::apply(layer, &target))
        }
        _ => None,
    };
    drop(work_layer);
    let _ = parts.hardening.finish(false);
    clean(&dir, &name);
    let shown = workdir.as_ref().and_then(|w| serde_json::to_value(w).ok());
    for conn in down_replies {
        reply(
            &conn,
            &ClientReply::Down {
                workdir: shown.clone(),
            },
        );
    }
    Ok(Ended { reason, workdir })
}

/// Binds the cell's socket, 0600 (in a 0700 directory: nobody else reaches it
/// before the mode is set). A name already bound is another holder's (what a dead
/// holder left is gone by now, `live`): never taken over.
fn bind(path: &std::path::Path, name: &str) -> Result<UnixListener, SessionError> {
    use std::os::unix::fs::PermissionsExt;
    let l = UnixListener::bind(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => SessionError::Taken(name.to_string()),
        _ => SessionError::Start(format!("{}: {e}", path.display())),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| SessionError::Start(format!("{}: {e}", path.display())))?;
    Ok(l)
}

fn reply(conn: &UnixStream, r: &ClientReply) {
    let _ = proto::send(conn.as_fd(), r);
}

/// One client connection: its peer checked, one request served.
fn serve_client(shared: &Shared, conn: UnixStream) {
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials);
    let uid = match peer {
        Ok(c) => c.uid(),
        Err(e) => {
            reply(
                &conn,
                &ClientReply::Error {
                    message: format!("cannot read the peer's credentials: {e}"),
                },
            );
            return;
        }
    };
    if uid == shared.owner
        && let Err(why) = crate::peer::outside_cells(&conn)
    {
        reply(
            &conn,
            &ClientReply::Error {
                message: format!("refused: {why}"),
            },
        );
        return;
    }
    if uid != shared.owner {
        reply(
            &conn,
            &ClientReply::Error {
                message: format!(
                    "refused: the cell belongs to uid {}, the caller is uid {uid}",
                    shared.owner
                ),
            },
        );
        return;
    }
    let (req, fds) = match proto::recv_with_fds::<ClientRequest>(conn.as_fd()) {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            reply(
                &conn,
                &ClientReply::Error {
                    message: format!("bad request: {e}"),
                },
            );
            return;
        }
    };
    let answer = match req {
        ClientRequest::Exec {
            argv,
            timeout_ms,
            capture,
            terminal,
        } if fds.len() == 3 && (!argv.is_empty() || terminal) => {
            let how = How {
                timeout: timeout_ms.map(Duration::from_millis),
                capture,
                terminal,
            };
            match run_exec(shared, &conn, argv, how, fds) {
                Ok(v) => ClientReply::Verdict {
                    verdict: serde_json::to_value(&v).unwrap_or_default(),
                },
                Err(message) => ClientReply::Error { message },
            }
        }
        ClientRequest::Exec { .. } => ClientReply::Error {
            message: "bad request: an exec needs a command and its three standard descriptors"
                .into(),
        },
        ClientRequest::Status => ClientReply::Status {
            status: Box::new(status(shared)),
        },
        ClientRequest::Down => {
            let sent = conn
                .try_clone()
                .is_ok_and(|c| shared.events.send(Event::Down(c)).is_ok());
            if sent {
                return;
            }
            ClientReply::Error {
                message: "the cell is already going down".into(),
            }
        }
    };
    reply(&conn, &answer);
}

fn status(shared: &Shared) -> CellStatus {
    let usage = shared.parts.hardening.usage_now();
    let alive = shared.services_alive.lock().unwrap();
    CellStatus {
        info: shared.info.clone(),
        services_running: shared
            .info
            .services
            .iter()
            .zip(alive.iter())
            .filter(|(_, a)| **a)
            .map(|(n, _)| n.clone())
            .collect(),
        execs_running: shared.running.load(Ordering::SeqCst),
        execs_total: shared.next_id.load(Ordering::SeqCst) - 1,
        peak_memory_bytes: usage.as_ref().and_then(|u| u.peak_memory_bytes),
        cpu_time_ms: usage
            .as_ref()
            .and_then(|u| u.cpu_time_us)
            .map(|us| us as f64 / 1000.0),
        age_secs: shared.started.elapsed().as_secs(),
    }
}

/// Counts an exec as running from its creation to its drop (the idle timeout waits).
struct Running<'a>(&'a Shared);

impl<'a> Running<'a> {
    fn start(s: &'a Shared) -> Self {
        s.running.fetch_add(1, Ordering::SeqCst);
        Running(s)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap() = Instant::now();
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the client hung up (it was killed, or gave up): its exec is killed.
fn hung_up(conn: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// A pipe for a captured stream: (read end, write end), close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// How an exec runs: its timeout, its output captured, on a terminal.
struct How {
    timeout: Option<Duration>,
    capture: bool,
    terminal: bool,
}

/// Runs one exec to its end and builds its verdict.
fn run_exec(
    shared: &Shared,
    conn: &UnixStream,
    mut argv: Vec<String>,
    how: How,
    stdio: Vec<OwnedFd>,
) -> Result<verdict::Verdict, String> {
    let How {
        timeout,
        capture,
        terminal,
    } = how;
    let _running = Running::start(shared);
    let parts = &shared.parts;
    let limits = &parts.hardening.limits;
    let start = Instant::now();
    if terminal {
        // The slave of the client's pty, three times; it becomes the exec's
        // controlling terminal in the cell.
        if capture
            || !stdio
                .iter()
                .all(|f| nix::unistd::isatty(f).unwrap_or(false))
        {
            return Err(
                "bad request: a terminal exec needs a pty on its stdin, stdout and \
                        stderr, and captures nothing"
                    .into(),
            );
        }
        if argv.is_empty() {
            argv = crate::run::pty::default_shell(&parts.spec.path_dirs);
        }
    }
    // The project's enterShell prefix (everything before the placeholder command).
    let mut full: Vec<String> = parts.spec.argv[..parts.spec.argv.len().saturating_sub(1)].to_vec();
    full.extend(argv);
    let mut captures = Vec::new();
    let mut passed: Vec<OwnedFd> = stdio;
    if capture {
        let _enter = shared.rt.enter();
        for slot in &mut passed[1..3] {
            let (r, w) = pipe()?;
            *slot = w;
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r)
                .map_err(|e| format!("pipe: {e}"))?;
            captures.push(shared.rt.spawn(crate::run::supervise::capture(
                rx,
                limits.max_output as usize,
            )));
        }
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let (end_tx, end_rx) = mpsc::channel();
    shared.pending.lock().unwrap().insert(id, end_tx);
    let oom_before = parts.hardening.usage_now().map_or(0, |u| u.oom_kills);
    let net_mark = parts.proxy.as_ref().map(crate::net::Proxy::mark);
    {
        let raw: Vec<i32> = passed
            .iter()
            .map(|f| f.as_raw_fd())
            .chain(std::iter::once(theirs.as_raw_fd()))
            .collect();
        let control = shared.control.lock().unwrap();
        proto::send_with_fds(
            control.as_fd(),
            &Request::Exec {
                id,
                argv: full.clone(),
                terminal,
            },
            &raw,
        )
        .map_err(|e| format!("the cell's control channel: {e}"))?;
    }
    drop(passed);
    drop(theirs);
    let mut out = Outcome::default();
    // Layer reports and set-up or exec failures, until the exec's execve closes it.
    while let Ok(Some(r)) = proto::recv::<Report>(ours.as_fd()) {
        match r {
            Report::Layer(l) => out.layers.push(l),
            Report::SetupFailed(f) => out.setup_error = Some(f),
            Report::ExecFailed { program, errno } => out.exec_error = Some((program, errno)),
            _ => {}
        }
    }
    let timeout = timeout.or(limits.timeout);
    let deadline = timeout.map(|t| start + t);
    let mut kill_at: Option<Instant> = None;
    let signal = |sig: Signal| {
        let _ = proto::send(
            shared.control.lock().unwrap().as_fd(),
            &Request::Signal {
                id,
                signal: sig as i32,
            },
        );
    };
    let ended = loop {
        match end_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(end) => break Some(end),
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if kill_at.is_some_and(|k| now >= k) {
            signal(Signal::SIGKILL);
            kill_at = Some(now + Duration::from_secs(3600));
        } else if kill_at.is_none() && deadline.is_some_and(|d| now >= d) {
            out.timed_out = true;
            signal(Signal::SIGTERM);
            kill_at = Some(now + limits.grace);
        } else if kill_at.is_none() && hung_up(conn) {
            signal(Signal::SIGKILL);
            kill_at = Some(now + Duration::from_secs(3600));
        }
    };
    shared.pending.lock().unwrap().remove(&id);
    match ended {
        Some((code, sig)) => {
            out.exit_code = code;
            out.signal = sig;
        }
        None => {
            out.unreported = true;
            out.supervisor_error = Some("the cell ended before the command did".into());
        }
    }
    if out.timed_out && out.signal.is_none() && out.exit_code.is_none() {
        out.signal = Some(libc::SIGKILL);
    }
    // A process that left the exec's process group may hold its output open: what it
    // wrote within a moment of the end is kept, the rest is not waited for.
    let mut streams: Vec<Option<Captured>> = Vec::new();
    for c in captures {
        streams.push(shared.rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), c)
                .await
                .ok()
                .and_then(Result::ok)
        }));
    }
    if capture {
        out.stdout = Some(streams.first().cloned().flatten().unwrap_or_default());
        out.stderr = Some(streams.get(1).cloned().flatten().unwrap_or_default());
    }
    out.wall = start.elapsed();
    let mut layers = shared.setup_layers.clone();
    layers.append(&mut out.layers);
    out.layers = layers;
    let usage = parts.hardening.usage_now();
    let oom_killed = usage.as_ref().is_some_and(|u| u.oom_kills > oom_before);
    let usage = Usage {
        peak_memory_bytes: usage.as_ref().and_then(|u| u.peak_memory_bytes),
        cpu_time_ms: usage
            .as_ref()
            .and_then(|u| u.cpu_time_us)
            .map(|us| us as f64 / 1000.0),
        source: if usage.is_some() {
            "cgroup of the whole cell since up".into()
        } else {
            "none: the cell has no cgroup".into()
        },
    };
    let mut spec = parts.spec.clone();
    spec.argv = full;
    let policy = parts
        .project
        .policy
        .as_ref()
        .map(|p| p as &dyn hints::EditPolicy);
    let package_set = parts
        .project
        .package_set
        .as_ref()
        .map(|p| p as &dyn hints::PackageSetQuery);
    // What the proxy did while the exec ran (the cell's services and other execs
    // running at the same time share it: theirs are listed too).
    let network = match (&parts.proxy, net_mark) {
        (Some(p), Some(mark)) => p.report_since(mark),
        _ => crate::net::NetworkReport::of(&parts.network),
    };
    let mut end = hints::End {
        profile: parts.hardening.profile.name.clone(),
        memory: limits.memory,
        memory_ceiling: parts.ceiling.memory,
        timeout,
        timeout_ceiling: parts.ceiling.timeout,
        tcp_ports: parts.tcp_ports.clone(),
        ..Default::default()
    };
    crate::run::network_end(&mut end, &network);
    Ok(verdict::build(
        &spec,
        &parts.closure,
        out,
        verdict::Finish {
            profile: parts.hardening.profile.name.clone(),
            layers: parts.hardening.layers.clone(),
            usage,
            oom_killed,
            // Changes land when the cell goes down.
            workdir: spec.workdir_mode().map(crate::changes::WorkdirReport::live),
            policy,
            package_set,
            end,
            network,
        },
    ))
}
