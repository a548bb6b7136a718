//! Declarations: the supported subset of `devenv.nix`, evaluated by nixcell itself.
//!
//! `eval.nix` (embedded) imports the user's file with `{ pkgs, lib, config, ... }`,
//! refuses every option outside the subset by name, and yields two things: `env`, a
//! buildable environment of the packages, the Python environment and the services'
//! packages; and `description`, data about services, processes, variables and libraries.
//!
//! The file is called with devenv's arguments, `{ pkgs, lib, config, inputs, ... }`
//! (`inputs.nixpkgs` is the package set in use), and every option it accepts means what
//! it means to devenv. Supported options: `packages`,
//! `languages.python.{enable,version,package,libraries}` (`libraries`: native library
//! packages put on the interpreter's `LD_LIBRARY_PATH`; a list of Python library names,
//! the old nixcell form, is still read), `services.redis.{enable,port}`,
//! `services.postgres.{enable,port,listen_addresses,initialDatabases (name, user, pass,
//! initialSQL, schema),initialScript,createDatabase}`, `processes.<name>.exec`, `scripts.<name>.{exec,description}`
//! (commands on the cell's PATH), `enterShell` (run in the cell before the command),
//! `env.<NAME>`. Any other option is an error naming the nearest known one.

pub mod attrs;
pub mod package_set;

use crate::nix::build::{self, BuildError, Progress};
use crate::nix::eval::{self, EvalError};
pub use package_set::PackageSet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The evaluator, kept as a Nix file in the repository.
pub const EVAL_NIX: &str = include_str!("eval.nix");

#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write the evaluator to {0}: {1}")]
    Evaluator(PathBuf, #[source] std::io::Error),
    #[error("evaluating {file}: {source}")]
    Eval {
        file: PathBuf,
        #[source]
        source: EvalError,
    },
    #[error("evaluating {file}: the evaluator's answer has an unexpected shape: {source}")]
    Shape {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("building {file}: {source}")]
    Build {
        file: PathBuf,
        #[source]
        source: BuildError,
    },
}

/// How a service tells it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyCheck {
    /// Ready once something accepts connections on 127.0.0.1:PORT.
    TcpPort(u16),
    /// Ready as soon as it started.
    None,
}

/// A long-running program the runner starts inside the cell before the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDecl {
    pub name: String,
    /// argv with an absolute store path first; every path is in the env's closure.
    pub command: Vec<String>,
    pub port: Option<u16>,
    pub ready: ReadyCheck,
    /// How long it may take to get ready (None: the runner's default).
    #[serde(default)]
    pub ready_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonDecl {
    pub version: Option<String>,
    /// Python library names in `languages.python.libraries` (the old nixcell form).
    pub libraries: Vec<String>,
    /// Package names of `languages.python.libraries` (devenv's native libraries).
    #[serde(default)]
    pub native_libraries: Vec<String>,
    /// Whether `languages.python.package` chose the interpreter (and its libraries).
    pub package: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceJson {
    pub name: String,
    pub port: u16,
    pub command: Vec<String>,
    #[serde(default)]
    pub ready_timeout_ms: Option<u64>,
}

/// A `scripts.<name>`: a command of that name on the cell's PATH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptJson {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessJson {
    pub name: String,
    pub exec: String,
    pub command: Vec<String>,
    /// The loopback port it listens on (`ports.<name>.allocate`): Landlock opens it,
    /// and the command starts once the process accepts connections there.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// What `eval.nix` says about a declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// Package names of `packages` (pname, else the name without version).
    pub packages: Vec<String>,
    pub python: Option<PythonDecl>,
    pub services: Vec<ServiceJson>,
    pub processes: Vec<ProcessJson>,
    #[serde(default)]
    pub scripts: Vec<ScriptJson>,
    /// What the declaration should change to stay valid for devenv (the old form).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The prefix of the command's argv that runs `enterShell` first (a store script
    /// that sources it and execs the rest), when the declaration has one.
    #[serde(default)]
    pub enter_shell: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawDescription {
    errors: Vec<EvalProblem>,
    #[serde(flatten)]
    rest: serde_json::Value,
}

/// One problem `eval.nix` found: a message, or an option it does not know with the
/// names known at that place.
#[derive(Deserialize)]
#[serde(untagged)]
enum EvalProblem {
    Message(String),
    Unknown {
        option: String,
        file: String,
        candidates: Vec<String>,
    },
}

impl EvalProblem {
    fn message(&self) -> String {
        match self {
            EvalProblem::Message(m) => m.clone(),
            EvalProblem::Unknown {
                option,
                file,
                candidates,
            } => {
                let last = option.rsplit('.').next().unwrap_or(option);
                let prefix = &option[..option.len() - last.len()];
                match did_you_mean(last, candidates) {
                    Some(c) => format!(
                        "unsupported option `{option}` in {file}; did you mean `{prefix}{c}`?"
                    ),
                    None => format!(
                        "unsupported option `{option}` in {file} (known here: {})",
                        candidates.join(", ")
                    ),
                }
            }
        }
    }
}

/// The known name nearest to `name`, if it is near enough to be a slip.
pub fn did_you_mean<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&lower, &k.to_lowercase()), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

