//! The control channel between the supervisor and the cell.
//!
//! A `SOCK_STREAM` unix socket pair; each message is a little-endian `u32` length
//! followed by that many bytes of JSON. The supervisor sends the [`RunSpec`] once; the
//! cell answers with [`Report`]s. EOF on the cell's end means the supervisor is gone.
//!
//! [`RunSpec`]: crate::sandbox::RunSpec

use super::Stage;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, RawFd};

/// argv[1] that makes the binary run the init stage instead of the CLI.
pub const INIT_ARG: &str = "__nixcell-init";
/// The descriptor the init stage finds its end of the control socket on.
pub const INIT_FD: RawFd = 3;
/// Descriptor of the init stage holding `cgroup.procs` of the run's command cgroup
/// (opened by the supervisor), when the run has a cgroup.
pub const CELL_CGROUP_FD: RawFd = 4;
/// argv[2] of an init stage started ahead of its run (`nixcell serve`'s warm pool):
/// before its spec it receives a [`Placement`] with the descriptors it would have been
/// started with.
pub const POOLED_ARG: &str = "pooled";

/// What comes with the descriptors a pooled init stage receives, in this order: stdin,
/// stdout, stderr, `cgroup.procs` (when `cgroup`), then `sources` mount sources.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placement {
    pub cgroup: bool,
    pub sources: usize,
}

/// Largest message accepted, so a corrupt length cannot make us allocate gigabytes.
const MAX_MESSAGE: u32 = 64 << 20;

/// What the cell tells the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// PID 1 of the cell exists; `pid1` is its pid in the supervisor's namespace.
    Ready { pid1: i32 },
    /// Set-up failed before the command ran.
    SetupFailed(SetupFailure),
    /// The copy-on-write layer of /work exists; its tmpfs travels with this message
    /// (SCM_RIGHTS).
    WorkLayer,
    /// A security layer was applied, or could not be and the profile allowed that.
    Layer(LayerReport),
    /// `execve` of the command failed.
    ExecFailed { program: String, errno: i32 },
    /// A service (by its index in the spec) ended while the command ran.
    ServiceExited {
        index: usize,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// An OCI container's root is built; PID 1 waits for `start` (see `OciHold`).
    Created,
    /// The command ended.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A session cell (`RunSpec::session`): its services are ready and PID 1 takes
    /// [`Request`]s.
    SessionReady,
    /// An exec of a session cell (its id in the [`Request::Exec`]) ended.
    ExecEnded {
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// What the holder of a session cell asks of its PID 1, after the spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Start `argv` as a fresh process of the cell, confined like a run's command.
    /// Four descriptors travel with it (SCM_RIGHTS): its stdin, stdout, stderr and the
    /// socket its layer reports and set-up or exec failures go to. With `terminal`,
    /// its stdin is a pty's slave that becomes its controlling terminal.
    Exec {
        id: u64,
        argv: Vec<String>,
        #[serde(default)]
        terminal: bool,
    },
    /// Signal an exec's process group.
    Signal { id: u64, signal: i32 },
    /// Stop the services (SIGTERM, grace, SIGKILL), kill the rest, end the cell.
    Stop,
    /// An OCI container's state is saved (`create` sends it once, after
    /// [`Report::Created`]): PID 1 holds on for `start` from here; the control
    /// socket ending before it means `create` died, and PID 1 ends the container.
    Committed,
}

/// A failed set-up step, named so that a user can act on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetupFailure {
    pub stage: Stage,
    pub syscall: String,
    pub errno: i32,
    pub detail: String,
}

impl std::fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "set-up stage '{}' failed: {}({}): {}",
            self.stage,
            self.syscall,
            self.detail,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if self.stage == Stage::Unshare {
            write!(
                f,
                " (this kernel or user may not create namespaces; see 'nixcell doctor')"
            )?;
        }
        Ok(())
    }
}

/// Whether a layer holds, and why not when it does not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct LayerReport {
    pub layer: String,
    pub enforced: bool,
    pub detail: String,
}

/// Writes one message on a blocking descriptor.
pub fn send<T: Serialize>(fd: BorrowedFd<'_>, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    FdIo(fd).write_all(&buf)
}

/// Writes one message with a descriptor attached (SCM_RIGHTS).
pub fn send_with_fd<T: Serialize>(fd: BorrowedFd<'_>, msg: &T, pass: RawFd) -> io::Result<()> {
    send_with_fds(fd, msg, &[pass])
}

/// Writes one message with descriptors attached (SCM_RIGHTS, on its first byte).
pub fn send_with_fds<T: Serialize>(fd: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    let cmsg = [ControlMessage::ScmRights(fds)];
    let iov = [io::IoSlice::new(&buf)];
    let n = loop {
        match sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    FdIo(fd).write_all(&buf[n..])
}

/// Reads one message from a blocking descriptor; `None` on a clean EOF.
pub fn recv<T: DeserializeOwned>(fd: BorrowedFd<'_>) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match FdIo(fd).read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    read_body(fd, len).map(Some)
}

/// Reads the body of a message whose length header was `len`, and decodes it.
fn read_body<T: DeserializeOwned>(fd: BorrowedFd<'_>, len: [u8; 4]) -> io::Result<T> {
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message of {len} bytes is too large"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    FdIo(fd).read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 253;

/// Reads one message and the descriptors sent with it from a blocking descriptor
/// (close-on-exec); `None` on a clean EOF.
pub fn recv_with_fds<T: DeserializeOwned>(
    fd: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<std::os::fd::OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut len = [0u8; 4];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    while got < 4 {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [io::IoSliceMut::new(&mut len[got..])];
        let msg = match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(list) = c {
                // SAFETY: the kernel installed these descriptors for us.
                fds.extend(list.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        if msg.bytes == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += msg.bytes;
    }
    Ok(Some((read_body(fd, len)?, fds)))
}

/// Splits a byte stream into messages; used by the async supervisor.
pub fn decode_frames<T: DeserializeOwned>(buf: &mut Vec<u8>) -> io::Result<Vec<T>> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 4 {
            return Ok(out);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control message too large",
            ));
        }
        let end = 4 + len as usize;
        if buf.len() < end {
            return Ok(out);
        }
        let msg = serde_json::from_slice(&buf[4..end])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.push(msg);
        buf.drain(..end);
    }
}

/// Read/Write on a borrowed descriptor without taking ownership.
struct FdIo<'a>(BorrowedFd<'a>);

impl Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(self.0, buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.0, buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_join() {
        let a = Report::Ready { pid1: 7 };
        let b = Report::Exited {
            code: Some(3),
            signal: None,
        };
        let mut buf = Vec::new();
        for m in [&a, &b] {
            let body = serde_json::to_vec(m).unwrap();
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        let tail = buf.split_off(buf.len() - 3);
        let got: Vec<Report> = decode_frames(&mut buf).unwrap();
        assert_eq!(got, vec![a]);
        buf.extend_from_slice(&tail);
        let got: Vec<Report> = decode_frames(&mut buf).unwrap();
        assert_eq!(got, vec![b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_rejected() {
        let mut buf = u32::MAX.to_le_bytes().to_vec();
        assert!(decode_frames::<Report>(&mut buf).is_err());
    }
}
