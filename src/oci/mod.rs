//! nixcell as an OCI runtime (`nixcell oci …`, or the binary called `nixcell-runc`):
//! the runc command line that containerd's runc shim and podman's conmon drive.
//!
//! `create` plans a cell whose root is the closure named by the bundle's
//! `dev.nixcell.closure` annotation, with the layers of the profile named by
//! `dev.nixcell.profile`, and starts it held (`sandbox::OciHold`): PID 1 builds the
//! root and waits on a unix socket in the container's state directory. `start`
//! connects to it: the command is forked and `start` returns once it has exec'd.
//! PID 1 (the pid written to `--pid-file`) exits with the command's status. State lives
//! under `--root` (`state.rs`); `kill` signals PID 1 through a pidfd; `delete` removes
//! the container's cgroup and directory.

pub mod cgroups;
pub mod config;
pub mod exec;
pub mod fsview;
pub mod hooks;
pub mod layers;
pub mod process;
pub mod seccomp;
pub mod state;

use crate::run::{harden, limits, plan};
use crate::sandbox::proto::{self, Report};
use crate::sandbox::{MOUNT_FD_BASE, OciHold};
use config::Config;
use state::Record;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options every subcommand shares (runc's global flags).
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub root: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub log_json: bool,
    pub debug: bool,
}

/// What `create` is given.
#[derive(Debug, Clone, Default)]
pub struct CreateArgs {
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

pub(crate) type Res<T = ()> = Result<T, String>;

impl Globals {
    pub(crate) fn root(&self) -> Res<PathBuf> {
        let r = match &self.root {
            Some(r) => r.clone(),
            None => state::default_root()?,
        };
        state::open_root(&absolute(&r)?)
    }

