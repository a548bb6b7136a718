//! The process part of config.json: what nixcell carries out (rlimits, seccomp,
//! umask, oomScoreAdj, sysctls: `sandbox::ociproc`; capabilities and no_new_privs
//! within the profile's `[capabilities]`), what it refuses, and the warnings for what
//! its own layers replace (supplementary groups, LSM labels).

use super::config::{Config, Process};
use crate::sandbox::LayerMode;
use crate::sandbox::caps::{self as capsets, CapSets, OciCaps, OciCapsPolicy};
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
        // Granted (oci/mod.rs) only with an engine's ranges, started as root.
        let ranged = crate::sandbox::ns::is_host_root()
            && self
                .linux
                .as_ref()
                .is_some_and(|l| !l.gid_mappings.is_empty());
        if !p.user.additional_gids.is_empty() && !ranged {
            warn.push(format!(
                "process.user.additionalGids {:?}: not granted: a cell without an engine's \
                 ranges (linux.gidMappings, started as root) has no supplementary groups \
                 (its user namespace maps one gid)",
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
        check_capabilities(p.capabilities.as_ref())?;
        check_rlimits(&p.rlimits, "config.json")?;
        if let Some(v) = p.oom_score_adj
            && !(-1000..=1000).contains(&v)
        {
            return Err(format!(
                "config.json: process.oomScoreAdj {v} is outside -1000..1000"
            ));
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
    /// lowered to what the profile (its limits left after `leave_to_config`, and
    /// RLIMIT_CORE 0) or the runtime's own hard limit allows.
    ///
    /// A value above the cap is lowered, not refused: engines send large defaults
    /// (podman: RLIMIT_NOFILE 1048576, above what even root may set on some hosts)
    /// that would otherwise refuse every container. The warning names what was asked
    /// and what the container gets.
    pub fn container_process(
        &self,
        profile_rlimits: &RlimitSpec,
        seccomp_allows_seccomp: bool,
        caps: (&str, &OciCapsPolicy),
    ) -> Result<(ContainerProcess, Vec<String>), String> {
        let p = self.process()?;
        let mut warn = Vec::new();
        let oci_caps = oci_caps(
            p.capabilities.as_ref(),
            p.no_new_privileges,
            "config.json: process",
            caps,
            &mut warn,
        )?;
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
                caps: Some(oci_caps),
                groups: Vec::new(),
            },
            warn,
        ))
    }
}

/// `process.capabilities`: set name to `CAP_*` names.
pub type CapsAsked = std::collections::BTreeMap<String, Vec<String>>;

/// The five set names of `process.capabilities`.
const SETS: &[&str] = &[
    "bounding",
    "effective",
    "permitted",
    "inheritable",
    "ambient",
];

