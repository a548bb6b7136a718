//! Sandbox profiles: TOML files that say which layers a cell gets, how strictly, and
//! its limits. The built-in ones (`profiles/*.toml`) are embedded in the binary; a
//! profile may `extends` another (built-in name or a path relative to the file).
//!
//! Every layer has a `mode`: `required` (the kernel must support it, else the run
//! fails with exit 125 before anything runs), `best-effort` (the run goes on and the
//! verdict says the layer was not enforced and why) or `off`.

pub use crate::sandbox::LayerMode;
pub use crate::sandbox::seccomp::{SeccompKind, SeccompPolicy};
use crate::units::{parse_duration, parse_size};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The built-in profiles: (name, file name, text).
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../profiles/default.toml")),
    ("strict", include_str!("../profiles/strict.toml")),
    ("ci", include_str!("../profiles/ci.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("profile {file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "unknown profile '{0}' (built-in: default, strict, ci; or give a path to a .toml file)"
    )]
    Unknown(String),
    #[error("profile {0}: 'extends' forms a cycle")]
    Cycle(String),
}

/// `[filesystem] workdir`: "cow" (or its old name "rw"), "bind" or "ro".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Access {
    Rw,
    Cow,
    Bind,
    Ro,
}

/// A size such as "512M", checked while parsing so that the error has a position.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "SizeOrInt")]
struct Size(u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeOrInt {
    Int(u64),
    Text(String),
}

impl TryFrom<SizeOrInt> for Size {
    type Error = String;
    fn try_from(v: SizeOrInt) -> Result<Self, String> {
        match v {
            SizeOrInt::Int(n) => Ok(Size(n)),
            SizeOrInt::Text(s) => parse_size(&s).map(Size),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct Dur(Duration);

impl TryFrom<String> for Dur {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration(&s).map(Dur)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: Option<String>,
    extends: Option<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    filesystem: RawFilesystem,
    #[serde(default)]
    landlock: RawLandlock,
    #[serde(default)]
    seccomp: RawSeccomp,
    #[serde(default)]
    cgroup: RawMode,
    #[serde(default)]
    rlimits: RawRlimits,
    /// `[network]` (see `net::policy`); none listed: loopback only.
    #[serde(default)]
    network: crate::net::policy::NetworkToml,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    capabilities: RawCapabilities,
}

/// `[capabilities]`: what an OCI container (`nixcell oci`) may be granted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    oci_allow: Option<Vec<Spanned<String>>>,
    oci_beyond: Option<Beyond>,
    oci_no_new_privileges: Option<NoNewPrivs>,
}

/// `oci_beyond`: a capability asked beyond `oci_allow` refuses the container or is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Beyond {
    Refuse,
    Drop,
}

/// `[rlimits]`: the layer's mode, and how an OCI container's `process.rlimits` meet it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRlimits {
    mode: Option<LayerMode>,
    oci: Option<OciRlimits>,
}

/// `[rlimits] oci`: an OCI container's `process.rlimits` replace the profile's limits
/// of the same resources (`config`, as runc sets them; RLIMIT_CORE stays 0 in every
/// cell), or are lowered to them (`profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OciRlimits {
    #[default]
    Config,
    Profile,
}