    /// One line in the runtime log (`--log`; JSON with `--log-format json`, which
    /// containerd's shim reads the error from), and errors on stderr as well.
    pub fn log(&self, level: &str, msg: &str) {
        if level == "error" {
            eprintln!("nixcell-runc: {msg}");
        } else if self.debug {
            eprintln!("nixcell-runc: {level}: {msg}");
        }
        let Some(path) = &self.log else { return };
        let line = if self.log_json {
            serde_json::json!({"level": level, "msg": msg, "time": state::now_rfc3339()})
                .to_string()
        } else {
            format!("{} {level} {msg}", state::now_rfc3339())
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

pub(crate) fn absolute(p: &Path) -> Res<PathBuf> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Runs `f` with the process's working directory in `dir`, so that a socket path
/// longer than sun_path's 108 bytes can be named by its file name alone.
fn in_dir<T>(dir: &Path, f: impl FnOnce() -> std::io::Result<T>) -> Res<T> {
    let back = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    std::env::set_current_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = f();
    let _ = std::env::set_current_dir(back);
    r.map_err(|e| format!("{}: {e}", dir.display()))
}

fn connect_path(path: &Path) -> Res<UnixStream> {
    let (dir, name) = (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name()
            .ok_or(format!("{}: no file name", path.display()))?,
    );
    in_dir(dir, || UnixStream::connect(name)).map_err(|e| format!("connect {e}"))
}

/// `create`: the container exists, held before its command, when this returns.
pub fn create(g: &Globals, a: &CreateArgs) -> Res {
    let id = state::check_id(&a.id)?;
    let bundle = absolute(a.bundle.as_deref().unwrap_or(Path::new(".")))?;
    let cfg = Config::load(&bundle)?;
    for w in cfg.check()? {
        g.log("warning", &format!("config.json: {w}"));
    }
    let root = g.root()?;
    let dir = root.join(id);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(format!("container with id {id} exists already"));
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let made = create_in(g, id, &bundle, &cfg, &dir, a);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}

use std::os::unix::fs::DirBuilderExt;

fn create_in(
    g: &Globals,
    id: &str,
    bundle: &Path,
    cfg: &Config,
    dir: &Path,
    a: &CreateArgs,
) -> Res {
    let process = cfg.process()?;
    // Without a closure the root is the bundle's root.path (fsview.rs).
    let closure = cfg.closure();
    let profile_name = cfg
        .annotations
        .get(config::PROFILE_ANNOTATION)
        .map_or("default", String::as_str);
    let asked = cfg.asked()?;
    let (mut setenv, mut path_extra) = (Vec::new(), None);
    for kv in &process.env {
        match kv.split_once('=') {
            Some(("PATH", v)) => path_extra = Some(v.to_string()),
            Some(_) => setenv.push(kv.clone()),
            None => return Err(format!("config.json: process.env {kv:?} is not NAME=VALUE")),
        }
    }
    // Started as root, the host identity the engine's mappings give process.user.
    let mapped = if crate::sandbox::ns::is_host_root() {
        cfg.mapped_host_identity(&process.user)?
    } else {
        None
    };
    let cell = plan::CellRequest {
        host_uid: mapped.map(|m| m.0),
        host_gid: mapped.map(|m| m.1),
        env_paths: closure.iter().map(PathBuf::from).collect(),
        image_root: closure.is_none(),
        uid: process.user.uid,
        gid: process.user.gid,
        hostname: cfg.hostname.clone().unwrap_or_else(|| "cell".into()),
        tmp_size_bytes: 256 << 20,
        argv: process.args.clone(),
        setenv,
        ..Default::default()
    };
    crate::sandbox::ns::check_userns_possible().map_err(|e| e.to_string())?;
    let (mut spec, _closure) = plan::plan(&cell).map_err(|e| format!("{e}"))?;
    if mapped.is_some() {
        spec.identity.ranges = Some(cfg.id_ranges());
    }
    // The closure's bin directories first (they are what the cell has), then the
    // caller's PATH.
    if closure.is_none() {
        image_path(&mut spec, path_extra);
        fsview::image_root(cfg, bundle, &mut spec)?;
    } else if let (Some(extra), Some((_, path))) =
        (path_extra, spec.env.iter_mut().find(|(k, _)| k == "PATH"))
    {
        path.push(':');
        path.push_str(&extra);
    }
    for w in fsview::plan(cfg, &mut spec)? {
        g.log("warning", &format!("config.json: {w}"));
    }
    spec.cwd = PathBuf::from(&process.cwd);
    if !spec.cwd.is_absolute() {
        return Err(format!(
            "config.json: process.cwd {:?} is not absolute",
            process.cwd
        ));
    }
    let profile = crate::profile::load(profile_name)
        .map_err(|e| format!("annotation {}: {e}", config::PROFILE_ANNOTATION))?;
    // The profile's limits are the ceiling of the container's: the stricter wins.
    let ceiling = cgroups::ceiling(&profile.limits);
    let flags = limits::Overrides {
        memory: cgroups::stricter(asked.memory, ceiling.memory),
        cpus: cgroups::stricter(asked.cpus, ceiling.cpus),
        pids: cgroups::stricter(asked.pids, ceiling.pids),
        ..Default::default()
    };
    let mut decided = limits::decide(&profile.limits, &limits::ProjectLimits::default(), &flags);
    // Nobody stays to time a container out: its engine stops it.
    decided.timeout = None;
    let mut hardening =
        harden::prepare(&profile, decided, &[], &mut spec).map_err(|e| e.to_string())?;
    container_process(g, cfg, &profile, &mut spec)?;
    let placed = place_cgroup(g, cfg, &mut hardening)?;
    // Into the container's cgroup, or the run's where no cgroupsPath placed it.
    cgroups::write_resources(cfg.linux.as_ref(), &ceiling, &mut hardening, |w| {
        g.log("warning", &format!("config.json: {w}"))
    })?;
    for l in &hardening.layers {
        g.log(
            "info",
            &format!("layer {}: {} ({})", l.layer, on(l.enforced), l.detail),
        );
    }

    let listener = in_dir(dir, || UnixListener::bind(state::START_SOCKET))?;
    let mut sources = spec.sources.clone();
    spec.oci = Some(OciHold {
        start_fd: MOUNT_FD_BASE + sources.len() as i32,
        terminal: process.terminal,
    });
    sources.push(Arc::new(OwnedFd::from(listener)));
    for (kind, path, fd) in open_joins(g, cfg, &profile.network)? {
        if kind == config::JoinKind::Net {
            spec.net = None;
        }
        spec.joins.push(crate::sandbox::JoinNs {
            kind,
            fd: MOUNT_FD_BASE + sources.len() as i32,
            path,
        });
        sources.push(Arc::new(fd));
    }
    if process.terminal {
        let sock = a
            .console_socket
            .as_deref()
            .ok_or("config.json: process.terminal needs --console-socket")?;
        give_terminal(sock)?;
    }
    let opts = hardening.run_options(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (pid1, layers, control) = rt.block_on(async {
        let mut sp = crate::sandbox::spawn::spawn_init(
            false,
            false,
            None,
            &sources,
            opts.cell_cgroup.as_ref().map(|f| f.as_raw_fd()),
            &opts.join_fds(),
        )
        .map_err(|e| format!("cannot start the init stage: {e}"))?;
        let held = hold(&mut sp, &spec, &opts);
        let _ = sp.child.wait().await;
        held.map(|(p, l)| (p, l, sp.control))
    })?;
    for l in &layers {
        g.log(
            "info",
            &format!("layer {}: {} ({})", l.layer, on(l.enforced), l.detail),
        );
    }
    let start_time = crate::sandbox::cgroup::start_time(pid1 as u32)
        .ok_or("the container's PID 1 ended during set-up")?;
    let mut rec = Record {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        pid: pid1,
        start_time,
        annotations: cfg.annotations.clone(),
        created: state::now_rfc3339(),
        started: false,
        cgroups: hardening.keep_cgroup().unwrap_or_default(),
    };
    let committed = commit(cfg, dir, &mut rec, &spec, a, &control, placed);
    if committed.is_err() {
        end(&rec);
    }
    committed
}

/// The run cgroup is named after `create`, which ends now: renamed after the
/// container, so that no later run takes it for a stale one (until then, a `create`
/// that dies leaves a stale run's cgroup, which the next run removes).
fn rename_cgroups(rec: &mut Record) -> Res {
    for (_, d) in rec.cgroups.iter_mut() {
        let to = d.with_file_name(format!("oci-{}-{}-{}", rec.id, rec.pid, rec.start_time));
        std::fs::rename(&*d, &to).map_err(|e| format!("cgroup {}: rename: {e}", d.display()))?;
        *d = to;
    }
    Ok(())
}

/// The container's own rlimits, seccomp filter, umask, oomScoreAdj and sysctls, on
/// top of the profile's layers.
fn container_process(
    g: &Globals,
    cfg: &Config,
    profile: &crate::profile::Profile,
    spec: &mut crate::sandbox::RunSpec,
) -> Res {
    use crate::sandbox::seccomp::SeccompKind;
    let sc = &profile.seccomp;
    let allows_seccomp = sc.mode == crate::sandbox::LayerMode::Off
        || sc.kind == SeccompKind::DenyList
        || sc.allow.iter().any(|a| a == "seccomp");
    if profile.oci_rlimits == crate::profile::OciRlimits::Config {
        process::leave_to_config(&cfg.process()?.rlimits, &mut spec.security.rlimits);
    }
    let (c, warnings) = cfg.container_process(
        &spec.security.rlimits,
        allows_seccomp,
        (&profile.name, &profile.capabilities),
    )?;
    for w in warnings {
        g.log("warning", &format!("config.json: {w}"));
    }
    spec.security.container = c;
    if spec.identity.ranges.is_some() {
        spec.security.container.groups = cfg.process()?.user.additional_gids.clone();
    }
    seccomp::check_caps_after_filters(&spec.security)
        .map_err(|e| format!("config.json: process.capabilities: {e}"))
}

/// An image root's PATH is the caller's (runc's default when it gives none); the
/// command is looked up in it.
fn image_path(spec: &mut crate::sandbox::RunSpec, asked: Option<String>) {
    let path = asked
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    spec.path_dirs = path
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    spec.env.retain(|(k, _)| k != "PATH");
    spec.env.insert(0, ("PATH".into(), path));
}

/// linux.cgroupsPath honoured: the run's cgroup is made there (true), or a warning
/// says why not (false). The cgroup of an engine's naming is not renamed after `create`.
fn place_cgroup(g: &Globals, cfg: &Config, hardening: &mut harden::Hardening) -> Res<bool> {
    let Some(path) = cfg.cgroups_path()? else {
        return Ok(false);
    };
    match hardening.place_cgroup(path) {
        Ok(None) => Ok(true),
        Ok(Some(why)) => {
            g.log(
                "warning",
                &format!("linux.cgroupsPath {}: not honoured: {why}", path.display()),
            );
            Ok(false)
        }
        // Rootless (as runc): a cgroup the caller may not make is no failure.
        Err(e) if !crate::sandbox::ns::is_host_root() => {
            g.log(
                "warning",
                &format!("linux.cgroupsPath {}: not honoured: {e}", path.display()),
            );
            Ok(false)
        }
        Err(e) => Err(format!(
            "config.json: linux.cgroupsPath {}: {e}",
            path.display()
        )),
    }
}

/// The held container's hooks (prestart, createRuntime) run and its state saved;
/// then PID 1 is told (`Request::Committed`): before that, its control socket ending
/// (this process killed) ends it, so a `create` that dies leaves no held container.
fn commit(
    cfg: &Config,
    dir: &Path,
    rec: &mut Record,
    spec: &crate::sandbox::RunSpec,
    a: &CreateArgs,
    control: &UnixStream,
    placed: bool,
) -> Res {
    if let Some(h) = cfg.hooks.as_ref().filter(|h| !h.is_empty()) {
        h.save(dir)?;
        let mut st = serde_json::to_value(rec.state()).map_err(|e| e.to_string())?;
        st["status"] = "creating".into();
        hooks::run("prestart", &h.prestart, &st, &rec.bundle)?;
        hooks::run("createRuntime", &h.create_runtime, &st, &rec.bundle)?;
    }
    if !placed {
        rename_cgroups(rec)?;
    }
    rec.save(dir)?;
    exec::save_spec(dir, spec)?;
    if let Some(p) = &a.pid_file {
        write_pid_file(p, rec.pid)?;
    }
    proto::send(control.as_fd(), &proto::Request::Committed)
        .map_err(|e| format!("the container's PID 1 ended during set-up: {e}"))
}

/// The namespaces config.json names to join, each opened and checked to be a
/// namespace of its kind (NS_GET_NSTYPE), and logged; a network namespace only when
/// the profile allows network at all (the pod's network replaces the cell's own, and
/// nixcell's network policy does not reach into it).
fn open_joins(
    g: &Globals,
    cfg: &Config,
    policy: &crate::net::NetPolicy,
) -> Res<Vec<(config::JoinKind, PathBuf, OwnedFd)>> {
    let mut out = Vec::new();
    for (kind, path) in cfg.joins()? {
        if kind == config::JoinKind::Net && policy.mode() == "none" {
            return Err(format!(
                "config.json: linux.namespaces: joining the network namespace {path}: the \
                 profile (annotation {}) allows no network, and a joined network namespace is \
                 the pod's network; name a profile with a [network] allow list",
                config::PROFILE_ANNOTATION
            ));
        }
        let f = std::fs::File::open(path)
            .map_err(|e| format!("config.json: linux.namespaces: {} {path}: {e}", kind.name()))?;
        let fd = OwnedFd::from(f);
        match crate::sandbox::ns::ns_type(fd.as_fd()) {
            Ok(t) if t == kind.flag().bits() => {}
            Ok(_) | Err(_) => {
                return Err(format!(
                    "config.json: linux.namespaces: {path} is not a namespace of type {}",
                    kind.name()
                ));
            }
        }
        g.log("info", &format!("namespace {}: joined {path}", kind.name()));
        if kind == config::JoinKind::Net {
            g.log(
                "info",
                &format!(
                    "layer network: not enforced (the network namespace {path} is joined: the \
                     cell's network is the pod's; the profile's network policy does not apply)"
                ),
            );
        }
        out.push((kind, PathBuf::from(path), fd));
    }
    Ok(out)
}

/// A container's PID 1 killed and waited for (its pidfd readable), its cgroups removed.
fn end(rec: &Record) {
    if let Some(fd) = pid1(rec) {
        let _ = send_signal(&fd, nix::sys::signal::Signal::SIGKILL);
        // The pidfd becomes readable when the process has ended.
        let mut pfd = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16));
    }
    crate::sandbox::cgroup::RunCgroup {
        version: crate::sandbox::cgroup::Version::V1,
        dirs: rec.cgroups.clone(),
        notes: Vec::new(),
    }
    .remove();
}

/// `--pid-file`: written atomically (a caller polling it never reads a part).
fn write_pid_file(p: &Path, pid: i32) -> Res {
    let p = absolute(p)?;
    let d = p.parent().unwrap_or(Path::new("/"));
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("--pid-file: no file name")?;
    crate::dirs::write_atomic_volatile(d, name, pid.to_string().as_bytes(), 0o644)
        .map_err(|e| format!("--pid-file {}: {e}", p.display()))
}

fn on(b: bool) -> &'static str {
    if b { "enforced" } else { "not enforced" }
}

/// Sends the spec and reads reports until PID 1 holds (or the set-up failed): PID 1's
/// pid and the layers reported.
fn hold(
    sp: &mut crate::sandbox::spawn::Spawned,
    spec: &crate::sandbox::RunSpec,
    opts: &crate::run::supervise::RunOptions,
) -> Res<(i32, Vec<proto::LayerReport>)> {
    if let (Some(hook), Some(pid), true) =
        (&opts.before_spec, sp.child.id(), opts.init_join.is_empty())
    {
        hook(pid)?;
    }
    proto::send(sp.control.as_fd(), spec).map_err(|e| format!("sending the spec: {e}"))?;
    // PID 1 and the init stage both write here: Created may come before Ready.
    let (mut pid1, mut created, mut layers) = (None, false, Vec::new());
    loop {
        if let (Some(p), true) = (pid1, created) {
            return Ok((p, layers));
        }
        match proto::recv::<Report>(sp.control.as_fd()) {
            Ok(Some(Report::Ready { pid1: p })) => pid1 = Some(p),
            Ok(Some(Report::Layer(l))) => layers.push(l),
            Ok(Some(Report::SetupFailed(f))) => return Err(f.to_string()),
            Ok(Some(Report::Created)) => created = true,
            Ok(Some(_)) => {}
            Ok(None) => return Err("the cell ended during set-up".into()),
            Err(e) => return Err(format!("control channel: {e}")),
        }
    }
}

/// A pseudo-terminal for the command: the master goes to the caller's console socket
/// (SCM_RIGHTS, as runc sends it), the slave becomes this process's stdio, which the
/// init stage and the command inherit.
pub(crate) fn give_terminal(sock: &Path) -> Res {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
    let conn = connect_path(sock).map_err(|e| format!("--console-socket: {e}"))?;
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("--console-socket: sendmsg: {e}"))?;
    for fd in 0..3 {
        // SAFETY: dup2 of a descriptor we own onto the standard ones.
        if unsafe { libc::dup2(pty.slave.as_raw_fd(), fd) } < 0 {
            return Err(format!(
                "dup2 of the terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// `start`: the held command runs; returns once it has exec'd.
pub fn start(g: &Globals, id: &str) -> Res {
    let dir = state::dir_of(&g.root()?, id)?;
    let mut rec = Record::load(&dir)?;
    match rec.status() {
        "created" => {}
        s => return Err(format!("cannot start a container that is {s}")),
    }
    let conn = in_dir(&dir, || UnixStream::connect(state::START_SOCKET))
        .map_err(|e| format!("container {id}: the start socket: {e}"))?;
    let _ = std::fs::remove_file(dir.join(state::START_SOCKET));
    rec.started = true;
    rec.save(&dir)?;
    // Reports until the command's copy of the channel closes at exec.
    let started = (|| loop {
        match proto::recv::<Report>(conn.as_fd()) {
            Ok(None) => return Ok(()),
            Ok(Some(Report::ExecFailed { program, errno })) => {
                return Err(crate::sandbox::exec::exec_message(&program, errno));
            }
            Ok(Some(Report::SetupFailed(f))) => return Err(f.to_string()),
            Ok(Some(Report::Layer(l))) => g.log(
                "info",
                &format!("layer {}: {} ({})", l.layer, on(l.enforced), l.detail),
            ),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("container {id}: {e}")),
        }
    })();
    if started.is_ok() {
        let h = hooks::Hooks::load(&dir)?;
        let st = serde_json::to_value(rec.state()).map_err(|e| e.to_string())?;
        hooks::run_warn(g, "poststart", &h.poststart, &st, &rec.bundle);
    }
    started
}

/// `state`: the runtime-spec state JSON.
pub fn state_json(g: &Globals, id: &str) -> Res<String> {
    let dir = state::dir_of(&g.root()?, id)?;
    let rec = Record::load(&dir)?;
    serde_json::to_string_pretty(&rec.state()).map_err(|e| e.to_string())
}

/// A signal as runc's `kill` takes it: `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Res<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let bad = || format!("unknown signal {s:?}");
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| bad())
}

/// A pidfd on the container's PID 1, or None when it has ended: opened, then the
/// recorded start time checked, so a reused pid is never signalled.
pub(crate) fn pid1(rec: &Record) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    rec.alive().then_some(fd)
}

fn send_signal(fd: &OwnedFd, sig: nix::sys::signal::Signal) -> Res {
    // SAFETY: pidfd_send_signal with our pidfd, a signal, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(format!("kill: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `kill`: PID 1 forwards SIGINT/TERM/HUP/QUIT/USR1/USR2 to the command; SIGKILL ends
/// the whole container.
pub fn kill(g: &Globals, id: &str, signal: &str) -> Res {
    let sig = parse_signal(signal)?;
    let dir = state::dir_of(&g.root()?, id)?;
    let rec = Record::load(&dir)?;
    let fd = pid1(&rec).ok_or_else(|| format!("container {id} is not running"))?;
    send_signal(&fd, sig)
}

/// `delete`: a stopped (or, as runc does, a created) container's cgroup and state go;
/// a running one only with `force`, killed first.
pub fn delete(g: &Globals, id: &str, force: bool) -> Res {
    let root = g.root()?;
    let dir = match state::dir_of(&root, id) {
        Ok(d) => d,
        // runc: deleting what does not exist is fine with --force.
        Err(_) if force && state::check_id(id).is_ok() && !root.join(id).exists() => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let rec = match Record::load(&dir) {
        Ok(r) => r,
        // A `create` that was killed before it recorded anything.
        Err(_) if force => {
            return std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()));
        }
        Err(e) => return Err(e),
    };
    if rec.started && !force && rec.alive() {
        return Err(format!(
            "cannot delete container {id} that is running (use --force)"
        ));
    }
    let h = hooks::Hooks::load(&dir).unwrap_or_else(|e| {
        g.log("warning", &format!("poststop hooks not run: {e}"));
        hooks::Hooks::default()
    });
    end(&rec);
    std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let st = serde_json::to_value(rec.state()).map_err(|e| e.to_string())?;
    hooks::run_warn(g, "poststop", &h.poststop, &st, &rec.bundle);
    Ok(())
}

/// `ps`: the host pids of the container's processes (PID 1 and its descendants: in a
/// pid namespace every orphan is PID 1's), as a JSON array with `json`, else one per
/// line under a `PID` heading. /proc/PID/stat is read, which needs no ptrace access.
pub fn ps(g: &Globals, id: &str, json: bool) -> Res<String> {
    let dir = state::dir_of(&g.root()?, id)?;
    let rec = Record::load(&dir)?;
    if !rec.alive() {
        return Err(format!("container {id} is not running"));
    }
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, state::parent_of(p)?)))
        .collect();
    let mut pids = vec![rec.pid];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        pids.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    // A process `exec` started is PID 1's sibling: found in the container's cgroups.
    for (_, d) in &rec.cgroups {
        for sub in [d.join(crate::sandbox::cgroup::CELL), d.clone()] {
            let text = std::fs::read_to_string(sub.join("cgroup.procs")).unwrap_or_default();
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    if json {
        return serde_json::to_string(&pids).map_err(|e| e.to_string());
    }
    let mut out = String::from("PID");
    for p in pids {
        out.push_str(&format!("\n{p}"));
    }
    Ok(out)
}

/// `features` (runtime-spec features.md): what this runtime honours.
pub fn features() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": fsview::FLAG_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            // What the default profile may grant (its [capabilities] oci_allow).
            "capabilities": crate::profile::load("default")
                .map(|p| p.capabilities.allow)
                .unwrap_or_default(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false,
                       "rdma": true},
            "seccomp": {
                "enabled": true,
                "actions": seccomp::ACTIONS,
                "operators": seccomp::OPERATORS,
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": seccomp::KNOWN_FLAGS,
                "supportedFlags": seccomp::FLAGS
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "dev.nixcell.closure": "the store path whose closure is the container's root",
            "dev.nixcell.profile": "the nixcell profile of the container's layers (default: default)"
        }
    }))
    .unwrap_or_default()
}
