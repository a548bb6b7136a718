//! The `linux.resources` that reach the cgroup layer, written as runc writes them on
//! cgroupfs into the container's cgroup at its `linux.cgroupsPath`
//! (`Hardening::place_cgroup`): v1 names on cgroup v1 (memory, cpu, cpuset, pids,
//! blkio, devices, net_cls, net_prio, hugetlb, rdma), v2 names and runc's conversions
//! on v2 (shares to weight, memory+swap to swap, blkio to io.*, unified as given).
//! Each limit is capped by the profile's (the stricter wins, warned); a field with no
//! file on this version that runc ignores is a warning, one runc refuses (realtime and
//! unified on the other version) an error, and so is a hierarchy the host lacks.
//! Device rules: v1 devices.deny/allow in order, the cell's own devices allowed after;
//! v2 has no device files (runc's eBPF program is not made): rules are taken only
//! where they leave the cell's devices usable, so that nothing asked goes unenforced.
//! The command's own `cell` sub-cgroup keeps nixcell's limits.

use super::Res;
use super::config::{BlockIo, DeviceRule, Resources};
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
pub type Write = (&'static str, String, String);

/// The files runc writes for `r` on `version`, in order, each limit capped by
/// `ceiling` (the profile's); and warnings for what is lowered or not written.
/// Refused (Err): a value that is not a limit, a v2 resource without a v2 file.
pub fn plan(
    version: Version,
    r: &Resources,
    ceiling: &CgroupLimits,
) -> Res<(Vec<Write>, Vec<String>)> {
    let (mut w, mut warn): (Vec<(&str, &str, String)>, Vec<String>) = (Vec::new(), Vec::new());
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
    let mut w: Vec<Write> = w.into_iter().map(|(c, f, v)| (c, f.into(), v)).collect();
    if let Some(b) = &r.block_io {
        block_io(v1, b, &mut w, &mut warn);
    }
    for h in &r.hugepage_limits {
        let s = &h.page_size;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "config.json: linux.resources.hugepageLimits: pageSize {s:?}"
            ));
        }
        let (file, rsvd) = if v1 {
            (
                format!("hugetlb.{s}.limit_in_bytes"),
                format!("hugetlb.{s}.rsvd.limit_in_bytes"),
            )
        } else {
            (format!("hugetlb.{s}.max"), format!("hugetlb.{s}.rsvd.max"))
        };
        w.push((ctrl("hugetlb"), file, h.limit.to_string()));
        // The reservation limit too where the kernel has it (as runc: `apply` skips
        // it when the file is absent).
        w.push((ctrl("hugetlb"), rsvd, h.limit.to_string()));
    }
    if let Some(n) = &r.network {
        if v1 {
            if let Some(id) = n.class_id.filter(|id| *id != 0) {
                w.push(("net_cls", "net_cls.classid".into(), id.to_string()));
            }
            for p in &n.priorities {
                if p.name.is_empty() || p.name.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(format!(
                        "config.json: linux.resources.network.priorities: name {:?}",
                        p.name
                    ));
                }
                w.push((
                    "net_prio",
                    "net_prio.ifpriomap".into(),
                    format!("{} {}", p.name, p.priority),
                ));
            }
        } else if n.class_id.is_some_and(|id| id != 0) || !n.priorities.is_empty() {
            warn.push(
                "linux.resources.network: not written (cgroup v2 has no net_cls/net_prio \
                 files; runc ignores it too)"
                    .into(),
            );
        }
    }
    for (dev, l) in &r.rdma {
        if dev.is_empty() || dev.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(format!("config.json: linux.resources.rdma: device {dev:?}"));
        }
        let mut v = dev.clone();
        if let Some(h) = l.hca_handles {
            v.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = l.hca_objects {
            v.push_str(&format!(" hca_object={o}"));
        }
        w.push((ctrl("rdma"), "rdma.max".into(), v));
    }
    if !r.devices.is_empty() {
        if v1 {
            devices_v1(&r.devices, &mut w)?;
        } else {
            devices_v2(&r.devices)?;
        }
    }
    if !r.unified.is_empty() {
        if v1 {
            return Err(
                "config.json: linux.resources.unified: cgroup v2 files, and this host \
                 has cgroup v1"
                    .into(),
            );
        }
        for (k, v) in &r.unified {
            unified(k, ceiling)?;
            w.push(("", k.clone(), v.clone()));
        }
    }
    Ok((w, warn))
}

