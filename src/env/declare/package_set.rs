//! The package set (a nixpkgs tree) a declaration is evaluated against: named as users
//! name it (a local path, a flake reference, a registry name, `<nixpkgs>` of NIX_PATH),
//! pinned by a lock in flake.lock format (`devenv.lock`), and identified in cache keys
//! by that pin alone, so deciding whether a cached build is fresh never reads the tree.
//!
//! A lock in a project is hostile input like the declaration: it is read without
//! following links, size-capped, checked field by field, must pin the very input the
//! project names, and never makes nix read a host directory the project could not name
//! itself (see [`Pin::realise`]).

use crate::nix::build::Progress;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lock's file name, next to the declaration (devenv's; flake.lock format).
pub const LOCK_FILE: &str = "devenv.lock";
/// The lock's input that pins the package set.
const INPUT: &str = "nixpkgs";
/// Larger locks are refused unread.
const LOCK_MAX_BYTES: u64 = 1 << 20;

/// A package set that cannot be used: where, and why.
#[derive(Debug, thiserror::Error)]
pub enum PackageSetError {
    #[error("package set {path}: {1}", path = .0.display())]
    Set(PathBuf, String),
    #[error("{origin}: package set {spec:?}: {message}")]
    Spec {
        origin: String,
        spec: String,
        message: String,
    },
    #[error("{}: {message}", file.display())]
    Lock { file: PathBuf, message: String },
    #[error("package set {spec}: {message}")]
    Resolve { spec: String, message: String },
}

/// Attributes of a flake input (`original` or `locked` of a lock node).
pub type Attrs = BTreeMap<String, Value>;

/// The package set a project evaluates against, with what identifies its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSet {
    pub path: PathBuf,
    /// A store path is its own pin; a locked input is pinned by its locked attributes;
    /// a directory elsewhere (`run --with` outside a project) by the names, sizes and
    /// modification times of its files.
    pub pin: String,
}

impl PackageSet {
    pub fn at(path: &Path) -> Result<PackageSet, PackageSetError> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| PackageSetError::Set(path.to_path_buf(), e.to_string()))?;
        has_default_nix(&real)?;
        let store = std::fs::canonicalize(crate::nix::closure::store_dir()).unwrap_or_default();
        if real.starts_with(&store) {
            let pin = format!("store:{}", real.display());
            return Ok(PackageSet { path: real, pin });
        }
        let mut h = Sha256::new();
        fingerprint_dir(&real, &real, &mut h);
        Ok(PackageSet {
            pin: format!("tree:{}", hex::encode(h.finalize())),
            path: real,
        })
    }

    /// The value of `nixpkgs=` in NIX_PATH (or a `nixpkgs` directory under a plain
    /// entry), as written: a path, a URL, `channel:NAME` or `flake:REF`.
    pub fn nix_path_value() -> Option<String> {
        let np = std::env::var("NIX_PATH").ok()?;
        nix_path_nixpkgs(&np)
    }

    /// The package set of NIX_PATH's `nixpkgs=` outside a project (no lock): a
    /// directory as it is; a reference (`flake:nixpkgs`, a URL, `channel:…`) resolved
    /// now. `None` without such an entry.
    pub fn from_nix_path(cwd: &Path) -> Option<Result<PackageSet, PackageSetError>> {
        let v = PackageSet::nix_path_value()?;
        if v.starts_with('/') {
            return Some(PackageSet::at(Path::new(&v)));
        }
        let pin = || -> Result<PackageSet, PackageSetError> {
            let requested = Requested::parse(&v, Origin::NixPath, cwd)?;
            let pin = Pin {
                locked: requested.resolve()?,
                requested,
                lock_file: PathBuf::from("NIX_PATH"),
            };
            pin.realise(cwd)
        };
        Some(pin())
    }
}

