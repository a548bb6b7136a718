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
use super::Stage;
use super::proto::LayerReport;
use super::{StageError, StageResult};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A Landlock feature newer than the file system rules of ABI 1, each with its own
/// mode in the profile: `required` (a kernel without it is an error), `best-effort`
/// (used where the kernel has it; the verdict names it as not enforced otherwise) or
/// `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// LANDLOCK_ACCESS_FS_REFER: moving and linking files across directories.
    Refer,
    /// LANDLOCK_ACCESS_FS_TRUNCATE.
    Truncate,
    /// LANDLOCK_ACCESS_NET_BIND_TCP / CONNECT_TCP.
    Tcp,
    /// LANDLOCK_ACCESS_FS_IOCTL_DEV: ioctl(2) on device files.
    IoctlDev,
    /// LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET and LANDLOCK_SCOPE_SIGNAL.
    Scopes,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::Refer,
        Feature::Truncate,
        Feature::Tcp,
        Feature::IoctlDev,
        Feature::Scopes,
    ];

    /// The profile key of the feature.
    pub fn key(self) -> &'static str {
        match self {
            Feature::Refer => "refer",
            Feature::Truncate => "truncate",
            Feature::Tcp => "tcp",
            Feature::IoctlDev => "ioctl_dev",
            Feature::Scopes => "scopes",
        }
    }

    /// The first Landlock ABI with the feature.
    pub fn abi(self) -> i32 {
        match self {
            Feature::Refer => 2,
            Feature::Truncate => 3,
            Feature::Tcp => 4,
            Feature::IoctlDev => 5,
            Feature::Scopes => 6,
        }
    }

    /// What the feature controls.
    pub fn what(self) -> &'static str {
        match self {
            Feature::Refer => "renaming and linking files across directories",
            Feature::Truncate => "truncating files",
            Feature::Tcp => "TCP bind/connect",
            Feature::IoctlDev => "ioctl on device files",
            Feature::Scopes => "abstract unix sockets and signals scoped to the cell",
        }
    }

    /// What a cell may do when the kernel lacks the feature.
    pub fn without(self) -> &'static str {
        match self {
            Feature::Refer => {
                "the kernel then denies every rename or link into another directory (stricter, not weaker)"
            }
            Feature::Truncate => {
                "truncate(2) and O_TRUNC are then checked by file permissions only"
            }
            Feature::Tcp => {
                "the cell may then bind and connect to any port of its own loopback; the network namespace still cuts it off from the host"
            }
            Feature::IoctlDev => "ioctl on the cell's device nodes is then not limited by Landlock",
            Feature::Scopes => {
                "the pid and network namespaces then still keep the host's processes and abstract sockets out of reach"
            }
        }
    }

    /// Whether a kernel of Landlock ABI `abi` (0: none) has the feature.
    pub fn available(self, abi: i32) -> bool {
        abi >= self.abi()
    }
}

/// The profile's mode for each feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub refer: LayerMode,
    pub truncate: LayerMode,
    pub tcp: LayerMode,
    pub ioctl_dev: LayerMode,
    pub scopes: LayerMode,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            refer: LayerMode::Off,
            truncate: LayerMode::Off,
            tcp: LayerMode::Off,
            ioctl_dev: LayerMode::Off,
            scopes: LayerMode::Off,
        }
    }
}

impl Features {
    pub fn mode(&self, f: Feature) -> LayerMode {
        match f {
            Feature::Refer => self.refer,
            Feature::Truncate => self.truncate,
            Feature::Tcp => self.tcp,
            Feature::IoctlDev => self.ioctl_dev,
            Feature::Scopes => self.scopes,
        }
    }
}

/// What the profile asks of Landlock. `mode` is the layer's: `required` refuses a
/// kernel without Landlock, `best-effort` runs there and says so. Wherever Landlock
/// is applied, its file system rules (ABI 1) are a hard requirement: they are never
/// dropped silently.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandlockSpec {
    pub mode: LayerMode,
    pub features: Features,
    pub allow_ports: Vec<u16>,
}

impl Default for LandlockSpec {
    fn default() -> Self {
        LandlockSpec {
            mode: LayerMode::Off,
            features: Features::default(),
            allow_ports: Vec::new(),
        }
    }
}

const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The Landlock ABI of the running kernel, or the errno of the probe: EOPNOTSUPP when
/// Landlock is built in but not enabled (not in `lsm=`), ENOSYS when it is not built.
pub fn probe_abi() -> Result<i32, Errno> {
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
    if v < 0 {
        Err(Errno::last())
    } else {
        Ok(v as i32)
    }
}

