//! The part of an OCI bundle's `config.json` (runtime-spec `config.md`) that nixcell
//! reads. Unknown fields are ignored by serde; every field that changes what the
//! container may do and that nixcell does not carry out is named by [`Config::check`]:
//! refused when honouring it is impossible without weakening the cell, a warning in
//! the runtime log when nixcell's own layer replaces it.

pub use crate::sandbox::JoinKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest config.json read (a bundle is caller input).
const MAX_CONFIG: u64 = 4 << 20;
/// Annotation naming the store path whose closure is the container's root.
pub const CLOSURE_ANNOTATION: &str = "dev.nixcell.closure";
/// The CRI plugins' mark of a pod's sandbox (pause) container (containerd, CRI-O).
const SANDBOX_ANNOTATIONS: &[(&str, &str)] = &[
    ("io.kubernetes.cri.container-type", "sandbox"),
    ("io.kubernetes.cri-o.ContainerType", "sandbox"),
];
/// Annotation naming the nixcell profile of the container (default `default`).
pub const PROFILE_ANNOTATION: &str = "dev.nixcell.profile";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub oci_version: String,
    pub process: Option<Process>,
    pub root: Option<Root>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub linux: Option<Linux>,
    pub hooks: Option<super::hooks::Hooks>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    pub oom_score_adj: Option<i32>,
    pub no_new_privileges: Option<bool>,
    pub apparmor_profile: Option<String>,
    pub selinux_label: Option<String>,
}

/// Kinds a config.json may leave out: the cell has its own (`left_out_namespaces`).
const OWN_WHEN_LEFT_OUT: &[&str] = &["user", "cgroup"];

/// One `linux.uidMappings`/`gidMappings` range: `size` ids from `containerID` are the
/// host's from `hostID`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

/// One `process.rlimits` entry.
#[derive(Debug, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Root {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub resources: Option<Resources>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    pub seccomp: Option<serde_json::Value>,
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
    pub cgroups_path: Option<String>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    pub mount_label: Option<String>,
    pub rootfs_propagation: Option<String>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub devices: Vec<Device>,
}

#[derive(Debug, Deserialize)]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
}

