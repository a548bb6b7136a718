//! `nixcell serve`: a long-lived process that runs cells for this user's `nixcell run`
//! (found through the socket in the user's private state directory, see
//! [`crate::pool`]); and the side of `nixcell run` that uses it.
//!
//! A served run goes the same way as any other: the server parses the caller's
//! command line into the same `RunRequest` and runs it through `run::prepare` and
//! `PreparedRun`, with the caller's stdin, stdout and stderr and its signals; the
//! caller prints the verdict as it would its own. What a server cannot run exactly as
//! the caller would (another environment, a terminal, an environment that depends on
//! the caller's directory) it declines, and the caller runs the cell itself.

use super::{Cli, Command, RunArgs};
use crate::pool::{self, Reply, Request};
use clap::Parser;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Init stages kept started ahead of their runs (each serves one run); 0: none.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub pool: u64,
}

/// The runs going on: their signal senders, by run number.
type Live = Arc<Mutex<HashMap<u64, tokio::sync::watch::Sender<i32>>>>;

/// `nixcell serve`: listens until SIGINT, SIGTERM or SIGHUP, which end every run going
/// on as that signal would end a `nixcell run` (the grace time, then SIGKILL), then
/// remove the socket.
pub fn main(args: &ServeArgs) -> i32 {
    match serve(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nixcell serve: {e}");
            super::EXIT_SETUP
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    // Signals are ours (below), before any thread exists: every thread inherits the
    // mask, so no run's own handlers take them; the cells' processes start unblocked.
    let mut stop = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop), None)?;
    // A cell never reads our terminal, nor is a run's terminal state saved from it.
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    let dir = pool::socket_dir(true)?;
    let path = dir.join(pool::SOCKET);
    if UnixStream::connect(&path).is_ok() {
        anyhow::bail!("{}: a server is already listening there", path.display());
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("{}: {e}", path.display())
        }
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    // The directory is 0700: nobody else could reach the socket before this.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    eprintln!("nixcell serve: listening on {}", path.display());
    // One runtime for every run and the init stages started ahead (a child is
    // awaited on the runtime it was spawned on).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let warm = pool::Warm::new(args.pool as usize, rt.handle().clone());
    let live: Live = Arc::default();
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let (live, stopping, path) = (live.clone(), stopping.clone(), path.clone());
        std::thread::spawn(move || {
            let sig = stop.wait().unwrap_or(Signal::SIGTERM);
            stopping.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&path);
            for tx in live.lock().unwrap().values() {
                let _ = tx.send(sig as i32);
            }
            while !live.lock().unwrap().is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            eprintln!("nixcell serve: stopped ({sig})");
            std::process::exit(0);
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    let count = Arc::new(AtomicU64::new(0));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if stopping.load(Ordering::SeqCst) {
            continue;
        }
        // Only our own uid: anyone else is dropped unanswered.
        match pool::peer_uid(&conn) {
            Ok(uid) if uid == me => {}
            Ok(uid) => {
                eprintln!("nixcell serve: refused a connection of uid {uid}");
                continue;
            }
            Err(_) => continue,
        }
        // Our uid inside a cell (a rootless run that sees the socket through a workdir
        // or a bind) would run cells with whatever binds it asks for: refused.
        if let Err(why) = crate::peer::outside_cells(&conn) {
            eprintln!("nixcell serve: refused a connection: {why}");
            continue;
        }
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let live = live.clone();
        let warm = warm.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(&mut conn, n, &live, &warm) {
                eprintln!("nixcell serve: run {n}: {e}");
            }
            live.lock().unwrap().remove(&n);
        });
    }
    Ok(())
}

/// Whether the server runs `args` exactly as the caller would, else why not.
fn servable(args: &mut RunArgs, req: &Request) -> Result<(), String> {
    for (k, v) in &req.env {
        if std::env::var(k).ok() != *v {
            return Err(format!("{k} differs"));
        }
    }
    let ours = pool::context();
    if ours.len() != req.context.len() {
        return Err("the process context differs".into());
    }
    for ((k, v), (_, theirs)) in ours.iter().zip(&req.context) {
        if v != theirs {
            return Err(format!(
                "{k} differs (here {v:.80}, the caller's {theirs:.80})"
            ));
        }
    }
    if args.env_paths.is_empty()
        || !args.with.is_empty()
        || !args.flakes.is_empty()
        || args.project.is_some()
    {
        return Err("the environment is not given by --env-path".into());
    }
    if args
        .profile
        .as_deref()
        .is_some_and(|p| (p.contains('/') || p.ends_with(".toml")) && Path::new(p).is_relative())
    {
        return Err("a relative profile path".into());
    }
    if args
        .ro_binds
        .iter()
        .chain(&args.binds)
        .any(|b| Path::new(b).is_relative())
    {
        return Err("a relative bind source".into());
    }
    for p in args.env_paths.iter_mut().chain(args.workdir.as_mut()) {
        if p.is_relative() {
            *p = req.cwd.join(&*p);
        }
    }
    Ok(())
}

