//! `exec`: another process in a running container, under the same layers as its
//! command. The container's spec (saved by `create`, layers compiled) is taken with
//! this process's args, env, cwd and user; this process joins the container's cgroups,
//! then a child enters its namespaces (user first: it owns the others) and forks the
//! process inside the pid namespace, which runs the command's own last steps
//! (`sandbox::exec::exec_command`: the capability sets of its process JSON, else the
//! container's with `--cap` added, within the profile's `oci_allow`; no_new_privs,
//! rlimits, Landlock, seccomp). The intermediate child exits at once, so the process is this
//! one's child (a subreaper): waited for, or left to the caller's subreaper with
//! `--detach`, as runc does.

use super::state::{self, Record};
use super::{Globals, Res, absolute, pid1};
use crate::sandbox::RunSpec;
use crate::sandbox::proto::{self, Report};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

const SPEC_FILE: &str = "spec.json";
const MAX_SPEC: u64 = 64 << 20;

/// What `exec` is given.
#[derive(Debug, Clone, Default)]
pub struct ExecArgs {
    pub id: String,
    /// A runtime-spec process JSON (`--process`); else `args`, `env`, `cwd`, `user`.
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    /// `--cap`: added to every set of the container's process (without --process).
    pub caps: Vec<String>,
    /// `--no-new-privs` (without --process).
    pub no_new_privs: bool,
    pub tty: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// Saved by `create` beside the state: the container's planned spec.
pub fn save_spec(dir: &Path, spec: &RunSpec) -> Res {
    let bytes = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    crate::dirs::write_atomic_volatile(dir, SPEC_FILE, &bytes, 0o600)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn uid_gid(s: &str) -> Res<(u32, u32)> {
    let bad = || format!("--user {s:?}: UID[:GID] (numbers)");
    let (u, g) = s.split_once(':').unwrap_or((s, "0"));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// The exec'd process's spec: the container's, with this process's fields; and the
/// warnings for the runtime log. A `--process` file's rlimits replace the
/// container's (bounded by the profile's like `create`'s); without any, the
/// container's stay.
fn exec_spec(dir: &Path, a: &ExecArgs) -> Res<(RunSpec, Vec<String>)> {
    let bytes = crate::dirs::read_nofollow_capped(&dir.join(SPEC_FILE), MAX_SPEC)
        .map_err(|e| format!("{}: {e}", dir.join(SPEC_FILE).display()))?;
    let mut spec: RunSpec = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let mut warn = Vec::new();
    let container = spec.security.container.caps.take().unwrap_or_default();
    let profile = ("of the container", &container.policy);
    let (args, env, cwd, user, terminal) = match &a.process {
        Some(p) => {
            let bytes = crate::dirs::read_nofollow_capped(&absolute(p)?, 4 << 20)
                .map_err(|e| format!("--process {}: {e}", p.display()))?;
            let pr: super::config::Process = serde_json::from_slice(&bytes)
                .map_err(|e| format!("--process {}: {e}", p.display()))?;
            let what = format!("--process {}", p.display());
            super::process::check_rlimits(&pr.rlimits, &what)?;
            if !pr.rlimits.is_empty() {
                let mut lowered = Vec::new();
                spec.security.container.rlimits = super::process::bounded_rlimits(
                    &pr.rlimits,
                    &spec.security.rlimits,
                    &mut lowered,
                );
                warn.extend(lowered.into_iter().map(|w| format!("{what}: {w}")));
            }
            let user = (pr.user.uid, pr.user.gid);
            spec.security.container.caps = Some(super::process::oci_caps(
                pr.capabilities.as_ref(),
                pr.no_new_privileges,
                "exec --process: process",
                profile,
                &mut warn,
            )?);
            (pr.args, pr.env, pr.cwd, user, pr.terminal)
        }
        None => {
            // The container's sets, with --cap in each of them (checked again).
            let mut asked = super::process::CapsAsked::new();
            for (set, mask) in [
                ("bounding", container.sets.bounding),
                ("effective", container.sets.effective),
                ("permitted", container.sets.permitted),
                ("inheritable", container.sets.inheritable),
                ("ambient", container.sets.ambient),
            ] {
                let mut names = crate::sandbox::caps::names(mask);
                for c in &a.caps {
                    let n = crate::sandbox::caps::canonical(c)
                        .ok_or_else(|| format!("exec --cap {c:?}: unknown capability"))?;
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                asked.insert(set.into(), names);
            }
            let nnp = container.no_new_privs || a.no_new_privs;
            spec.security.container.caps = Some(super::process::oci_caps(
                Some(&asked),
                Some(nnp),
                "exec --cap: process",
                profile,
                &mut warn,
            )?);
            let user = a.user.as_deref().map(uid_gid).transpose()?;
            (
                a.args.clone(),
                a.env.clone(),
                a.cwd
                    .clone()
                    .unwrap_or_else(|| spec.cwd.display().to_string()),
                user.unwrap_or((spec.identity.uid, spec.identity.gid)),
                a.tty,
            )
        }
    };
    if args.is_empty() {
        return Err("exec: no command (args)".into());
    }
    if (user.0, user.1) != (spec.identity.uid, spec.identity.gid) {
        // Another user of the engine's ranges (`exec --user`); without ranges the
        // container has one identity. Its supplementary groups are process.user's.
        if !spec
            .identity
            .ranges
            .as_ref()
            .is_some_and(|r| r.maps_inside(user))
        {
            return Err(format!(
                "exec: user {}:{}: not mapped: the container's identities are {}",
                user.0,
                user.1,
                if spec.identity.ranges.is_some() {
                    "those of its linux.uidMappings/gidMappings".to_string()
                } else {
                    format!("{}:{} only", spec.identity.uid, spec.identity.gid)
                }
            ));
        }
        spec.identity.uid = user.0;
        spec.identity.gid = user.1;
        spec.security.container.groups.clear();
    }
    for kv in &env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!("exec: env {kv:?} is not NAME=VALUE"));
        };
        if k == "PATH" {
            // The closure's bin directories stay first, as in `create`.
            if let Some((_, path)) = spec.env.iter_mut().find(|(k, _)| k == "PATH")
                && !path.ends_with(v)
            {
                path.push(':');
                path.push_str(v);
            }
            continue;
        }
        spec.env.retain(|(ek, _)| ek != k);
        spec.env.push((k.to_string(), v.to_string()));
    }
    spec.argv = args;
    spec.cwd = PathBuf::from(cwd);
    spec.services.clear();
    // This process joins the cgroups itself (join_cgroups).
    spec.security.join_cell_cgroup = false;
    spec.oci = Some(crate::sandbox::OciHold {
        start_fd: -1,
        terminal,
    });
    if terminal && a.console_socket.is_none() {
        return Err("exec: a terminal needs --console-socket".into());
    }
    super::seccomp::check_caps_after_filters(&spec.security)
        .map_err(|e| format!("exec: capabilities: {e}"))?;
    Ok((spec, warn))
}

/// Moves this process into the container's cgroups (into `cell` where it exists: the
/// command's own, with the memory limit).
fn join_cgroups(rec: &Record) -> Res {
    let me = std::process::id().to_string();
    for (_, d) in &rec.cgroups {
        let cell = d.join(crate::sandbox::cgroup::CELL);
        let target = if cell.is_dir() { cell } else { d.clone() };
        let procs = target.join("cgroup.procs");
        std::fs::write(&procs, &me).map_err(|e| format!("{}: {e}", procs.display()))?;
    }
    Ok(())
}

/// `exec`; returns the exit status to end with.
pub fn exec(g: &Globals, a: &ExecArgs) -> Res<i32> {
    let dir = state::dir_of(&g.root()?, &a.id)?;
    let rec = Record::load(&dir)?;
    if rec.status() != "running" {
        return Err(format!(
            "cannot exec in a container that is {}",
            rec.status()
        ));
    }
    let (spec, warnings) = exec_spec(&dir, a)?;
    for w in warnings {
        g.log("warning", &w);
    }
    // The namespaces of the recorded PID 1: opened, then its identity checked again.
    let _pidfd = pid1(&rec).ok_or_else(|| format!("container {} is not running", a.id))?;
    // PID 1 is not dumpable: rootless, its namespaces are reached through its
    // children (the command, exec'd in the cell's user namespace), checked to be its
    // children after the open.
    let mut ns = open_namespaces(rec.pid);
    if ns.is_err() {
        for child in children_of(rec.pid) {
            if let Ok(n) = open_namespaces(child)
                && children_of(rec.pid).contains(&child)
            {
                ns = Ok(n);
                break;
            }
        }
    }
    let mut ns = ns?;
    // A namespace the container joined (a pod's) is not owned by its user namespace:
    // entered first, as `create` joined it.
    ns.sort_by_key(|(_, kind)| !spec.joins.iter().any(|j| j.kind.flag().bits() == *kind));
    if !rec.alive() {
        return Err(format!("container {} is not running", a.id));
    }
    join_cgroups(&rec)?;
    if spec.oci.as_ref().is_some_and(|o| o.terminal)
        && let Some(sock) = &a.console_socket
    {
        super::give_terminal(sock)?;
    }
    // SAFETY: prctl with an integer argument: the process, orphaned by the
    // intermediate child, becomes ours to wait for.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: this command runs no other thread (no runtime was started for exec); the
    // child only makes syscalls and execs or exits.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            enter(&spec, &ns, theirs.as_fd())
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(theirs);
    drop(ns);
    let _ = nix::sys::wait::waitpid(child, None);
    let (mut pid, mut failed) = (None, None);
    loop {
        match proto::recv::<Report>(ours.as_fd()) {
            Ok(Some(Report::Ready { pid1 })) => pid = Some(pid1),
            Ok(Some(Report::ExecFailed { program, errno })) => {
                failed = Some(crate::sandbox::exec::exec_message(&program, errno));
            }
            Ok(Some(Report::SetupFailed(f))) => failed = Some(format!("exec: {f}")),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let pid = pid.ok_or_else(|| {
        failed
            .clone()
            .unwrap_or("exec: the process did not start".into())
    })?;
    if let Some(e) = failed {
        // Ours to reap (a pid namespace's PID 1 ends only once all of it is reaped).
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(e);
    }
    if let Some(p) = &a.pid_file {
        super::write_pid_file(p, pid)?;
    }
    if a.detach {
        return Ok(0);
    }
    let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
        .map_err(|e| format!("waitpid: {e}"))?;
    Ok(match st {
        nix::sys::wait::WaitStatus::Exited(_, c) => c,
        nix::sys::wait::WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 1,
    })
}

fn open_namespaces(pid: i32) -> Res<Vec<(OwnedFd, libc::c_int)>> {
    // Every namespace of a cell, the user namespace first: it owns the others.
    let mut ns = Vec::new();
    for (name, kind) in crate::sandbox::ns::CELL_NAMESPACES {
        let file = match *name {
            "mount" => "mnt",
            "network" => "net",
            other => other,
        };
        let p = format!("/proc/{pid}/ns/{file}");
        let f = std::fs::File::open(&p).map_err(|e| format!("{p}: {e}"))?;
        ns.push((OwnedFd::from(f), kind.bits()));
    }
    Ok(ns)
}

/// The pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| state::parent_of(*p) == Some(pid))
                .collect()
        })
        .unwrap_or_default()
}

