//! Projects: a directory with a `devenv.nix` (the declaration) and an optional
//! `nixcell.toml` (profile, limits, package set, edit policy), found by walking up from
//! the current directory. Builds are cached in the project's `.nixcell/` directory, keyed
//! by the declaration's content and the package set's pin, with a GC root per build: a
//! cached environment starts a run without calling nix at all.

pub use crate::declare::package_set::{
    LOCK_FILE, Lock, Origin, PackageSet, PackageSetError, Pin, PinInfo, Requested,
};
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
/// devenv's input file, read for `inputs.nixpkgs.url`.
pub const DEVENV_YAML: &str = "devenv.yaml";
/// Larger devenv.yaml files are refused unread.
const DEVENV_YAML_MAX_BYTES: u64 = 64 << 10;
/// The sibling of the declaration an edit is proven from.
pub const CANDIDATE: &str = ".devenv.nix.nixcell-candidate.nix";
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
    #[error(
        "no package set: set `nixpkgs = \"REF\"` in {CONFIG} (a path, github:OWNER/REPO/REF, a registry name), `inputs.nixpkgs.url` in {DEVENV_YAML}, or nixpkgs=PATH in NIX_PATH"
    )]
    NoPackageSet,
    #[error(transparent)]
    PackageSet(#[from] PackageSetError),
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
    /// `allow-domain` entries, `HOST:PORT` globs (e.g. `*.example.com:443`); the
    /// profile's network allow list bounds them too.
    #[serde(default)]
    pub domains: Vec<String>,
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
    /// The package set: a path (relative to the project), a flake reference
    /// (`github:NixOS/nixpkgs/nixos-24.11`, `path:…`, `git+file:…`), a registry name
    /// (`nixpkgs`) or `<nixpkgs>`.
    pub nixpkgs: Option<String>,
    #[serde(default)]
    pub limits: LimitsToml,
    #[serde(default)]
    pub policy: Policy,
    /// `[network]`: the names the project's cells reach through the proxy, inside
    /// the profile's own list (see `net::policy`).
    pub network: Option<crate::net::policy::NetworkToml>,
}

