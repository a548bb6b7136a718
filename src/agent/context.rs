//! Ground-truth context: what a cell of a project really contains, read from the BUILT
//! closure (not from the declaration's text), for an agent's system prompt (Markdown) or
//! a program (JSON).
//!
//! # JSON schema (`"schema": "nixcell.context/1"`)
//! ```text
//! {
//!   "schema": "nixcell.context/1",
//!   "project": "/abs/project/dir",
//!   "env": "/nix/store/...-nixcell-env",          // root of the cell's software
//!   "closure_paths": 12,                           // store paths visible in the cell
//!   "packages": [ { "name": "jq", "version": "1.6" | null,
//!                   "store_path": "/nix/store/...", "declared": true } ],
//!                                                  // declared first, then the rest, by name
//!   "executables": [ "jq", "python3", ... ],       // names on PATH, sorted
//!   "toolboxes": [ { "package": "busybox", "commands": 269 } ],
//!                                                  // packages with many commands on PATH
//!   "python": null | { "version": "3.11.2", "executable": "python3",
//!                      "libraries": [ { "name": "pandas", "version": "1.5.3" } ] },
//!                                                  // declared libraries first
//!   "services": [ { "name": "redis", "port": 6379 | null, "command": [ ... ] } ],
//!   "env_vars": { "NAME": "value" },
//!   "package_set": { "source": "github:NixOS/nixpkgs/nixos-24.11", "origin": "...",
//!                    "locked": "github:NixOS/nixpkgs/<rev>", "nar_hash": "sha256-...",
//!                    "lock_file": "/abs/project/devenv.lock", "path": "/nix/store/...-source" },
//!   "limits": { "timeout_secs": 30 | null, "memory_bytes": N | null, "cpus": 2.0 | null,
//!               "pids": N | null, "open_files": N | null, "file_size_bytes": N | null,
//!               "cpu_seconds": N | null, "max_output_bytes": N, "tmp_size_bytes": N,
//!               "tmp_inodes": N, "work_size_bytes": N | null, "work_inodes": N | null,
//!               "ask_up_to": null | { "timeout_secs": N, "max_output_bytes": N,
//!                                     "memory_bytes", "cpus", "pids" } },  // MCP only
//!                                                  // what a run gets: run::limits' rule
//!   "network": { "policy": "loopback-only", "tcp_ports": [6379] | null, "detail": "..." },
//!   "writable_paths": [ { "path": "/work", "what": "...", "size_bytes": N | null } ],
//!   "read_only_paths": [ { "path": "/work" | "/", "what": "..." } ],
//!   "layers": [ { "name": "user-namespaces", "available": true, "detail": "..." } ],
//!   "edits": { "approval": "auto" | "human",
//!              "allowed": { "packages": [..], "python_libraries": [..], "services": [..] },
//!              "commands": [ "nixcell edit add-package NAME", ... ] },
//!                                                  // under MCP: edit_environment calls
//!   "profile": "default",                          // the profile the runs use
//!   "mcp": false                                   // describes runs through MCP
//! }
//! ```

use crate::edit::Op;
use crate::project::{Approval, Built, Project};
use crate::sandbox::WORKDIR_IN_CELL;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("reading the closure of {env}: {message}")]
    Closure { env: PathBuf, message: String },
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
}

