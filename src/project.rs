//! Projects: a directory with a `devenv.nix` (the declaration) and an optional
//! `nixcell.toml` (profile, limits, package set, edit policy), found by walking up from
//! the current directory. Builds are cached in the project's `.nixcell/` directory, keyed
//! by the declaration's content and the package set's pin, with a GC root per build: a
//! cached environment starts a run without calling nix at all.

use crate::declare::{self, DeclareError, Description, ServiceDecl};
use crate::nix::build::Progress;
use crate::nix::closure;
use crate::plan::CellRequest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The declaration's file name.
pub const DECLARATION: &str = "devenv.nix";
/// The configuration's file name.
pub const CONFIG: &str = "nixcell.toml";
/// nixcell's state inside a project (git-ignored by a `.gitignore` of its own).
pub const STATE_DIR: &str = ".nixcell";
/// Builds kept as GC roots besides the current one.
const KEPT_ROOTS: usize = 4;

/// Entries of a project a cell may not change (see [`Project::cell_request`]).
pub const PROTECTED: &[&str] = &[
    ".git",
    "devenv.nix",
    "devenv.lock",
    "devenv.yaml",
    "nixcell.toml",
    ".nixcell",
    "flake.nix",
    "flake.lock",
    ".envrc",
];
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no {DECLARATION} in {0} or any parent directory")]
    NotFound(PathBuf),
    #[error("{file}:{line}: {message}")]
    Config {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    ConfigValue {
        file: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("no package set: set `nixpkgs = \"PATH\"` in {CONFIG} or nixpkgs=PATH in NIX_PATH")]
    NoPackageSet,
    #[error("package set {0}: {1}")]
    PackageSet(PathBuf, String),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Declare(#[from] DeclareError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProjectError + '_ {
    move |e| ProjectError::Io(path.to_path_buf(), e)
}

/// Whether edits are applied at once or become proposals for a human.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    #[default]
    Auto,
    Human,
}

/// `[policy]`: what an agent may change, as attribute names or globs (`*`, `?`, `[..]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub python_libraries: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub approval: Approval,
}

/// `[limits]` as written (parsed into [`Limits`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsToml {
    /// Wall-clock limit of a run, e.g. "30s", "5m".
    pub timeout: Option<String>,
    /// Size cap of the cell's /tmp, e.g. "256M".
    pub tmp_size: Option<String>,
    /// Bytes kept of each captured stream, e.g. "1M".
    pub max_output: Option<String>,
}

/// The contents of `nixcell.toml`; every key outside these is an error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Sandbox profile name.
    pub profile: Option<String>,
    /// The package set (a directory with a default.nix), relative to the project.
    pub nixpkgs: Option<String>,
    #[serde(default)]
    pub limits: LimitsToml,
    #[serde(default)]
    pub policy: Policy,
}

/// Limits with their values checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub timeout: Option<Duration>,
    pub tmp_size_bytes: u64,
    pub max_output_bytes: u64,
}

/// Profiles this build of nixcell knows.
fn known_profiles() -> Vec<&'static str> {
    crate::profile::BUILTIN
        .iter()
        .map(|(name, _)| *name)
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Parses `nixcell.toml`; errors name the file, the line and the key.
    pub fn parse(file: &Path, text: &str) -> Result<(Config, Limits), ProjectError> {
        let config: Config = toml::from_str(text).map_err(|e| ProjectError::Config {
            file: file.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })?;
        let bad = |key: &'static str, message: String| ProjectError::ConfigValue {
            file: file.to_path_buf(),
            key,
            message,
        };
        if let Some(p) = &config.profile
            && !known_profiles().contains(&p.as_str())
        {
            return Err(bad(
                "profile",
                format!(
                    "unknown profile {p:?} (known: {})",
                    known_profiles().join(", ")
                ),
            ));
        }
        let l = &config.limits;
        let limits = Limits {
            timeout: l
                .timeout
                .as_deref()
                .map(crate::units::parse_duration)
                .transpose()
                .map_err(|m| bad("limits.timeout", m))?,
            tmp_size_bytes: l
                .tmp_size
                .as_deref()
                .map(crate::units::parse_size)
                .transpose()
                .map_err(|m| bad("limits.tmp_size", m))?
                .unwrap_or(256 << 20),
            max_output_bytes: l
                .max_output
                .as_deref()
                .map(crate::units::parse_size)
                .transpose()
                .map_err(|m| bad("limits.max_output", m))?
                .unwrap_or(1 << 20),
        };
        for (key, globs) in [
            ("policy.packages", &config.policy.packages),
            ("policy.python_libraries", &config.policy.python_libraries),
            ("policy.services", &config.policy.services),
        ] {
            for g in globs {
                glob::Pattern::new(g).map_err(|e| bad(key, format!("pattern {g:?}: {e}")))?;
            }
        }
        Ok((config, limits))
    }
}