/// The intermediate child: joins the namespaces, forks the process into the pid
/// namespace, reports its host pid and exits.
fn enter(spec: &RunSpec, ns: &[(OwnedFd, libc::c_int)], sock: std::os::fd::BorrowedFd<'_>) -> ! {
    let fail = |what: &str, e: nix::errno::Errno| -> ! {
        let _ = proto::send(
            sock,
            &Report::SetupFailed(proto::SetupFailure {
                stage: crate::sandbox::Stage::Unshare,
                syscall: "setns".into(),
                errno: e as i32,
                detail: what.to_string(),
            }),
        );
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(125) }
    };
    for (fd, kind) in ns {
        // SAFETY: setns with a namespace descriptor we hold and its type.
        if unsafe { libc::setns(fd.as_raw_fd(), *kind) } < 0 {
            fail(
                &format!("namespace type {kind:#x}"),
                nix::errno::Errno::last(),
            );
        }
    }
    let (uid, gid) = (spec.identity.uid, spec.identity.gid);
    // The capabilities the user namespace gave are kept through the uid change: the
    // process sets its own sets from them (as PID 1's command does).
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        fail("prctl(PR_SET_KEEPCAPS)", nix::errno::Errno::last());
    }
    if let Err(e) = nix::unistd::setresgid(gid.into(), gid.into(), gid.into()) {
        fail("setresgid", e);
    }
    if let Err(e) = nix::unistd::setresuid(uid.into(), uid.into(), uid.into()) {
        fail("setresuid", e);
    }
    if let Err(e) = crate::sandbox::caps::effective_from_permitted() {
        fail("capset (effective)", e.source);
    }
    // SAFETY: single-threaded (a fresh fork); the child goes straight to exec.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => crate::sandbox::exec::exec_command(spec, sock),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = proto::send(
                sock,
                &Report::Ready {
                    pid1: child.as_raw(),
                },
            );
            // SAFETY: _exit ends the process at once.
            unsafe { libc::_exit(0) }
        }
        Err(e) => fail("fork", e),
    }
}