/// `nixpkgs=VALUE` of a NIX_PATH; URLs (`https://…`, `channel:…`, `flake:…`) keep
/// their colons.
fn nix_path_nixpkgs(np: &str) -> Option<String> {
    // Entries are `:`-separated, but a URL value has colons of its own: an entry
    // starts at `NAME=` or `/`.
    let mut entries: Vec<String> = Vec::new();
    for part in np.split(':') {
        let starts = (part.starts_with('/') && !part.starts_with("//"))
            || part.split_once('=').is_some_and(|(n, _)| is_name(n));
        match entries.last_mut() {
            Some(last) if !starts => {
                last.push(':');
                last.push_str(part);
            }
            _ => entries.push(part.to_string()),
        }
    }
    entries.into_iter().find_map(|e| match e.split_once('=') {
        Some(("nixpkgs", v)) if !v.is_empty() => Some(v.to_string()),
        Some(_) => None,
        None => {
            let p = Path::new(&e).join("nixpkgs");
            p.exists().then(|| p.to_string_lossy().into_owned())
        }
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

fn has_default_nix(dir: &Path) -> Result<(), PackageSetError> {
    if dir.join("default.nix").is_file() {
        Ok(())
    } else {
        Err(PackageSetError::Set(
            dir.to_path_buf(),
            "has no default.nix (a package set is a tree like nixpkgs')".into(),
        ))
    }
}

/// Where a package set was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `nixpkgs` of a nixcell.toml.
    Config(PathBuf),
    /// `inputs.nixpkgs.url` of a devenv.yaml.
    DevenvYaml(PathBuf),
    /// `original` of the lock's nixpkgs input (a project that names no package set
    /// otherwise, as devenv's default input).
    Lock(PathBuf),
    /// `nixpkgs=` of the caller's NIX_PATH (or `<nixpkgs>`).
    NixPath,
    /// `nixcell run --with` outside a project, and tests.
    Caller,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Config(p) => write!(f, "{}: nixpkgs", p.display()),
            Origin::DevenvYaml(p) => write!(f, "{}: inputs.nixpkgs.url", p.display()),
            Origin::Lock(p) => write!(f, "{}: nodes.nixpkgs.original", p.display()),
            Origin::NixPath => write!(f, "NIX_PATH"),
            Origin::Caller => write!(f, "the command line"),
        }
    }
}

impl Origin {
    /// Whether the caller (not a project) named it.
    fn callers(&self) -> bool {
        matches!(self, Origin::NixPath | Origin::Caller)
    }
}

/// A package set as named, parsed into the flake input it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// As written.
    pub spec: String,
    pub origin: Origin,
    /// The input's `original` attributes, as in a flake.lock.
    pub original: Attrs,
    /// The flake reference nix resolves it with.
    pub reference: String,
}