pub const SCHEMA: &str = "nixcell.context/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    pub name: String,
    pub version: Option<String>,
    pub store_path: PathBuf,
    pub declared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryInfo {
    pub name: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonInfo {
    pub version: Option<String>,
    pub executable: String,
    pub libraries: Vec<LibraryInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub port: Option<u16>,
    pub command: Vec<String>,
}

/// The limits a run gets, as the run pipeline decides them (`run::limits`): the
/// profile's, tightened by the project's, and under MCP the server's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsInfo {
    pub timeout_secs: Option<u64>,
    /// Memory of the whole cell (no swap); past it the kernel's OOM killer ends the command.
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    /// Processes and threads of the cell.
    pub pids: Option<u64>,
    pub open_files: Option<u64>,
    /// Largest file the command may write.
    pub file_size_bytes: Option<u64>,
    pub cpu_seconds: Option<u64>,
    /// Bytes kept of each captured stream.
    pub max_output_bytes: u64,
    pub tmp_size_bytes: u64,
    pub tmp_inodes: u64,
    /// Caps of the copy-on-write layer of /work (what the command may add or change).
    pub work_size_bytes: Option<u64>,
    pub work_inodes: Option<u64>,
    /// What enforces memory and pids: "cgroup" (the whole cell, OOM kill), or "rlimit"
    /// (no cgroup for this user: address space per process, processes per user
    /// namespace, no CPU quota), or null when neither is asked for.
    pub enforced_by: Option<String>,
    /// Under MCP: the most a `run` may ask for (`timeout_seconds`, `max_output_bytes`,
    /// `memory_mib`, `cpus`, `pids`).
    pub ask_up_to: Option<AskUpTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AskUpTo {
    pub timeout_secs: u64,
    pub max_output_bytes: u64,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// "loopback-only", or "proxy": the names of `allowed` through nixcell's proxy.
    pub policy: String,
    /// The allow entries in force (the profile's, narrowed by nixcell.toml).
    #[serde(default)]
    pub allowed: Vec<String>,
    /// The proxy's URL in the cell (also in HTTP_PROXY, HTTPS_PROXY, ALL_PROXY).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Loopback TCP ports the command may connect to and bind (Landlock); `null`: any.
    pub tcp_ports: Option<Vec<u16>>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritablePath {
    pub path: String,
    pub what: String,
    pub size_bytes: Option<u64>,
}

/// A path the command can read but not write, and what happens when it tries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyPath {
    pub path: String,
    pub what: String,
}

/// Commands on PATH that come from one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolbox {
    pub package: String,
    pub commands: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub name: String,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedEdits {
    pub packages: Vec<String>,
    pub python_libraries: Vec<String>,
    pub services: Vec<String>,
    /// Entries of the profile's network list `allow-domain` may add names of (one
    /// name each, within `[policy] domains`); empty: the edit is not offered.
    #[serde(default)]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditsInfo {
    pub approval: Approval,
    /// `[policy] domains` (globs of `HOST:PORT`), when allow-domain is offered.
    #[serde(default)]
    pub domain_policy: Vec<String>,
    pub allowed: AllowedEdits,
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub schema: String,
    pub project: PathBuf,
    pub env: PathBuf,
    pub closure_paths: usize,
    pub packages: Vec<PackageInfo>,
    pub executables: Vec<String>,
    /// Packages that put many commands on PATH (summarised in the Markdown).
    pub toolboxes: Vec<Toolbox>,
    pub python: Option<PythonInfo>,
    pub services: Vec<ServiceInfo>,
    pub env_vars: BTreeMap<String, String>,
    /// The package set's pin (devenv.lock).
    pub package_set: crate::project::PinInfo,
    pub limits: LimitsInfo,
    pub network: NetworkInfo,
    pub writable_paths: Vec<WritablePath>,
    pub read_only_paths: Vec<ReadOnlyPath>,
    pub layers: Vec<LayerInfo>,
    pub edits: EditsInfo,
    /// The profile runs use.
    pub profile: String,
    /// The context describes runs through the MCP server (`nixcell context --mcp`).
    pub mcp: bool,
}

/// Whose runs the context describes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The profile runs use (default: the project's, else "default").
    pub profile: Option<String>,
    /// Runs through the MCP server: a private copy of the project per run, its
    /// default limits, edits through the `edit_environment` tool.
    pub mcp: bool,
}

/// Splits a store path's name (`<hash>-name-version`) as Nix's `parseDrvName` does: the
/// version starts at the first `-` followed by a character that is not a letter.
pub fn parse_store_name(path: &Path) -> (String, Option<String>) {
    let name = match crate::nix::store::store_path_name(path) {
        Some(n) => n.to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let bytes = name.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (name[..i].to_string(), Some(name[i + 1..].to_string()));
        }
    }
    (name, None)
}

/// `Name:` and `Version:` of a METADATA / PKG-INFO file.
fn read_metadata(file: &Path) -> Option<LibraryInfo> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut name = None;
    let mut version = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Name:") {
            name.get_or_insert_with(|| v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version.get_or_insert_with(|| v.trim().to_string());
        }
    }
    Some(LibraryInfo {
        name: name?,
        version,
    })
}

/// The libraries importable by the environment's Python: the distributions whose
/// metadata sits in its site-packages.
fn python_libraries(env: &Path) -> Vec<LibraryInfo> {
    let mut out = Vec::new();
    let Ok(lib) = std::fs::read_dir(env.join("lib")) else {
        return out;
    };
    for l in lib.flatten() {
        if !l.file_name().to_string_lossy().starts_with("python") {
            continue;
        }
        let Ok(site) = std::fs::read_dir(l.path().join("site-packages")) else {
            continue;
        };
        for e in site.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let info = if n.ends_with(".dist-info") {
                read_metadata(&p.join("METADATA"))
            } else if n.ends_with(".egg-info") {
                if p.is_dir() {
                    read_metadata(&p.join("PKG-INFO"))
                } else {
                    read_metadata(&p)
                }
            } else {
                None
            };
            out.extend(info);
        }
    }
    out.sort_by_key(|a| a.name.to_lowercase());
    out.dedup();
    out
}

fn layers() -> Vec<LayerInfo> {
    let r = crate::doctor::report();
    vec![
        LayerInfo {
            name: "namespaces".into(),
            available: r.user_namespaces.available,
            detail: format!(
                "user, mount, pid, network, uts and ipc namespaces; the root holds only the closure ({})",
                r.user_namespaces.detail
            ),
        },
        LayerInfo {
            name: "landlock".into(),
            available: r.landlock_abi.is_some(),
            // Per feature: which access rights and scopes this kernel can enforce.
            detail: r
                .layers
                .iter()
                .find(|l| l.layer == "landlock")
                .map(|l| l.detail.clone())
                .unwrap_or_default(),
        },
        LayerInfo {
            name: "seccomp".into(),
            available: r.seccomp.available,
            detail: r.seccomp.detail.clone(),
        },
        LayerInfo {
            name: "cgroups".into(),
            available: r.cgroup.mode != "none",
            detail: format!("cgroup {}", r.cgroup.mode),
        },
    ]
}

