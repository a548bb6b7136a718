//! The `linux.resources` that reach the cgroup layer, written as runc writes them on
//! cgroupfs into the container's cgroup at its `linux.cgroupsPath`
//! (`Hardening::place_cgroup`): v1 names on cgroup v1, v2 names (and runc's
//! conversions: shares to weight, memory+swap to swap) on v2. Each limit is capped by
//! the profile's (the stricter wins, warned); what is not written is a warning, a
//! resource without a file on this version that runc refuses (realtime on v2) an error.
//! The command's own `cell` sub-cgroup keeps nixcell's limits.

use super::Res;
use super::config::Resources;
use crate::sandbox::cgroup::{CgroupLimits, Version};
use std::path::{Path, PathBuf};

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

/// Writes `plan`'s files into the container's cgroup (`dirs`: (controller, dir)).
fn apply(version: Version, dirs: &[(String, PathBuf)], writes: &[Write]) -> Res {
    let dir = |c: &str| {
        dirs.iter()
            .find(|(dc, _)| version == Version::V2 || dc == c)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| format!("no {c} cgroup hierarchy for linux.resources"))
    };
    for (c, f, v) in writes {
        let p = dir(c)?.join(f);
        std::fs::write(&p, v)
            .map_err(|e| format!("linux.resources: {} = {v}: {e}", p.display()))?;
    }
    Ok(())
}

/// The profile's limits as the ceiling of the container's.
pub fn ceiling(l: &crate::profile::Limits) -> CgroupLimits {
    CgroupLimits {
        memory: l.memory,
        cpus: l.cpus,
        pids: l.pids,
    }
}

/// After `Hardening::place_cgroup` made the container's cgroup at its cgroupsPath:
/// the asked resources written there (`plan`), warnings through `warn`. cpus/mems
/// (v1) make the container's cgroup in the cpuset hierarchy too, at the same path.
pub fn write_resources(
    l: Option<&super::config::Linux>,
    ceiling: &CgroupLimits,
    hardening: &mut crate::run::harden::Hardening,
    mut warn: impl FnMut(&str),
) -> Res {
    let Some((version, mut dirs)) = hardening.cgroup_dirs() else {
        return Ok(());
    };
    let r = l.and_then(|l| l.resources.as_ref());
    let (mut writes, warnings) = plan(version, r.unwrap_or(&Resources::default()), ceiling)?;
    for w in warnings {
        warn(&w);
    }
    if version == Version::V1 && writes.iter().any(|(c, _, _)| *c == "cpuset") {
        match cpuset_dir(&dirs) {
            Ok(d) => {
                hardening.add_cgroup_dir("cpuset", d.clone())?;
                dirs.push(("cpuset".into(), d));
            }
            // Rootless (as the placement): no cpuset cgroup is no failure.
            Err(e) if !crate::sandbox::ns::is_host_root() => {
                warn(&format!("linux.resources.cpu.cpus/mems: not written: {e}"));
                writes.retain(|(c, _, _)| *c != "cpuset");
            }
            Err(e) => return Err(format!("linux.resources.cpu.cpus/mems: {e}")),
        }
    }
    apply(version, &dirs, &writes)
}

/// The v1 mount point of `ctrl`.
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

/// The container's cgroup in the cpuset hierarchy: at the path its memory cgroup has
/// under the memory mount; made (a new one), with cpus and mems copied down from the
/// parents (a v1 cpuset cgroup starts empty and takes no process so).
fn cpuset_dir(dirs: &[(String, PathBuf)]) -> Res<PathBuf> {
    let mem = dirs
        .iter()
        .find(|(c, _)| c == "memory")
        .map(|(_, d)| d)
        .ok_or("no memory cgroup")?;
    let (mm, cm) = (v1_mount("memory"), v1_mount("cpuset"));
    let (Some(mm), Some(cm)) = (mm, cm) else {
        return Err("no cgroup hierarchy with the cpuset controller is mounted".into());
    };
    let rel = mem.strip_prefix(&mm).map_err(|e| e.to_string())?;
    let d = cm.join(rel);
    let parent = d.parent().unwrap_or(&cm);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: mkdir: {e}", parent.display()))?;
    std::fs::create_dir(&d).map_err(|e| format!("{}: mkdir: {e}", d.display()))?;
    let mut chain: Vec<&Path> = d.ancestors().take_while(|a| a.starts_with(&cm)).collect();
    chain.reverse();
    for pair in chain.windows(2) {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let have = std::fs::read_to_string(pair[1].join(f)).unwrap_or_default();
            if have.trim().is_empty() {
                let up = std::fs::read_to_string(pair[0].join(f)).unwrap_or_default();
                let p = pair[1].join(f);
                if let Err(e) = std::fs::write(&p, up.trim()) {
                    let _ = std::fs::remove_dir(&d);
                    return Err(format!("{}: write: {e}", p.display()));
                }
            }
        }
    }
    Ok(d)
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
}
