//! `nixcell doctor`: what this kernel and host can enforce, probed, not guessed.

use crate::sandbox::landlock::Feature;
use landlock::Access;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub user_namespaces: Probe,
    pub landlock_abi: Option<i32>,
    pub landlock: LandlockReport,
    pub seccomp: Probe,
    pub cgroup: CgroupReport,
    pub nix: Option<String>,
    pub rootless: bool,
    /// Per layer: what this kernel and host can enforce, and what to do otherwise.
    pub layers: Vec<LayerReport>,
}

#[derive(Debug, Serialize)]
pub struct Probe {
    pub available: bool,
    pub detail: String,
    /// What to change when it is not available.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fixes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CgroupReport {
    /// "v1", "v2", "hybrid" or "none".
    pub mode: String,
    pub v1_controllers: Vec<String>,
    pub v2_controllers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LandlockFeature {
    pub feature: &'static str,
    pub abi: i32,
    pub available: bool,
    pub controls: &'static str,
    /// What the cell may do where the kernel lacks it.
    pub without: &'static str,
}

#[derive(Debug, Serialize)]
pub struct LandlockReport {
    pub available: bool,
    pub abi: Option<i32>,
    pub detail: String,
    /// The file system access rights this kernel can handle.
    pub fs_rights: Vec<&'static str>,
    pub features: Vec<LandlockFeature>,
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub layer: &'static str,
    /// "yes": fully; "partly": some features missing; "no".
    pub enforceable: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The AppArmor profile shipped for hosts that restrict unprivileged user namespaces.
pub use crate::sandbox::ns::APPARMOR_PROFILE;

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Tries unshare(CLONE_NEWUSER) in a child so this process is not changed.
fn probe_userns() -> Probe {
    let out = std::process::Command::new("/proc/self/exe")
        .arg("__nixcell-probe-userns")
        .output();
    let max = sysctl("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    let fixes = crate::sandbox::ns::userns_blockers();
    match out {
        Ok(o) if o.status.success() => Probe {
            available: true,
            detail: format!("unshare(CLONE_NEWUSER) works; max_user_namespaces={max}"),
            fixes: Vec::new(),
        },
        Ok(o) => Probe {
            available: false,
            detail: format!(
                "unshare(CLONE_NEWUSER) as an unprivileged identity failed: {}; max_user_namespaces={max}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            fixes,
        },
        Err(e) => Probe {
            available: false,
            detail: format!("cannot probe: {e}"),
            fixes,
        },
    }
}

/// The hidden probe: exits 0 when a user namespace can be created. As root it first
/// becomes an unprivileged identity (65534), as the init stage of a run does.
pub fn probe_userns_child() -> ! {
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::Uid::from_raw(65534);
        let nogroup = nix::unistd::Gid::from_raw(65534);
        if let Err(e) = nix::unistd::setgroups(&[])
            .and_then(|_| nix::unistd::setresgid(nogroup, nogroup, nogroup))
            .and_then(|_| nix::unistd::setresuid(nobody, nobody, nobody))
        {
            eprintln!("cannot become uid 65534 to probe: {}", e.desc());
            std::process::exit(1)
        }
    }
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{}", e.desc());
            std::process::exit(1)
        }
    }
}

/// Landlock ABI version of this kernel, if it has Landlock.
pub fn landlock_abi() -> Option<i32> {
    let v = crate::sandbox::landlock::kernel_abi();
    (v > 0).then_some(v)
}

fn landlock_report() -> LandlockReport {
    use crate::sandbox::landlock as ll;
    let probe = ll::probe_abi();
    let abi = probe.ok().filter(|v| *v > 0);
    let v = abi.unwrap_or(0);
    LandlockReport {
        available: abi.is_some(),
        abi,
        detail: match probe {
            Ok(v) => format!("ABI {v}"),
            Err(e) => ll::missing_reason(e),
        },
        fs_rights: if v > 0 {
            ll::fs_names(landlock::AccessFs::from_all(landlock::ABI::from(v)))
        } else {
            Vec::new()
        },
        features: Feature::ALL
            .into_iter()
            .map(|f| LandlockFeature {
                feature: f.key(),
                abi: f.abi(),
                available: f.available(v),
                controls: f.what(),
                without: f.without(),
            })
            .collect(),
    }
}

fn probe_seccomp() -> Probe {
    // PR_GET_SECCOMP answers EINVAL when the kernel lacks seccomp.
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP) };
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    Probe {
        available: r >= 0,
        detail: if r >= 0 {
            format!("filter mode; actions: {}", actions.trim())
        } else {
            "PR_GET_SECCOMP failed".into()
        },
        fixes: if r >= 0 {
            Vec::new()
        } else {
            vec!["a kernel built with CONFIG_SECCOMP_FILTER".into()]
        },
    }
}

