//! The process part of config.json: what nixcell carries out (rlimits, seccomp,
//! umask, oomScoreAdj, sysctls: `sandbox::ociproc`), what it refuses, and the
//! warnings for what its own layers replace (capabilities, supplementary groups,
//! LSM labels, no_new_privs).

use super::config::{Config, Process};
use crate::sandbox::LayerMode;
use crate::sandbox::limits::RlimitSpec;
use crate::sandbox::ociproc::{self, ContainerProcess};
use std::collections::BTreeSet;
use std::str::FromStr;

/// `linux.sysctl` keys of the namespaces every cell has of its own: its network
/// namespace (`net.*`) and its IPC namespace (System V IPC, POSIX message queues).
const SYSCTL_PREFIXES: &[&str] = &[
    "net.",
    "kernel.shm",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "fs.mqueue.",
];

impl Config {
    /// Refusals and warnings of the process part (called by [`Config::check`]).
    pub(crate) fn check_process(&self, p: &Process) -> Result<Vec<String>, String> {
        let mut warn = Vec::new();
        if !p.user.additional_gids.is_empty() {
            warn.push(format!(
                "process.user.additionalGids {:?}: not granted: a cell has no supplementary \
                 groups (its user namespace maps one gid)",
                p.user.additional_gids
            ));
        }
        if let Some(m) = p.user.umask
            && m > 0o777
        {
            return Err(format!(
                "config.json: process.user.umask {m:#o} is not a mask"
            ));
        }
        if let Some(caps) = &p.capabilities {
            let mut asked = BTreeSet::new();
            for (set, names) in caps {
                for n in names {
                    if caps::Capability::from_str(n).is_err() {
                        return Err(format!(
                            "config.json: process.capabilities.{set}: unknown capability {n:?}"
                        ));
                    }
                    asked.insert(n.as_str());
                }
            }
            if !asked.is_empty() {
                warn.push(format!(
                    "process.capabilities: not granted (the profile grants none; a cell runs \
                     without capabilities): {}",
                    asked.into_iter().collect::<Vec<_>>().join(" ")
                ));
            }
        }
        check_rlimits(&p.rlimits, "config.json")?;
        if let Some(v) = p.oom_score_adj
            && !(-1000..=1000).contains(&v)
        {
            return Err(format!(
                "config.json: process.oomScoreAdj {v} is outside -1000..1000"
            ));
        }
        if p.no_new_privileges == Some(false) {
            warn.push("process.noNewPrivileges false: nixcell always sets no_new_privs".into());
        }
        for (what, v) in [
            ("process.apparmorProfile", &p.apparmor_profile),
            ("process.selinuxLabel", &p.selinux_label),
            (
                "linux.mountLabel",
                &self.linux.as_ref().and_then(|l| l.mount_label.clone()),
            ),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                warn.push(format!(
                    "{what} {v:?}: not applied: nixcell sets no LSM label; its Landlock, \
                     seccomp and namespace layers confine the container"
                ));
            }
        }
        for (k, v) in self.linux.iter().flat_map(|l| l.sysctl.iter()) {
            check_sysctl(k, v)?;
        }
        Ok(warn)
    }

    /// The container's process settings for the cell, with warnings for rlimits
    /// lowered to what the profile (or the runtime's own hard limit) allows.
    ///
    /// A value above the cap is lowered, not refused: engines send large defaults
    /// (podman: RLIMIT_NOFILE 1048576) that would otherwise refuse every container,
    /// and the profile is the policy a container may only narrow. The warning names
    /// what was asked and what the container gets.
    pub fn container_process(
        &self,
        profile_rlimits: &RlimitSpec,
        seccomp_allows_seccomp: bool,
    ) -> Result<(ContainerProcess, Vec<String>), String> {
        let p = self.process()?;
        let mut warn = Vec::new();
        let rlimits = bounded_rlimits(&p.rlimits, profile_rlimits, &mut warn);
        let seccomp = match self.linux.as_ref().and_then(|l| l.seccomp.as_ref()) {
            Some(v) => Some(super::seccomp::compile(v, seccomp_allows_seccomp)?),
            None => None,
        };
        let sysctl = self
            .linux
            .iter()
            .flat_map(|l| l.sysctl.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok((
            ContainerProcess {
                rlimits,
                seccomp: seccomp.filter(|s| !s.filters.is_empty()),
                umask: p.user.umask,
                oom_score_adj: p.oom_score_adj.map(|v| oom_score_floor(v, &mut warn)),
                sysctl,
            },
            warn,
        ))
    }
}

/// Refuses an unknown `RLIMIT_*` type, one given twice, a soft limit above its hard
/// one; `what` names the file (config.json, exec's --process file).
pub(crate) fn check_rlimits(rl: &[super::config::Rlimit], what: &str) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for r in rl {
        if ociproc::resource(&r.kind).is_none() {
            return Err(format!(
                "{what}: process.rlimits: unknown type {:?}",
                r.kind
            ));
        }
        if !seen.insert(r.kind.as_str()) {
            return Err(format!("{what}: process.rlimits: {} given twice", r.kind));
        }
        if r.soft > r.hard {
            return Err(format!(
                "{what}: process.rlimits: {} soft {} above hard {}",
                r.kind, r.soft, r.hard
            ));
        }
    }
    Ok(())
}