/// linux.resources.blockIO as runc writes it: v1 blkio files (`apply` falls back to
/// the BFQ names), v2 io.* (io.bfq.weight, else io.weight converted; io.max).
fn block_io(v1: bool, b: &BlockIo, w: &mut Vec<Write>, warn: &mut Vec<String>) {
    let c = if v1 { "blkio" } else { "" };
    if let Some(x) = b.weight.filter(|x| *x != 0) {
        let f = if v1 { "blkio.weight" } else { "io.bfq.weight" };
        w.push((c, f.into(), x.to_string()));
    }
    let mut leaf = b.leaf_weight.filter(|x| *x != 0).is_some();
    if v1 && let Some(x) = b.leaf_weight.filter(|x| *x != 0) {
        w.push((c, "blkio.leaf_weight".into(), x.to_string()));
    }
    for d in &b.weight_device {
        if let Some(x) = d.weight.filter(|x| *x != 0) {
            let f = if v1 {
                "blkio.weight_device"
            } else {
                "io.bfq.weight"
            };
            w.push((c, f.into(), format!("{}:{} {x}", d.major, d.minor)));
        }
        if let Some(x) = d.leaf_weight.filter(|x| *x != 0) {
            leaf = true;
            if v1 {
                w.push((
                    c,
                    "blkio.leaf_weight_device".into(),
                    format!("{}:{} {x}", d.major, d.minor),
                ));
            }
        }
    }
    if leaf && !v1 {
        warn.push(
            "linux.resources.blockIO leafWeight: no cgroup v2 file (runc ignores it too)".into(),
        );
    }
    for (list, f1, key) in [
        (
            &b.throttle_read_bps_device,
            "blkio.throttle.read_bps_device",
            "rbps",
        ),
        (
            &b.throttle_write_bps_device,
            "blkio.throttle.write_bps_device",
            "wbps",
        ),
        (
            &b.throttle_read_iops_device,
            "blkio.throttle.read_iops_device",
            "riops",
        ),
        (
            &b.throttle_write_iops_device,
            "blkio.throttle.write_iops_device",
            "wiops",
        ),
    ] {
        for t in list {
            let (f, v) = if v1 {
                (f1, format!("{}:{} {}", t.major, t.minor, t.rate))
            } else {
                (
                    "io.max",
                    format!("{}:{} {key}={}", t.major, t.minor, t.rate),
                )
            };
            w.push((c, f.into(), v));
        }
    }
}

/// Where the kernel lacks a file `plan` names, the one runc writes instead (its
/// value converted): v1 blkio weights under BFQ's names, v2's io.bfq.weight as
/// io.weight (runc's [10, 1000] to [1, 10000]).
pub fn fallback(file: &str, value: &str) -> Option<(&'static str, String)> {
    let conv = |w: &str| -> Option<String> {
        let w: u64 = w.parse().ok()?;
        Some((1 + w.saturating_sub(10) * 9999 / 990).to_string())
    };
    match file {
        "blkio.weight" => Some(("blkio.bfq.weight", value.into())),
        "blkio.weight_device" => Some(("blkio.bfq.weight_device", value.into())),
        "io.bfq.weight" => Some((
            "io.weight",
            match value.split_once(' ') {
                Some((dev, w)) => format!("{dev} {}", conv(w)?),
                None => conv(value)?,
            },
        )),
        _ => None,
    }
}