fn handle(
    conn: &mut UnixStream,
    n: u64,
    live: &Live,
    warm: &Arc<pool::Warm>,
) -> anyhow::Result<()> {
    let stdio: [OwnedFd; 3] = pool::recv_fds(conn)?;
    let Some(req) = pool::recv::<Request>(conn)? else {
        return Ok(());
    };
    let parsed = Cli::try_parse_from(&req.args).ok().map(|c| c.command);
    let mut args = match parsed {
        Some(Command::Run(a)) => a,
        _ => {
            pool::send(conn, &Reply::Declined("not a run command line".into()))?;
            return Ok(());
        }
    };
    let served = servable(&mut args, &req)
        .and_then(|()| {
            if stdio
                .iter()
                .any(|f| nix::unistd::isatty(f).unwrap_or(false))
            {
                Err("a terminal".to_string())
            } else {
                Ok(())
            }
        })
        .and_then(|()| super::run_request(&args).map_err(|_| "a bad request".to_string()));
    let request = match served {
        Ok(r) => r,
        Err(why) => {
            eprintln!("nixcell serve: run {n}: declined: {why}");
            pool::send(conn, &Reply::Declined(why))?;
            return Ok(());
        }
    };
    pool::send(conn, &Reply::Accepted)?;
    let (tx, rx) = tokio::sync::watch::channel(0);
    live.lock().unwrap().insert(n, tx.clone());
    // The caller's signals, one byte each; its end closed: the cell is killed.
    let mut reader = conn.try_clone()?;
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        loop {
            match std::io::Read::read(&mut reader, &mut b) {
                Ok(1) => {
                    let _ = tx.send(b[0] as i32);
                }
                Ok(_) | Err(_) => {
                    let _ = tx.send(libc::SIGKILL);
                    return;
                }
            }
        }
    });
    let w = warm.clone();
    let pooled = Arc::new(AtomicBool::new(false));
    let caller = crate::run::Caller {
        stdio: Arc::new(stdio),
        signals: rx,
        init_source: Some(Arc::new(move || w.take())),
        pooled: pooled.clone(),
    };
    let ran = crate::run::prepare(request)
        .and_then(|p| warm.handle().block_on(p.for_caller(caller).run_async()));
    let reply = match ran {
        Ok(v) => {
            let how = match pooled.load(Ordering::SeqCst) {
                true => "an init stage started ahead",
                false => "a new init stage",
            };
            eprintln!(
                "nixcell serve: run {n}: served, exit {} ({how})",
                v.exit_code
            );
            Reply::Done(Box::new(v))
        }
        Err(e) => {
            eprintln!("nixcell serve: run {n}: refused: {e}");
            Reply::Refused(crate::verdict::VerdictError::of_run_error(&e))
        }
    };
    pool::send(conn, &reply)?;
    Ok(())
}

/// The socket of the caller's connection while a served run goes (for the handler).
static CONN: AtomicI32 = AtomicI32::new(-1);
/// A terminal signal that reached the caller while its run was served.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_signal(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
    let fd = CONN.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from the stack.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

fn set_handlers(handler: nix::sys::signal::SigHandler) {
    use nix::sys::signal::{SaFlags, SigAction, SigSet, Signal, sigaction};
    let act = SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty());
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores and writes (async-signal-safe).
        let _ = unsafe { sigaction(s, &act) };
    }
}

/// The served run of `args`: `Some(exit status)` when a server of this user ran it,
/// `None` when there is none or it declined (the caller runs the cell itself).
pub fn served(args: &RunArgs) -> Option<i32> {
    if args.env_paths.is_empty() || std::env::var_os(crate::run::PROGRESS_ENV).is_some() {
        return None;
    }
    let path = pool::socket_dir(false).ok()?.join(pool::SOCKET);
    let mut conn = UnixStream::connect(&path).ok()?;
    // A "server" a cell made (our uid there too, in a read-write workdir) gets nothing.
    if pool::peer_uid(&conn).ok()? != nix::unistd::geteuid().as_raw()
        || crate::peer::outside_cells(&conn).is_err()
    {
        return None;
    }
    let req = Request {
        args: std::env::args().collect(),
        cwd: std::env::current_dir().ok()?,
        env: pool::env_now(),
        context: pool::context(),
    };
    CONN.store(conn.as_raw_fd(), Ordering::SeqCst);
    set_handlers(nix::sys::signal::SigHandler::Handler(pass_signal));
    let fell_back = || {
        CONN.store(-1, Ordering::SeqCst);
        set_handlers(nix::sys::signal::SigHandler::SigDfl);
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 {
            // SAFETY: raise(3) with a signal number we were sent.
            unsafe { libc::raise(sig) };
        }
        None
    };
    let sent = pool::send_fds(&conn, &[0, 1, 2]).and_then(|()| pool::send(&mut conn, &req));
    match sent.and_then(|()| pool::recv::<Reply>(&mut conn)) {
        Ok(Some(Reply::Accepted)) => {}
        _ => return fell_back(),
    }
    let result = pool::recv::<Reply>(&mut conn);
    CONN.store(-1, Ordering::SeqCst);
    Some(match result {
        Ok(Some(Reply::Done(v))) => super::report(args, &v),
        Ok(Some(Reply::Refused(e))) => crate::verdict::report_refusal(args.json, e, true),
        other => {
            let why = match other {
                Err(e) => e.to_string(),
                _ => "it ended before the verdict".to_string(),
            };
            let e = crate::verdict::VerdictError::new(
                crate::verdict::ErrorKind::Supervisor,
                format!("nixcell serve ({}): {why}", path.display()),
                None,
            );
            crate::verdict::report_refusal(args.json, e, true)
        }
    })
}