/// A package whose commands on PATH are more than this is summarised as a toolbox.
const TOOLBOX_MIN: usize = 24;

/// Commands named first in a toolbox's summary, when it has them.
const WELL_KNOWN: &[&str] = &[
    "sh", "bash", "ls", "cat", "grep", "sed", "awk", "find", "xargs", "sort", "head", "tail",
    "cut", "tr", "wc", "diff", "tar", "gzip", "vi",
];

/// The package each command on the environment's PATH comes from (the store path its
/// link resolves into), by package name.
fn toolboxes(env: &Path, executables: &[String]) -> Vec<Toolbox> {
    let mut by_pkg: BTreeMap<String, usize> = BTreeMap::new();
    for e in executables {
        let Ok(real) = std::fs::canonicalize(env.join("bin").join(e)) else {
            continue;
        };
        let store: PathBuf = real.components().take(4).collect();
        if store == env {
            continue;
        }
        *by_pkg.entry(parse_store_name(&store).0).or_default() += 1;
    }
    by_pkg
        .into_iter()
        .filter(|(_, n)| *n > TOOLBOX_MIN)
        .map(|(package, commands)| Toolbox { package, commands })
        .collect()
}

use crate::sandbox::limits::in_force as rlimit;
use nix::sys::resource::Resource;