/// The package set a project evaluates against, with what identifies its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSet {
    pub path: PathBuf,
    /// A store path is its own pin; a directory elsewhere is pinned by the names, sizes
    /// and modification times of its files.
    pub pin: String,
}

impl PackageSet {
    pub fn at(path: &Path) -> Result<PackageSet, ProjectError> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| ProjectError::PackageSet(path.to_path_buf(), e.to_string()))?;
        if !real.join("default.nix").is_file() {
            return Err(ProjectError::PackageSet(
                path.to_path_buf(),
                "has no default.nix".into(),
            ));
        }
        let store = std::fs::canonicalize(closure::store_dir()).unwrap_or_default();
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

    /// `nixpkgs=PATH` of NIX_PATH (or a `nixpkgs` directory under a plain entry).
    pub fn from_nix_path() -> Option<PathBuf> {
        let np = std::env::var("NIX_PATH").ok()?;
        np.split(':').find_map(|entry| match entry.split_once('=') {
            Some(("nixpkgs", p)) => Some(PathBuf::from(p)),
            Some(_) => None,
            None => {
                let p = Path::new(entry).join("nixpkgs");
                p.exists().then_some(p)
            }
        })
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

/// A built declaration: the environment's store path and what it declares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Built {
    /// Cache key: sha256 of the evaluator, the declaration's bytes and the pin.
    pub key: String,
    /// The environment (a store path); its closure is the cell's software.
    pub env: PathBuf,
    /// The GC root that keeps it.
    pub root: PathBuf,
    pub description: Description,
    /// Whether this came from the cache (no nix call).
    #[serde(skip)]
    pub cached: bool,
}

impl Built {
    pub fn services(&self) -> Vec<ServiceDecl> {
        self.description.services()
    }
}

/// A project directory and its configuration.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub declaration: PathBuf,
    pub config: Config,
    pub limits: Limits,
    /// `nixcell.toml`, if present.
    pub config_path: Option<PathBuf>,
}

impl Project {
    /// The project whose directory holds a `devenv.nix`: `start` or its nearest parent.
    pub fn discover(start: &Path) -> Result<Project, ProjectError> {
        let abs = std::fs::canonicalize(start).map_err(io_err(start))?;
        let mut dir = abs.as_path();
        loop {
            if dir.join(DECLARATION).is_file() {
                return Project::open(dir);
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => return Err(ProjectError::NotFound(abs)),
            }
        }
    }

    /// The project in exactly `dir`.
    pub fn open(dir: &Path) -> Result<Project, ProjectError> {
        let dir = std::fs::canonicalize(dir).map_err(io_err(dir))?;
        let declaration = dir.join(DECLARATION);
        if !declaration.is_file() {
            return Err(ProjectError::NotFound(dir));
        }
        let cfg = dir.join(CONFIG);
        let (config, limits, config_path) = match std::fs::read_to_string(&cfg) {
            Ok(text) => {
                let (c, l) = Config::parse(&cfg, &text)?;
                (c, l, Some(cfg))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (c, l) = Config::parse(&cfg, "")?;
                (c, l, None)
            }
            Err(e) => return Err(ProjectError::Io(cfg, e)),
        };
        Ok(Project {
            dir,
            declaration,
            config,
            limits,
            config_path,
        })
    }

    /// `.nixcell/`, created with a `.gitignore` that keeps it out of the repository.
    pub fn state_dir(&self) -> Result<PathBuf, ProjectError> {
        let d = self.dir.join(STATE_DIR);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        let gi = d.join(".gitignore");
        if !gi.exists() {
            std::fs::write(&gi, "*\n").map_err(io_err(&gi))?;
        }
        Ok(d)
    }

    /// The package set: `nixpkgs` of nixcell.toml, else `nixpkgs=` of NIX_PATH.
    pub fn package_set(&self) -> Result<PackageSet, ProjectError> {
        let path = match &self.config.nixpkgs {
            Some(p) => self.dir.join(p),
            None => PackageSet::from_nix_path().ok_or(ProjectError::NoPackageSet)?,
        };
        PackageSet::at(&path)
    }

