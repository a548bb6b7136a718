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
//!   "python": null | { "version": "3.11.2", "executable": "python3",
//!                      "libraries": [ { "name": "pandas", "version": "1.5.3" } ] },
//!   "services": [ { "name": "redis", "port": 6379 | null, "command": [ ... ] } ],
//!   "env_vars": { "NAME": "value" },
//!   "package_set": { "source": "github:NixOS/nixpkgs/nixos-24.11", "origin": "...",
//!                    "locked": "github:NixOS/nixpkgs/<rev>", "nar_hash": "sha256-...",
//!                    "lock_file": "/abs/project/devenv.lock", "path": "/nix/store/...-source" },
//!   "limits": { "timeout_secs": 30 | null, "tmp_size_bytes": N, "max_output_bytes": N },
//!   "network": { "policy": "loopback-only", "detail": "..." },
//!   "writable_paths": [ { "path": "/work", "what": "...", "size_bytes": N | null } ],
//!   "layers": [ { "name": "user-namespaces", "available": true, "detail": "..." } ],
//!   "edits": { "approval": "auto" | "human",
//!              "allowed": { "packages": [..], "python_libraries": [..], "services": [..] },
//!              "commands": [ "nixcell edit add-package NAME", ... ] }
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsInfo {
    pub timeout_secs: Option<u64>,
    pub tmp_size_bytes: u64,
    pub max_output_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub policy: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritablePath {
    pub path: String,
    pub what: String,
    pub size_bytes: Option<u64>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditsInfo {
    pub approval: Approval,
    pub allowed: AllowedEdits,
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub schema: String,
    pub project: PathBuf,
    pub env: PathBuf,
    pub closure_paths: usize,
    pub packages: Vec<PackageInfo>,
    pub executables: Vec<String>,
    pub python: Option<PythonInfo>,
    pub services: Vec<ServiceInfo>,
    pub env_vars: BTreeMap<String, String>,
    /// The package set's pin (devenv.lock).
    pub package_set: crate::project::PinInfo,
    pub limits: LimitsInfo,
    pub network: NetworkInfo,
    pub writable_paths: Vec<WritablePath>,
    pub layers: Vec<LayerInfo>,
    pub edits: EditsInfo,
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

/// The context of a built project.
pub fn gather(project: &Project, built: &Built) -> Result<Context, ContextError> {
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
        PythonInfo {
            version,
            executable: exe.into(),
            libraries: python_libraries(&built.env),
        }
    });
    let services = built
        .services()
        .into_iter()
        .map(|s| ServiceInfo {
            name: s.name,
            port: s.port,
            command: s.command,
        })
        .collect();
    let policy = &project.config.policy;
    let mut commands: Vec<String> = Op::ALL
        .iter()
        .filter(|op| !op.subject().allowed(policy).is_empty())
        .map(|op| format!("nixcell edit {} NAME", op.as_str()))
        .collect();
    if !commands.is_empty() {
        commands.push("nixcell edit ... --propose (ask a human instead)".into());
    }
    // What a run without flags gets: the profile's limits, tightened by the project's.
    let profile = crate::profile::load(project.config.profile.as_deref().unwrap_or("default"))?;
    let limits = crate::run::limits::ceiling(
        &profile.limits,
        &crate::run::limits::ProjectLimits {
            timeout: project.limits.timeout,
            max_output: project.limits.max_output_bytes,
        },
    );
    Ok(Context {
        schema: SCHEMA.into(),
        project: project.dir.clone(),
        env: built.env.clone(),
        closure_paths: closure.paths.len(),
        packages,
        executables,
        python,
        services,
        env_vars: built.description.env.clone(),
        package_set: built.package_set.clone(),
        limits: LimitsInfo {
            timeout_secs: limits.timeout.map(|d| d.as_secs()),
            tmp_size_bytes: project.limits.tmp_size_bytes,
            max_output_bytes: limits.max_output,
        },
        network: NetworkInfo {
            policy: "loopback-only".into(),
            detail: "the cell has its own network namespace with only the loopback interface: no internet, no host services; the declared services listen on 127.0.0.1".into(),
        },
        writable_paths: vec![
            WritablePath {
                path: WORKDIR_IN_CELL.into(),
                what: "the project directory (the working directory), copy-on-write: changes are applied after the run, except to .git and the declaration (read-only)".into(),
                size_bytes: None,
            },
            WritablePath {
                path: "/tmp".into(),
                what: "private tmpfs, also $HOME, discarded after the run".into(),
                size_bytes: Some(project.limits.tmp_size_bytes),
            },
        ],
        layers: layers(),
        edits: EditsInfo {
            approval: policy.approval,
            allowed: AllowedEdits {
                packages: policy.packages.clone(),
                python_libraries: policy.python_libraries.clone(),
                services: policy.services.clone(),
            },
            commands,
        },
    })
}

fn human_bytes(n: u64) -> String {
    crate::units::human_size(n)
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

struct Section {
    title: String,
    /// Lines always kept.
    head: Vec<String>,
    /// Lines kept while the budget allows, in order.
    items: Vec<String>,
    /// What an item is, for the note on what was left out.
    noun: &'static str,
}

/// Markdown for a system prompt: deterministic, and within `max_tokens` (estimated)
/// when given; what does not fit is counted in a closing note.
pub fn to_markdown(c: &Context, max_tokens: Option<usize>) -> String {
    let mut sections = Vec::new();
    let mut head = vec![
        format!(
            "You run inside a nixcell: a sandbox whose software is exactly the Nix closure of this project's environment ({} store paths). Nothing else of the host exists in it.",
            c.closure_paths
        ),
        format!("- Network: {} ({}).", c.network.policy, c.network.detail),
        format!(
            "- Package set: {} ({}…), pinned by devenv.lock.",
            c.package_set.locked,
            c.package_set.nar_hash.get(..19).unwrap_or_default()
        ),
    ];
    for w in &c.writable_paths {
        let size = w
            .size_bytes
            .map(|s| format!(", {}", human_bytes(s)))
            .unwrap_or_default();
        head.push(format!("- Writable: `{}`: {}{size}.", w.path, w.what));
    }
    head.push("- Everything else is read-only.".into());
    let mut limits = vec![format!("/tmp {}", human_bytes(c.limits.tmp_size_bytes))];
    if let Some(t) = c.limits.timeout_secs {
        limits.insert(0, format!("{t} s wall clock"));
    }
    limits.push(format!(
        "{} of output per stream",
        human_bytes(c.limits.max_output_bytes)
    ));
    head.push(format!("- Limits: {}.", limits.join(", ")));
    sections.push(Section {
        title: "# Environment".into(),
        head,
        items: vec![],
        noun: "",
    });

    let mut edit_head = vec![format!(
        "Missing something? Do not try to download or install it: ask with an edit (approval: {}). The edit is checked, built and recorded; then run again.",
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
            edit_head.push(format!("- Allowed {label}: {}", list.join(", ")));
        }
    }
    if !a.python_libraries.is_empty() {
        edit_head.push(
            "- A Python library edit writes devenv's form, `languages.python.package = pkgs.python3.withPackages (ps: [ ps.NAME ])` (in devenv, `languages.python.libraries` holds native library packages such as `pkgs.file`).".into(),
        );
    }
    if c.edits.commands.is_empty() {
        edit_head.push("- The policy allows no edits.".into());
    }
    for cmd in &c.edits.commands {
        edit_head.push(format!("- `{cmd}`"));
    }
    sections.push(Section {
        title: "## Asking for changes".into(),
        head: edit_head,
        items: vec![],
        noun: "",
    });

    if !c.services.is_empty() {
        sections.push(Section {
            title: "## Services (started before your command)".into(),
            head: c
                .services
                .iter()
                .map(|s| match s.port {
                    Some(p) => format!("- {} on 127.0.0.1:{p}", s.name),
                    None => format!("- {} (process)", s.name),
                })
                .collect(),
            items: vec![],
            noun: "",
        });
    }
    if let Some(p) = &c.python {
        sections.push(Section {
            title: "## Python".into(),
            head: vec![format!(
                "`{}` is Python {}; importable libraries (only these):",
                p.executable,
                p.version.as_deref().unwrap_or("(unknown version)")
            )],
            items: p
                .libraries
                .iter()
                .map(|l| format!("- {}", versioned(&l.name, &l.version)))
                .collect(),
            noun: "Python libraries",
        });
    }
    if !c.env_vars.is_empty() {
        sections.push(Section {
            title: "## Environment variables".into(),
            head: vec![],
            items: c
                .env_vars
                .iter()
                .map(|(k, v)| format!("- {k}={v}"))
                .collect(),
            noun: "variables",
        });
    }
    sections.push(Section {
        title: "## Declared packages".into(),
        head: vec![],
        items: c
            .packages
            .iter()
            .filter(|p| p.declared)
            .map(|p| format!("- {}", versioned(&p.name, &p.version)))
            .collect(),
        noun: "declared packages",
    });
    sections.push(Section {
        title: "## Commands on PATH".into(),
        head: vec![],
        items: c.executables.chunks(16).map(|ch| ch.join(" ")).collect(),
        noun: "lines of commands",
    });
    sections.push(Section {
        title: "## Sandbox layers this kernel supports".into(),
        head: vec![],
        items: c
            .layers
            .iter()
            .map(|l| {
                format!(
                    "- {}: {} ({})",
                    l.name,
                    if l.available { "yes" } else { "no" },
                    l.detail
                )
            })
            .collect(),
        noun: "layers",
    });
    sections.push(Section {
        title: "## Other store paths in the closure".into(),
        head: vec![],
        items: c
            .packages
            .iter()
            .filter(|p| !p.declared)
            .map(|p| format!("- {}", versioned(&p.name, &p.version)))
            .collect(),
        noun: "store paths",
    });

    // A reserve for the closing note, so it always fits.
    let budget = max_tokens.map(|t| t.saturating_mul(4).saturating_sub(240));
    let mut out = String::new();
    let mut left_out: Vec<String> = Vec::new();
    let fits = |out: &str, add: &str| budget.is_none_or(|b| out.len() + add.len() < b);
    for s in sections {
        let mut block = format!("{}\n", s.title);
        for h in &s.head {
            block.push_str(h);
            block.push('\n');
        }
        if !s.head.is_empty() && !fits(&out, &block) && !out.is_empty() {
            left_out.push(s.title.trim_start_matches('#').trim().to_string());
            continue;
        }
        if s.head.is_empty()
            && !s.items.is_empty()
            && !fits(&out, &format!("{block}{}", s.items[0]))
        {
            left_out.push(format!("{} {}", s.items.len(), s.noun));
            continue;
        }
        if s.head.is_empty() && s.items.is_empty() {
            continue;
        }
        out.push_str(&block);
        let mut kept = 0;
        for item in &s.items {
            if !fits(&out, item) {
                break;
            }
            out.push_str(item);
            out.push('\n');
            kept += 1;
        }
        if kept < s.items.len() {
            left_out.push(format!(
                "{} of {} {}",
                s.items.len() - kept,
                s.items.len(),
                s.noun
            ));
        }
        out.push('\n');
    }
    if !left_out.is_empty() {
        out.push_str(&format!(
            "_Left out to stay within {} tokens: {}. `nixcell context --format json` has everything._\n",
            max_tokens.unwrap_or(0),
            left_out.join("; ")
        ));
    }
    out
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
