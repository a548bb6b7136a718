//! Who is at the other end of a unix socket of nixcell's own (a session's holder,
//! `nixcell serve`): same uid is not enough, since a cell's processes have the
//! caller's uid on the host in rootless runs; the peer's user namespace tells a cell's
//! process from the caller's.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The peer must live in this process's user namespace: a cell's process (each cell has a
/// user namespace of its own) that reaches the socket, through a workdir or a bind
/// showing the state directory, has the caller's uid on the host but is refused. The
/// peer is the process that connected (SO_PEERPIDFD, else its pid), still alive when
/// its namespace is read, so no other process can stand in for it.
pub fn outside_cells(conn: &UnixStream) -> Result<(), String> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int and its length into the buffers given.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    let pidfd = if r == 0 && fd >= 0 {
        // SAFETY: a new descriptor the kernel gave us.
        unsafe { OwnedFd::from_raw_fd(fd) }
    } else {
        // Older kernels: the pid the connection recorded.
        let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| format!("the peer's credentials: {e}"))?;
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid(), 0) } as libc::c_int;
        if fd < 0 {
            return Err("the peer is gone".into());
        }
        // SAFETY: as above.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|e| format!("the peer's pidfd: {e}"))?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or("the peer is gone or in another pid namespace")?;
    let ns = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let theirs = ns(format!("/proc/{pid}/ns/user"))
        .map_err(|e| format!("the peer's user namespace: {e}"))?;
    let ours = ns("/proc/self/ns/user".into()).map_err(|e| format!("user namespace: {e}"))?;
    // Still alive: the pid read above was the peer's.
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    if unsafe { libc::poll(&mut p, 1, 0) } != 0 {
        return Err("the peer is gone".into());
    }
    if theirs != ours {
        return Err("the caller runs in another user namespace (inside a cell?)".into());
    }
    Ok(())
}
