//! `linux.cgroupsPath` and the `linux.resources` that reach the cgroup layer, as runc
//! writes them on cgroupfs (without `--systemd-cgroup`, which is refused).
//!
//! An absolute path is taken from each hierarchy's root, a relative one from the
//! runtime's own cgroup in that hierarchy. The path is caller input: a component `..`,
//! `.`, empty or holding a NUL is refused, so the joined path stays in the hierarchy.
//! Started as root the cgroup is made with its parents; rootless it must lie strictly
//! inside the caller's delegated base. The container's cgroup is the run's cgroup
//! itself (`cgroup::Hierarchy::create_run_at`): PID 1 in it, the command in its
//! `cell` sub-cgroup with nixcell's own limits; the asked resources are written at the
//! path, each capped by the profile's limit (the stricter wins). `delete` removes the
//! container's cgroup and leaves the parents, as runc does.

use super::Res;
use super::config::Resources;
use crate::sandbox::cgroup::{CgroupLimits, Hierarchy, Version};
use std::path::{Path, PathBuf};

/// The checked components of a cgroupsPath and whether it is absolute.
pub fn parse_path(p: &str) -> Res<(bool, Vec<&str>)> {
    let bad = |why: &str| format!("config.json: linux.cgroupsPath {p:?}: {why}");
    let abs = p.starts_with('/');
    let rest = if abs { &p[1..] } else { p };
    let parts: Vec<&str> = rest.split('/').collect();
    for c in &parts {
        match *c {
            "" => return Err(bad("an empty component (or the hierarchy's root)")),
            "." | ".." => return Err(bad(&format!("a component {c:?}"))),
            c if c.contains('\0') => return Err(bad("a NUL byte")),
            _ => {}
        }
    }
    Ok((abs, parts))
}

/// The v1 mount point of `ctrl` (one not in `cgroup::CONTROLLERS`: cpuset).
fn v1_mount(ctrl: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _, opts) = (r.next()?, r.next()?, r.next()?);
        let mount = left.split_whitespace().nth(4)?;
        (fstype == "cgroup" && opts.split(',').any(|o| o == ctrl)).then(|| PathBuf::from(mount))
    })
}

/// This process's cgroup in the hierarchy of `ctrl` (v1) or the unified one (`""`),
/// from /proc/self/cgroup, without the leading `/`.
fn own_cgroup(text: &str, ctrl: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, list, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if ctrl.is_empty() {
            list.is_empty()
        } else {
            list.split(',').any(|c| c == ctrl)
        };
        hit.then(|| path.trim_start_matches('/').to_string())
    })
}