/// Checked rlimits (`check_rlimits`) for the cell, which sets them after the
/// profile's (`ociproc::apply_rlimits`: at most the hard limits in force), with a
/// warning for each above the profile's limit or the runtime's own hard limit.
pub(crate) fn bounded_rlimits(
    rl: &[super::config::Rlimit],
    profile_rlimits: &RlimitSpec,
    warn: &mut Vec<String>,
) -> Vec<ociproc::Rlimit> {
    let caps = profile_caps(profile_rlimits);
    rl.iter()
        .map(|r| {
            let (cap, whose) = match caps.iter().find(|(n, _)| *n == r.kind) {
                Some((_, c)) => (*c, "the profile's limit"),
                None => (
                    ociproc::resource(&r.kind)
                        .and_then(|res| nix::sys::resource::getrlimit(res).ok())
                        .map_or(u64::MAX, |(_, h)| h),
                    "the runtime's hard limit",
                ),
            };
            if r.hard > cap {
                warn.push(format!(
                    "process.rlimits {} {}:{} lowered to {}:{cap} ({whose})",
                    r.kind,
                    r.soft,
                    r.hard,
                    r.soft.min(cap)
                ));
            }
            ociproc::Rlimit {
                name: r.kind.clone(),
                soft: r.soft,
                hard: r.hard,
            }
        })
        .collect()
}

/// `process.oomScoreAdj` at least this runtime's own value, which the cell inherits:
/// going lower needs CAP_SYS_RESOURCE, which a cell never has. Kubernetes asks for
/// -997 for its Guaranteed pods: raised, with a warning, rather than refused.
fn oom_score_floor(v: i32, warn: &mut Vec<String>) -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if v < own {
        warn.push(format!(
            "process.oomScoreAdj {v} raised to {own}, the runtime's own (a cell cannot lower it)"
        ));
        return own;
    }
    v
}

/// The limits the profile sets (the container's can only be lower).
fn profile_caps(r: &RlimitSpec) -> Vec<(&'static str, u64)> {
    if r.mode == LayerMode::Off {
        return Vec::new();
    }
    let mut v = vec![("RLIMIT_CORE", 0)];
    for (n, x) in [
        ("RLIMIT_NOFILE", r.open_files),
        ("RLIMIT_FSIZE", r.file_size),
        ("RLIMIT_CPU", r.cpu_seconds),
        ("RLIMIT_NPROC", r.nproc),
        ("RLIMIT_AS", r.address_space),
    ] {
        if let Some(x) = x {
            v.push((n, x));
        }
    }
    v
}

/// A sysctl key the cell may set: of its own network or IPC namespace, plain words.
fn check_sysctl(k: &str, v: &str) -> Result<(), String> {
    let plain = !k.is_empty()
        && k.split('.').all(|p| {
            !p.is_empty()
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        });
    if !plain {
        return Err(format!(
            "config.json: linux.sysctl {k:?}: not a sysctl name"
        ));
    }
    if !SYSCTL_PREFIXES.iter().any(|p| k.starts_with(p)) {
        return Err(format!(
            "config.json: linux.sysctl {k}: refused: only keys of the container's own \
             network and IPC namespaces can be set ({}*)",
            SYSCTL_PREFIXES.join("*, ")
        ));
    }
    if v.contains('\0') || v.len() > 4096 {
        return Err(format!("config.json: linux.sysctl {k}: bad value"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(process: &str, linux: &str) -> Config {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/"{process}}},"linux":{{{linux}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn bad_process_fields_are_refused() {
        for (p, l, what) in [
            (
                r#","rlimits":[{"type":"RLIMIT_TEST","soft":1,"hard":1}]"#,
                "",
                "RLIMIT_TEST",
            ),
            (
                r#","rlimits":[{"type":"RLIMIT_NOFILE","soft":9,"hard":1}]"#,
                "",
                "soft 9 above hard 1",
            ),
            (
                r#","capabilities":{"bounding":["CAP_TEST"]}"#,
                "",
                "CAP_TEST",
            ),
            (r#","oomScoreAdj":1001"#, "", "1001"),
            (
                "",
                r#""sysctl":{"kernel.core_pattern":"|/x"}"#,
                "kernel.core_pattern",
            ),
            ("", r#""sysctl":{"net/../../x":"1"}"#, "not a sysctl name"),
        ] {
            let e = parse(p, l).check().unwrap_err();
            assert!(e.contains(what), "{p} {l}: {e}");
        }
    }

    #[test]
    fn rlimits_above_the_profile_are_lowered_with_a_warning() {
        let c = parse(
            r#","rlimits":[{"type":"RLIMIT_NOFILE","soft":1048576,"hard":1048576}],
            "capabilities":{"bounding":["CAP_CHOWN"]}"#,
            r#""sysctl":{"net.ipv4.ip_forward":"1"}"#,
        );
        let w = c.check().unwrap();
        assert!(w.iter().any(|w| w.contains("CAP_CHOWN")), "{w:?}");
        let prof = RlimitSpec {
            mode: LayerMode::Required,
            open_files: Some(1024),
            ..Default::default()
        };
        let (cp, w) = c.container_process(&prof, true).unwrap();
        assert!(w[0].contains("lowered to 1024:1024"), "{w:?}");
        assert_eq!(cp.sysctl, vec![("net.ipv4.ip_forward".into(), "1".into())]);
    }
}