/// Every set and capability name of `process.capabilities` known (the kernel
/// interface has no other: "MUST cause an error").
pub(crate) fn check_capabilities(caps: Option<&CapsAsked>) -> Result<(), String> {
    for (set, names) in caps.into_iter().flatten() {
        if !SETS.contains(&set.as_str()) {
            return Err(format!(
                "config.json: process.capabilities: unknown set {set:?} (known: {})",
                SETS.join(", ")
            ));
        }
        for n in names {
            if caps::Capability::from_str(n).is_err() {
                return Err(format!(
                    "config.json: process.capabilities.{set}: unknown capability {n:?}"
                ));
            }
        }
    }
    Ok(())
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

/// The capability sets and no_new_privs of a container's process (`what` names it
/// in messages: config.json's process or `exec --process`), each set bounded by the
/// profile's `oci_allow`: a capability beyond it refuses the container, or (with
/// `oci_beyond = "drop"`) is dropped with a warning. No `capabilities`: none (as
/// runc); no `noNewPrivileges`: not set, unless the profile says "always".
pub fn oci_caps(
    asked: Option<&CapsAsked>,
    nnp: Option<bool>,
    what: &str,
    (profile, policy): (&str, &OciCapsPolicy),
    warn: &mut Vec<String>,
) -> Result<OciCaps, String> {
    check_capabilities(asked)?;
    let allowed = policy.allow.iter().fold(0u64, |a, n| a | capsets::bit(n));
    let mut sets = CapSets::default();
    let mut beyond = BTreeSet::new();
    let mut refused = Vec::new();
    for (set, names) in asked.into_iter().flatten() {
        let mut mask = 0u64;
        let mut out = Vec::new();
        for n in names {
            if allowed & capsets::bit(n) == 0 {
                beyond.insert(n.as_str());
                out.push(n.as_str());
                continue;
            }
            mask |= capsets::bit(n);
        }
        if !out.is_empty() {
            refused.push(format!("{what}.capabilities.{set}: {}", out.join(" ")));
        }
        match set.as_str() {
            "bounding" => sets.bounding = mask,
            "effective" => sets.effective = mask,
            "permitted" => sets.permitted = mask,
            "inheritable" => sets.inheritable = mask,
            _ => sets.ambient = mask,
        }
    }
    if !refused.is_empty() && !policy.drop_beyond {
        return Err(format!(
            "{} not granted by profile {profile} (its [capabilities] oci_allow: {}; \
             oci_beyond = \"refuse\")",
            refused.join("; "),
            if policy.allow.is_empty() {
                "none".to_string()
            } else {
                policy.allow.join(" ")
            }
        ));
    }
    if !beyond.is_empty() {
        warn.push(format!(
            "{}.capabilities: dropped (not in profile {profile}'s oci_allow; \
             oci_beyond = \"drop\"): {}",
            what.trim_start_matches("config.json: "),
            beyond.into_iter().collect::<Vec<_>>().join(" ")
        ));
    }
    // What capset(2) and PR_CAP_AMBIENT_RAISE refuse, named before anything runs.
    for (set, mask, within, of) in [
        ("effective", sets.effective, sets.permitted, "permitted"),
        ("inheritable", sets.inheritable, sets.bounding, "bounding"),
        (
            "ambient",
            sets.ambient,
            sets.permitted & sets.inheritable,
            "both permitted and inheritable",
        ),
    ] {
        if mask & !within != 0 {
            return Err(format!(
                "{what}.capabilities.{set}: {} not in {of} (the kernel refuses it)",
                capsets::names(mask & !within).join(" ")
            ));
        }
    }
    let no_new_privs = policy.nnp_always || nnp == Some(true);
    if policy.nnp_always && nnp == Some(false) {
        warn.push(format!(
            "{}.noNewPrivileges false: set anyway (profile {profile}: oci_no_new_privileges = \"always\")",
            what.trim_start_matches("config.json: ")
        ));
    }
    Ok(OciCaps {
        sets,
        no_new_privs,
        policy: policy.clone(),
    })
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
    let mut r = r.clone();
    let mut v = vec![("RLIMIT_CORE", 0)];
    for n in PROFILE_SET {
        if let Some(x) = profile_field(&mut r, n).and_then(|f| *f) {
            v.push((n, x));
        }
    }
    v
}

/// The resources a profile's rlimits may set besides RLIMIT_CORE.
const PROFILE_SET: [&str; 5] = [
    "RLIMIT_NOFILE",
    "RLIMIT_FSIZE",
    "RLIMIT_CPU",
    "RLIMIT_NPROC",
    "RLIMIT_AS",
];

/// The profile's limit of resource `name` (`PROFILE_SET`).
fn profile_field<'a>(r: &'a mut RlimitSpec, name: &str) -> Option<&'a mut Option<u64>> {
    Some(match name {
        "RLIMIT_NOFILE" => &mut r.open_files,
        "RLIMIT_FSIZE" => &mut r.file_size,
        "RLIMIT_CPU" => &mut r.cpu_seconds,
        "RLIMIT_NPROC" => &mut r.nproc,
        "RLIMIT_AS" => &mut r.address_space,
        _ => return None,
    })
}

