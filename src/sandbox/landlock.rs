//! Landlock: the command's file system and network access, limited to what the mount
//! plan puts in the cell (landlock(7)). Applied in the command's process after every
//! mount exists and before seccomp, so that a mount or namespace escape still meets
//! an access-control layer that is not based on mounts.
//!
//! Rules (all "beneath" a path): read+execute on the cell's store (the closure), read+write
//! (+execute) on /tmp, the workdir and writable binds, read on read-only binds, on
//! /etc and /proc, device access on the cell's /dev nodes, directory listing from /.
//! ABI 4 adds TCP bind/connect control, ABI 6 scopes (abstract unix sockets, signals).

use super::LayerMode;
use super::RunSpec;
use super::proto::LayerReport;
use super::{StageError, StageResult};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the profile asks of Landlock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandlockSpec {
    pub mode: LayerMode,
    pub restrict_tcp: bool,
    pub allow_ports: Vec<u16>,
    pub scopes: bool,
}

impl Default for LandlockSpec {
    fn default() -> Self {
        LandlockSpec {
            mode: LayerMode::Off,
            restrict_tcp: false,
            allow_ports: Vec::new(),
            scopes: false,
        }
    }
}

const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The Landlock ABI of the running kernel, 0 when it has none (or it is disabled).
pub fn kernel_abi() -> i32 {
    // SAFETY: with a NULL attribute, size 0 and the VERSION flag the call only returns
    // the ABI version (landlock_create_ruleset(2)); it creates nothing.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

/// A file system rule: a path in the cell and the rights granted beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

/// The file system rules a spec calls for, for a kernel of `abi`.
pub fn fs_rules(spec: &RunSpec, abi: ABI) -> Vec<FsRule> {
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let list = BitFlags::from(AccessFs::ReadDir);
    let read_only = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut dev = AccessFs::ReadFile | AccessFs::WriteFile;
    if abi >= ABI::V5 {
        dev |= AccessFs::IoctlDev;
    }
    let mut rules = vec![
        FsRule {
            path: "/".into(),
            access: list,
        },
        FsRule {
            path: "/etc".into(),
            access: read_only,
        },
        FsRule {
            path: "/proc".into(),
            access: read_only,
        },
        FsRule {
            path: "/tmp".into(),
            access: all,
        },
        FsRule {
            path: "/dev/pts".into(),
            access: dev,
        },
    ];
    for d in super::rootfs::DEVICES {
        rules.push(FsRule {
            path: Path::new("/dev").join(d),
            access: dev,
        });
    }
    // One rule for the cell's store: it is a read-only tmpfs holding exactly the
    // closure's binds, and a rule is checked along the path as the cell sees it, so
    // this grants the closure and nothing else. It costs one rule where a rule per
    // store path costs an open(2) and a landlock_add_rule(2) each (about 2 ms at 1000
    // paths), and a process that reached a host path outside the cell's tree would
    // find no rule at all on the way.
    if !spec.store_paths.is_empty() {
        rules.push(FsRule {
            path: spec.store_dir.clone(),
            access: read,
        });
    }
    for m in &spec.mounts {
        rules.push(FsRule {
            path: m.dest.clone(),
            access: if m.writable { all } else { read },
        });
    }
    rules
}

fn fail(syscall: &'static str, detail: impl Into<String>, errno: Errno) -> StageError {
    StageError::new("landlock", syscall, detail, errno)
}

/// Applies the spec's Landlock policy to the calling process; returns the report.
pub fn apply(spec: &RunSpec, ll: &LandlockSpec) -> StageResult<LayerReport> {
    let report = |enforced: bool, detail: String| LayerReport {
        layer: "landlock".into(),
        enforced,
        detail,
    };
    if ll.mode == LayerMode::Off {
        return Ok(report(false, "off in the profile".into()));
    }
    let required = ll.mode == LayerMode::Required;
    let v = kernel_abi();
    if v == 0 {
        let why = "the kernel has no Landlock (landlock_create_ruleset failed; needs Linux >= 5.13 with lsm=landlock)";
        if required {
            return Err(fail(
                "landlock_create_ruleset",
                format!("required by the profile: {why}"),
                Errno::EOPNOTSUPP,
            ));
        }
        return Ok(report(false, why.into()));
    }
    let abi = ABI::from(v);
    let mut notes = Vec::new();
    let tcp = ll.restrict_tcp && v >= 4;
    if ll.restrict_tcp && !tcp {
        let why = format!("TCP bind/connect rules need Landlock ABI 4, the kernel has ABI {v}");
        if required {
            return Err(fail(
                "landlock_create_ruleset",
                format!("required by the profile: {why}"),
                Errno::EOPNOTSUPP,
            ));
        }
        notes.push(format!("not enforced: {why}"));
    }
    let scopes = ll.scopes && v >= 6;
    if ll.scopes && !scopes {
        let why = format!(
            "scopes (abstract unix sockets, signals) need Landlock ABI 6, the kernel has ABI {v}"
        );
        if required {
            return Err(fail(
                "landlock_create_ruleset",
                format!("required by the profile: {why}"),
                Errno::EOPNOTSUPP,
            ));
        }
        notes.push(format!("not enforced: {why}"));
    }
    let lerr = |what: &str, e: landlock::RulesetError| {
        fail("landlock", format!("{what}: {e}"), Errno::EINVAL)
    };
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| lerr("handle fs", e))?;
    if tcp {
        rs = rs
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|e| lerr("handle net", e))?;
    }
    if scopes {
        rs = rs
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(|e| lerr("scope", e))?;
    }
    let mut created = rs.create().map_err(|e| lerr("create", e))?;
    let rules = fs_rules(spec, abi);
    for r in &rules {
        let fd = PathFd::new(&r.path).map_err(|e| {
            fail(
                "open(O_PATH)",
                format!("{}: {e}", r.path.display()),
                Errno::ENOENT,
            )
        })?;
        let access = if std::fs::metadata(&r.path).is_ok_and(|m| m.is_dir()) {
            r.access
        } else {
            r.access & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| lerr(&format!("rule on {}", r.path.display()), e))?;
    }
    if tcp {
        for p in &ll.allow_ports {
            created = created
                .add_rule(NetPort::new(*p, AccessNet::BindTcp | AccessNet::ConnectTcp))
                .map_err(|e| lerr(&format!("port {p}"), e))?;
        }
    }
    let status = created
        .restrict_self()
        .map_err(|e| lerr("restrict_self", e))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        let why = format!("the kernel enforced the ruleset only {:?}", status.ruleset);
        if required {
            return Err(fail("landlock_restrict_self", why, Errno::EOPNOTSUPP));
        }
        notes.push(why);
    }
    let mut detail = format!(
        "ABI {v}: file system limited to {} paths of the cell",
        rules.len()
    );
    if tcp {
        if ll.allow_ports.is_empty() {
            detail.push_str("; TCP bind/connect denied");
        } else {
            detail.push_str(&format!(
                "; TCP bind/connect denied except ports {:?}",
                ll.allow_ports
            ));
        }
    }
    if scopes {
        detail.push_str("; abstract unix sockets and signals scoped to the cell");
    }
    for n in notes {
        detail.push_str("; ");
        detail.push_str(&n);
    }
    Ok(report(status.ruleset != RulesetStatus::NotEnforced, detail))
}