/// The devices a cell can open: the default ones nixcell binds from the host and a
/// devpts' ptmx and terminals (every other mount is nodev). As (major, minor).
const CELL_DEVICES: &[(i64, Option<i64>)] = &[
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

/// A rule as a device cgroup line: `TYPE MAJOR:MINOR ACCESS` (`a` alone for all).
fn device_line(d: &DeviceRule) -> Res<String> {
    let bad = |why: &str| {
        Err(format!(
            "config.json: linux.resources.devices: {d:?}: {why}"
        ))
    };
    let kind = d.kind.as_deref().unwrap_or("a");
    let access = d.access.as_deref().unwrap_or("rwm");
    if !matches!(kind, "a" | "b" | "c") {
        return bad("type is not a, b or c");
    }
    if access.is_empty() || !access.bytes().all(|b| matches!(b, b'r' | b'w' | b'm')) {
        return bad("access is not of r, w, m");
    }
    let num = |n: Option<i64>| match n {
        None | Some(-1) => Ok("*".to_string()),
        Some(n) if n >= 0 => Ok(n.to_string()),
        Some(_) => Err(()),
    };
    let (Ok(major), Ok(minor)) = (num(d.major), num(d.minor)) else {
        return bad("major/minor below -1");
    };
    if kind == "a" {
        return Ok("a".into());
    }
    Ok(format!("{kind} {major}:{minor} {access}"))
}

/// The rules and after them the cell's own devices allowed (as runc appends its
/// defaults, so that a deny-all list, podman's, keeps the cell's /dev working), but
/// for those a rule names: that rule stands. /dev/null, which nixcell's own set-up
/// opens, is allowed always (as runc does).
fn with_cell_devices(rules: &[DeviceRule]) -> Vec<DeviceRule> {
    let named = |major: i64, minor: Option<i64>| {
        (major, minor) != (1, Some(3))
            && rules.iter().any(|d| {
                d.kind.as_deref() == Some("c")
                    && d.major == Some(major)
                    && (d.minor == minor || (minor.is_none() && d.minor == Some(-1)))
            })
    };
    let mut all = rules.to_vec();
    for (major, minor) in CELL_DEVICES.iter().filter(|(a, b)| !named(*a, *b)) {
        all.push(DeviceRule {
            allow: true,
            kind: Some("c".into()),
            major: Some(*major),
            minor: *minor,
            access: Some("rwm".into()),
        });
    }
    all
}

/// v1: `with_cell_devices` in order into devices.allow/devices.deny.
fn devices_v1(rules: &[DeviceRule], w: &mut Vec<Write>) -> Res {
    for d in with_cell_devices(rules) {
        let f = if d.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        w.push(("devices", f.into(), device_line(&d)?));
    }
    Ok(())
}

/// v2 has no device cgroup files (runc attaches an eBPF program; nixcell does not):
/// a rule list is taken only when `with_cell_devices` leaves every device a cell can
/// open readable and writable (applied in order, the last rule that matches wins;
/// mknod is moot, a cell has no capability), so that not enforcing it changes
/// nothing. The engines' lists (podman's deny-all, containerd's deny-all then the
/// default devices) are such lists; one that names a cell's device narrower is not.
fn devices_v2(rules: &[DeviceRule]) -> Res {
    for d in rules {
        device_line(d)?;
    }
    let all = with_cell_devices(rules);
    for (major, minor) in CELL_DEVICES {
        for bit in ['r', 'w'] {
            let mut allowed = true;
            for d in &all {
                let kind_ok = matches!(d.kind.as_deref(), None | Some("a") | Some("c"));
                let num_ok = |n: Option<i64>, want: Option<i64>| match (n, want) {
                    (None | Some(-1), _) => true,
                    (Some(n), Some(w)) => n == w,
                    (Some(_), None) => false,
                };
                let every = d.kind.as_deref().is_none_or(|k| k == "a");
                let access = d.access.as_deref().unwrap_or("rwm");
                if kind_ok
                    && (every || (num_ok(d.major, Some(*major)) && num_ok(d.minor, *minor)))
                    && access.contains(bit)
                {
                    allowed = d.allow;
                }
            }
            if !allowed {
                let minor = minor.map_or("*".to_string(), |m| m.to_string());
                return Err(format!(
                    "config.json: linux.resources.devices: the rules deny {bit} on c \
                     {major}:{minor}, a device the cell has; on cgroup v2 nixcell has no \
                     device controller to enforce that (it takes only rules that leave the \
                     cell's devices usable: null, zero, full, random, urandom, tty, ptmx, pts)"
                ));
            }
        }
    }
    Ok(())
}

/// A `linux.resources.unified` key: a controller's file (`CONTROLLER.NAME`), not a
/// cgroup.* core file, and none of the limits the profile sets (those are asked
/// through memory/cpu/pids, where the profile caps them).
fn unified(k: &str, ceiling: &CgroupLimits) -> Res {
    let bad = |why: &str| Err(format!("config.json: linux.resources.unified {k:?}: {why}"));
    let Some((c, name)) = k.split_once('.') else {
        return bad("not CONTROLLER.FILE");
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if !ok(c) || !ok(name) || c.contains('.') {
        return bad("not CONTROLLER.FILE");
    }
    if c == "cgroup" {
        return bad("a cgroup core file, not a resource");
    }
    let capped = match k {
        "memory.max" | "memory.swap.max" => ceiling.memory.is_some(),
        "cpu.max" => ceiling.cpus.is_some(),
        "pids.max" => ceiling.pids.is_some(),
        _ => false,
    };
    if capped {
        return bad("the profile limits it: ask through linux.resources.memory/cpu/pids");
    }
    Ok(())
}

/// Writes `plan`'s files into the container's cgroup (`dirs`: (controller, dir)).
/// A file the kernel lacks: its `fallback` where there is one; hugetlb's rsvd files
/// skipped (older kernels); else an error naming the file.
fn apply(version: Version, dirs: &[(String, PathBuf)], writes: &[Write]) -> Res {
    let dir = |c: &str| {
        dirs.iter()
            .find(|(dc, _)| version == Version::V2 || dc == c)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| format!("no {c} cgroup hierarchy for linux.resources"))
    };
    // Without O_CREAT: a file cgroupfs lacks is ENOENT then, not EACCES.
    let write = |p: &Path, v: &str| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)?
            .write_all(v.as_bytes())
    };
    for (c, f, v) in writes {
        let d = dir(c)?;
        let p = d.join(f);
        let missing = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let r = match write(&p, v) {
            Err(e) if missing(&e) && f.contains(".rsvd.") => Ok(()),
            Err(e) if missing(&e) => match fallback(f, v) {
                Some((f2, v2)) => write(&d.join(f2), &v2).map_err(|e2| {
                    format!(
                        "linux.resources: {} = {v}: {e}; {f2} = {v2}: {e2}",
                        p.display()
                    )
                }),
                None => Err(format!(
                    "linux.resources: {} = {v}: {e} (this kernel has no {f})",
                    p.display()
                )),
            },
            r => r.map_err(|e| format!("linux.resources: {} = {v}: {e}", p.display())),
        };
        r?;
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

/// Into the container's cgroup (at its cgroupsPath, `Hardening::place_cgroup`, else
/// the run's): the asked resources (`plan`), warnings through `warn`. On v1 a file of
/// a further hierarchy (cpuset, blkio, devices, net_cls, net_prio, hugetlb, rdma)
/// makes the container's cgroup there too, at the same path, joined by PID 1 and
/// `exec`; a hierarchy this host lacks is an error naming the field.
pub fn write_resources(
    l: Option<&super::config::Linux>,
    ceiling: &CgroupLimits,
    hardening: &mut crate::run::harden::Hardening,
    mut warn: impl FnMut(&str),
) -> Res {
    let r = l.and_then(|l| l.resources.as_ref());
    let Some((version, mut dirs)) = hardening.cgroup_dirs() else {
        if r.is_some() {
            warn("linux.resources: not written: the cell has no cgroup (see the cgroup layer)");
        }
        return Ok(());
    };
    let (mut writes, warnings) = plan(version, r.unwrap_or(&Resources::default()), ceiling)?;
    for w in warnings {
        warn(&w);
    }
    // v1: the container's cgroup in each further hierarchy a write needs (cpuset,
    // blkio, devices, ...), at the path its memory cgroup has.
    let mut extra: Vec<&'static str> = Vec::new();
    for (c, _, _) in &writes {
        if version == Version::V1 && !dirs.iter().any(|(d, _)| d == c) && !extra.contains(c) {
            extra.push(c);
        }
    }
    for c in extra {
        let field = field_of(c);
        let Some(mount) = v1_mount(c) else {
            return Err(format!(
                "config.json: linux.resources.{field}: this host has no cgroup v1 hierarchy \
                 with the {c} controller mounted"
            ));
        };
        match v1_dir(&dirs, c, &mount) {
            // Co-mounted with a hierarchy the container has a cgroup in already.
            Ok((d, false)) => dirs.push((c.into(), d)),
            Ok((d, true)) => {
                hardening.add_cgroup_dir(c, d.clone())?;
                dirs.push((c.into(), d));
            }
            // Rootless (as the placement): a hierarchy not delegated is no failure.
            Err(e) if !crate::sandbox::ns::is_host_root() => {
                warn(&format!("linux.resources.{field}: not written: {e}"));
                writes.retain(|(wc, _, _)| wc != &c);
            }
            Err(e) => return Err(format!("linux.resources.{field}: {e}")),
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

/// The field of linux.resources a v1 controller's files come from (for errors).
fn field_of(ctrl: &str) -> &'static str {
    match ctrl {
        "cpuset" => "cpu.cpus/mems",
        "blkio" => "blockIO",
        "devices" => "devices",
        "net_cls" => "network.classID",
        "net_prio" => "network.priorities",
        "hugetlb" => "hugepageLimits",
        "rdma" => "rdma",
        "memory" => "memory",
        "cpu" => "cpu",
        _ => "pids",
    }
}

/// The container's cgroup in the v1 hierarchy of `ctrl` (mounted at `mount`): at the
/// path its memory cgroup has under the memory mount; made (a new one: true), or one
/// of `dirs` when the hierarchy is co-mounted with theirs (false). cpuset: cpus and
/// mems copied down from the parents (a v1 cpuset cgroup starts empty and takes no
/// process so).
fn v1_dir(dirs: &[(String, PathBuf)], ctrl: &str, cm: &Path) -> Res<(PathBuf, bool)> {
    let mem = dirs
        .iter()
        .find(|(c, _)| c == "memory")
        .map(|(_, d)| d)
        .ok_or("no memory cgroup")?;
    let mm = v1_mount("memory").ok_or("no memory cgroup hierarchy")?;
    let rel = mem.strip_prefix(&mm).map_err(|e| e.to_string())?;
    let d = cm.join(rel);
    if dirs.iter().any(|(_, x)| *x == d) {
        return Ok((d, false));
    }
    let parent = d.parent().unwrap_or(cm);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: mkdir: {e}", parent.display()))?;
    std::fs::create_dir(&d).map_err(|e| format!("{}: mkdir: {e}", d.display()))?;
    if ctrl != "cpuset" {
        return Ok((d, true));
    }
    let mut chain: Vec<&Path> = d.ancestors().take_while(|a| a.starts_with(cm)).collect();
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
    Ok((d, true))
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
        let got: Vec<(&str, &str, &str)> = w
            .iter()
            .map(|(c, f, v)| (*c, f.as_str(), v.as_str()))
            .collect();
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
    fn blkio_network_hugetlb_rdma_on_v1_and_v2() {
        let r = res(r#"{"blockIO":{"weight":500,"leafWeight":300,
            "weightDevice":[{"major":8,"minor":0,"weight":500,"leafWeight":300}],
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":102400}],
            "throttleWriteBpsDevice":[{"major":8,"minor":0,"rate":204800}],
            "throttleReadIOPSDevice":[{"major":8,"minor":0,"rate":10}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":20}]},
            "network":{"classID":1048577,"priorities":[{"name":"eth0","priority":5}]},
            "hugepageLimits":[{"pageSize":"2MB","limit":209715200}],
            "rdma":{"mlx5_1":{"hcaHandles":3,"hcaObjects":10000}}}"#);
        let (w, _) = plan(Version::V1, &r, &CgroupLimits::default()).unwrap();
        let got: Vec<(&str, &str, &str)> = w
            .iter()
            .map(|(c, f, v)| (*c, f.as_str(), v.as_str()))
            .collect();
        let want = [
            ("blkio", "blkio.weight", "500"),
            ("blkio", "blkio.leaf_weight", "300"),
            ("blkio", "blkio.weight_device", "8:0 500"),
            ("blkio", "blkio.leaf_weight_device", "8:0 300"),
            ("blkio", "blkio.throttle.read_bps_device", "8:0 102400"),
            ("blkio", "blkio.throttle.write_bps_device", "8:0 204800"),
            ("blkio", "blkio.throttle.read_iops_device", "8:0 10"),
            ("blkio", "blkio.throttle.write_iops_device", "8:0 20"),
            ("hugetlb", "hugetlb.2MB.limit_in_bytes", "209715200"),
            ("hugetlb", "hugetlb.2MB.rsvd.limit_in_bytes", "209715200"),
            ("net_cls", "net_cls.classid", "1048577"),
            ("net_prio", "net_prio.ifpriomap", "eth0 5"),
            ("rdma", "rdma.max", "mlx5_1 hca_handle=3 hca_object=10000"),
        ];
        assert_eq!(got, want);
        let (w, warn) = plan(Version::V2, &r, &CgroupLimits::default()).unwrap();
        let got: Vec<(&str, &str)> = w.iter().map(|(_, f, v)| (f.as_str(), v.as_str())).collect();
        let want = [
            ("io.bfq.weight", "500"),
            ("io.bfq.weight", "8:0 500"),
            ("io.max", "8:0 rbps=102400"),
            ("io.max", "8:0 wbps=204800"),
            ("io.max", "8:0 riops=10"),
            ("io.max", "8:0 wiops=20"),
            ("hugetlb.2MB.max", "209715200"),
            ("hugetlb.2MB.rsvd.max", "209715200"),
            ("rdma.max", "mlx5_1 hca_handle=3 hca_object=10000"),
        ];
        assert_eq!(got, want);
        assert!(warn.iter().any(|w| w.contains("leafWeight")), "{warn:?}");
        assert!(warn.iter().any(|w| w.contains("network")), "{warn:?}");
        // Without BFQ: runc's names and conversion.
        assert_eq!(
            fallback("blkio.weight", "500"),
            Some(("blkio.bfq.weight", "500".into()))
        );
        assert_eq!(
            fallback("io.bfq.weight", "500"),
            Some(("io.weight", "4950".into()))
        );
        assert_eq!(
            fallback("io.bfq.weight", "8:0 10"),
            Some(("io.weight", "8:0 1".into()))
        );
        assert_eq!(
            fallback("io.bfq.weight", "1000"),
            Some(("io.weight", "10000".into()))
        );
        assert_eq!(fallback("pids.max", "1"), None);
        for bad in [
            r#"{"hugepageLimits":[{"pageSize":"../x","limit":1}]}"#,
            r#"{"network":{"priorities":[{"name":"a b","priority":1}]}}"#,
            r#"{"rdma":{"a\nb":{"hcaHandles":1}}}"#,
        ] {
            assert!(
                plan(Version::V1, &res(bad), &CgroupLimits::default()).is_err(),
                "{bad}"
            );
        }
    }

    /// containerd's default rules (podman's are a subset of the same devices).
    const ENGINE_DEVICES: &str = r#"{"devices":[{"allow":false,"access":"rwm"},
        {"allow":true,"type":"c","access":"m"},{"allow":true,"type":"b","access":"m"},
        {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":8,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":7,"access":"rwm"},
        {"allow":true,"type":"c","major":5,"minor":0,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":5,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":9,"access":"rwm"},
        {"allow":true,"type":"c","major":136,"access":"rwm"},
        {"allow":true,"type":"c","major":5,"minor":2,"access":"rwm"},
        {"allow":true,"type":"c","major":10,"minor":200,"access":"rwm"}]}"#;

    const DENY_NULL_WRITE: &str =
        r#"{"devices":[{"allow":false,"type":"c","major":1,"minor":3,"access":"w"}]}"#;

    #[test]
    fn devices_in_order_then_the_cells_own() {
        let r = res(r#"{"devices":[{"allow":false,"access":"rwm"},
            {"allow":true,"type":"c","major":10,"minor":229,"access":"rwm"},
            {"allow":true,"type":"b","major":8,"minor":20,"access":"rw"},
            {"allow":false,"type":"c","major":1,"minor":5,"access":"w"}]}"#);
        let (w, _) = plan(Version::V1, &r, &CgroupLimits::default()).unwrap();
        let got: Vec<String> = w.iter().map(|(c, f, v)| format!("{c} {f} {v}")).collect();
        assert_eq!(
            got[..4],
            [
                "devices devices.deny a",
                "devices devices.allow c 10:229 rwm",
                "devices devices.allow b 8:20 rw",
                "devices devices.deny c 1:5 w",
            ]
        );
        // c 1:5 is named by a rule: not allowed again after it.
        assert_eq!(got.len(), 4 + CELL_DEVICES.len() - 1);
        assert!(!got[4..].iter().any(|l| l.contains(" 1:5 ")), "{got:?}");
        // /dev/null always (nixcell's set-up opens it).
        let (w0, _) = plan(Version::V1, &res(DENY_NULL_WRITE), &CgroupLimits::default()).unwrap();
        assert!(w0.iter().any(|(_, _, v)| v == "c 1:3 rwm"), "{w0:?}");
        assert!(got.contains(&"devices devices.allow c 136:* rwm".to_string()));
        for bad in [
            r#"{"devices":[{"allow":true,"type":"x"}]}"#,
            r#"{"devices":[{"allow":true,"type":"c","access":"rwx"}]}"#,
            r#"{"devices":[{"allow":true,"type":"c","major":-2}]}"#,
        ] {
            let e = plan(Version::V1, &res(bad), &CgroupLimits::default()).unwrap_err();
            assert!(e.contains("linux.resources.devices"), "{e}");
        }
        // v2: the engines' defaults pass (nothing to write); a rule list that denies a
        // device the cell has is refused, as nixcell cannot enforce it there.
        let (w, _) = plan(Version::V2, &res(ENGINE_DEVICES), &CgroupLimits::default()).unwrap();
        assert!(w.is_empty(), "{w:?}");
        // /dev/null is allowed after any list: a deny on it is no refusal.
        let mut null = res(ENGINE_DEVICES);
        null.devices.extend(res(DENY_NULL_WRITE).devices);
        assert!(plan(Version::V2, &null, &CgroupLimits::default()).is_ok());
        // podman's list: deny all (the runtime's defaults after it).
        let deny_all = res(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#);
        assert!(plan(Version::V2, &deny_all, &CgroupLimits::default()).is_ok());
        // /dev/zero named by a rule, and so not allowed after: refused on v2.
        let e = plan(Version::V2, &r, &CgroupLimits::default()).unwrap_err();
        assert!(e.contains("cgroup v2") && e.contains("on c 1:5,"), "{e}");
        // A deny of /dev/tty after the engine's defaults: refused.
        let mut no_tty = res(ENGINE_DEVICES);
        let deny_tty =
            r#"{"devices":[{"allow":false,"type":"c","major":5,"minor":0,"access":"rw"}]}"#;
        no_tty.devices.extend(res(deny_tty).devices);
        assert!(plan(Version::V2, &no_tty, &CgroupLimits::default()).is_err());
    }

    #[test]
    fn unified_only_on_v2_and_not_past_the_profile() {
        let r = res(r#"{"unified":{"memory.high":"1000000","io.weight":"default 50"}}"#);
        let e = plan(Version::V1, &r, &CgroupLimits::default()).unwrap_err();
        assert!(e.contains("unified"), "{e}");
        let (w, _) = plan(Version::V2, &r, &CgroupLimits::default()).unwrap();
        assert_eq!(get(&w, "memory.high"), Some("1000000"));
        assert_eq!(get(&w, "io.weight"), Some("default 50"));
        let ceiling = CgroupLimits {
            memory: Some(1 << 20),
            cpus: None,
            pids: Some(10),
        };
        for k in [
            "pids.max",
            "memory.max",
            "cgroup.procs",
            "../memory.max",
            "x",
            "a/b.c",
        ] {
            let r = res(&format!(r#"{{"unified":{{"{k}":"1"}}}}"#));
            let e = plan(Version::V2, &r, &ceiling).unwrap_err();
            assert!(e.contains(k), "{k}: {e}");
        }
        let r = res(r#"{"unified":{"cpu.max":"max 100000"}}"#);
        assert!(plan(Version::V2, &r, &ceiling).is_ok());
    }
}