/// `[rlimits] oci = "config"`: the profile leaves the resources `rl` names to the
/// container, whose values `bounded_rlimits` then caps at the runtime's own hard
/// limits only. RLIMIT_CORE is not among them: it stays 0.
pub(crate) fn leave_to_config(rl: &[super::config::Rlimit], profile_rlimits: &mut RlimitSpec) {
    for r in rl {
        if let Some(f) = profile_field(profile_rlimits, &r.kind) {
            *f = None;
        }
    }
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

    /// A config.json with `process` fields and `linux` ones, and the namespaces a
    /// cell needs listed (mount, pid, network, ipc, uts).
    fn parse(process: &str, linux: &str) -> Config {
        let ns = r#""namespaces":[{"type":"mount"},{"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"}]"#;
        let linux = if linux.is_empty() {
            ns.to_string()
        } else {
            format!("{linux},{ns}")
        };
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
        c.check().unwrap();
        let prof = RlimitSpec {
            mode: LayerMode::Required,
            open_files: Some(1024),
            ..Default::default()
        };
        let (cp, w) = c
            .container_process(&prof, true, ("default", &default_policy()))
            .unwrap();
        assert!(w[0].contains("lowered to 1024:1024"), "{w:?}");
        assert_eq!(cp.sysctl, vec![("net.ipv4.ip_forward".into(), "1".into())]);
        assert_eq!(cp.caps.unwrap().sets.bounding, capsets::bit("CAP_CHOWN"));
    }

    fn default_policy() -> OciCapsPolicy {
        crate::profile::load("default").unwrap().capabilities
    }

    fn caps_of(process: &str, policy: &OciCapsPolicy) -> Result<(OciCaps, Vec<String>), String> {
        let c = parse(process, "");
        let p = c.process().unwrap();
        let mut w = Vec::new();
        oci_caps(
            p.capabilities.as_ref(),
            p.no_new_privileges,
            "config.json: process",
            ("p", policy),
            &mut w,
        )
        .map(|o| (o, w))
    }

    #[test]
    fn capabilities_are_bounded_by_the_profile() {
        let pol = default_policy();
        let (o, w) = caps_of(
            r#","capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"],"permitted":["CAP_KILL"],
            "effective":["CAP_KILL"]},"noNewPrivileges":true"#,
            &pol,
        )
        .unwrap();
        let kill = capsets::bit("CAP_KILL");
        assert_eq!(o.sets.bounding, kill | capsets::bit("CAP_CHOWN"));
        assert_eq!((o.sets.permitted, o.sets.effective), (kill, kill));
        assert_eq!((o.sets.inheritable, o.sets.ambient), (0, 0));
        assert!(o.no_new_privs && w.is_empty(), "{w:?}");
        // None asked: none granted, and no_new_privs off as in runc.
        let (o, _) = caps_of("", &pol).unwrap();
        assert_eq!((o.sets, o.no_new_privs), (CapSets::default(), false));
        // Beyond oci_allow: refused by name, or dropped with a warning.
        let asked = r#","capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN"]}"#;
        let e = caps_of(asked, &pol).unwrap_err();
        for part in ["bounding", "CAP_SYS_ADMIN", "profile p", "oci_allow"] {
            assert!(e.contains(part), "{e}");
        }
        let drop = OciCapsPolicy {
            drop_beyond: true,
            ..pol.clone()
        };
        let (o, w) = caps_of(asked, &drop).unwrap();
        assert_eq!(o.sets.bounding, capsets::bit("CAP_CHOWN"));
        assert!(
            w[0].contains("CAP_SYS_ADMIN") && w[0].contains("dropped"),
            "{w:?}"
        );
        // Strict: nothing granted, no_new_privs always.
        let strict = crate::profile::load("strict").unwrap().capabilities;
        let e = caps_of(r#","capabilities":{"bounding":["CAP_CHOWN"]}"#, &strict).unwrap_err();
        assert!(e.contains("oci_allow: none"), "{e}");
        let (o, w) = caps_of(r#","noNewPrivileges":false"#, &strict).unwrap();
        assert!(o.no_new_privs && w[0].contains("always"), "{w:?}");
    }

    #[test]
    fn sets_the_kernel_refuses_are_named() {
        let pol = default_policy();
        for (asked, what) in [
            (
                r#""effective":["CAP_KILL"]"#,
                "effective: CAP_KILL not in permitted",
            ),
            (
                r#""inheritable":["CAP_KILL"]"#,
                "inheritable: CAP_KILL not in bounding",
            ),
            (
                r#""permitted":["CAP_KILL"],"bounding":["CAP_KILL"],"ambient":["CAP_KILL"]"#,
                "ambient: CAP_KILL not in both",
            ),
            (r#""bounds":[]"#, "unknown set \"bounds\""),
        ] {
            let e = caps_of(&format!(r#","capabilities":{{{asked}}}"#), &pol).unwrap_err();
            assert!(e.contains(what), "{asked}: {e}");
        }
    }
}