fn attrs(pairs: &[(&str, &str)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

fn is_rev(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn is_ref(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '+'))
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Requested {
    /// Parses `spec` as `origin` gave it; relative paths are relative to `base`.
    pub fn parse(spec: &str, origin: Origin, base: &Path) -> Result<Requested, PackageSetError> {
        let bad = |message: String| PackageSetError::Spec {
            origin: origin.to_string(),
            spec: spec.to_string(),
            message,
        };
        if spec.is_empty() || spec.len() > 4096 || spec.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(bad("not a package set reference".into()));
        }
        if spec == "<nixpkgs>" {
            let v = PackageSet::nix_path_value()
                .ok_or_else(|| bad("NIX_PATH has no nixpkgs= entry".into()))?;
            return Requested::parse(&v, Origin::NixPath, base);
        }
        let (original, reference) = if let Some(name) = spec.strip_prefix("channel:") {
            if !is_word(name) {
                return Err(bad("not a channel name".into()));
            }
            let url = format!("https://channels.nixos.org/{name}/nixexprs.tar.xz");
            (attrs(&[("type", "tarball"), ("url", &url)]), url)
        } else if spec.starts_with('/') || spec.starts_with('.') {
            local(spec, base).map_err(bad)?
        } else if let Some(p) = spec.strip_prefix("path:") {
            if p.contains('?') {
                return Err(bad("path: references take no parameters".into()));
            }
            let dir = canonical_dir(p, base).map_err(bad)?;
            let d = dir.to_string_lossy();
            (
                attrs(&[("type", "path"), ("path", &d)]),
                format!("path:{d}"),
            )
        } else if let Some(rest) = spec.strip_prefix("git+file:") {
            let (p, query) = split_query(rest);
            let p = p.strip_prefix("//").unwrap_or(p);
            let dir = canonical_dir(p, base).map_err(bad)?;
            let url = format!("file://{}", dir.display());
            git(&url, query).map_err(bad)?
        } else if let Some(rest) = ["git+https:", "git+http:", "git+ssh:"]
            .iter()
            .find_map(|s| spec.strip_prefix(s).map(|r| (&s[4..], r)))
        {
            let (p, query) = split_query(rest.1);
            git(&format!("{}{p}", rest.0), query).map_err(bad)?
        } else if let Some(kind) = ["github", "gitlab", "sourcehut"]
            .into_iter()
            .find(|k| spec.starts_with(&format!("{k}:")))
        {
            let (path, query) = split_query(&spec[kind.len() + 1..]);
            if query.is_some() {
                return Err(bad(format!(
                    "{kind}: references take no parameters here (write {kind}:OWNER/REPO/REF)"
                )));
            }
            let parts: Vec<&str> = path.split('/').collect();
            let (owner, repo, r) = match parts[..] {
                [o, r] => (o, r, None),
                [o, r, ref_] => (o, r, Some(ref_)),
                _ => {
                    return Err(bad(format!(
                        "expected {kind}:OWNER/REPO or {kind}:OWNER/REPO/REF"
                    )));
                }
            };
            let owner_ok = if kind == "sourcehut" {
                owner.strip_prefix('~').is_some_and(is_word)
            } else {
                is_word(owner)
            };
            if !owner_ok || !is_word(repo) {
                return Err(bad("not a valid owner/repository".into()));
            }
            let mut a = attrs(&[("type", kind), ("owner", owner), ("repo", repo)]);
            match r {
                Some(r) if is_rev(r) => {
                    a.insert("rev".into(), r.into());
                }
                Some(r) if is_ref(r) => {
                    a.insert("ref".into(), r.into());
                }
                Some(_) => return Err(bad("not a valid branch, tag or revision".into())),
                None => {}
            }
            (a, spec.to_string())
        } else if let Some(url) = ["https://", "http://"]
            .iter()
            .find(|s| spec.starts_with(*s))
            .map(|_| spec)
            .or_else(|| {
                spec.strip_prefix("tarball+")
                    .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            })
        {
            (attrs(&[("type", "tarball"), ("url", url)]), url.to_string())
        } else {
            let id_ref = spec.strip_prefix("flake:").unwrap_or(spec);
            let (id, r) = match id_ref.split_once('/') {
                Some((i, r)) => (i, Some(r)),
                None => (id_ref, None),
            };
            let id_ok = id.starts_with(|c: char| c.is_ascii_alphabetic())
                && is_word(id)
                && !id.contains('.');
            if !id_ok || r.is_some_and(|r| !is_ref(r)) {
                return Err(bad("not a package set reference: give a path, a flake reference (github:OWNER/REPO/REF, path:DIR, git+file:DIR, https://…) or a registry name (nixpkgs)".into()));
            }
            let mut a = attrs(&[("type", "indirect"), ("id", id)]);
            match r {
                Some(r) if is_rev(r) => {
                    a.insert("rev".into(), r.into());
                }
                Some(r) => {
                    a.insert("ref".into(), r.into());
                }
                None => {}
            }
            (a, format!("flake:{id_ref}"))
        };
        Ok(Requested {
            spec: spec.to_string(),
            origin,
            original,
            reference,
        })
    }

    /// The input the lock's `original` names, as if the project had named it.
    pub fn from_lock(
        original: &Attrs,
        file: &Path,
        base: &Path,
    ) -> Result<Requested, PackageSetError> {
        let bad = |message: String| PackageSetError::Lock {
            file: file.to_path_buf(),
            message,
        };
        let reference = reference_of(original).ok_or_else(|| {
            bad(format!(
                "input nixpkgs: original {} is not an input nixcell can name",
                canonical(original)
            ))
        })?;
        let r = Requested::parse(&reference, Origin::Lock(file.to_path_buf()), base)?;
        if &r.original != original {
            return Err(bad(format!(
                "input nixpkgs: original {} is not written as nixcell writes {reference}",
                canonical(original)
            )));
        }
        Ok(r)
    }

    /// The local directory it names, if any.
    pub fn local_dir(&self) -> Option<PathBuf> {
        local_dir_of(&self.original)
    }

    /// Refuses a local directory a project names outside the places it may name.
    pub fn check_trusted(&self, project: &Path) -> Result<(), PackageSetError> {
        match self.local_dir() {
            Some(d) if !self.origin.callers() && !trusted_local(&d, project) => {
                Err(PackageSetError::Spec {
                    origin: self.origin.to_string(),
                    spec: self.spec.clone(),
                    message: outside_message(&d),
                })
            }
            _ => Ok(()),
        }
    }

    /// Resolves the input now (nix fetches it if needed): its locked attributes.
    pub fn resolve(&self) -> Result<Attrs, PackageSetError> {
        let fail = |message: String| PackageSetError::Resolve {
            spec: self.spec.clone(),
            message,
        };
        let mut cmd = crate::nix::build::nix_flakes();
        cmd.args(["flake", "metadata", "--json", "--no-write-lock-file"])
            .arg(&self.reference);
        let out = crate::nix::build::output_shown(cmd, "nix flake metadata", Progress::Stderr)
            .map_err(|e| fail(e.to_string()))?;
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| fail(format!("nix flake metadata printed no JSON: {e}")))?;
        let locked = locked_of_metadata(&v)
            .ok_or_else(|| fail("nix flake metadata gave no locked input".into()))?;
        // What nix answered is checked like a lock read from a file.
        check_locked(&locked, &self.original).map_err(fail)?;
        let path = v.get("path").and_then(Value::as_str).unwrap_or_default();
        let expected = source_path(&locked).map_err(fail)?;
        if Path::new(path) != expected {
            return Err(fail(format!(
                "nix placed it at {path}, not at {} (its narHash)",
                expected.display()
            )));
        }
        Ok(locked)
    }
}

/// The locked input of `nix flake metadata --json`, the same from every Nix version:
/// current Nix (2.25 and later) marks it `"__final": true`, a marker of its own that no
/// lock file holds and older Nix's `fetchTree` refuses; it is dropped.
fn locked_of_metadata(v: &Value) -> Option<Attrs> {
    let mut locked: Attrs = serde_json::from_value(v.get("locked")?.clone()).ok()?;
    if locked.get("__final") == Some(&Value::Bool(true)) {
        locked.remove("__final");
    }
    Some(locked)
}

