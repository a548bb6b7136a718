//! The cell's side of the network proxy: a process forked by PID 1 before the
//! services and the command, that accepts TCP connections on `127.0.0.1:PORT` in the
//! cell's network namespace and passes each one, byte for byte, to the proxy's unix
//! socket bound into the cell. It reads nothing of what it passes: the policy is the
//! proxy's, on the host; a command that bypasses this forwarder and talks to the
//! socket itself meets the same proxy.

use super::{At, Stage, StageResult};
use nix::unistd::{ForkResult, Pid, fork};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The loopback port the forwarder listens on inside the cell.
pub const PORT_IN_CELL: u16 = 3128;
/// Where the proxy's socket is bound in the cell.
pub const SOCKET_IN_CELL: &str = "/run/nixcell/proxy.sock";
/// Connections relayed at once (two threads and four descriptors each); past it a
/// new one is closed at once. The forwarder is PID 1's child, outside the command's cgroup: this bounds
/// what a cell opening connections in a loop costs the host.
const MAX_RELAYS: usize = 128;

/// The forwarder of a run: where it listens, where it forwards to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetSpec {
    pub port: u16,
    pub socket: PathBuf,
}

/// Binds the listener (so the port is open before anything else of the cell runs)
/// and forks the forwarder; returns its pid.
pub fn start(net: &NetSpec) -> StageResult<Pid> {
    let listener = TcpListener::bind(("127.0.0.1", net.port)).at(
        Stage::Forwarder,
        "bind",
        format!("127.0.0.1:{}", net.port),
    )?;
    // SAFETY: PID 1 is single-threaded; the child runs only the loop below.
    match unsafe { fork() }.at(Stage::Forwarder, "fork", "")? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            keep_only(listener.as_raw_fd());
            serve(listener, &net.socket)
        }
    }
}

/// Closes every descriptor but `keep` (the control socket, the logs, the mount
/// sources are not the forwarder's); the standard ones become /dev/null.
fn keep_only(keep: i32) {
    super::sys::stdio_to_null();
    // SAFETY: close_range on descriptors nothing of this process uses.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

fn serve(listener: TcpListener, socket: &Path) -> ! {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(tcp) = conn else {
            // Out of descriptors or memory for a moment: no busy loop meanwhile.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        if live.load(Ordering::SeqCst) >= MAX_RELAYS {
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let socket = socket.to_path_buf();
        let done = live.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                relay(tcp, &socket);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(0) }
}

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// One connection: both directions until each side has said it is done.
fn relay(tcp: TcpStream, socket: &Path) {
    let Ok(unix) = UnixStream::connect(socket) else {
        return;
    };
    let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            copy(&tcp2, &unix2);
            let _ = unix2.shutdown(Shutdown::Write);
        });
    copy(&unix, &tcp);
    let _ = tcp.shutdown(Shutdown::Write);
    if let Ok(t) = up {
        let _ = t.join();
    }
}