impl Description {
    /// Services and processes as the runner starts them.
    pub fn services(&self) -> Vec<ServiceDecl> {
        let mut out: Vec<ServiceDecl> = self
            .services
            .iter()
            .map(|s| ServiceDecl {
                name: s.name.clone(),
                command: s.command.clone(),
                port: Some(s.port),
                ready: ReadyCheck::TcpPort(s.port),
                ready_timeout_ms: s.ready_timeout_ms,
            })
            .collect();
        out.extend(self.processes.iter().map(|p| {
            ServiceDecl {
                name: p.name.clone(),
                command: p.command.clone(),
                port: p.ports.first().copied(),
                ready: p
                    .ports
                    .first()
                    .map_or(ReadyCheck::None, |&port| ReadyCheck::TcpPort(port)),
                ready_timeout_ms: None,
            }
        }));
        out
    }
}

/// Writes the evaluator into nixcell's private cache (nix needs a file; a project's
/// directory is no place for code nixcell trusts) and returns its path. The file is
/// named by its content: two nixcell versions running at once for the same user never
/// evaluate each other's evaluator.
pub fn write_evaluator() -> Result<PathBuf, DeclareError> {
    use sha2::{Digest, Sha256};
    let dir = crate::dirs::private_dir(crate::dirs::Base::Cache, "eval").map_err(|e| {
        DeclareError::Evaluator(PathBuf::from("eval.nix"), std::io::Error::other(e))
    })?;
    let name = format!(
        "eval-{}.nix",
        &hex::encode(Sha256::digest(EVAL_NIX.as_bytes()))[..16]
    );
    let path = dir.join(&name);
    crate::dirs::write_atomic(&dir, &name, EVAL_NIX.as_bytes())
        .map_err(|e| DeclareError::Evaluator(path.clone(), e))?;
    Ok(path)
}

/// What an evaluation of `decl` may read: the evaluator's directory, the declaration's
/// directory (the project) and the package set.
fn allowed(evaluator: &Path, decl: &Path, nixpkgs: Option<&Path>) -> Vec<PathBuf> {
    [evaluator.parent(), decl.parent(), nixpkgs]
        .into_iter()
        .flatten()
        .map(Path::to_path_buf)
        .collect()
}

fn args<'a>(decl: &'a str, nixpkgs: &'a str) -> [(&'static str, &'a str); 2] {
    [("decl", decl), ("nixpkgs", nixpkgs)]
}