/// The flake reference of `original` attributes (the inverse of [`Requested::parse`]).
fn reference_of(a: &Attrs) -> Option<String> {
    let s = |k: &str| a.get(k).and_then(Value::as_str);
    let suffix = s("rev")
        .or(s("ref"))
        .map(|r| format!("/{r}"))
        .unwrap_or_default();
    Some(match s("type")? {
        k @ ("github" | "gitlab" | "sourcehut") => {
            format!("{k}:{}/{}{suffix}", s("owner")?, s("repo")?)
        }
        "path" => format!("path:{}", s("path")?),
        "tarball" => s("url")?.to_string(),
        "indirect" => format!("flake:{}{suffix}", s("id")?),
        "git" => {
            let q: Vec<String> = ["ref", "rev"]
                .iter()
                .filter_map(|k| s(k).map(|v| format!("{k}={v}")))
                .collect();
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            format!("git+{}{q}", s("url")?)
        }
        _ => return None,
    })
}

fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    }
}

fn git(url: &str, query: Option<&str>) -> Result<(Attrs, String), String> {
    let mut a = attrs(&[("type", "git"), ("url", url)]);
    for kv in query
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
    {
        match kv.split_once('=') {
            Some(("ref", r)) if is_ref(r) => {
                a.insert("ref".into(), r.into());
            }
            Some(("rev", r)) if is_rev(r) => {
                a.insert("rev".into(), r.into());
            }
            _ => return Err(format!("unsupported parameter {kv:?} (ref= and rev= are)")),
        }
    }
    let mut reference = format!("git+{url}");
    if let Some(q) = query {
        reference.push('?');
        reference.push_str(q);
    }
    Ok((a, reference))
}

/// A local directory: a git checkout's root is a `git+file:` input (its tracked files),
/// any other directory a `path:` input.
fn local(spec: &str, base: &Path) -> Result<(Attrs, String), String> {
    let dir = canonical_dir(spec, base)?;
    let d = dir.to_string_lossy();
    if dir.join(".git").exists() {
        git(&format!("file://{d}"), None)
    } else {
        Ok((
            attrs(&[("type", "path"), ("path", &d)]),
            format!("path:{d}"),
        ))
    }
}

fn canonical_dir(p: &str, base: &Path) -> Result<PathBuf, String> {
    let path = base.join(p);
    let real = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !real.is_dir() {
        return Err(format!("{} is not a directory", real.display()));
    }
    if real.to_str().is_none_or(|s| {
        s.chars()
            .any(|c| c.is_control() || matches!(c, '?' | '#' | ' '))
    }) {
        return Err(format!(
            "{} has characters a flake reference cannot carry",
            real.display()
        ));
    }
    Ok(real)
}

fn local_dir_of(a: &Attrs) -> Option<PathBuf> {
    let s = |k: &str| a.get(k).and_then(Value::as_str);
    match s("type")? {
        "path" => s("path").map(PathBuf::from),
        "git" => s("url")?.strip_prefix("file://").map(PathBuf::from),
        _ => None,
    }
}

/// A directory a project may name as its package set: in the project, in the Nix
/// store, or under a path the caller named (an entry of NIX_PATH or of
/// `NIXCELL_EVAL_PATHS`): evaluation reads the package set, and a project must not
/// choose which host directory that is.
pub fn trusted_local(dir: &Path, project: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let Some(dir) = canon(dir) else {
        return false;
    };
    std::iter::once(canon(project))
        .chain(std::iter::once(canon(&crate::nix::closure::store_dir())))
        .chain(nix_path_entries().iter().map(|p| canon(p)))
        .chain(
            crate::nix::eval::caller_allowed_paths()
                .iter()
                .map(|p| canon(p)),
        )
        .flatten()
        .any(|t| dir.starts_with(&t))
}

pub fn outside_message(d: &Path) -> String {
    format!(
        "{} is outside the project and the Nix store; a package set elsewhere must be under a path the caller names (NIX_PATH or {})",
        d.display(),
        crate::nix::eval::EVAL_PATHS_VAR
    )
}