/// Limits with their values checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub timeout: Option<Duration>,
    pub tmp_size_bytes: u64,
    /// None: the profile's (a project may only lower it, see `run::limits`).
    pub max_output_bytes: Option<u64>,
    /// `[network]`, checked; None: the profile's (a project may only narrow it).
    pub network: Option<crate::net::NetPolicy>,
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
                .map_err(|m| bad("limits.max_output", m))?,
            network: match &config.network {
                None => None,
                Some(n) => {
                    for (key, e) in n.entries() {
                        if let Err(m) = crate::net::Entry::parse(e.get_ref()) {
                            return Err(ProjectError::Config {
                                file: file.to_path_buf(),
                                line: line_of(text, e.span().start),
                                message: format!("network.{key}: {m}"),
                            });
                        }
                    }
                    n.policy().ok()
                }
            },
        };
        for (key, globs) in [
            ("policy.packages", &config.policy.packages),
            ("policy.python_libraries", &config.policy.python_libraries),
            ("policy.services", &config.policy.services),
            ("policy.domains", &config.policy.domains),
        ] {
            for g in globs {
                glob::Pattern::new(g).map_err(|e| bad(key, format!("pattern {g:?}: {e}")))?;
            }
        }
        Ok((config, limits))
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
    /// The package set's pin.
    pub package_set: PinInfo,
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
        let text = read_nofollow(&cfg)
            .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("not UTF-8")));
        let (config, limits, config_path) = match text {
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

    /// `.nixcell/`, created with a `.gitignore` that keeps it out of the repository:
    /// a real directory owned by the caller (else an error naming it).
    pub fn state_dir(&self) -> Result<PathBuf, ProjectError> {
        let d = self.dir.join(STATE_DIR);
        match std::fs::DirBuilder::new().create(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ProjectError::Io(d, e)),
        }
        check_owned_dir(&d)?;
        let gi = d.join(".gitignore");
        let fine = std::fs::symlink_metadata(&gi).is_ok_and(|m| m.is_file())
            && read_nofollow(&gi).is_ok_and(|b| b == b"*\n");
        if !fine {
            // Rename over whatever is there: a link is replaced, never followed.
            crate::dirs::write_atomic(&d, ".gitignore", b"*\n").map_err(io_err(&gi))?;
        }
        Ok(d)
    }

    /// `.nixcell/<name>`, a real directory owned by the caller; a symbolic link there
    /// is removed (not followed) and replaced by a directory.
    pub fn state_subdir(&self, name: &str) -> Result<PathBuf, ProjectError> {
        let d = self.state_dir()?.join(name);
        if std::fs::symlink_metadata(&d).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&d).map_err(io_err(&d))?;
        }
        match std::fs::DirBuilder::new().create(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ProjectError::Io(d, e)),
        }
        check_owned_dir(&d)?;
        Ok(d)
    }

    /// The package set as the project names it: `nixpkgs` of nixcell.toml, else
    /// `inputs.nixpkgs.url` of devenv.yaml, else what its lock pins (as devenv's
    /// default input), else `nixpkgs=` of NIX_PATH. A local directory a project names
    /// must be in the project, in the Nix store or under a path the caller named
    /// ([`crate::declare::package_set::trusted_local`]) to be resolved.
    pub fn requested(&self, lock: Option<&Lock>) -> Result<Requested, ProjectError> {
        let yaml = self.devenv_yaml_nixpkgs()?;
        let req = match (&self.config.nixpkgs, yaml) {
            (Some(spec), yaml) => {
                let req = Requested::parse(spec, Origin::Config(self.dir.join(CONFIG)), &self.dir)?;
                if let Some(y) = yaml
                    && y.original != req.original
                {
                    return Err(ProjectError::ConfigValue {
                        file: self.dir.join(CONFIG),
                        key: "nixpkgs",
                        message: format!(
                            "names {spec:?} but {DEVENV_YAML} names {:?}: devenv would use another package set",
                            y.spec
                        ),
                    });
                }
                req
            }
            (None, Some(y)) => y,
            (None, None) if let Some(o) = lock.and_then(Lock::original) => {
                Requested::from_lock(o, &self.dir.join(LOCK_FILE), &self.dir)?
            }
            (None, None) => {
                let v = PackageSet::nix_path_value().ok_or(ProjectError::NoPackageSet)?;
                Requested::parse(&v, Origin::NixPath, &self.dir)?
            }
        };
        Ok(req)
    }

    /// `inputs.nixpkgs.url` of the project's devenv.yaml, if it has one.
    fn devenv_yaml_nixpkgs(&self) -> Result<Option<Requested>, ProjectError> {
        let file = self.dir.join(DEVENV_YAML);
        let bad = |message: String| ProjectError::ConfigValue {
            file: file.clone(),
            key: "inputs.nixpkgs.url",
            message,
        };
        let bytes = match crate::dirs::read_nofollow_capped(&file, DEVENV_YAML_MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ProjectError::Io(file, e)),
        };
        let doc: serde_norway::Value =
            serde_norway::from_slice(&bytes).map_err(|e| ProjectError::Config {
                file: file.clone(),
                line: e.location().map_or(1, |l| l.line()),
                message: e.to_string().replace('\n', " "),
            })?;
        check_devenv_yaml(&file, &String::from_utf8_lossy(&bytes), &doc)?;
        let input = doc.get("inputs").and_then(|i| i.get("nixpkgs"));
        let Some(input) = input else {
            return Ok(None);
        };
        let url = input
            .get("url")
            .ok_or_else(|| bad("inputs.nixpkgs has no url".into()))?
            .as_str()
            .ok_or_else(|| bad("must be a string".into()))?;
        Ok(Some(Requested::parse(
            url,
            Origin::DevenvYaml(file.clone()),
            &self.dir,
        )?))
    }

    /// The pin of the package set: the lock's (`devenv.lock` next to the declaration),
    /// or, on first use or with `update`, the input resolved now and written there.
    /// Reading a lock calls no nix.
    pub fn pin(&self, update: bool) -> Result<Pin, ProjectError> {
        let lock = Lock::read(&self.dir)?;
        let req = self.requested(lock.as_ref())?;
        let file = self.dir.join(LOCK_FILE);
        if !update
            && let Some(pin) = lock
                .as_ref()
                .map(|l| l.pin(&req, &file))
                .transpose()?
                .flatten()
        {
            return Ok(pin);
        }
        // Resolving reads the directory named (nix copies it into the store): only one
        // the project may name. A pinned copy already in the store is read as it is
        // ([`Pin::realise`]).
        req.check_trusted(&self.dir)?;
        let pin = Pin {
            locked: req.resolve()?,
            requested: req,
            lock_file: file.clone(),
        };
        if let Err(e) = Lock::write(lock.as_ref(), &self.dir, &pin) {
            if update {
                return Err(ProjectError::Io(file, e));
            }
            eprintln!(
                "nixcell: warning: cannot write the lock {}: {e}; the package set is pinned for this run only",
                file.display()
            );
        }
        Ok(pin)
    }

    /// The package set, pinned and present in the store.
    pub fn package_set(&self) -> Result<PackageSet, ProjectError> {
        Ok(self.pin(false)?.realise(&self.dir)?)
    }

    /// The build cache key: everything the result depends on that nixcell can know.
    fn key(&self, decl: &Path, decl_bytes: &[u8], pin: &Pin) -> String {
        let set = pin.package_set();
        let mut h = Sha256::new();
        let mut files = Sha256::new();
        // A package set inside the project is pinned by the lock, not walked.
        let skip = pin.requested.local_dir();
        let walk = Walk {
            decl,
            skip: skip.as_deref(),
        };
        walk.fingerprint(&self.dir, &self.dir, &mut files, &mut 0);
        let files = files.finalize();
        let allowed: Vec<u8> = crate::nix::eval::caller_allowed_paths()
            .iter()
            .flat_map(|p| {
                let mut b = p.as_os_str().as_encoded_bytes().to_vec();
                b.push(0);
                b
            })
            .collect();
        for part in [
            BUILD_CACHE_FORMAT.as_bytes(),
            declare::EVAL_NIX.as_bytes(),
            self.dir.as_os_str().as_encoded_bytes(),
            decl_bytes,
            &files[..],
            set.path.as_os_str().as_encoded_bytes(),
            set.pin.as_bytes(),
            &allowed,
            closure::store_dir().as_os_str().as_encoded_bytes(),
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
        let bytes = read_nofollow(decl).map_err(io_err(decl))?;
        let pin = self.pin(false)?;
        let key = self.key(decl, &bytes, &pin);
        let roots = self.state_subdir("gcroots")?;
        let root = roots.join(&key[..32]);
        // Without a private cache directory every run builds (nix finds the result).
        let builds = crate::dirs::private_dir(crate::dirs::Base::Cache, "builds").ok();
        let cache_name = format!("{key}.json");
        if let Some(b) = builds
            .as_ref()
            .and_then(|d| read_cached(&d.join(&cache_name), &key, &root))
        {
            return Ok(b);
        }
        let set = pin.realise(&self.dir)?;
        // The pinned source stays in the store as long as the build's root does: a
        // later build need not fetch it again.
        crate::nix::store::add_root(&set.path, &roots.join(format!("{}-nixpkgs", &key[..32])));
        let evaluator = declare::write_evaluator()?;
        let description = declare::describe(&evaluator, decl, Some(&set.path))?;
        if matches!(progress, Progress::Stderr) {
            for w in &description.warnings {
                eprintln!("nixcell: warning: {w}");
            }
        }
        // nix-build replaces whatever is at the link's place (it renames a new link
        // over it), so a planted link or file there is not followed.
        let env = declare::build_env(&evaluator, decl, Some(&set.path), &root, progress)?;
        let built = Built {
            key,
            env,
            root,
            description,
            package_set: pin.info(),
            cached: false,
        };
        let json = serde_json::to_vec_pretty(&built).unwrap_or_default();
        if let Some(builds) = &builds
            && let Some(sealed) = crate::seal::seal(BUILD_CACHE_FORMAT, &json)
        {
            crate::dirs::write_atomic(builds, &cache_name, &sealed)
                .map_err(io_err(&builds.join(&cache_name)))?;
        }
        prune_roots(&roots, builds.as_deref(), &built.key);
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
        // devenv runs enterShell before the command: a store script sources it (its
        // output on stderr) and execs the command with what it exported.
        if let Some(prefix) = &built.description.enter_shell
            && !req.argv.is_empty()
        {
            req.argv.splice(0..0, prefix.iter().cloned());
        }
        for svc in built.services() {
            if !req.services.iter().any(|s| s.name == svc.name) {
                req.services.push(crate::plan::ServiceRequest {
                    name: svc.name,
                    argv: svc.command,
                    port: match svc.ready {
                        declare::ReadyCheck::TcpPort(p) => Some(p),
                        declare::ReadyCheck::None => None,
                    },
                    ready_timeout_ms: svc.ready_timeout_ms,
                });
            }
        }
        req
    }
}

