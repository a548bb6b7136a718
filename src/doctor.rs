//! `nixcell doctor`: what this kernel and host can enforce, probed, not guessed.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub user_namespaces: Probe,
    pub landlock_abi: Option<i32>,
    pub seccomp: Probe,
    pub cgroup: CgroupReport,
    pub nix: Option<String>,
    pub rootless: bool,
}

#[derive(Debug, Serialize)]
pub struct Probe {
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct CgroupReport {
    /// "v1", "v2", "hybrid" or "none".
    pub mode: String,
    pub v1_controllers: Vec<String>,
    pub v2_controllers: Vec<String>,
}

/// Tries unshare(CLONE_NEWUSER) in a child so this process is not changed.
fn probe_userns() -> Probe {
    let out = std::process::Command::new("/proc/self/exe")
        .arg("__nixcell-probe-userns")
        .output();
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match out {
        Ok(o) if o.status.success() => Probe {
            available: true,
            detail: format!("unshare(CLONE_NEWUSER) works; max_user_namespaces={max}"),
        },
        Ok(o) => Probe {
            available: false,
            detail: format!(
                "unshare(CLONE_NEWUSER) failed: {}; max_user_namespaces={max}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        },
        Err(e) => Probe {
            available: false,
            detail: format!("cannot probe: {e}"),
        },
    }
}

/// The hidden probe: exits 0 when a user namespace can be created.
pub fn probe_userns_child() -> ! {
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
    Report {
        kernel,
        user_namespaces: probe_userns(),
        landlock_abi: landlock_abi(),
        seccomp: probe_seccomp(),
        cgroup: cgroup_report(Path::new("/sys/fs/cgroup")),
        nix,
        rootless: !nix::unistd::geteuid().is_root(),
    }
}

pub fn main(json: bool) -> i32 {
    let r = report();
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return 0;
    }
    let yn = |b: bool| if b { "yes" } else { "NO" };
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
        "user namespaces   {} ({})",
        yn(r.user_namespaces.available),
        r.user_namespaces.detail
    );
    match r.landlock_abi {
        Some(v) => println!("landlock          yes (ABI {v})"),
        None => println!("landlock          NO (not enabled in this kernel or LSM list)"),
    }
    println!(
        "seccomp           {} ({})",
        yn(r.seccomp.available),
        r.seccomp.detail
    );
    println!(
        "cgroup            {} (v1: {}; v2: {})",
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
    0
}