/// The absolute paths of `NIX_PATH` (`name=PATH` or `PATH` entries).
fn nix_path_entries() -> Vec<PathBuf> {
    std::env::var("NIX_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|e| !e.is_empty())
        .map(|e| PathBuf::from(e.split_once('=').map_or(e, |(_, p)| p)))
        .filter(|p| p.is_absolute())
        .collect()
}

/// Checks locked attributes (from a lock file or from nix) against what they must pin.
fn check_locked(locked: &Attrs, original: &Attrs) -> Result<(), String> {
    let s = |k: &str| locked.get(k).and_then(Value::as_str);
    let kind = s("type").ok_or("the locked input has no type")?;
    let allowed: &[&str] = match kind {
        "path" => &["type", "path", "narHash", "lastModified"],
        "git" => &[
            "type",
            "url",
            "rev",
            "ref",
            "narHash",
            "lastModified",
            "revCount",
            "submodules",
            "shallow",
            "dirtyRev",
            "dirtyShortRev",
        ],
        "github" | "gitlab" | "sourcehut" => &[
            "type",
            "owner",
            "repo",
            "rev",
            "narHash",
            "lastModified",
            "host",
        ],
        "tarball" => &["type", "url", "narHash", "lastModified", "rev"],
        other => {
            return Err(format!(
                "locked input type {other:?} is not one nixcell accepts"
            ));
        }
    };
    for (k, v) in locked {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "locked attribute {k:?} is not one a {kind} input has"
            ));
        }
        let fine = match v {
            Value::String(t) => t.len() <= 4096 && !t.chars().any(char::is_control),
            Value::Number(n) => n.is_u64(),
            Value::Bool(_) => true,
            _ => false,
        };
        if !fine {
            return Err(format!(
                "locked attribute {k:?} has a value of the wrong kind"
            ));
        }
    }
    let nar = s("narHash").ok_or("the locked input has no narHash")?;
    nar_hash(nar)?;
    if let Some(r) = s("rev")
        && !is_rev(r)
    {
        return Err(format!("rev {r:?} is not a 40-digit hexadecimal revision"));
    }
    for k in ["owner", "repo"] {
        if let Some(v) = s(k)
            && !is_word(v.strip_prefix('~').unwrap_or(v))
        {
            return Err(format!("{k} {v:?} is not a valid name"));
        }
    }
    if let Some(p) = s("path")
        && !p.starts_with('/')
    {
        return Err(format!("path {p:?} is not absolute"));
    }
    let schemes: &[&str] = match kind {
        "tarball" => &["https://", "http://"],
        "git" => &["https://", "http://", "ssh://", "git://", "file:///"],
        _ => &[],
    };
    if !schemes.is_empty() && !s("url").is_some_and(|u| schemes.iter().any(|p| u.starts_with(p))) {
        return Err(format!(
            "a locked {kind} input needs a URL starting with one of {}",
            schemes.join(", ")
        ));
    }
    // The lock pins the input the project names, not another one.
    let o = |k: &str| original.get(k).and_then(Value::as_str);
    if o("type") != Some("indirect") {
        if o("type") != Some(kind) {
            return Err(format!(
                "the locked input is a {kind} input, the named one a {} input",
                o("type").unwrap_or("?")
            ));
        }
        // A tarball's URL may be swapped for an immutable one when it is locked.
        let same = if kind == "tarball" {
            &["path", "owner", "repo"][..]
        } else {
            &["path", "url", "owner", "repo"][..]
        };
        for k in same {
            if o(k).is_some() && o(k) != s(k) {
                return Err(format!(
                    "the locked {k} {:?} is not the named one {:?}",
                    s(k).unwrap_or_default(),
                    o(k).unwrap_or_default()
                ));
            }
        }
        if let Some(r) = o("rev")
            && s("rev") != Some(r)
        {
            return Err(format!("the locked revision is not the named one {r}"));
        }
    }
    Ok(())
}

/// The 32 bytes of an SRI `sha256-…` hash.
fn nar_hash(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let b64 = s
        .strip_prefix("sha256-")
        .ok_or_else(|| format!("narHash {s:?} is not a sha256-… hash"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("narHash {s:?} is not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| format!("narHash {s:?} is not 32 bytes long"))
}

/// Nix's base-32 alphabet and encoding (store path hashes).
fn nix_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let lo = bytes[i] as u16 >> j;
            let hi = bytes.get(i + 1).map_or(0, |&x| (x as u16) << (8 - j));
            ALPHABET[((lo | hi) & 0x1f) as usize] as char
        })
        .collect()
}

/// The store path of a fetched flake input: the content-addressed path named `source`
/// of its NAR hash (as `nix-store --print-fixed-path --recursive sha256 HASH source`).
fn source_path(locked: &Attrs) -> Result<PathBuf, String> {
    let nar = locked
        .get("narHash")
        .and_then(Value::as_str)
        .ok_or("the locked input has no narHash")?;
    let hash = nar_hash(nar)?;
    let store = crate::nix::closure::store_dir();
    let s = format!(
        "source:sha256:{}:{}:source",
        hex::encode(hash),
        store.display()
    );
    let digest = Sha256::digest(s.as_bytes());
    let mut folded = [0u8; 20];
    for (i, b) in digest.iter().enumerate() {
        folded[i % 20] ^= b;
    }
    Ok(store.join(format!("{}-source", nix_base32(&folded))))
}

/// Attributes as one line, keys sorted: what a pin is keyed by.
fn canonical(a: &Attrs) -> String {
    serde_json::to_string(&a.iter().collect::<BTreeMap<_, _>>()).unwrap_or_default()
}

/// A package set pinned by a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub requested: Requested,
    pub locked: Attrs,
    /// The lock file it is read from (or was written to).
    pub lock_file: PathBuf,
}