/// The container's cgroup in each hierarchy nixcell uses (and cpuset's when the
/// config asks for cpus or mems): (controller, dir), `""` on v2. Refused: a path
/// outside a rootless caller's delegated base, a cgroup that exists already.
pub fn place(h: &Hierarchy, path: &str, uid: u32, cpuset: bool) -> Res<Vec<(String, PathBuf)>> {
    let (abs, parts) = parse_path(path)?;
    let mut mounts: Vec<(String, PathBuf)> = match h.version {
        Version::V2 => vec![(String::new(), h.unified.clone())],
        Version::V1 => h.v1.clone(),
    };
    if cpuset && h.version == Version::V1 {
        let m = v1_mount("cpuset").ok_or(
            "config.json: linux.resources.cpu.cpus/mems: no cgroup hierarchy with the cpuset \
             controller is mounted",
        )?;
        mounts.push(("cpuset".into(), m));
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let delegated = if uid == 0 {
        Vec::new()
    } else {
        h.bases(uid).map_err(|e| e.to_string())?
    };
    let mut out = Vec::new();
    for (c, m) in mounts {
        let mut d = m.clone();
        if !abs {
            let mine = own_cgroup(&own, &c)
                .ok_or_else(|| format!("/proc/self/cgroup: no {c} hierarchy"))?;
            d.push(mine);
        }
        d.extend(&parts);
        if uid != 0 {
            let base = delegated.iter().find(|(bc, _)| *bc == c).map(|(_, b)| b);
            let inside = base.is_some_and(|b| d.starts_with(b) && d != *b && usable(b));
            if !inside {
                return Err(format!(
                    "config.json: linux.cgroupsPath {path:?}: {} is outside the cgroup \
                     delegated to uid {uid}{} (rootless, a container's cgroup lies below it)",
                    d.display(),
                    base.map_or(String::new(), |b| format!(" ({})", b.display()))
                ));
            }
        }
        if d.exists() {
            return Err(format!(
                "config.json: linux.cgroupsPath {path:?}: the cgroup {} exists already \
                 (a container's cgroup is its own)",
                d.display()
            ));
        }
        out.push((c, d));
    }
    Ok(out)
}

fn usable(b: &Path) -> bool {
    b.is_dir() && nix::unistd::access(b, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The stricter of what the container asks and the profile's limit.
pub fn stricter<T: PartialOrd + Copy>(asked: Option<T>, ceiling: Option<T>) -> Option<T> {
    match (asked, ceiling) {
        (Some(a), Some(c)) => Some(if a < c { a } else { c }),
        (a, c) => a.or(c),
    }
}

/// One cgroup file to write: controller (`""` on v2), file, value.
pub type Write = (&'static str, &'static str, String);

/// The files runc writes for `r` on `version`, in order, each limit capped by
/// `ceiling` (the profile's); and warnings for what is lowered or not written.
/// Refused (Err): a value that is not a limit, a v2 resource without a v2 file.
pub fn plan(
    version: Version,
    r: &Resources,
    ceiling: &CgroupLimits,
) -> Res<(Vec<Write>, Vec<String>)> {
    let (mut w, mut warn) = (Vec::new(), Vec::new());
    let v1 = version == Version::V1;
    let ctrl = |c: &'static str| if v1 { c } else { "" };
    let lowered = |warn: &mut Vec<String>, what: &str, asked: String, to: String| {
        warn.push(format!(
            "linux.resources.{what} {asked}: lowered to the profile's {to} (the stricter wins)"
        ))
    };
    let max = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
    let m = r.memory.as_ref();
    let mem = m.and_then(|m| m.limit);
    // -1 is "no limit"; the profile's limit stands in for it.
    let limit = match mem {
        Some(v) if v > 0 => Some(v as u64),
        Some(-1 | 0) | None => None,
        Some(v) => return Err(format!("config.json: linux.resources.memory.limit {v}")),
    };
    let eff = stricter(limit, ceiling.memory);
    if let (Some(a), Some(e)) = (limit, eff)
        && e < a
    {
        lowered(&mut warn, "memory.limit", a.to_string(), e.to_string());
    }
    if mem.is_some() || eff.is_some() {
        let v = if v1 {
            eff.map_or("-1".to_string(), |v| v.to_string())
        } else {
            max(eff)
        };
        w.push((
            ctrl("memory"),
            if v1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            },
            v,
        ));
    }
    if let Some(m) = m {
        if let Some(res) = m.reservation.filter(|r| *r != 0) {
            let v = if res < 0 {
                if v1 { "-1".into() } else { "max".into() }
            } else {
                res.to_string()
            };
            w.push((
                ctrl("memory"),
                if v1 {
                    "memory.soft_limit_in_bytes"
                } else {
                    "memory.low"
                },
                v,
            ));
        }
        // The spec's swap is memory+swap (v1's memsw); v2's swap.max is the swap alone.
        match m.swap.filter(|s| *s != 0) {
            None => {}
            Some(s) if v1 => {
                w.push((
                    "memory",
                    "memory.memsw.limit_in_bytes",
                    s.max(-1).to_string(),
                ));
            }
            Some(s) if s < 0 => w.push(("", "memory.swap.max", "max".into())),
            Some(s) => {
                let l = limit.ok_or(
                    "config.json: linux.resources.memory.swap without memory.limit: cgroup v2 \
                     limits swap apart from memory",
                )?;
                let only = (s as u64)
                    .checked_sub(l)
                    .ok_or("config.json: linux.resources.memory.swap is below memory.limit")?;
                w.push(("", "memory.swap.max", only.to_string()));
            }
        }
        if m.kernel.is_some() {
            warn.push(
                "linux.resources.memory.kernel: not written (deprecated; runc ignores it too)"
                    .into(),
            );
        }
        if let Some(k) = m.kernel_tcp {
            if v1 {
                w.push(("memory", "memory.kmem.tcp.limit_in_bytes", k.to_string()));
            } else {
                warn.push("linux.resources.memory.kernelTCP: no cgroup v2 file".into());
            }
        }
        if let Some(s) = m.swappiness {
            if s > 100 {
                return Err(format!(
                    "config.json: linux.resources.memory.swappiness {s} is not 0..100"
                ));
            }
            if v1 {
                w.push(("memory", "memory.swappiness", s.to_string()));
            } else {
                warn.push("linux.resources.memory.swappiness: no cgroup v2 file".into());
            }
        }
        if m.disable_oom_killer == Some(true) {
            if v1 {
                w.push(("memory", "memory.oom_control", "1".into()));
            } else {
                warn.push("linux.resources.memory.disableOOMKiller: no cgroup v2 file".into());
            }
        }
    }
    let c = r.cpu.as_ref();
    if let Some(shares) = c.and_then(|c| c.shares).filter(|s| *s > 0) {
        if v1 {
            w.push(("cpu", "cpu.shares", shares.to_string()));
        } else {
            // runc's conversion of shares [2, 262144] to weight [1, 10000].
            let s = shares.clamp(2, 262_144);
            w.push((
                "",
                "cpu.weight",
                (1 + ((s - 2) * 9999) / 262_142).to_string(),
            ));
        }
    }
    let period = c.and_then(|c| c.period).filter(|p| *p > 0);
    let quota = c.and_then(|c| c.quota).filter(|q| *q > 0);
    if c.and_then(|c| c.period) == Some(0) {
        return Err("config.json: linux.resources.cpu.period 0".into());
    }
    let p = period.unwrap_or(100_000);
    let mut q = quota.map(|q| q as u64);
    if let Some(cpus) = ceiling.cpus {
        let cap = ((cpus * p as f64) as u64).max(1000);
        if q.is_none_or(|q| q > cap) {
            if let Some(a) = q {
                lowered(&mut warn, "cpu.quota", a.to_string(), cap.to_string());
            }
            q = Some(cap);
        }
    }
    if period.is_some() || q.is_some() {
        if v1 {
            w.push(("cpu", "cpu.cfs_period_us", p.to_string()));
            w.push((
                "cpu",
                "cpu.cfs_quota_us",
                q.map_or("-1".into(), |q| q.to_string()),
            ));
        } else {
            w.push(("", "cpu.max", format!("{} {p}", max(q))));
        }
    }
    if let Some(c) = c {
        if c.realtime_period.is_some() || c.realtime_runtime.is_some() {
            if !v1 {
                return Err(
                    "config.json: linux.resources.cpu.realtimePeriod/realtimeRuntime: \
                     cgroup v2 has no realtime controller files"
                        .into(),
                );
            }
            if let Some(rp) = c.realtime_period {
                w.push(("cpu", "cpu.rt_period_us", rp.to_string()));
            }
            if let Some(rr) = c.realtime_runtime {
                w.push(("cpu", "cpu.rt_runtime_us", rr.to_string()));
            }
        }
        for (v, f) in [(&c.cpus, "cpuset.cpus"), (&c.mems, "cpuset.mems")] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                if !v
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
                {
                    return Err(format!("config.json: linux.resources.cpu {f} {v:?}"));
                }
                w.push((ctrl("cpuset"), f, v.clone()));
            }
        }
    }
    let pids = match r.pids.as_ref().map(|p| p.limit) {
        Some(v) if v > 0 => Some(v as u64),
        Some(v) if v < -1 => return Err(format!("config.json: linux.resources.pids.limit {v}")),
        _ => None,
    };
    let eff = stricter(pids, ceiling.pids);
    if let (Some(a), Some(e)) = (pids, eff)
        && e < a
    {
        lowered(&mut warn, "pids.limit", a.to_string(), e.to_string());
    }
    if r.pids.is_some() || eff.is_some() {
        w.push((ctrl("pids"), "pids.max", max(eff)));
    }
    for (v, what) in [
        (&r.block_io, "blockIO"),
        (&r.hugepage_limits, "hugepageLimits"),
        (&r.network, "network"),
        (&r.rdma, "rdma"),
        (&r.unified, "unified"),
    ] {
        if v.is_some() {
            warn.push(format!(
                "linux.resources.{what}: not written (nixcell limits memory, cpu and pids)"
            ));
        }
    }
    Ok((w, warn))
}