/// Refuses what would make devenv evaluate the package set otherwise than nixcell does
/// (nixcell reads only `inputs.nixpkgs.url`): overlays, follows or other settings of the
/// nixpkgs input, nixpkgs configuration, imports; an unknown key is an error too.
/// Other inputs are left alone (a declaration reaches only `inputs.nixpkgs`).
fn check_devenv_yaml(
    file: &Path,
    text: &str,
    doc: &serde_norway::Value,
) -> Result<(), ProjectError> {
    use serde_norway::Value as Y;
    let at = |key: &str, message: String| ProjectError::Config {
        file: file.to_path_buf(),
        line: text
            .find(&format!("{key}:"))
            .map_or(1, |o| line_of(text, o)),
        message,
    };
    let Some(map) = doc.as_mapping() else {
        return match doc {
            Y::Null => Ok(()),
            _ => Err(at("", "must be a mapping of devenv's keys".into())),
        };
    };
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        let fine = match key {
            "inputs" => {
                let nixpkgs = v.get("nixpkgs");
                if let Some(other) = nixpkgs
                    .and_then(Y::as_mapping)
                    .and_then(|m| m.keys().find(|k| k.as_str() != Some("url")))
                {
                    return Err(at(
                        other.as_str().unwrap_or("nixpkgs"),
                        format!(
                            "inputs.nixpkgs.{}: nixcell reads only inputs.nixpkgs.url",
                            other.as_str().unwrap_or("?")
                        ),
                    ));
                }
                v.is_mapping() && nixpkgs.is_none_or(Y::is_mapping)
            }
            "allowUnfree" | "allowBroken" => v.as_bool() == Some(false),
            "permittedInsecurePackages" | "imports" => {
                v.as_sequence().is_some_and(|s| s.is_empty())
            }
            "clean" | "impure" => true,
            _ => {
                return Err(at(
                    key,
                    format!("unsupported key `{key}` (nixcell reads inputs.nixpkgs.url)"),
                ));
            }
        };
        if !fine {
            return Err(at(
                key,
                format!(
                    "`{key}` with this value is not supported: nixcell evaluates the package set without it"
                ),
            ));
        }
    }
    Ok(())
}