/// `oci_no_new_privileges`: as config.json says, or always set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum NoNewPrivs {
    Config,
    Always,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    idle: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout: Option<Dur>,
    grace: Option<Dur>,
    memory: Option<Size>,
    cpus: Option<Spanned<f64>>,
    pids: Option<Spanned<u64>>,
    max_output: Option<Size>,
    open_files: Option<Spanned<u64>>,
    file_size: Option<Size>,
    cpu_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    workdir: Option<Access>,
    work_size: Option<Size>,
    work_inodes: Option<Spanned<u64>>,
    tmp_inodes: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLandlock {
    mode: Option<LayerMode>,
    refer: Option<LayerMode>,
    truncate: Option<LayerMode>,
    tcp: Option<LayerMode>,
    ioctl_dev: Option<LayerMode>,
    scopes: Option<LayerMode>,
    allow_ports: Option<Vec<u16>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeccomp {
    mode: Option<LayerMode>,
    policy: Option<SeccompKind>,
    deny: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMode {
    mode: Option<LayerMode>,
}

/// Resource limits of a cell; `None` means no limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub max_output: u64,
    pub open_files: Option<u64>,
    pub file_size: Option<u64>,
    pub cpu_seconds: Option<u64>,
}

/// How the workdir is mounted and the caps of the cell's writable tmpfs layers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filesystem {
    pub workdir: crate::sandbox::WorkdirMode,
    /// Size cap of the copy-on-write layer (a tmpfs: its pages count against the
    /// cell's memory limit, so the cap used is at most that limit).
    pub work_size: u64,
    pub work_inodes: u64,
    pub tmp_inodes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandlockPolicy {
    /// The layer: `required` refuses a kernel without Landlock.
    pub mode: LayerMode,
    /// Per feature newer than ABI 1 (see `sandbox::landlock::Feature`).
    pub features: crate::sandbox::landlock::Features,
    pub allow_ports: Vec<u16>,
}

/// A resolved profile: every field set, every value checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub limits: Limits,
    pub filesystem: Filesystem,
    pub landlock: LandlockPolicy,
    pub seccomp: SeccompPolicy,
    pub cgroup: LayerMode,
    pub rlimits: LayerMode,
    /// `[rlimits] oci`: whose rlimits an OCI container gets.
    pub oci_rlimits: OciRlimits,
    /// The most a cell of this profile may reach (a project may only narrow it).
    pub network: crate::net::NetPolicy,
    pub session: SessionPolicy,
    /// `[capabilities]`: the most an OCI container's process may hold.
    pub capabilities: crate::sandbox::caps::OciCapsPolicy,
}

/// Cells that live (`nixcell up`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionPolicy {
    /// A cell with no exec running for this long is taken down; None: never.
    pub idle: Option<Duration>,
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// The key written on the line of `offset` (text before '='), or the table header.
fn key_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().to_string(),
    }
}

fn invalid(file: &str, text: &str, offset: usize, message: impl Into<String>) -> ProfileError {
    let (line, column) = position(text, offset);
    ProfileError::Invalid {
        file: file.to_string(),
        line,
        column,
        key: key_at(text, offset),
        message: message.into(),
    }
}

fn parse_raw(file: &str, text: &str) -> Result<RawProfile, ProfileError> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        invalid(file, text, offset, e.message().trim().to_string())
    })?;
    // Values whose check needs the whole value, with the position of the value.
    if let Some(c) = &raw.limits.cpus
        && !(c.get_ref().is_finite() && *c.get_ref() > 0.0 && *c.get_ref() <= 1024.0)
    {
        {
            return Err(invalid(
                file,
                text,
                c.span().start,
                "expected a number of CPUs > 0",
            ));
        }
    }
    for n in [
        &raw.limits.pids,
        &raw.limits.open_files,
        &raw.filesystem.work_inodes,
        &raw.filesystem.tmp_inodes,
    ]
    .into_iter()
    .flatten()
    {
        if *n.get_ref() == 0 {
            return Err(invalid(file, text, n.span().start, "must be at least 1"));
        }
    }
    for name in raw
        .seccomp
        .deny
        .iter()
        .chain(raw.seccomp.allow.iter())
        .flatten()
    {
        if crate::sandbox::seccomp::syscall_number(name.get_ref()).is_none() {
            return Err(invalid(
                file,
                text,
                name.span().start,
                format!("unknown system call '{}'", name.get_ref()),
            ));
        }
        if raw.seccomp.allow.iter().flatten().any(|a| a == name)
            && crate::sandbox::seccomp::FIXED_DENY.contains(&name.get_ref().as_str())
        {
            return Err(invalid(
                file,
                text,
                name.span().start,
                format!(
                    "'{}' is on nixcell's fixed deny list and cannot be allowed",
                    name.get_ref()
                ),
            ));
        }
    }
    for name in raw.capabilities.oci_allow.iter().flatten() {
        let grantable = crate::sandbox::caps::canonical(name.get_ref())
            .filter(|c| crate::sandbox::caps::OCI_GRANTABLE.contains(&c.as_str()));
        if grantable.is_none() {
            return Err(invalid(
                file,
                text,
                name.span().start,
                format!(
                    "capability '{}' cannot be granted to a container (only: {})",
                    name.get_ref(),
                    crate::sandbox::caps::OCI_GRANTABLE.join(" ")
                ),
            ));
        }
    }
    for (_, entry) in raw.network.entries() {
        if let Err(m) = crate::net::Entry::parse(entry.get_ref()) {
            return Err(invalid(file, text, entry.span().start, m));
        }
    }
    Ok(raw)
}