/// The Landlock ABI of the running kernel, 0 when it has none (or it is disabled).
pub fn kernel_abi() -> i32 {
    probe_abi().unwrap_or(0)
}

/// Why the kernel has no Landlock, from the probe's errno, and what to do.
pub fn missing_reason(e: Errno) -> String {
    match e {
        Errno::EOPNOTSUPP => "the kernel has Landlock built in but not enabled (landlock_create_ruleset: EOPNOTSUPP): add landlock to the lsm= boot parameter (e.g. lsm=landlock,lockdown,yama,apparmor,bpf)".into(),
        Errno::ENOSYS => "the kernel has no Landlock (landlock_create_ruleset: ENOSYS): it needs Linux >= 5.13 built with CONFIG_SECURITY_LANDLOCK".into(),
        e => format!("landlock_create_ruleset failed: {}", e.desc()),
    }
}

/// The snake_case names of file system access rights, for verdicts and the doctor.
pub fn fs_names(access: BitFlags<AccessFs>) -> Vec<&'static str> {
    access
        .iter()
        .map(|a| match a {
            AccessFs::Execute => "execute",
            AccessFs::WriteFile => "write_file",
            AccessFs::ReadFile => "read_file",
            AccessFs::ReadDir => "read_dir",
            AccessFs::RemoveDir => "remove_dir",
            AccessFs::RemoveFile => "remove_file",
            AccessFs::MakeChar => "make_char",
            AccessFs::MakeDir => "make_dir",
            AccessFs::MakeReg => "make_reg",
            AccessFs::MakeSock => "make_sock",
            AccessFs::MakeFifo => "make_fifo",
            AccessFs::MakeBlock => "make_block",
            AccessFs::MakeSym => "make_sym",
            AccessFs::Refer => "refer",
            AccessFs::Truncate => "truncate",
            AccessFs::IoctlDev => "ioctl_dev",
            _ => "other",
        })
        .collect()
}

/// The file system rights a ruleset handles: those of ABI 1 plus the features not off.
pub fn requested_fs(features: &Features) -> BitFlags<AccessFs> {
    let mut fs = AccessFs::from_all(ABI::V1);
    for (f, right) in [
        (Feature::Refer, AccessFs::Refer),
        (Feature::Truncate, AccessFs::Truncate),
        (Feature::IoctlDev, AccessFs::IoctlDev),
    ] {
        if features.mode(f) != LayerMode::Off {
            fs |= right;
        }
    }
    fs
}

/// A file system rule: a path in the cell and the rights granted beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

/// The file system rules a spec calls for, with rights out of `handled` (the rights the
/// ruleset asks to handle; the landlock crate drops those the kernel lacks).
pub fn fs_rules(spec: &RunSpec, handled: BitFlags<AccessFs>) -> Vec<FsRule> {
    let read = handled & (AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir);
    let all = handled;
    let list = BitFlags::from(AccessFs::ReadDir);
    let read_only = AccessFs::ReadFile | AccessFs::ReadDir;
    let dev = handled & (AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev);
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
    for dest in super::ocimount::writable_dests(spec) {
        rules.push(FsRule {
            path: dest,
            access: all,
        });
    }
    // An image root has what its image and config.json give: rules on paths it lacks
    // are left out (the rule on `/`, its first mount, covers what is there).
    if spec.image_root().is_some() {
        rules.retain(|r| r.path.exists());
    }
    rules
}

fn fail(syscall: &'static str, detail: impl Into<String>, errno: Errno) -> StageError {
    StageError::new(Stage::Landlock, syscall, detail, errno)
}

/// The errno of the system call behind a ruleset error (the crate keeps it as the
/// error's source); EINVAL for errors the crate raises itself (an empty or
/// incompatible set of rights).
fn ruleset_errno(e: landlock::RulesetError) -> Errno {
    Errno::from_raw(*landlock::Errno::from(e))
}

/// The errno of the failed open(2) behind a [`PathFd`] error.
fn path_fd_errno(e: &landlock::PathFdError) -> Errno {
    let landlock::PathFdError::OpenCall { source, .. } = e else {
        return Errno::EINVAL;
    };
    Errno::from_raw(source.raw_os_error().unwrap_or(libc::EIO))
}

fn level(m: LayerMode) -> CompatLevel {
    if m == LayerMode::Required {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    }
}