/// The context of a built project, for runs of `opts`.
pub fn gather(project: &Project, built: &Built, opts: &Options) -> Result<Context, ContextError> {
    use crate::sandbox::WorkdirMode;
    let closure = crate::nix::closure::closure(std::slice::from_ref(&built.env)).map_err(|e| {
        ContextError::Closure {
            env: built.env.clone(),
            message: e.to_string(),
        }
    })?;
    let declared: Vec<&str> = built
        .description
        .packages
        .iter()
        .map(|s| s.as_str())
        .collect();
    let mut packages: Vec<PackageInfo> = closure
        .paths
        .iter()
        .filter(|e| e.path != built.env)
        .map(|e| {
            let (name, version) = parse_store_name(&e.path);
            PackageInfo {
                declared: declared.contains(&name.as_str()),
                name,
                version,
                store_path: e.path.clone(),
            }
        })
        .collect();
    packages.sort_by(|a, b| {
        (!a.declared, &a.name, &a.version).cmp(&(!b.declared, &b.name, &b.version))
    });
    let mut executables: Vec<String> = std::fs::read_dir(built.env.join("bin"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    executables.sort();
    let python = built.description.python.as_ref().map(|p| {
        let exe = if executables.iter().any(|e| e == "python3") {
            "python3"
        } else {
            "python"
        };
        let version = p.version.clone().or_else(|| {
            packages
                .iter()
                .find(|k| k.name == "python3" || k.name == "python")
                .and_then(|k| k.version.clone())
        });
        // The libraries the declaration names first, then what they brought along.
        let mut libraries = python_libraries(&built.env);
        let wanted = |l: &LibraryInfo| {
            !p.libraries
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&l.name.replace('_', "-")))
        };
        libraries.sort_by_key(|l| (wanted(l), l.name.to_lowercase()));
        PythonInfo {
            version,
            executable: exe.into(),
            libraries,
        }
    });
    let services: Vec<ServiceInfo> = built
        .services()
        .into_iter()
        .map(|s| ServiceInfo {
            name: s.name,
            port: s.port,
            command: s.command,
        })
        .collect();
    // What a run gets: the run pipeline's rule (`run::limits`), the MCP server's
    // defaults on top of it under MCP.
    let profile_name = opts
        .profile
        .clone()
        .or_else(|| project.config.profile.clone())
        .unwrap_or_else(|| "default".into());
    let profile = crate::profile::load(&profile_name)?;
    let policy = &project.config.policy;
    // allow-domain only when the profile's list has names the project could still add.
    let project_net = project.limits.network.as_ref();
    let domains: Vec<String> =
        if crate::edit::network::addable(policy, &profile.network, project_net) {
            let effective = profile.network.narrowed(project_net);
            (profile.network.allow.iter())
                .filter(|c| c.is_name() && !effective.allow.iter().any(|a| a.covers(c)))
                .map(|c| c.to_string())
                .collect()
        } else {
            Vec::new()
        };
    let allowed_ops: Vec<&Op> = Op::ALL
        .iter()
        .filter(|op| match op {
            Op::AllowDomain => !domains.is_empty(),
            _ => !op.subject().allowed(policy).is_empty(),
        })
        .collect();
    let mut commands: Vec<String> = allowed_ops
        .iter()
        .map(|op| {
            if opts.mcp {
                format!(
                    "edit_environment {{\"operation\": \"{}\", \"name\": NAME}}",
                    op.as_str().replace('-', "_")
                )
            } else {
                format!("nixcell edit {} NAME", op.as_str())
            }
        })
        .collect();
    if !commands.is_empty() {
        commands.push(if opts.mcp {
            "edit_environment with \"propose\": true (ask a human instead)".into()
        } else {
            "nixcell edit ... --propose (ask a human instead)".into()
        });
    }
    let ceiling = crate::run::limits::ceiling(
        &profile.limits,
        &crate::run::limits::ProjectLimits {
            timeout: project.limits.timeout,
            max_output: project.limits.max_output_bytes,
        },
    );
    let limits = if opts.mcp {
        crate::run::limits::mcp::defaults(&ceiling)
    } else {
        ceiling.clone()
    };
    let fs = &profile.filesystem;
    let cow = fs.workdir == WorkdirMode::Cow;
    let work_size = cow.then(|| crate::run::limits::work_size(fs, &limits));
    let net = crate::run::limits::network(&profile.network, project.limits.network.as_ref(), &[]);
    let allowed: Vec<String> = net.allow.iter().map(|e| e.to_string()).collect();
    let proxy =
        (!allowed.is_empty()).then(|| format!("http://127.0.0.1:{}", crate::net::PORT_IN_CELL));
    let tcp_ports = crate::harden::tcp_rules_enforced(&profile).then(|| {
        let mut p = profile.landlock.allow_ports.clone();
        if proxy.is_some() {
            p.push(crate::net::PORT_IN_CELL);
        }
        p.extend(services.iter().filter_map(|s| s.port));
        p.sort_unstable();
        p.dedup();
        p
    });
    let network_detail = match &tcp_ports {
        Some(p) if p.is_empty() => "only the cell's own loopback: no internet, no host services; TCP connect and bind are denied on every port (EACCES, \"Permission denied\")".to_string(),
        Some(p) => format!(
            "only the cell's own loopback: no internet, no host services; TCP connect and bind only on 127.0.0.1 port{} {}, denied elsewhere (EACCES, \"Permission denied\")",
            if p.len() == 1 { "" } else { "s" },
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        ),
        None => "only the cell's own loopback: no internet, no host services; the declared services listen on 127.0.0.1".to_string(),
    };
    let network_detail = match &proxy {
        Some(url) => format!(
            "{}; beyond it only {} through nixcell's proxy at {url} (HTTP_PROXY, HTTPS_PROXY and ALL_PROXY point to it; the proxy resolves the names, there is no DNS in the cell; a literal or private address only when listed as such); everything else is refused (HTTP 403)",
            network_detail.replace("no internet, no host services", "no host services"),
            allowed.join(", ")
        ),
        None => network_detail,
    };
    let protected = crate::project::PROTECTED.join(", ");
    let work_what = match (fs.workdir, opts.mcp) {
        (WorkdirMode::Cow, false) => format!(
            "the project (working directory), copy-on-write: changes are applied after the run; {protected} are read-only"
        ),
        (WorkdirMode::Cow, true) | (WorkdirMode::Bind, true) => format!(
            "a private copy of the project made for each run (working directory): the project never changes, get files back with `collect`; {protected} are read-only"
        ),
        (WorkdirMode::Bind, false) => {
            "the project directory itself (working directory), read-write: writes change it at once"
                .to_string()
        }
        (WorkdirMode::Ro, _) => String::new(),
    };
    let mut writable_paths = Vec::new();
    let mut read_only_paths = Vec::new();
    if fs.workdir == WorkdirMode::Ro {
        read_only_paths.push(ReadOnlyPath {
            path: WORKDIR_IN_CELL.into(),
            what: format!(
                "{} (working directory), read-only under the profile `{}`: writes fail with EROFS (\"Read-only file system\"); write to /tmp",
                if opts.mcp {
                    "a private copy of the project made for each run"
                } else {
                    "the project"
                },
                profile.name
            ),
        });
    } else {
        writable_paths.push(WritablePath {
            path: WORKDIR_IN_CELL.into(),
            what: work_what,
            size_bytes: work_size,
        });
    }
    writable_paths.push(WritablePath {
        path: "/tmp".into(),
        what: "private tmpfs, also $HOME, discarded after the run".into(),
        size_bytes: Some(project.limits.tmp_size_bytes),
    });
    read_only_paths.push(ReadOnlyPath {
        path: "/".into(),
        what: "everything else: writes fail with EROFS or EACCES".into(),
    });
    // As harden::prepare decides: the run's cgroup when this user can make one, else
    // the rlimit fallback (a profile that requires cgroups refuses to run instead).
    let any = limits.memory.is_some() || limits.cpus.is_some() || limits.pids.is_some();
    let cgroup = profile.cgroup != crate::sandbox::LayerMode::Off
        && crate::sandbox::cgroup::Hierarchy::detect()
            .is_ok_and(|h| h.usable_by(nix::unistd::geteuid().as_raw()));
    let enforced_by = any.then(|| if cgroup { "cgroup" } else { "rlimit" }.to_string());
    let ask_up_to = opts.mcp.then(|| AskUpTo {
        timeout_secs: crate::run::limits::mcp::max_timeout_secs(&ceiling),
        max_output_bytes: crate::run::limits::mcp::max_output_cap(&ceiling),
        memory_bytes: ceiling.memory,
        cpus: ceiling.cpus,
        pids: ceiling.pids,
    });
    Ok(Context {
        schema: SCHEMA.into(),
        project: project.dir.clone(),
        env: built.env.clone(),
        closure_paths: closure.paths.len(),
        toolboxes: toolboxes(&built.env, &executables),
        packages,
        executables,
        python,
        services,
        env_vars: built.description.env.clone(),
        package_set: built.package_set.clone(),
        limits: LimitsInfo {
            timeout_secs: limits.timeout.map(|d| d.as_secs()),
            memory_bytes: limits.memory,
            cpus: limits.cpus,
            pids: limits.pids,
            // As the rlimits layer sets them: at most the hard limits nixcell runs under.
            open_files: limits
                .open_files
                .map(|v| rlimit(Resource::RLIMIT_NOFILE, v)),
            file_size_bytes: limits.file_size.map(|v| rlimit(Resource::RLIMIT_FSIZE, v)),
            cpu_seconds: limits.cpu_seconds.map(|v| rlimit(Resource::RLIMIT_CPU, v)),
            max_output_bytes: limits.max_output,
            tmp_size_bytes: project.limits.tmp_size_bytes,
            tmp_inodes: fs.tmp_inodes,
            work_size_bytes: work_size,
            work_inodes: cow.then_some(fs.work_inodes),
            enforced_by,
            ask_up_to,
        },
        network: NetworkInfo {
            policy: if proxy.is_some() {
                "proxy"
            } else {
                "loopback-only"
            }
            .into(),
            allowed,
            proxy,
            tcp_ports,
            detail: network_detail,
        },
        writable_paths,
        read_only_paths,
        layers: layers(),
        edits: EditsInfo {
            approval: policy.approval,
            domain_policy: if allowed_ops.contains(&&Op::AllowDomain) {
                policy.domains.clone()
            } else {
                Vec::new()
            },
            allowed: AllowedEdits {
                packages: policy.packages.clone(),
                python_libraries: policy.python_libraries.clone(),
                services: policy.services.clone(),
                domains,
            },
            commands,
        },
        profile: profile.name.clone(),
        mcp: opts.mcp,
    })
}

