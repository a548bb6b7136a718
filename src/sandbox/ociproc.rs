//! What an OCI container's `config.json` asks of its process, carried out by the cell
//! on top of nixcell's own layers, which it can only narrow: `process.rlimits` (at
//! most the limits in force), a `linux.seccomp` filter stacked on nixcell's (the
//! kernel runs every filter and the strictest answer wins), `process.user.umask`,
//! `process.oomScoreAdj` and the namespaced `linux.sysctl` keys of the cell's own
//! network and IPC namespaces.

use super::seccomp::Filter;
use super::{Stage, StageError, StageResult};
use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde::{Deserialize, Serialize};

/// The container's own process settings (empty for a run that is not a container).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerProcess {
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub seccomp: Option<ContainerSeccomp>,
    #[serde(default)]
    pub umask: Option<u32>,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// (key, value), e.g. ("net.ipv4.ip_forward", "1"), checked by the supervisor.
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// The container's capability sets and no_new_privs; None (not a container):
    /// no capability, no_new_privs.
    #[serde(default)]
    pub caps: Option<super::caps::OciCaps>,
    /// Supplementary groups (`process.user.additionalGids`): only in a user namespace
    /// with an engine's ranges (`Identity::ranges`), where they are mapped gids.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// One `process.rlimits` entry: `RLIMIT_*` name, soft and hard limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rlimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The compiled `linux.seccomp` filters, installed after nixcell's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSeccomp {
    pub filters: Vec<Filter>,
    /// seccomp(2) flags of each filter (SECCOMP_FILTER_FLAG_LOG).
    pub flags: u32,
    /// What the config asked, for the layer report.
    pub detail: String,
}

/// The resource an `RLIMIT_*` name of the runtime spec stands for.
pub fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Sets the container's rlimits after the profile's: each at most the hard limit in
/// force (the profile's, or the one inherited), so the config only lowers. What was
/// set is appended to `detail`; a lowered value says what was asked.
pub fn apply_rlimits(limits: &[Rlimit], detail: &mut String) -> StageResult<bool> {
    let mut set = Vec::new();
    for l in limits {
        let res = resource(&l.name)
            .ok_or_else(|| StageError::new(Stage::Rlimits, "setrlimit", &l.name, Errno::EINVAL))?;
        let (_, in_force) =
            getrlimit(res).map_err(|e| StageError::new(Stage::Rlimits, "getrlimit", &l.name, e))?;
        let hard = l.hard.min(in_force);
        let soft = l.soft.min(hard);
        setrlimit(res, soft, hard)
            .map_err(|e| StageError::new(Stage::Rlimits, "setrlimit", &l.name, e))?;
        let short = l.name.trim_start_matches("RLIMIT_").to_ascii_lowercase();
        set.push(if (soft, hard) == (l.soft, l.hard) {
            format!("{short}={soft}:{hard}")
        } else {
            format!("{short}={soft}:{hard} (config asked {}:{})", l.soft, l.hard)
        });
    }
    if !set.is_empty() {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str("config.json: ");
        detail.push_str(&set.join(", "));
    }
    Ok(!set.is_empty())
}

/// Installs the container's filters (after nixcell's: they can only narrow what
/// nixcell allows). Fails closed: the container asked for them.
pub fn install_seccomp(s: &ContainerSeccomp) -> StageResult<usize> {
    for f in &s.filters {
        if f.is_empty() || f.len() > 4096 {
            return Err(StageError::new(
                Stage::Seccomp,
                "seccomp(SECCOMP_SET_MODE_FILTER)",
                format!(
                    "config.json linux.seccomp: a filter of {} instructions",
                    f.len()
                ),
                Errno::EINVAL,
            ));
        }
        super::seccomp::install_raw(f, s.flags).map_err(|e| {
            StageError::new(
                Stage::Seccomp,
                "seccomp(SECCOMP_SET_MODE_FILTER)",
                "config.json linux.seccomp",
                e,
            )
        })?;
    }
    Ok(s.filters.len())
}

/// `process.user.additionalGids` of the command (before its capabilities are set:
/// setgroups(2) takes CAP_SETGID in the cell's user namespace).
pub fn apply_groups(c: &ContainerProcess) -> super::StageResult {
    use super::At;
    if c.groups.is_empty() {
        return Ok(());
    }
    let gids: Vec<nix::unistd::Gid> = c
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).at(
        super::Stage::IdMaps,
        "setgroups",
        format!("process.user.additionalGids {:?}", c.groups),
    )
}

/// `process.user.umask` of the command.
pub fn apply_umask(c: &ContainerProcess) {
    if let Some(m) = c.umask {
        // SAFETY: umask(2) only sets the calling process's mask.
        unsafe { libc::umask(m as libc::mode_t) };
    }
}

/// Writes the `linux.sysctl` keys. Called by PID 1 before the root is built: the
/// keys are those of the cell's own network and IPC namespaces, which /proc/sys
/// shows to the process that opens it, whatever procfs it is. The supervisor has
/// checked each key (a namespaced prefix, no path syntax).
pub fn write_sysctls(keys: &[(String, String)]) -> StageResult {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for (k, v) in keys {
        if k.is_empty() || k.split(['.', '/']).any(|p| p.is_empty() || p == "..") {
            return Err(StageError::new(Stage::Pid1, "open", k, Errno::EINVAL));
        }
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        f.write_all(v.as_bytes())
            .map_err(|e| io_err("write", &format!("{path} = {v}"), e))?;
    }
    Ok(())
}

fn io_err(call: &'static str, what: &str, e: std::io::Error) -> StageError {
    StageError::new(
        Stage::Pid1,
        call,
        format!("linux.sysctl {what}"),
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}