/// The verdict's words on the features: what is enforced, what is not and why.
fn feature_notes(ll: &LandlockSpec, abi: i32) -> (Vec<String>, Vec<String>) {
    let (mut on, mut missing) = (Vec::new(), Vec::new());
    for f in Feature::ALL {
        let m = ll.features.mode(f);
        if m == LayerMode::Off {
            continue;
        }
        if f.available(abi) {
            on.push(f.key().to_string());
        } else {
            missing.push(format!(
                "{} ({}: needs ABI {}, the kernel has {}; {})",
                f.key(),
                f.what(),
                f.abi(),
                if abi == 0 {
                    "no Landlock".to_string()
                } else {
                    format!("ABI {abi}")
                },
                f.without()
            ));
        }
    }
    (on, missing)
}

/// Applies the spec's Landlock policy to the calling process; returns the report.
///
/// The ruleset is built with the landlock crate's compatibility model: the file
/// system rights of ABI 1 and every `required` feature are hard requirements (the
/// crate refuses a kernel without them), `best-effort` features are dropped by the
/// crate where the kernel lacks them, and the status it returns is checked.
pub fn apply(spec: &RunSpec, ll: &LandlockSpec) -> StageResult<LayerReport> {
    let report = |enforced: bool, detail: String| LayerReport {
        layer: "landlock".into(),
        enforced,
        detail,
    };
    if ll.mode == LayerMode::Off {
        return Ok(report(false, "off in the profile".into()));
    }
    let required_missing = |abi: i32| -> Option<Feature> {
        Feature::ALL
            .into_iter()
            .find(|f| ll.features.mode(*f) == LayerMode::Required && !f.available(abi))
    };
    let v = match probe_abi() {
        Ok(v) => v,
        Err(e) => {
            let why = missing_reason(e);
            if ll.mode == LayerMode::Required {
                return Err(fail(
                    "landlock_create_ruleset",
                    format!("required by the profile: {why}"),
                    e,
                ));
            }
            if let Some(f) = required_missing(0) {
                return Err(fail(
                    "landlock_create_ruleset",
                    format!(
                        "{} ({}) is required by the profile: {why}",
                        f.key(),
                        f.what()
                    ),
                    e,
                ));
            }
            let (_, missing) = feature_notes(ll, 0);
            let mut detail = format!("not enforced: {why}; no file system rules");
            if !missing.is_empty() {
                detail.push_str(&format!("; not enforced: {}", missing.join("; ")));
            }
            return Ok(report(false, detail));
        }
    };
    if let Some(f) = required_missing(v) {
        return Err(fail(
            "landlock_create_ruleset",
            format!(
                "required by the profile: {} ({}) needs Landlock ABI {}, the kernel has ABI {v}",
                f.key(),
                f.what(),
                f.abi()
            ),
            Errno::EOPNOTSUPP,
        ));
    }
    let lerr = |what: &str, e: landlock::RulesetError| {
        let detail = format!("{what}: {e}");
        fail("landlock", detail, ruleset_errno(e))
    };
    let f = &ll.features;
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(|e| lerr("handle the file system rights of ABI 1", e))?;
    for (feat, right) in [
        (Feature::Refer, AccessFs::Refer),
        (Feature::Truncate, AccessFs::Truncate),
        (Feature::IoctlDev, AccessFs::IoctlDev),
    ] {
        if f.mode(feat) != LayerMode::Off {
            rs = rs
                .set_compatibility(level(f.mode(feat)))
                .handle_access(right)
                .map_err(|e| lerr(&format!("handle {}", feat.key()), e))?;
        }
    }
    if f.tcp != LayerMode::Off {
        rs = rs
            .set_compatibility(level(f.tcp))
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|e| lerr("handle tcp", e))?;
    }
    if f.scopes != LayerMode::Off {
        rs = rs
            .set_compatibility(level(f.scopes))
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(|e| lerr("scopes", e))?;
    }
    let mut created = rs
        .create()
        .map_err(|e| lerr("create", e))?
        // The rules carry the requested rights; the crate drops, per rule, those of
        // best-effort features the kernel lacks (the required ones were checked above).
        .set_compatibility(CompatLevel::BestEffort);
    let handled = requested_fs(f);
    let rules = fs_rules(spec, handled);
    for r in &rules {
        let fd = PathFd::new(&r.path).map_err(|e| {
            let detail = format!("{}: {e}", r.path.display());
            fail("open(O_PATH)", detail, path_fd_errno(&e))
        })?;
        let access = if std::fs::metadata(&r.path).is_ok_and(|m| m.is_dir()) {
            r.access
        } else {
            r.access & AccessFs::from_file(ABI::V5)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| lerr(&format!("rule on {}", r.path.display()), e))?;
    }
    let tcp = f.tcp != LayerMode::Off && Feature::Tcp.available(v);
    if tcp {
        for p in &ll.allow_ports {
            created = created
                .add_rule(NetPort::new(*p, AccessNet::BindTcp | AccessNet::ConnectTcp))
                .map_err(|e| lerr(&format!("port {p}"), e))?;
        }
    }
    // no_new_privs is the caller's to set (an OCI container may run without it,
    // restricted while it holds CAP_SYS_ADMIN in its user namespace).
    let status = created
        .no_new_privs(false)
        .restrict_self()
        .map_err(|e| lerr("restrict_self", e))?;
    // Where the kernel has Landlock the file system rules are always enforced: a
    // status of "not enforced" here is an error, whatever the features' modes.
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(fail(
            "landlock_restrict_self",
            format!("the kernel (ABI {v}) did not enforce the ruleset"),
            Errno::EOPNOTSUPP,
        ));
    }
    let (on, missing) = feature_notes(ll, v);
    let effective = handled & AccessFs::from_all(ABI::from(v));
    let mut detail = format!(
        "ABI {v}, ruleset {}: file system limited to {} paths of the cell (rights handled: {})",
        if status.ruleset == RulesetStatus::FullyEnforced {
            "fully enforced"
        } else {
            "partially enforced"
        },
        rules.len(),
        fs_names(effective).join(",")
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
    if f.scopes != LayerMode::Off && Feature::Scopes.available(v) {
        detail.push_str("; abstract unix sockets and signals scoped to the cell");
    }
    detail.push_str(&format!(
        "; features enforced: {}",
        if on.is_empty() {
            "none".to_string()
        } else {
            on.join(",")
        }
    ));
    if !missing.is_empty() {
        detail.push_str(&format!("; not enforced: {}", missing.join("; ")));
    }
    let off: Vec<&str> = Feature::ALL
        .into_iter()
        .filter(|x| f.mode(*x) == LayerMode::Off)
        .map(Feature::key)
        .collect();
    if !off.is_empty() {
        detail.push_str(&format!("; off in the profile: {}", off.join(",")));
    }
    Ok(report(true, detail))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_rule_open_keeps_its_errno() {
        let e = landlock::PathFd::new("/nonexistent-nixcell-path").unwrap_err();
        assert_eq!(super::path_fd_errno(&e), Errno::ENOENT);
        let e = landlock::PathFd::new("/proc/self/exe/below-a-file").unwrap_err();
        assert_eq!(super::path_fd_errno(&e), Errno::ENOTDIR);
    }

    #[test]
    fn a_ruleset_error_of_the_crate_itself_is_einval() {
        use landlock::{AccessFs, BitFlags, CompatLevel, Compatible, Ruleset, RulesetAttr};
        let e = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(BitFlags::<AccessFs>::EMPTY)
            .unwrap_err();
        assert_eq!(super::ruleset_errno(e), Errno::EINVAL);
    }

    use super::*;

    fn spec(mode: LayerMode) -> LandlockSpec {
        LandlockSpec {
            mode: LayerMode::BestEffort,
            features: Features {
                refer: mode,
                truncate: mode,
                tcp: mode,
                ioctl_dev: mode,
                scopes: mode,
            },
            allow_ports: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_names_exactly_the_features_the_kernel_lacks() {
        let ll = spec(LayerMode::BestEffort);
        let (on, missing) = feature_notes(&ll, 2);
        assert_eq!(on, ["refer"]);
        let names: Vec<&str> = missing
            .iter()
            .map(|m| m.split(' ').next().unwrap())
            .collect();
        assert_eq!(names, ["truncate", "tcp", "ioctl_dev", "scopes"]);
        assert!(missing[1].contains("needs ABI 4, the kernel has ABI 2"));
        let (on, missing) = feature_notes(&ll, 6);
        assert_eq!(on.len(), 5);
        assert!(missing.is_empty());
        let (on, missing) = feature_notes(&ll, 0);
        assert!(on.is_empty());
        assert!(missing[0].contains("the kernel has no Landlock"));
        // Features off are neither enforced nor missing.
        let (on, missing) = feature_notes(&spec(LayerMode::Off), 1);
        assert!(on.is_empty() && missing.is_empty());
    }

    #[test]
    fn features_off_are_not_handled() {
        let all = requested_fs(&spec(LayerMode::BestEffort).features);
        assert!(all.contains(AccessFs::Refer | AccessFs::Truncate | AccessFs::IoctlDev));
        let none = requested_fs(&spec(LayerMode::Off).features);
        assert_eq!(none, AccessFs::from_all(ABI::V1));
        assert_eq!(
            fs_names(AccessFs::Refer | AccessFs::Execute),
            ["execute", "refer"]
        );
    }
}