fn human_bytes(n: u64) -> String {
    crate::units::human_size(n)
}

fn human_secs(s: u64) -> String {
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn versioned(name: &str, version: &Option<String>) -> String {
    match version {
        Some(v) => format!("{name} {v}"),
        None => name.to_string(),
    }
}

/// Approximate tokens of a text (one per 4 bytes, as common tokenizers average).
pub fn estimate_tokens(s: &str) -> usize {
    s.len().div_ceil(4)
}

/// How much of the context the Markdown shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Large toolboxes summarised, the rest of the closure on one line.
    Default,
    /// Everything, every command and store path listed.
    Full,
}

/// One section of the Markdown, in the renderings it may take from the richest to the
/// poorest; an empty rendering leaves the section out.
struct Section {
    /// Named in the closing note when the section is shortened or left out.
    name: &'static str,
    renderings: Vec<String>,
    /// The rendering shown.
    at: usize,
}

impl Section {
    fn new(name: &'static str, renderings: Vec<String>) -> Section {
        Section {
            name,
            renderings,
            at: 0,
        }
    }
}

/// A section: its title and lines, or nothing when it has no lines (no empty headers).
fn block(title: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut b = format!("{title}\n");
    for l in lines {
        b.push_str(l);
        b.push('\n');
    }
    b.push('\n');
    b
}

/// The order in which sections are shortened to fit a budget, least useful first:
/// (section name, rendering it goes to). "Asking for changes" and "Python" are never
/// left out, only made shorter.
const SHORTEN: &[(&str, usize)] = &[
    ("other store paths", 1),
    ("sandbox layers", 1),
    ("declared packages", 1),
    ("commands on PATH", 1),
    ("Python libraries", 1),
    ("Asking for changes", 1),
    ("environment variables", 1),
    ("commands on PATH", 2),
    ("environment", 1),
    ("Asking for changes", 2),
    ("Python libraries", 2),
];