/// Version of the build cache's entries and key.
const BUILD_CACHE_FORMAT: &str = "build-v3";

/// `dir` is a directory (not a link to one) owned by the effective uid.
fn check_owned_dir(dir: &Path) -> Result<(), ProjectError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    let bad = |why: String| {
        ProjectError::Io(
            dir.to_path_buf(),
            std::io::Error::other(format!(
                "{why}; nixcell keeps its state there and refuses to use it"
            )),
        )
    };
    if m.file_type().is_symlink() {
        return Err(bad("is a symbolic link".into()));
    }
    if !m.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if m.uid() != euid {
        return Err(bad(format!(
            "is owned by uid {}, not by uid {euid}",
            m.uid()
        )));
    }
    Ok(())
}

/// The content of a regular file, opened without following a symbolic link.
pub fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::dirs::read_nofollow_capped(path, u64::MAX)
}

/// Names, sizes and modification times of the project's Nix files other than `decl`
/// (what a declaration may import besides the package set), skipping `.git`,
/// `.nixcell`, `result*` links, nixcell's candidate file and a package set in the
/// project (`skip`, pinned by the lock); at most 10000 entries.
struct Walk<'a> {
    decl: &'a Path,
    skip: Option<&'a Path>,
}

impl Walk<'_> {
    fn fingerprint(&self, base: &Path, dir: &Path, h: &mut Sha256, n: &mut usize) {
        use std::os::unix::fs::MetadataExt;
        let decl = self.decl;
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            *n += 1;
            if *n > 10_000 {
                return;
            }
            let name = e.file_name();
            let nb = name.as_encoded_bytes();
            if name == ".git" || name == STATE_DIR || nb.starts_with(b"result") {
                continue;
            }
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if self.skip != Some(path.as_path()) {
                    self.fingerprint(base, &path, h, n);
                }
                continue;
            }
            if !nb.ends_with(b".nix") || path == decl || nb == CANDIDATE.as_bytes() {
                continue;
            }
            let rel = path.strip_prefix(base).unwrap_or(&path);
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update(
                format!(
                    "\0{}\0{}\0{}\0{}\n",
                    meta.file_type().is_symlink(),
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec()
                )
                .as_bytes(),
            );
        }
    }
}

