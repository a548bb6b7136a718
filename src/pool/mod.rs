//! `nixcell serve`'s channel: the socket a running server listens on, in the caller's
//! private state directory, and the messages a `nixcell run` and the server exchange.
//!
//! Who may use a server: the socket is `0600` in a `0700` directory of the caller's,
//! and both ends check the other's uid with `SO_PEERCRED` (a server only serves its
//! own uid; a client only uses a server of its own uid). The client passes its
//! stdin, stdout and stderr as descriptors (`SCM_RIGHTS`), then its request; the
//! server answers `Accepted` or `Declined` (the client then runs the cell itself),
//! and after the run the verdict. While the run goes, each byte the client sends is a
//! signal for the cell; the client gone (EOF) kills the cell.

use crate::run::verdict::{Verdict, VerdictError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// The variables of the caller's environment a run depends on: a server serves a
/// caller only when its own values are the same (else the caller runs the cell itself).
pub const ENV_KEYS: &[&str] = &[
    "HOME",
    "LANG",
    "TERM",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "NIX_STORE_DIR",
    "NIX_PATH",
    "NIXCELL_EVAL_PATHS",
    "NIXCELL_LOG_KEEP",
    "NIXCELL_LOG_MAX_AGE",
    "NIXCELL_PROGRESS",
];

/// What else a cell inherits from the process that starts it, as `KEY value` pairs:
/// umask, ids and groups, ignored signals, resource limits, seccomp, no_new_privs and capabilities
/// (`/proc/self/status`), namespaces, cgroups. A server serves a caller only when its
/// own are the same.
pub fn context() -> Vec<(String, String)> {
    let mut c = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for l in status.lines() {
        if let Some((k, v)) = l.split_once(':')
            && matches!(
                k,
                "Umask"
                    | "Uid"
                    | "Gid"
                    | "Groups"
                    | "NoNewPrivs"
                    | "Seccomp"
                    | "Seccomp_filters"
                    | "CapInh"
                    | "CapPrm"
                    | "CapEff"
                    | "CapBnd"
                    | "CapAmb"
            )
        {
            c.push((k.to_string(), v.trim().to_string()));
        }
        // Ignored signals survive execve(2): those of 1..=31 the command does not get
        // the default of (`sandbox::exec`), glibc's internal ones (32, 33) aside.
        if let Some(v) = l.strip_prefix("SigIgn:") {
            let mut reset = 1u64 << (libc::SIGPIPE - 1);
            for s in crate::sandbox::pid1::FORWARDED {
                reset |= 1 << (*s as i32 - 1);
            }
            let ign = u64::from_str_radix(v.trim(), 16).unwrap_or(u64::MAX);
            c.push(("SigIgn".into(), format!("{:x}", ign & 0x7fff_ffff & !reset)));
        }
    }
    for ns in ["mnt", "user", "pid", "net", "ipc", "uts", "cgroup"] {
        let link = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap_or_default();
        c.push((format!("ns/{ns}"), link.display().to_string()));
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    c.push(("cgroup".into(), cgroup));
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    c.push(("limits".into(), limits));
    c
}

/// The largest request or reply accepted.
const MAX_FRAME: usize = 16 << 20;

/// A run asked of a server.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The caller's command line (`nixcell run ...`), parsed again by the server.
    pub args: Vec<String>,
    /// The caller's working directory: relative paths of the command line are its.
    pub cwd: PathBuf,
    /// The caller's values of [`ENV_KEYS`].
    pub env: Vec<(String, Option<String>)>,
    /// The caller's [`context`].
    pub context: Vec<(String, String)>,
}

/// The server's answers, in order: `Accepted` or `Declined`, then after `Accepted`
/// one of `Done` or `Refused`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Accepted,
    /// Not served (why): the caller runs the cell itself.
    Declined(String),
    /// The run's verdict.
    Done(Box<Verdict>),
    /// The run was refused before anything ran.
    Refused(VerdictError),
}

/// The caller's values of [`ENV_KEYS`].
pub fn env_now() -> Vec<(String, Option<String>)> {
    ENV_KEYS
        .iter()
        .map(|k| (k.to_string(), std::env::var(k).ok()))
        .collect()
}

/// The directory of the socket (created `0700` when `create`).
pub fn socket_dir(create: bool) -> Result<PathBuf, crate::dirs::DirError> {
    if create {
        crate::dirs::private_dir(crate::dirs::Base::State, "serve")
    } else {
        let d = crate::dirs::root(crate::dirs::Base::State)?.join("serve");
        crate::dirs::check_private(&d)?;
        Ok(d)
    }
}

/// The socket's name in [`socket_dir`].
pub const SOCKET: &str = "socket";

/// The uid at the other end of a unix socket.
pub fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let c = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(c.uid())
}

/// Writes one frame: its length (u32, little endian), then its JSON.
pub fn send<T: Serialize>(s: &mut UnixStream, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame)
}

/// Reads one frame; `None` at EOF before it.
pub fn recv<T: for<'de> Deserialize<'de>>(s: &mut UnixStream) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Sends one byte with the descriptors `fds` (`SCM_RIGHTS`).
pub fn send_fds(s: &UnixStream, fds: &[i32]) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(&[0u8])];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives the byte [`send_fds`] sent and exactly `N` descriptors with it.
pub fn recv_fds<const N: usize>(s: &UnixStream) -> std::io::Result<[OwnedFd; N]> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for f in list {
                // SAFETY: the kernel installed these descriptors for us.
                got.push(unsafe { OwnedFd::from_raw_fd(f) });
            }
        }
    }
    got.try_into().map_err(|v: Vec<OwnedFd>| {
        std::io::Error::other(format!("{} descriptors passed, {N} expected", v.len()))
    })
}

/// Init stages started ahead of their runs (`nixcell serve --pool N`), each handed out
/// once: a run takes one (which has nothing of any run yet: it is given its
/// descriptors, then its spec) and a new one is started in its place.
pub struct Warm {
    waiting: std::sync::Mutex<Vec<crate::sandbox::spawn::Spawned>>,
    size: usize,
    /// The runtime the init stages are spawned on, and the runs go on.
    handle: tokio::runtime::Handle,
}

impl Warm {
    pub fn new(size: usize, handle: tokio::runtime::Handle) -> std::sync::Arc<Warm> {
        let w = std::sync::Arc::new(Warm {
            waiting: std::sync::Mutex::default(),
            size,
            handle,
        });
        w.fill();
        w
    }

    /// Starts init stages until `size` wait.
    fn fill(&self) {
        let _rt = self.handle.enter();
        while self.waiting.lock().unwrap().len() < self.size {
            match crate::sandbox::spawn::spawn_waiting() {
                Ok(s) => self.waiting.lock().unwrap().push(s),
                Err(e) => {
                    eprintln!("nixcell serve: cannot start an init stage ahead: {e}");
                    return;
                }
            }
        }
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// One waiting init stage, if any; another is started in the background.
    pub fn take(self: &std::sync::Arc<Self>) -> Option<crate::sandbox::spawn::Spawned> {
        let s = self.waiting.lock().unwrap().pop();
        let me = self.clone();
        self.handle.spawn_blocking(move || me.fill());
        s
    }
}