/// Markdown for a system prompt: deterministic, and within `max_tokens` (estimated)
/// when given: sections are shortened or left out, least useful first, and a closing
/// note says what and how to get it.
pub fn to_markdown(c: &Context, max_tokens: Option<usize>, detail: Detail) -> String {
    let full = detail == Detail::Full;
    let mut sections = vec![Section::new(
        "environment",
        vec![environment(c), environment_short(c)],
    )];
    sections.push(Section::new("Asking for changes", edits_renderings(c)));
    if !c.services.is_empty() {
        let lines: Vec<String> = c
            .services
            .iter()
            .map(|s| match s.port {
                Some(p) => format!("- {} on 127.0.0.1:{p}", s.name),
                None => format!("- {} (process)", s.name),
            })
            .collect();
        sections.push(Section::new(
            "services",
            vec![block("## Services (started before your command)", &lines)],
        ));
    }
    if let Some(p) = &c.python {
        sections.push(Section::new("Python libraries", python_renderings(p)));
    }
    let vars: Vec<String> = c
        .env_vars
        .iter()
        .map(|(k, v)| format!("- {k}={v}"))
        .collect();
    sections.push(Section::new(
        "environment variables",
        vec![block("## Environment variables", &vars), String::new()],
    ));
    let declared: Vec<String> = c
        .packages
        .iter()
        .filter(|p| p.declared)
        .map(|p| format!("- {}", versioned(&p.name, &p.version)))
        .collect();
    sections.push(Section::new(
        "declared packages",
        vec![block("## Declared packages", &declared), String::new()],
    ));
    sections.push(Section::new(
        "commands on PATH",
        commands_renderings(c, full),
    ));
    // Each layer's detail with --full; else one line.
    let yes_no = |l: &LayerInfo| if l.available { "yes" } else { "no" };
    let layers: Vec<String> = if full {
        c.layers
            .iter()
            .map(|l| format!("- {}: {} ({})", l.name, yes_no(l), l.detail))
            .collect()
    } else {
        vec![format!(
            "- {}",
            c.layers
                .iter()
                .map(|l| format!("{} {}", l.name, yes_no(l)))
                .collect::<Vec<_>>()
                .join(", ")
        )]
    };
    sections.push(Section::new(
        "sandbox layers",
        vec![
            block("## Sandbox layers this kernel supports", &layers),
            String::new(),
        ],
    ));
    let others: Vec<String> = c
        .packages
        .iter()
        .filter(|p| !p.declared)
        .map(|p| versioned(&p.name, &p.version))
        .collect();
    let others_block = if full {
        let lines: Vec<String> = others.iter().map(|o| format!("- {o}")).collect();
        block("## Other store paths in the closure", &lines)
    } else if others.is_empty() {
        String::new()
    } else {
        block("## Other store paths in the closure", &[others.join(", ")])
    };
    sections.push(Section::new(
        "other store paths",
        vec![others_block, String::new()],
    ));

    let render = |sections: &[Section], note: &str| {
        let mut out: String = sections
            .iter()
            .map(|s| s.renderings[s.at].as_str())
            .collect();
        out.push_str(note);
        out
    };
    let note = |sections: &[Section]| {
        let pick = |out: bool| -> Vec<&str> {
            sections
                .iter()
                .filter(|s| s.at > 0 && s.renderings[s.at].is_empty() == out)
                .map(|s| s.name)
                .collect()
        };
        let (short, out) = (pick(false), pick(true));
        let mut what = Vec::new();
        if !short.is_empty() {
            what.push(format!("shortened: {}", short.join(", ")));
        }
        if !out.is_empty() {
            what.push(format!("left out: {}", out.join(", ")));
        }
        if what.is_empty() {
            String::new()
        } else {
            format!(
                "_Within {} tokens; {}. All: `nixcell context --full`._\n",
                max_tokens.unwrap_or(0),
                what.join("; ")
            )
        }
    };
    if let Some(max) = max_tokens {
        let budget = max.saturating_mul(4);
        for (name, to) in SHORTEN {
            if render(&sections, &note(&sections)).len() <= budget {
                break;
            }
            if let Some(s) = sections
                .iter_mut()
                .find(|s| s.name == *name && s.at < *to && *to < s.renderings.len())
            {
                s.at = *to;
            }
        }
        // Then give back what still fits, the most useful sections first.
        for i in 0..sections.len() {
            while sections[i].at > 0 {
                sections[i].at -= 1;
                if render(&sections, &note(&sections)).len() > budget {
                    sections[i].at += 1;
                    break;
                }
            }
        }
    }
    let out = render(&sections, &note(&sections));
    match max_tokens {
        Some(max) if out.len() > max.saturating_mul(4) => out.replace(
            " All: `nixcell context --full`._",
            " What is left is the least an agent needs and exceeds the budget. All: `nixcell context --full`._",
        ),
        _ => out,
    }
}

/// The first section in a few lines: network, writable paths, the main limits.
fn environment_short(c: &Context) -> String {
    let mut head = vec![format!(
        "A nixcell sandbox: only this project's Nix closure ({} store paths), nothing of the host.",
        c.closure_paths
    )];
    if c.mcp {
        head.push("- Each `run` is a fresh cell on a private copy of the project.".into());
    }
    head.push(if c.package_set.locked == c.package_set.source {
        format!("- Package set: {} (pinned).", c.package_set.locked)
    } else {
        format!(
            "- Package set: {} pinned to {}.",
            c.package_set.source, c.package_set.locked
        )
    });
    let through = match &c.network.proxy {
        Some(url) => format!(
            " and, through the proxy at {url} (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY set), only {}",
            c.network.allowed.join(", ")
        ),
        None => String::new(),
    };
    head.push(format!(
        "- Network: loopback only{through}{}.",
        match &c.network.tcp_ports {
            Some(p) if p.is_empty() =>
                "; TCP connect/bind denied (EACCES) on every port".to_string(),
            Some(p) => format!(
                "; TCP connect/bind denied (EACCES) but on 127.0.0.1:{}",
                p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            ),
            None => String::new(),
        }
    ));
    let w: Vec<String> = c
        .writable_paths
        .iter()
        .map(|w| match w.size_bytes {
            Some(s) => format!("`{}` ({})", w.path, human_bytes(s)),
            None => format!("`{}`", w.path),
        })
        .collect();
    let ro: Vec<String> = c
        .read_only_paths
        .iter()
        .filter(|r| r.path != "/")
        .map(|r| format!("`{}`", r.path))
        .collect();
    head.push(format!(
        "- Writable only: {}{}; .git and the declaration files are read-only.",
        w.join(", "),
        if ro.is_empty() {
            String::new()
        } else {
            format!(" (read-only: {})", ro.join(", "))
        }
    ));
    let l = &c.limits;
    let mut parts = Vec::new();
    if let Some(m) = l.memory_bytes {
        parts.push(format!("memory {}", human_bytes(m)));
    }
    if let Some(t) = l.timeout_secs {
        parts.push(format!("timeout {}", human_secs(t)));
    }
    if let Some(p) = l.pids {
        parts.push(format!("{p} pids"));
    }
    parts.push(format!("output {}/stream", human_bytes(l.max_output_bytes)));
    head.push(format!("- Limits: {}.", parts.join(", ")));
    block("# Environment", &head)
}