    fn key(&self, decl_bytes: &[u8], set: &PackageSet) -> String {
        let mut h = Sha256::new();
        for part in [
            declare::EVAL_NIX.as_bytes(),
            decl_bytes,
            set.path.as_os_str().as_encoded_bytes(),
            set.pin.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }

    /// Builds the project's declaration (or the cached result).
    pub fn build(&self, progress: Progress) -> Result<Built, ProjectError> {
        self.build_file(&self.declaration, progress)
    }

    /// Builds `decl`, a declaration file in the project directory (the declaration or a
    /// candidate edit of it).
    pub fn build_file(&self, decl: &Path, progress: Progress) -> Result<Built, ProjectError> {
        let bytes = std::fs::read(decl).map_err(io_err(decl))?;
        let set = self.package_set()?;
        let key = self.key(&bytes, &set);
        let state = self.state_dir()?;
        let cache = state.join("builds").join(format!("{key}.json"));
        if let Some(b) = read_cached(&cache) {
            return Ok(b);
        }
        let roots = state.join("gcroots");
        std::fs::create_dir_all(&roots).map_err(io_err(&roots))?;
        let evaluator = declare::write_evaluator(&state)?;
        let description = declare::describe(&evaluator, decl, Some(&set.path))?;
        let root = roots.join(&key[..32]);
        let env = declare::build_env(&evaluator, decl, Some(&set.path), &root, progress)?;
        let built = Built {
            key,
            env,
            root,
            description,
            cached: false,
        };
        if let Some(dir) = cache.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let tmp = dir.join(format!(".{}.{}", built.key, std::process::id()));
            let json = serde_json::to_vec_pretty(&built).unwrap_or_default();
            std::fs::write(&tmp, json)
                .and_then(|_| std::fs::rename(&tmp, &cache))
                .map_err(io_err(&cache))?;
        }
        prune_roots(&roots, &state.join("builds"), &built.key);
        Ok(built)
    }

    /// The request of a run in this project: the built environment, the project
    /// directory as the working directory (/work), the declared variables (an explicit
    /// `--setenv` wins) and the declared services and processes (a `--service` of the
    /// same name wins). Limits are applied by the caller (they are run options).
    pub fn cell_request(&self, built: &Built, mut req: CellRequest) -> CellRequest {
        req.env_paths = vec![built.env.clone()];
        if req.workdir.is_none() {
            req.workdir = Some(self.dir.clone());
        }
        // The repository and the declaration are the host's: read-only in the cell,
        // and a change to them never comes back (crate::changes), also when the
        // workdir given is the project or a directory above it.
        let wd = req
            .workdir
            .as_deref()
            .and_then(|w| std::fs::canonicalize(w).ok());
        let proj = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        if let Some(rel) = wd.as_deref().and_then(|w| proj.strip_prefix(w).ok()) {
            req.protect.extend(PROTECTED.iter().map(|p| rel.join(p)));
        }
        let mut setenv: Vec<String> = built
            .description
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        setenv.append(&mut req.setenv);
        req.setenv = setenv;
        for svc in built.services() {
            if !req.services.iter().any(|s| s.name == svc.name) {
                req.services.push(crate::plan::ServiceRequest {
                    name: svc.name,
                    argv: svc.command,
                    port: match svc.ready {
                        declare::ReadyCheck::TcpPort(p) => Some(p),
                        declare::ReadyCheck::None => None,
                    },
                });
            }
        }
        req
    }
}

fn read_cached(cache: &Path) -> Option<Built> {
    let bytes = std::fs::read(cache).ok()?;
    let mut b: Built = serde_json::from_slice(&bytes).ok()?;
    // The root must still point at the environment, which must still exist.
    let target = std::fs::canonicalize(&b.root).ok()?;
    (target == b.env).then(|| {
        b.cached = true;
        b
    })
}

/// Keeps the current root and the few newest others, so older builds can be collected.
fn prune_roots(roots: &Path, builds: &Path, current: &str) {
    let Ok(rd) = std::fs::read_dir(roots) else {
        return;
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| !current.starts_with(&*e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    for (_, p) in others.into_iter().skip(KEPT_ROOTS) {
        let _ = std::fs::remove_file(&p);
        if let (Some(name), Ok(rd)) = (p.file_name(), std::fs::read_dir(builds)) {
            let name = name.to_string_lossy().into_owned();
            for e in rd.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = "profile = \"default\"\n[policy]\npackages = [\"jq\"]\nflavour = 1\n";
        let err = Config::parse(Path::new("nixcell.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("nixcell.toml:4:"), "{msg}");
        assert!(msg.contains("flavour"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn limits_and_policy_are_read() {
        let text = "[limits]\ntimeout = \"30s\"\ntmp_size = \"64M\"\n[policy]\npackages = [\"python3Packages.*\"]\napproval = \"human\"\n";
        let (c, l) = Config::parse(Path::new("nixcell.toml"), text).unwrap();
        assert_eq!(l.timeout, Some(Duration::from_secs(30)));
        assert_eq!(l.tmp_size_bytes, 64 << 20);
        assert_eq!(c.policy.approval, Approval::Human);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("profile = \"nope\"\n", "profile"),
            ("[limits]\ntimeout = \"soon\"\n", "limits.timeout"),
            ("[policy]\nservices = [\"[\"]\n", "policy.services"),
        ] {
            let err = Config::parse(Path::new("nixcell.toml"), text).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let err =
            Config::parse(Path::new("n.toml"), "[policy]\napproval = \"maybe\"\n").unwrap_err();
        assert!(err.to_string().starts_with("n.toml:2:"), "{err}");
    }
}
