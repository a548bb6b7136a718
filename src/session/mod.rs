//! Cells that live: `nixcell up` starts a session cell and holds it; `exec`, `ps` and
//! `down` talk to its holder over a unix socket (docs/ARCHITECTURE.md, sessions).
//!
//! The holder is the supervisor of one session cell: it prepared the cell like a run
//! (`run::prepare`, then [`crate::run::PreparedRun::into_session`]), its PID 1 keeps the
//! services running and starts one fresh, fully confined process per exec
//! (`sandbox::session`). The holder listens on `<state>/nixcell/sessions/<name>.sock`
//! (a 0700 directory, the socket 0600) and serves only connections whose peer (checked
//! with SO_PEERCRED) has the uid that started the cell. An exec runs as the cell's
//! identity whoever asks.
//!
//! Lifetime: `down`, the idle timeout (`[session] idle` of the profile), SIGINT or
//! SIGTERM to the holder stop the services (SIGTERM, grace, SIGKILL), end the cell and
//! land the copy-on-write workdir's changes (`changes::apply`, journaled as for a run).
//! If the holder dies (SIGKILL), PID 1 sees its control socket close and kills the
//! cell at once; the changes not landed are lost (the real workdir was never written),
//! and the next `up`, `ps`, `exec` or `down` removes the socket, the state file and
//! the cgroup left behind.

pub mod holder;

use crate::dirs::{self, Base};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Sub-directory of the state root holding the live cells' sockets and state files.
pub const SUB: &str = "sessions";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Usage(String),
    #[error("no live cell named '{0}' (see 'nixcell ps')")]
    NotFound(String),
    #[error("a cell named '{0}' is already up (see 'nixcell ps')")]
    Taken(String),
    #[error(transparent)]
    Dir(#[from] crate::dirs::DirError),
    #[error("cell '{name}': {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cell '{name}': {message}")]
    Holder { name: String, message: String },
    #[error("{0}")]
    Start(String),
}

/// A name a cell may have: 1 to 32 of `[A-Za-z0-9_-]`, starting with a letter or digit
/// (it names files in the state directory).
pub fn check_name(name: &str) -> Result<(), SessionError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SessionError::Usage(format!(
            "--name '{}': a cell's name is 1 to 32 letters, digits, '-' or '_', starting \
             with a letter or digit",
            crate::changes::shown(name)
        )))
    }
}

/// What the state file of a live cell says (written by its holder).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CellInfo {
    pub name: String,
    pub id: String,
    /// The holder's pid and start time (a pid reused by another process is not it).
    pub holder_pid: u32,
    pub holder_start: u64,
    pub project: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub closure_hash: String,
    pub services: Vec<String>,
    /// Seconds since the epoch when the cell was up.
    pub started: u64,
    /// The idle timeout, in seconds, when there is one.
    pub idle_secs: Option<u64>,
    pub profile: String,
}

impl CellInfo {
    /// Whether the holder that wrote this is still running.
    /// A zombie (killed, not reaped yet) is not.
    pub fn alive(&self) -> bool {
        crate::sandbox::cgroup::start_time(self.holder_pid) == Some(self.holder_start)
    }
}

/// What a client asks the holder.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientRequest {
    /// Run `argv` in the cell; stdin, stdout and stderr travel with the request. With
    /// `capture`, the holder captures stdout and stderr into the verdict instead.
    /// With `terminal`, the three descriptors are a pty's slave, the exec's
    /// controlling terminal (an empty `argv`: the cell's shell).
    Exec {
        argv: Vec<String>,
        timeout_ms: Option<u64>,
        capture: bool,
        #[serde(default)]
        terminal: bool,
    },
    Status,
    Down,
}

/// The live state of a cell, for `ps`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CellStatus {
    #[serde(flatten)]
    pub info: CellInfo,
    /// Services still running.
    pub services_running: Vec<String>,
    pub execs_running: usize,
    pub execs_total: u64,
    /// Peak memory and CPU time of the whole cell since it was up (its cgroup).
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<f64>,
    pub age_secs: u64,
}

/// The holder's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientReply {
    Verdict { verdict: serde_json::Value },
    Status { status: Box<CellStatus> },
    Down { workdir: Option<serde_json::Value> },
    Error { message: String },
}

/// The directory of live cells, created 0700 if missing.
pub fn dir() -> Result<PathBuf, SessionError> {
    Ok(dirs::private_dir(Base::State, SUB)?)
}

fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

fn info_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Reads a state file: a regular file, not followed if a link, size-capped.
fn read_info(path: &Path) -> Option<CellInfo> {
    let bytes = dirs::read_nofollow_capped(path, 64 << 10).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes what a dead holder left: its socket, its state file, and (for its cgroup)
/// the stale run cgroups of this user.
fn clean(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(socket_path(dir, name));
    let _ = std::fs::remove_file(info_path(dir, name));
}

/// Every live cell of this user, after removing what crashed holders left behind.
pub fn live() -> Result<Vec<CellInfo>, SessionError> {
    let dir = dir()?;
    let mut cells = Vec::new();
    let mut stale = false;
    let entries = std::fs::read_dir(&dir).map_err(|e| crate::dirs::DirError::Io(dir.clone(), e))?;
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(name) = fname
            .strip_suffix(".json")
            .or_else(|| fname.strip_suffix(".sock"))
        else {
            continue;
        };
        if check_name(name).is_err() {
            continue;
        }
        match read_info(&info_path(&dir, name)) {
            Some(info) if info.alive() && info.name == name => {
                if fname.ends_with(".json") {
                    cells.push(info);
                }
            }
            _ => {
                // A state file being written has its socket already: only a state
                // file whose holder is gone, or a socket with no state file older
                // than a few seconds, is stale.
                let young = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() < 5);
                if fname.ends_with(".json") || !young {
                    clean(&dir, name);
                    stale = true;
                }
            }
        }
    }
    if stale && let Ok(h) = crate::sandbox::cgroup::Hierarchy::detect() {
        h.clean_stale_runs(nix::unistd::geteuid().as_raw());
    }
    cells.sort_by(|a, b| a.started.cmp(&b.started).then(a.name.cmp(&b.name)));
    Ok(cells)
}