/// The first section: what the cell is, its network, what is writable, its limits.
fn environment(c: &Context) -> String {
    let mut head = vec![format!(
        "You run inside a nixcell: a sandbox whose software is exactly the Nix closure of this project's environment ({} store paths). Nothing else of the host exists in it.",
        c.closure_paths
    )];
    if c.mcp {
        head.push("- Through MCP: each `run` starts a fresh cell on a private copy of the project; ask for changes of the environment with the `edit_environment` tool.".into());
    }
    head.push(format!(
        "- Network: {} ({}).",
        c.network.policy, c.network.detail
    ));
    head.push(format!(
        "- Package set: {} ({}), pinned to {} {} by `{}`; it changes only with `nixcell lock --update`.",
        c.package_set.source,
        c.package_set.origin,
        c.package_set.locked,
        c.package_set.nar_hash,
        c.package_set.lock_file.display()
    ));
    for w in &c.writable_paths {
        let size = w
            .size_bytes
            .map(|s| format!(" (at most {})", human_bytes(s)))
            .unwrap_or_default();
        head.push(format!("- Writable: `{}`: {}{size}.", w.path, w.what));
    }
    for r in &c.read_only_paths {
        head.push(format!("- Read-only: `{}`: {}.", r.path, r.what));
    }
    head.push(format!(
        "- Limits (profile `{}`): {}.",
        c.profile,
        limits_line(&c.limits)
    ));
    if let Some(a) = &c.limits.ask_up_to {
        let mut more = vec![
            format!("`timeout_seconds` up to {}", a.timeout_secs),
            format!("`max_output_bytes` up to {}", a.max_output_bytes),
        ];
        if let Some(m) = a.memory_bytes {
            more.push(format!("`memory_mib` up to {}", m >> 20));
        }
        if let Some(cpus) = a.cpus {
            more.push(format!("`cpus` up to {cpus}"));
        }
        if let Some(p) = a.pids {
            more.push(format!("`pids` up to {p}"));
        }
        head.push(format!("- A `run` may ask for {}.", more.join(", ")));
    }
    block("# Environment", &head)
}

fn limits_line(l: &LimitsInfo) -> String {
    let mut parts = Vec::new();
    let cgroup = l.enforced_by.as_deref() == Some("cgroup");
    if let Some(m) = l.memory_bytes {
        parts.push(if cgroup {
            format!(
                "memory {} (whole cell, no swap, then OOM-killed)",
                human_bytes(m)
            )
        } else {
            format!(
                "address space {} per process (no cgroup: allocations past it fail)",
                human_bytes(m)
            )
        });
    }
    if let Some(c) = l.cpus.filter(|_| cgroup) {
        parts.push(format!("{c} CPU{}", if c == 1.0 { "" } else { "s" }));
    }
    if let Some(p) = l.pids {
        parts.push(format!("{p} processes+threads"));
    }
    if let Some(t) = l.timeout_secs {
        parts.push(format!("timeout {} (then killed, exit 124)", human_secs(t)));
    }
    if let Some(s) = l.cpu_seconds {
        parts.push(format!("{s} s CPU time"));
    }
    parts.push(format!(
        "output {} kept per stream",
        human_bytes(l.max_output_bytes)
    ));
    parts.push(format!(
        "/tmp {} and {} inodes",
        human_bytes(l.tmp_size_bytes),
        l.tmp_inodes
    ));
    if let (Some(s), Some(i)) = (l.work_size_bytes, l.work_inodes) {
        parts.push(format!("/work changes {} and {i} inodes", human_bytes(s)));
    }
    if let Some(f) = l.file_size_bytes {
        parts.push(format!("file size {}", human_bytes(f)));
    }
    if let Some(n) = l.open_files {
        parts.push(format!("{n} open files"));
    }
    parts.join(", ")
}