/// Loads a raw profile and its bases, child first.
fn load_chain(
    spec: &str,
    base_dir: Option<&Path>,
) -> Result<Vec<(String, RawProfile)>, ProfileError> {
    let mut chain: Vec<(String, RawProfile)> = Vec::new();
    let mut next = Some((spec.to_string(), base_dir.map(Path::to_path_buf)));
    while let Some((name, dir)) = next.take() {
        if chain.iter().any(|(n, _)| *n == name) || chain.len() > 16 {
            return Err(ProfileError::Cycle(name));
        }
        let (file, text, here): (String, String, Option<PathBuf>) =
            if let Some((_, t)) = BUILTIN.iter().find(|(n, _)| *n == name) {
                (format!("profiles/{name}.toml"), t.to_string(), None)
            } else if name.contains('/') || name.ends_with(".toml") {
                let p = match &dir {
                    Some(d) if Path::new(&name).is_relative() => d.join(&name),
                    _ => PathBuf::from(&name),
                };
                let text = std::fs::read_to_string(&p).map_err(|e| ProfileError::Read {
                    file: p.display().to_string(),
                    source: e,
                })?;
                let parent = p.parent().map(Path::to_path_buf);
                (p.display().to_string(), text, parent)
            } else {
                return Err(ProfileError::Unknown(name));
            };
        let raw = parse_raw(&file, &text)?;
        if let Some(ext) = &raw.extends {
            next = Some((ext.get_ref().clone(), here.or(dir.clone())));
        }
        chain.push((name, raw));
    }
    Ok(chain)
}

macro_rules! pick {
    ($chain:expr, $($f:tt)+) => {
        $chain.iter().find_map(|(_, r)| r.$($f)+.clone())
    };
}

/// Resolves a profile by built-in name or path.
pub fn load(spec: &str) -> Result<Profile, ProfileError> {
    resolve(spec, &load_chain(spec, None)?)
}

/// A profile given as the text of `file` (its `extends` resolved as [`load`] would).
pub fn from_text(file: &str, text: &str) -> Result<Profile, ProfileError> {
    let raw = parse_raw(file, text)?;
    let base = raw
        .extends
        .as_ref()
        .map(|ext| load_chain(ext.get_ref(), Path::new(file).parent()))
        .transpose()?;
    let mut chain = vec![(file.to_string(), raw)];
    chain.extend(base.into_iter().flatten());
    resolve(file, &chain)
}