/// Connects to the holder of the live cell `name`.
fn connect(name: &str) -> Result<UnixStream, SessionError> {
    check_name(name)?;
    let cells = live()?;
    if !cells.iter().any(|c| c.name == name) {
        return Err(SessionError::NotFound(name.to_string()));
    }
    let dir = dir()?;
    UnixStream::connect(socket_path(&dir, name)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            SessionError::NotFound(name.to_string())
        }
        _ => SessionError::Io {
            name: name.to_string(),
            source: e,
        },
    })
}

/// Sends one request (with `fds`) and reads the reply.
fn ask(name: &str, req: &ClientRequest, fds: &[RawFd]) -> Result<ClientReply, SessionError> {
    answer(name, &send(name, req, fds)?)
}

/// Sends `req` (and `fds`) to the holder of `name`; the connection its answer comes on.
fn send(name: &str, req: &ClientRequest, fds: &[RawFd]) -> Result<UnixStream, SessionError> {
    let conn = connect(name)?;
    crate::sandbox::proto::send_with_fds(conn.as_fd(), req, fds).map_err(|source| {
        SessionError::Io {
            name: name.to_string(),
            source,
        }
    })?;
    Ok(conn)
}

/// The holder's answer on `conn`.
fn answer(name: &str, conn: &UnixStream) -> Result<ClientReply, SessionError> {
    let io = |source| SessionError::Io {
        name: name.to_string(),
        source,
    };
    match crate::sandbox::proto::recv::<ClientReply>(conn.as_fd()).map_err(io)? {
        Some(ClientReply::Error { message }) => Err(SessionError::Holder {
            name: name.to_string(),
            message,
        }),
        Some(r) => Ok(r),
        None => Err(SessionError::Holder {
            name: name.to_string(),
            message: "the holder closed the connection without an answer (the cell ended?)".into(),
        }),
    }
}

/// Runs `argv` in the cell `name`; the verdict, as JSON.
pub fn exec(
    name: &str,
    argv: Vec<String>,
    timeout: Option<std::time::Duration>,
    capture: bool,
) -> Result<serde_json::Value, SessionError> {
    if argv.is_empty() {
        return Err(SessionError::Usage(
            "exec: no command given (nixcell exec NAME -- COMMAND ...)".into(),
        ));
    }
    let stdio = [
        std::io::stdin().as_fd().as_raw_fd(),
        std::io::stdout().as_fd().as_raw_fd(),
        std::io::stderr().as_fd().as_raw_fd(),
    ];
    let req = ClientRequest::Exec {
        argv,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        capture,
        terminal: false,
    };
    verdict_of(name, ask(name, &req, &stdio)?)
}

fn verdict_of(name: &str, r: ClientReply) -> Result<serde_json::Value, SessionError> {
    match r {
        ClientReply::Verdict { verdict } => Ok(verdict),
        _ => Err(unexpected(name)),
    }
}

/// Starts `argv` (empty: the cell's shell) in the cell `name` on the pty whose slave
/// is given (closed here once sent); the connection the verdict comes on
/// ([`terminal_verdict`]).
pub fn exec_on_terminal(
    name: &str,
    argv: Vec<String>,
    timeout: Option<std::time::Duration>,
    slave: OwnedFd,
) -> Result<UnixStream, SessionError> {
    let s = slave.as_raw_fd();
    let req = ClientRequest::Exec {
        argv,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        capture: false,
        terminal: true,
    };
    send(name, &req, &[s, s, s])
}

/// The verdict of an exec started by [`exec_on_terminal`], once it ended.
pub fn terminal_verdict(name: &str, conn: &UnixStream) -> Result<serde_json::Value, SessionError> {
    verdict_of(name, answer(name, conn)?)
}

fn unexpected(name: &str) -> SessionError {
    SessionError::Holder {
        name: name.to_string(),
        message: "unexpected answer".into(),
    }
}

/// The status of the live cell `name`.
pub fn status(name: &str) -> Result<CellStatus, SessionError> {
    match ask(name, &ClientRequest::Status, &[])? {
        ClientReply::Status { status } => Ok(*status),
        _ => Err(unexpected(name)),
    }
}

/// Stops the cell `name` and waits until it is gone; what came back of its workdir.
pub fn down(name: &str) -> Result<Option<serde_json::Value>, SessionError> {
    match ask(name, &ClientRequest::Down, &[])? {
        ClientReply::Down { workdir } => Ok(workdir),
        _ => Err(unexpected(name)),
    }
}

/// A fresh id: 12 hex digits from the kernel's random source.
fn new_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b.copy_from_slice(&(t ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    hex::encode(b)
}