/// What the context says about the pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinInfo {
    /// The package set as named, and where.
    pub source: String,
    pub origin: String,
    /// The locked input, short: `github:NixOS/nixpkgs/<rev>`, `path:/dir`, with its hash.
    pub locked: String,
    pub nar_hash: String,
    pub lock_file: PathBuf,
    /// The package set's store path.
    pub path: PathBuf,
}

impl Pin {
    /// The package set's store path (computed from the pin: no nix call).
    pub fn store_path(&self) -> PathBuf {
        source_path(&self.locked).unwrap_or_default()
    }

    /// The package set this pin names; its store path need not exist yet
    /// ([`Pin::realise`]).
    pub fn package_set(&self) -> PackageSet {
        PackageSet {
            path: self.store_path(),
            pin: format!("lock:{}", canonical(&self.locked)),
        }
    }

    pub fn info(&self) -> PinInfo {
        let s = |k: &str| {
            self.locked
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let kind = s("type");
        let locked = match kind {
            "github" | "gitlab" | "sourcehut" => {
                format!("{kind}:{}/{}/{}", s("owner"), s("repo"), s("rev"))
            }
            "path" => format!("path:{}", s("path")),
            "git" if !s("rev").is_empty() => format!("git+{}?rev={}", s("url"), s("rev")),
            "git" => format!("git+{}", s("url")),
            _ => format!("{kind}:{}", s("url")),
        };
        PinInfo {
            source: self.requested.spec.clone(),
            origin: self.requested.origin.to_string(),
            locked,
            nar_hash: s("narHash").to_string(),
            lock_file: self.lock_file.clone(),
            path: self.store_path(),
        }
    }

    /// Makes the pinned package set present in the store and returns it. A store path
    /// already valid there is used as it is (its name is its content's hash). Else nix
    /// fetches the locked input, checking its hash, but a local directory only if the
    /// project could name it (a lock must not make nix copy a host directory into the
    /// world-readable store).
    pub fn realise(&self, project: &Path) -> Result<PackageSet, PackageSetError> {
        let bad = |message: String| PackageSetError::Lock {
            file: self.lock_file.clone(),
            message,
        };
        let set = self.package_set();
        if !store_valid(&set.path) {
            if let Some(d) = local_dir_of(&self.locked)
                && !self.requested.origin.callers()
                && !trusted_local(&d, project)
            {
                return Err(bad(outside_message(&d)));
            }
            let json = serde_json::to_string(&self.locked).unwrap_or_default();
            let mut cmd = crate::nix::build::nix_flakes();
            cmd.env("NIXCELL_LOCKED_INPUT", json)
                .args(["eval", "--impure", "--raw", "--expr"])
                .arg("(builtins.fetchTree (builtins.fromJSON (builtins.getEnv \"NIXCELL_LOCKED_INPUT\"))).outPath");
            let out = crate::nix::build::output_shown(cmd, "nix eval", Progress::Stderr)
                .map_err(|e| bad(format!("fetching the pinned package set: {e}")))?;
            let got = String::from_utf8_lossy(&out);
            if Path::new(got.trim()) != set.path {
                return Err(bad(format!(
                    "the pinned package set was fetched to {}, not to {} (its narHash)",
                    got.trim(),
                    set.path.display()
                )));
            }
        }
        has_default_nix(&set.path)?;
        Ok(set)
    }
}

fn store_valid(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
        && crate::nix::command("nix-store")
            .arg("--check-validity")
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A lock file's content: the whole document (other inputs are kept when nixcell
/// writes it) and the package set's node, if it has one.
#[derive(Debug, Clone)]
pub struct Lock {
    doc: Value,
    node: Option<(Attrs, Attrs)>,
}

impl Lock {
    /// Reads `dir/devenv.lock`: `None` if there is none; an error naming the file if it
    /// is not a lock nixcell can trust the shape of.
    pub fn read(dir: &Path) -> Result<Option<Lock>, PackageSetError> {
        let file = dir.join(LOCK_FILE);
        let bad = |message: String| PackageSetError::Lock {
            file: file.clone(),
            message,
        };
        let bytes = match crate::dirs::read_nofollow_capped(&file, LOCK_MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let doc: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let version = doc.get("version").and_then(Value::as_u64);
        if !matches!(version, Some(5..=7)) {
            return Err(bad("not a flake.lock-format lock (version 5 to 7)".into()));
        }
        let nodes = doc
            .get("nodes")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("has no nodes".into()))?;
        let root = doc
            .get("root")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no root".into()))?;
        let input = nodes
            .get(root)
            .ok_or_else(|| bad(format!("has no root node {root:?}")))?
            .get("inputs")
            .and_then(|i| i.get(INPUT));
        let Some(input) = input else {
            return Ok(Some(Lock { doc, node: None }));
        };
        let name = input.as_str().ok_or_else(|| {
            bad("input nixpkgs must name a node (follows are not supported)".into())
        })?;
        let node = nodes
            .get(name)
            .ok_or_else(|| bad(format!("input nixpkgs names a missing node {name:?}")))?;
        let part = |k: &str| -> Result<Attrs, PackageSetError> {
            node.get(k)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .ok_or_else(|| bad(format!("node {name:?} has no {k} attributes")))
        };
        let (locked, original) = (part("locked")?, part("original")?);
        Ok(Some(Lock {
            doc,
            node: Some((locked, original)),
        }))
    }

    /// The `original` of its nixpkgs input, if it has one.
    pub fn original(&self) -> Option<&Attrs> {
        self.node.as_ref().map(|(_, o)| o)
    }

    /// The pin for `requested`, if this lock has one: an error naming the file if it
    /// pins something else or is malformed.
    pub fn pin(&self, requested: &Requested, file: &Path) -> Result<Option<Pin>, PackageSetError> {
        let Some((locked, original)) = &self.node else {
            return Ok(None);
        };
        let bad = |message: String| PackageSetError::Lock {
            file: file.to_path_buf(),
            message,
        };
        if original != &requested.original {
            return Err(bad(format!(
                "pins nixpkgs {} but {} names {:?}; run `nixcell lock --update` to pin that",
                canonical(original),
                requested.origin,
                requested.spec
            )));
        }
        check_locked(locked, original).map_err(|m| bad(format!("input nixpkgs: {m}")))?;
        Ok(Some(Pin {
            requested: requested.clone(),
            locked: locked.clone(),
            lock_file: file.to_path_buf(),
        }))
    }

    /// Writes `pin` into `dir/devenv.lock`, keeping the lock's other inputs.
    pub fn write(existing: Option<&Lock>, dir: &Path, pin: &Pin) -> std::io::Result<()> {
        let mut doc = existing.map(|l| l.doc.clone()).unwrap_or_else(|| {
            serde_json::json!({ "nodes": { "root": { "inputs": {} } }, "root": "root", "version": 7 })
        });
        let root = doc["root"].as_str().unwrap_or("root").to_string();
        let name = doc["nodes"][&root]["inputs"][INPUT]
            .as_str()
            .unwrap_or(INPUT)
            .to_string();
        doc["nodes"][&name] = serde_json::json!({
            "locked": pin.locked,
            "original": pin.requested.original,
        });
        doc["nodes"][&root]["inputs"][INPUT] = Value::String(name);
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        // Started as root in someone's project, the lock is theirs, as the file they
        // would have written themselves (devenv.lock is committed with the project).
        use std::os::unix::fs::MetadataExt;
        let owner = if nix::unistd::geteuid().is_root() {
            let m = std::fs::metadata(dir)?;
            Some((m.uid(), m.gid()))
        } else {
            None
        };
        crate::dirs::write_atomic_owned(dir, LOCK_FILE, text.as_bytes(), 0o644, owner)
    }
}

fn fingerprint_dir(base: &Path, dir: &Path, h: &mut Sha256) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name == ".git" || name.as_encoded_bytes().starts_with(b"result") {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path.strip_prefix(base).unwrap_or(&path);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(
            format!(
                "\0{}\0{}\0{}\n",
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec()
            )
            .as_bytes(),
        );
        if meta.is_dir() {
            fingerprint_dir(base, &path, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_input_of_nix_metadata_is_the_same_for_2_8_and_current_nix() {
        let nar = "sha256-IyERPxDVPG5tCvUuORRgc/0QPsiOXKeSSspYErFkmng=";
        let old = serde_json::json!({ "locked": { "type": "path", "path": "/src", "narHash": nar, "lastModified": 1 } });
        let new = serde_json::json!({ "locked": { "__final": true, "type": "path", "path": "/src", "narHash": nar, "lastModified": 1 } });
        let a = locked_of_metadata(&old).unwrap();
        assert_eq!(locked_of_metadata(&new).unwrap(), a);
        assert!(!a.contains_key("__final"));
        // Anything else nix might add is still checked (and refused) like a lock file's.
        let odd = serde_json::json!({ "locked": { "__final": "yes", "type": "path", "path": "/src", "narHash": nar } });
        assert!(locked_of_metadata(&odd).unwrap().contains_key("__final"));
        assert!(locked_of_metadata(&serde_json::json!({})).is_none());
    }

    fn parse(s: &str) -> Result<Requested, PackageSetError> {
        Requested::parse(
            s,
            Origin::Config(PathBuf::from("nixcell.toml")),
            Path::new("/"),
        )
    }

    #[test]
    fn references_parse_to_flake_inputs() {
        let r = parse("github:NixOS/nixpkgs/nixos-24.11").unwrap();
        assert_eq!(
            r.original,
            attrs(&[
                ("type", "github"),
                ("owner", "NixOS"),
                ("repo", "nixpkgs"),
                ("ref", "nixos-24.11")
            ])
        );
        assert_eq!(
            parse("nixpkgs").unwrap().original,
            attrs(&[("type", "indirect"), ("id", "nixpkgs")])
        );
        assert_eq!(parse("nixpkgs").unwrap().reference, "flake:nixpkgs");
        let t = parse("https://example.org/nixexprs.tar.xz").unwrap();
        assert_eq!(t.original["type"], "tarball");
        let p = parse("path:/").unwrap();
        assert_eq!(p.original, attrs(&[("type", "path"), ("path", "/")]));
        for good in [
            "github:NixOS/nixpkgs/nixos-24.11",
            "github:NixOS/nixpkgs",
            "gitlab:o/r/0123456789abcdef0123456789abcdef01234567",
            "nixpkgs",
            "nixpkgs/nixos-24.11",
            "path:/",
            "git+file:///?ref=main",
            "git+https://example.org/r.git",
            "https://example.org/nixexprs.tar.xz",
        ] {
            let r = parse(good).unwrap();
            let back = reference_of(&r.original).unwrap();
            assert_eq!(
                parse(&back).unwrap().original,
                r.original,
                "{good} -> {back}"
            );
        }
        for bad in [
            "github:NixOS",
            "github:a/b/c/d",
            "github:a/b?dir=x",
            "path:/?narHash=x",
            "a b",
            "git+file:/?dir=..",
            "nix pkgs",
            "-x",
            "github:a/b/--upload-pack",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_paths_of_nar_hashes_are_nix_s() {
        // `nix-store --print-fixed-path --recursive sha256 sha256-IyER… source`
        let locked = attrs(&[
            ("type", "path"),
            ("path", "/x"),
            (
                "narHash",
                "sha256-IyERPxDVPG5tCvUuORRgc/0QPsiOXKeSSspYErFkmng=",
            ),
        ]);
        if crate::nix::closure::store_dir() == Path::new("/nix/store") {
            assert_eq!(
                source_path(&locked).unwrap(),
                Path::new("/nix/store/4nhm7dqp6a5iqhfbxv1p04mciqrgdcbq-source")
            );
        }
    }

    #[test]
    fn a_lock_pins_only_what_is_named() {
        let original = attrs(&[("type", "path"), ("path", "/srv/pkgs")]);
        let good = attrs(&[
            ("type", "path"),
            ("path", "/srv/pkgs"),
            (
                "narHash",
                "sha256-IyERPxDVPG5tCvUuORRgc/0QPsiOXKeSSspYErFkmng=",
            ),
        ]);
        assert!(check_locked(&good, &original).is_ok());
        let mut elsewhere = good.clone();
        elsewhere.insert("path".into(), "/root/.ssh".into());
        assert!(check_locked(&elsewhere, &original).is_err());
        let mut no_hash = good.clone();
        no_hash.remove("narHash");
        assert!(check_locked(&no_hash, &original).is_err());
        let mut short = good.clone();
        short.insert("narHash".into(), "sha256-AAAA".into());
        assert!(check_locked(&short, &original).is_err());
        let mut extra = good.clone();
        extra.insert("dir".into(), "..".into());
        assert!(check_locked(&extra, &original).is_err());
        let gh = attrs(&[
            ("type", "github"),
            ("owner", "NixOS"),
            ("repo", "nixpkgs"),
            ("ref", "x"),
        ]);
        assert!(check_locked(&good, &gh).is_err(), "another type");
        // Behind a registry name, a git input is still only remote or file:///.
        let indirect = attrs(&[("type", "indirect"), ("id", "nixpkgs")]);
        let hash = "sha256-IyERPxDVPG5tCvUuORRgc/0QPsiOXKeSSspYErFkmng=";
        for url in ["file:/root/repo", "/root/repo", "ext::sh -c x"] {
            let g = attrs(&[("type", "git"), ("url", url), ("narHash", hash)]);
            assert!(check_locked(&g, &indirect).is_err(), "{url}");
        }
        let g = attrs(&[
            ("type", "git"),
            ("url", "file:///srv/repo"),
            ("narHash", hash),
        ]);
        assert!(check_locked(&g, &indirect).is_ok());
        assert_eq!(local_dir_of(&g), Some(PathBuf::from("/srv/repo")));
    }

    #[test]
    fn nix_path_values_keep_their_colons() {
        assert_eq!(nix_path_nixpkgs("nixpkgs=/a:b=/c").as_deref(), Some("/a"));
        assert_eq!(
            nix_path_nixpkgs("x=/y:nixpkgs=https://e.org/n.tar.gz:z=/q").as_deref(),
            Some("https://e.org/n.tar.gz")
        );
        assert_eq!(
            nix_path_nixpkgs("nixpkgs=channel:nixos-24.11").as_deref(),
            Some("channel:nixos-24.11")
        );
        assert_eq!(
            nix_path_nixpkgs("nixpkgs=flake:nixpkgs").as_deref(),
            Some("flake:nixpkgs")
        );
    }
}