#[derive(Debug, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
    #[serde(rename = "blockIO")]
    pub block_io: Option<BlockIo>,
    #[serde(default)]
    pub hugepage_limits: Vec<HugepageLimit>,
    pub network: Option<Network>,
    #[serde(default)]
    pub rdma: std::collections::BTreeMap<String, Rdma>,
    #[serde(default)]
    pub unified: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub devices: Vec<DeviceRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockIo {
    pub weight: Option<u16>,
    pub leaf_weight: Option<u16>,
    #[serde(default)]
    pub weight_device: Vec<WeightDevice>,
    #[serde(default)]
    pub throttle_read_bps_device: Vec<ThrottleDevice>,
    #[serde(default)]
    pub throttle_write_bps_device: Vec<ThrottleDevice>,
    #[serde(default, rename = "throttleReadIOPSDevice")]
    pub throttle_read_iops_device: Vec<ThrottleDevice>,
    #[serde(default, rename = "throttleWriteIOPSDevice")]
    pub throttle_write_iops_device: Vec<ThrottleDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightDevice {
    pub major: i64,
    pub minor: i64,
    pub weight: Option<u16>,
    pub leaf_weight: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct ThrottleDevice {
    pub major: i64,
    pub minor: i64,
    pub rate: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Network {
    #[serde(rename = "classID")]
    pub class_id: Option<u32>,
    #[serde(default)]
    pub priorities: Vec<NetPriority>,
}

#[derive(Debug, Deserialize)]
pub struct NetPriority {
    pub name: String,
    pub priority: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rdma {
    pub hca_handles: Option<u32>,
    pub hca_objects: Option<u32>,
}

/// One `linux.resources.devices` rule (a device cgroup rule, applied in order).
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
    pub kernel: Option<i64>,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: Option<i64>,
    pub swappiness: Option<u64>,
    #[serde(rename = "disableOOMKiller")]
    pub disable_oom_killer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub shares: Option<u64>,
    pub realtime_runtime: Option<i64>,
    pub realtime_period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Pids {
    pub limit: i64,
}

/// What `create` asks the cell layer for, taken from a checked config.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Asked {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// Mount destinations nixcell provides itself (its own /proc, /dev, /tmp, /sys absent).
pub const OWN_MOUNTS: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
    "/tmp",
    "/run",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/run/.containerenv",
];

impl Config {
    /// The store path of the closure annotation. A pod's annotations reach its sandbox
    /// (pause) container too, whose root must stay its image (the closure has no
    /// `/pause`): the closure is for the pod's other containers.
    pub fn closure(&self) -> Option<&String> {
        let sandbox = SANDBOX_ANNOTATIONS
            .iter()
            .any(|(k, v)| self.annotations.get(*k).is_some_and(|x| x == v));
        self.annotations
            .get(CLOSURE_ANNOTATION)
            .filter(|_| !sandbox)
    }

    /// Reads `<bundle>/config.json` (no link followed, size-capped).
    pub fn load(bundle: &Path) -> Result<Config, String> {
        let path = bundle.join("config.json");
        let bytes = crate::dirs::read_nofollow_capped(&path, MAX_CONFIG)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn process(&self) -> Result<&Process, String> {
        let p = self
            .process
            .as_ref()
            .ok_or("config.json: process is missing")?;
        if p.args.is_empty() {
            return Err("config.json: process.args is empty".into());
        }
        Ok(p)
    }

    /// Refusals (Err) and warnings (Ok) for what nixcell does not carry out as asked.
    pub fn check(&self) -> Result<Vec<String>, String> {
        if !self.oci_version.starts_with("1.") {
            return Err(format!(
                "config.json: ociVersion {:?}: this runtime implements 1.x",
                self.oci_version
            ));
        }
        let mut warn = Vec::new();
        let p = self.process()?;
        warn.extend(self.check_process(p)?);
        let linux = self.linux.as_ref();
        self.joins()?;
        if let Some(w) = self.left_out_namespaces()? {
            warn.push(w);
        }
        if crate::sandbox::ns::is_host_root() {
            if let Some((hu, hg)) = self.mapped_host_identity(&p.user)? {
                warn.push(format!(
                    "linux.uidMappings/gidMappings: process.user {}:{} is host {hu}:{hg}, as \
                     the mappings give; the cell's user namespace has the ranges",
                    p.user.uid, p.user.gid
                ));
            }
        } else if let Some(l) = linux
            && (!l.uid_mappings.is_empty() || !l.gid_mappings.is_empty())
        {
            warn.push(
                "linux.uidMappings/gidMappings: rootless, the cell maps process.user to \
                 its caller (the mappings are of the engine's own user namespace)"
                    .into(),
            );
        }
        if let Some(h) = &self.hooks {
            h.check()?;
        }
        self.cgroups_path()?;
        Ok(warn)
    }

    /// The host uid and gid the engine's `linux.uidMappings`/`gidMappings` give
    /// `process.user` (None without mappings): started as host root, the ranges are
    /// the cell's user namespace (`id_ranges`), so each container runs as the host
    /// identity its engine chose for it (podman `--userns=auto`, a pod's `hostUsers:
    /// false`) and the files the engine chowned for it are its own. A range reaching
    /// host id 0 is refused (a cell never runs as host root), as are an empty or
    /// overflowing range, one list without the other, and a `process.user` id or
    /// additional gid outside them.
    pub fn mapped_host_identity(&self, user: &User) -> Result<Option<(u32, u32)>, String> {
        let Some(l) = self.linux.as_ref() else {
            return Ok(None);
        };
        match (l.uid_mappings.is_empty(), l.gid_mappings.is_empty()) {
            (true, true) => return Ok(None),
            (false, true) | (true, false) => {
                return Err(
                    "config.json: linux.uidMappings and linux.gidMappings: a user namespace \
                     needs both, only one is given"
                        .into(),
                );
            }
            (false, false) => {}
        }
        let host = |maps: &[IdMapping], id: u32, what: &str, field: &str| {
            for (i, m) in maps.iter().enumerate() {
                let at = format!("config.json: linux.{what}[{i}]");
                if m.size == 0
                    || m.container_id.checked_add(m.size - 1).is_none()
                    || m.host_id.checked_add(m.size - 1).is_none()
                {
                    return Err(format!(
                        "{at}: containerID {}, hostID {}, size {}: an empty or overflowing range",
                        m.container_id, m.host_id, m.size
                    ));
                }
                if m.host_id == 0 {
                    return Err(format!(
                        "{at}: maps host id 0 (root) into the container: refused, a cell \
                         never runs as host root"
                    ));
                }
            }
            maps.iter()
                .find(|m| id >= m.container_id && id - m.container_id < m.size)
                .map(|m| m.host_id + (id - m.container_id))
                .ok_or_else(|| {
                    format!("config.json: process.user.{field} {id} is not in linux.{what}")
                })
        };
        let ids = (
            host(&l.uid_mappings, user.uid, "uidMappings", "uid")?,
            host(&l.gid_mappings, user.gid, "gidMappings", "gid")?,
        );
        for g in &user.additional_gids {
            host(&l.gid_mappings, *g, "gidMappings", "additionalGids entry")?;
        }
        Ok(Some(ids))
    }

    /// `linux.uidMappings`/`gidMappings` as the cell's user namespace ranges (checked
    /// by `mapped_host_identity`).
    pub fn id_ranges(&self) -> crate::sandbox::IdRanges {
        let conv = |maps: &[IdMapping]| {
            maps.iter()
                .map(|m| crate::sandbox::IdRange {
                    inside: m.container_id,
                    host: m.host_id,
                    count: m.size,
                })
                .collect()
        };
        let l = self.linux.as_ref();
        crate::sandbox::IdRanges {
            uid: l.map(|l| conv(&l.uid_mappings)).unwrap_or_default(),
            gid: l.map(|l| conv(&l.gid_mappings)).unwrap_or_default(),
        }
    }

    /// The namespace kinds `linux.namespaces` leaves out: the spec says the container
    /// then shares the runtime's; a cell never shares one of the host's. A user or
    /// cgroup namespace left out (as engines started as root do, on cgroup v1 too) is
    /// the cell's own, named in a warning: the container sees its own ids and cgroup
    /// root. Any other kind left out asks for the host's network, processes, IPC,
    /// host name or mounts: refused, rather than a container that silently gets
    /// something else than it asked for.
    fn left_out_namespaces(&self) -> Result<Option<String>, String> {
        let listed: Vec<&str> = self
            .linux
            .iter()
            .flat_map(|l| &l.namespaces)
            .map(|n| n.kind.as_str())
            .collect();
        let left: Vec<&str> = crate::sandbox::ns::namespace_names()
            .into_iter()
            .filter(|k| !listed.contains(k))
            .collect();
        let shared: Vec<&str> = left
            .iter()
            .copied()
            .filter(|k| !OWN_WHEN_LEFT_OUT.contains(k))
            .collect();
        if !shared.is_empty() {
            return Err(format!(
                "config.json: linux.namespaces: no {} namespace: the container would share \
                 the runtime's (podman --network/--pid/--ipc/--uts host, a pod's hostNetwork, \
                 hostPID or hostIPC); refused: a cell never shares a host namespace (list \
                 each kind; a pod's network, ipc and uts namespaces are joined by path)",
                shared.join(", ")
            ));
        }
        Ok((!left.is_empty()).then(|| {
            format!(
                "linux.namespaces leaves out {}: not shared with the runtime, the cell has \
                 its own (a cell never shares a host namespace)",
                left.join(", ")
            )
        }))
    }

    /// The namespaces to join (linux.namespaces entries with a path), each kind once:
    /// network, ipc and uts (a pod's); joining any other kind is refused.
    pub fn joins(&self) -> Result<Vec<(JoinKind, &str)>, String> {
        let mut out: Vec<(JoinKind, &str)> = Vec::new();
        let all = self.linux.as_ref().map(|l| l.namespaces.as_slice());
        for ns in all.unwrap_or_default() {
            let Some(path) = &ns.path else { continue };
            let kind = match ns.kind.as_str() {
                "network" => JoinKind::Net,
                "ipc" => JoinKind::Ipc,
                "uts" => JoinKind::Uts,
                other => {
                    return Err(format!(
                        "config.json: linux.namespaces: joining the {other} namespace {path}: not \
                         supported (a cell joins a pod's network, ipc and uts namespaces; its user, \
                         mount, pid and cgroup namespaces are always its own)"
                    ));
                }
            };
            if !Path::new(path).is_absolute() {
                return Err(format!(
                    "config.json: linux.namespaces: {} path {path:?} is not absolute",
                    ns.kind
                ));
            }
            if out.iter().any(|(k, _)| *k == kind) {
                return Err(format!(
                    "config.json: linux.namespaces: {} is given twice",
                    ns.kind
                ));
            }
            out.push((kind, path.as_str()));
        }
        Ok(out)
    }

    /// linux.cgroupsPath, cgroupfs form (absolute: under each controller's mount;
    /// relative: under nixcell's per-user cgroup); systemd's `slice:prefix:name` form
    /// and `..` are refused.
    pub fn cgroups_path(&self) -> Result<Option<&Path>, String> {
        let Some(p) = self.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) else {
            return Ok(None);
        };
        if p.contains(':') {
            return Err(format!(
                "config.json: linux.cgroupsPath {p:?}: the systemd form slice:prefix:name is not \
                 supported (nixcell manages cgroupfs cgroups; use the cgroupfs cgroup manager)"
            ));
        }
        let path = Path::new(p);
        if p.is_empty()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "config.json: linux.cgroupsPath {p:?}: not a cgroup path (empty or with ..)"
            ));
        }
        Ok(Some(path))
    }

    /// linux.resources as nixcell limits; nonsense values are refused.
    pub fn asked(&self) -> Result<Asked, String> {
        let Some(r) = self.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
            return Ok(Asked::default());
        };
        let positive = |what: &str, v: i64| -> Result<Option<u64>, String> {
            match v {
                v if v > 0 => Ok(Some(v as u64)),
                // -1 (and 0 for pids) is "no limit" in the spec.
                -1 | 0 => Ok(None),
                v => Err(format!("config.json: {what} {v} is not a limit")),
            }
        };
        let memory = match r.memory.as_ref().and_then(|m| m.limit) {
            Some(v) => positive("linux.resources.memory.limit", v)?,
            None => None,
        };
        let pids = match &r.pids {
            Some(p) => positive("linux.resources.pids.limit", p.limit)?,
            None => None,
        };
        let cpus = match r.cpu.as_ref().map(|c| (c.quota, c.period)) {
            Some((Some(q), period)) if q > 0 => {
                let period = period.unwrap_or(100_000);
                if period == 0 {
                    return Err("config.json: linux.resources.cpu.period 0".into());
                }
                Some(q as f64 / period as f64)
            }
            _ => None,
        };
        Ok(Asked { memory, cpus, pids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str) -> Config {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn resources_become_limits() {
        let c = parse(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},
            "linux":{"resources":{"memory":{"limit":67108864},"pids":{"limit":32},
            "cpu":{"quota":50000,"period":100000}}}}"#,
        );
        assert_eq!(
            c.asked().unwrap(),
            Asked {
                memory: Some(64 << 20),
                cpus: Some(0.5),
                pids: Some(32)
            }
        );
    }

    #[test]
    fn joined_namespace_is_refused() {
        let ns = parse(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},
            "linux":{"namespaces":[{"type":"pid","path":"/run/pidns/x"}]}}"#,
        );
        assert!(ns.check().unwrap_err().contains("/run/pidns/x"));
        let ns = parse(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},
            "linux":{"namespaces":[{"type":"network","path":"/run/netns/x"},
            {"type":"uts","path":"/proc/7/ns/uts"},{"type":"mount"}]}}"#,
        );
        assert_eq!(
            ns.joins().unwrap(),
            [
                (JoinKind::Net, "/run/netns/x"),
                (JoinKind::Uts, "/proc/7/ns/uts")
            ]
        );
    }
}