/// Whether `r` asks for cpuset.cpus or cpuset.mems.
pub fn wants_cpuset(r: Option<&Resources>) -> bool {
    r.and_then(|r| r.cpu.as_ref()).is_some_and(|c| {
        c.cpus
            .as_ref()
            .or(c.mems.as_ref())
            .is_some_and(|v| !v.is_empty())
    })
}

/// Writes `plan`'s files into the container's cgroup (`dirs` from [`place`]); a
/// cpuset cgroup (v1) gets its parents' cpus and mems first, which it needs before a
/// process may join it.
pub fn apply(version: Version, dirs: &[(String, PathBuf)], writes: &[Write]) -> Res {
    let dir = |c: &str| {
        dirs.iter()
            .find(|(dc, _)| version == Version::V2 || dc == c)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| format!("no {c} cgroup hierarchy for linux.resources"))
    };
    if version == Version::V1
        && let Ok(d) = dir("cpuset")
    {
        inherit_cpuset(&d)?;
    }
    if version == Version::V2 && writes.iter().any(|(_, f, _)| f.starts_with("cpuset.")) {
        enable_v2_cpuset(&dir("")?);
    }
    for (c, f, v) in writes {
        let p = dir(c)?.join(f);
        std::fs::write(&p, v)
            .map_err(|e| format!("linux.resources: {} = {v}: {e}", p.display()))?;
    }
    Ok(())
}