/// Evaluates the description of `decl` (an absolute path) against the package set at
/// `nixpkgs` (absolute; `None`: `<nixpkgs>`).
pub fn describe(
    evaluator: &Path,
    decl: &Path,
    nixpkgs: Option<&Path>,
) -> Result<Description, DeclareError> {
    let d = decl.to_string_lossy();
    let n = nixpkgs.map(|p| p.to_string_lossy()).unwrap_or_default();
    let allowed = allowed(evaluator, decl, nixpkgs);
    let value =
        eval::eval_json(evaluator, "description", &args(&d, &n), &allowed).map_err(|source| {
            DeclareError::Eval {
                file: decl.to_path_buf(),
                source,
            }
        })?;
    let raw: RawDescription =
        serde_json::from_value(value).map_err(|source| DeclareError::Shape {
            file: decl.to_path_buf(),
            source,
        })?;
    if let Some(first) = raw.errors.first() {
        let more = match raw.errors.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Err(DeclareError::Invalid(format!("{}{more}", first.message())));
    }
    serde_json::from_value(raw.rest).map_err(|source| DeclareError::Shape {
        file: decl.to_path_buf(),
        source,
    })
}

/// Builds the environment of `decl`; `link` becomes its GC root.
pub fn build_env(
    evaluator: &Path,
    decl: &Path,
    nixpkgs: Option<&Path>,
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, DeclareError> {
    let d = decl.to_string_lossy();
    let n = nixpkgs.map(|p| p.to_string_lossy()).unwrap_or_default();
    let allowed = allowed(evaluator, decl, nixpkgs);
    build::build_file(evaluator, "env", &args(&d, &n), &allowed, link, progress).map_err(|source| {
        DeclareError::Build {
            file: decl.to_path_buf(),
            source,
        }
    })
}

/// The expression of `nixcell run --with`.
pub const WITH_NIX: &str = include_str!("with.nix");

/// Builds an environment of the packages `names` (checked attribute paths) from the
/// package set at `nixpkgs`, cached in `cache_dir` by names and pin: a second call with
/// the same names does not run nix. Returns the environment's store path.
pub fn build_with(
    names: &[String],
    nixpkgs: &PackageSet,
    cache_dir: &Path,
    progress: Progress,
) -> Result<PathBuf, DeclareError> {
    use sha2::{Digest, Sha256};
    let joined = names.join(" ");
    let mut h = Sha256::new();
    for part in [
        WITH_NIX,
        &joined,
        &nixpkgs.path.to_string_lossy(),
        &nixpkgs.pin,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key = hex::encode(h.finalize());
    let link = cache_dir.join(&key[..32]);
    // The link is ours (a private directory), and still only a store path counts.
    if let Ok(target) = std::fs::read_link(&link)
        && crate::nix::store::is_store_path(&target, &crate::nix::closure::store_dir())
        && target.symlink_metadata().is_ok()
    {
        return Ok(target);
    }
    // Named by its content, as the evaluator: two nixcell versions running at once
    // never build with each other's file.
    let name = format!(
        "with-{}.nix",
        &hex::encode(Sha256::digest(WITH_NIX.as_bytes()))[..16]
    );
    let file = cache_dir.join(&name);
    crate::dirs::write_atomic(cache_dir, &name, WITH_NIX.as_bytes())
        .map_err(|e| DeclareError::Evaluator(file.clone(), e))?;
    let set = nixpkgs.path.to_string_lossy();
    build::build_file(
        &file,
        "",
        &[("names", &joined), ("nixpkgs", &set)],
        &[cache_dir.to_path_buf(), nixpkgs.path.clone()],
        &link,
        progress,
    )
    .map_err(|source| DeclareError::Build {
        file: PathBuf::from("--with"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_slip_gets_the_nearest_option() {
        let services = names(&["postgres", "redis"]);
        assert_eq!(did_you_mean("postgresql", &services), Some("postgres"));
        assert_eq!(did_you_mean("reddis", &services), Some("redis"));
        assert_eq!(did_you_mean("kafka", &services), None);
        let p = EvalProblem::Unknown {
            option: "languages.python.libaries".into(),
            file: "devenv.nix".into(),
            candidates: names(&["enable", "libraries", "package", "version"]),
        };
        assert_eq!(
            p.message(),
            "unsupported option `languages.python.libaries` in devenv.nix; did you mean `languages.python.libraries`?"
        );
    }
}