/// The profile a chain of raw profiles (child first) gives.
fn resolve(spec: &str, c: &[(String, RawProfile)]) -> Result<Profile, ProfileError> {
    let mode = |m: Option<LayerMode>| m.unwrap_or(LayerMode::Required);
    Ok(Profile {
        name: spec.to_string(),
        description: pick!(c, description).unwrap_or_default(),
        limits: Limits {
            timeout: pick!(c, limits.timeout).map(|d| d.0),
            grace: pick!(c, limits.grace)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(2)),
            memory: pick!(c, limits.memory).map(|s| s.0),
            cpus: pick!(c, limits.cpus).map(|s| s.into_inner()),
            pids: pick!(c, limits.pids).map(|s| s.into_inner()),
            max_output: pick!(c, limits.max_output).map(|s| s.0).unwrap_or(1 << 20),
            open_files: pick!(c, limits.open_files).map(|s| s.into_inner()),
            file_size: pick!(c, limits.file_size).map(|s| s.0),
            cpu_seconds: pick!(c, limits.cpu_seconds),
        },
        filesystem: Filesystem {
            workdir: match pick!(c, filesystem.workdir) {
                Some(Access::Ro) => crate::sandbox::WorkdirMode::Ro,
                Some(Access::Bind) => crate::sandbox::WorkdirMode::Bind,
                Some(Access::Rw | Access::Cow) | None => crate::sandbox::WorkdirMode::Cow,
            },
            work_size: pick!(c, filesystem.work_size)
                .map(|s| s.0)
                .unwrap_or(1 << 30),
            work_inodes: pick!(c, filesystem.work_inodes)
                .map(|s| s.into_inner())
                .unwrap_or(100_000),
            tmp_inodes: pick!(c, filesystem.tmp_inodes)
                .map(|s| s.into_inner())
                .unwrap_or(100_000),
        },
        landlock: LandlockPolicy {
            mode: mode(pick!(c, landlock.mode)),
            features: {
                let feature = |m: Option<LayerMode>| m.unwrap_or(LayerMode::BestEffort);
                crate::sandbox::landlock::Features {
                    refer: feature(pick!(c, landlock.refer)),
                    truncate: feature(pick!(c, landlock.truncate)),
                    tcp: feature(pick!(c, landlock.tcp)),
                    ioctl_dev: feature(pick!(c, landlock.ioctl_dev)),
                    scopes: feature(pick!(c, landlock.scopes)),
                }
            },
            allow_ports: pick!(c, landlock.allow_ports).unwrap_or_default(),
        },
        seccomp: SeccompPolicy {
            mode: mode(pick!(c, seccomp.mode)),
            kind: pick!(c, seccomp.policy).unwrap_or(SeccompKind::DenyList),
            deny: pick!(c, seccomp.deny)
                .unwrap_or_default()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            allow: pick!(c, seccomp.allow)
                .unwrap_or_default()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        },
        cgroup: mode(pick!(c, cgroup.mode)),
        rlimits: mode(pick!(c, rlimits.mode)),
        oci_rlimits: pick!(c, rlimits.oci).unwrap_or_default(),
        network: {
            let list = |l: Option<Vec<Spanned<String>>>| -> Vec<String> {
                l.unwrap_or_default()
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect()
            };
            // Checked entry by entry with their positions in parse_raw.
            crate::net::NetPolicy::parse(
                &list(pick!(c, network.allow)),
                &list(pick!(c, network.deny)),
            )
            .unwrap_or_default()
        },
        session: SessionPolicy {
            idle: pick!(c, session.idle).map(|d| d.0),
        },
        capabilities: crate::sandbox::caps::OciCapsPolicy {
            // Checked name by name in parse_raw.
            allow: pick!(c, capabilities.oci_allow)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|n| crate::sandbox::caps::canonical(n.get_ref()))
                .collect(),
            drop_beyond: pick!(c, capabilities.oci_beyond) == Some(Beyond::Drop),
            nnp_always: pick!(c, capabilities.oci_no_new_privileges) == Some(NoNewPrivs::Always),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn builtins_load() {
        for (name, _) in BUILTIN {
            let p = load(name).unwrap();
            let want = if *name == "strict" {
                LayerMode::Required
            } else {
                LayerMode::BestEffort
            };
            assert_eq!(p.landlock.mode, want, "{name}");
        }
        let strict = load("strict").unwrap();
        assert_eq!(strict.seccomp.kind, SeccompKind::AllowList);
        assert_eq!(strict.filesystem.workdir, crate::sandbox::WorkdirMode::Ro);
        assert_eq!(strict.limits.memory, Some(512 << 20));
        assert_eq!(strict.landlock.features.tcp, LayerMode::Required);
        // Inherited from default.
        assert_eq!(strict.landlock.features.scopes, LayerMode::BestEffort);
        assert_eq!(
            load("default").unwrap().landlock.features.tcp,
            LayerMode::BestEffort
        );
        let ci = load("ci").unwrap();
        assert_eq!(ci.limits.cpus, Some(4.0));
        assert_eq!(ci.filesystem.workdir, crate::sandbox::WorkdirMode::Cow);
        assert_eq!(ci.filesystem.work_size, 4 << 30);
        let d = load("default").unwrap();
        assert_eq!(d.filesystem.workdir, crate::sandbox::WorkdirMode::Cow);
        assert_eq!(d.filesystem.work_inodes, 100_000);
        assert_eq!(ci.seccomp.kind, SeccompKind::DenyList);
        for p in [&d, &ci] {
            assert_eq!(
                p.capabilities.allow,
                crate::sandbox::caps::OCI_GRANTABLE,
                "{}",
                p.name
            );
            assert!(!p.capabilities.drop_beyond && !p.capabilities.nnp_always);
        }
        assert!(strict.capabilities.allow.is_empty());
        assert!(strict.capabilities.nnp_always);
        assert_eq!(strict.oci_rlimits, OciRlimits::Profile);
        assert_eq!(load("ci").unwrap().oci_rlimits, OciRlimits::Config);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.toml",
            "[limits]\nmemory = \"1G\"\nmemroy = \"2G\"\n",
        );
        let e = load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("p.toml:3:"), "{e}");
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        for (text, line, key) in [
            ("[limits]\n\nmemory = \"lots\"\n", 3, "memory"),
            ("[limits]\ncpus = -1.0\n", 2, "cpus"),
            ("[limits]\ntimeout = \"3 days\"\n", 2, "timeout"),
            ("[seccomp]\nmode = \"sometimes\"\n", 2, "mode"),
            (
                "[seccomp]\ndeny = [\"keyctl\", \"no_such_call\"]\n",
                2,
                "deny",
            ),
            ("[seccomp]\nallow = [\"read\", \"ptrace\"]\n", 2, "allow"),
            ("[limits]\npids = 0\n", 2, "pids"),
            (
                "[network]\n\nallow = [\"api.example.com:443\", \"a*.example.com:443\"]\n",
                3,
                "allow",
            ),
            ("[network]\ndeny = [\"x.org\"]\n", 2, "deny"),
            ("[network]\nallwo = []\n", 2, "allwo"),
            ("network = \"any\"\n", 1, "network"),
            (
                "[capabilities]\noci_allow = [\"CAP_CHOWN\", \"CAP_SYS_ADMIN\"]\n",
                2,
                "oci_allow",
            ),
            (
                "[capabilities]\noci_allow = [\"NET_ADMIN\"]\n",
                2,
                "oci_allow",
            ),
            ("[capabilities]\noci_beyond = \"grant\"\n", 2, "oci_beyond"),
            ("[capabilities]\noci_all = []\n", 2, "oci_all"),
        ] {
            let p = write(d.path(), "bad.toml", text);
            let e = load(p.to_str().unwrap()).unwrap_err();
            match &e {
                ProfileError::Invalid {
                    line: l, key: k, ..
                } => {
                    assert_eq!((*l, k.as_str()), (line, key), "{text}: {e}")
                }
                other => panic!("{text}: {other}"),
            }
        }
    }

    #[test]
    fn a_profile_given_as_text_resolves_like_a_file() {
        let p = from_text("x.toml", "extends = \"strict\"\n[limits]\npids = 7\n").unwrap();
        let strict = load("strict").unwrap();
        assert_eq!(p.limits.pids, Some(7));
        assert_eq!(p.limits.memory, strict.limits.memory);
        assert_eq!(p.seccomp.kind, strict.seccomp.kind);
        let e = from_text("x.toml", "[limits]\npids = 0\n").unwrap_err();
        assert!(e.to_string().starts_with("x.toml:2:"), "{e}");
    }

    #[test]
    fn extends_merges_and_detects_cycles() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.toml",
            "extends = \"strict\"\n[limits]\npids = 7\n",
        );
        let p = write(
            d.path(),
            "child.toml",
            "extends = \"base.toml\"\n[landlock]\nmode = \"off\"\n",
        );
        let prof = load(p.to_str().unwrap()).unwrap();
        assert_eq!(prof.limits.pids, Some(7));
        let open = write(
            d.path(),
            "open.toml",
            "[network]\nallow = [\"api.example.com:443\"]\n",
        );
        assert_eq!(load(open.to_str().unwrap()).unwrap().network.allow.len(), 1);
        let closed = write(
            d.path(),
            "closed.toml",
            "extends = \"open.toml\"\nnetwork = \"none\"\n",
        );
        assert_eq!(
            load(closed.to_str().unwrap()).unwrap().network.mode(),
            "none"
        );
        assert_eq!(prof.limits.memory, Some(512 << 20));
        assert_eq!(prof.landlock.mode, LayerMode::Off);
        assert_eq!(prof.seccomp.kind, SeccompKind::AllowList);
        let a = write(d.path(), "a.toml", "extends = \"b.toml\"\n");
        write(d.path(), "b.toml", "extends = \"a.toml\"\n");
        assert!(matches!(
            load(a.to_str().unwrap()),
            Err(ProfileError::Cycle(_))
        ));
        assert!(matches!(load("nope"), Err(ProfileError::Unknown(_))));
    }

    #[test]
    fn compiling_is_cheap_enough_to_do_for_every_run() {
        let strict = load("strict").unwrap();
        let default = load("default").unwrap();
        for p in [&strict.seccomp, &default.seccomp] {
            crate::sandbox::seccomp::compile(p).unwrap();
            let n = 50;
            let t = std::time::Instant::now();
            for _ in 0..n {
                crate::sandbox::seccomp::compile(p).unwrap();
            }
            let each = t.elapsed() / n;
            eprintln!("seccomp {:?}: {each:?} per compile", p.kind);
            // Measured well under 1 ms unoptimized; far above that on any machine
            // would make the per-run compile (no cache) a cost worth revisiting.
            assert!(
                each < std::time::Duration::from_millis(25),
                "{:?}: {each:?}",
                p.kind
            );
        }
    }
}