/// Reads the cgroup layout from /proc/self/mountinfo-free sources: /sys/fs/cgroup.
pub fn cgroup_report(root: &Path) -> CgroupReport {
    let mut v1 = Vec::new();
    for c in ["cpu", "memory", "pids", "cpuacct", "freezer"] {
        if root.join(c).join("tasks").exists() {
            v1.push(c.to_string());
        }
    }
    let v2_root = if root.join("cgroup.controllers").exists() {
        Some(root.to_path_buf())
    } else if root.join("unified/cgroup.controllers").exists() {
        Some(root.join("unified"))
    } else {
        None
    };
    let v2: Vec<String> = v2_root
        .as_ref()
        .and_then(|r| std::fs::read_to_string(r.join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mode = match (
        v1.is_empty(),
        root.join("cgroup.controllers").exists(),
        v2_root.is_some(),
    ) {
        (true, true, _) => "v2",
        (false, _, true) => "hybrid",
        (false, _, false) => "v1",
        (true, false, _) => "none",
    };
    CgroupReport {
        mode: mode.into(),
        v1_controllers: v1,
        v2_controllers: v2,
    }
}

/// Whether this user's cgroup base is usable, with the controllers it has.
fn cgroup_layer(rootless: bool) -> LayerReport {
    use crate::sandbox::cgroup::{CONTROLLERS, Hierarchy, Version};
    let uid = nix::unistd::geteuid().as_raw();
    let fix = if rootless {
        format!(
            "delegate a cgroup to uid {uid} (scripts/setup.sh does it; or as root: mkdir it, chown it and its cgroup.procs, cgroup.subtree_control, cgroup.threads to the user); without it the limits fall back to rlimits"
        )
    } else {
        "mount a cgroup hierarchy with the memory, cpu and pids controllers".to_string()
    };
    let h = match Hierarchy::detect() {
        Ok(h) => h,
        Err(e) => {
            return LayerReport {
                layer: "cgroup",
                enforceable: "no",
                detail: e.to_string(),
                fix: Some(fix),
            };
        }
    };
    let bases = match h.bases(uid) {
        Ok(b) => b,
        Err(e) => {
            return LayerReport {
                layer: "cgroup",
                enforceable: "no",
                detail: e.to_string(),
                fix: Some(fix),
            };
        }
    };
    let writable = |d: &Path| nix::unistd::access(d, nix::unistd::AccessFlags::W_OK).is_ok();
    match h.version {
        Version::V2 => {
            let base = &bases[0].1;
            // The controllers the base can enable for its runs: those of its parent's
            // subtree_control once it exists (root enables them from the top).
            let have: Vec<String> = if base.is_dir() {
                std::fs::read_to_string(base.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            } else {
                std::fs::read_to_string(h.unified.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            };
            let missing: Vec<&str> = CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !have.iter().any(|h| h == c))
                .collect();
            let usable = if rootless {
                base.is_dir() && writable(base)
            } else {
                true
            };
            let detail = format!(
                "cgroup v2 at {}: base {} {}; controllers for runs: {}{}",
                h.unified.display(),
                base.display(),
                if usable {
                    "usable"
                } else {
                    "missing or not writable"
                },
                CONTROLLERS
                    .iter()
                    .filter(|c| have.iter().any(|h| h == *c))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(","),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; missing: {}", missing.join(","))
                }
            );
            LayerReport {
                layer: "cgroup",
                enforceable: match (usable, missing.is_empty()) {
                    (true, true) => "yes",
                    (true, false) => "partly",
                    _ => "no",
                },
                detail,
                fix: (!usable || !missing.is_empty()).then_some(fix),
            }
        }
        Version::V1 => {
            let mut parts = Vec::new();
            let mut ok = 0;
            for (c, b) in &bases {
                let usable = !rootless || (b.is_dir() && writable(b));
                ok += usize::from(usable);
                parts.push(format!(
                    "{c} {} {}",
                    b.display(),
                    if usable {
                        "usable"
                    } else {
                        "missing or not writable"
                    }
                ));
            }
            LayerReport {
                layer: "cgroup",
                enforceable: if ok == bases.len() { "yes" } else { "no" },
                detail: format!("cgroup v1: {}", parts.join("; ")),
                fix: (ok != bases.len()).then_some(fix),
            }
        }
    }
}

pub fn report() -> Report {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let nix = std::process::Command::new("nix-store")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let rootless = !nix::unistd::geteuid().is_root();
    let user_namespaces = probe_userns();
    let landlock = landlock_report();
    let seccomp = probe_seccomp();
    let mut layers = vec![LayerReport {
        layer: "namespaces",
        enforceable: if user_namespaces.available {
            "yes"
        } else {
            "no"
        },
        detail: if user_namespaces.available {
            "user, mount, pid, network, ipc, uts and cgroup namespaces".into()
        } else {
            format!(
                "no run is possible: {} (every run needs a user namespace, also when started as root)",
                user_namespaces.detail
            )
        },
        fix: (!user_namespaces.available).then(|| {
            if user_namespaces.fixes.is_empty() {
                "a kernel with CONFIG_USER_NS and user namespaces allowed".to_string()
            } else {
                user_namespaces.fixes.join("; ")
            }
        }),
    }];
    let missing: Vec<&LandlockFeature> =
        landlock.features.iter().filter(|f| !f.available).collect();
    layers.push(LayerReport {
        layer: "landlock",
        enforceable: match (landlock.available, missing.is_empty()) {
            (false, _) => "no",
            (true, true) => "yes",
            (true, false) => "partly",
        },
        detail: if landlock.available {
            let mut d = format!(
                "{}: file system rights {}; features: {}",
                landlock.detail,
                landlock.fs_rights.join(","),
                landlock
                    .features
                    .iter()
                    .map(|f| format!(
                        "{} (ABI {}) {}",
                        f.feature,
                        f.abi,
                        if f.available { "yes" } else { "NO" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for f in &missing {
                d.push_str(&format!("; without {}: {}", f.feature, f.without));
            }
            d
        } else {
            format!(
                "{}; the default profile runs without Landlock and says so, profiles with [landlock] mode = \"required\" (strict) refuse to run",
                landlock.detail
            )
        },
        fix: if !landlock.available {
            Some(landlock.detail.clone())
        } else if !missing.is_empty() {
            Some(format!(
                "a newer kernel (Landlock ABI {} has every feature nixcell uses); profiles requiring {} refuse to run here",
                Feature::ALL.iter().map(|f| f.abi()).max().unwrap_or(0),
                missing
                    .iter()
                    .map(|f| f.feature)
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        } else {
            None
        },
    });
    layers.push(LayerReport {
        layer: "seccomp",
        enforceable: if seccomp.available { "yes" } else { "no" },
        detail: seccomp.detail.clone(),
        fix: seccomp.fixes.first().cloned(),
    });
    layers.push(cgroup_layer(rootless));
    layers.push(LayerReport {
        layer: "rlimits",
        enforceable: "yes",
        detail: "core, nofile, fsize, cpu (and nproc/as when cgroups are missing)".into(),
        fix: None,
    });
    Report {
        kernel,
        user_namespaces,
        landlock_abi: landlock.abi,
        landlock,
        seccomp,
        cgroup: cgroup_report(Path::new("/sys/fs/cgroup")),
        nix,
        rootless,
        layers,
    }
}

pub fn main(json: bool) -> i32 {
    let r = report();
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return 0;
    }
    println!("kernel            {}", r.kernel);
    println!(
        "running as        {}",
        if r.rootless {
            "unprivileged user"
        } else {
            "root"
        }
    );
    println!(
        "cgroup mounts     {} (v1: {}; v2: {})",
        r.cgroup.mode,
        if r.cgroup.v1_controllers.is_empty() {
            "-".into()
        } else {
            r.cgroup.v1_controllers.join(",")
        },
        if r.cgroup.v2_controllers.is_empty() {
            "-".into()
        } else {
            r.cgroup.v2_controllers.join(",")
        }
    );
    println!(
        "nix               {}",
        r.nix.as_deref().unwrap_or("NOT FOUND")
    );
    for l in &r.layers {
        println!("{:<17} {}: {}", l.layer, l.enforceable, l.detail);
        if let Some(f) = &l.fix {
            println!("{:<17}   fix: {f}", "");
        }
    }
    0
}