fn edits_renderings(c: &Context) -> Vec<String> {
    let title = "## Asking for changes";
    let how = if c.mcp {
        "with the `edit_environment` tool"
    } else {
        "with an edit"
    };
    let mut lines = vec![format!(
        "Missing something? Do not try to download or install it (no pip, no network): ask {how} (approval: {}). The edit is checked, built and recorded; then run again.",
        match c.edits.approval {
            Approval::Auto => "automatic",
            Approval::Human => "a human approves it first",
        }
    )];
    let a = &c.edits.allowed;
    for (label, list) in [
        ("packages", &a.packages),
        ("Python libraries", &a.python_libraries),
        ("services", &a.services),
    ] {
        if !list.is_empty() {
            lines.push(format!("- Allowed {label}: {}", list.join(", ")));
        }
    }
    if !a.domains.is_empty() {
        lines.push(format!(
            "- Domains: one name (NAME[:PORT], port 443 if left out) under {} (and within [policy] domains: {})",
            a.domains.join(", "),
            c.edits.domain_policy.join(", ")
        ));
    }
    if c.edits.commands.is_empty() {
        lines.push("- The policy allows no edits.".into());
    }
    let mut short = lines.clone();
    if !a.python_libraries.is_empty() {
        lines.push(
            "- A Python library edit writes devenv's form, `languages.python.package = pkgs.python3.withPackages (ps: [ ps.NAME ])` (in devenv, `languages.python.libraries` holds native library packages such as `pkgs.file`).".into(),
        );
    }
    for cmd in &c.edits.commands {
        lines.push(format!("- `{cmd}`"));
    }
    if let Some(first) = c.edits.commands.first() {
        short.push(format!("- e.g. `{first}`"));
    }
    // The shortest: one sentence and the allowed names.
    let allowed: Vec<String> = [
        ("packages", &a.packages),
        ("Python libraries", &a.python_libraries),
        ("services", &a.services),
    ]
    .iter()
    .filter(|(_, l)| !l.is_empty())
    .map(|(k, l)| format!("{k} {}", l.join(" ")))
    .collect();
    let tiny = if allowed.is_empty() {
        "No pip, no downloads; the policy allows no edits.".to_string()
    } else {
        format!(
            "No pip, no downloads: ask {}. Allowed: {}.",
            if c.mcp {
                "with `edit_environment`"
            } else {
                "with `nixcell edit add-package|add-python-library|enable-service NAME`"
            },
            allowed.join("; ")
        )
    };
    vec![
        block(title, &lines),
        block(title, &short),
        block(title, &[tiny]),
    ]
}

fn python_renderings(p: &PythonInfo) -> Vec<String> {
    let title = "## Python";
    let what = format!(
        "`{}` is Python {}",
        p.executable,
        p.version.as_deref().unwrap_or("(unknown version)")
    );
    if p.libraries.is_empty() {
        return vec![block(
            title,
            &[format!(
                "{what}, with its standard library only: no other library is importable."
            )],
        )];
    }
    let mut full = vec![format!("{what}; importable libraries (only these):")];
    full.extend(
        p.libraries
            .iter()
            .map(|l| format!("- {}", versioned(&l.name, &l.version))),
    );
    let one_line = vec![format!(
        "{what}; importable libraries (only these): {}.",
        p.libraries
            .iter()
            .map(|l| versioned(&l.name, &l.version))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let names = vec![format!(
        "{what}; importable libraries (only these): {}.",
        p.libraries
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    vec![
        block(title, &full),
        block(title, &one_line),
        block(title, &names),
    ]
}

fn commands_renderings(c: &Context, full: bool) -> Vec<String> {
    let title = "## Commands on PATH";
    if full {
        let lines: Vec<String> = c.executables.chunks(16).map(|ch| ch.join(" ")).collect();
        return vec![block(title, &lines), String::new()];
    }
    // A toolbox's commands are those whose link resolves into its store path.
    let env = &c.env;
    let owner = |e: &str| -> Option<String> {
        let real = std::fs::canonicalize(env.join("bin").join(e)).ok()?;
        let store: PathBuf = real.components().take(4).collect();
        Some(parse_store_name(&store).0)
    };
    let mut lines = Vec::new();
    let mut rest = Vec::new();
    let mut in_box: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &c.executables {
        match owner(e) {
            Some(o) if c.toolboxes.iter().any(|t| t.package == o) => {
                let t = c
                    .toolboxes
                    .iter()
                    .find(|t| t.package == o)
                    .map(|t| t.package.as_str());
                in_box.entry(t.unwrap_or_default()).or_default().push(e);
            }
            _ => rest.push(e.as_str()),
        }
    }
    for (pkg, cmds) in &in_box {
        let named: Vec<&str> = WELL_KNOWN
            .iter()
            .copied()
            .filter(|w| cmds.contains(w))
            .collect();
        lines.push(format!(
            "- {pkg}: {} commands incl. {} (`nixcell context --full` lists them)",
            cmds.len(),
            named.join(", ")
        ));
    }
    if !rest.is_empty() {
        lines.push(format!("- {}", rest.join(" ")));
    }
    let toolboxes_only: Vec<String> = lines
        .iter()
        .take(in_box.len())
        .cloned()
        .chain((!rest.is_empty()).then(|| format!("- {} more", rest.len())))
        .collect();
    vec![
        block(title, &lines),
        block(title, &toolboxes_only),
        String::new(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_split_like_parse_drv_name() {
        let p = |s: &str| parse_store_name(Path::new(s));
        let h = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-";
        assert_eq!(
            p(&format!("{h}python3.11-pandas-1.5.3")),
            ("python3.11-pandas".into(), Some("1.5.3".into()))
        );
        assert_eq!(
            p(&format!("{h}python3-3.11.2-env")),
            ("python3".into(), Some("3.11.2-env".into()))
        );
        assert_eq!(p(&format!("{h}nixcell-env")), ("nixcell-env".into(), None));
        assert_eq!(
            p(&format!("{h}tzdata-2025b")),
            ("tzdata".into(), Some("2025b".into()))
        );
    }
}