/// v1 cpuset: a new cgroup's cpus and mems are empty; each level from the top copies
/// its parent's.
fn inherit_cpuset(leaf: &Path) -> Res {
    let mut chain: Vec<&Path> = leaf
        .ancestors()
        .take_while(|a| a.join("cpuset.cpus").exists())
        .collect();
    chain.reverse();
    for pair in chain.windows(2) {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let have = std::fs::read_to_string(pair[1].join(f)).unwrap_or_default();
            if have.trim().is_empty() {
                let up = std::fs::read_to_string(pair[0].join(f)).unwrap_or_default();
                let p = pair[1].join(f);
                std::fs::write(&p, up.trim())
                    .map_err(|e| format!("cgroup {}: write: {e}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// v2: cpuset enabled in the subtree_control of every ancestor of the container's
/// cgroup (failures show when cpuset.cpus cannot be written).
fn enable_v2_cpuset(d: &Path) {
    let mut chain: Vec<&Path> = d
        .ancestors()
        .skip(1)
        .take_while(|a| a.join("cgroup.subtree_control").exists())
        .collect();
    chain.reverse();
    for a in chain {
        let _ = std::fs::write(a.join("cgroup.subtree_control"), "+cpuset");
    }
}

/// The profile's limits as the ceiling of the container's.
pub fn ceiling(l: &crate::profile::Limits) -> CgroupLimits {
    CgroupLimits {
        memory: l.memory,
        cpus: l.cpus,
        pids: l.pids,
    }
}

/// A container's cgroup at its cgroupsPath, planned before anything is made.
#[derive(Debug)]
pub struct Placed {
    pub version: Version,
    pub dirs: Vec<(String, PathBuf)>,
    writes: Vec<Write>,
}

/// `create`'s first part: with a cgroupsPath, where the container's cgroup goes and
/// what is written there (warnings through `warn`); None without one (nixcell's own
/// run cgroup, as `nixcell run` makes it).
pub fn placement(
    l: Option<&super::config::Linux>,
    ceiling: &CgroupLimits,
    mut warn: impl FnMut(&str),
) -> Res<Option<Placed>> {
    let Some(path) = l.and_then(|l| l.cgroups_path.as_deref()) else {
        return Ok(None);
    };
    let r = l.and_then(|l| l.resources.as_ref());
    let h = Hierarchy::detect().map_err(|e| format!("linux.cgroupsPath: {e}"))?;
    let (writes, warnings) = plan(h.version, r.unwrap_or(&Resources::default()), ceiling)?;
    for w in warnings {
        warn(&w);
    }
    let uid = nix::unistd::geteuid().as_raw();
    let dirs = place(&h, path, uid, wants_cpuset(r))?;
    Ok(Some(Placed {
        version: h.version,
        dirs,
        writes,
    }))
}

impl Placed {
    /// `create`'s second part, once the run's cgroup is made at [`Placed::dirs`]
    /// (`layers`: the hardening's reports): the resources are written. An unmade
    /// cgroup (a profile with the cgroup layer off, or best effort failing) is an error:
    /// the caller asked for the container's place.
    pub fn apply(&self, layers: &[crate::sandbox::proto::LayerReport]) -> Res {
        if let Some(l) = layers.iter().find(|l| l.layer == "cgroup" && !l.enforced) {
            return Err(format!(
                "linux.cgroupsPath: the container's cgroup was not made: {}",
                l.detail
            ));
        }
        apply(self.version, &self.dirs, &self.writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(j: &str) -> Resources {
        serde_json::from_str(j).unwrap()
    }

    const ALL: &str = r#"{"memory":{"limit":50593792,"reservation":40000000,"swap":101187584,
        "kernel":1,"kernelTCP":50593792,"swappiness":10,"disableOOMKiller":true},
        "cpu":{"shares":1024,"quota":50000,"period":200000,"realtimePeriod":1000000,
        "realtimeRuntime":950000,"cpus":"0-1","mems":"0"},"pids":{"limit":100}}"#;

    fn get<'a>(w: &'a [Write], f: &str) -> Option<&'a str> {
        w.iter()
            .find(|(_, n, _)| *n == f)
            .map(|(_, _, v)| v.as_str())
    }

    #[test]
    fn v1_files_as_runc_writes_them() {
        let (w, warn) = plan(Version::V1, &res(ALL), &CgroupLimits::default()).unwrap();
        let want = [
            ("memory", "memory.limit_in_bytes", "50593792"),
            ("memory", "memory.soft_limit_in_bytes", "40000000"),
            ("memory", "memory.memsw.limit_in_bytes", "101187584"),
            ("memory", "memory.kmem.tcp.limit_in_bytes", "50593792"),
            ("memory", "memory.swappiness", "10"),
            ("memory", "memory.oom_control", "1"),
            ("cpu", "cpu.shares", "1024"),
            ("cpu", "cpu.cfs_period_us", "200000"),
            ("cpu", "cpu.cfs_quota_us", "50000"),
            ("cpu", "cpu.rt_period_us", "1000000"),
            ("cpu", "cpu.rt_runtime_us", "950000"),
            ("cpuset", "cpuset.cpus", "0-1"),
            ("cpuset", "cpuset.mems", "0"),
            ("pids", "pids.max", "100"),
        ];
        let got: Vec<(&str, &str, &str)> = w.iter().map(|(c, f, v)| (*c, *f, v.as_str())).collect();
        assert_eq!(got, want);
        assert!(warn.iter().any(|w| w.contains("memory.kernel")), "{warn:?}");
    }

    #[test]
    fn v2_names_and_conversions() {
        let mut r = res(ALL);
        r.cpu.as_mut().unwrap().realtime_period = None;
        r.cpu.as_mut().unwrap().realtime_runtime = None;
        let (w, warn) = plan(Version::V2, &r, &CgroupLimits::default()).unwrap();
        assert!(w.iter().all(|(c, _, _)| c.is_empty()));
        assert_eq!(get(&w, "memory.max"), Some("50593792"));
        assert_eq!(get(&w, "memory.low"), Some("40000000"));
        // memsw 2x the limit: the swap alone is the limit once more.
        assert_eq!(get(&w, "memory.swap.max"), Some("50593792"));
        // runc's shares-to-weight conversion: 1024 -> 39.
        assert_eq!(get(&w, "cpu.weight"), Some("39"));
        assert_eq!(get(&w, "cpu.max"), Some("50000 200000"));
        assert_eq!(get(&w, "cpuset.cpus"), Some("0-1"));
        assert_eq!(get(&w, "pids.max"), Some("100"));
        for f in ["swappiness", "disableOOMKiller", "kernelTCP"] {
            assert!(warn.iter().any(|w| w.contains(f)), "{f}: {warn:?}");
        }
        // Realtime has no v2 file: refused, as runc does.
        let e = plan(Version::V2, &res(ALL), &CgroupLimits::default()).unwrap_err();
        assert!(e.contains("realtime"), "{e}");
        let e = plan(
            Version::V2,
            &res(r#"{"memory":{"swap":1000}}"#),
            &CgroupLimits::default(),
        )
        .unwrap_err();
        assert!(e.contains("without memory.limit"), "{e}");
        let (w, _) = plan(
            Version::V2,
            &res(r#"{"memory":{"limit":-1,"swap":-1},"pids":{"limit":0}}"#),
            &CgroupLimits::default(),
        )
        .unwrap();
        assert_eq!(get(&w, "memory.max"), Some("max"));
        assert_eq!(get(&w, "memory.swap.max"), Some("max"));
        assert_eq!(get(&w, "pids.max"), Some("max"));
    }

    #[test]
    fn the_profile_is_the_ceiling() {
        let ceiling = CgroupLimits {
            memory: Some(1 << 20),
            cpus: Some(0.5),
            pids: Some(10),
        };
        for v in [Version::V1, Version::V2] {
            let (w, warn) = plan(v, &res(ALL.replace("realtime", "x").as_str()), &ceiling).unwrap();
            let mem = if v == Version::V1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            };
            assert_eq!(get(&w, mem), Some("1048576"), "{v:?}");
            assert_eq!(get(&w, "pids.max"), Some("10"), "{v:?}");
            assert_eq!(warn.iter().filter(|w| w.contains("lowered")).count(), 2);
            // 50000/200000 is 0.25 CPU, below the profile's 0.5: kept.
            let (wc, _) = (
                get(&w, "cpu.cfs_quota_us").or(get(&w, "cpu.max")),
                get(&w, "cpu.cfs_period_us"),
            );
            assert!(wc.unwrap().starts_with("50000"), "{v:?} {wc:?}");
        }
        // Nothing asked: the profile's limits are written all the same.
        let (w, _) = plan(Version::V1, &Resources::default(), &ceiling).unwrap();
        assert_eq!(get(&w, "memory.limit_in_bytes"), Some("1048576"));
        assert_eq!(get(&w, "cpu.cfs_quota_us"), Some("50000"));
        assert_eq!(get(&w, "pids.max"), Some("10"));
        let (w, warn) = plan(
            Version::V1,
            &res(r#"{"cpu":{"quota":400000,"period":100000}}"#),
            &ceiling,
        )
        .unwrap();
        assert_eq!(get(&w, "cpu.cfs_quota_us"), Some("50000"));
        assert!(warn[0].contains("cpu.quota 400000"), "{warn:?}");
    }

    #[test]
    fn paths_that_leave_the_hierarchy_are_refused() {
        assert_eq!(parse_path("/a/b").unwrap(), (true, vec!["a", "b"]));
        assert_eq!(parse_path("a/b").unwrap(), (false, vec!["a", "b"]));
        for p in ["/", "", "/a/../../b", "..", "a/./b", "/a//b", "/a/", "a\0b"] {
            assert!(parse_path(p).is_err(), "{p:?}");
        }
        let text = "4:memory:/m/x\n1:cpu,cpuacct:/c\n0::/u\n";
        assert_eq!(own_cgroup(text, "memory").as_deref(), Some("m/x"));
        assert_eq!(own_cgroup(text, "cpuacct").as_deref(), Some("c"));
        assert_eq!(own_cgroup(text, "").as_deref(), Some("u"));
        assert_eq!(own_cgroup(text, "pids"), None);
    }
}