/// A cached build, if sealed by us, for this key, and its GC root (exactly `root`, a
/// symbolic link) still points at its environment, a store path.
fn read_cached(cache: &Path, key: &str, root: &Path) -> Option<Built> {
    let sealed = std::fs::read(cache).ok()?;
    let bytes = crate::seal::open(BUILD_CACHE_FORMAT, &sealed)?;
    let mut b: Built = serde_json::from_slice(bytes).ok()?;
    let store = closure::store_dir();
    let valid = b.key == key
        && b.root == root
        && crate::nix::store::is_store_path(&b.env, &store)
        && std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::read_link(root).is_ok_and(|t| t == b.env)
        && std::fs::symlink_metadata(&b.env).is_ok();
    valid.then(|| {
        b.cached = true;
        b
    })
}

/// Keeps the current root and the few newest others, so older builds can be collected.
/// Only symbolic links (the GC roots nix-build made) are removed, with the cache
/// entries of the same builds.
fn prune_roots(roots: &Path, builds: Option<&Path>, current: &str) {
    let Ok(rd) = std::fs::read_dir(roots) else {
        return;
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| !current.starts_with(&*e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            m.file_type()
                .is_symlink()
                .then_some((m.modified().ok()?, e.path()))
        })
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    for (_, p) in others.into_iter().skip(KEPT_ROOTS) {
        let _ = std::fs::remove_file(&p);
        if let (Some(name), Some(Ok(rd))) = (p.file_name(), builds.map(std::fs::read_dir)) {
            let name = name.to_string_lossy().into_owned();
            for e in rd.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with(&name)
                    && e.file_type().is_ok_and(|t| t.is_file())
                {
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
    fn network_entries_are_checked_with_their_line() {
        let f = Path::new("nixcell.toml");
        let (_, l) = Config::parse(
            f,
            "[network]\nallow = [\"api.example.com:443\"]\ndeny = [\"10.0.0.0/8:443\"]\n",
        )
        .unwrap();
        let n = l.network.unwrap();
        assert_eq!((n.allow.len(), n.deny.len()), (1, 1));
        let e = Config::parse(
            f,
            "[network]\nallow = [\n  \"api.example.com:443\",\n  \"*x.com:1\",\n]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("nixcell.toml:4: network.allow:"), "{e}");
        assert!(e.contains("wildcard"), "{e}");
        let e = Config::parse(f, "[network]\nallow = \"all\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nixcell.toml:2:"), "{e}");
        assert!(Config::parse(f, "").unwrap().1.network.is_none());
        let none = Config::parse(f, "network = \"none\"\n").unwrap().1.network;
        assert_eq!(none, Some(crate::net::NetPolicy::default()));
        let e = Config::parse(f, "network = \"all\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("nixcell.toml:1:") && e.contains("\"none\""),
            "{e}"
        );
        let e = Config::parse(f, "[network]\nalow = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("nixcell.toml:2:") && e.contains("alow"),
            "{e}"
        );
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
